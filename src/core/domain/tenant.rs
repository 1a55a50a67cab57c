//! A tenant: one business, its phone numbers, persona and tuning. Built and validated by
//! `crate::tenants` from `tenants.toml`; here it is a plain value.

use std::collections::HashMap;
use std::sync::Arc;

/// Audio format spoken with the Realtime API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioFormat {
    /// G.711 mu-law 8 kHz both ways: Twilio's payload passes through untouched.
    #[default]
    Pcmu,
    /// 16-bit PCM at 24 kHz: converted per call by a stateful resampler both ways.
    Pcm24k,
}

/// Server-side turn detection sent in `session.update`.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnDetection {
    /// `server_vad` threshold, 0.0..=1.0.
    pub threshold: f32,
    pub prefix_padding_ms: u32,
    pub silence_duration_ms: u32,
}

impl Default for TurnDetection {
    fn default() -> Self {
        Self { threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500 }
    }
}

/// Local barge-in and playback tuning.
#[derive(Debug, Clone, PartialEq)]
pub struct BargeIn {
    /// Interrupt the agent when the caller talks over it.
    pub enabled: bool,
    /// Continuous caller speech (local VAD) needed before the agent is cut off.
    pub min_speech_ms: u32,
    /// webrtc-vad aggressiveness 0..=3 (3 = most aggressive at calling audio "not speech").
    pub vad_mode: u8,
    /// Agent audio kept queued at Twilio; the rest is held locally so `clear` is instant.
    pub playback_lead_ms: u32,
}

impl Default for BargeIn {
    fn default() -> Self {
        Self { enabled: true, min_speech_ms: 200, vad_mode: 3, playback_lead_ms: 300 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// E.164, normalised (`+` and digits only).
    pub numbers: Vec<String>,
    /// BCP-47-ish language code, e.g. `it`, `fr`, `en`.
    pub language: String,
    pub voice: String,
    /// Path of the prompt file as written in tenants.toml (for `check` output).
    pub prompt_file: String,
    /// The instructions sent to the model: prompt file content plus the language directive.
    pub instructions: String,
    pub greeting: String,
    pub summary_to: Vec<String>,
    /// Lowercase hex SHA-256 digests of the tenant's API keys.
    pub api_keys_sha256: Vec<String>,
    pub audio_format: AudioFormat,
    pub fallback: bool,
    pub turn_detection: TurnDetection,
    pub barge_in: BargeIn,
    /// Caller silence (ms, nothing playing) after which the agent asks whether they are still
    /// there; after a second one it says goodbye and the call ends. 0 = never.
    pub idle_prompt_ms: u32,
    /// IANA time zone of the business (`Europe/Rome`): call times in emails and "tomorrow" in
    /// summaries are local. Validated when the tenants file is loaded.
    pub timezone: String,
    /// Built-in tools the agent may use.
    pub tools: Vec<BuiltinTool>,
    /// What `business_info` answers.
    pub business: BusinessInfo,
}

/// Built-in function tools (names as the model sees them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinTool {
    /// Say goodbye, then hang up once the goodbye has been heard.
    EndCall,
    /// Opening hours, address, highlights from tenants.toml.
    BusinessInfo,
}

impl BuiltinTool {
    pub const ALL: [BuiltinTool; 2] = [BuiltinTool::EndCall, BuiltinTool::BusinessInfo];

    pub fn name(self) -> &'static str {
        match self {
            BuiltinTool::EndCall => "end_call",
            BuiltinTool::BusinessInfo => "business_info",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Facts about the business, answered by the `business_info` tool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusinessInfo {
    pub address: Option<String>,
    pub hours: Option<String>,
    pub highlights: Option<String>,
    pub notes: Option<String>,
}

/// Default for [`Tenant::idle_prompt_ms`].
pub const DEFAULT_IDLE_PROMPT_MS: u32 = 10_000;

/// All tenants, indexed by dialed number. Immutable; a reload builds a new one.
#[derive(Debug, Clone, Default)]
pub struct TenantDirectory {
    tenants: Vec<Arc<Tenant>>,
    by_number: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
    fallback: Option<usize>,
}

impl TenantDirectory {
    /// Builds the index. The caller (`crate::tenants`) has already checked uniqueness of ids and
    /// numbers and that at most one tenant is the fallback; later duplicates would shadow.
    pub fn new(tenants: Vec<Tenant>) -> Self {
        let tenants: Vec<Arc<Tenant>> = tenants.into_iter().map(Arc::new).collect();
        let mut by_number = HashMap::new();
        let mut by_id = HashMap::new();
        let mut fallback = None;
        for (i, t) in tenants.iter().enumerate() {
            for n in &t.numbers {
                by_number.insert(n.clone(), i);
            }
            by_id.insert(t.id.clone(), i);
            if t.fallback && fallback.is_none() {
                fallback = Some(i);
            }
        }
        Self { tenants, by_number, by_id, fallback }
    }

    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

    /// The tenant owning the dialed number (any common formatting accepted), or the fallback.
    pub fn resolve(&self, dialed: &str) -> Option<Arc<Tenant>> {
        let exact = normalize_e164(dialed).and_then(|n| self.by_number.get(&n).copied());
        exact.or(self.fallback).map(|i| Arc::clone(&self.tenants[i]))
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<Tenant>> {
        self.by_id.get(id).map(|&i| Arc::clone(&self.tenants[i]))
    }
}

/// Normalises a phone number to E.164 (`+` followed by 7 to 15 digits). Accepts spaces,
/// dashes, dots, parentheses and a leading `00` international prefix. `None` if it is not a
/// phone number (e.g. `client:alice`, `sip:…`, or too short/long).
pub fn normalize_e164(raw: &str) -> Option<String> {
    let s = raw.trim();
    let (rest, had_plus) = match s.strip_prefix('+') {
        Some(r) => (r, true),
        None => (s, false),
    };
    let mut digits = String::with_capacity(16);
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' | '\u{a0}' => {}
            _ => return None,
        }
    }
    if !had_plus {
        // Only an explicit international prefix is unambiguous without a country context.
        digits = digits.strip_prefix("00")?.to_string();
    }
    if digits.starts_with('0') || !(7..=15).contains(&digits.len()) {
        return None;
    }
    Some(format!("+{digits}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_normalisation() {
        assert_eq!(normalize_e164("+39 02 111 1111").as_deref(), Some("+39021111111"));
        assert_eq!(normalize_e164("0039-06-2222222").as_deref(), Some("+39062222222"));
        assert_eq!(normalize_e164("+1 (415) 555-0100").as_deref(), Some("+14155550100"));
        assert_eq!(normalize_e164("client:alice"), None);
        assert_eq!(normalize_e164("021111111"), None);
        assert_eq!(normalize_e164("+12"), None);
        assert_eq!(normalize_e164("+1234567890123456"), None);
    }
}
