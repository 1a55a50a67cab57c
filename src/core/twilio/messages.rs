//! Twilio Media Streams messages (protocols.md A.4).
//!
//! Inbound messages are parsed into borrowed views: the `media` payload stays a slice of the
//! received text so it can be relayed without copying. Outbound messages are written straight
//! into strings; the stream id is JSON-escaped once per call ([`OutboundWriter`]).
//! This module must not allocate per frame beyond the outbound string itself.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::core::borrow::opt_cow;

/// Why an inbound text frame was not a usable message. Counted and ignored by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("`{event}` message without `{field}`")]
    MissingField { event: &'static str, field: &'static str },
    #[error("unknown event `{0}`")]
    UnknownEvent(String),
}

#[derive(Debug, Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default, rename = "streamSid", deserialize_with = "opt_cow")]
    stream_sid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    media: Option<RawMedia<'a>>,
    #[serde(default)]
    start: Option<RawStart>,
    #[serde(borrow, default)]
    mark: Option<RawName<'a>>,
    #[serde(borrow, default)]
    dtmf: Option<RawDigit<'a>>,
    #[serde(default)]
    stop: Option<RawStop>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawMedia<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    track: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    payload: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct RawName<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    name: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct RawDigit<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    digit: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct RawStop {
    #[serde(default, rename = "callSid")]
    call_sid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawStart {
    #[serde(default, rename = "streamSid")]
    stream_sid: Option<String>,
    #[serde(default, rename = "callSid")]
    call_sid: Option<String>,
    #[serde(default, rename = "accountSid")]
    account_sid: Option<String>,
    #[serde(default, rename = "customParameters")]
    custom_parameters: BTreeMap<String, String>,
    #[serde(default, rename = "mediaFormat")]
    media_format: Option<MediaFormat>,
}

/// `start.mediaFormat`; Twilio always sends mu-law 8000 Hz mono.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MediaFormat {
    #[serde(default)]
    pub encoding: String,
    #[serde(default, rename = "sampleRate")]
    pub sample_rate: u32,
    #[serde(default)]
    pub channels: u32,
}

/// The `start` message: who this stream belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub stream_sid: String,
    pub call_sid: String,
    pub account_sid: String,
    pub custom_parameters: BTreeMap<String, String>,
    pub media_format: Option<MediaFormat>,
}

/// One inbound message, borrowing from the received text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    Connected {
        protocol: Option<String>,
        version: Option<String>,
    },
    Start(Start),
    /// Caller audio: base64 mu-law, not yet decoded.
    Media {
        timestamp_ms: Option<u64>,
        payload: Cow<'a, str>,
        inbound: bool,
    },
    Mark {
        name: Cow<'a, str>,
    },
    Dtmf {
        digit: Cow<'a, str>,
    },
    Stop {
        call_sid: Option<String>,
    },
}

impl<'a> Inbound<'a> {
    /// Parses one text frame. Unknown fields are ignored; unknown events are an error so the
    /// caller can count them.
    pub fn parse(text: &'a str) -> Result<Self, ParseError> {
        let raw: Raw<'a> = serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))?;
        match raw.event.as_ref() {
            "media" => {
                let m = raw.media.ok_or(ParseError::MissingField { event: "media", field: "media" })?;
                let payload = m.payload.ok_or(ParseError::MissingField { event: "media", field: "media.payload" })?;
                let timestamp_ms = m.timestamp.and_then(|t| t.parse::<u64>().ok());
                let inbound = m.track.as_deref().is_none_or(|t| t == "inbound" || t == "inbound_track");
                Ok(Inbound::Media { timestamp_ms, payload, inbound })
            }
            "mark" => {
                let name = raw
                    .mark
                    .and_then(|m| m.name)
                    .ok_or(ParseError::MissingField { event: "mark", field: "mark.name" })?;
                Ok(Inbound::Mark { name })
            }
            "start" => {
                let s = raw.start.ok_or(ParseError::MissingField { event: "start", field: "start" })?;
                let stream_sid = s
                    .stream_sid
                    .or(raw.stream_sid.map(Cow::into_owned))
                    .ok_or(ParseError::MissingField { event: "start", field: "start.streamSid" })?;
                let call_sid = s.call_sid.ok_or(ParseError::MissingField { event: "start", field: "start.callSid" })?;
                Ok(Inbound::Start(Start {
                    stream_sid,
                    call_sid,
                    account_sid: s.account_sid.unwrap_or_default(),
                    custom_parameters: s.custom_parameters,
                    media_format: s.media_format,
                }))
            }
            "dtmf" => {
                let digit = raw
                    .dtmf
                    .and_then(|d| d.digit)
                    .ok_or(ParseError::MissingField { event: "dtmf", field: "dtmf.digit" })?;
                Ok(Inbound::Dtmf { digit })
            }
            "stop" => Ok(Inbound::Stop { call_sid: raw.stop.and_then(|s| s.call_sid) }),
            "connected" => Ok(Inbound::Connected { protocol: raw.protocol, version: raw.version }),
            other => Err(ParseError::UnknownEvent(truncate(other, 64).to_string())),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Writes the three messages Twilio accepts from us (`media`, `mark`, `clear`) for one stream.
#[derive(Debug, Clone)]
pub struct OutboundWriter {
    /// The stream id as a JSON string literal, quotes included.
    sid_json: String,
}

impl OutboundWriter {
    pub fn new(stream_sid: &str) -> Self {
        // Serialising a &str cannot fail.
        let sid_json = serde_json::to_string(stream_sid).unwrap_or_else(|_| "\"\"".into());
        Self { sid_json }
    }

    /// `{"event":"media","streamSid":…,"media":{"payload":"<base64>"}}`; `b64` must be base64.
    pub fn media(&self, b64: &str) -> String {
        let mut s = String::with_capacity(64 + self.sid_json.len() + b64.len());
        s.push_str(r#"{"event":"media","streamSid":"#);
        s.push_str(&self.sid_json);
        s.push_str(r#","media":{"payload":""#);
        s.push_str(b64);
        s.push_str(r#""}}"#);
        s
    }

    /// `mark` with a name made of safe characters only (ours: letters, digits, `.`, `-`).
    pub fn mark(&self, name: &str) -> String {
        debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
        let mut s = String::with_capacity(56 + self.sid_json.len() + name.len());
        s.push_str(r#"{"event":"mark","streamSid":"#);
        s.push_str(&self.sid_json);
        s.push_str(r#","mark":{"name":""#);
        s.push_str(name);
        s.push_str(r#""}}"#);
        s
    }

    pub fn clear(&self) -> String {
        format!(r#"{{"event":"clear","streamSid":{}}}"#, self.sid_json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_messages() {
        let start = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"tenant":"t","caller":"+15551234567"}},"streamSid":"MZ1"}"#;
        let Inbound::Start(s) = Inbound::parse(start).unwrap() else { panic!("not start") };
        assert_eq!((s.stream_sid.as_str(), s.call_sid.as_str()), ("MZ1", "CA1"));
        assert_eq!(s.custom_parameters.get("tenant").map(String::as_str), Some("t"));
        assert_eq!(s.media_format.unwrap().sample_rate, 8000);

        let media = r#"{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"no+JhoaJjpzS"},"streamSid":"MZ1"}"#;
        assert_eq!(
            Inbound::parse(media).unwrap(),
            Inbound::Media { timestamp_ms: Some(5), payload: Cow::Borrowed("no+JhoaJjpzS"), inbound: true }
        );
        // A borrowed payload: no copy on the hot path.
        let Inbound::Media { payload: Cow::Borrowed(_), .. } = Inbound::parse(media).unwrap() else {
            panic!("payload was copied")
        };
        let mark = r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"my label"}}"#;
        assert_eq!(Inbound::parse(mark).unwrap(), Inbound::Mark { name: "my label".into() });
        let dtmf =
            r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}"#;
        assert_eq!(Inbound::parse(dtmf).unwrap(), Inbound::Dtmf { digit: "1".into() });
        let stop =
            r#"{"event":"stop","sequenceNumber":"5","stop":{"accountSid":"AC1","callSid":"CA1"},"streamSid":"MZ1"}"#;
        assert_eq!(Inbound::parse(stop).unwrap(), Inbound::Stop { call_sid: Some("CA1".into()) });
        let connected = r#"{"event": "connected", "protocol": "Call", "version": "1.0.0"}"#;
        assert!(matches!(Inbound::parse(connected).unwrap(), Inbound::Connected { .. }));
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"event":"media"}"#,
            r#"{"event":"media","media":{}}"#,
            r#"{"event":"media","media":{"payload":5}}"#,
            r#"{"event":"start","start":{}}"#,
            r#"{"event":"mark","mark":{}}"#,
            r#"{"event":"bogus"}"#,
            r#"{"event":7}"#,
        ] {
            assert!(Inbound::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn outbound_messages_are_exact_json() {
        let w = OutboundWriter::new("MZ\"1");
        assert_eq!(w.media("AH+A/w=="), r#"{"event":"media","streamSid":"MZ\"1","media":{"payload":"AH+A/w=="}}"#);
        assert_eq!(w.mark("g0.7"), r#"{"event":"mark","streamSid":"MZ\"1","mark":{"name":"g0.7"}}"#);
        assert_eq!(w.clear(), r#"{"event":"clear","streamSid":"MZ\"1"}"#);
        for s in [w.media("AA=="), w.mark("a"), w.clear()] {
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(v["streamSid"], "MZ\"1");
        }
    }
}
