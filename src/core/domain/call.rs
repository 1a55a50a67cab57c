//! The record of one call, produced once by the session when the call ends and handed to a
//! `CallSink` (logged now; persisted by the after-call work).

use serde::{Deserialize, Serialize};

use crate::core::realtime::server::Usage;

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Twilio sent `stop`: the caller hung up (or the call was ended elsewhere).
    CallerHangup,
    /// The Media Streams socket closed without a `stop`.
    StreamClosed,
    /// The Realtime session could not be opened, was misconfigured, or dropped; the caller
    /// heard the apology.
    UpstreamFailed,
    /// The daemon shut down before the call ended.
    Shutdown,
    /// The stream misbehaved beyond repair (e.g. an oversized message).
    ProtocolError,
    /// The caller stayed silent through the idle prompt; the agent said goodbye.
    IdleCaller,
    /// The agent ended the call (`end_call`) after saying goodbye.
    AgentEnded,
    /// The call was handed to a person (`transfer_call`, or a key the tenant maps to it).
    Transferred,
}

impl EndReason {
    /// The wire name (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::CallerHangup => "caller_hangup",
            EndReason::StreamClosed => "stream_closed",
            EndReason::UpstreamFailed => "upstream_failed",
            EndReason::Shutdown => "shutdown",
            EndReason::ProtocolError => "protocol_error",
            EndReason::IdleCaller => "idle_caller",
            EndReason::AgentEnded => "agent_ended",
            EndReason::Transferred => "transferred",
        }
    }

    /// The call's outcome as the calls API filters it: `completed` (the conversation ended
    /// normally), `failed` (the agent could not serve the caller) or `interrupted` (the daemon
    /// stopped mid-call).
    pub fn outcome(self) -> &'static str {
        match self {
            EndReason::CallerHangup
            | EndReason::StreamClosed
            | EndReason::IdleCaller
            | EndReason::AgentEnded
            | EndReason::Transferred => "completed",
            EndReason::UpstreamFailed | EndReason::ProtocolError => "failed",
            EndReason::Shutdown => "interrupted",
        }
    }
}

/// Every value [`EndReason::outcome`] can return.
pub const CALL_OUTCOMES: [&str; 3] = ["completed", "failed", "interrupted"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    Caller,
    Agent,
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptTurn {
    pub speaker: Speaker,
    /// Milliseconds from the start of the call.
    pub start_ms: u64,
    /// What the caller said, or what the caller actually heard of the agent.
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// The agent was cut off by the caller (barge-in).
    #[serde(default)]
    pub interrupted: bool,
    /// Agent turns: ms of audio the caller heard / the model generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_ms: Option<u64>,
    /// Interrupted agent turns: the full text the model had generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_text: Option<String>,
}

/// Per-call counters, useful to operators and the load generator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub marks_sent: u64,
    pub marks_acked: u64,
    pub malformed_in: u64,
    pub malformed_upstream: u64,
    /// Caller frames that could not be relayed (upstream not ready and the 1 s backlog full).
    pub frames_dropped: u64,
    /// Agent audio deltas dropped because their item had been cut by a barge-in.
    pub late_deltas_dropped: u64,
    pub dtmf_digits: u64,
    /// Realtime sessions replaced between two turns before their time limit.
    pub rotations: u32,
    /// Start → first greeting audio frame sent to Twilio.
    pub first_audio_ms: Option<u64>,
    /// Speech onset (first VAD speech frame, or server speech_started) → `clear`, per barge-in.
    pub barge_in_max_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub tenant_id: String,
    pub call_sid: String,
    pub stream_sid: String,
    pub from: String,
    pub to: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    pub duration_ms: u64,
    pub end_reason: EndReason,
    /// Human detail for the end reason (e.g. the upstream error), no secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_detail: Option<String>,
    pub transcript: Vec<TranscriptTurn>,
    pub interruptions: u32,
    /// From the local VAD on the caller's frames.
    pub caller_talk_ms: u64,
    /// Agent audio the caller actually heard (acknowledged marks).
    pub agent_talk_ms: u64,
    pub usage: Usage,
    pub stats: CallStats,
    /// Each time the upstream dropped mid-call and a new session was opened.
    #[serde(default)]
    pub reconnects: Vec<ReconnectRecord>,
    /// Bookings taken during the call with `take_booking` (validated against the tenant's
    /// rules): the authoritative booking for the summary, the email and the API.
    #[serde(default)]
    pub bookings: Vec<crate::core::domain::booking::Booking>,
    /// Where the call was transferred to, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred_to: Option<String>,
}

/// One upstream drop during a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconnectRecord {
    /// Call-relative ms of the drop.
    pub at_ms: u64,
    pub reason: String,
    /// How long until the new session was ready; `None` if it never was.
    pub restored_after_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_reason_names_match_serde_and_outcomes_are_known() {
        for r in [
            EndReason::CallerHangup,
            EndReason::StreamClosed,
            EndReason::UpstreamFailed,
            EndReason::Shutdown,
            EndReason::ProtocolError,
            EndReason::IdleCaller,
            EndReason::AgentEnded,
            EndReason::Transferred,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), serde_json::Value::from(r.as_str()));
            assert!(CALL_OUTCOMES.contains(&r.outcome()), "{r:?}");
        }
        assert_eq!(EndReason::UpstreamFailed.outcome(), "failed");
        assert_eq!(EndReason::CallerHangup.outcome(), "completed");
    }
}
