//! A tenant's webhook-tool endpoint on `127.0.0.1:0` (see `crate::bridge::webhook` for the
//! contract): `POST /hook` with a signed JSON body.
//!
//! Every request is recorded as a [`WebhookRequest`], with whether its signature verified
//! (`crate::bridge::webhook::verify`, five minutes' tolerance; the scheme itself is pinned by a
//! known-answer test there). A request whose signature fails is answered 401, as an integrator
//! would, and recorded in [`FakeWebhook::violations`], as is a missing header, a content type
//! other than JSON, a body that is not JSON or lacks `tool`/`arguments`/`call`, or a
//! `User-Agent` other than `switchboard/…`. Otherwise the answer is the scripted one: `{"ok":true}`
//! by default, [`FakeWebhook::set_reply`] / [`FakeWebhook::set_response`] to change it, after
//! [`FakeWebhook::set_delay`] if set, chunked if [`FakeWebhook::set_chunked`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bridge::webhook::{DEFAULT_TOLERANCE, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify};

/// One request received.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRequest {
    /// The body parsed as JSON (a JSON string holding the raw text if it did not parse).
    pub body: Value,
    pub signature_ok: bool,
    pub at: Instant,
}

#[derive(Debug, Clone)]
struct Script {
    status: u16,
    content_type: String,
    body: String,
    delay: Duration,
    /// Send the body in 1 KiB chunks without `Content-Length`.
    chunked: bool,
}

struct Inner {
    secret: String,
    script: Mutex<Script>,
    requests: Mutex<Vec<WebhookRequest>>,
    violations: Mutex<Vec<String>>,
    notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn violation(&self, msg: String) {
        tracing::warn!(target: "testkit::fake_webhook", "violation: {msg}");
        lock(&self.violations).push(msg);
    }
}

pub struct FakeWebhook {
    addr: SocketAddr,
    inner: Arc<Inner>,
    cancel: CancellationToken,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for FakeWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWebhook").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl FakeWebhook {
    /// Serves on `127.0.0.1:0`, verifying signatures made with `secret`.
    pub async fn start(secret: &str) -> anyhow::Result<FakeWebhook> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            secret: secret.to_string(),
            script: Mutex::new(Script {
                status: 200,
                content_type: "application/json".into(),
                body: json!({"ok": true}).to_string(),
                delay: Duration::ZERO,
                chunked: false,
            }),
            requests: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            notify: Notify::new(),
        });
        let app = Router::new().route("/hook", post(hook)).with_state(inner.clone());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        Ok(FakeWebhook { addr, inner, cancel, server: Mutex::new(Some(server)) })
    }

    /// `http://127.0.0.1:PORT/hook`: the tool's URL.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answer 200 with this JSON from now on.
    pub fn set_reply(&self, body: Value) {
        self.set_response(200, "application/json", &body.to_string());
    }

    /// Answer `status` with this body (any bytes: not-JSON, oversize…) from now on.
    pub fn set_response(&self, status: u16, content_type: &str, body: &str) {
        let mut s = lock(&self.inner.script);
        s.status = status;
        s.content_type = content_type.to_string();
        s.body = body.to_string();
    }

    /// Send answers chunked (no `Content-Length`), so a client must bound what it reads itself.
    pub fn set_chunked(&self, chunked: bool) {
        lock(&self.inner.script).chunked = chunked;
    }

    /// Wait this long before answering (zero: answer at once).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.inner.script).delay = delay;
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<WebhookRequest> {
        lock(&self.inner.requests).clone()
    }

    /// Waits until at least `n` requests were received, or `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<WebhookRequest>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let seen = self.requests();
            if seen.len() >= n {
                return Ok(seen);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                anyhow::bail!("expected {n} webhook request(s) within {timeout:?}, saw {}", seen.len());
            }
        }
    }

    /// Protocol problems seen so far, human-readable.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.inner.violations).clone()
    }

    /// Stops the server (also done on drop).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let handle = lock(&self.server).take();
        if let Some(mut handle) = handle
            && tokio::time::timeout(Duration::from_secs(2), &mut handle).await.is_err()
        {
            handle.abort();
        }
    }
}

impl Drop for FakeWebhook {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(handle) = lock(&self.server).take() {
            handle.abort();
        }
    }
}

async fn hook(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (timestamp, signature) = (header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER));
    if timestamp.is_none() || signature.is_none() {
        inner.violation(format!("missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}"));
    }
    let signature_ok = match (timestamp, signature) {
        (Some(ts), Some(sig)) => verify(&inner.secret, ts, &body, sig, now, DEFAULT_TOLERANCE),
        _ => false,
    };
    if !header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        inner.violation(format!("content-type {:?}", header("content-type")));
    }
    if !header("user-agent").is_some_and(|u| u.starts_with("switchboard/")) {
        inner.violation(format!("user-agent {:?}", header("user-agent")));
    }
    let parsed = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => {
            for field in ["tool", "arguments", "call"] {
                if v.get(field).is_none() {
                    inner.violation(format!("body lacks {field:?}"));
                }
            }
            v
        }
        Err(e) => {
            inner.violation(format!("body is not JSON: {e}"));
            Value::String(String::from_utf8_lossy(&body).into_owned())
        }
    };
    if !signature_ok {
        inner.violation(format!("signature does not verify (timestamp {timestamp:?}, signature {signature:?})"));
    }
    lock(&inner.requests).push(WebhookRequest { body: parsed, signature_ok, at: Instant::now() });
    inner.notify.notify_waiters();
    if !signature_ok {
        return (StatusCode::UNAUTHORIZED, [("content-type", "application/json")], r#"{"error":"bad signature"}"#)
            .into_response();
    }
    let script = lock(&inner.script).clone();
    if !script.delay.is_zero() {
        tokio::time::sleep(script.delay).await;
    }
    let status = StatusCode::from_u16(script.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if script.chunked {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            script.body.into_bytes().chunks(1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
        return (status, [("content-type", script.content_type)], body).into_response();
    }
    (status, [("content-type", script.content_type)], script.body).into_response()
}
