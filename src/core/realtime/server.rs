//! Server events of the OpenAI Realtime API, GA dialect (protocols.md C.5).
//!
//! Parsed into a flat borrowed view first (fast: the audio delta stays a slice of the frame),
//! then into [`ServerEvent`]. Unknown event types are a variant, not an error.

use std::borrow::Cow;

use serde::Deserialize;

use crate::core::borrow::opt_cow;

#[derive(Debug, Deserialize)]
struct Raw<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    delta: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    item_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    response_id: Option<Cow<'a, str>>,
    #[serde(default)]
    transcript: Option<String>,
    #[serde(default)]
    audio_start_ms: Option<u64>,
    #[serde(default)]
    audio_end_ms: Option<u64>,
    #[serde(default)]
    response: Option<RawResponse>,
    #[serde(default)]
    session: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    item: Option<RawItem>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct RawResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    status_details: Option<serde_json::Value>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct RawItem {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

/// `error` payload (protocols.md C.5). Every field may be absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ApiError {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
}

impl ApiError {
    /// Errors after which the session is gone (followed by a close frame).
    pub fn is_fatal(&self) -> bool {
        matches!(self.code.as_deref(), Some("session_expired" | "beta_api_shape_disabled"))
    }
}

/// Token usage of one response (`response.done.response.usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Usage {
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub input_token_details: InputTokenDetails,
    #[serde(default)]
    pub output_token_details: OutputTokenDetails,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct InputTokenDetails {
    #[serde(default)]
    pub text_tokens: u64,
    #[serde(default)]
    pub audio_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct OutputTokenDetails {
    #[serde(default)]
    pub text_tokens: u64,
    #[serde(default)]
    pub audio_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.total_tokens += o.total_tokens;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.input_token_details.text_tokens += o.input_token_details.text_tokens;
        self.input_token_details.audio_tokens += o.input_token_details.audio_tokens;
        self.input_token_details.cached_tokens += o.input_token_details.cached_tokens;
        self.output_token_details.text_tokens += o.output_token_details.text_tokens;
        self.output_token_details.audio_tokens += o.output_token_details.audio_tokens;
    }
}

/// The server events the bridge acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent<'a> {
    SessionCreated,
    SessionUpdated {
        session: serde_json::Value,
    },
    SpeechStarted {
        audio_start_ms: u64,
        item_id: Option<String>,
    },
    SpeechStopped {
        audio_end_ms: u64,
        item_id: Option<String>,
    },
    InputCommitted {
        item_id: Option<String>,
    },
    InputTranscriptionCompleted {
        item_id: String,
        transcript: String,
    },
    InputTranscriptionFailed {
        item_id: String,
        error: ApiError,
    },
    ResponseCreated {
        response_id: String,
    },
    ResponseDone {
        response_id: String,
        status: String,
        reason: Option<String>,
        usage: Option<Usage>,
    },
    OutputItemAdded {
        response_id: Option<String>,
        item_id: String,
        item_type: String,
        role: Option<String>,
    },
    /// Agent audio, base64 in the session's output format.
    AudioDelta {
        response_id: Option<Cow<'a, str>>,
        item_id: Cow<'a, str>,
        delta: Cow<'a, str>,
    },
    AudioDone {
        item_id: String,
    },
    TranscriptDelta {
        item_id: String,
        delta: String,
    },
    TranscriptDone {
        item_id: String,
        transcript: String,
    },
    FunctionCallArgumentsDone {
        item_id: Option<String>,
        call_id: String,
        name: String,
        arguments: String,
    },
    ItemTruncated {
        item_id: String,
        audio_end_ms: u64,
    },
    Error(ApiError),
    /// Any other event type; logged and ignored.
    Other(String),
}

/// A frame that could not be read as a server event at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a JSON event: {0}")]
    NotJson(String),
    #[error("`{event}` without `{field}`")]
    MissingField { event: &'static str, field: &'static str },
}

fn need<T>(v: Option<T>, event: &'static str, field: &'static str) -> Result<T, ParseError> {
    v.ok_or(ParseError::MissingField { event, field })
}

impl<'a> ServerEvent<'a> {
    pub fn parse(text: &'a str) -> Result<Self, ParseError> {
        let r: Raw<'a> = serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))?;
        let own = |c: Option<Cow<'a, str>>| c.map(Cow::into_owned);
        Ok(match r.kind.as_ref() {
            "response.output_audio.delta" => ServerEvent::AudioDelta {
                response_id: r.response_id,
                item_id: need(r.item_id, "response.output_audio.delta", "item_id")?,
                delta: need(r.delta, "response.output_audio.delta", "delta")?,
            },
            "session.created" => ServerEvent::SessionCreated,
            "session.updated" => {
                ServerEvent::SessionUpdated { session: need(r.session, "session.updated", "session")? }
            }
            "input_audio_buffer.speech_started" => {
                ServerEvent::SpeechStarted { audio_start_ms: r.audio_start_ms.unwrap_or(0), item_id: own(r.item_id) }
            }
            "input_audio_buffer.speech_stopped" => {
                ServerEvent::SpeechStopped { audio_end_ms: r.audio_end_ms.unwrap_or(0), item_id: own(r.item_id) }
            }
            "input_audio_buffer.committed" => ServerEvent::InputCommitted { item_id: own(r.item_id) },
            "conversation.item.input_audio_transcription.completed" => ServerEvent::InputTranscriptionCompleted {
                item_id: need(own(r.item_id), "transcription.completed", "item_id")?,
                transcript: r.transcript.unwrap_or_default(),
            },
            "conversation.item.input_audio_transcription.failed" => ServerEvent::InputTranscriptionFailed {
                item_id: need(own(r.item_id), "transcription.failed", "item_id")?,
                error: r.error.unwrap_or_default(),
            },
            "response.created" => {
                let resp = need(r.response, "response.created", "response")?;
                ServerEvent::ResponseCreated { response_id: resp.id.unwrap_or_default() }
            }
            "response.done" => {
                let resp = need(r.response, "response.done", "response")?;
                let reason = resp
                    .status_details
                    .as_ref()
                    .and_then(|d| d.get("reason"))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                let _ = resp.metadata;
                ServerEvent::ResponseDone {
                    response_id: resp.id.unwrap_or_default(),
                    status: resp.status.unwrap_or_default(),
                    reason,
                    usage: resp.usage,
                }
            }
            "response.output_item.added" => {
                let item = need(r.item, "response.output_item.added", "item")?;
                ServerEvent::OutputItemAdded {
                    response_id: own(r.response_id),
                    item_id: need(item.id, "response.output_item.added", "item.id")?,
                    item_type: item.kind.unwrap_or_default(),
                    role: item.role,
                }
            }
            "response.output_audio.done" => {
                ServerEvent::AudioDone { item_id: need(own(r.item_id), "response.output_audio.done", "item_id")? }
            }
            "response.output_audio_transcript.delta" => ServerEvent::TranscriptDelta {
                item_id: need(own(r.item_id), "output_audio_transcript.delta", "item_id")?,
                delta: own(r.delta).unwrap_or_default(),
            },
            "response.output_audio_transcript.done" => ServerEvent::TranscriptDone {
                item_id: need(own(r.item_id), "output_audio_transcript.done", "item_id")?,
                transcript: r.transcript.unwrap_or_default(),
            },
            "response.function_call_arguments.done" => ServerEvent::FunctionCallArgumentsDone {
                item_id: own(r.item_id),
                call_id: need(r.call_id, "function_call_arguments.done", "call_id")?,
                name: r.name.unwrap_or_default(),
                arguments: r.arguments.unwrap_or_default(),
            },
            "conversation.item.truncated" => ServerEvent::ItemTruncated {
                item_id: need(own(r.item_id), "conversation.item.truncated", "item_id")?,
                audio_end_ms: r.audio_end_ms.unwrap_or(0),
            },
            "error" => ServerEvent::Error(r.error.unwrap_or_default()),
            other => {
                let _ = r.usage;
                ServerEvent::Other(other.to_owned())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_ga_events() {
        let d = r#"{"type":"response.output_audio.delta","event_id":"event_Ct1Ok8","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"//7+/fz7+vn4"}"#;
        match ServerEvent::parse(d).unwrap() {
            ServerEvent::AudioDelta { item_id, delta: Cow::Borrowed(b), .. } => {
                assert_eq!((item_id.as_ref(), b), ("item_1", "//7+/fz7+vn4"))
            }
            e => panic!("{e:?}"),
        }
        let done = r#"{"type":"response.done","event_id":"event_X9","response":{"object":"realtime.response","id":"resp_X","status":"cancelled","status_details":{"type":"cancelled","reason":"turn_detected"},"output":[],"usage":{"total_tokens":200,"input_tokens":150,"output_tokens":50},"metadata":null}}"#;
        assert_eq!(
            ServerEvent::parse(done).unwrap(),
            ServerEvent::ResponseDone {
                response_id: "resp_X".into(),
                status: "cancelled".into(),
                reason: Some("turn_detected".into()),
                usage: Some(Usage { total_tokens: 200, input_tokens: 150, output_tokens: 50, ..Default::default() }),
            }
        );
        let ss =
            r#"{"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":1236,"item_id":"item_U"}"#;
        assert_eq!(
            ServerEvent::parse(ss).unwrap(),
            ServerEvent::SpeechStarted { audio_start_ms: 1236, item_id: Some("item_U".into()) }
        );
        let err = r#"{"type":"error","event_id":"event_E2","error":{"type":"invalid_request_error","code":"session_expired","message":"Your session hit the maximum duration of 60 minutes.","param":null,"event_id":null}}"#;
        let ServerEvent::Error(e) = ServerEvent::parse(err).unwrap() else { panic!() };
        assert!(e.is_fatal());
        let tr = r#"{"type":"conversation.item.input_audio_transcription.completed","event_id":"e","item_id":"item_U","content_index":0,"transcript":"Hi, I'd like to book.","usage":{"type":"duration","seconds":2}}"#;
        assert_eq!(
            ServerEvent::parse(tr).unwrap(),
            ServerEvent::InputTranscriptionCompleted {
                item_id: "item_U".into(),
                transcript: "Hi, I'd like to book.".into()
            }
        );
        assert_eq!(
            ServerEvent::parse(r#"{"type":"rate_limits.updated","rate_limits":[]}"#).unwrap(),
            ServerEvent::Other("rate_limits.updated".into())
        );
    }

    #[test]
    fn broken_events_are_errors() {
        for bad in ["", "{}", "nope", r#"{"type":"response.output_audio.delta"}"#, r#"{"type":"response.done"}"#] {
            assert!(ServerEvent::parse(bad).is_err(), "{bad}");
        }
    }
}
