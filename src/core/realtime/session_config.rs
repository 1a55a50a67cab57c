//! The Realtime session a tenant gets: the `session.update` we send and the check of the
//! `session.updated` the server answers. Relaying starts only once that check passes.

use serde_json::{Value, json};

use crate::core::domain::tenant::{AudioFormat, Tenant, WEEKDAYS};
use crate::core::realtime::tools;

/// What the session must look like for this call.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSpec {
    pub instructions: String,
    pub voice: String,
    pub audio_format: AudioFormat,
    pub language: String,
    pub transcribe_model: String,
    pub threshold: f32,
    pub prefix_padding_ms: u32,
    pub silence_duration_ms: u32,
    /// Let the server cancel a response when the caller starts talking: only when the tenant
    /// allows barge-in, otherwise the model would drop a turn the caller keeps hearing.
    pub interrupt_response: bool,
    /// Function tools (GA definitions): the tenant's built-ins, then its webhook tools.
    pub tools: Vec<serde_json::Value>,
    /// The business's local date and time when the call starts, e.g. `Saturday 21 November
    /// 2026, 20:05 (Europe/Rome)` (see [`format_today`]). The shell fills it (the core reads no
    /// clock); when set, "Today is …." is appended to the instructions so the model can resolve
    /// "tomorrow" and "next Friday".
    pub today: Option<String>,
}

impl SessionSpec {
    pub fn for_tenant(t: &Tenant, transcribe_model: &str) -> Self {
        Self {
            instructions: t.instructions.clone(),
            voice: t.voice.clone(),
            audio_format: t.audio_format,
            language: t.language.clone(),
            transcribe_model: transcribe_model.to_owned(),
            threshold: t.turn_detection.threshold,
            prefix_padding_ms: t.turn_detection.prefix_padding_ms,
            silence_duration_ms: t.turn_detection.silence_duration_ms,
            interrupt_response: t.barge_in.enabled,
            tools: t
                .tools
                .iter()
                .map(|&tool| tools::definition(tool, t))
                .chain(t.webhook_tools.iter().map(tools::webhook_definition))
                .collect(),
            today: None,
        }
    }

    /// Equal in everything but [`Self::today`] (a pre-warmed session opened a few seconds
    /// earlier, possibly in the previous minute, is still the right session).
    pub fn same_apart_from_today(&self, other: &Self) -> bool {
        let Self {
            instructions,
            voice,
            audio_format,
            language,
            transcribe_model,
            threshold,
            prefix_padding_ms,
            silence_duration_ms,
            interrupt_response,
            tools,
            today: _,
        } = self;
        *instructions == other.instructions
            && *voice == other.voice
            && *audio_format == other.audio_format
            && *language == other.language
            && *transcribe_model == other.transcribe_model
            && *threshold == other.threshold
            && *prefix_padding_ms == other.prefix_padding_ms
            && *silence_duration_ms == other.silence_duration_ms
            && *interrupt_response == other.interrupt_response
            && *tools == other.tools
    }

    /// The instructions actually sent: the tenant's, plus today's date when known.
    pub fn effective_instructions(&self) -> String {
        match &self.today {
            Some(today) => format!("{}\n\nToday is {today}.", self.instructions),
            None => self.instructions.clone(),
        }
    }

    fn format_json(&self) -> Value {
        match self.audio_format {
            AudioFormat::Pcmu => json!({"type":"audio/pcmu"}),
            AudioFormat::Pcm24k => json!({"type":"audio/pcm","rate":24000}),
        }
    }

    /// The `session.update` event (GA shape, protocols.md C.3/C.4).
    pub fn session_update(&self) -> String {
        // The transcription language wants the primary subtag only ("it", not "it-IT").
        let lang = self.language.split(['-', '_']).next().unwrap_or("").to_ascii_lowercase();
        json!({
            "type": "session.update",
            "event_id": "sb_session_update",
            "session": {
                "type": "realtime",
                "instructions": self.effective_instructions(),
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "format": self.format_json(),
                        "noise_reduction": {"type": "near_field"},
                        "transcription": {"model": self.transcribe_model, "language": lang},
                        "turn_detection": {
                            "type": "server_vad",
                            "threshold": self.threshold,
                            "prefix_padding_ms": self.prefix_padding_ms,
                            "silence_duration_ms": self.silence_duration_ms,
                            "idle_timeout_ms": null,
                            "create_response": true,
                            "interrupt_response": self.interrupt_response
                        }
                    },
                    "output": {"format": self.format_json(), "voice": self.voice, "speed": 1.0}
                },
                "tools": self.tools,
                "tool_choice": "auto",
                "max_output_tokens": "inf"
            }
        })
        .to_string()
    }

    /// Checks that the effective session (from `session.updated`) is what we asked for: the
    /// audio formats (a mismatch would play noise), voice, server turn detection, transcription
    /// and instructions. Returns every mismatch.
    pub fn check_updated(&self, session: &Value) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let want_format = self.format_json();
        for dir in ["input", "output"] {
            let got = &session["audio"][dir]["format"];
            let same = got["type"] == want_format["type"]
                && (self.audio_format == AudioFormat::Pcmu || got["rate"] == want_format["rate"]);
            if !same {
                problems.push(format!("audio.{dir}.format is {got}, expected {want_format}"));
            }
        }
        let voice = &session["audio"]["output"]["voice"];
        if voice.as_str() != Some(self.voice.as_str()) {
            problems.push(format!("voice is {voice}, expected {:?}", self.voice));
        }
        let td = &session["audio"]["input"]["turn_detection"]["type"];
        if td.as_str() != Some("server_vad") {
            problems.push(format!("turn_detection.type is {td}, expected \"server_vad\""));
        }
        if session["audio"]["input"]["transcription"].is_null() {
            problems.push("input transcription is off".into());
        }
        if session["instructions"].as_str() != Some(self.effective_instructions().as_str()) {
            problems.push("instructions differ from the tenant's prompt".into());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

/// `Saturday 21 November 2026, 20:05 (Europe/Rome)`: the value for [`SessionSpec::today`], from
/// the business's local time (computed by the shell) and its zone name.
pub fn format_today(now_local: time::PrimitiveDateTime, zone: &str) -> String {
    format!(
        "{} {} {} {}, {:02}:{:02} ({zone})",
        WEEKDAYS[usize::from(now_local.weekday().number_days_from_monday())],
        now_local.day(),
        now_local.month(),
        now_local.year(),
        now_local.hour(),
        now_local.minute()
    )
}

/// The per-response instructions that make the agent open the call with the tenant's greeting.
pub fn greeting_instructions(greeting: &str) -> String {
    format!(
        "The caller has just been connected. Greet them now by saying exactly this sentence, \
         in its own language, and nothing else: \"{greeting}\""
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(format: AudioFormat) -> SessionSpec {
        SessionSpec {
            instructions: "Sei l'assistente.".into(),
            voice: "marin".into(),
            audio_format: format,
            language: "it-IT".into(),
            transcribe_model: "gpt-4o-transcribe".into(),
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            interrupt_response: true,
            tools: vec![tools::definition(
                crate::core::domain::tenant::BuiltinTool::EndCall,
                &tools::tests::full_tenant(),
            )],
            today: None,
        }
    }

    #[test]
    fn update_is_ga_shaped_and_its_echo_passes_the_check() {
        for f in [AudioFormat::Pcmu, AudioFormat::Pcm24k] {
            let s = spec(f);
            let ev: Value = serde_json::from_str(&s.session_update()).unwrap();
            assert_eq!(ev["session"]["type"], "realtime");
            assert_eq!(ev["session"]["audio"]["input"]["transcription"]["language"], "it");
            assert_eq!(ev["session"]["audio"]["output"]["voice"], "marin");
            if f == AudioFormat::Pcmu {
                assert_eq!(ev["session"]["audio"]["input"]["format"], json!({"type":"audio/pcmu"}));
            } else {
                assert_eq!(ev["session"]["audio"]["output"]["format"], json!({"type":"audio/pcm","rate":24000}));
            }
            // A server that applied everything echoes the same session back.
            s.check_updated(&ev["session"]).unwrap();
        }
    }

    #[test]
    fn mismatches_are_all_reported() {
        let s = spec(AudioFormat::Pcmu);
        let mut ev: Value = serde_json::from_str(&s.session_update()).unwrap();
        ev["session"]["audio"]["output"]["format"] = json!({"type":"audio/pcm","rate":24000});
        ev["session"]["audio"]["output"]["voice"] = json!("alloy");
        ev["session"]["audio"]["input"]["transcription"] = Value::Null;
        let problems = s.check_updated(&ev["session"]).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn today_is_appended_to_the_instructions_and_checked() {
        let mut s = spec(AudioFormat::Pcmu);
        let plain: Value = serde_json::from_str(&s.session_update()).unwrap();
        assert_eq!(plain["session"]["instructions"], "Sei l'assistente.");

        s.today = Some(format_today(time::macros::datetime!(2026-11-21 20:05:59), "Europe/Rome"));
        let ev: Value = serde_json::from_str(&s.session_update()).unwrap();
        assert_eq!(
            ev["session"]["instructions"],
            "Sei l'assistente.\n\nToday is Saturday 21 November 2026, 20:05 (Europe/Rome)."
        );
        s.check_updated(&ev["session"]).unwrap();
        // An echo without the date line is a mismatch.
        assert_eq!(s.check_updated(&plain["session"]).unwrap_err().len(), 1);
        assert_eq!(
            format_today(time::macros::datetime!(2027-01-04 09:07), "UTC"),
            "Monday 4 January 2027, 09:07 (UTC)"
        );
    }

    #[test]
    fn tenant_tools_include_builtins_then_webhooks() {
        let mut t = crate::core::realtime::tools::tests::full_tenant();
        t.webhook_tools.push(crate::core::domain::tenant::WebhookTool {
            name: "check_loyalty".into(),
            description: "Loyalty points".into(),
            parameters: json!({"type": "object", "properties": {}}),
            url: "https://crm.example.com/hook".into(),
            secret: "0123456789abcdef".into(),
            timeout_ms: 5000,
            side_effects: false,
        });
        let s = SessionSpec::for_tenant(&t, "gpt-4o-transcribe");
        let names: Vec<&str> = s.tools.iter().map(|d| d["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["end_call", "business_info", "transfer_call", "take_booking", "check_loyalty"]);
        assert_eq!(s.today, None);
        assert_eq!(s.effective_instructions(), t.instructions);

        // A later minute is the same session; another tenant definition is not.
        let mut a = s.clone();
        a.today = Some("Saturday 21 November 2026, 20:05 (Europe/Rome)".into());
        let mut b = s.clone();
        b.today = Some("Saturday 21 November 2026, 20:06 (Europe/Rome)".into());
        assert!(a.same_apart_from_today(&b));
        b.voice = "cedar".into();
        assert!(!a.same_apart_from_today(&b));
        b = a.clone();
        b.tools.pop();
        assert!(!a.same_apart_from_today(&b));
    }
}
