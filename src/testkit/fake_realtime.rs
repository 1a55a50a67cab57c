//! A fake OpenAI Realtime server speaking the GA dialect (protocols.md C), for integration
//! tests and the load generator. The same server also answers `POST /v1/chat/completions` and
//! `POST /v1/audio/transcriptions` (see [`super::fake_openai_http`]).
//!
//! It binds `127.0.0.1:0` and serves `GET /v1/realtime?model=…` as a WebSocket. Per connection
//! it sends `session.created`, validates and answers `session.update`, streams scripted agent
//! audio on `response.create`, handles `response.cancel` and `conversation.item.truncate`, and
//! emulates server VAD with an energy detector over the appended caller audio. Every client
//! event is logged (raw JSON with its arrival [`Instant`]) for the test to inspect, and every
//! deviation from the GA protocol it notices is recorded in [`FakeRealtime::violations`].
//!
//! It deliberately shares no code with `crate::core`: it is built on `serde_json::Value` from
//! the protocol reference, so a misunderstanding in the daemon's own event types shows up here.
//!
//! Lifetime: the server and all its connections stop on [`FakeRealtime::shutdown`] or when the
//! [`FakeRealtime`] is dropped; each connection is also bounded by
//! [`FakeScript::session_limit`] (the real service's 60-minute limit by default).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::fake_openai_http::{ChatFake, TranscriptionFake, chat_completions, transcriptions};
use super::{alaw_decode, ulaw_decode};

/// What the fake does. Build it with struct-update syntax over [`FakeScript::default`].
///
/// The script is copied into each connection when it opens; [`FakeRealtime::update_script`]
/// changes what later connections get.
#[derive(Debug, Clone)]
pub struct FakeScript {
    /// If set, the upgrade must carry `Authorization: Bearer <key>`, else HTTP 401.
    pub expected_api_key: Option<String>,
    /// Agent audio of the **first** response of each connection (whatever triggered it), in the
    /// session's output format: μ-law 8 kHz for `audio/pcmu`, PCM16 LE 24 kHz for `audio/pcm`
    /// (see [`super::ulaw_to_pcm24k`]). Empty = a response with no audio.
    pub greeting_audio: Vec<u8>,
    /// Transcript of the first response.
    pub greeting_transcript: String,
    /// Agent audio of every later response (same format rules as `greeting_audio`).
    pub reply_audio: Vec<u8>,
    /// Transcript of every later response (also the text of `["text"]`-modality responses).
    pub reply_transcript: String,
    /// Caller transcripts handed out, in order, by each connection's
    /// `conversation.item.input_audio_transcription.completed` (`"(inaudible)"` once empty).
    /// Sent only when the session enables `audio.input.transcription`, as the real service does.
    pub caller_transcripts: Vec<String>,
    /// Bytes of audio per `response.output_audio.delta` (default 800 = 100 ms of μ-law; for
    /// PCM it is rounded down to an even count).
    pub delta_bytes: usize,
    /// Pause between audio deltas (default 20 ms: faster than real time, like the service).
    pub delta_interval: Duration,
    /// Delay between `response.created` and the first audio delta of every response.
    pub response_latency: Duration,
    /// Extra delay before the first audio delta of the first response of each connection.
    pub greeting_delay: Duration,
    /// Emulate server VAD on appended audio (only while the session's
    /// `audio.input.turn_detection` is not `null`). `false` = never send VAD events, to test
    /// the daemon's local VAD alone.
    pub server_vad: bool,
    /// RMS (i16 scale) over a 20 ms window at or above which the window counts as speech.
    pub vad_threshold: f64,
    /// Continuous speech (in appended-audio time) needed before `speech_started` is sent.
    /// Its `audio_start_ms` is the onset minus the session's `prefix_padding_ms` (clamped at
    /// 0), like the real service; the clock is all audio appended on this connection.
    pub vad_min_speech_ms: u32,
    /// Quiet needed after speech before `speech_stopped` + commit. (The session's
    /// `silence_duration_ms` is not used: the script decides.)
    pub silence_ms: u32,
    /// After a committed caller turn, start a response (also requires the session's
    /// `turn_detection.create_response` not to be `false`).
    pub auto_respond: bool,
    /// Cancel an active response on speech onset (also requires the session's
    /// `turn_detection.interrupt_response` not to be `false`).
    pub interrupt_response: bool,
    /// Answer every `session.update` with an `error` instead of `session.updated`.
    pub reject_session_update: bool,
    /// Fault: answer the upgrade with HTTP 503.
    pub refuse_connections: bool,
    /// Fault: drop the TCP connection (no close frame) this long after the first
    /// `session.updated`.
    pub drop_after: Option<Duration>,
    /// Apply the faults above only to the first N connection attempts (`None` = to all).
    pub fault_connections: Option<usize>,
    /// Maximum connection lifetime: then `error` `session_expired` and close code 1001.
    pub session_limit: Duration,
    /// Record the first `session.update` omitting instructions, formats, voice, turn detection
    /// or transcription as a violation (what this daemon must always configure).
    pub strict_session: bool,
    /// Keep `input_audio_buffer.append` events, their audio, and the server's audio deltas in
    /// the logs. Turn off for long load runs: those events are then only counted.
    pub record_audio: bool,
    /// The first reply (a response after the greeting) of each connection ends with a call to
    /// this function: `(name, arguments JSON)`, emitted after its audio as a second output item.
    pub reply_function_call: Option<(String, String)>,
}

impl Default for FakeScript {
    fn default() -> Self {
        Self {
            expected_api_key: None,
            greeting_audio: Vec::new(),
            greeting_transcript: "Hello! How can I help you today?".into(),
            reply_audio: Vec::new(),
            reply_transcript: "Sure, I can help with that.".into(),
            caller_transcripts: Vec::new(),
            delta_bytes: 800,
            delta_interval: Duration::from_millis(20),
            response_latency: Duration::ZERO,
            greeting_delay: Duration::ZERO,
            server_vad: true,
            vad_threshold: 500.0,
            vad_min_speech_ms: 100,
            silence_ms: 500,
            auto_respond: true,
            interrupt_response: true,
            reject_session_update: false,
            refuse_connections: false,
            drop_after: None,
            fault_connections: None,
            session_limit: Duration::from_secs(60 * 60),
            strict_session: true,
            record_audio: true,
            reply_function_call: None,
        }
    }
}

/// One event (client or server), as JSON, with its connection and when it was received or sent.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    /// Connection index, from 0, in the order upgrades were accepted.
    pub conn: usize,
    pub at: Instant,
    pub event: Value,
}

impl RecordedEvent {
    /// The event's `type` (`""` if missing).
    pub fn kind(&self) -> &str {
        self.event.get("type").and_then(Value::as_str).unwrap_or("")
    }
}

/// One `conversation.item.truncate` as received.
#[derive(Debug, Clone)]
pub struct TruncateRecord {
    pub conn: usize,
    pub at: Instant,
    pub item_id: String,
    /// `-1` when missing or not an integer.
    pub audio_end_ms: i64,
    /// Audio of that item sent so far, in ms (0 for an unknown item).
    pub item_audio_ms: u64,
    /// Whether it was answered with `conversation.item.truncated` (else `error`).
    pub accepted: bool,
}

/// One HTTP request to `/v1/realtime`.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub at: Instant,
    pub model: Option<String>,
    pub authorization: Option<String>,
    pub beta_header: Option<String>,
    /// 101 when upgraded, else the HTTP status answered.
    pub status: u16,
}

#[derive(Default)]
struct Log {
    events: Vec<RecordedEvent>,
    sent: Vec<RecordedEvent>,
    sent_counts: HashMap<String, usize>,
    first_delta: HashMap<String, Instant>,
    counts: HashMap<String, usize>,
    appended: Vec<Vec<u8>>,
    appended_bytes: Vec<u64>,
    appended_ms: Vec<u64>,
    truncates: Vec<TruncateRecord>,
    violations: Vec<String>,
    handshakes: Vec<Handshake>,
    other_requests: Vec<(String, String)>,
    attempts: usize,
}

pub(super) struct Inner {
    log: Mutex<Log>,
    notify: Notify,
    pub(super) script: Mutex<FakeScript>,
    kill: Mutex<CancellationToken>,
    pub(super) cancel: CancellationToken,
    /// The chat completions side.
    pub(super) chat: ChatFake,
    /// The audio transcriptions side.
    pub(super) transcription: TranscriptionFake,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    pub(super) fn violation(&self, msg: String) {
        tracing::warn!(target: "testkit::fake_realtime", "violation: {msg}");
        lock(&self.log).violations.push(msg);
        self.notify.notify_waiters();
    }
}

/// A running fake Realtime server. See the module docs.
pub struct FakeRealtime {
    addr: SocketAddr,
    pub(super) inner: Arc<Inner>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for FakeRealtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRealtime").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl FakeRealtime {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(script: FakeScript) -> anyhow::Result<FakeRealtime> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        // Nagle off, as a latency-sensitive service would: deltas must not wait for ACKs.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            log: Mutex::new(Log::default()),
            notify: Notify::new(),
            script: Mutex::new(script),
            kill: Mutex::new(CancellationToken::new()),
            cancel: cancel.clone(),
            chat: ChatFake::default(),
            transcription: TranscriptionFake::default(),
        });
        let app = Router::new()
            .route("/v1/realtime", get(realtime_handler))
            .route("/v1/chat/completions", post(chat_completions))
            // The fake applies the service's own limit (25 MiB, settable) and answers 413 as it
            // does; axum's 2 MB default would cut uploads short first.
            .route("/v1/audio/transcriptions", post(transcriptions).layer(DefaultBodyLimit::disable()))
            .fallback(fallback)
            .with_state(inner.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
        });
        Ok(FakeRealtime { addr, inner, server: Mutex::new(Some(server)) })
    }

    /// `http://127.0.0.1:PORT/v1`: what the daemon gets as `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `ws://127.0.0.1:PORT/v1/realtime?model=<model>`, for connecting directly.
    pub fn realtime_url(&self, model: &str) -> String {
        format!("ws://{}/v1/realtime?model={model}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the script for connections opened from now on.
    pub fn update_script(&self, f: impl FnOnce(&mut FakeScript)) {
        f(&mut lock(&self.inner.script));
    }

    /// Snapshot of every client event received (all connections, arrival order).
    pub fn events(&self) -> Vec<RecordedEvent> {
        lock(&self.inner.log).events.clone()
    }

    /// Snapshot of every server event sent (all connections, send order; audio deltas are
    /// left out when the script has `record_audio: false`).
    pub fn server_events(&self) -> Vec<RecordedEvent> {
        lock(&self.inner.log).sent.clone()
    }

    /// Number of client events of type `kind` received (counted even when not recorded).
    pub fn count(&self, kind: &str) -> usize {
        lock(&self.inner.log).counts.get(kind).copied().unwrap_or(0)
    }

    /// Number of server events of type `kind` sent.
    pub fn count_sent(&self, kind: &str) -> usize {
        lock(&self.inner.log).sent_counts.get(kind).copied().unwrap_or(0)
    }

    /// When the first `response.output_audio.delta` of assistant item `item_id` was sent: the
    /// `from` of [`super::TwilioCall::played_ms_between`] for that item.
    pub fn item_audio_started(&self, item_id: &str) -> Option<Instant> {
        lock(&self.inner.log).first_delta.get(item_id).copied()
    }

    /// Concatenated decoded audio of all `input_audio_buffer.append` of connection `conn`
    /// (empty if unknown, or if the script has `record_audio: false`).
    pub fn appended_audio(&self, conn: usize) -> Vec<u8> {
        lock(&self.inner.log).appended.get(conn).cloned().unwrap_or_default()
    }

    /// Decoded bytes appended on connection `conn` (counted even when not recorded).
    pub fn appended_bytes(&self, conn: usize) -> u64 {
        lock(&self.inner.log).appended_bytes.get(conn).copied().unwrap_or(0)
    }

    /// Milliseconds of audio appended on connection `conn`, in the session's input format.
    pub fn appended_ms(&self, conn: usize) -> u64 {
        lock(&self.inner.log).appended_ms.get(conn).copied().unwrap_or(0)
    }

    /// WebSocket connections accepted so far (refused/401/beta attempts are not counted; see
    /// [`FakeRealtime::handshakes`]).
    pub fn connections(&self) -> usize {
        lock(&self.inner.log).appended.len()
    }

    /// Every request to `/v1/realtime`, accepted or not.
    pub fn handshakes(&self) -> Vec<Handshake> {
        lock(&self.inner.log).handshakes.clone()
    }

    /// Requests to paths other than `/v1/realtime`, as (method, URI); all answered 404.
    pub fn other_requests(&self) -> Vec<(String, String)> {
        lock(&self.inner.log).other_requests.clone()
    }

    /// Every `conversation.item.truncate` received.
    pub fn truncates(&self) -> Vec<TruncateRecord> {
        lock(&self.inner.log).truncates.clone()
    }

    /// Protocol violations seen so far (each prefixed with the connection index).
    pub fn violations(&self) -> Vec<String> {
        lock(&self.inner.log).violations.clone()
    }

    /// Waits until `pred` holds over the client events received so far, or `timeout`.
    /// The error lists the event types seen, to make a failing test readable.
    pub async fn wait_for<F>(&self, pred: F, timeout: Duration) -> anyhow::Result<()>
    where
        F: Fn(&[RecordedEvent]) -> bool,
    {
        self.wait_log(|log| pred(&log.events), timeout, "client events").await
    }

    /// Waits until `pred` holds over the server events sent so far, or `timeout`.
    pub async fn wait_for_sent<F>(&self, pred: F, timeout: Duration) -> anyhow::Result<()>
    where
        F: Fn(&[RecordedEvent]) -> bool,
    {
        self.wait_log(|log| pred(&log.sent), timeout, "server events").await
    }

    /// Waits until at least `n` connections have been accepted.
    pub async fn wait_for_connections(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_log(|log| log.appended.len() >= n, timeout, "connections").await
    }

    async fn wait_log<F>(&self, pred: F, timeout: Duration, what: &str) -> anyhow::Result<()>
    where
        F: Fn(&Log) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(&lock(&self.inner.log)) {
                return Ok(());
            }
            // The fallback tick keeps this correct even if a notification is missed.
            let tick = tokio::time::Instant::now() + Duration::from_millis(50);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(tick.min(deadline)) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let log = lock(&self.inner.log);
                if pred(&log) {
                    return Ok(());
                }
                let mut kinds: Vec<String> = log.counts.iter().map(|(k, n)| format!("{k}×{n}")).collect();
                kinds.sort();
                anyhow::bail!(
                    "fake realtime: timed out after {timeout:?} waiting on {what}; connections {}, client events seen: [{}], violations: {:?}",
                    log.appended.len(),
                    kinds.join(", "),
                    log.violations
                );
            }
        }
    }

    /// Drops every open connection abruptly (no close frame), as a network failure would.
    /// New connections are still accepted.
    pub fn kill_connections(&self) {
        let mut kill = lock(&self.inner.kill);
        kill.cancel();
        *kill = CancellationToken::new();
    }

    /// Stops the server and closes every connection (close code 1001). Idempotent.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let handle = lock(&self.server).take();
        if let Some(mut handle) = handle
            && tokio::time::timeout(Duration::from_secs(2), &mut handle).await.is_err()
        {
            handle.abort();
        }
    }
}

impl Drop for FakeRealtime {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
        if let Some(handle) = lock(&self.server).take() {
            handle.abort();
        }
    }
}

// ------------------------------------------------------------------------------------------
// HTTP side

/// Anything but `GET /v1/realtime`, `POST /v1/chat/completions` and
/// `POST /v1/audio/transcriptions` is answered 404 and logged ([`FakeRealtime::other_requests`]).
/// Only a path mentioning `realtime` counts as a violation (a mis-addressed Realtime
/// connection); other OpenAI endpoints are simply not faked.
async fn fallback(State(inner): State<Arc<Inner>>, method: Method, uri: Uri) -> Response {
    lock(&inner.log).other_requests.push((method.to_string(), uri.to_string()));
    if uri.path().contains("realtime") {
        inner.violation(format!("unexpected request {method} {uri} (the Realtime socket is GET /v1/realtime?model=…)"));
    } else {
        inner.notify.notify_waiters();
    }
    (StatusCode::NOT_FOUND, "not found").into_response()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn http_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

async fn realtime_handler(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let header = |name: &str| headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let model = query.as_deref().and_then(|q| query_param(q, "model")).filter(|m| !m.is_empty());
    let authorization = header("authorization");
    let beta_header = header("openai-beta");
    let script = lock(&inner.script).clone();
    let attempt = {
        let mut log = lock(&inner.log);
        log.attempts += 1;
        log.attempts - 1
    };
    let fault = script.fault_connections.is_none_or(|n| attempt < n);
    let record = |status: u16| {
        lock(&inner.log).handshakes.push(Handshake {
            at: Instant::now(),
            model: model.clone(),
            authorization: authorization.clone(),
            beta_header: beta_header.clone(),
            status,
        });
        inner.notify.notify_waiters();
    };

    if script.refuse_connections && fault {
        record(503);
        return http_error(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "fake: connections are refused");
    }
    if let Some(key) = &script.expected_api_key
        && authorization.as_deref() != Some(format!("Bearer {key}").as_str())
    {
        record(401);
        return http_error(StatusCode::UNAUTHORIZED, "invalid_api_key", "Incorrect API key provided.");
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            record(400);
            inner.violation(format!("GET /v1/realtime without a valid WebSocket upgrade: {e}"));
            return e.into_response();
        }
    };
    let Some(model) = model.clone() else {
        record(400);
        inner.violation("GET /v1/realtime without a `model` query parameter".into());
        return http_error(StatusCode::BAD_REQUEST, "missing_model", "Missing required parameter: 'model'.");
    };
    record(101);
    let ws = ws.max_message_size(64 << 20).max_frame_size(64 << 20);

    if let Some(beta) = beta_header {
        inner.violation(format!("upgrade carries `OpenAI-Beta: {beta}`: the beta dialect is retired (C.0)"));
        return ws.on_upgrade(reject_beta);
    }

    let conn_idx = {
        let mut log = lock(&inner.log);
        log.appended.push(Vec::new());
        log.appended_bytes.push(0);
        log.appended_ms.push(0);
        log.appended.len() - 1
    };
    inner.notify.notify_waiters();
    let kill = lock(&inner.kill).clone();
    let conn = Conn::new(conn_idx, inner.clone(), script, model, fault);
    ws.on_upgrade(move |socket| conn.run(socket, kill))
}

async fn reject_beta(mut socket: WebSocket) {
    let error = json!({"type": "error", "event_id": new_id("event"), "error": {
        "type": "invalid_request_error", "code": "beta_api_shape_disabled",
        "message": "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.",
        "param": null}});
    let _ = socket.send(Message::text(error.to_string())).await;
    let _ =
        socket.send(Message::Close(Some(CloseFrame { code: 4000, reason: "beta_api_shape_disabled".into() }))).await;
    drain(&mut socket).await;
}

/// Reads until the peer completes the close handshake (bounded).
async fn drain(socket: &mut WebSocket) {
    let _ =
        tokio::time::timeout(Duration::from_secs(1), async { while let Some(Ok(_)) = socket.recv().await {} }).await;
}

fn new_id(prefix: &str) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &hex[..21])
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ------------------------------------------------------------------------------------------
// One connection

const GA_VOICES: &[&str] = &["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"];
const BETA_SESSION_KEYS: &[&str] = &[
    "modalities",
    "voice",
    "input_audio_format",
    "output_audio_format",
    "input_audio_transcription",
    "input_audio_noise_reduction",
    "turn_detection",
    "temperature",
    "max_response_output_tokens",
    "speed",
];
const GA_SESSION_KEYS: &[&str] = &[
    "type",
    "instructions",
    "output_modalities",
    "audio",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "truncation",
    "include",
    "tracing",
    "prompt",
    "reasoning",
    "parallel_tool_calls",
];
const GA_RESPONSE_KEYS: &[&str] = &[
    "instructions",
    "output_modalities",
    "audio",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "metadata",
    "prompt",
    "conversation",
    "input",
    "reasoning",
];

struct SessionError {
    code: &'static str,
    message: String,
    param: Option<String>,
}

fn session_error(code: &'static str, param: &str, message: impl Into<String>) -> SessionError {
    SessionError { code, message: message.into(), param: Some(param.to_string()) }
}

struct AssistantAudio {
    bytes_sent: usize,
    bytes_per_ms: usize,
}

struct Active {
    /// `(call_id, name, arguments)` emitted after the audio.
    function_call: Option<(String, String, String)>,
    id: String,
    item_id: String,
    previous_item_id: Value,
    audio: Vec<u8>,
    sent: usize,
    chunk: usize,
    words: Vec<String>,
    words_sent: usize,
    next_at: Instant,
    interval: Duration,
    bytes_per_ms: usize,
    format: Value,
    voice: Value,
    metadata: Value,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum VadPhase {
    Quiet,
    Onset,
    Speaking,
}

struct Vad {
    buf: Vec<i16>,
    odd: Option<u8>,
    windows: u64,
    phase: VadPhase,
    item_id: String,
    onset_ms: u64,
    loud_ms: u32,
    quiet_ms: u32,
}

struct Conn {
    idx: usize,
    inner: Arc<Inner>,
    script: FakeScript,
    session: Value,
    session_updates: usize,
    audio_produced: bool,
    conversation_id: String,
    items: Vec<String>,
    assistant: HashMap<String, AssistantAudio>,
    resp: Option<Active>,
    responses: usize,
    /// The scripted reply function call was already made on this connection.
    function_called: bool,
    vad: Vad,
    uncommitted_bytes: usize,
    appended_total: u64,
    transcripts: VecDeque<String>,
    out: Vec<Value>,
    close: Option<(u16, String)>,
    drop_at: Option<Instant>,
    expire_at: Instant,
    fault: bool,
}

/// Longest wait the fake schedules; script durations are clamped to it (no `Instant` overflow).
const MAX_WAIT: Duration = Duration::from_secs(86_400);

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + MAX_WAIT
}

/// `now + d`, with `d` clamped to [`MAX_WAIT`].
fn after(d: Duration) -> Instant {
    Instant::now() + d.min(MAX_WAIT)
}

impl Conn {
    fn new(idx: usize, inner: Arc<Inner>, script: FakeScript, model: String, fault: bool) -> Conn {
        let session = json!({
            "type": "realtime", "object": "realtime.session", "id": new_id("sess"), "model": model,
            "output_modalities": ["audio"],
            "instructions": "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. (fake default)",
            "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "tracing": null,
            "truncation": "auto", "prompt": null, "expires_at": unix_now() + 3600,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": null, "noise_reduction": null,
                    "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                        "silence_duration_ms": 200, "idle_timeout_ms": null, "create_response": true,
                        "interrupt_response": true}
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0}
            },
            "include": null
        });
        let expire_at = after(script.session_limit);
        Conn {
            idx,
            inner,
            transcripts: script.caller_transcripts.iter().cloned().collect(),
            script,
            session,
            session_updates: 0,
            audio_produced: false,
            conversation_id: new_id("conv"),
            items: Vec::new(),
            assistant: HashMap::new(),
            resp: None,
            responses: 0,
            function_called: false,
            vad: Vad {
                buf: Vec::new(),
                odd: None,
                windows: 0,
                phase: VadPhase::Quiet,
                item_id: String::new(),
                onset_ms: 0,
                loud_ms: 0,
                quiet_ms: 0,
            },
            uncommitted_bytes: 0,
            appended_total: 0,
            out: Vec::new(),
            close: None,
            drop_at: None,
            expire_at,
            fault,
        }
    }

    async fn run(mut self, mut ws: WebSocket, kill: CancellationToken) {
        let cancel = self.inner.cancel.clone();
        let session = self.session.clone();
        self.emit(json!({"type": "session.created", "session": session}));
        let conv = json!({"id": self.conversation_id, "object": "realtime.conversation"});
        self.emit(json!({"type": "conversation.created", "conversation": conv}));
        if !self.flush(&mut ws).await {
            return;
        }
        loop {
            let tick = self.resp.as_ref().map(|r| tokio::time::Instant::from_std(r.next_at));
            let drop_at = self.drop_at.map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    let frame = CloseFrame { code: 1001, reason: "fake realtime shutting down".into() };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    drain(&mut ws).await;
                    return;
                }
                _ = kill.cancelled() => return, // abrupt: the socket is dropped
                _ = tokio::time::sleep_until(drop_at.unwrap_or_else(far_future)), if drop_at.is_some() => return,
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(self.expire_at)) => {
                    let msg = "Your session hit the maximum duration of 60 minutes.";
                    self.emit(json!({"type": "error", "error": {"type": "invalid_request_error",
                        "code": "session_expired", "message": msg, "param": null, "event_id": null}}));
                    self.close = Some((1001, msg.to_string()));
                }
                _ = tokio::time::sleep_until(tick.unwrap_or_else(far_future)), if tick.is_some() => self.tick(),
                msg = ws.recv() => match msg {
                    None | Some(Err(_)) => return,
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str()),
                    Some(Ok(Message::Binary(b))) => {
                        self.violation(format!("binary frame of {} bytes (every message must be a JSON text frame)", b.len()));
                        self.error("invalid_request_error", "invalid_json", "Binary frames are not supported.", None, None);
                    }
                    Some(Ok(Message::Close(_))) => {
                        // The peer closes: axum answers the close; read until the socket ends.
                        drain(&mut ws).await;
                        return;
                    }
                    Some(Ok(_)) => {} // ping/pong
                },
            }
            if !self.flush(&mut ws).await {
                return;
            }
            if let Some((code, reason)) = self.close.take() {
                let _ = ws.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                drain(&mut ws).await;
                return;
            }
        }
    }

    async fn flush(&mut self, ws: &mut WebSocket) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let events = std::mem::take(&mut self.out);
        let mut ok = true;
        let mut sent = Vec::with_capacity(events.len());
        for ev in events {
            // Bounded: a client that stops reading must not pin this task forever.
            let send = tokio::time::timeout(Duration::from_secs(5), ws.send(Message::text(ev.to_string())));
            if !matches!(send.await, Ok(Ok(()))) {
                ok = false;
                break;
            }
            sent.push(RecordedEvent { conn: self.idx, at: Instant::now(), event: ev });
        }
        let mut log = lock(&self.inner.log);
        for ev in sent {
            let kind = ev.kind().to_string();
            if kind == "response.output_audio.delta"
                && let Some(item) = ev.event.get("item_id").and_then(Value::as_str)
                && !log.first_delta.contains_key(item)
            {
                log.first_delta.insert(item.to_string(), ev.at);
            }
            let keep = self.script.record_audio || kind != "response.output_audio.delta";
            *log.sent_counts.entry(kind).or_default() += 1;
            if keep {
                log.sent.push(ev);
            }
        }
        drop(log);
        self.inner.notify.notify_waiters();
        ok
    }

    fn emit(&mut self, mut ev: Value) {
        if let Some(obj) = ev.as_object_mut() {
            obj.insert("event_id".into(), Value::String(new_id("event")));
        }
        self.out.push(ev);
    }

    fn violation(&self, msg: String) {
        self.inner.violation(format!("conn {}: {msg}", self.idx));
    }

    fn error(&mut self, kind: &str, code: &str, message: &str, param: Option<&str>, client_event_id: Option<&Value>) {
        let ev = json!({"type": "error", "error": {
            "type": kind, "code": code, "message": message, "param": param,
            "event_id": client_event_id.cloned().unwrap_or(Value::Null)}});
        self.emit(ev);
    }

    fn reject(&mut self, code: &str, message: String, param: Option<&str>, event_id: Option<&Value>) {
        self.violation(format!("{code}: {message}"));
        self.error("invalid_request_error", code, &message, param, event_id);
    }

    // --- session -----------------------------------------------------------------------

    fn turn_detection(&self) -> Option<&Map<String, Value>> {
        self.session.pointer("/audio/input/turn_detection").and_then(Value::as_object)
    }

    fn td_flag(&self, name: &str) -> bool {
        self.turn_detection().and_then(|td| td.get(name)).and_then(Value::as_bool).unwrap_or(true)
    }

    fn format_type(&self, dir: &str) -> String {
        self.session
            .pointer(&format!("/audio/{dir}/format/type"))
            .and_then(Value::as_str)
            .unwrap_or("audio/pcm")
            .to_string()
    }

    fn bytes_per_ms(format_type: &str) -> usize {
        if format_type == "audio/pcm" { 48 } else { 8 }
    }

    fn on_text(&mut self, text: &str) {
        let now = Instant::now();
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let snippet: String = text.chars().take(80).collect();
                self.reject("invalid_json", format!("not JSON ({e}): {snippet:?}"), None, None);
                return;
            }
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("").to_string();
        let event_id = v.get("event_id").cloned();
        let eid = event_id.as_ref();
        if !v.is_object() {
            self.reject("invalid_json", "client event is not a JSON object".into(), None, None);
        } else {
            match kind.as_str() {
                "session.update" => self.on_session_update(&v, eid),
                "input_audio_buffer.append" => self.on_append(&v, eid),
                "input_audio_buffer.commit" => self.on_commit(eid),
                "input_audio_buffer.clear" => {
                    self.uncommitted_bytes = 0;
                    self.vad.phase = VadPhase::Quiet;
                    self.emit(json!({"type": "input_audio_buffer.cleared"}));
                }
                "conversation.item.create" => self.on_item_create(&v, eid),
                "conversation.item.truncate" => self.on_truncate(&v, eid, now),
                "conversation.item.delete" | "conversation.item.retrieve" => self.on_item_lookup(&kind, &v, eid),
                "response.create" => self.on_response_create(&v, eid),
                "response.cancel" => {
                    if self.resp.is_some() {
                        self.finish_response("cancelled", Some("client_cancelled"));
                    } else {
                        // Not a violation: a response may finish just before the cancel lands.
                        self.error(
                            "invalid_request_error",
                            "response_cancel_not_active",
                            "Cancellation failed: no active response found",
                            None,
                            eid,
                        );
                    }
                }
                "output_audio_buffer.clear" => self.reject(
                    "invalid_value",
                    "output_audio_buffer.clear is WebRTC/SIP only; on a WebSocket use Twilio clear + conversation.item.truncate".into(),
                    Some("type"),
                    eid,
                ),
                "" => self.reject("missing_required_parameter", "client event without `type`".into(), Some("type"), eid),
                other => self.reject("invalid_value", format!("unknown client event type {other:?}"), Some("type"), eid),
            }
        }
        let mut log = lock(&self.inner.log);
        *log.counts.entry(kind.clone()).or_default() += 1;
        if kind != "input_audio_buffer.append" || self.script.record_audio {
            log.events.push(RecordedEvent { conn: self.idx, at: now, event: v });
        }
        drop(log);
        self.inner.notify.notify_waiters();
    }

    fn validate_format(&self, f: &Value, param: &str, errors: &mut Vec<SessionError>, warnings: &mut Vec<String>) {
        let Some(obj) = f.as_object() else {
            errors.push(session_error(
                "invalid_type",
                param,
                format!("{param} must be a format object like {{\"type\":\"audio/pcmu\"}}, got {f}"),
            ));
            return;
        };
        match obj.get("type").and_then(Value::as_str) {
            Some("audio/pcm") => {
                if let Some(rate) = obj.get("rate")
                    && rate.as_u64() != Some(24_000)
                {
                    errors.push(session_error(
                        "invalid_value",
                        param,
                        format!("{param}.rate must be 24000, got {rate}"),
                    ));
                }
            }
            Some("audio/pcmu") | Some("audio/pcma") => {
                if obj.contains_key("rate") {
                    warnings.push(format!("{param} is G.711 but carries `rate` (not part of the schema)"));
                }
            }
            other => {
                errors.push(session_error("invalid_value", param, format!("{param}.type {other:?} is not a GA format")))
            }
        }
        for k in obj.keys() {
            if k != "type" && k != "rate" {
                errors.push(session_error("unknown_parameter", param, format!("unknown field {param}.{k}")));
            }
        }
    }

    fn validate_session(&self, s: &Value, first: bool) -> (Vec<SessionError>, Vec<String>) {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let Some(obj) = s.as_object() else {
            errors.push(session_error("invalid_type", "session", "`session` must be an object"));
            return (errors, warnings);
        };
        match obj.get("type") {
            None => errors.push(session_error(
                "missing_required_parameter",
                "session.type",
                "session.type is required in GA",
            )),
            Some(t) if t.as_str() == Some("realtime") => {}
            Some(t) => errors.push(session_error(
                "invalid_value",
                "session.type",
                format!("session.type must be \"realtime\", got {t}"),
            )),
        }
        for k in obj.keys() {
            if BETA_SESSION_KEYS.contains(&k.as_str()) {
                errors.push(session_error(
                    "unknown_parameter",
                    &format!("session.{k}"),
                    format!("session.{k} is a beta-dialect field (see the C.8 mapping)"),
                ));
            } else if k == "model" {
                warnings.push("session.update carries `model`: the model is chosen by the URL and immutable".into());
            } else if !GA_SESSION_KEYS.contains(&k.as_str()) {
                errors.push(session_error(
                    "unknown_parameter",
                    &format!("session.{k}"),
                    format!("unknown field session.{k}"),
                ));
            }
        }
        if let Some(i) = obj.get("instructions")
            && !i.is_string()
        {
            errors.push(session_error("invalid_type", "session.instructions", "instructions must be a string"));
        }
        if let Some(m) = obj.get("output_modalities")
            && *m != json!(["audio"])
            && *m != json!(["text"])
        {
            errors.push(session_error(
                "invalid_value",
                "session.output_modalities",
                format!("output_modalities must be [\"audio\"] or [\"text\"], got {m}"),
            ));
        }
        if let Some(m) = obj.get("max_output_tokens") {
            let ok = m.as_str() == Some("inf") || m.as_u64().is_some_and(|n| (1..=4096).contains(&n));
            if !ok {
                errors.push(session_error(
                    "invalid_value",
                    "session.max_output_tokens",
                    format!("bad max_output_tokens {m}"),
                ));
            }
        }
        if let Some(tools) = obj.get("tools") {
            match tools.as_array() {
                None => errors.push(session_error("invalid_type", "session.tools", "tools must be an array")),
                Some(tools) => {
                    for (i, t) in tools.iter().enumerate() {
                        let ty = t.get("type").and_then(Value::as_str);
                        if t.get("function").is_some() {
                            errors.push(session_error(
                                "unknown_parameter",
                                &format!("session.tools[{i}].function"),
                                "tools are flat in Realtime ({type,name,description,parameters}), not nested under `function`",
                            ));
                        } else if ty == Some("function") && !t.get("name").is_some_and(Value::is_string) {
                            errors.push(session_error(
                                "missing_required_parameter",
                                &format!("session.tools[{i}].name"),
                                "tool without name",
                            ));
                        } else if ty != Some("function") && ty != Some("mcp") {
                            errors.push(session_error(
                                "invalid_value",
                                &format!("session.tools[{i}].type"),
                                "tool type must be function or mcp",
                            ));
                        }
                    }
                }
            }
        }
        let audio = obj.get("audio");
        if let Some(audio) = audio {
            match audio.as_object() {
                None => errors.push(session_error("invalid_type", "session.audio", "audio must be an object")),
                Some(a) => {
                    for k in a.keys() {
                        if k != "input" && k != "output" {
                            errors.push(session_error(
                                "unknown_parameter",
                                &format!("session.audio.{k}"),
                                format!("unknown field session.audio.{k}"),
                            ));
                        }
                    }
                    if let Some(input) = a.get("input") {
                        self.validate_input(input, &mut errors, &mut warnings);
                    }
                    if let Some(output) = a.get("output") {
                        self.validate_output(output, &mut errors, &mut warnings);
                    }
                }
            }
        }
        if first && self.script.strict_session {
            let has = |ptr: &str| s.pointer(ptr).is_some();
            for (ptr, what) in [
                ("/instructions", "instructions"),
                ("/audio/input/format", "audio.input.format"),
                ("/audio/output/format", "audio.output.format"),
                ("/audio/output/voice", "audio.output.voice"),
                ("/audio/input/turn_detection", "audio.input.turn_detection"),
                ("/audio/input/transcription", "audio.input.transcription"),
            ] {
                if !has(ptr) {
                    warnings.push(format!("first session.update does not set {what}"));
                }
            }
        }
        (errors, warnings)
    }

    fn validate_input(&self, input: &Value, errors: &mut Vec<SessionError>, warnings: &mut Vec<String>) {
        let Some(i) = input.as_object() else {
            errors.push(session_error("invalid_type", "session.audio.input", "audio.input must be an object"));
            return;
        };
        for (k, v) in i {
            match k.as_str() {
                "format" => self.validate_format(v, "session.audio.input.format", errors, warnings),
                "turn_detection" => validate_turn_detection(v, errors),
                "transcription" => {
                    if !v.is_null() && !v.get("model").is_some_and(Value::is_string) {
                        errors.push(session_error(
                            "invalid_value",
                            "session.audio.input.transcription",
                            format!("transcription must be null or {{\"model\":…}}, got {v}"),
                        ));
                    }
                    if let Some(t) = v.as_object() {
                        for key in t.keys() {
                            if !["model", "language", "prompt", "delay", "keywords", "languages"]
                                .contains(&key.as_str())
                            {
                                errors.push(session_error(
                                    "unknown_parameter",
                                    "session.audio.input.transcription",
                                    format!("unknown field transcription.{key}"),
                                ));
                            }
                        }
                    }
                }
                "noise_reduction" => {
                    let ok = v.is_null()
                        || matches!(v.get("type").and_then(Value::as_str), Some("near_field") | Some("far_field"));
                    if !ok {
                        errors.push(session_error(
                            "invalid_value",
                            "session.audio.input.noise_reduction",
                            format!("bad noise_reduction {v}"),
                        ));
                    }
                }
                other => errors.push(session_error(
                    "unknown_parameter",
                    &format!("session.audio.input.{other}"),
                    format!("unknown field session.audio.input.{other}"),
                )),
            }
        }
    }

    fn validate_output(&self, output: &Value, errors: &mut Vec<SessionError>, warnings: &mut Vec<String>) {
        let Some(o) = output.as_object() else {
            errors.push(session_error("invalid_type", "session.audio.output", "audio.output must be an object"));
            return;
        };
        for (k, v) in o {
            match k.as_str() {
                "format" => self.validate_format(v, "session.audio.output.format", errors, warnings),
                "voice" => {
                    let ok = v.as_str().is_some_and(|s| GA_VOICES.contains(&s))
                        || v.get("id").and_then(Value::as_str).is_some_and(|id| id.starts_with("voice_"));
                    if !ok {
                        errors.push(session_error(
                            "invalid_value",
                            "session.audio.output.voice",
                            format!("unknown voice {v}"),
                        ));
                    } else if self.audio_produced && self.session.pointer("/audio/output/voice") != Some(v) {
                        errors.push(session_error(
                            "invalid_value",
                            "session.audio.output.voice",
                            "Cannot update a conversation's voice if assistant audio is present.",
                        ));
                    }
                }
                "speed" => {
                    if !v.as_f64().is_some_and(|s| (0.25..=1.5).contains(&s)) {
                        errors.push(session_error(
                            "invalid_value",
                            "session.audio.output.speed",
                            format!("speed out of range: {v}"),
                        ));
                    }
                }
                other => errors.push(session_error(
                    "unknown_parameter",
                    &format!("session.audio.output.{other}"),
                    format!("unknown field session.audio.output.{other}"),
                )),
            }
        }
    }

    fn on_session_update(&mut self, v: &Value, eid: Option<&Value>) {
        let Some(session) = v.get("session") else {
            self.reject("missing_required_parameter", "session.update without `session`".into(), Some("session"), eid);
            return;
        };
        let (errors, warnings) = self.validate_session(session, self.session_updates == 0);
        for w in warnings {
            self.violation(w);
        }
        if let Some(first) = errors.first() {
            for e in &errors {
                self.violation(format!("session.update rejected: {} ({})", e.message, e.code));
            }
            let (code, message, param) = (first.code, first.message.clone(), first.param.clone());
            self.error("invalid_request_error", code, &message, param.as_deref(), eid);
            return;
        }
        if self.script.reject_session_update {
            self.error(
                "invalid_request_error",
                "invalid_value",
                "session.update rejected by the test script",
                None,
                eid,
            );
            return;
        }
        // Merge: top-level fields replace; `audio.input` / `audio.output` merge field by field.
        if let (Some(update), Some(effective)) = (session.as_object(), self.session.as_object_mut()) {
            for (k, val) in update {
                if k == "audio" {
                    for dir in ["input", "output"] {
                        if let Some(fields) = val.get(dir).and_then(Value::as_object) {
                            let target = effective
                                .entry("audio")
                                .or_insert_with(|| json!({}))
                                .as_object_mut()
                                .map(|a| a.entry(dir).or_insert_with(|| json!({})));
                            if let Some(Value::Object(target)) = target {
                                for (fk, fv) in fields {
                                    target.insert(fk.clone(), fv.clone());
                                }
                            }
                        }
                    }
                } else if k != "model" {
                    effective.insert(k.clone(), val.clone());
                }
            }
        }
        self.session_updates += 1;
        self.vad.buf.clear();
        self.vad.odd = None;
        let session = self.session.clone();
        self.emit(json!({"type": "session.updated", "session": session}));
        if self.session_updates == 1
            && self.fault
            && let Some(d) = self.script.drop_after
        {
            self.drop_at = Some(after(d));
        }
    }

    // --- input audio -------------------------------------------------------------------

    fn on_append(&mut self, v: &Value, eid: Option<&Value>) {
        let Some(audio) = v.get("audio").and_then(Value::as_str) else {
            self.reject(
                "missing_required_parameter",
                "input_audio_buffer.append without string `audio`".into(),
                Some("audio"),
                eid,
            );
            return;
        };
        let bytes = match B64.decode(audio) {
            Ok(b) => b,
            Err(e) => {
                self.reject(
                    "invalid_value",
                    format!("input_audio_buffer.append: bad base64 ({e})"),
                    Some("audio"),
                    eid,
                );
                return;
            }
        };
        let fmt = self.format_type("input");
        if fmt == "audio/pcm" && bytes.len() % 2 == 1 {
            self.violation(format!("append of {} bytes is not whole PCM16 samples", bytes.len()));
        }
        let per_ms = Self::bytes_per_ms(&fmt) as u64;
        self.uncommitted_bytes += bytes.len();
        self.appended_total += bytes.len() as u64;
        {
            let mut log = lock(&self.inner.log);
            let idx = self.idx;
            if let Some(n) = log.appended_bytes.get_mut(idx) {
                *n += bytes.len() as u64;
            }
            if let Some(ms) = log.appended_ms.get_mut(idx) {
                *ms = self.appended_total / per_ms;
            }
            if self.script.record_audio
                && let Some(buf) = log.appended.get_mut(idx)
            {
                buf.extend_from_slice(&bytes);
            }
        }
        if self.script.server_vad && self.turn_detection().is_some() {
            self.vad_feed(&bytes, &fmt);
        }
    }

    fn vad_feed(&mut self, bytes: &[u8], fmt: &str) {
        let window = match fmt {
            "audio/pcmu" => {
                self.vad.buf.extend(bytes.iter().map(|&b| ulaw_decode(b)));
                160
            }
            "audio/pcma" => {
                self.vad.buf.extend(bytes.iter().map(|&b| alaw_decode(b)));
                160
            }
            _ => {
                let mut rest = bytes;
                if let Some(lo) = self.vad.odd.take()
                    && let Some((&hi, tail)) = rest.split_first()
                {
                    self.vad.buf.push(i16::from_le_bytes([lo, hi]));
                    rest = tail;
                }
                let mut chunks = rest.chunks_exact(2);
                self.vad.buf.extend(chunks.by_ref().map(|c| i16::from_le_bytes([c[0], c[1]])));
                self.vad.odd = chunks.remainder().first().copied();
                480
            }
        };
        let mut start = 0;
        while self.vad.buf.len() - start >= window {
            let w = &self.vad.buf[start..start + window];
            let rms = (w.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / window as f64).sqrt();
            start += window;
            self.vad_window(rms);
        }
        self.vad.buf.drain(..start);
    }

    fn vad_window(&mut self, rms: f64) {
        self.vad.windows += 1;
        let end_ms = self.vad.windows * 20;
        let loud = rms >= self.script.vad_threshold;
        match self.vad.phase {
            VadPhase::Quiet if loud => {
                self.vad.phase = VadPhase::Onset;
                self.vad.onset_ms = end_ms - 20;
                self.vad.loud_ms = 20;
            }
            VadPhase::Quiet => {}
            VadPhase::Onset if loud => self.vad.loud_ms += 20,
            VadPhase::Onset => self.vad.phase = VadPhase::Quiet,
            VadPhase::Speaking if loud => self.vad.quiet_ms = 0,
            VadPhase::Speaking => {
                self.vad.quiet_ms += 20;
                if self.vad.quiet_ms >= self.script.silence_ms {
                    self.end_turn(end_ms);
                }
            }
        }
        if self.vad.phase == VadPhase::Onset && self.vad.loud_ms >= self.script.vad_min_speech_ms {
            self.vad.phase = VadPhase::Speaking;
            self.vad.quiet_ms = 0;
            self.vad.item_id = new_id("item");
            let padding =
                self.turn_detection().and_then(|td| td.get("prefix_padding_ms")).and_then(Value::as_u64).unwrap_or(0);
            let item_id = self.vad.item_id.clone();
            let start = self.vad.onset_ms.saturating_sub(padding);
            self.emit(
                json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": start, "item_id": item_id}),
            );
            if self.resp.is_some() && self.script.interrupt_response && self.td_flag("interrupt_response") {
                self.finish_response("cancelled", Some("turn_detected"));
            }
        }
    }

    fn end_turn(&mut self, end_ms: u64) {
        self.vad.phase = VadPhase::Quiet;
        let item_id = std::mem::take(&mut self.vad.item_id);
        self.emit(json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms, "item_id": item_id}));
        self.commit_user_item(item_id);
        if self.script.auto_respond && self.td_flag("create_response") && self.resp.is_none() {
            self.start_response(None);
        }
    }

    fn on_commit(&mut self, eid: Option<&Value>) {
        let per_ms = Self::bytes_per_ms(&self.format_type("input"));
        let ms = self.uncommitted_bytes / per_ms;
        if ms < 100 {
            let msg = format!(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, but buffer only has {ms}.00ms of audio."
            );
            self.error("invalid_request_error", "input_audio_buffer_commit_empty", &msg, None, eid);
            return;
        }
        let item_id =
            if self.vad.phase == VadPhase::Speaking { std::mem::take(&mut self.vad.item_id) } else { new_id("item") };
        self.vad.phase = VadPhase::Quiet;
        self.commit_user_item(item_id);
    }

    fn commit_user_item(&mut self, item_id: String) {
        let prev = self.items.last().cloned().map_or(Value::Null, Value::String);
        self.emit(json!({"type": "input_audio_buffer.committed", "previous_item_id": prev, "item_id": item_id}));
        let item = json!({"id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
            "role": "user", "content": [{"type": "input_audio", "transcript": null}]});
        self.emit(json!({"type": "conversation.item.added", "previous_item_id": prev, "item": item}));
        self.emit(json!({"type": "conversation.item.done", "previous_item_id": prev, "item": item}));
        self.items.push(item_id.clone());
        let audio_ms = self.uncommitted_bytes / Self::bytes_per_ms(&self.format_type("input"));
        self.uncommitted_bytes = 0;
        let transcription = self.session.pointer("/audio/input/transcription").is_some_and(|t| !t.is_null());
        if transcription {
            let transcript = self.transcripts.pop_front().unwrap_or_else(|| "(inaudible)".into());
            let audio_tokens = (audio_ms / 100).max(1);
            let text_tokens = transcript.split_whitespace().count() + 1;
            self.emit(json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                "content_index": 0, "transcript": transcript,
                "usage": {"type": "tokens", "total_tokens": audio_tokens + text_tokens, "input_tokens": audio_tokens,
                    "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens}, "output_tokens": text_tokens}}));
        }
    }

    // --- conversation items ------------------------------------------------------------

    fn on_item_create(&mut self, v: &Value, eid: Option<&Value>) {
        let Some(item) = v.get("item").and_then(Value::as_object) else {
            self.reject(
                "missing_required_parameter",
                "conversation.item.create without `item` object".into(),
                Some("item"),
                eid,
            );
            return;
        };
        let ty = item.get("type").and_then(Value::as_str).unwrap_or("");
        let problem = match ty {
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("");
                let parts = item.get("content").and_then(Value::as_array);
                match (role, parts) {
                    (_, None) => Some("message item without a `content` array".to_string()),
                    ("user" | "system" | "assistant", Some(parts)) => parts.iter().find_map(|p| {
                        let pt = p.get("type").and_then(Value::as_str).unwrap_or("");
                        let allowed: &[&str] = match role {
                            "user" => &["input_text", "input_audio", "input_image"],
                            "system" => &["input_text"],
                            _ => &["output_text"],
                        };
                        if !allowed.contains(&pt) {
                            Some(format!(
                                "content part type {pt:?} is not valid for a {role} message (GA: {allowed:?})"
                            ))
                        } else if pt.ends_with("_text") && !p.get("text").is_some_and(Value::is_string) {
                            Some(format!("{pt} part without a string `text`"))
                        } else {
                            None
                        }
                    }),
                    (role, _) => Some(format!("message role {role:?} is not user/system/assistant")),
                }
            }
            "function_call_output" => {
                if !item.get("call_id").is_some_and(Value::is_string) {
                    Some("function_call_output without string `call_id`".into())
                } else if !item.get("output").is_some_and(Value::is_string) {
                    Some("function_call_output.output must be a string".into())
                } else {
                    None
                }
            }
            "function_call" => (!item.get("call_id").is_some_and(Value::is_string)
                || !item.get("name").is_some_and(Value::is_string))
            .then(|| "function_call item without call_id/name".to_string()),
            other => Some(format!("unknown item type {other:?}")),
        };
        if let Some(p) = problem {
            self.reject("invalid_value", format!("conversation.item.create: {p}"), Some("item"), eid);
            return;
        }
        let prev = match v.get("previous_item_id") {
            None | Some(Value::Null) => self.items.last().cloned(),
            Some(Value::String(s)) if s == "root" => None,
            Some(Value::String(s)) if self.items.contains(s) => Some(s.clone()),
            Some(other) => {
                self.reject(
                    "item_not_found",
                    format!("previous_item_id {other} is not in the conversation"),
                    Some("previous_item_id"),
                    eid,
                );
                return;
            }
        };
        let id = match item.get("id").and_then(Value::as_str) {
            Some(id) if self.items.iter().any(|i| i == id) => {
                self.reject("invalid_value", format!("item id {id:?} already exists"), Some("item.id"), eid);
                return;
            }
            Some(id) => id.to_string(),
            None => new_id("item"),
        };
        let mut full = item.clone();
        full.insert("id".into(), json!(id));
        full.insert("object".into(), json!("realtime.item"));
        full.entry("status").or_insert(json!("completed"));
        let prev = prev.map_or(Value::Null, Value::String);
        match prev.as_str().and_then(|p| self.items.iter().position(|i| i == p)) {
            Some(pos) => self.items.insert(pos + 1, id),
            None if prev.is_null() && v.get("previous_item_id").and_then(Value::as_str) == Some("root") => {
                self.items.insert(0, id)
            }
            None => self.items.push(id),
        }
        self.emit(json!({"type": "conversation.item.added", "previous_item_id": prev, "item": full}));
        self.emit(json!({"type": "conversation.item.done", "previous_item_id": prev, "item": full}));
    }

    fn on_item_lookup(&mut self, kind: &str, v: &Value, eid: Option<&Value>) {
        let id = v.get("item_id").and_then(Value::as_str).unwrap_or("").to_string();
        let Some(pos) = self.items.iter().position(|i| *i == id) else {
            self.reject(
                "item_not_found",
                format!("{kind}: item_id {id:?} is not in the conversation"),
                Some("item_id"),
                eid,
            );
            return;
        };
        if kind == "conversation.item.delete" {
            self.items.remove(pos);
            self.emit(json!({"type": "conversation.item.deleted", "item_id": id}));
        } else {
            self.emit(json!({"type": "conversation.item.retrieved", "item": {"id": id, "object": "realtime.item"}}));
        }
    }

    fn on_truncate(&mut self, v: &Value, eid: Option<&Value>, now: Instant) {
        let item_id = v.get("item_id").and_then(Value::as_str).unwrap_or("").to_string();
        let audio_end_ms = v.get("audio_end_ms").and_then(Value::as_i64).unwrap_or(-1);
        let content_index = v.get("content_index").and_then(Value::as_u64);
        let item_audio_ms = self.assistant.get(&item_id).map_or(0, |a| (a.bytes_sent / a.bytes_per_ms) as u64);
        let problem = if !self.assistant.contains_key(&item_id) {
            Some(format!("truncate of {item_id:?}, which is not an assistant item of this connection"))
        } else if content_index != Some(0) {
            Some(format!("truncate content_index must be 0, got {:?}", v.get("content_index")))
        } else if audio_end_ms < 0 {
            Some(format!("truncate audio_end_ms must be a non-negative integer, got {:?}", v.get("audio_end_ms")))
        } else if audio_end_ms as u64 > item_audio_ms {
            Some(format!(
                "truncate audio_end_ms {audio_end_ms} exceeds the {item_audio_ms} ms of audio sent for {item_id}"
            ))
        } else {
            None
        };
        let accepted = problem.is_none();
        match problem {
            Some(p) => self.reject("invalid_value", p, Some("audio_end_ms"), eid),
            None => self.emit(json!({"type": "conversation.item.truncated", "item_id": item_id, "content_index": 0, "audio_end_ms": audio_end_ms})),
        }
        lock(&self.inner.log).truncates.push(TruncateRecord {
            conn: self.idx,
            at: now,
            item_id,
            audio_end_ms,
            item_audio_ms,
            accepted,
        });
    }

    // --- responses ---------------------------------------------------------------------

    fn on_response_create(&mut self, v: &Value, eid: Option<&Value>) {
        let overrides = v.get("response");
        if let Some(r) = overrides {
            let Some(obj) = r.as_object() else {
                self.reject(
                    "invalid_type",
                    "response.create: `response` must be an object".into(),
                    Some("response"),
                    eid,
                );
                return;
            };
            if let Some(k) = obj.keys().find(|k| !GA_RESPONSE_KEYS.contains(&k.as_str())) {
                self.reject(
                    "unknown_parameter",
                    format!("response.create: unknown (or beta-only) field response.{k}"),
                    Some("response"),
                    eid,
                );
                return;
            }
        }
        let out_of_band = overrides.and_then(|r| r.get("conversation")).and_then(Value::as_str) == Some("none");
        let text = overrides.and_then(|r| r.get("output_modalities")).or_else(|| self.session.get("output_modalities"))
            == Some(&json!(["text"]));
        if text && out_of_band {
            self.text_response(overrides, false);
            return;
        }
        if self.resp.is_some() {
            let msg = "Conversation already has an active response in progress.";
            self.violation(format!("response.create while a response is active ({msg})"));
            self.error("invalid_request_error", "conversation_already_has_active_response", msg, None, eid);
            return;
        }
        if text {
            self.text_response(overrides, true);
        } else {
            self.start_response(overrides);
        }
    }

    /// `shape` carries the response's `output_modalities`, `audio` and `metadata`.
    fn response_object(
        &self,
        id: &str,
        status: &str,
        details: Value,
        output: Value,
        usage: Value,
        shape: &Value,
    ) -> Value {
        let mut r = json!({"object": "realtime.response", "id": id, "status": status, "status_details": details,
            "output": output, "conversation_id": self.conversation_id, "max_output_tokens": "inf", "usage": usage});
        if let (Some(r), Some(shape)) = (r.as_object_mut(), shape.as_object()) {
            r.extend(shape.clone());
        }
        r
    }

    fn usage(&self, out_audio_ms: u64, out_words: usize) -> Value {
        let instructions = self.session.get("instructions").and_then(Value::as_str).map_or(0, str::len);
        let in_text = (instructions / 4 + 8) as u64;
        let in_audio = self.appended_total / Self::bytes_per_ms(&self.format_type("input")) as u64 / 100;
        let out_text = (out_words * 4 / 3 + 1) as u64;
        let out_audio = out_audio_ms / 50;
        let (input, output) = (in_text + in_audio, out_text + out_audio);
        json!({"total_tokens": input + output, "input_tokens": input, "output_tokens": output,
            "input_token_details": {"text_tokens": in_text, "audio_tokens": in_audio, "image_tokens": 0, "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}},
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio}})
    }

    fn text_response(&mut self, overrides: Option<&Value>, in_conversation: bool) {
        let id = new_id("resp");
        let item_id = new_id("item");
        let text = self.script.reply_transcript.clone();
        let metadata = overrides.and_then(|r| r.get("metadata")).cloned().unwrap_or(Value::Null);
        let shape = json!({"output_modalities": ["text"], "metadata": metadata, "audio": null});
        let prev = self.items.last().cloned().map_or(Value::Null, Value::String);
        let created = self.response_object(&id, "in_progress", Value::Null, json!([]), Value::Null, &shape);
        self.emit(json!({"type": "response.created", "response": created}));
        let item = json!({"id": item_id, "object": "realtime.item", "type": "message", "status": "in_progress", "role": "assistant", "content": []});
        self.emit(json!({"type": "response.output_item.added", "response_id": id, "output_index": 0, "item": item}));
        if in_conversation {
            self.emit(json!({"type": "conversation.item.added", "previous_item_id": prev, "item": item}));
        }
        let ids = json!({"response_id": id, "item_id": item_id, "output_index": 0, "content_index": 0});
        let with = |ty: &str, extra: Value| {
            let mut ev = ids.clone();
            if let (Some(o), Some(e)) = (ev.as_object_mut(), extra.as_object()) {
                o.insert("type".into(), json!(ty));
                o.extend(e.clone());
            }
            ev
        };
        self.emit(with("response.content_part.added", json!({"part": {"type": "text", "text": ""}})));
        self.emit(with("response.output_text.delta", json!({"delta": text})));
        self.emit(with("response.output_text.done", json!({"text": text})));
        self.emit(with("response.content_part.done", json!({"part": {"type": "text", "text": text}})));
        let done_item = json!({"id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text}]});
        self.emit(
            json!({"type": "response.output_item.done", "response_id": id, "output_index": 0, "item": done_item}),
        );
        if in_conversation {
            self.emit(json!({"type": "conversation.item.done", "previous_item_id": prev, "item": done_item}));
            self.items.push(item_id);
        }
        let usage = self.usage(0, text.split_whitespace().count());
        let done = self.response_object(&id, "completed", Value::Null, json!([done_item]), usage, &shape);
        self.emit(json!({"type": "response.done", "response": done}));
    }

    fn start_response(&mut self, overrides: Option<&Value>) {
        let first = self.responses == 0;
        self.responses += 1;
        let (audio, transcript) = if first {
            (self.script.greeting_audio.clone(), self.script.greeting_transcript.clone())
        } else {
            (self.script.reply_audio.clone(), self.script.reply_transcript.clone())
        };
        let format = overrides
            .and_then(|r| r.pointer("/audio/output/format"))
            .or_else(|| self.session.pointer("/audio/output/format"))
            .cloned()
            .unwrap_or_else(|| json!({"type": "audio/pcm", "rate": 24000}));
        let voice = overrides
            .and_then(|r| r.pointer("/audio/output/voice"))
            .or_else(|| self.session.pointer("/audio/output/voice"))
            .cloned()
            .unwrap_or(json!("alloy"));
        let bytes_per_ms = Self::bytes_per_ms(format.get("type").and_then(Value::as_str).unwrap_or("audio/pcm"));
        let mut chunk = self.script.delta_bytes.max(1);
        if bytes_per_ms == 48 {
            chunk = (chunk & !1).max(2);
        }
        let metadata = overrides.and_then(|r| r.get("metadata")).cloned().unwrap_or(Value::Null);
        let id = new_id("resp");
        let item_id = new_id("item");
        let prev = self.items.last().cloned().map_or(Value::Null, Value::String);
        let shape = json!({"output_modalities": ["audio"], "metadata": metadata,
            "audio": {"output": {"format": format, "voice": voice}}});
        let created = self.response_object(&id, "in_progress", Value::Null, json!([]), Value::Null, &shape);
        self.emit(json!({"type": "response.created", "response": created}));
        let item = json!({"id": item_id, "object": "realtime.item", "type": "message", "status": "in_progress", "role": "assistant", "content": []});
        self.emit(json!({"type": "response.output_item.added", "response_id": id, "output_index": 0, "item": item}));
        self.emit(json!({"type": "conversation.item.added", "previous_item_id": prev, "item": item}));
        self.emit(
            json!({"type": "response.content_part.added", "response_id": id, "item_id": item_id, "output_index": 0,
            "content_index": 0, "part": {"type": "audio", "transcript": ""}}),
        );
        self.items.push(item_id.clone());
        self.assistant.insert(item_id.clone(), AssistantAudio { bytes_sent: 0, bytes_per_ms });
        let mut delay = self.script.response_latency;
        if first {
            delay += self.script.greeting_delay;
        }
        let function_call = if first || self.function_called {
            None
        } else {
            self.script.reply_function_call.clone().map(|(name, args)| (new_id("call"), name, args))
        };
        self.function_called |= function_call.is_some();
        self.resp = Some(Active {
            function_call,
            id,
            item_id,
            previous_item_id: prev,
            audio,
            sent: 0,
            chunk,
            words: transcript.split_whitespace().map(str::to_string).collect(),
            words_sent: 0,
            next_at: after(delay),
            interval: self.script.delta_interval.min(MAX_WAIT),
            bytes_per_ms,
            format,
            voice,
            metadata,
        });
    }

    /// Sends the next audio delta (and the matching transcript words) of the active response,
    /// or finishes it.
    fn tick(&mut self) {
        let Some(r) = self.resp.as_mut() else { return };
        let mut out = Vec::new();
        if r.sent < r.audio.len() {
            let end = (r.sent + r.chunk).min(r.audio.len());
            let delta = B64.encode(&r.audio[r.sent..end]);
            out.push(json!({"type": "response.output_audio.delta", "response_id": r.id, "item_id": r.item_id,
                "output_index": 0, "content_index": 0, "delta": delta}));
            r.sent = end;
            let target = (r.sent * r.words.len()).div_ceil(r.audio.len());
            if target > r.words_sent {
                let mut text = r.words[r.words_sent..target].join(" ");
                if r.words_sent > 0 {
                    text.insert(0, ' ');
                }
                r.words_sent = target;
                out.push(
                    json!({"type": "response.output_audio_transcript.delta", "response_id": r.id, "item_id": r.item_id,
                    "output_index": 0, "content_index": 0, "delta": text, "obfuscation": "fAkEoBf"}),
                );
            }
            r.next_at += r.interval;
            if let Some(a) = self.assistant.get_mut(&r.item_id) {
                a.bytes_sent = r.sent;
            }
            self.audio_produced = true;
        }
        let finished = r.sent >= r.audio.len();
        for ev in out {
            self.emit(ev);
        }
        if finished {
            self.finish_response("completed", None);
        }
    }

    fn finish_response(&mut self, status: &str, reason: Option<&str>) {
        let Some(mut r) = self.resp.take() else { return };
        if status == "completed" && r.words_sent < r.words.len() {
            let mut text = r.words[r.words_sent..].join(" ");
            if r.words_sent > 0 {
                text.insert(0, ' ');
            }
            r.words_sent = r.words.len();
            self.emit(
                json!({"type": "response.output_audio_transcript.delta", "response_id": r.id, "item_id": r.item_id,
                "output_index": 0, "content_index": 0, "delta": text}),
            );
        }
        let transcript = r.words[..r.words_sent].join(" ");
        let ids = json!({"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0});
        let with = |ty: &str, extra: Value| {
            let mut ev = ids.clone();
            if let Some(o) = ev.as_object_mut() {
                o.insert("type".into(), json!(ty));
                if let Some(e) = extra.as_object() {
                    o.extend(e.clone());
                }
            }
            ev
        };
        self.emit(with("response.output_audio.done", json!({})));
        self.emit(with("response.output_audio_transcript.done", json!({"transcript": transcript})));
        self.emit(with("response.content_part.done", json!({"part": {"type": "audio", "transcript": transcript}})));
        let item_status = if status == "completed" { "completed" } else { "incomplete" };
        let item = json!({"id": r.item_id, "object": "realtime.item", "type": "message", "status": item_status, "role": "assistant",
            "content": [{"type": "output_audio", "transcript": transcript}]});
        self.emit(json!({"type": "response.output_item.done", "response_id": r.id, "output_index": 0, "item": item}));
        self.emit(json!({"type": "conversation.item.done", "previous_item_id": r.previous_item_id, "item": item}));
        let details = match reason {
            Some(reason) => json!({"type": status, "reason": reason}),
            None => Value::Null,
        };
        let mut output = vec![item];
        if status == "completed"
            && let Some((call_id, name, arguments)) = r.function_call.take()
        {
            let fc_id = new_id("item");
            let added = json!({"id": fc_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "name": name, "call_id": call_id, "arguments": ""});
            self.emit(
                json!({"type": "response.output_item.added", "response_id": r.id, "output_index": 1, "item": added}),
            );
            self.emit(json!({"type": "response.function_call_arguments.done", "response_id": r.id, "item_id": fc_id,
                "output_index": 1, "call_id": call_id, "name": name, "arguments": arguments}));
            let fc = json!({"id": fc_id, "object": "realtime.item", "type": "function_call", "status": "completed",
                "name": name, "call_id": call_id, "arguments": arguments});
            self.emit(json!({"type": "response.output_item.done", "response_id": r.id, "output_index": 1, "item": fc}));
            output.push(fc);
        }
        let usage = self.usage((r.sent / r.bytes_per_ms) as u64, r.words_sent);
        let shape = json!({"output_modalities": ["audio"], "metadata": r.metadata,
            "audio": {"output": {"format": r.format, "voice": r.voice}}});
        let done = self.response_object(&r.id, status, details, json!(output), usage, &shape);
        self.emit(json!({"type": "response.done", "response": done}));
        self.emit(json!({"type": "rate_limits.updated", "rate_limits": [{"name": "tokens", "limit": 40000, "remaining": 38490, "reset_seconds": 2.265}]}));
    }
}

fn validate_turn_detection(v: &Value, errors: &mut Vec<SessionError>) {
    const P: &str = "session.audio.input.turn_detection";
    if v.is_null() {
        return;
    }
    let Some(td) = v.as_object() else {
        errors.push(session_error("invalid_type", P, format!("turn_detection must be null or an object, got {v}")));
        return;
    };
    let allowed: &[&str] = match td.get("type").and_then(Value::as_str) {
        Some("server_vad") => &[
            "type",
            "threshold",
            "prefix_padding_ms",
            "silence_duration_ms",
            "idle_timeout_ms",
            "create_response",
            "interrupt_response",
        ],
        Some("semantic_vad") => &["type", "eagerness", "create_response", "interrupt_response"],
        other => {
            errors.push(session_error(
                "invalid_value",
                P,
                format!("turn_detection.type {other:?} is not server_vad/semantic_vad"),
            ));
            return;
        }
    };
    for (k, val) in td {
        if !allowed.contains(&k.as_str()) {
            errors.push(session_error(
                "unknown_parameter",
                P,
                format!("turn_detection.{k} is not valid for this type"),
            ));
            continue;
        }
        let ok = match k.as_str() {
            "threshold" => val.as_f64().is_some_and(|t| (0.0..=1.0).contains(&t)),
            "prefix_padding_ms" | "silence_duration_ms" => val.is_u64(),
            "idle_timeout_ms" => val.is_null() || val.is_u64(),
            "create_response" | "interrupt_response" => val.is_boolean(),
            "eagerness" => matches!(val.as_str(), Some("low" | "medium" | "high" | "auto")),
            _ => true,
        };
        if !ok {
            errors.push(session_error("invalid_value", P, format!("turn_detection.{k} has a bad value {val}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{ulaw_silence, ulaw_tone};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

    type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    async fn connect(fake: &FakeRealtime, key: Option<&str>) -> Client {
        let mut req = fake.realtime_url("gpt-realtime").into_client_request().unwrap();
        if let Some(key) = key {
            req.headers_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        let (ws, _) =
            tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(req)).await.unwrap().unwrap();
        ws
    }

    async fn send(ws: &mut Client, v: Value) {
        ws.send(tungstenite::Message::text(v.to_string())).await.unwrap();
    }

    /// Next server event of type `kind`, collecting everything seen on the way.
    async fn until(ws: &mut Client, kind: &str, seen: &mut Vec<Value>) -> Value {
        let fut = async {
            while let Some(Ok(msg)) = ws.next().await {
                if let tungstenite::Message::Text(t) = msg {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    seen.push(v.clone());
                    if v["type"] == kind {
                        return v;
                    }
                }
            }
            panic!("socket ended before {kind}");
        };
        tokio::time::timeout(Duration::from_secs(2), fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {kind}"))
    }

    fn phone_session() -> Value {
        json!({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief.",
            "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": "audio/pcmu"}, "transcription": {"model": "gpt-4o-mini-transcribe"},
                "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
                    "create_response": true, "interrupt_response": true}},
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}}}})
    }

    #[tokio::test]
    async fn session_response_and_truncate() {
        let fake = FakeRealtime::start(FakeScript {
            expected_api_key: Some("sk-test".into()),
            greeting_audio: ulaw_tone(1_000, 300.0, 8_000),
            greeting_transcript: "Hello there caller".into(),
            delta_interval: Duration::from_millis(5),
            ..FakeScript::default()
        })
        .await
        .unwrap();
        let mut ws = connect(&fake, Some("sk-test")).await;
        let mut seen = Vec::new();
        let created = until(&mut ws, "session.created", &mut seen).await;
        assert_eq!(created["session"]["object"], "realtime.session");
        send(&mut ws, phone_session()).await;
        let updated = until(&mut ws, "session.updated", &mut seen).await;
        assert_eq!(updated["session"]["audio"]["output"]["format"], json!({"type": "audio/pcmu"}));
        assert_eq!(updated["session"]["audio"]["output"]["voice"], "marin");
        assert_eq!(updated["session"]["model"], "gpt-realtime");
        assert!(updated["session"]["id"].as_str().unwrap().starts_with("sess_"));

        send(&mut ws, json!({"type": "response.create"})).await;
        let mut seen = Vec::new();
        let done = until(&mut ws, "response.done", &mut seen).await;
        assert_eq!(done["response"]["status"], "completed");
        assert!(done["response"]["usage"]["output_token_details"]["audio_tokens"].as_u64().unwrap() > 0);
        let kinds: Vec<&str> = seen.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(
            &kinds[..4],
            [
                "response.created",
                "response.output_item.added",
                "conversation.item.added",
                "response.content_part.added"
            ]
        );
        let audio: Vec<u8> = seen
            .iter()
            .filter(|v| v["type"] == "response.output_audio.delta")
            .flat_map(|v| B64.decode(v["delta"].as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(audio.len(), 8_000);
        assert_eq!(seen.iter().filter(|v| v["type"] == "response.output_audio.delta").count(), 10);
        let transcript = seen.iter().find(|v| v["type"] == "response.output_audio_transcript.done").unwrap();
        assert_eq!(transcript["transcript"], "Hello there caller");
        let item_id = done["response"]["output"][0]["id"].as_str().unwrap().to_string();

        // Valid truncate, then one past the audio sent, then an unknown item.
        send(
            &mut ws,
            json!({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 640}),
        )
        .await;
        let t = until(&mut ws, "conversation.item.truncated", &mut Vec::new()).await;
        assert_eq!(t["audio_end_ms"], 640);
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        send(
            &mut ws,
            json!({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 1001}),
        )
        .await;
        let e = until(&mut ws, "error", &mut Vec::new()).await;
        assert_eq!(e["error"]["code"], "invalid_value");
        send(&mut ws, json!({"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0, "audio_end_ms": 0})).await;
        until(&mut ws, "error", &mut Vec::new()).await;
        let tr = fake.truncates();
        assert_eq!(tr.len(), 3);
        assert!(tr[0].accepted && !tr[1].accepted && !tr[2].accepted);
        assert_eq!(tr[0].item_audio_ms, 1_000);
        assert!(fake.item_audio_started(&item_id).is_some_and(|t| t <= tr[0].at));
        assert_eq!(fake.count_sent("response.output_audio.delta"), 10);
        assert_eq!(fake.violations().len(), 2);

        // Cancel with nothing active is an error, not a violation.
        send(&mut ws, json!({"type": "response.cancel"})).await;
        let e = until(&mut ws, "error", &mut Vec::new()).await;
        assert_eq!(e["error"]["code"], "response_cancel_not_active");
        assert_eq!(fake.violations().len(), 2);
        assert_eq!(fake.count("response.create"), 1);
        assert_eq!(fake.connections(), 1);
        fake.shutdown().await;
    }

    #[tokio::test]
    async fn server_vad_interrupts_and_answers() {
        let fake = FakeRealtime::start(FakeScript {
            greeting_audio: ulaw_tone(3_000, 300.0, 8_000),
            reply_audio: ulaw_tone(200, 300.0, 8_000),
            reply_transcript: "We open at nine".into(),
            caller_transcripts: vec!["When do you open?".into()],
            delta_interval: Duration::from_millis(20),
            silence_ms: 200,
            ..FakeScript::default()
        })
        .await
        .unwrap();
        let mut ws = connect(&fake, None).await;
        send(&mut ws, phone_session()).await;
        until(&mut ws, "session.updated", &mut Vec::new()).await;
        send(&mut ws, json!({"type": "response.create"})).await;
        until(&mut ws, "response.output_audio.delta", &mut Vec::new()).await;
        // Second response.create while one is active: error + violation.
        send(&mut ws, json!({"type": "response.create"})).await;
        let e = until(&mut ws, "error", &mut Vec::new()).await;
        assert_eq!(e["error"]["code"], "conversation_already_has_active_response");
        assert_eq!(fake.violations().len(), 1);

        // 200 ms silence, 300 ms of speech, 400 ms silence, in 20 ms appends.
        let audio = [ulaw_silence(200), ulaw_tone(300, 440.0, 6_000), ulaw_silence(400)].concat();
        for frame in audio.chunks(160) {
            send(&mut ws, json!({"type": "input_audio_buffer.append", "audio": B64.encode(frame)})).await;
        }
        let mut seen = Vec::new();
        let started = until(&mut ws, "input_audio_buffer.speech_started", &mut seen).await;
        assert_eq!(started["audio_start_ms"], 0); // onset 200 ms minus 300 ms padding, clamped
        let done = until(&mut ws, "response.done", &mut seen).await;
        assert_eq!(done["response"]["status"], "cancelled");
        assert_eq!(done["response"]["status_details"]["reason"], "turn_detected");
        let stopped = until(&mut ws, "input_audio_buffer.speech_stopped", &mut seen).await;
        assert_eq!(stopped["audio_end_ms"], 700);
        assert_eq!(stopped["item_id"], started["item_id"]);
        let tr = until(&mut ws, "conversation.item.input_audio_transcription.completed", &mut seen).await;
        assert_eq!(tr["transcript"], "When do you open?");
        let mut seen = Vec::new();
        let done = until(&mut ws, "response.done", &mut seen).await;
        assert_eq!(done["response"]["status"], "completed");
        assert_eq!(done["response"]["output"][0]["content"][0]["transcript"], "We open at nine");
        assert_eq!(fake.appended_audio(0), audio);
        assert_eq!(fake.appended_ms(0), 900);
        assert_eq!(fake.count("input_audio_buffer.append"), audio.len() / 160);
        fake.wait_for(
            |ev| ev.iter().filter(|e| e.kind() == "input_audio_buffer.append").count() == 45,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn rejects_bad_handshakes_and_beta_shapes() {
        let fake =
            FakeRealtime::start(FakeScript { expected_api_key: Some("sk-good".into()), ..FakeScript::default() })
                .await
                .unwrap();
        // Wrong key: 401.
        let mut req = fake.realtime_url("gpt-realtime").into_client_request().unwrap();
        req.headers_mut().insert("authorization", "Bearer sk-bad".parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
        // Beta header: error event then close 4000.
        let mut req = fake.realtime_url("gpt-realtime").into_client_request().unwrap();
        req.headers_mut().insert("authorization", "Bearer sk-good".parse().unwrap());
        req.headers_mut().insert("openai-beta", "realtime=v1".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let first = until(&mut ws, "error", &mut Vec::new()).await;
        assert_eq!(first["error"]["code"], "beta_api_shape_disabled");
        let close = tokio::time::timeout(Duration::from_secs(2), ws.next()).await.unwrap();
        match close {
            Some(Ok(tungstenite::Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4000),
            other => panic!("expected close 4000, got {other:?}"),
        }
        assert_eq!(fake.violations().len(), 1);

        // A beta-shaped session.update is answered with an error and recorded.
        let mut ws = connect(&fake, Some("sk-good")).await;
        send(
            &mut ws,
            json!({"type": "session.update", "session": {"voice": "alloy", "input_audio_format": "g711_ulaw"}}),
        )
        .await;
        let e = until(&mut ws, "error", &mut Vec::new()).await;
        assert!(e["error"]["code"].is_string());
        send(&mut ws, json!({"type": "response.audio.delta"})).await;
        until(&mut ws, "error", &mut Vec::new()).await;
        ws.send(tungstenite::Message::text("not json")).await.unwrap();
        until(&mut ws, "error", &mut Vec::new()).await;
        let v = fake.violations();
        assert!(v.iter().any(|v| v.contains("session.type")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("response.audio.delta")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("not JSON")), "{v:?}");
        let statuses: Vec<u16> = fake.handshakes().iter().map(|h| h.status).collect();
        assert_eq!(statuses, [401, 101, 101]);
        assert_eq!(fake.connections(), 1);
    }

    #[tokio::test]
    async fn faults_refuse_then_drop() {
        let fake = FakeRealtime::start(FakeScript {
            refuse_connections: true,
            fault_connections: Some(1),
            drop_after: Some(Duration::from_millis(50)),
            ..FakeScript::default()
        })
        .await
        .unwrap();
        let req = fake.realtime_url("gpt-realtime").into_client_request().unwrap();
        match tokio_tungstenite::connect_async(req).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
            other => panic!("expected 503, got {:?}", other.map(|_| ())),
        }
        // The second attempt is past `fault_connections`: no refusal and no drop.
        let mut ws = connect(&fake, None).await;
        send(&mut ws, phone_session()).await;
        until(&mut ws, "session.updated", &mut Vec::new()).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        send(&mut ws, json!({"type": "input_audio_buffer.clear"})).await;
        until(&mut ws, "input_audio_buffer.cleared", &mut Vec::new()).await;

        // With faults on every connection, the socket drops without a close frame.
        fake.update_script(|s| {
            s.refuse_connections = false;
            s.fault_connections = None;
        });
        let mut ws = connect(&fake, None).await;
        send(&mut ws, phone_session()).await;
        until(&mut ws, "session.updated", &mut Vec::new()).await;
        let end = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match ws.next().await {
                    Some(Ok(tungstenite::Message::Close(_))) => return "close frame",
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return "dropped",
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(end, "dropped");
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        fake.wait_for_connections(2, Duration::from_millis(100)).await.unwrap();
    }

    #[tokio::test]
    async fn pcm_session_and_text_response() {
        let fake = FakeRealtime::start(FakeScript {
            greeting_audio: crate::testkit::ulaw_to_pcm24k(&ulaw_tone(100, 300.0, 8_000)),
            delta_bytes: 1_001,
            delta_interval: Duration::from_millis(1),
            reply_transcript: "Summary text".into(),
            ..FakeScript::default()
        })
        .await
        .unwrap();
        let mut ws = connect(&fake, None).await;
        let mut s = phone_session();
        s["session"]["audio"]["input"]["format"] = json!({"type": "audio/pcm", "rate": 24000});
        s["session"]["audio"]["output"]["format"] = json!({"type": "audio/pcm", "rate": 24000});
        send(&mut ws, s).await;
        until(&mut ws, "session.updated", &mut Vec::new()).await;
        send(&mut ws, json!({"type": "response.create"})).await;
        let mut seen = Vec::new();
        until(&mut ws, "response.done", &mut seen).await;
        let sizes: Vec<usize> = seen
            .iter()
            .filter(|v| v["type"] == "response.output_audio.delta")
            .map(|v| B64.decode(v["delta"].as_str().unwrap()).unwrap().len())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 4_800);
        assert!(sizes.iter().all(|s| s % 2 == 0));
        // PCM speech drives the VAD too.
        let speech = crate::testkit::ulaw_to_pcm24k(&ulaw_tone(200, 440.0, 6_000));
        send(&mut ws, json!({"type": "input_audio_buffer.append", "audio": B64.encode(&speech)})).await;
        let started = until(&mut ws, "input_audio_buffer.speech_started", &mut Vec::new()).await;
        assert!(started["item_id"].as_str().unwrap().starts_with("item_"));
        send(&mut ws, json!({"type": "response.create", "response": {"conversation": "none", "output_modalities": ["text"], "metadata": {"purpose": "summary"}}})).await;
        let done = until(&mut ws, "response.done", &mut Vec::new()).await;
        assert_eq!(done["response"]["metadata"]["purpose"], "summary");
        assert_eq!(done["response"]["output"][0]["content"][0]["text"], "Summary text");
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        assert_eq!(fake.appended_ms(0), 200);
    }
}
