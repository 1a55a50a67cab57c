//! The Realtime session a tenant gets: the `session.update` we send and the check of the
//! `session.updated` the server answers. Relaying starts only once that check passes.

use serde_json::{Value, json};

use crate::core::domain::tenant::{AudioFormat, Tenant};

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
    /// Function tools (GA definitions).
    pub tools: Vec<serde_json::Value>,
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
            tools: t.tools.iter().map(|&tool| crate::core::realtime::tools::definition(tool)).collect(),
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
                "instructions": self.instructions,
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
        if session["instructions"].as_str() != Some(self.instructions.as_str()) {
            problems.push("instructions differ from the tenant's prompt".into());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
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
            tools: vec![crate::core::realtime::tools::definition(crate::core::domain::tenant::BuiltinTool::EndCall)],
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
}
