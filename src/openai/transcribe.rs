//! `POST /v1/audio/transcriptions` (protocols.md D.3, D.4): one recording, or one chunk of a
//! long one, in; its [`Transcript`] or a classified error out.
//!
//! Like [`super::chat`] it does not retry: the job decides from
//! [`TranscribeError::is_retryable`] and [`TranscribeError::retry_after`], and splits the audio
//! when told it is too large. Chunks are stitched by `crate::core::domain::meeting::stitch`.
//! The API key never reaches an error or a log line.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use super::chat::{ApiFailure, header, read_failure, transport_message};
use crate::config::Secret;
use crate::core::domain::meeting::{Segment, Transcript};
use crate::core::domain::summary::language_code;

/// Default per-request budget. Long audio takes long: the service transcribes a 20-minute chunk
/// in tens of seconds to a few minutes, and the upload itself may be 25 MiB.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The service's limit on the whole multipart body (D.3: 25 MiB). A file this large is refused
/// here, before uploading it for nothing.
pub const MAX_REQUEST_BYTES: usize = 26_214_400;

/// What the service is asked to answer with, which decides whether timestamps come back (D.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// `whisper-1`: text plus segments with timestamps (`timestamp_granularities[]=segment`).
    VerboseJson,
    /// `gpt-4o-transcribe-diarize`: segments with timestamps and speaker labels.
    DiarizedJson,
    /// Everything else (`gpt-4o-transcribe`, `gpt-4o-mini-transcribe`…): text only.
    Json,
}

impl ResponseFormat {
    /// The richest format `model` supports: only `whisper-1` offers `verbose_json`, only the
    /// `-diarize` models `diarized_json`; the gpt-4o transcribe models reject anything but
    /// `json` and `text`.
    pub fn for_model(model: &str) -> ResponseFormat {
        let m = model.to_ascii_lowercase();
        if m.starts_with("whisper") {
            ResponseFormat::VerboseJson
        } else if m.contains("diarize") {
            ResponseFormat::DiarizedJson
        } else {
            ResponseFormat::Json
        }
    }

    /// The `response_format` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFormat::VerboseJson => "verbose_json",
            ResponseFormat::DiarizedJson => "diarized_json",
            ResponseFormat::Json => "json",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TranscribeClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<Secret>,
    model: String,
    /// Whole-request timeout (connect, upload, wait, read).
    pub timeout: Duration,
    /// Files above this are refused without sending ([`MAX_REQUEST_BYTES`] by default).
    pub max_file_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscribeError {
    /// 429 for pace: wait and retry.
    #[error("OpenAI rate limit (HTTP 429){}: {message}", after(*.retry_after))]
    RateLimited { retry_after: Option<Duration>, message: String },
    /// 5xx, 408, 409 or `x-should-retry: true`: retry.
    #[error("OpenAI server error (HTTP {status}){}: {message}", after(*.retry_after))]
    Server { status: u16, retry_after: Option<Duration>, message: String },
    /// No answer: connect failure, timeout, a body that could not be read.
    #[error("OpenAI request failed: {0}")]
    Transport(String),
    /// A 2xx whose body is not a transcription: retrying may help.
    #[error("OpenAI answered with something that is not a transcription: {0}")]
    Malformed(String),
    /// The audio is too big for one request: 413 (over 25 MiB, or over [`TranscribeClient::max_file_bytes`],
    /// checked before sending) or a 400 saying it is longer than the model takes. Split it
    /// into smaller chunks, then retry.
    #[error("the audio is too large for one transcription request (HTTP {status}): {message}")]
    TooLarge { status: u16, message: String },
    /// The service cannot take this audio or these options as sent (unknown file format, a
    /// response format the model does not offer, audio too short): do not retry as is.
    #[error("OpenAI cannot transcribe this file as sent (HTTP {status}): {message}")]
    Unsupported { status: u16, message: String },
    /// Any other refusal (401, 403, 404, a quota 429…): do not retry.
    #[error("OpenAI rejected the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("no OpenAI API key is configured (OPENAI_API_KEY)")]
    NoApiKey,
}

fn after(d: Option<Duration>) -> String {
    d.map(|d| format!(", retry after {:.1} s", d.as_secs_f64())).unwrap_or_default()
}

impl TranscribeError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TranscribeError::RateLimited { .. }
                | TranscribeError::Server { .. }
                | TranscribeError::Transport(_)
                | TranscribeError::Malformed(_)
        )
    }

    /// The delay the service asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TranscribeError::RateLimited { retry_after, .. } | TranscribeError::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

impl TranscribeClient {
    /// `base_url` e.g. `https://api.openai.com/v1`, with or without a trailing slash; `model`
    /// is `OPENAI_TRANSCRIBE_MODEL`.
    pub fn new(http: reqwest::Client, base_url: String, api_key: Option<Secret>, model: String) -> Self {
        let base_url = base_url.trim_end_matches('/').to_string();
        TranscribeClient { http, base_url, api_key, model, timeout: DEFAULT_TIMEOUT, max_file_bytes: MAX_REQUEST_BYTES }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Transcribes one file. `file_name` must carry the format's extension (`chunk-3.mp3`): the
    /// service detects the format from it. `language` (BCP-47 or ISO-639-1) helps accuracy;
    /// only its primary subtag is sent. Segments come back when the model gives timestamps
    /// ([`ResponseFormat::for_model`]), in milliseconds from the start of this file.
    pub async fn transcribe(
        &self,
        file_name: &str,
        mime: &str,
        bytes: Vec<u8>,
        language: Option<&str>,
    ) -> Result<Transcript, TranscribeError> {
        let key = self.api_key.as_ref().ok_or(TranscribeError::NoApiKey)?;
        if bytes.len() > self.max_file_bytes {
            return Err(TranscribeError::TooLarge {
                status: 413,
                message: format!("{} bytes, above the {} byte limit (not sent)", bytes.len(), self.max_file_bytes),
            });
        }
        if !has_extension(file_name) {
            return Err(TranscribeError::Unsupported {
                status: 400,
                message: format!(
                    "file name {file_name:?} has no extension: the service reads the format from it (not sent)"
                ),
            });
        }
        let format = ResponseFormat::for_model(&self.model);
        let language = language.and_then(iso_639_1);
        let size = bytes.len();
        let file = Part::bytes(bytes).file_name(file_name.to_string()).mime_str(mime).map_err(|_| {
            TranscribeError::Unsupported {
                status: 400,
                message: format!("{mime:?} is not a valid content type (not sent)"),
            }
        })?;
        // Field order as the SDK sends it (D.3), the file last.
        let mut form = Form::new().text("model", self.model.clone());
        if let Some(l) = &language {
            form = form.text("language", l.clone());
        }
        form = form.text("response_format", format.as_str());
        match format {
            ResponseFormat::VerboseJson => form = form.text("timestamp_granularities[]", "segment"),
            // Required by the diarize model above 30 s of audio; harmless below.
            ResponseFormat::DiarizedJson => form = form.text("chunking_strategy", "auto"),
            ResponseFormat::Json => {}
        }
        let form = form.part("file", file);

        let url = format!("{}/audio/transcriptions", self.base_url);
        let started = Instant::now();
        let resp = self
            .http
            .post(&url)
            .bearer_auth(key.expose())
            .multipart(form)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| TranscribeError::Transport(transport_message(&e, self.timeout)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let request_id = header(&headers, "x-request-id").map(str::to_string);
        let body = resp.bytes().await.map_err(|e| TranscribeError::Transport(transport_message(&e, self.timeout)))?;
        tracing::debug!(
            model = %self.model,
            status = status.as_u16(),
            request_id = request_id.as_deref().unwrap_or(""),
            elapsed_ms = started.elapsed().as_millis() as u64,
            audio_bytes = size,
            "transcription"
        );
        if status.is_success() {
            let json: Value = serde_json::from_slice(&body).map_err(|e| {
                TranscribeError::Malformed(format!("HTTP {} with a body that is not JSON: {e}", status.as_u16()))
            })?;
            return parse_transcription(&json, language.as_deref());
        }
        let err = classify(status, &headers, &body, Some(key));
        tracing::warn!(
            model = %self.model,
            status = status.as_u16(),
            request_id = request_id.as_deref().unwrap_or(""),
            retryable = err.is_retryable(),
            "transcription failed: {err}"
        );
        Err(err)
    }
}

/// `name.ext`, the extension non-empty.
fn has_extension(file_name: &str) -> bool {
    file_name.rsplit_once('.').is_some_and(|(stem, ext)| !stem.is_empty() && !ext.is_empty())
}

/// The ISO-639-1 code the endpoint takes, from a BCP-47 tag ("pt-BR" → "pt"); `None` when
/// there is none (sending a bad one would fail the request, sending none only costs accuracy).
fn iso_639_1(tag: &str) -> Option<String> {
    let primary = tag.trim().split(['-', '_']).next()?.to_ascii_lowercase();
    (primary.len() == 2 && primary.bytes().all(|c| c.is_ascii_lowercase())).then_some(primary)
}

/// Maps a non-2xx answer (D.4), with the transcription-specific readings of 413 and 400.
fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], key: Option<&Secret>) -> TranscribeError {
    let ApiFailure { status, message, code, param, retryable, retry_after } = read_failure(status, headers, body, key);
    if retryable {
        return match status {
            429 => TranscribeError::RateLimited { retry_after, message },
            _ => TranscribeError::Server { status, retry_after, message },
        };
    }
    let lower = message.to_ascii_lowercase();
    // 400 invalid_value: "audio duration 1500.3 seconds is longer than 1400 seconds which is
    // the maximum for this model" (D.3).
    if status == 413 || (status == 400 && lower.contains("longer than") && lower.contains("maximum")) {
        return TranscribeError::TooLarge { status, message };
    }
    let about_the_file = matches!(param.as_deref(), Some("file" | "response_format" | "timestamp_granularities[]"))
        || matches!(
            code.as_deref(),
            Some("unsupported_file" | "unsupported_value" | "invalid_file_format" | "audio_too_short")
        )
        || ["file format", "not compatible", "not supported", "unsupported", "too short"]
            .iter()
            .any(|w| lower.contains(w));
    if status == 400 && about_the_file {
        return TranscribeError::Unsupported { status, message };
    }
    TranscribeError::Rejected { status, message }
}

/// Reads a `json`, `verbose_json` or `diarized_json` body. `requested_language` stands in when
/// the answer names none (`json` does not).
fn parse_transcription(body: &Value, requested_language: Option<&str>) -> Result<Transcript, TranscribeError> {
    let malformed = |m: String| TranscribeError::Malformed(m);
    let text = body.get("text").and_then(Value::as_str).ok_or_else(|| malformed("no `text` string".into()))?;
    let mut segments = Vec::new();
    match body.get("segments") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, s) in list.iter().enumerate() {
                let secs = |k: &str| s.get(k).and_then(Value::as_f64);
                let (Some(start), Some(end), Some(seg_text)) =
                    (secs("start"), secs("end"), s.get("text").and_then(Value::as_str))
                else {
                    return Err(malformed(format!("segments[{i}] lacks a numeric start/end or a text")));
                };
                let start_ms = seconds_to_ms(start);
                segments.push(Segment {
                    start_ms,
                    end_ms: seconds_to_ms(end).max(start_ms),
                    // whisper starts most segments with a space.
                    text: seg_text.trim().to_string(),
                    speaker: s.get("speaker").and_then(Value::as_str).map(str::to_string),
                });
            }
        }
        Some(_) => return Err(malformed("`segments` is not an array".into())),
    }
    let language = match body.get("language").and_then(Value::as_str).map(str::trim).filter(|l| !l.is_empty()) {
        Some(l) => Some(normalize_language(l)),
        None => requested_language.map(str::to_string),
    };
    Ok(Transcript {
        text: text.trim().to_string(),
        segments,
        language,
        duration_ms: body.get("duration").and_then(Value::as_f64).map(seconds_to_ms),
    })
}

/// whisper reports "english"; the rest of the daemon speaks codes ("en"). Names it does not
/// know are kept, lower-cased.
fn normalize_language(l: &str) -> String {
    if (2..=3).contains(&l.len()) && l.bytes().all(|c| c.is_ascii_alphabetic()) {
        return l.to_ascii_lowercase();
    }
    language_code(l).map(str::to_string).unwrap_or_else(|| l.to_ascii_lowercase())
}

/// Seconds (float) to whole milliseconds; negative or not-a-number is 0.
fn seconds_to_ms(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        // `as` saturates: an absurd value becomes u64::MAX, not garbage.
        (s * 1_000.0).round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::domain::meeting::{self, MeetingInput, stitch};
    use crate::openai::chat::ChatClient;
    use crate::testkit::fake_openai_http::{ChatReply, TranscriptionReply, default_meeting_summary, wav_silence};
    use crate::testkit::{FakeRealtime, FakeScript};
    use serde_json::json;

    const KEY: &str = "sk-test-transcribe";

    async fn setup(model: &str) -> (FakeRealtime, TranscribeClient) {
        let fake = FakeRealtime::start(FakeScript { expected_api_key: Some(KEY.into()), ..FakeScript::default() })
            .await
            .unwrap();
        let client =
            TranscribeClient::new(reqwest::Client::new(), fake.base_url(), Some(Secret::new(KEY)), model.into());
        (fake, client)
    }

    #[test]
    fn formats_follow_the_model() {
        assert_eq!(ResponseFormat::for_model("whisper-1"), ResponseFormat::VerboseJson);
        assert_eq!(ResponseFormat::for_model("gpt-4o-transcribe"), ResponseFormat::Json);
        assert_eq!(ResponseFormat::for_model("gpt-4o-mini-transcribe-2025-12-15"), ResponseFormat::Json);
        assert_eq!(ResponseFormat::for_model("gpt-4o-transcribe-diarize"), ResponseFormat::DiarizedJson);
        assert_eq!(iso_639_1("pt-BR").as_deref(), Some("pt"));
        assert_eq!(iso_639_1("EN").as_deref(), Some("en"));
        assert_eq!(iso_639_1("haw"), None);
        assert_eq!(iso_639_1(""), None);
        assert!(has_extension("a.wav") && !has_extension("wav") && !has_extension(".wav") && !has_extension("a."));
        assert_eq!(seconds_to_ms(8.4705), 8_471);
        assert_eq!(seconds_to_ms(-1.0), 0);
        assert_eq!(seconds_to_ms(f64::NAN), 0);
    }

    #[test]
    fn the_documented_verbose_json_parses() {
        // protocols.md D.3, as whisper-1 sends it.
        let body = json!({
            "task": "transcribe", "language": "english", "duration": 8.47,
            "text": "Hi, this is Sam. I'd like to book a cleaning.",
            "segments": [
                {"id": 0, "seek": 0, "start": 0.0, "end": 3.2, "text": " Hi, this is Sam.", "tokens": [50364],
                    "temperature": 0.0, "avg_logprob": -0.21, "compression_ratio": 1.1, "no_speech_prob": 0.004},
                {"id": 1, "seek": 0, "start": 3.2, "end": 8.47, "text": " I'd like to book a cleaning.", "tokens": [50524],
                    "temperature": 0.0, "avg_logprob": -0.19, "compression_ratio": 1.1, "no_speech_prob": 0.004}
            ],
            "usage": {"type": "duration", "seconds": 9}
        });
        let t = parse_transcription(&body, Some("de")).unwrap();
        assert_eq!(t.language.as_deref(), Some("en"), "the detected language wins over the hint");
        assert_eq!(t.duration_ms, Some(8_470));
        assert_eq!(
            t.segments,
            vec![
                Segment { start_ms: 0, end_ms: 3_200, text: "Hi, this is Sam.".into(), speaker: None },
                Segment { start_ms: 3_200, end_ms: 8_470, text: "I'd like to book a cleaning.".into(), speaker: None },
            ]
        );
        let diarized = json!({"task": "transcribe", "duration": 27.4, "text": "Thanks for calling. Hi.",
            "segments": [{"type": "transcript.text.segment", "id": "seg_001", "start": 0.0, "end": 4.7,
                "text": "Thanks for calling.", "speaker": "A"}]});
        let t = parse_transcription(&diarized, Some("en")).unwrap();
        assert_eq!(t.segments[0].speaker.as_deref(), Some("A"));
        assert_eq!(t.language.as_deref(), Some("en"));
        let plain = parse_transcription(&json!({"text": " Hi. ", "usage": {"type": "tokens"}}), None).unwrap();
        assert_eq!(plain, Transcript { text: "Hi.".into(), ..Default::default() });
        for bad in [
            json!({}),
            json!({"text": 1}),
            json!({"text": "", "segments": {}}),
            json!({"text": "", "segments": [{"start": 0}]}),
        ] {
            assert!(matches!(parse_transcription(&bad, None), Err(TranscribeError::Malformed(_))), "{bad}");
        }
        assert_eq!(normalize_language("Klingon"), "klingon");
    }

    #[test]
    fn errors_are_classified() {
        let c = |status: u16, h: &[(&'static str, &str)], body: Value| {
            let mut headers = HeaderMap::new();
            for (k, v) in h {
                headers.insert(*k, v.parse().unwrap());
            }
            classify(StatusCode::from_u16(status).unwrap(), &headers, body.to_string().as_bytes(), None)
        };
        let err = |t: &str, code: Value, param: Value, msg: &str| json!({"error": {"message": msg, "type": t, "param": param, "code": code}});
        let e = c(
            413,
            &[],
            err(
                "server_error",
                Value::Null,
                Value::Null,
                "Maximum content size limit (26214400) exceeded (26300000 bytes read)",
            ),
        );
        assert!(matches!(&e, TranscribeError::TooLarge { status: 413, .. }), "{e:?}");
        assert!(!e.is_retryable());
        let e = c(
            400,
            &[],
            err(
                "invalid_request_error",
                json!("invalid_value"),
                Value::Null,
                "audio duration 1500.3 seconds is longer than 1400 seconds which is the maximum for this model",
            ),
        );
        assert!(matches!(e, TranscribeError::TooLarge { status: 400, .. }), "{e:?}");
        let e = c(
            400,
            &[],
            err(
                "invalid_request_error",
                Value::Null,
                Value::Null,
                "Invalid file format. Supported formats: ['flac', 'm4a', 'mp3', 'mp4', 'mpeg', 'mpga', 'oga', 'ogg', 'wav', 'webm']",
            ),
        );
        assert!(matches!(e, TranscribeError::Unsupported { .. }), "{e:?}");
        let e = c(
            400,
            &[],
            err(
                "invalid_request_error",
                json!("unsupported_value"),
                json!("response_format"),
                "response_format 'verbose_json' is not compatible with model 'gpt-4o-transcribe'",
            ),
        );
        assert!(matches!(e, TranscribeError::Unsupported { .. }), "{e:?}");
        let e = c(400, &[], err("invalid_request_error", Value::Null, json!("model"), "Invalid model"));
        assert!(matches!(e, TranscribeError::Rejected { status: 400, .. }), "{e:?}");
        let e = c(
            429,
            &[("retry-after", "7")],
            err("requests", json!("rate_limit_exceeded"), Value::Null, "Rate limit reached"),
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(matches!(e, TranscribeError::RateLimited { .. }) && e.is_retryable());
        let e =
            c(429, &[], err("insufficient_quota", json!("insufficient_quota"), Value::Null, "You exceeded your quota"));
        assert!(matches!(e, TranscribeError::Rejected { status: 429, .. }) && !e.is_retryable());
        let e = c(502, &[], json!("bad gateway"));
        assert!(matches!(e, TranscribeError::Server { status: 502, .. }) && e.is_retryable());
        // The service's own word wins: a 413 it says to retry is retried.
        let e = c(413, &[("x-should-retry", "true")], json!({}));
        assert!(e.is_retryable());
    }

    #[tokio::test]
    async fn whisper_segments_round_trip() {
        let (fake, client) = setup("whisper-1").await;
        // 12 s of audio: the fake's default answer is one segment per 5 s.
        let wav = wav_silence(12_000, 16_000);
        let t = client.transcribe("chunk-0.wav", "audio/wav", wav.clone(), Some("en-GB")).await.unwrap();
        let spans: Vec<(u64, u64)> = t.segments.iter().map(|s| (s.start_ms, s.end_ms)).collect();
        assert_eq!(spans, vec![(0, 5_000), (5_000, 10_000), (10_000, 12_000)]);
        assert_eq!(t.segments[2].text, "segment 3 of chunk-0.wav");
        assert_eq!(t.duration_ms, Some(12_000));
        assert_eq!(t.language.as_deref(), Some("en"));

        let requests = fake.transcription_requests();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!(r.model, "whisper-1");
        assert_eq!(r.response_format.as_deref(), Some("verbose_json"));
        assert_eq!(r.granularities, vec!["segment"]);
        assert_eq!(r.language.as_deref(), Some("en"));
        assert_eq!(r.file_name.as_deref(), Some("chunk-0.wav"));
        assert_eq!(r.content_type.as_deref(), Some("audio/wav"));
        assert_eq!(r.audio, wav, "the file arrives byte for byte");
        assert!(r.bytes > wav.len(), "the whole multipart body is counted");

        // A scripted answer, in seconds on the wire, back in milliseconds.
        fake.push_transcription_reply(TranscriptionReply::Segments(vec![
            (0, 1_250, "Good morning.".into()),
            (1_250, 4_000, "Let's begin.".into()),
        ]));
        let t = client.transcribe("chunk-1.wav", "audio/wav", wav_silence(4_000, 16_000), None).await.unwrap();
        assert_eq!(t.text, "Good morning. Let's begin.");
        assert_eq!(
            t.segments[1],
            Segment { start_ms: 1_250, end_ms: 4_000, text: "Let's begin.".into(), speaker: None }
        );
        assert_eq!(fake.transcription_requests()[1].language, None);
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[tokio::test]
    async fn gpt_4o_transcribe_gets_json_text() {
        let (fake, client) = setup("gpt-4o-transcribe").await;
        fake.push_transcription_reply(TranscriptionReply::Text("Buongiorno a tutti.".into()));
        let t = client.transcribe("meeting.mp3", "audio/mpeg", vec![7u8; 8_000], Some("it")).await.unwrap();
        assert_eq!(
            t,
            Transcript {
                text: "Buongiorno a tutti.".into(),
                segments: vec![],
                language: Some("it".into()),
                duration_ms: None
            }
        );
        let r = &fake.transcription_requests()[0];
        assert_eq!(r.response_format.as_deref(), Some("json"));
        assert!(r.granularities.is_empty());
        assert_eq!(r.content_type.as_deref(), Some("audio/mpeg"));
        // The default answer for json is text only, too.
        let t = client.transcribe("b.mp3", "audio/mpeg", vec![7u8; 8_000], None).await.unwrap();
        assert!(t.segments.is_empty() && t.text.contains("of b.mp3"), "{t:?}");
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[tokio::test]
    async fn diarize_gets_speakers_and_a_chunking_strategy() {
        let (fake, client) = setup("gpt-4o-transcribe-diarize").await;
        let t = client.transcribe("long.wav", "audio/wav", wav_silence(40_000, 8_000), Some("en")).await.unwrap();
        assert_eq!(t.segments.len(), 8);
        assert_eq!(t.segments[0].speaker.as_deref(), Some("A"));
        assert_eq!(t.segments[1].speaker.as_deref(), Some("B"));
        let r = &fake.transcription_requests()[0];
        assert_eq!(r.response_format.as_deref(), Some("diarized_json"));
        assert_eq!(r.chunking_strategy.as_deref(), Some("auto"));
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[tokio::test]
    async fn rate_limits_and_server_errors_carry_retry_after() {
        let (fake, client) = setup("whisper-1").await;
        fake.push_transcription_reply(TranscriptionReply::Status {
            status: 429,
            retry_after: Some(3),
            body: json!({"error": {"message": "Rate limit reached for requests", "type": "requests",
                "param": null, "code": "rate_limit_exceeded"}}),
        });
        fake.push_transcription_reply(TranscriptionReply::error(503, "server_error", "Overloaded"));
        let wav = wav_silence(1_000, 16_000);
        let e = client.transcribe("a.wav", "audio/wav", wav.clone(), None).await.unwrap_err();
        assert!(
            matches!(&e, TranscribeError::RateLimited { message, .. } if message.contains("Rate limit reached")),
            "{e:?}"
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.is_retryable());
        let e = client.transcribe("a.wav", "audio/wav", wav.clone(), None).await.unwrap_err();
        assert!(matches!(e, TranscribeError::Server { status: 503, .. }) && e.is_retryable(), "{e:?}");
        assert!(!e.to_string().contains(KEY));
        // Queue drained: the default answer again.
        assert!(client.transcribe("a.wav", "audio/wav", wav, None).await.is_ok());
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[tokio::test]
    async fn over_the_limit_is_too_large() {
        let (fake, client) = setup("whisper-1").await;
        fake.set_transcription_limit(50_000);
        let e = client.transcribe("big.wav", "audio/wav", wav_silence(2_000, 16_000), None).await.unwrap_err();
        assert!(
            matches!(&e, TranscribeError::TooLarge { status: 413, message } if message.contains("Maximum content size")),
            "{e:?}"
        );
        assert!(!e.is_retryable());
        assert_eq!(fake.violations().len(), 1, "the daemon must split before: {:?}", fake.violations());
        // Under the limit goes through.
        assert!(client.transcribe("small.wav", "audio/wav", wav_silence(1_000, 16_000), None).await.is_ok());

        // The client's own limit: nothing is sent.
        let mut local = client.clone();
        local.max_file_bytes = 1_000;
        let e = local.transcribe("big.wav", "audio/wav", vec![0; 1_001], None).await.unwrap_err();
        assert!(matches!(e, TranscribeError::TooLarge { .. }), "{e:?}");
        let e = local.transcribe("noext", "audio/wav", vec![0; 10], None).await.unwrap_err();
        assert!(matches!(e, TranscribeError::Unsupported { .. }), "{e:?}");
        assert_eq!(fake.transcription_requests().len(), 2);
    }

    #[tokio::test]
    async fn no_key_hangs_and_dead_servers() {
        let (fake, client) = setup("whisper-1").await;
        let keyless = TranscribeClient::new(reqwest::Client::new(), fake.base_url(), None, "whisper-1".into());
        assert_eq!(
            keyless.transcribe("a.wav", "audio/wav", vec![], None).await.unwrap_err(),
            TranscribeError::NoApiKey
        );
        fake.push_transcription_reply(TranscriptionReply::Hang(Duration::from_secs(30)));
        let e = client
            .clone()
            .with_timeout(Duration::from_millis(300))
            .transcribe("a.wav", "audio/wav", wav_silence(500, 16_000), None)
            .await
            .unwrap_err();
        assert!(matches!(&e, TranscribeError::Transport(m) if m.contains("timed out")), "{e:?}");
        assert!(e.is_retryable());
        let wrong_key = TranscribeClient::new(
            reqwest::Client::new(),
            fake.base_url(),
            Some(Secret::new("sk-wrong-key-123")),
            "whisper-1".into(),
        );
        let e = wrong_key.transcribe("a.wav", "audio/wav", wav_silence(500, 16_000), None).await.unwrap_err();
        assert!(matches!(e, TranscribeError::Rejected { status: 401, .. }), "{e:?}");
        fake.shutdown().await;
        let e = client.transcribe("a.wav", "audio/wav", wav_silence(500, 16_000), None).await.unwrap_err();
        assert!(matches!(e, TranscribeError::Transport(_)), "{e:?}");
    }

    /// The meeting pipeline over the fake: two chunks transcribed, stitched, summarized.
    #[tokio::test]
    async fn chunks_stitch_and_summarize_end_to_end() {
        let (fake, client) = setup("whisper-1").await;
        let mut chunks = Vec::new();
        for (i, offset) in [0u64, 12_000].into_iter().enumerate() {
            let t = client
                .transcribe(&format!("part-{i}.wav"), "audio/wav", wav_silence(12_000, 16_000), Some("en"))
                .await
                .unwrap();
            chunks.push((offset, t));
        }
        let transcript = stitch(&chunks);
        assert_eq!(transcript.segments.len(), 6);
        assert_eq!(transcript.segments[3].start_ms, 12_000);
        assert_eq!(transcript.segments[3].text, "segment 1 of part-1.wav");
        assert_eq!(transcript.duration_ms, Some(24_000));

        let input = MeetingInput {
            title: "Weekly sync",
            scheduled_at_ms: Some(1_795_291_380_000),
            uploaded_at_ms: 1_795_300_000_000,
            utc_offset_minutes: 0,
            language_hint: Some("en"),
            transcript: &transcript,
        };
        let chat = ChatClient::new(reqwest::Client::new(), fake.base_url(), Some(Secret::new(KEY)));
        fake.push_chat_reply(ChatReply::Summary(default_meeting_summary()));
        let body = chat.create(&meeting::chat_request(&input, "gpt-4.1-mini")).await.unwrap();
        let (summary, usage) = meeting::parse_reply(&body).unwrap();
        let mut expected = default_meeting_summary();
        for t in expected["tasks"].as_array_mut().unwrap() {
            t["done"] = json!(false);
        }
        assert_eq!(serde_json::to_value(&summary).unwrap(), expected, "the default is already normalized");
        assert!(usage.is_some());
        let prompt = fake.chat_requests()[0]["messages"][1]["content"].as_str().unwrap().to_string();
        assert!(prompt.contains("[00:12] segment 1 of part-1.wav"), "{prompt}");
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }
}
