//! `POST /v1/chat/completions` (protocols.md D.1, D.2, D.4): one request, one classified answer.
//!
//! It does not retry and does not read the reply's content: the job decides when to try again
//! (from [`ChatError::is_retryable`] and [`ChatError::retry_after`]), and
//! `crate::core::domain::summary` builds the body and checks the reply. It must never put the
//! API key in an error or a log line.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use crate::config::Secret;

/// Default per-request budget. The SDK's 600 s is for interactive use with retries inside; a
/// summary is a small completion, and a stuck request should free the worker for the next try.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest error message kept from a response body.
const MAX_MESSAGE_CHARS: usize = 500;

/// 429s that are about money, not pace: retrying cannot help (D.4).
const QUOTA_CODES: &[&str] = &[
    "insufficient_quota",
    "credit_balance_exhausted",
    "organization_spend_limit_exceeded",
    "project_spend_limit_exceeded",
    "organization_usage_limit_exceeded",
];

#[derive(Debug, Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<Secret>,
    /// Whole-request timeout (connect, send, wait, read).
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// 429 for pace (requests or tokens per minute): wait and retry.
    #[error("OpenAI rate limit (HTTP 429){}: {message}", after(*.retry_after))]
    RateLimited { retry_after: Option<Duration>, message: String },
    /// The service failed or asked for a retry: 5xx, and 408/409 or `x-should-retry: true`,
    /// which the official SDK retries too.
    #[error("OpenAI server error (HTTP {status}){}: {message}", after(*.retry_after))]
    Server { status: u16, retry_after: Option<Duration>, message: String },
    /// No usable answer: connect failure, timeout, a body that could not be read or is not JSON.
    #[error("OpenAI request failed: {0}")]
    Transport(String),
    /// Not worth retrying as is: 400 (e.g. a bad schema), 401, 403, 404, 422, a quota 429.
    #[error("OpenAI rejected the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("no OpenAI API key is configured (OPENAI_API_KEY)")]
    NoApiKey,
}

fn after(d: Option<Duration>) -> String {
    d.map(|d| format!(", retry after {:.1} s", d.as_secs_f64())).unwrap_or_default()
}

impl ChatError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ChatError::RateLimited { .. } | ChatError::Server { .. } | ChatError::Transport(_))
    }

    /// The delay the service asked for, if any. It may exceed the 120 s beyond which the SDK
    /// gives up; a background job can afford to wait that long.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ChatError::RateLimited { retry_after, .. } | ChatError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl ChatClient {
    /// `base_url` without a trailing slash is fine either way, e.g. `https://api.openai.com/v1`.
    pub fn new(http: reqwest::Client, base_url: String, api_key: Option<Secret>) -> Self {
        let base_url = base_url.trim_end_matches('/').to_string();
        ChatClient { http, base_url, api_key, timeout: DEFAULT_TIMEOUT }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `body` and returns the response JSON of a 2xx, else the classified error.
    pub async fn create(&self, body: &Value) -> Result<Value, ChatError> {
        let key = self.api_key.as_ref().ok_or(ChatError::NoApiKey)?;
        let url = format!("{}/chat/completions", self.base_url);
        let started = std::time::Instant::now();
        let resp = self
            .http
            .post(&url)
            .bearer_auth(key.expose())
            .json(body)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| ChatError::Transport(transport_message(&e, self.timeout)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let request_id = header(&headers, "x-request-id").map(str::to_string);
        let bytes = resp.bytes().await.map_err(|e| ChatError::Transport(transport_message(&e, self.timeout)))?;
        tracing::debug!(
            status = status.as_u16(),
            request_id = request_id.as_deref().unwrap_or(""),
            elapsed_ms = started.elapsed().as_millis() as u64,
            bytes = bytes.len(),
            "chat completion"
        );
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                ChatError::Transport(format!("HTTP {} with a body that is not JSON: {e}", status.as_u16()))
            });
        }
        let err = classify(status, &headers, &bytes, Some(key));
        tracing::warn!(
            status = status.as_u16(),
            request_id = request_id.as_deref().unwrap_or(""),
            retryable = err.is_retryable(),
            "chat completion failed: {err}"
        );
        Err(err)
    }
}

/// What went wrong with a request that got no usable answer, for a `Transport` error.
pub(crate) fn transport_message(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {timeout:?}");
    }
    // The chain names the cause (refused, DNS, TLS…); the URL holds no secret.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// A non-2xx answer read per D.4, before an endpoint's client decides what it means. Shared by
/// every OpenAI HTTP client here, so that they all retry by the SDK's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiFailure {
    pub status: u16,
    /// The error body's message with its type, code, param and the request id, clipped and
    /// redacted: safe for logs and the jobs table.
    pub message: String,
    /// `error.code` and `error.param` as sent, for endpoint-specific readings.
    pub code: Option<String>,
    pub param: Option<String>,
    /// Per the SDK: `x-should-retry`, else 408, 409, 429 (unless about quota) and 5xx.
    pub retryable: bool,
    pub retry_after: Option<Duration>,
}

/// Maps a non-2xx answer to its error, following the SDK's rules (D.4).
fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], key: Option<&Secret>) -> ChatError {
    let ApiFailure { status, message, retryable, retry_after, .. } = read_failure(status, headers, body, key);
    match (retryable, status) {
        (false, _) => ChatError::Rejected { status, message },
        (true, 429) => ChatError::RateLimited { retry_after, message },
        (true, _) => ChatError::Server { status, retry_after, message },
    }
}

/// Reads a non-2xx answer: its message (redacted of `key`), whether to retry, and when.
pub(crate) fn read_failure(status: StatusCode, headers: &HeaderMap, body: &[u8], key: Option<&Secret>) -> ApiFailure {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let error = json.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str);
    let mut message = match field("message") {
        Some(m) => m.to_string(),
        None => String::from_utf8_lossy(body).trim().to_string(),
    };
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("no message").to_string();
    }
    let mut extra = Vec::new();
    for name in ["type", "code", "param"] {
        if let Some(v) = field(name) {
            extra.push(format!("{name} {v}"));
        }
    }
    if let Some(id) = header(headers, "x-request-id") {
        extra.push(format!("request id {id}"));
    }
    if !extra.is_empty() {
        message = format!("{} ({})", clip(&message, MAX_MESSAGE_CHARS), extra.join(", "));
    }
    let message = redact(&clip(&message, MAX_MESSAGE_CHARS + 200), key);

    let quota = [field("type"), field("code")].into_iter().flatten().any(|v| QUOTA_CODES.contains(&v));
    let code = status.as_u16();
    let retryable = match header(headers, "x-should-retry") {
        Some("true") => true,
        Some("false") => false,
        _ => !quota && (code == 408 || code == 409 || code == 429 || code >= 500),
    };
    ApiFailure {
        status: code,
        message,
        code: field("code").map(str::to_string),
        param: field("param").map(str::to_string),
        retryable,
        retry_after: retry_after(headers),
    }
}

/// The delay asked for by `retry-after-ms` (milliseconds) or `retry-after` (seconds, possibly
/// fractional, or an HTTP date), as the SDK reads them.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, OffsetDateTime::now_utc())
}

fn retry_after_at(headers: &HeaderMap, now: OffsetDateTime) -> Option<Duration> {
    let seconds = |v: &str| v.trim().parse::<f64>().ok().and_then(|s| Duration::try_from_secs_f64(s).ok());
    if let Some(d) = header(headers, "retry-after-ms").and_then(seconds) {
        return Some(d / 1_000);
    }
    let v = header(headers, "retry-after")?;
    if let Some(d) = seconds(v) {
        return Some(d);
    }
    let at = OffsetDateTime::parse(v.trim(), &Rfc2822).ok()?;
    // A date in the past means "now".
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

pub(crate) fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// Removes the key, and anything shaped like an OpenAI key (`sk-…`, as the service echoes a
/// masked one in 401 messages), from a message bound for logs and the jobs table.
fn redact(message: &str, key: Option<&Secret>) -> String {
    let mut s = message.to_string();
    if let Some(k) = key.map(Secret::expose).filter(|k| k.len() >= 8) {
        s = s.replace(k, "***");
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest.find("sk-") {
        let starts_word =
            rest[..i].chars().next_back().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        out.push_str(&rest[..i]);
        let tail = &rest[i + 3..];
        let len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || "-_*".contains(c))).unwrap_or(tail.len());
        if starts_word && len > 0 {
            out.push_str("sk-***");
        } else {
            out.push_str(&rest[i..i + 3 + len]);
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::domain::call::{Speaker, TranscriptTurn};
    use crate::core::domain::summary::{SummaryError, SummaryInput, chat_request, parse_reply};
    use crate::testkit::fake_openai_http::{ChatReply, default_summary};
    use crate::testkit::{FakeRealtime, FakeScript};
    use reqwest::header::HeaderValue;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_parsing() {
        let now = OffsetDateTime::parse("Sat, 21 Nov 2026 20:03:00 GMT", &Rfc2822).unwrap();
        let at = |pairs: &[(&'static str, &str)]| retry_after_at(&headers(pairs), now);
        assert_eq!(at(&[("retry-after", "2")]), Some(Duration::from_secs(2)));
        assert_eq!(at(&[("retry-after", " 1.5 ")]), Some(Duration::from_millis(1_500)));
        assert_eq!(at(&[("retry-after-ms", "250")]), Some(Duration::from_millis(250)));
        // The ms header is the more precise one and wins.
        assert_eq!(at(&[("retry-after", "2"), ("retry-after-ms", "1800")]), Some(Duration::from_millis(1_800)));
        assert_eq!(at(&[("retry-after", "Sat, 21 Nov 2026 20:03:30 GMT")]), Some(Duration::from_secs(30)));
        assert_eq!(at(&[("retry-after", "Sat, 21 Nov 2026 20:00:00 GMT")]), Some(Duration::ZERO), "past = now");
        assert_eq!(at(&[("retry-after", "-3")]), None);
        assert_eq!(at(&[("retry-after", "soon")]), None);
        assert_eq!(at(&[("retry-after", "1e400")]), None);
        assert_eq!(at(&[]), None);
    }

    #[test]
    fn statuses_are_classified_like_the_sdk() {
        let body = |t: &str, code: &str| {
            json!({"error": {"message": "Something", "type": t, "param": null, "code": code}}).to_string()
        };
        let c = |status: u16, h: &[(&'static str, &str)], b: &str| {
            classify(StatusCode::from_u16(status).unwrap(), &headers(h), b.as_bytes(), None)
        };
        assert!(matches!(c(429, &[], &body("requests", "rate_limit_exceeded")), ChatError::RateLimited { .. }));
        let quota = c(429, &[], &body("insufficient_quota", "insufficient_quota"));
        assert!(matches!(quota, ChatError::Rejected { status: 429, .. }), "{quota:?}");
        assert!(!quota.is_retryable());
        assert!(matches!(c(408, &[], ""), ChatError::Server { status: 408, .. }));
        assert!(matches!(c(409, &[], ""), ChatError::Server { status: 409, .. }));
        assert!(matches!(c(503, &[], ""), ChatError::Server { status: 503, .. }));
        assert!(matches!(c(401, &[], ""), ChatError::Rejected { status: 401, .. }));
        assert!(matches!(c(400, &[("x-should-retry", "true")], ""), ChatError::Server { status: 400, .. }));
        assert!(matches!(c(500, &[("x-should-retry", "false")], ""), ChatError::Rejected { status: 500, .. }));

        let e = c(400, &[("x-request-id", "req_123")], &body("invalid_request_error", "invalid_schema"));
        assert_eq!(
            e.to_string(),
            "OpenAI rejected the request (HTTP 400): Something (type invalid_request_error, code invalid_schema, request id req_123)"
        );
        let e = c(502, &[], "<html>502 Bad Gateway</html>");
        assert_eq!(e.to_string(), "OpenAI server error (HTTP 502): <html>502 Bad Gateway</html>");
        let e = c(503, &[("retry-after", "3")], "");
        assert_eq!(e.to_string(), "OpenAI server error (HTTP 503), retry after 3.0 s: Service Unavailable");
    }

    #[test]
    fn keys_never_reach_the_message() {
        let key = Secret::new("sk-proj-abcdefghijklmnop");
        let body = json!({"error": {"message": "Incorrect API key provided: sk-proj-****mnop. Or sk-proj-abcdefghijklmnop. Not a task-sk-1 though.", "type": "invalid_request_error", "code": "invalid_api_key"}});
        let e = classify(StatusCode::UNAUTHORIZED, &HeaderMap::new(), body.to_string().as_bytes(), Some(&key));
        let msg = e.to_string();
        assert!(!msg.contains("abcdefgh") && !msg.contains("****mnop"), "{msg}");
        assert!(msg.contains("Incorrect API key provided: sk-***. Or ***."), "{msg}");
        assert!(msg.contains("task-sk-1"), "only whole sk- words are masked: {msg}");
    }

    async fn fake() -> (FakeRealtime, ChatClient) {
        let fake = FakeRealtime::start(FakeScript::default()).await.unwrap();
        let client = ChatClient::new(reqwest::Client::new(), fake.base_url(), Some(Secret::new("sk-test-key")));
        (fake, client)
    }

    /// The daemon's real summary request, so the fake's checks apply to what is actually sent.
    fn request() -> Value {
        let turns = [TranscriptTurn {
            speaker: Speaker::Caller,
            start_ms: 1_000,
            text: "Je voudrais réserver pour quatre samedi.".into(),
            item_id: None,
            interrupted: false,
            heard_ms: None,
            generated_ms: None,
            generated_text: None,
        }];
        let input = SummaryInput {
            tenant_name: "Chez Paul",
            language: "fr",
            business: None,
            caller: "+33612345678",
            started_at_ms: 1_795_291_380_000,
            utc_offset_minutes: 60,
            duration_ms: 42_000,
            transcript: &turns,
        };
        chat_request(&input, "gpt-4.1-mini")
    }

    #[tokio::test]
    async fn a_valid_reply_round_trips() {
        let (fake, client) = fake().await;
        let body = client.create(&request()).await.unwrap();
        let (summary, usage) = parse_reply(&body).unwrap();
        assert_eq!(serde_json::to_value(&summary).unwrap(), default_summary());
        assert!(usage.unwrap().total_tokens > 0);
        let requests = fake.chat_requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0], request());
        let prompt = requests[0]["messages"][1]["content"].as_str().unwrap();
        assert!(prompt.contains("CALLER: Je voudrais réserver pour quatre samedi."), "{prompt}");
        assert!(requests[0]["messages"][0]["content"].as_str().unwrap().contains("in French"));
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[tokio::test]
    async fn errors_are_classified_end_to_end() {
        let (fake, client) = fake().await;
        fake.push_chat_reply(ChatReply::Status {
            status: 429,
            retry_after: Some(2),
            body: json!({"error": {"message": "Rate limit reached for requests", "type": "requests",
                "param": null, "code": "rate_limit_exceeded"}}),
        });
        fake.push_chat_reply(ChatReply::error(500, "server_error", "The server had an error"));
        fake.push_chat_reply(ChatReply::Malformed("{\"summary\": \"half".into()));
        fake.push_chat_reply(ChatReply::error(400, "invalid_request_error", "Invalid schema"));

        let e = client.create(&request()).await.unwrap_err();
        match &e {
            ChatError::RateLimited { retry_after, message } => {
                assert_eq!(*retry_after, Some(Duration::from_secs(2)));
                assert!(message.contains("Rate limit reached"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.is_retryable());

        let e = client.create(&request()).await.unwrap_err();
        assert!(matches!(&e, ChatError::Server { status: 500, .. }), "{e:?}");
        assert!(e.is_retryable());

        let body = client.create(&request()).await.unwrap();
        assert!(matches!(parse_reply(&body), Err(SummaryError::Schema(_))));

        let e = client.create(&request()).await.unwrap_err();
        assert!(matches!(&e, ChatError::Rejected { status: 400, message } if message.contains("Invalid schema")));
        assert!(!e.is_retryable());

        // Queue drained: back to the default, valid reply.
        assert!(parse_reply(&client.create(&request()).await.unwrap()).is_ok());
        assert_eq!(fake.chat_requests().len(), 5);
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[tokio::test]
    async fn a_hung_request_times_out_and_no_key_sends_nothing() {
        let (fake, client) = fake().await;
        fake.push_chat_reply(ChatReply::Hang(Duration::from_secs(30)));
        let client = client.with_timeout(Duration::from_millis(300));
        let e = client.create(&request()).await.unwrap_err();
        assert!(matches!(&e, ChatError::Transport(m) if m.contains("timed out")), "{e:?}");
        assert!(e.is_retryable());

        let keyless = ChatClient::new(reqwest::Client::new(), fake.base_url(), None);
        assert_eq!(keyless.create(&request()).await.unwrap_err(), ChatError::NoApiKey);
        assert_eq!(fake.chat_requests().len(), 1);

        // Nothing listens here any more: a connect failure is a transport error.
        let base = fake.base_url();
        fake.shutdown().await;
        drop(fake);
        let gone = ChatClient::new(reqwest::Client::new(), base, Some(Secret::new("sk-test-key")))
            .with_timeout(Duration::from_secs(5));
        assert!(matches!(gone.create(&request()).await, Err(ChatError::Transport(_))));
    }
}
