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
    /// Where `transfer_call` and DTMF transfers send the caller; the first is the default.
    pub transfer: Vec<TransferTarget>,
    /// Rules `take_booking` checks a booking against; `None` = the tenant takes no bookings.
    pub booking: Option<BookingRules>,
    /// Keypad digits the caller may press, in key order (`0`-`9`, `*`, `#`).
    pub dtmf: Vec<(char, DtmfAction)>,
    /// Tenant-defined function tools answered by an HTTPS webhook.
    pub webhook_tools: Vec<WebhookTool>,
}

/// A person or desk the call can be transferred to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferTarget {
    /// What the model and DTMF config call it (`staff`, `kitchen`).
    pub name: String,
    /// E.164, normalised.
    pub number: String,
}

/// What pressing a key during the call does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtmfAction {
    /// Transfer to the named target, or to the default (first) one.
    Transfer(Option<String>),
    /// Hang up.
    EndCall,
}

/// A tenant-defined tool: the model's arguments are POSTed to `url`, the answer goes back to
/// the model.
#[derive(Clone, PartialEq)]
pub struct WebhookTool {
    /// `^[a-z][a-z0-9_]{0,63}$`, not a built-in tool's name.
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments (an object schema).
    pub parameters: serde_json::Value,
    /// `https://…`, or `http://` to localhost only.
    pub url: String,
    /// Shared secret used to sign requests; redacted in `Debug`.
    pub secret: String,
    pub timeout_ms: u32,
    /// The call changes something outside (an order, a record): worth mentioning in summaries
    /// and never retried blindly.
    pub side_effects: bool,
}

impl std::fmt::Debug for WebhookTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTool")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("parameters", &self.parameters)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms)
            .field("side_effects", &self.side_effects)
            .finish()
    }
}

/// What `take_booking` accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingRules {
    pub min_party: u32,
    pub max_party: u32,
    pub hours: WeeklyHours,
    /// No booking later than this many minutes before a service closes.
    pub last_booking_before_close_min: u32,
    /// How far ahead (in days from today) a booking may be.
    pub max_days_ahead: u32,
}

/// Minutes in a day.
pub const DAY_MINUTES: u16 = 1440;

/// English weekday names, index 0 = Monday.
pub const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Opening hours per weekday (index 0 = Monday). Each service is `(open, close)` in minutes
/// from midnight with `open < 1440` and `open < close`; a service that runs past midnight has
/// `close > 1440` (19:00-01:00 is `(1140, 1500)`) and counts as the day it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeeklyHours {
    pub days: [Vec<(u16, u16)>; 7],
}

impl WeeklyHours {
    /// The service (`(weekday it started, open, close)`) that `minute` of `weekday` falls in,
    /// checking the day's own services first, then the previous day's past-midnight one.
    /// `minute` must be before the close and `minute + lead_before_close` at most the close.
    fn service_at(&self, weekday: usize, minute: u16, lead_before_close: u32) -> Option<(usize, u16, u16)> {
        let weekday = weekday % 7;
        let m = u32::from(minute);
        // Open at `m` (the close minute itself is not) and still open `lead` minutes later.
        let fits = |m: u32, (open, close): (u16, u16)| {
            m >= u32::from(open) && m < u32::from(close) && m + lead_before_close <= u32::from(close)
        };
        if let Some(&(open, close)) = self.days[weekday].iter().find(|&&s| fits(m, s)) {
            return Some((weekday, open, close));
        }
        let prev = (weekday + 6) % 7;
        let m = m + u32::from(DAY_MINUTES);
        self.days[prev].iter().find(|&&s| fits(m, s)).map(|&(open, close)| (prev, open, close))
    }

    /// Whether a booking for `minute` (from midnight) of `weekday` (0 = Monday) can be taken:
    /// it falls in a service that is open then and closes at least `lead_before_close` minutes
    /// later. A time after midnight also matches the previous day's past-midnight service.
    pub fn is_open_for_booking(&self, weekday: usize, minute: u16, lead_before_close: u32) -> bool {
        self.service_at(weekday, minute, lead_before_close).is_some()
    }

    /// The service `minute` of `weekday` falls in regardless of the booking lead (for "the
    /// last booking is at …" answers): `(weekday it started, open, close)`.
    pub fn service_containing(&self, weekday: usize, minute: u16) -> Option<(usize, u16, u16)> {
        self.service_at(weekday, minute, 0)
    }

    /// Whether the business is closed all week.
    pub fn is_always_closed(&self) -> bool {
        self.days.iter().all(Vec::is_empty)
    }

    /// One day's services, `12:00–14:30, 19:00–22:30`, or `closed`.
    pub fn describe_day(&self, weekday: usize) -> String {
        let services = &self.days[weekday % 7];
        if services.is_empty() {
            return "closed".to_owned();
        }
        services.iter().map(|&(o, c)| format!("{}–{}", hhmm(o), hhmm(c))).collect::<Vec<_>>().join(", ")
    }

    /// The week, e.g. `Mon closed; Tue 12:00–14:30, 19:00–22:30; …; Sun 12:00–14:30`.
    pub fn describe(&self) -> String {
        (0..7).map(|d| format!("{} {}", &WEEKDAYS[d][..3], self.describe_day(d))).collect::<Vec<_>>().join("; ")
    }
}

/// `HH:MM` for minutes from midnight; a past-midnight minute (≥ 1440) wraps (1500 → `01:00`).
pub fn hhmm(minute: u16) -> String {
    let m = minute % DAY_MINUTES;
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// Built-in function tools (names as the model sees them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinTool {
    /// Say goodbye, then hang up once the goodbye has been heard.
    EndCall,
    /// Opening hours, address, highlights from tenants.toml.
    BusinessInfo,
    /// Hand the call over to a person (one of [`Tenant::transfer`]).
    TransferCall,
    /// Record a table booking checked against [`Tenant::booking`].
    TakeBooking,
}

impl BuiltinTool {
    pub const ALL: [BuiltinTool; 4] =
        [BuiltinTool::EndCall, BuiltinTool::BusinessInfo, BuiltinTool::TransferCall, BuiltinTool::TakeBooking];

    pub fn name(self) -> &'static str {
        match self {
            BuiltinTool::EndCall => "end_call",
            BuiltinTool::BusinessInfo => "business_info",
            BuiltinTool::TransferCall => "transfer_call",
            BuiltinTool::TakeBooking => "take_booking",
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

    #[test]
    fn builtin_tool_names_round_trip() {
        for t in BuiltinTool::ALL {
            assert_eq!(BuiltinTool::from_name(t.name()), Some(t));
        }
        assert_eq!(BuiltinTool::from_name("transfer_call"), Some(BuiltinTool::TransferCall));
        assert_eq!(BuiltinTool::from_name("take_booking"), Some(BuiltinTool::TakeBooking));
        assert_eq!(BuiltinTool::from_name("launch"), None);
    }

    /// Tue-Sun lunch 12:00-14:30, Tue-Sat dinner 19:00-22:30, Fri also a late 23:00-01:00.
    fn week() -> WeeklyHours {
        let mut h = WeeklyHours::default();
        for d in 1..7 {
            h.days[d].push((720, 870));
        }
        for d in 1..6 {
            h.days[d].push((1140, 1350));
        }
        h.days[4].push((1380, 1500));
        h
    }

    #[test]
    fn open_for_booking_respects_services_and_the_lead() {
        let h = week();
        assert!(!h.is_open_for_booking(0, 780, 30), "closed on Monday");
        assert!(h.is_open_for_booking(1, 720, 30), "at opening");
        assert!(h.is_open_for_booking(1, 840, 30), "exactly the last booking");
        assert!(!h.is_open_for_booking(1, 841, 30), "after the last booking");
        assert!(h.is_open_for_booking(1, 841, 0), "no lead: until closing");
        assert!(!h.is_open_for_booking(1, 870, 0), "the close minute itself is closed");
        assert!(!h.is_open_for_booking(1, 719, 30), "before opening");
        assert!(!h.is_open_for_booking(1, 1000, 30), "between services");
        assert!(h.is_open_for_booking(4, 1380, 30), "Friday late service");
        assert!(!h.is_open_for_booking(6, 1200, 30), "no dinner on Sunday");
    }

    #[test]
    fn past_midnight_service_counts_on_the_next_calendar_day() {
        let h = week();
        // Friday 23:00-01:00: Saturday 00:20 and 00:30 are bookable with a 30-minute lead...
        assert!(h.is_open_for_booking(5, 20, 30));
        assert!(h.is_open_for_booking(5, 30, 30));
        // ...00:31 is not, and Friday's own 00:20 (Thursday night) is not either.
        assert!(!h.is_open_for_booking(5, 31, 30));
        assert!(!h.is_open_for_booking(4, 20, 30));
        assert_eq!(h.service_containing(5, 45), Some((4, 1380, 1500)));
        assert_eq!(h.service_containing(5, 60), None);
        // Sunday's past-midnight service spills into Monday (index wraps).
        let mut h = WeeklyHours::default();
        h.days[6].push((1320, 1560));
        assert!(h.is_open_for_booking(0, 60, 30));
        assert!(!h.is_open_for_booking(0, 120, 30));
    }

    #[test]
    fn describe_lists_the_week() {
        assert_eq!(
            week().describe(),
            "Mon closed; Tue 12:00–14:30, 19:00–22:30; Wed 12:00–14:30, 19:00–22:30; \
             Thu 12:00–14:30, 19:00–22:30; Fri 12:00–14:30, 19:00–22:30, 23:00–01:00; \
             Sat 12:00–14:30, 19:00–22:30; Sun 12:00–14:30"
        );
        assert!(WeeklyHours::default().is_always_closed());
        assert!(!week().is_always_closed());
        assert_eq!(hhmm(0), "00:00");
        assert_eq!(hhmm(1500), "01:00");
    }

    #[test]
    fn webhook_secret_is_redacted_in_debug() {
        let t = WebhookTool {
            name: "check_loyalty".into(),
            description: "d".into(),
            parameters: serde_json::json!({"type": "object"}),
            url: "https://crm.example.com/hook".into(),
            secret: "super-secret-value-123".into(),
            timeout_ms: 5000,
            side_effects: false,
        };
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("super-secret"), "{dbg}");
        assert!(dbg.contains("<redacted>") && dbg.contains("check_loyalty"), "{dbg}");
    }
}
