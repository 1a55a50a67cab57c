//! The fake's `POST /v1/chat/completions` (protocols.md D.2, D.4), served by the same axum app
//! as [`FakeRealtime`]: the daemon gets one `OPENAI_BASE_URL` for both.
//!
//! Replies come from a scripted queue ([`FakeRealtime::push_chat_reply`]), then from a default
//! (a valid call summary unless [`FakeRealtime::set_default_chat_reply`] changed it). Every
//! request body is recorded ([`FakeRealtime::chat_requests`]) so a test can read the prompt.
//! Requests are checked as the real service would (bearer key, JSON body, `model`, `messages`,
//! a strict `json_schema`) and each problem is recorded in [`FakeRealtime::violations`].
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
}
