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

#[path = "loadgen/common.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
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
use tokio::time::Instant;

const AGENT_LONG: &[u8] = include_bytes!("../../fixtures/it_agent_long.ulaw");

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
    /// Tokio worker threads.
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
    ulaw: [i32; 256],
    c: Counters,
    caller_delay: Hist,
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
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build()?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let greet_bytes = (args.greeting_ms * 8).min(AGENT_LONG.len() / 2);
    let greeting = whole(AGENT_LONG, args.greeting_ms, args.delta_bytes);
    let reply = whole(&AGENT_LONG[greet_bytes..], args.reply_ms, args.delta_bytes);
    let mut ulaw = [0i32; 256];
    for (i, v) in ulaw.iter_mut().enumerate() {
        *v = i32::from(ulaw_decode(i as u8));
    }
    let shared = Arc::new(Shared {
        args: args.clone(),
        greeting,
        reply,
        ulaw,
        c: Counters::default(),
        caller_delay: Hist::new(),
        window: (AtomicU64::new(0), AtomicU64::new(u64::MAX)),
    });
    let app = Router::new()
        .route("/v1/realtime", get(upgrade))
        .route("/stats", get(stats))
        .route("/window", post(window))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    println!("LISTENING {addr}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

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
    }))
}

async fn upgrade(State(s): State<Arc<Shared>>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    if let Some(key) = &s.args.api_key {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        if auth != format!("Bearer {key}") {
            return (StatusCode::UNAUTHORIZED, "bad key").into_response();
        }
    }
    // Small buffers: tungstenite zero-fills `read_buffer_size` (128 KiB by default) per read.
    ws.max_message_size(16 << 20).read_buffer_size(8 * 1024).write_buffer_size(8 * 1024).on_upgrade(
        move |socket| async move {
            s.c.connections.fetch_add(1, Relaxed);
            s.c.live.fetch_add(1, Relaxed);
            Conn::new(s.clone()).run(socket).await;
            s.c.live.fetch_sub(1, Relaxed);
        },
    )
}

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
    fn new(s: Arc<Shared>) -> Self {
        Conn {
            s,
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

    async fn run(mut self, ws: WebSocket) {
        let (mut tx, mut rx) = ws.split();
        let sid = self.next_id("sess");
        self.emit(json!({"type": "session.created", "session": {"type": "realtime", "object": "realtime.session", "id": sid}}));
        let far = Instant::now() + Duration::from_secs(86_400);
        loop {
            for m in self.out.drain(..) {
                if tx.feed(Message::Text(m.into())).await.is_err() {
                    return;
                }
            }
            if tx.flush().await.is_err() {
                return;
            }
            let deadline = self.active.as_ref().map_or(far, |a| a.next_at);
            tokio::select! {
                msg = rx.next() => match msg {
                    Some(Ok(Message::Text(t))) => self.on_text(t.as_str()),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
                _ = tokio::time::sleep_until(deadline) => self.tick(),
            }
        }
    }

    fn on_text(&mut self, text: &str) {
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
        let shared = self.s.clone();
        let c = &shared.c;
        c.appends.fetch_add(1, Relaxed);
        self.buf.clear();
        if B64.decode_vec(audio, &mut self.buf).is_err() {
            self.error("invalid_value", "audio is not base64");
            return;
        }
        c.appended_bytes.fetch_add(self.buf.len() as u64, Relaxed);
        let now = now_us();
        let (from, to) = (shared.window.0.load(Relaxed), shared.window.1.load(Relaxed));
        let frames = self.buf.len() / FRAME_BYTES;
        for i in 0..frames {
            let f = &self.buf[i * FRAME_BYTES..(i + 1) * FRAME_BYTES];
            if let Some(m) = Marker::decode(f) {
                c.caller_frames_marked.fetch_add(1, Relaxed);
                if let Some(last) = self.last_seq
                    && m.a > last + 1
                {
                    c.caller_seq_gaps.fetch_add(u64::from(m.a - last - 1), Relaxed);
                }
                if self.last_seq.is_none() {
                    c.caller_first_seq_sum.fetch_add(u64::from(m.a), Relaxed);
                }
                self.last_seq = Some(m.a);
                if m.ts_us >= from && m.ts_us < to {
                    shared.caller_delay.record(now.saturating_sub(m.ts_us));
                }
            }
            let sum: i64 = f.iter().map(|&b| i64::from(shared.ulaw[b as usize]).pow(2)).sum();
            let rms = ((sum / FRAME_BYTES as i64) as f64).sqrt();
            self.vad(rms >= shared.args.vad_threshold);
        }
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
