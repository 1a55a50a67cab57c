//! Webhook tools: a tenant may back a tool with its own HTTPS endpoint. When the model calls
//! the tool, [`call`] POSTs the arguments there, signed, and hands the endpoint's JSON answer
//! back to the model. Whatever goes wrong becomes an `{"error": "…"}` the model can talk about;
//! it never fails the call and never shows the secret.
//!
//! # The request (what an integrator receives)
//!
//! ```text
//! POST <the tool's URL>
//! Content-Type: application/json
//! User-Agent: switchboard/<version>
//! X-Switchboard-Timestamp: 1700000000
//! X-Switchboard-Signature: v1=<64 lowercase hex digits>
//!
//! {"tool":"check_availability","arguments":{"date":"2026-11-28","party_size":4},
//!  "call":{"callSid":"CA…","tenant":"trattoria-mario","from":"+15551234567"}}
//! ```
//!
//! `arguments` is the model's arguments parsed as JSON, or the raw string when they are not
//! JSON. `from` is the caller's number as Twilio gave it (it may be `anonymous`).
//!
//! # Verifying the signature (Stripe-like)
//!
//! 1. Take `X-Switchboard-Timestamp` (unix seconds, decimal) as the exact string received.
//! 2. Build the signed payload: that string, a `.`, then the **raw request body bytes** (before
//!    any JSON parsing or re-serialisation).
//! 3. Compute `HMAC-SHA256(key = the tool's secret, message = payload)` and hex-encode it
//!    (lowercase).
//! 4. `X-Switchboard-Signature` holds one or more comma-separated `v1=<hex>` entries (more than
//!    one only while a secret is being rotated); accept if any equals yours, comparing in
//!    constant time.
//! 5. Reject timestamps more than a few minutes (we suggest 5) from your clock, so a captured
//!    request cannot be replayed later.
//!
//! ```python
//! import hmac, hashlib, time
//! def verify(secret: bytes, ts: str, body: bytes, header: str, tolerance=300) -> bool:
//!     if not ts.isdigit() or abs(time.time() - int(ts)) > tolerance:
//!         return False
//!     mac = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
//!     return any(hmac.compare_digest(mac, p.strip()[3:])
//!                for p in header.split(",") if p.strip().startswith("v1="))
//! ```
//!
//! [`verify`] is the same check in Rust.
//!
//! # The answer (what the model gets)
//!
//! A 2xx with a JSON body of at most [`MAX_RESPONSE_BYTES`] is handed to the model as is
//! (re-serialised compactly). Anything else becomes `{"error": "…"}`: no answer within the
//! timeout, an unreachable endpoint, a non-2xx status, a body that is too large or not JSON.
//!
//! The URL must be `https://` (plain `http://` only to a loopback address, for tests and local
//! development): the body carries the caller's number.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use serde_json::{Value, json};
use sha2::Sha256;
use tracing::{info, warn};

/// Header carrying the unix time (seconds) the request was signed at.
pub const TIMESTAMP_HEADER: &str = "X-Switchboard-Timestamp";
/// Header carrying `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "X-Switchboard-Signature";
/// Largest answer body handed to the model; a larger one is an error.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;
/// Clock difference [`verify`] is usually given: five minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

const USER_AGENT_VALUE: &str = concat!("switchboard/", env!("CARGO_PKG_VERSION"));

/// Who is calling, sent with every tool request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookContext {
    pub call_sid: String,
    pub tenant_id: String,
    /// The caller's number (`From`).
    pub caller: String,
}

/// Why a webhook gave the model no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The URL is not `https://` (or `http://` to loopback), or does not parse.
    BadUrl,
    Timeout,
    Unreachable,
    Status(u16),
    TooLarge,
    NotJson,
}

impl Failure {
    fn for_model(&self, tool: &str) -> String {
        let error = match self {
            Failure::BadUrl => format!("the {tool} service is not configured correctly"),
            Failure::Timeout => format!("the {tool} service did not answer in time"),
            Failure::Unreachable => format!("the {tool} service could not be reached"),
            Failure::Status(s) => format!("the {tool} service failed (HTTP {s})"),
            Failure::TooLarge => format!("the {tool} service answered with too much data"),
            Failure::NotJson => format!("the {tool} service gave an answer that could not be read"),
        };
        json!({ "error": error }).to_string()
    }
}

/// Calls the webhook tool `tool` at `url` with the model's `arguments_json`, signed with
/// `secret`, and returns what to hand to the model: the endpoint's JSON, or `{"error": "…"}`.
/// Returns within about `timeout`, whatever the endpoint does.
pub async fn call(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    timeout: Duration,
    tool: &str,
    arguments_json: &str,
    ctx: &WebhookContext,
) -> String {
    let started = std::time::Instant::now();
    let result = match tokio::time::timeout(timeout, send(http, url, secret, timeout, tool, arguments_json, ctx)).await
    {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(answer) => {
            info!(tool, elapsed_ms, bytes = answer.len(), "webhook tool answered");
            answer
        }
        Err(failure) => {
            warn!(tool, host = %host_of(url), elapsed_ms, ?failure, "webhook tool failed");
            failure.for_model(tool)
        }
    }
}

async fn send(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    timeout: Duration,
    tool: &str,
    arguments_json: &str,
    ctx: &WebhookContext,
) -> Result<String, Failure> {
    let url = allowed_url(url).ok_or(Failure::BadUrl)?;
    let arguments =
        serde_json::from_str::<Value>(arguments_json).unwrap_or_else(|_| Value::String(arguments_json.to_string()));
    let body = json!({
        "tool": tool,
        "arguments": arguments,
        "call": {"callSid": ctx.call_sid, "tenant": ctx.tenant_id, "from": ctx.caller},
    })
    .to_string();
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let resp = http
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature(secret, timestamp, body.as_bytes()))
        .body(body)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| transport_failure(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(Failure::Status(status.as_u16()));
    }
    let bytes = read_bounded(resp, MAX_RESPONSE_BYTES).await?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| Failure::NotJson)?;
    Ok(value.to_string())
}

fn transport_failure(e: &reqwest::Error) -> Failure {
    if e.is_timeout() { Failure::Timeout } else { Failure::Unreachable }
}

/// The body, or [`Failure::TooLarge`] as soon as it exceeds `max` bytes (without reading on).
async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, Failure> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(Failure::TooLarge);
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_failure(&e))? {
        if buf.len() + chunk.len() > max {
            return Err(Failure::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// `url` if it is `https://`, or `http://` to a loopback host.
fn allowed_url(url: &str) -> Option<reqwest::Url> {
    let parsed = reqwest::Url::parse(url).ok()?;
    // `host_str` brackets IPv6 literals: `[::1]`.
    let loopback = parsed.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match parsed.scheme() {
        "https" => Some(parsed),
        "http" if loopback => Some(parsed),
        _ => None,
    }
}

/// The host, for logs: the rest of the URL may hold a token of the integrator's.
fn host_of(url: &str) -> String {
    reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_else(|| "?".into())
}

fn mac(secret: &str, timestamp: &[u8], body: &[u8]) -> Hmac<Sha256> {
    // Invariant: HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp);
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Switchboard-Signature` value for `body` sent at `timestamp` (unix seconds):
/// `v1=` + lowercase hex of `HMAC-SHA256(secret, "<timestamp>.<body>")`.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp.to_string().as_bytes(), body).finalize().into_bytes();
    format!("v1={}", hex::encode(tag))
}

/// Checks a request as an integrator should: `timestamp` is the `X-Switchboard-Timestamp`
/// header as received, `header` the `X-Switchboard-Signature` one (any of its comma-separated
/// `v1=` entries may match), `now` the receiver's unix time in seconds. False when the
/// timestamp is not decimal digits or is more than `tolerance` away from `now`, or when no
/// entry matches. The comparison is constant-time.
pub fn verify(secret: &str, timestamp: &str, body: &[u8], header: &str, now: u64, tolerance: Duration) -> bool {
    if timestamp.is_empty() || timestamp.len() > 20 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(ts) = timestamp.parse::<u64>() else {
        return false;
    };
    if ts.abs_diff(now) > tolerance.as_secs() {
        return false;
    }
    let expected = mac(secret, timestamp.as_bytes(), body);
    header
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .filter_map(|hex_tag| hex::decode(hex_tag).ok())
        .any(|tag| expected.clone().verify_slice(&tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::FakeWebhook;

    const SECRET: &str = "whsec_test";
    const NOW: u64 = 1_700_000_000;
    const T: Duration = Duration::from_secs(300);

    fn ctx() -> WebhookContext {
        WebhookContext {
            call_sid: "CA0123456789abcdef0123456789abcdef".into(),
            tenant_id: "trattoria-mario".into(),
            caller: "+15551234567".into(),
        }
    }

    #[test]
    fn signature_known_answer() {
        // Computed independently: python3 hmac.new(b"whsec_test", b'1700000000.{"tool":"check"}', sha256)
        let sig = signature(SECRET, NOW, br#"{"tool":"check"}"#);
        assert_eq!(sig, "v1=b8f03f3361be3c793bf99cf026c653815a3aa261b8fde0f71d69a67460cfd05d");
        assert!(verify(SECRET, "1700000000", br#"{"tool":"check"}"#, &sig, NOW, T));
    }

    #[test]
    fn verify_rejects_what_it_should() {
        let body = br#"{"tool":"check","arguments":{"n":1}}"#;
        let sig = signature(SECRET, NOW, body);
        assert!(verify(SECRET, "1700000000", body, &sig, NOW + 299, T));
        assert!(verify(SECRET, "1700000000", body, &sig, NOW - 300, T));
        // Tampered body, wrong secret, other timestamp.
        assert!(!verify(SECRET, "1700000000", br#"{"tool":"check","arguments":{"n":2}}"#, &sig, NOW, T));
        assert!(!verify("other", "1700000000", body, &sig, NOW, T));
        assert!(!verify(SECRET, "1700000001", body, &sig, NOW, T));
        // Stale or future.
        assert!(!verify(SECRET, "1700000000", body, &sig, NOW + 301, T));
        assert!(!verify(SECRET, "1700000000", body, &sig, NOW - 301, T));
        // Malformed timestamps and headers.
        for ts in ["", "+1700000000", " 1700000000", "1700000000.0", "-1", "99999999999999999999999"] {
            assert!(!verify(SECRET, ts, body, &sig, NOW, T), "{ts:?}");
        }
        let hex_only = sig.trim_start_matches("v1=");
        for h in ["", "v1=", hex_only, &format!("v0={hex_only}"), "v1=zz", &sig[..sig.len() - 2]] {
            assert!(!verify(SECRET, "1700000000", body, h, NOW, T), "{h:?}");
        }
        // Several entries (a secret being rotated): any may match.
        let rotated = format!("v1={}, {sig}", "00".repeat(32));
        assert!(verify(SECRET, "1700000000", body, &rotated, NOW, T));
        // Leading zeros are signed as received.
        let padded = hex::encode(mac(SECRET, b"01700000000", body).finalize().into_bytes());
        assert!(verify(SECRET, "01700000000", body, &format!("v1={padded}"), NOW, T));
        assert!(!verify(SECRET, "01700000000", body, &sig, NOW, T));
    }

    #[tokio::test]
    async fn signed_request_is_verified_by_the_endpoint() {
        let fake = FakeWebhook::start(SECRET).await.unwrap();
        let http = reqwest::Client::new();
        let out = call(&http, &fake.url(), SECRET, T, "check_availability", r#"{"date":"2026-11-28"}"#, &ctx()).await;
        assert_eq!(out, r#"{"ok":true}"#);
        let reqs = fake.wait_for_requests(1, Duration::from_secs(2)).await.unwrap();
        assert!(reqs[0].signature_ok);
        assert_eq!(
            reqs[0].body,
            json!({
                "tool": "check_availability",
                "arguments": {"date": "2026-11-28"},
                "call": {"callSid": "CA0123456789abcdef0123456789abcdef", "tenant": "trattoria-mario", "from": "+15551234567"},
            })
        );
        // Arguments that are not JSON travel as a string.
        fake.set_reply(json!({"slots": ["20:00", "20:30"]}));
        let out = call(&http, &fake.url(), SECRET, T, "check_availability", "tomorrow {", &ctx()).await;
        assert_eq!(out, r#"{"slots":["20:00","20:30"]}"#);
        let reqs = fake.wait_for_requests(2, Duration::from_secs(2)).await.unwrap();
        assert_eq!(reqs[1].body["arguments"], json!("tomorrow {"));
        assert!(reqs[1].signature_ok);
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[tokio::test]
    async fn a_tampered_body_fails_verification() {
        let fake = FakeWebhook::start(SECRET).await.unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let signed = br#"{"tool":"refund","arguments":{"amount":1},"call":{}}"#;
        let sent = br#"{"tool":"refund","arguments":{"amount":1000},"call":{}}"#;
        let resp = reqwest::Client::new()
            .post(fake.url())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, signature(SECRET, now, signed))
            .body(&sent[..])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let reqs = fake.wait_for_requests(1, Duration::from_secs(2)).await.unwrap();
        assert!(!reqs[0].signature_ok);
        assert_eq!(reqs[0].body["arguments"]["amount"], 1000);
        assert_eq!(fake.violations().len(), 1, "{:?}", fake.violations());

        // Signed with another secret, through `call`: the model gets an error, not the secret.
        let out = call(&reqwest::Client::new(), &fake.url(), "not-the-secret", T, "refund", "{}", &ctx()).await;
        assert_eq!(out, r#"{"error":"the refund service failed (HTTP 401)"}"#);
        assert!(!out.contains("not-the-secret"));
    }

    #[tokio::test]
    async fn a_slow_endpoint_times_out() {
        let fake = FakeWebhook::start(SECRET).await.unwrap();
        fake.set_delay(Duration::from_secs(5));
        let started = std::time::Instant::now();
        let out =
            call(&reqwest::Client::new(), &fake.url(), SECRET, Duration::from_millis(300), "lookup", "{}", &ctx())
                .await;
        let took = started.elapsed();
        assert_eq!(out, r#"{"error":"the lookup service did not answer in time"}"#);
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1_000), "{took:?}");
    }

    #[tokio::test]
    async fn bad_answers_become_error_json() {
        let fake = FakeWebhook::start(SECRET).await.unwrap();
        let http = reqwest::Client::new();
        let (url, ctx) = (fake.url(), ctx());
        let run = || call(&http, &url, SECRET, T, "lookup", "{}", &ctx);

        fake.set_response(200, "application/json", "<html>not json</html>");
        assert_eq!(run().await, r#"{"error":"the lookup service gave an answer that could not be read"}"#);

        fake.set_response(502, "application/json", r#"{"detail":"upstream down"}"#);
        assert_eq!(run().await, r#"{"error":"the lookup service failed (HTTP 502)"}"#);

        // Just over the limit, and well over it.
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_RESPONSE_BYTES));
        fake.set_response(200, "application/json", &big);
        assert_eq!(run().await, r#"{"error":"the lookup service answered with too much data"}"#);
        let fits = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_RESPONSE_BYTES - 10));
        assert_eq!(fits.len(), MAX_RESPONSE_BYTES);
        fake.set_response(200, "application/json", &fits);
        assert_eq!(run().await, fits);
        // Without Content-Length the limit is enforced while reading.
        fake.set_chunked(true);
        assert_eq!(run().await, fits);
        fake.set_response(200, "application/json", &big);
        assert_eq!(run().await, r#"{"error":"the lookup service answered with too much data"}"#);
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[tokio::test]
    async fn plain_http_is_refused_except_to_loopback() {
        let http = reqwest::Client::new();
        for url in ["http://tools.example.com/hook", "ftp://tools.example.com/hook", "not a url", ""] {
            let out = call(&http, url, SECRET, T, "lookup", "{}", &ctx()).await;
            assert_eq!(out, r#"{"error":"the lookup service is not configured correctly"}"#, "{url}");
        }
        assert!(allowed_url("https://tools.example.com/hook?k=1").is_some());
        assert!(allowed_url("http://127.0.0.1:9/hook").is_some());
        assert!(allowed_url("http://[::1]:9/hook").is_some());
        assert!(allowed_url("http://localhost:9/hook").is_some());
        // Nothing listens: unreachable, fast.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let out = call(&http, &format!("http://127.0.0.1:{port}/hook"), SECRET, T, "lookup", "{}", &ctx()).await;
        assert_eq!(out, r#"{"error":"the lookup service could not be reached"}"#);
    }
}
