//! The fake's `POST /v1/chat/completions` (protocols.md D.2, D.4) and
//! `POST /v1/audio/transcriptions` (D.3), served by the same axum app as [`FakeRealtime`]: the
//! daemon gets one `OPENAI_BASE_URL` for all of them.
//!
//! Replies come from a scripted queue ([`FakeRealtime::push_chat_reply`]), then from a default
//! (a valid call summary unless [`FakeRealtime::set_default_chat_reply`] changed it). Every
//! request body is recorded ([`FakeRealtime::chat_requests`]) so a test can read the prompt.
//! Requests are checked as the real service would (bearer key, JSON body, `model`, `messages`,
//! a strict `json_schema`) and each problem is recorded in [`FakeRealtime::violations`].
//!
//! Transcriptions answer from their own queue ([`FakeRealtime::push_transcription_reply`]),
//! then with segments derived from the uploaded audio's length. The multipart body is parsed
//! by hand from the wire format, each request recorded
//! ([`FakeRealtime::transcription_requests`]) and checked as the service would (bearer key,
//! `model` and `file` present, a known file extension, a `response_format` the model offers,
//! granularities only with `verbose_json`, `chunking_strategy` for long diarized audio, the
//! size limit of [`FakeRealtime::set_transcription_limit`]).
//!
//! Like the Realtime side it shares no code with `crate::core`: the schema check below is an
//! independent reading of the strict-mode rules.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::fake_realtime::{FakeRealtime, Inner};

/// One scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatReply {
    /// 200 with a `chat.completion` whose message content is this JSON, serialized: what the
    /// model returns under the `call_summary` schema.
    Summary(Value),
    /// `status` with `body` as JSON (an OpenAI error body, or any envelope for a 200), and
    /// `Retry-After: <seconds>` when set.
    Status { status: u16, retry_after: Option<u64>, body: Value },
    /// 200 with a `chat.completion` whose content is this string (not schema-valid).
    Malformed(String),
    /// Holds the request this long (or until the fake stops), then answers 504: the client
    /// should have given up before.
    Hang(Duration),
}

impl ChatReply {
    /// `status` with an OpenAI error body (D.4).
    pub fn error(status: u16, code: &str, message: &str) -> ChatReply {
        let kind = match status {
            429 => "requests",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        };
        ChatReply::Status {
            status,
            retry_after: None,
            body: json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
        }
    }

    /// 200 where the model refused (`content: null`, `refusal` set).
    pub fn refusal(text: &str) -> ChatReply {
        ChatReply::Status {
            status: 200,
            retry_after: None,
            body: completion(None, Some(text), "stop", "gpt-4.1-mini", 0),
        }
    }

    /// 200 cut by the token limit: partial JSON, `finish_reason: "length"`.
    pub fn truncated() -> ChatReply {
        let content = default_summary().to_string();
        let half: String = content.chars().take(content.chars().count() / 2).collect();
        ChatReply::Status {
            status: 200,
            retry_after: None,
            body: completion(Some(&half), None, "length", "gpt-4.1-mini", 0),
        }
    }
}

/// A realistic summary of a booking call, valid under the `call_summary` schema: the default
/// reply.
pub fn default_summary() -> Value {
    json!({
        "language": "en",
        "intent": "booking",
        "intent_detail": "Table for 4 on Saturday",
        "caller_name": "Sam Lee",
        "caller_phone": null,
        "booking": {
            "date": "2026-11-28",
            "time": "20:00",
            "party_size": 4,
            "name": "Lee",
            "notes": "One guest is vegetarian."
        },
        "key_points": ["One vegetarian guest"],
        "action_items": ["Confirm the booking with the caller"],
        "follow_up_needed": true,
        "follow_up_reason": "The booking request has not been confirmed yet.",
        "sentiment": "positive",
        "summary": "Sam Lee asked for a table for 4 on Saturday 28 November at 20:00. One guest is vegetarian. The agent took the request, which still needs to be confirmed."
    })
}

/// A `chat.completion` envelope as the service sends it (D.2).
pub fn completion(
    content: Option<&str>,
    refusal: Option<&str>,
    finish_reason: &str,
    model: &str,
    prompt_tokens: u64,
) -> Value {
    // About four characters per token, like the real tokenizers on English text.
    let completion_tokens = content.or(refusal).map_or(0, |c| c.len() as u64 / 4 + 1);
    json!({
        "id": format!("chatcmpl-{}", &uuid::Uuid::new_v4().simple().to_string()[..29]),
        "object": "chat.completion",
        "created": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": refusal, "annotations": []},
            "logprobs": null,
            "finish_reason": finish_reason
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fake0000000"
    })
}

/// The chat side's state, held in the fake's shared state.
pub(super) struct ChatFake {
    state: Mutex<ChatState>,
}

struct ChatState {
    queue: VecDeque<ChatReply>,
    default: ChatReply,
    requests: Vec<Value>,
}

impl Default for ChatFake {
    fn default() -> Self {
        ChatFake {
            state: Mutex::new(ChatState {
                queue: VecDeque::new(),
                default: ChatReply::Summary(default_summary()),
                requests: Vec::new(),
            }),
        }
    }
}

impl ChatFake {
    fn state(&self) -> std::sync::MutexGuard<'_, ChatState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FakeRealtime {
    /// Queues the answer to a later chat completion request (first in, first out).
    pub fn push_chat_reply(&self, reply: ChatReply) {
        self.inner.chat.state().queue.push_back(reply);
    }

    /// The answer once the queue is empty (initially `ChatReply::Summary(default_summary())`).
    pub fn set_default_chat_reply(&self, reply: ChatReply) {
        self.inner.chat.state().default = reply;
    }

    /// Every chat completion request body received (those that parsed as JSON), in order.
    pub fn chat_requests(&self) -> Vec<Value> {
        self.inner.chat.state().requests.clone()
    }
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str, param: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    with_request_id((status, [("content-type", "application/json")], body.to_string()).into_response())
}

fn with_request_id(mut resp: Response) -> Response {
    let id = format!("req_{}", uuid::Uuid::new_v4().simple());
    if let Ok(v) = id.parse() {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

pub(super) async fn chat_completions(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let expected_key = inner.script.lock().unwrap_or_else(|e| e.into_inner()).expected_api_key.clone();
    let authorization = header("authorization");
    let bearer = authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")).filter(|k| !k.is_empty());
    let Some(bearer) = bearer else {
        inner.violation("POST /v1/chat/completions without `Authorization: Bearer <key>`".into());
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing_api_key",
            "You didn't provide an API key.",
            None,
        );
    };
    if expected_key.is_some_and(|k| k != bearer) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided.",
            None,
        );
    }
    if !header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        inner.violation(format!("chat completion with content-type {:?}", header("content-type")));
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            inner.violation(format!("chat completion body is not JSON: {e}"));
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_json",
                "We could not parse the JSON body of your request.",
                None,
            );
        }
    };
    inner.chat.state().requests.push(request.clone());
    let problems = check_request(&request);
    if !problems.is_empty() {
        for p in &problems {
            inner.violation(format!("chat completion: {p}"));
        }
        let param = if problems[0].starts_with("response_format") { Some("response_format") } else { None };
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", &problems.join("; "), param);
    }

    let reply = {
        let mut state = inner.chat.state();
        let next = state.queue.pop_front();
        next.unwrap_or_else(|| state.default.clone())
    };
    let model = request.get("model").and_then(Value::as_str).unwrap_or("gpt-4.1-mini");
    let prompt_chars: usize = request
        .get("messages")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(|m| m.get("content").and_then(Value::as_str)).map(str::len).sum())
        .unwrap_or(0);
    let prompt_tokens = prompt_chars as u64 / 4 + 1;
    let ok = |body: Value| with_request_id((StatusCode::OK, axum::Json(body)).into_response());
    match reply {
        ChatReply::Summary(v) => ok(completion(Some(&v.to_string()), None, "stop", model, prompt_tokens)),
        ChatReply::Malformed(content) => ok(completion(Some(&content), None, "stop", model, prompt_tokens)),
        ChatReply::Status { status, retry_after, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = with_request_id((status, axum::Json(body)).into_response());
            if let Some(secs) = retry_after
                && let Ok(v) = secs.to_string().parse()
            {
                resp.headers_mut().insert("retry-after", v);
            }
            resp
        }
        ChatReply::Hang(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = inner.cancel.cancelled() => {}
            }
            error(StatusCode::GATEWAY_TIMEOUT, "server_error", "timeout", "The request timed out.", None)
        }
    }
}

/// What the real service would reject, or what this daemon must always send.
fn check_request(req: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if req.get("model").and_then(Value::as_str).is_none_or(str::is_empty) {
        problems.push("missing `model`".to_string());
    }
    match req.get("messages").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => {
            for (i, msg) in m.iter().enumerate() {
                let role = msg.get("role").and_then(Value::as_str).unwrap_or("");
                if !["system", "developer", "user", "assistant"].contains(&role) {
                    problems.push(format!("messages[{i}].role {role:?} is not a known role"));
                }
                if !msg.get("content").is_some_and(|c| c.is_string() || c.is_array()) {
                    problems.push(format!("messages[{i}] has no content"));
                }
            }
        }
        _ => problems.push("`messages` must be a non-empty array".to_string()),
    }
    if req.get("max_tokens").is_some() {
        problems.push("`max_tokens` is the legacy name: send `max_completion_tokens`".to_string());
    }
    if let Some(rf) = req.get("response_format") {
        match rf.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let js = &rf["json_schema"];
                let name = js.get("name").and_then(Value::as_str).unwrap_or("");
                if name.is_empty()
                    || name.len() > 64
                    || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                {
                    problems.push(format!("response_format.json_schema.name {name:?} is invalid"));
                }
                if js.get("strict") != Some(&Value::Bool(true)) {
                    problems.push("response_format.json_schema.strict is not true".to_string());
                }
                match js.get("schema") {
                    Some(schema) if schema.get("type").and_then(Value::as_str) == Some("object") => {
                        if schema.get("anyOf").is_some() {
                            problems.push("response_format: the root schema must not be anyOf".to_string());
                        }
                        strict_schema(schema, "schema", &mut problems);
                    }
                    _ => problems.push("response_format: the root schema must be of type object".to_string()),
                }
            }
            Some("json_object" | "text") => {}
            other => problems.push(format!("response_format.type {other:?} is unknown")),
        }
    }
    problems
}

/// The strict-mode rules: every object closed (`additionalProperties: false`) with every
/// property required; no unsupported composition keywords.
fn strict_schema(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    for k in ["allOf", "not", "if", "then", "else", "patternProperties", "dependentRequired", "dependentSchemas"] {
        if obj.contains_key(k) {
            problems.push(format!("response_format: {path}: `{k}` is not supported in strict mode"));
        }
    }
    let is_object = match obj.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
        _ => false,
    };
    if is_object {
        if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
            problems.push(format!("response_format: {path}: `additionalProperties` must be false"));
        }
        let props: BTreeSet<&str> = obj
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let required: BTreeSet<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if props != required {
            problems.push(format!(
                "response_format: {path}: `required` must list every property ({props:?} vs {required:?})"
            ));
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            strict_schema(v, &format!("{path}.{k}"), problems);
        }
    }
    if let Some(items) = obj.get("items") {
        strict_schema(items, &format!("{path}[]"), problems);
    }
    for key in ["anyOf", "$defs", "definitions"] {
        match obj.get(key) {
            Some(Value::Array(vs)) => {
                for (i, v) in vs.iter().enumerate() {
                    strict_schema(v, &format!("{path}.{key}[{i}]"), problems);
                }
            }
            Some(Value::Object(defs)) => {
                for (k, v) in defs {
                    strict_schema(v, &format!("{path}.{key}.{k}"), problems);
                }
            }
            _ => {}
        }
    }
}

// ------------------------------------------------------------------------------------------
// Meeting summary

/// A realistic meeting summary, valid under the daemon's `meeting_summary` schema (already in
/// the normalized form: trimmed, real dates). Not the chat default: push it with
/// `ChatReply::Summary(default_meeting_summary())`.
pub fn default_meeting_summary() -> Value {
    json!({
        "language": "en",
        "summary": "The team reviewed the preparations for the October product launch. Beta feedback is mostly positive, but two critical bugs in the checkout flow remain open. The launch was moved to 2 October and the marketing budget was approved.",
        "key_points": [
            "Beta feedback is mostly positive (NPS 48)",
            "Two critical bugs remain in the checkout flow"
        ],
        "decisions": [
            "The launch moves from 25 September to 2 October.",
            "The marketing budget of 40,000 EUR is approved."
        ],
        "tasks": [
            {"title": "Fix the two critical checkout bugs", "owner": "Priya", "due_date": "2026-09-25",
                "notes": "Both block the release candidate."},
            {"title": "Send the revised launch plan to the sales team", "owner": "Marco", "due_date": null,
                "notes": null},
            {"title": "Book the venue for the launch event", "owner": null, "due_date": null, "notes": null}
        ],
        "open_questions": ["Who presents at the launch event?"]
    })
}

// ------------------------------------------------------------------------------------------
// Transcriptions (protocols.md D.3)

/// The service's limit on a transcription request body (25 MiB, D.3).
pub const DEFAULT_TRANSCRIPTION_LIMIT: usize = 26_214_400;

/// The length of each segment of the default answer.
const DEFAULT_SEGMENT_MS: u64 = 5_000;

/// One scripted answer to `POST /v1/audio/transcriptions`. The content is scripted; its shape
/// follows the request's `response_format`, as the real service's would: `Segments` asked for
/// as `json` come back as their joined text, `Text` asked for as `verbose_json` as one
/// segment spanning the audio; `diarized_json` segments get speakers `A`, `B`, … in turn.
#[derive(Debug, Clone, PartialEq)]
pub enum TranscriptionReply {
    /// What was said, without timestamps.
    Text(String),
    /// `(start_ms, end_ms, text)` per segment (sent in seconds, as the service does).
    Segments(Vec<(u64, u64, String)>),
    /// `status` with `body` as JSON, and `Retry-After: <seconds>` when set.
    Status { status: u16, retry_after: Option<u64>, body: Value },
    /// Holds the request this long (or until the fake stops), then answers 504.
    Hang(Duration),
}

impl TranscriptionReply {
    /// `status` with an OpenAI error body (D.4).
    pub fn error(status: u16, code: &str, message: &str) -> TranscriptionReply {
        match ChatReply::error(status, code, message) {
            ChatReply::Status { status, retry_after, body } => TranscriptionReply::Status { status, retry_after, body },
            // `ChatReply::error` always builds a `Status`.
            _ => TranscriptionReply::Status { status, retry_after: None, body: Value::Null },
        }
    }
}

/// One transcription request as received (those whose multipart body could be parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptionRequest {
    /// Empty when the part is missing.
    pub model: String,
    /// `None` when not sent (the service then answers `json`).
    pub response_format: Option<String>,
    /// The `file` part's `filename` and `Content-Type`.
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    /// Size of the whole request body: what the service's limit applies to.
    pub bytes: usize,
    /// The `file` part's content.
    pub audio: Vec<u8>,
    pub language: Option<String>,
    /// Every `timestamp_granularities[]` value, in order.
    pub granularities: Vec<String>,
    pub chunking_strategy: Option<String>,
    pub prompt: Option<String>,
}

/// The transcription side's state, held in the fake's shared state.
pub(super) struct TranscriptionFake {
    state: Mutex<TranscriptionState>,
}

struct TranscriptionState {
    queue: VecDeque<TranscriptionReply>,
    requests: Vec<TranscriptionRequest>,
    limit: usize,
}

impl Default for TranscriptionFake {
    fn default() -> Self {
        TranscriptionFake {
            state: Mutex::new(TranscriptionState {
                queue: VecDeque::new(),
                requests: Vec::new(),
                limit: DEFAULT_TRANSCRIPTION_LIMIT,
            }),
        }
    }
}

impl TranscriptionFake {
    fn state(&self) -> std::sync::MutexGuard<'_, TranscriptionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FakeRealtime {
    /// Queues the answer to a later transcription request (first in, first out). Once the
    /// queue is empty: segments of 5 s over the uploaded audio's length, "segment N of
    /// <file name>", shaped as the request asked.
    pub fn push_transcription_reply(&self, reply: TranscriptionReply) {
        self.inner.transcription.state().queue.push_back(reply);
    }

    /// Request bodies above `bytes` get the service's 413 (and a violation: the daemon must
    /// split first). Default [`DEFAULT_TRANSCRIPTION_LIMIT`].
    pub fn set_transcription_limit(&self, bytes: usize) {
        self.inner.transcription.state().limit = bytes;
    }

    /// Every transcription request received, in order.
    pub fn transcription_requests(&self) -> Vec<TranscriptionRequest> {
        self.inner.transcription.state().requests.clone()
    }
}

/// `ms` of mono PCM16 silence at `sample_rate` as a WAV file: test audio whose length the
/// fake reads back from its header.
pub fn wav_silence(ms: u32, sample_rate: u32) -> Vec<u8> {
    let data_len = (u64::from(ms) * u64::from(sample_rate) / 1_000 * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.resize(44 + data_len as usize, 0);
    out
}

/// The audio's length: from a WAV header (`fmt ` byte rate, `data` size), else estimated at
/// 32 kbit/s, the bit rate D.3 suggests for compressed speech.
pub fn audio_duration_ms(audio: &[u8]) -> u64 {
    wav_duration_ms(audio).unwrap_or(audio.len() as u64 / 4)
}

fn wav_duration_ms(audio: &[u8]) -> Option<u64> {
    if audio.len() < 12 || &audio[..4] != b"RIFF" || &audio[8..12] != b"WAVE" {
        return None;
    }
    let u32_at = |i: usize| audio.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let (mut pos, mut byte_rate) = (12, None);
    while pos + 8 <= audio.len() {
        let id = &audio[pos..pos + 4];
        let size = u32_at(pos + 4)? as usize;
        if id == b"fmt " {
            byte_rate = u32_at(pos + 16);
        } else if id == b"data" {
            // A streamed WAV may say 0 or 0xFFFFFFFF: then the data runs to the end.
            let available = audio.len() - (pos + 8);
            let size = if size == 0 || size > available { available } else { size };
            let rate = u64::from(byte_rate.filter(|&r| r > 0)?);
            return Some(size as u64 * 1_000 / rate);
        }
        pos += 8 + size + size % 2;
    }
    None
}

/// One part of a `multipart/form-data` body.
struct FormPart {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

/// Splits a `multipart/form-data` body (RFC 7578), written here from the wire format in D.3
/// rather than with axum's extractor, so that the fake sees exactly what was sent.
fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Vec<FormPart>, String> {
    let (mime, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(format!("content-type {content_type:?} is not multipart/form-data"));
    }
    let boundary = params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty())
        .ok_or("multipart content-type without a boundary")?;
    let delimiter = format!("--{boundary}").into_bytes();
    let mut rest = match find(body, &delimiter) {
        Some(i) => &body[i + delimiter.len()..],
        None => return Err("no opening boundary".into()),
    };
    let mut parts = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest.strip_prefix(b"\r\n").ok_or("a boundary is not followed by CRLF")?;
        let head_end = find(rest, b"\r\n\r\n").ok_or("part headers do not end")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        rest = &rest[head_end + 4..];
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(&delimiter);
        let data_end = find(rest, &closing).ok_or("a part is not closed by the boundary")?;
        let data = rest[..data_end].to_vec();
        rest = &rest[data_end + closing.len()..];

        let (mut name, mut file_name, mut part_type) = (None, None, None);
        for line in head.split("\r\n") {
            let Some((key, value)) = line.split_once(':') else { continue };
            if key.trim().eq_ignore_ascii_case("content-disposition") {
                for param in value.split(';').skip(1) {
                    if let Some((k, v)) = param.trim().split_once('=') {
                        let v = v.trim().trim_matches('"').to_string();
                        match k.trim().to_ascii_lowercase().as_str() {
                            "name" => name = Some(v),
                            "filename" => file_name = Some(v),
                            _ => {}
                        }
                    }
                }
            } else if key.trim().eq_ignore_ascii_case("content-type") {
                part_type = Some(value.trim().to_string());
            }
        }
        let name = name.ok_or_else(|| format!("a part without a name (headers {head:?})"))?;
        parts.push(FormPart { name, file_name, content_type: part_type, data });
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The request's violations of D.3 (each also a 400 from the real service), first the one to
/// answer with and its `param`.
fn check_transcription(r: &TranscriptionRequest, audio_ms: u64) -> Vec<(String, Option<&'static str>)> {
    let mut problems = Vec::new();
    if r.model.is_empty() {
        problems.push(("missing `model`".to_string(), Some("model")));
    }
    match &r.file_name {
        None => problems.push(("missing `file` (a part named file, with a filename)".to_string(), Some("file"))),
        Some(name) => {
            const FORMATS: &[&str] = &["flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "oga", "wav", "webm"];
            let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
            if !FORMATS.contains(&ext.as_str()) {
                problems.push((
                    format!("Invalid file format. Supported formats: {FORMATS:?} (file name {name:?})"),
                    Some("file"),
                ));
            }
        }
    }
    let model = r.model.to_ascii_lowercase();
    let format = r.response_format.as_deref().unwrap_or("json");
    let allowed: &[&str] = if model.starts_with("whisper") {
        &["json", "text", "srt", "verbose_json", "vtt"]
    } else if model.contains("diarize") {
        &["json", "text", "diarized_json"]
    } else {
        &["json", "text"]
    };
    if !allowed.contains(&format) {
        problems.push((
            format!("response_format '{format}' is not compatible with model '{}'", r.model),
            Some("response_format"),
        ));
    }
    if !r.granularities.is_empty() && format != "verbose_json" {
        problems.push((
            "timestamp_granularities[] requires response_format verbose_json".to_string(),
            Some("timestamp_granularities[]"),
        ));
    }
    if let Some(g) = r.granularities.iter().find(|g| !["segment", "word"].contains(&g.as_str())) {
        problems.push((
            format!("timestamp_granularities[] {g:?} is not segment or word"),
            Some("timestamp_granularities[]"),
        ));
    }
    if let Some(l) = &r.language
        && !(l.len() == 2 && l.bytes().all(|c| c.is_ascii_lowercase()))
    {
        problems.push((format!("language {l:?} is not an ISO-639-1 code"), Some("language")));
    }
    if model.contains("diarize") && audio_ms > 30_000 && r.chunking_strategy.is_none() {
        problems.push((
            "chunking_strategy is required for diarization models when the input is longer than 30 seconds".to_string(),
            Some("chunking_strategy"),
        ));
    }
    problems
}

pub(super) async fn transcriptions(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    const PATH: &str = "POST /v1/audio/transcriptions";
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let expected_key = inner.script.lock().unwrap_or_else(|e| e.into_inner()).expected_api_key.clone();
    let authorization = header("authorization");
    let Some(bearer) = authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")).filter(|k| !k.is_empty())
    else {
        inner.violation(format!("{PATH} without `Authorization: Bearer <key>`"));
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing_api_key",
            "You didn't provide an API key.",
            None,
        );
    };
    if expected_key.is_some_and(|k| k != bearer) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided.",
            None,
        );
    }
    let content_type = header("content-type").unwrap_or_default();
    let parts = match parse_multipart(&content_type, &body) {
        Ok(p) => p,
        Err(e) => {
            inner.violation(format!("{PATH}: {e}"));
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_multipart", &e, None);
        }
    };
    let text = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name && p.file_name.is_none())
            .map(|p| String::from_utf8_lossy(&p.data).to_string())
    };
    let file = parts.iter().find(|p| p.name == "file" && p.file_name.is_some());
    let request = TranscriptionRequest {
        model: text("model").unwrap_or_default(),
        response_format: text("response_format"),
        file_name: file.and_then(|f| f.file_name.clone()),
        content_type: file.and_then(|f| f.content_type.clone()),
        bytes: body.len(),
        audio: file.map(|f| f.data.clone()).unwrap_or_default(),
        language: text("language"),
        granularities: parts
            .iter()
            .filter(|p| p.name == "timestamp_granularities[]")
            .map(|p| String::from_utf8_lossy(&p.data).to_string())
            .collect(),
        chunking_strategy: text("chunking_strategy"),
        prompt: text("prompt"),
    };
    let limit = {
        let mut state = inner.transcription.state();
        state.requests.push(request.clone());
        state.limit
    };
    if body.len() > limit {
        inner.violation(format!(
            "{PATH}: a body of {} bytes, over the {limit} byte limit (split the audio first)",
            body.len()
        ));
        let message = format!("Maximum content size limit ({limit}) exceeded ({} bytes read)", body.len());
        // As D.3 shows it: a `server_error` with a null code.
        let body = json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
        return with_request_id((StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response());
    }
    let audio_ms = audio_duration_ms(&request.audio);
    let problems = check_transcription(&request, audio_ms);
    if let Some((first, param)) = problems.first() {
        for (p, _) in &problems {
            inner.violation(format!("{PATH}: {p}"));
        }
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_value", first, *param);
    }

    let reply = inner.transcription.state().queue.pop_front();
    let file_name = request.file_name.as_deref().unwrap_or("audio");
    let segments = match reply {
        None => (0..audio_ms.div_ceil(DEFAULT_SEGMENT_MS))
            .map(|i| {
                let start = i * DEFAULT_SEGMENT_MS;
                (start, (start + DEFAULT_SEGMENT_MS).min(audio_ms), format!("segment {} of {file_name}", i + 1))
            })
            .collect(),
        Some(TranscriptionReply::Segments(s)) => s,
        Some(TranscriptionReply::Text(t)) => vec![(0, audio_ms, t)],
        Some(TranscriptionReply::Status { status, retry_after, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = with_request_id((status, axum::Json(body)).into_response());
            if let Some(secs) = retry_after
                && let Ok(v) = secs.to_string().parse()
            {
                resp.headers_mut().insert("retry-after", v);
            }
            return resp;
        }
        Some(TranscriptionReply::Hang(d)) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = inner.cancel.cancelled() => {}
            }
            return error(StatusCode::GATEWAY_TIMEOUT, "server_error", "timeout", "The request timed out.", None);
        }
    };
    let text = segments.iter().map(|(_, _, t)| t.trim()).filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" ");
    let secs = |ms: u64| ms as f64 / 1_000.0;
    let duration = secs(audio_ms.max(segments.iter().map(|s| s.1).max().unwrap_or(0)));
    let body = match request.response_format.as_deref().unwrap_or("json") {
        "verbose_json" => json!({
            "task": "transcribe",
            // whisper names the language in English (D.3).
            "language": match request.language.as_deref() {
                Some("it") => "italian", Some("fr") => "french", Some("de") => "german", Some("es") => "spanish",
                _ => "english",
            },
            "duration": duration,
            "text": text,
            "segments": segments.iter().enumerate().map(|(i, (start, end, t))| json!({
                "id": i, "seek": 0, "start": secs(*start), "end": secs(*end), "text": format!(" {}", t.trim()),
                "tokens": [50364], "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 1.2,
                "no_speech_prob": 0.01
            })).collect::<Vec<_>>(),
            "usage": {"type": "duration", "seconds": duration.ceil() as u64}
        }),
        "diarized_json" => json!({
            "task": "transcribe",
            "duration": duration,
            "text": text,
            "segments": segments.iter().enumerate().map(|(i, (start, end, t))| json!({
                "type": "transcript.text.segment", "id": format!("seg_{:03}", i + 1), "start": secs(*start),
                "end": secs(*end), "text": t.trim(), "speaker": if i % 2 == 0 { "A" } else { "B" }
            })).collect::<Vec<_>>(),
            "usage": {"type": "duration", "seconds": duration.ceil() as u64}
        }),
        "text" => return with_request_id((StatusCode::OK, [("content-type", "text/plain")], text).into_response()),
        // `json`: text only, usage in tokens for the gpt-4o models.
        _ => {
            // About ten audio tokens a second, four characters a text token.
            let (input, output) = (audio_ms / 100 + 1, text.len() as u64 / 4 + 1);
            json!({
                "text": text,
                "usage": {"type": "tokens", "input_tokens": input,
                    "input_token_details": {"text_tokens": 0, "audio_tokens": input},
                    "output_tokens": output, "total_tokens": input + output}
            })
        }
    };
    with_request_id((StatusCode::OK, axum::Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::FakeScript;

    #[tokio::test]
    async fn checks_requests_like_the_service() {
        let fake = FakeRealtime::start(FakeScript { expected_api_key: Some("sk-good".into()), ..Default::default() })
            .await
            .unwrap();
        let url = format!("{}/chat/completions", fake.base_url());
        let http = reqwest::Client::new();
        let good = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "call_summary", "strict": true,
                "schema": {"type": "object", "properties": {"a": {"type": ["string", "null"]}}, "required": ["a"],
                    "additionalProperties": false}}}});

        let r = http.post(&url).json(&good).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(fake.violations().len(), 1, "no bearer is a violation");
        let r = http.post(&url).bearer_auth("sk-bad").json(&good).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(fake.violations().len(), 1, "a wrong key is only refused");

        let r = http.post(&url).bearer_auth("sk-good").json(&good).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-request-id"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        let content: Value = serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert_eq!(content, default_summary());

        let mut loose = good.clone();
        loose["response_format"]["json_schema"]["schema"]["additionalProperties"] = json!(true);
        loose["response_format"]["json_schema"]["schema"]["required"] = json!([]);
        let r = http.post(&url).bearer_auth("sk-good").json(&loose).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["param"], "response_format");
        assert_eq!(fake.violations().len(), 3, "{:?}", fake.violations());
        assert_eq!(fake.chat_requests().len(), 2, "requests with a parsable body are recorded");

        fake.set_default_chat_reply(ChatReply::refusal("No."));
        let r = http.post(&url).bearer_auth("sk-good").json(&good).send().await.unwrap();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["choices"][0]["message"]["refusal"], "No.");
        assert!(body["choices"][0]["message"]["content"].is_null());
        fake.push_chat_reply(ChatReply::truncated());
        let body: Value =
            http.post(&url).bearer_auth("sk-good").json(&good).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "length");
    }

    /// A form field: name, `(filename, content type)` for a file, content.
    type Field = (&'static str, Option<(&'static str, &'static str)>, Vec<u8>);

    fn form(parts: &[Field]) -> (String, Vec<u8>) {
        let boundary = "dc5ab0e24257ca2f8894e8b2caa627bd";
        let mut body = Vec::new();
        for (name, file, data) in parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match file {
                Some((file_name, mime)) => body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\nContent-Type: {mime}\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => body
                    .extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
            }
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        (format!("multipart/form-data; boundary={boundary}"), body)
    }

    #[test]
    fn multipart_bodies_parse_byte_for_byte() {
        // Audio bytes that contain CRLF and dashes must survive.
        let audio: &[u8] = b"\r\n--not-the-boundary\r\n\x00\xff";
        let (ct, body) = form(&[
            ("model", None, b"whisper-1".to_vec()),
            ("timestamp_granularities[]", None, b"segment".to_vec()),
            ("file", Some(("a.wav", "audio/wav")), audio.to_vec()),
        ]);
        let parts = parse_multipart(&ct, &body).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!((parts[0].name.as_str(), parts[0].data.as_slice()), ("model", b"whisper-1".as_slice()));
        assert_eq!(parts[2].file_name.as_deref(), Some("a.wav"));
        assert_eq!(parts[2].content_type.as_deref(), Some("audio/wav"));
        assert_eq!(parts[2].data, audio);
        assert!(parse_multipart("multipart/form-data; boundary=\"dc5ab0e24257ca2f8894e8b2caa627bd\"", &body).is_ok());
        assert!(parse_multipart("application/json", &body).is_err());
        assert!(parse_multipart("multipart/form-data", &body).is_err());
        assert!(parse_multipart(&ct, &body[..body.len() - 40]).is_err(), "an unclosed part");
    }

    #[test]
    fn wav_durations() {
        assert_eq!(audio_duration_ms(&wav_silence(12_345, 16_000)), 12_345);
        assert_eq!(audio_duration_ms(&wav_silence(1_000, 8_000)), 1_000);
        // A streamed header (data size 0) runs to the end of the file.
        let mut streamed = wav_silence(2_000, 8_000);
        streamed[40..44].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(audio_duration_ms(&streamed), 2_000);
        // Not a WAV: estimated at 32 kbit/s.
        assert_eq!(audio_duration_ms(&[0u8; 8_000]), 2_000);
    }

    #[tokio::test]
    async fn transcription_requests_are_checked_like_the_service() {
        let fake = FakeRealtime::start(FakeScript::default()).await.unwrap();
        let url = format!("{}/audio/transcriptions", fake.base_url());
        let http = reqwest::Client::new();
        let wav = wav_silence(6_000, 8_000);
        let send = |parts: Vec<Field>, auth: bool| {
            let (ct, body) = form(&parts);
            let mut req = http.post(&url).header("content-type", ct).body(body);
            if auth {
                req = req.bearer_auth("sk-x");
            }
            req.send()
        };
        let model = |m: &str| ("model", None, m.as_bytes().to_vec());
        let file = |name: &'static str| ("file", Some((name, "audio/wav")), wav.clone());

        // The default answer: 5 s segments over the WAV's 6 s.
        let r =
            send(vec![model("whisper-1"), ("response_format", None, b"verbose_json".to_vec()), file("x.wav")], true)
                .await
                .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["duration"], 6.0);
        assert_eq!(v["segments"][1]["start"], 5.0);
        assert_eq!(v["segments"][1]["text"], " segment 2 of x.wav");
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());

        let r = send(vec![model("whisper-1"), file("x.wav")], false).await.unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(fake.violations().len(), 1, "no bearer");

        let cases: Vec<(Vec<Field>, &str)> = vec![
            (vec![file("x.wav")], "missing `model`"),
            (vec![model("whisper-1")], "missing `file`"),
            (vec![model("whisper-1"), file("x.aiff")], "Invalid file format"),
            (
                vec![model("gpt-4o-transcribe"), ("response_format", None, b"verbose_json".to_vec()), file("x.wav")],
                "not compatible",
            ),
            (
                vec![model("whisper-1"), ("timestamp_granularities[]", None, b"segment".to_vec()), file("x.wav")],
                "requires response_format verbose_json",
            ),
            (vec![model("whisper-1"), ("language", None, b"en-GB".to_vec()), file("x.wav")], "ISO-639-1"),
        ];
        for (parts, expected) in cases {
            let before = fake.violations().len();
            let r = send(parts, true).await.unwrap();
            assert_eq!(r.status(), 400, "{expected}");
            let err: Value = r.json().await.unwrap();
            assert!(err["error"]["message"].as_str().unwrap().contains(expected), "{expected}: {err}");
            let after = fake.violations();
            assert_eq!(after.len(), before + 1, "{expected}: {after:?}");
            assert!(after.last().unwrap().contains(expected));
        }

        // Diarization of more than 30 s needs a chunking strategy.
        let long = wav_silence(31_000, 8_000);
        let r =
            send(vec![model("gpt-4o-transcribe-diarize"), ("file", Some(("l.wav", "audio/wav")), long.clone())], true)
                .await
                .unwrap();
        assert_eq!(r.status(), 400);
        let r = send(
            vec![
                model("gpt-4o-transcribe-diarize"),
                ("response_format", None, b"diarized_json".to_vec()),
                ("chunking_strategy", None, b"auto".to_vec()),
                ("file", Some(("l.wav", "audio/wav")), long),
            ],
            true,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["segments"][1]["speaker"], "B");

        // A scripted text asked for as text comes back as a plain body.
        fake.push_transcription_reply(TranscriptionReply::Text("Hello.".into()));
        let r =
            send(vec![model("gpt-4o-transcribe"), ("response_format", None, b"text".to_vec()), file("x.wav")], true)
                .await
                .unwrap();
        assert_eq!(r.text().await.unwrap(), "Hello.");
        // Every request that got past the key check is recorded, rejected ones included.
        assert_eq!(fake.transcription_requests().len(), 10);
        assert_eq!(fake.transcription_requests()[0].audio, wav);
    }
}
