//! A fake of Twilio's REST "update a Call" endpoint (protocols.md A.5.1) on `127.0.0.1:0`:
//! `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`, HTTP basic auth, a
//! form-encoded body.
//!
//! Each request that authenticates is recorded as a [`RestRequest`]. The answer is the next
//! scripted reply ([`FakeTwilioRest::push_reply`]) if any, else a 200 with a realistic Call
//! resource whose `status` is `completed` after `Status=completed` and `in-progress` otherwise.
//! What the real service would refuse, or what a well-behaved client should not send (bad
//! credentials, another account's path, a wrong content type, unknown or conflicting
//! parameters, an odd CallSid), is recorded in [`FakeTwilioRest::violations`]; the fake never
//! panics on odd input.
//!
//! Written from `docs/protocols.md`, independently of `crate::twilio_rest`, on purpose.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Parameters the Call update accepts (A.5.1).
const KNOWN_PARAMS: &[&str] = &[
    "Status",
    "Twiml",
    "Url",
    "Method",
    "FallbackUrl",
    "FallbackMethod",
    "StatusCallback",
    "StatusCallbackMethod",
    "TimeLimit",
];

/// Twilio's limit on the `Twiml` parameter.
const MAX_TWIML_CHARS: usize = 4_000;

/// One authenticated update request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestRequest {
    pub account_sid: String,
    /// From the path, without `.json`.
    pub call_sid: String,
    /// The form parameters, decoded, in the order sent.
    pub params: Vec<(String, String)>,
    pub at: Instant,
}

impl RestRequest {
    /// The first value of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
}

#[derive(Default)]
struct Log {
    requests: Vec<RestRequest>,
    violations: Vec<String>,
    replies: VecDeque<Reply>,
}

struct Inner {
    account_sid: String,
    auth_token: String,
    log: Mutex<Log>,
    notify: Notify,
}

impl Inner {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn violation(&self, msg: String) {
        tracing::warn!(target: "testkit::fake_twilio_rest", "violation: {msg}");
        self.log().violations.push(msg);
        self.notify.notify_waiters();
    }
}

pub struct FakeTwilioRest {
    addr: SocketAddr,
    inner: Arc<Inner>,
    cancel: CancellationToken,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for FakeTwilioRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTwilioRest").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl FakeTwilioRest {
    /// Serves on `127.0.0.1:0`, accepting `account_sid:auth_token` as basic credentials.
    pub async fn start(account_sid: &str, auth_token: &str) -> anyhow::Result<FakeTwilioRest> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            account_sid: account_sid.to_string(),
            auth_token: auth_token.to_string(),
            log: Mutex::new(Log::default()),
            notify: Notify::new(),
        });
        let app = Router::new()
            .route("/2010-04-01/Accounts/{account}/Calls/{call}", any(update_call))
            .fallback(unknown_route)
            .with_state(inner.clone());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        Ok(FakeTwilioRest { addr, inner, cancel, server: Mutex::new(Some(server)) })
    }

    /// `http://127.0.0.1:PORT`: what the client gets as its API base (in place of
    /// `https://api.twilio.com`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues the answer to a later request (first in, first out): `status` with `body` as JSON.
    pub fn push_reply(&self, status: u16, body: Value) {
        self.inner.log().replies.push_back(Reply { status, body, retry_after: None });
    }

    /// Like [`push_reply`](Self::push_reply), with a `Retry-After: <seconds>` header.
    pub fn push_reply_with_retry_after(&self, status: u16, body: Value, retry_after_secs: u64) {
        self.inner.log().replies.push_back(Reply { status, body, retry_after: Some(retry_after_secs) });
    }

    /// Every authenticated request, in order.
    pub fn requests(&self) -> Vec<RestRequest> {
        self.inner.log().requests.clone()
    }

    /// Waits until at least `n` requests were recorded, or `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<RestRequest>> {
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
                anyhow::bail!(
                    "expected {n} Twilio REST request(s) within {timeout:?}, saw {}; violations: {:?}",
                    seen.len(),
                    self.violations()
                );
            }
        }
    }

    /// Protocol problems seen so far, human-readable.
    pub fn violations(&self) -> Vec<String> {
        self.inner.log().violations.clone()
    }

    /// Stops the server (also done on drop).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let handle = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut handle) = handle
            && tokio::time::timeout(Duration::from_secs(2), &mut handle).await.is_err()
        {
            handle.abort();
        }
    }
}

impl Drop for FakeTwilioRest {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(handle) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            handle.abort();
        }
    }
}

/// A Twilio error body (A.5.1).
pub fn error_body(status: u16, code: u32, message: &str) -> Value {
    json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    })
}

/// The 404 Twilio answers for a Call that does not exist (any more).
pub fn not_found_body(account_sid: &str, call_sid: &str) -> Value {
    error_body(
        404,
        20404,
        &format!("The requested resource /2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json was not found"),
    )
}

fn json_response(status: u16, body: &Value, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, [("content-type", "application/json; charset=utf-8")], body.to_string()).into_response();
    if let Some(v) = retry_after.and_then(|s| s.to_string().parse().ok()) {
        resp.headers_mut().insert("retry-after", v);
    }
    resp
}

fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

async fn unknown_route(State(inner): State<Arc<Inner>>, method: Method, uri: Uri) -> Response {
    inner.violation(format!("{method} {uri}: not the Call update endpoint"));
    json_response(404, &error_body(404, 20404, &format!("The requested resource {} was not found", uri.path())), None)
}

async fn update_call(
    State(inner): State<Arc<Inner>>,
    Path((account, call)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if method != Method::POST {
        inner.violation(format!("{method} on the Call resource; updates are POST"));
        return json_response(405, &error_body(405, 20004, "Method not allowed"), None);
    }
    let credentials = header("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| B64.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let expected = format!("{}:{}", inner.account_sid, inner.auth_token);
    if credentials.as_deref() != Some(expected.as_str()) {
        let what = match &credentials {
            None => "no (or unreadable) basic credentials".to_string(),
            Some(c) => match c.split_once(':') {
                Some((user, _)) if user != inner.account_sid => format!("basic auth user {user:?}"),
                _ => "a wrong auth token".to_string(),
            },
        };
        inner.violation(format!("POST {account}/Calls/{call}: {what}"));
        return json_response(401, &error_body(401, 20003, "Authenticate"), None);
    }
    if account != inner.account_sid {
        inner.violation(format!("path account {account:?} is not the authenticated account"));
        return json_response(401, &error_body(401, 20003, "Authenticate"), None);
    }
    let Some(call_sid) = call.strip_suffix(".json") else {
        inner.violation(format!("Call path {call:?} lacks the .json suffix"));
        return json_response(404, &not_found_body(&account, &call), None);
    };
    if !is_sid(call_sid, "CA") {
        inner.violation(format!("CallSid {call_sid:?} is not CA + 32 hex digits"));
        return json_response(404, &not_found_body(&account, call_sid), None);
    }
    if !header("content-type").is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")) {
        inner.violation(format!("Call update with content-type {:?}", header("content-type")));
    }
    let params: Vec<(String, String)> =
        form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    for problem in check_params(&params) {
        inner.violation(format!("Call update {call_sid}: {problem}"));
    }
    let request =
        RestRequest { account_sid: account.clone(), call_sid: call_sid.to_string(), params, at: Instant::now() };
    let completed = request.param("Status") == Some("completed");
    let scripted = {
        let mut log = inner.log();
        log.requests.push(request);
        log.replies.pop_front()
    };
    inner.notify.notify_waiters();
    match scripted {
        Some(r) => json_response(r.status, &r.body, r.retry_after),
        None => json_response(200, &call_resource(&account, call_sid, completed), None),
    }
}

fn check_params(params: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let has = |name: &str| params.iter().any(|(k, _)| k == name);
    for (k, v) in params {
        if !KNOWN_PARAMS.contains(&k.as_str()) {
            problems.push(format!("unknown parameter {k:?}"));
        }
        if params.iter().filter(|(k2, _)| k2 == k).count() > 1 {
            problems.push(format!("parameter {k:?} sent more than once"));
        }
        match k.as_str() {
            "Status" if v != "completed" && v != "canceled" => problems.push(format!("Status {v:?}")),
            "Twiml" => {
                if v.chars().count() > MAX_TWIML_CHARS {
                    problems.push(format!("Twiml of {} characters (limit {MAX_TWIML_CHARS})", v.chars().count()));
                }
                if !v.contains("<Response") || !v.trim_end().ends_with("</Response>") {
                    problems.push(format!("Twiml is not a <Response> document: {v:?}"));
                }
            }
            _ => {}
        }
    }
    if has("Twiml") && has("Url") {
        problems.push("Twiml and Url are mutually exclusive".into());
    }
    if params.is_empty() {
        problems.push("no parameters: nothing to update".into());
    }
    problems.dedup();
    problems
}

/// A Call resource as Twilio returns it (snake_case; A.5.1).
fn call_resource(account_sid: &str, call_sid: &str, completed: bool) -> Value {
    let date = "Tue, 31 Aug 2010 20:36:29 +0000";
    json!({
        "sid": call_sid,
        "account_sid": account_sid,
        "parent_call_sid": null,
        "date_created": date,
        "date_updated": date,
        "from": "+15551234567",
        "from_formatted": "(555) 123-4567",
        "to": "+15557654321",
        "to_formatted": "(555) 765-4321",
        "phone_number_sid": "PN0123456789abcdef0123456789abcdef",
        "status": if completed { "completed" } else { "in-progress" },
        "direction": "inbound",
        "start_time": date,
        "end_time": if completed { Value::from("Tue, 31 Aug 2010 20:36:44 +0000") } else { Value::Null },
        "duration": if completed { Value::from("15") } else { Value::Null },
        "price": null,
        "price_unit": "USD",
        "answered_by": null,
        "caller_name": null,
        "forwarded_from": null,
        "group_sid": null,
        "queue_time": "0",
        "trunk_sid": null,
        "api_version": "2010-04-01",
        "uri": format!("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json"),
        "subresource_uris": {
            "notifications": format!("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}/Notifications.json"),
            "recordings": format!("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}/Recordings.json"),
        },
    })
}
