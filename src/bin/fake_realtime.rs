//! `fake-realtime`: a lean fake OpenAI Realtime server (GA dialect) for load runs, in its own
//! process so the daemon's CPU can be measured alone.
//!
//! ```sh
//! cargo run --release --bin fake-realtime -- --port 9100
//! ```
//!
//! Per connection: `session.created`; `session.update` is echoed as `session.updated`;
//! `response.create` streams agent audio from `fixtures/it_agent_long.ulaw` (greeting for the
//! first response, a reply afterwards) as `response.output_audio.delta`s of `--delta-bytes`
//! every `--delta-interval-ms` (default 800 B / 20 ms: 5× faster than real time, as the real
//! API), then transcript, `response.done` with usage. An energy VAD over the appended caller
//! audio sends `speech_started` (cancelling an active response), `speech_stopped`,
//! `committed`, the caller transcript, and an automatic reply. `response.cancel` and
//! `conversation.item.truncate` are honoured.
//!
//! Measuring: every 20 ms agent frame carries a timing marker (see `loadgen/common.rs`); every
//! appended caller frame's marker is read and its relay delay (loadgen send → arrival here)
//! recorded when its send time lies in the window set by `POST /window?from_us=…&to_us=…`.
//! `GET /stats` returns counters and the histogram as JSON. Unlike
//! `switchboard::testkit::FakeRealtime`, nothing is logged per event: it is meant for 2,000
//! connections.
//!
//! Cost: its CPU competes with the daemon's on the same cores, so the per-message path is kept
//! short. One `current_thread` runtime by default (`--threads 1`). The accept loop reads each
//! request head itself: a plain HTTP/1.1 WebSocket upgrade to `/v1/realtime` is answered here
//! and run by tungstenite straight on the `TcpStream` (`switchboard::ws::WsStream`: no hyper
//! upgrade layers, no proxy wakers); everything else (`/stats`, `/window`, refusals) is handed
//! to axum. Each connection is one task owning its socket (no `split()`), with one re-armed
//! timer; an append is recognised by its exact prefix, decoded into a reused buffer, and its
//! RMS summed from a table of squares.

#[path = "loadgen/common.rs"]
mod common;
#[path = "loadgen/rxstamp.rs"]
mod rxstamp;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Parser;
use common::{FRAME_BYTES, Hist, Marker, now_us, str_field};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::testkit::ulaw_decode;
use switchboard::ws::WsStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

const AGENT_LONG: &[u8] = include_bytes!("../../fixtures/it_agent_long.ulaw");
/// How the daemon starts every append (`core::realtime::client::append_audio`); then come the
/// base64 and `"}`.
const APPEND_PREFIX: &str = r#"{"type":"input_audio_buffer.append","audio":""#;

#[derive(Parser, Debug, Clone)]
#[command(name = "fake-realtime", about = "Lean fake OpenAI Realtime server (GA) for load runs")]
struct Args {
    /// Port on 127.0.0.1 (0 = any; the chosen address is printed as `LISTENING 127.0.0.1:PORT`).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// If set, require `Authorization: Bearer <key>`.
    #[arg(long)]
    api_key: Option<String>,
    /// Greeting length (ms of it_agent_long.ulaw, rounded down to whole deltas).
    #[arg(long, default_value_t = 4_000)]
    greeting_ms: usize,
    /// Reply length (ms, the audio that follows the greeting in the fixture).
    #[arg(long, default_value_t = 6_000)]
    reply_ms: usize,
    /// Bytes of μ-law per audio delta (a multiple of 160).
    #[arg(long, default_value_t = 800)]
    delta_bytes: usize,
    /// Pause between audio deltas.
    #[arg(long, default_value_t = 20)]
    delta_interval_ms: u64,
    /// Delay between `response.created` and the first delta.
    #[arg(long, default_value_t = 0)]
    response_latency_ms: u64,
    /// RMS (i16 scale) of a 20 ms frame at or above which it counts as speech.
    #[arg(long, default_value_t = 500.0)]
    vad_threshold: f64,
    /// Continuous speech before `speech_started`.
    #[arg(long, default_value_t = 300)]
    vad_min_speech_ms: u64,
    /// Quiet after speech before `speech_stopped` + commit + reply.
    #[arg(long, default_value_t = 500)]
    silence_ms: u64,
    /// Tokio worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    live: AtomicU64,
    appends: AtomicU64,
    appended_bytes: AtomicU64,
    caller_frames_marked: AtomicU64,
    caller_seq_gaps: AtomicU64,
    caller_first_seq_sum: AtomicU64,
    caller_last_seq_plus1_sum: AtomicU64,
    agent_frames_sent: AtomicU64,
    responses: AtomicU64,
    responses_cancelled: AtomicU64,
    cancels: AtomicU64,
    truncates: AtomicU64,
    speech_started: AtomicU64,
    errors_sent: AtomicU64,
    other_events: AtomicU64,
}

struct Shared {
    args: Args,
    greeting: Vec<u8>,
    reply: Vec<u8>,
    /// The square of each μ-law code's linear value (at most 32_124², so a `u32`), for the RMS.
    ulaw_sq: [u32; 256],
    c: Counters,
    caller_delay: Hist,
    /// The same, to when this process read the frame.
    caller_delay_read: Hist,
    window: (AtomicU64, AtomicU64),
}

fn whole(bytes: &[u8], ms: usize, delta: usize) -> Vec<u8> {
    let n = (ms * 8).min(bytes.len());
    bytes[..n - n % delta.max(FRAME_BYTES)].to_vec()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.delta_bytes >= FRAME_BYTES && args.delta_bytes % FRAME_BYTES == 0,
        "--delta-bytes: a multiple of 160"
    );
    // One thread (the default): a `current_thread` runtime, so waking a connection's task is
    // a local queue push, with no cross-thread handoff. More threads: the usual pool.
    let mut builder = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    let rt = builder.enable_all().build()?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let greet_bytes = (args.greeting_ms * 8).min(AGENT_LONG.len() / 2);
    let greeting = whole(AGENT_LONG, args.greeting_ms, args.delta_bytes);
    let reply = whole(&AGENT_LONG[greet_bytes..], args.reply_ms, args.delta_bytes);
    let mut ulaw_sq = [0u32; 256];
    for (i, v) in ulaw_sq.iter_mut().enumerate() {
        *v = i32::from(ulaw_decode(i as u8)).unsigned_abs().pow(2);
    }
    let shared = Arc::new(Shared {
        args: args.clone(),
        greeting,
        reply,
        ulaw_sq,
        c: Counters::default(),
        caller_delay: Hist::new(),
        caller_delay_read: Hist::new(),
        window: (AtomicU64::new(0), AtomicU64::new(u64::MAX)),
    });
    let app = Router::new()
        .route("/v1/realtime", get(refuse_upgrade))
        .route("/stats", get(stats))
        .route("/window", post(window))
        .with_state(shared.clone());
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    println!("LISTENING {addr}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let stop = CancellationToken::new();
    let shutdown = {
        let stop = stop.clone();
        async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            stop.cancel();
        }
    };
    // What the fast path does not take reaches axum through this channel. On a signal both
    // stop accepting; axum finishes its requests, then the process ends (as it always did).
    let (to_axum, from_accept) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(accept_loop(listener, shared, to_axum, stop));
    axum::serve(Handoff { rx: from_accept, addr }, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Accepting: the realtime upgrade here, everything else to axum

type ToAxum = UnboundedSender<(Prefixed, SocketAddr)>;

/// Accepts every connection (with `TCP_NODELAY`, as before) and routes it on its own task.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, to_axum: ToAxum, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(route(tcp, peer, shared.clone(), to_axum.clone()));
            }
            // As axum's own listener: a connection that failed before it was taken is no error
            // of ours; anything else (EMFILE…) is reported and retried a second later.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                eprintln!("fake-realtime: accept error: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Largest request head read here before the connection is left to axum.
const MAX_HEAD: usize = 8 * 1024;

/// Reads the request head. A WebSocket upgrade to `/v1/realtime` with the right key
/// ([`fast_upgrade_key`]) is answered here and served on the bare `TcpStream`; anything else
/// goes to axum with the bytes already read.
async fn route(mut tcp: TcpStream, peer: SocketAddr, s: Arc<Shared>, to_axum: ToAxum) {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // The head ends at the first empty line; lines end in LF, most often CRLF.
    let head_len = loop {
        if let Some(i) = head.windows(2).position(|w| w == b"\n\n") {
            break Some(i + 2);
        }
        if let Some(i) = head.windows(3).position(|w| w == b"\n\r\n") {
            break Some(i + 3);
        }
        if head.len() >= MAX_HEAD {
            break None;
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => break None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    };
    let Some((n, key)) = head_len.and_then(|n| Some((n, fast_upgrade_key(&head[..n], s.args.api_key.as_deref())?)))
    else {
        // axum answers (/stats, /window, 401, 400, 404…) from the bytes read so far. It is
        // gone only at shutdown, and then the connection just closes.
        let _ = to_axum.send((Prefixed { head, pos: 0, tcp }, peer));
        return;
    };
    let accept = derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n"
    );
    if tcp.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    // A client may not send frames before it has the 101, but keep any it did.
    let early = head.split_off(n);
    let Ok(tcp) = rxstamp::RxStamped::new(tcp) else { return };
    let stamp = tcp.stamp();
    let ws = WsStream::from_partially_read(tcp, early, Role::Server, ws_config());
    s.c.connections.fetch_add(1, Relaxed);
    s.c.live.fetch_add(1, Relaxed);
    Conn::new(s.clone(), stamp).run(ws).await;
    s.c.live.fetch_sub(1, Relaxed);
}

/// `Some(Sec-WebSocket-Key)` if `head` is a WebSocket upgrade this fake serves:
/// `GET /v1/realtime[?query] HTTP/1.1`, `Connection` containing `upgrade`,
/// `Upgrade: websocket`, `Sec-WebSocket-Version: 13`, a key, and
/// `Authorization: Bearer <--api-key>` if a key is set (each header the first of its name, as
/// `HeaderMap::get` reads it). Deliberately strict: anything unusual (another target form,
/// unusual characters, a body, bare-LF lines, trailing blanks, HTTP/1.0 or 2) is `None`, and
/// [`refuse_upgrade`] says why. The daemon's requests are never unusual.
fn fast_upgrade_key(head: &[u8], api_key: Option<&str>) -> Option<String> {
    let head = std::str::from_utf8(head).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let target = lines.next()?.strip_prefix("GET ")?.strip_suffix(" HTTP/1.1")?;
    let query = target.strip_prefix("/v1/realtime")?;
    let query_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b);
    if !(query.is_empty() || query.starts_with('?')) || !query.bytes().all(query_char) {
        return None;
    }
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let value_char = |b: u8| b == b'\t' || (b' '..=b'~').contains(&b);
    let (mut connection, mut upgrade, mut version, mut key, mut auth) = (None, None, None, None, None);
    for (i, line) in lines.enumerate() {
        let (name, value) = line.split_once(':')?;
        let value = value.trim_start_matches([' ', '\t']);
        if i >= 100
            || name.is_empty()
            || !name.bytes().all(token_char)
            || !value.bytes().all(value_char)
            || value.ends_with([' ', '\t'])
        {
            return None;
        }
        let slot = match name.to_ascii_lowercase().as_str() {
            "connection" => &mut connection,
            "upgrade" => &mut upgrade,
            "sec-websocket-version" => &mut version,
            "sec-websocket-key" => &mut key,
            "authorization" => &mut auth,
            "content-length" | "transfer-encoding" => return None,
            _ => continue,
        };
        slot.get_or_insert(value);
    }
    let accepted = connection?.to_ascii_lowercase().contains("upgrade")
        && upgrade?.eq_ignore_ascii_case("websocket")
        && version? == "13"
        && api_key.is_none_or(|k| auth == Some(format!("Bearer {k}").as_str()));
    if accepted { key.map(str::to_owned) } else { None }
}

/// The WebSocket settings. Small buffers: tungstenite
/// zero-fills `read_buffer_size` (128 KiB by default) before every read, and what arrives here
/// is appends of about 300 bytes (2 KiB: a third of the fake's instructions at 8 KiB).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(16 << 20)).read_buffer_size(2 * 1024).write_buffer_size(8 * 1024)
}

/// A connection for axum, replaying the request bytes [`route`] already read.
struct Prefixed {
    head: Vec<u8>,
    pos: usize,
    tcp: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.head.len() {
            let n = (this.head.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// axum's listener: the connections [`route`] hands over.
struct Handoff {
    rx: UnboundedReceiver<(Prefixed, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for Handoff {
    type Io = Prefixed;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Prefixed, SocketAddr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop has stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

// ------------------------------------------------------------------------------------------
// HTTP endpoints (axum)

#[derive(serde::Deserialize)]
struct WindowQ {
    from_us: u64,
    to_us: u64,
}

async fn window(State(s): State<Arc<Shared>>, Query(q): Query<WindowQ>) -> &'static str {
    s.window.0.store(q.from_us, Relaxed);
    s.window.1.store(q.to_us, Relaxed);
    "ok"
}

async fn stats(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let c = &s.c;
    let g = |a: &AtomicU64| a.load(Relaxed);
    axum::Json(json!({
        "connections": g(&c.connections),
        "live": g(&c.live),
        "appends": g(&c.appends),
        "appended_bytes": g(&c.appended_bytes),
        "caller_frames_appended": g(&c.appended_bytes) / FRAME_BYTES as u64,
        "caller_frames_marked": g(&c.caller_frames_marked),
        "caller_seq_gaps": g(&c.caller_seq_gaps),
        "caller_frames_missing_at_start": g(&c.caller_first_seq_sum),
        "caller_frames_through_last": g(&c.caller_last_seq_plus1_sum),
        "agent_frames_sent": g(&c.agent_frames_sent),
        "responses": g(&c.responses),
        "responses_cancelled": g(&c.responses_cancelled),
        "cancels": g(&c.cancels),
        "truncates": g(&c.truncates),
        "speech_started": g(&c.speech_started),
        "errors_sent": g(&c.errors_sent),
        "other_events": g(&c.other_events),
        "caller_relay_ms": s.caller_delay.summary_ms(),
        "caller_relay_read_ms": s.caller_delay_read.summary_ms(),
    }))
}

/// `/v1/realtime` through axum: what [`fast_upgrade_key`] did not take. 401 for a wrong key,
/// as the real API; 400 for anything else (not a WebSocket upgrade, or an unusual one).
async fn refuse_upgrade(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(key) = &s.args.api_key {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        if auth != format!("Bearer {key}") {
            return (StatusCode::UNAUTHORIZED, "bad key").into_response();
        }
    }
    (StatusCode::BAD_REQUEST, "this fake serves a plain HTTP/1.1 WebSocket upgrade to /v1/realtime only")
        .into_response()
}

// ------------------------------------------------------------------------------------------
// One realtime connection

struct Active {
    id: String,
    item_id: String,
    greeting: bool,
    sent: usize,
    seq: u32,
    next_at: Instant,
}

struct Conn {
    s: Arc<Shared>,
    /// The kernel arrival time of the socket's last read (0 if it came unstamped).
    rx_stamp: Arc<AtomicU64>,
    out: Vec<String>,
    session: Value,
    responses: u32,
    items: u64,
    active: Option<Active>,
    buf: Vec<u8>,
    delta: Vec<u8>,
    // VAD
    appended_ms: u64,
    run_ms: u64,
    quiet_ms: u64,
    in_speech: bool,
    speech_item: Option<String>,
    last_seq: Option<u32>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(last) = self.last_seq {
            self.s.c.caller_last_seq_plus1_sum.fetch_add(u64::from(last) + 1, Relaxed);
        }
    }
}

fn new_id(prefix: &str, n: u64) -> String {
    format!("{prefix}_{:08x}{n:06}", now_us() as u32)
}

impl Conn {
    fn new(s: Arc<Shared>, rx_stamp: Arc<AtomicU64>) -> Self {
        Conn {
            s,
            rx_stamp,
            out: Vec::with_capacity(16),
            session: json!({}),
            responses: 0,
            items: 0,
            active: None,
            buf: Vec::with_capacity(4096),
            delta: Vec::with_capacity(4096),
            appended_ms: 0,
            run_ms: 0,
            quiet_ms: 0,
            in_speech: false,
            speech_item: None,
            last_seq: None,
        }
    }

    fn emit(&mut self, v: Value) {
        self.out.push(v.to_string());
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.items += 1;
        new_id(prefix, self.items)
    }

    /// The connection's only task: it owns the socket (no `split()` and its lock), sends what
    /// the last event queued, then waits for the next client message or the next delta's due time.
    async fn run(mut self, mut ws: WsStream<rxstamp::RxStamped>) {
        let sid = self.next_id("sess");
        self.emit(json!({"type": "session.created", "session": {"type": "realtime", "object": "realtime.session", "id": sid}}));
        // One timer per connection, re-armed only when the next delta's due time changes (not
        // a fresh `sleep_until` per loop turn). Polled only while a response is active.
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        loop {
            if !self.out.is_empty() {
                for m in self.out.drain(..) {
                    if ws.feed(Message::text(m)).await.is_err() {
                        return;
                    }
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
            if let Some(a) = &self.active
                && timer.deadline() != a.next_at
            {
                timer.as_mut().reset(a.next_at);
            }
            tokio::select! {
                biased;
                () = &mut timer, if self.active.is_some() => self.tick(),
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => self.on_text(t.as_str()),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    fn on_text(&mut self, text: &str) {
        // The hot path: the daemon writes every append as exactly this prefix, the base64 and
        // `"}` (`core::realtime::client::append_audio`). Same result as the general path below,
        // without building search patterns.
        if let Some(rest) = text.strip_prefix(APPEND_PREFIX) {
            if let Some(end) = rest.find('"') {
                self.on_append(&rest[..end]);
            }
            return;
        }
        let kind = str_field(text, "type").unwrap_or("");
        if kind == "input_audio_buffer.append" {
            if let Some(audio) = str_field(text, "audio") {
                self.on_append(audio);
            }
            return;
        }
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "session.update" => {
                if let (Some(update), Some(eff)) =
                    (v.get("session").and_then(Value::as_object), self.session.as_object_mut())
                {
                    for (k, val) in update {
                        eff.insert(k.clone(), val.clone());
                    }
                }
                let mut session = self.session.clone();
                session["object"] = json!("realtime.session");
                session["id"] = json!(self.next_id("sess"));
                self.emit(json!({"type": "session.updated", "session": session}));
            }
            "response.create" => {
                if self.active.is_some() {
                    self.error(
                        "conversation_already_has_active_response",
                        "Conversation already has an active response in progress.",
                    );
                } else {
                    self.start_response();
                }
            }
            "response.cancel" => {
                self.s.c.cancels.fetch_add(1, Relaxed);
                if self.active.is_some() {
                    self.finish("cancelled", Some("client_cancelled"));
                }
            }
            "conversation.item.truncate" => {
                self.s.c.truncates.fetch_add(1, Relaxed);
                let item_id = v.get("item_id").cloned().unwrap_or(Value::Null);
                let end = v.get("audio_end_ms").cloned().unwrap_or(json!(0));
                self.emit(json!({"type": "conversation.item.truncated", "item_id": item_id, "content_index": 0, "audio_end_ms": end}));
            }
            "input_audio_buffer.clear" => self.emit(json!({"type": "input_audio_buffer.cleared"})),
            _ => {
                self.s.c.other_events.fetch_add(1, Relaxed);
            }
        }
    }

    fn error(&mut self, code: &str, message: &str) {
        self.s.c.errors_sent.fetch_add(1, Relaxed);
        self.emit(
            json!({"type": "error", "error": {"type": "invalid_request_error", "code": code, "message": message}}),
        );
    }

    fn on_append(&mut self, audio: &str) {
        self.s.c.appends.fetch_add(1, Relaxed);
        // Decode into the connection's scratch buffer, kept at its largest size so far: no
        // allocation and no zero-filling per append (`decode_vec` would zero-fill). Sized to the
        // decoder's own estimate, so `decode_slice` fails exactly when `decode_vec` would.
        let mut buf = std::mem::take(&mut self.buf);
        let need = base64::decoded_len_estimate(audio.len());
        if buf.len() < need {
            buf.resize(need, 0);
        }
        let Ok(n) = B64.decode_slice(audio, &mut buf) else {
            self.buf = buf;
            self.error("invalid_value", "audio is not base64");
            return;
        };
        self.s.c.appended_bytes.fetch_add(n as u64, Relaxed);
        let window = (self.s.window.0.load(Relaxed), self.s.window.1.load(Relaxed));
        let mut now = None;
        for f in buf[..n].chunks_exact(FRAME_BYTES) {
            let speech = self.caller_frame(f, window, &mut now);
            self.vad(speech);
        }
        self.buf = buf;
    }

    /// One appended 20 ms frame: its marker (sequence, relay delay if sent in `window`) and
    /// whether its RMS reaches the VAD threshold. `now` is read once per append, when needed.
    fn caller_frame(&mut self, f: &[u8], window: (u64, u64), now: &mut Option<u64>) -> bool {
        let s = &*self.s;
        if let Some(m) = Marker::decode(f) {
            s.c.caller_frames_marked.fetch_add(1, Relaxed);
            if let Some(last) = self.last_seq
                && m.a > last + 1
            {
                s.c.caller_seq_gaps.fetch_add(u64::from(m.a - last - 1), Relaxed);
            }
            if self.last_seq.is_none() {
                s.c.caller_first_seq_sum.fetch_add(u64::from(m.a), Relaxed);
            }
            self.last_seq = Some(m.a);
            if m.ts_us >= window.0 && m.ts_us < window.1 {
                let read = *now.get_or_insert_with(now_us);
                // Arrival proper is the kernel's stamp; `read` adds this process's own delay.
                let arrival = match self.rx_stamp.load(Relaxed) {
                    0 => read,
                    t => t.min(read),
                };
                s.caller_delay.record(arrival.saturating_sub(m.ts_us));
                s.caller_delay_read.record(read.saturating_sub(m.ts_us));
            }
        }
        // 160 squares of at most 32_124² each: the sum fits a u64 with room to spare.
        let sum: u64 = f.iter().map(|&b| u64::from(s.ulaw_sq[usize::from(b)])).sum();
        let rms = ((sum / FRAME_BYTES as u64) as f64).sqrt();
        rms >= s.args.vad_threshold
    }

    fn vad(&mut self, speech: bool) {
        self.appended_ms += 20;
        let a = &self.s.args;
        if speech {
            self.run_ms += 20;
            self.quiet_ms = 0;
            if !self.in_speech && self.run_ms >= a.vad_min_speech_ms {
                self.in_speech = true;
                let item = self.next_id("item");
                self.s.c.speech_started.fetch_add(1, Relaxed);
                let start = self.appended_ms.saturating_sub(self.run_ms);
                self.emit(
                    json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": start, "item_id": item}),
                );
                self.speech_item = Some(item);
                if self.active.is_some() {
                    self.finish("cancelled", Some("turn_detected"));
                }
            }
        } else if self.in_speech {
            self.quiet_ms += 20;
            if self.quiet_ms >= a.silence_ms {
                self.in_speech = false;
                self.run_ms = 0;
                let item = self.speech_item.take().unwrap_or_default();
                self.emit(json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": self.appended_ms, "item_id": item}));
                self.emit(json!({"type": "input_audio_buffer.committed", "previous_item_id": null, "item_id": item}));
                self.emit(json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": item,
                    "content_index": 0, "transcript": "Vorrei prenotare un tavolo per quattro."}));
                if self.active.is_none() {
                    self.start_response();
                }
            }
        } else {
            self.run_ms = 0;
        }
    }

    fn start_response(&mut self) {
        let greeting = self.responses == 0;
        self.responses += 1;
        self.s.c.responses.fetch_add(1, Relaxed);
        let id = self.next_id("resp");
        let item_id = self.next_id("item");
        self.emit(json!({"type": "response.created", "response": {"object": "realtime.response", "id": id, "status": "in_progress", "output": []}}));
        self.emit(json!({"type": "response.output_item.added", "response_id": id, "output_index": 0,
            "item": {"id": item_id, "object": "realtime.item", "type": "message", "status": "in_progress", "role": "assistant", "content": []}}));
        let next_at = Instant::now() + Duration::from_millis(self.s.args.response_latency_ms);
        self.active = Some(Active { id, item_id, greeting, sent: 0, seq: self.responses, next_at });
    }

    fn tick(&mut self) {
        let Some(a) = self.active.as_mut() else { return };
        let audio: &[u8] = if a.greeting { &self.s.greeting } else { &self.s.reply };
        let total = (audio.len() / FRAME_BYTES) as u32;
        if a.sent < audio.len() {
            let end = (a.sent + self.s.args.delta_bytes).min(audio.len());
            self.delta.clear();
            self.delta.extend_from_slice(&audio[a.sent..end]);
            let ts = now_us();
            for (k, f) in self.delta.chunks_mut(FRAME_BYTES).enumerate() {
                let idx = (a.sent / FRAME_BYTES + k) as u32;
                Marker { ts_us: ts, a: a.seq, b: idx, c: total }.encode(f);
            }
            self.s.c.agent_frames_sent.fetch_add((self.delta.len() / FRAME_BYTES) as u64, Relaxed);
            a.sent = end;
            let mut msg = String::with_capacity(self.delta.len() * 4 / 3 + 160);
            msg.push_str(r#"{"type":"response.output_audio.delta","response_id":""#);
            msg.push_str(&a.id);
            msg.push_str(r#"","item_id":""#);
            msg.push_str(&a.item_id);
            msg.push_str(r#"","output_index":0,"content_index":0,"delta":""#);
            B64.encode_string(&self.delta, &mut msg);
            msg.push_str(r#""}"#);
            self.out.push(msg);
            a.next_at += Duration::from_millis(self.s.args.delta_interval_ms);
        }
        if a.sent >= audio.len() {
            self.finish("completed", None);
        }
    }

    fn finish(&mut self, status: &str, reason: Option<&str>) {
        let Some(a) = self.active.take() else { return };
        if status == "cancelled" {
            self.s.c.responses_cancelled.fetch_add(1, Relaxed);
        }
        let transcript =
            if a.greeting { "Trattoria da Mario, buongiorno! Come posso aiutarla?" } else { "Certo, per che ora?" };
        let ids = json!({"response_id": a.id, "item_id": a.item_id, "output_index": 0, "content_index": 0});
        let with = |ty: &str, extra: Value| {
            let mut ev = ids.clone();
            ev["type"] = json!(ty);
            if let (Some(o), Some(e)) = (ev.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            ev
        };
        self.emit(with("response.output_audio.done", json!({})));
        self.emit(with("response.output_audio_transcript.done", json!({"transcript": transcript})));
        let item_status = if status == "completed" { "completed" } else { "incomplete" };
        let item = json!({"id": a.item_id, "object": "realtime.item", "type": "message", "status": item_status, "role": "assistant",
            "content": [{"type": "output_audio", "transcript": transcript}]});
        self.emit(json!({"type": "response.output_item.done", "response_id": a.id, "output_index": 0, "item": item}));
        let out_audio = (a.sent / 8 / 50) as u64;
        let in_audio = self.appended_ms / 100;
        let details = reason.map_or(Value::Null, |r| json!({"type": status, "reason": r}));
        self.emit(json!({"type": "response.done", "response": {"object": "realtime.response", "id": a.id, "status": status,
            "status_details": details, "output": [item],
            "usage": {"total_tokens": 120 + in_audio + out_audio, "input_tokens": 100 + in_audio, "output_tokens": 20 + out_audio,
                "input_token_details": {"text_tokens": 100, "audio_tokens": in_audio, "cached_tokens": 0},
                "output_token_details": {"text_tokens": 20, "audio_tokens": out_audio}}}}));
    }
}
