//! `CallSession`: the per-call state machine between Twilio and the Realtime API.
//!
//! Sans-IO, like str0m: the bridge feeds it what arrived (`handle_twilio_text`,
//! `handle_realtime_text`, `on_realtime_ready`, `on_realtime_failed`, `handle_timeout`) with
//! the current time, then drains [`CallSession::poll_output`] and sleeps until
//! [`CallSession::poll_timeout`]. It owns the playback ledger (which agent audio the caller
//! actually heard, from echoed marks), barge-in, the response queue and the transcript.
//!
//! It must not do I/O or read the clock: `now` is milliseconds on any monotonic clock the
//! caller chooses, so tests run faster than real time.

mod ledger;

use std::collections::{HashMap, HashSet, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::core::audio::framing::{FRAME_BYTES, FrameQueue};
use crate::core::audio::resample::{Downsampler, Upsampler};
use crate::core::audio::{mulaw, vad::FrameVad};
use crate::core::domain::call::{CallRecord, CallStats, EndReason, ReconnectRecord, Speaker, TranscriptTurn};
use crate::core::domain::tenant::{AudioFormat, BargeIn};
use crate::core::realtime::client;
use crate::core::realtime::server::{ServerEvent, Usage};
use crate::core::realtime::session_config::greeting_instructions;
use crate::core::twilio::messages::{Inbound, OutboundWriter};

pub use ledger::{AgentItem, heard_text};
use ledger::{ItemKind, Outstanding};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// Everything a session needs to know about its call.
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub tenant_id: String,
    pub call_sid: String,
    pub stream_sid: String,
    pub from: String,
    pub to: String,
    /// Wall-clock start, Unix ms (a value handed in; the session never reads a clock).
    pub started_at_unix_ms: u64,
    pub language: String,
    pub greeting: String,
    pub audio_format: AudioFormat,
    pub barge_in: BargeIn,
    /// Pre-rendered mu-law apology played when the upstream fails.
    pub apology: &'static [u8],
    /// Pre-rendered "one moment, please" said while a dropped upstream is being restored.
    pub filler: &'static [u8],
    /// Upstream drops survived per call before giving up with the apology.
    pub max_reconnects: u32,
    /// Age (ms) at which the Realtime session is replaced by a fresh one between two turns,
    /// ahead of the server's 60-minute limit. 0 = never.
    pub rotate_after_ms: u64,
    /// Caller frames kept while the upstream is not ready yet (50 = 1 s).
    pub backlog_frames: usize,
    /// Agent frames (20 ms) per mark. Fewer marks mean fewer messages both ways and batched
    /// writes; what the caller heard is interpolated between marks on the playback clock.
    pub frames_per_mark: u32,
    /// Silence (ms) after which the agent asks whether the caller is still there; after a
    /// second one it says goodbye and the call ends. 0 = never.
    pub idle_prompt_ms: u32,
    /// Names of the places `transfer_call` may send the call (the first is the default);
    /// empty: no transfers.
    pub transfer_targets: Vec<String>,
    /// Keys the caller may press for an action (others reach the model as text).
    pub key_actions: Vec<(char, KeyAction)>,
    /// Tools that change something outside the call (a booking, a CRM write): while one runs,
    /// a barge-in waits for its result.
    pub side_effect_tools: Vec<String>,
}

/// What a keypad key does, when the tenant maps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    /// Transfer to this target (or the default).
    Transfer(Option<String>),
    /// Say goodbye and hang up.
    EndCall,
}

/// 100 ms chunks: five 20 ms frames, then a mark.
pub const DEFAULT_FRAMES_PER_MARK: u32 = 5;

/// What the bridge must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this text frame to Twilio.
    Twilio(String),
    /// Send this text frame to the Realtime API.
    Realtime(String),
    /// Close the Realtime socket now.
    CloseRealtime,
    /// Close the Twilio stream (the TwiML after `<Connect>` hangs up).
    Hangup,
    /// The upstream dropped: open and configure a new Realtime session (bounded backoff),
    /// then call `on_realtime_ready`, or `on_realtime_failed` if it cannot be restored.
    Reconnect,
    /// The session is getting old: open a fresh one in the background, then ask
    /// `rotation_ready` whether to swap it in now.
    Rotate,
    /// Run a tool the model called (with a timeout) and hand the JSON result to
    /// `on_tool_result`.
    RunTool { call_id: String, name: String, arguments: String },
    /// The announcement has been heard: redirect the call to this transfer target (`None`:
    /// the default) through Twilio's REST API, then call `on_transferred` or
    /// `on_transfer_failed`.
    Transfer { target: Option<String> },
}

/// Something worth counting or logging that happened inside the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    BargeIn { source: BargeInSource, latency_ms: u64, audio_end_ms: Option<u64> },
    MalformedTwilio(String),
    MalformedRealtime(String),
    UpstreamError { code: Option<String>, message: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BargeInSource {
    LocalVad,
    ServerVad,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Pending,
    Ready,
    /// Dropped mid-call; a new session is being opened. Caller audio is buffered meanwhile.
    Reconnecting,
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Live,
    /// Playing the apology, then hang up (at the latest at the deadline).
    Apologizing {
        deadline: Millis,
    },
    Ended,
}

/// Per-response instructions for the idle prompt and the goodbye after a second silence.
const IDLE_PROMPT: &str = "The caller has been silent for a while. Ask them briefly, in the language of this call, \
                           whether they are still on the line.";
const IDLE_GOODBYE: &str = "The caller is still silent. Say a short, warm goodbye in the language of this call and \
                            nothing else; the call will then end.";

/// `end_call` arrived without a spoken goodbye.
const END_CALL_GOODBYE: &str = "Say a short, warm goodbye to the caller in the language of this call, and nothing \
                                else; the call then ends.";
/// A transfer is about to happen.
const TRANSFER_ANNOUNCE: &str = "Tell the caller in one short sentence, in the language of this call, that you are \
                                 transferring them to a colleague now, and nothing else.";
/// The redirect did not happen.
const TRANSFER_FAILED: &str = "The transfer to a colleague did not work. Apologise briefly, in the language of this \
                               call, and offer to take a message or help yourself.";

/// How an ending the agent started finishes, once its last words have been heard.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    Hangup,
    Transfer { target: Option<String>, requested: bool },
}

impl Ending {
    fn instructions(&self) -> &'static str {
        match self {
            Ending::Hangup => END_CALL_GOODBYE,
            Ending::Transfer { .. } => TRANSFER_ANNOUNCE,
        }
    }
}

/// After a reconnect: the agent says it is back and carries on.
const RESUME: &str = "You were briefly cut off. In one short sentence in the language of this call, say you are \
                      back, then continue where the conversation left off.";
/// Turns replayed as text into a new session.
const SEED_TURNS: usize = 16;

/// Frames of silence the local VAD tolerates inside one stretch of speech.
const VAD_HANGOVER_MS: u64 = 60;
/// Extra time after the apology's nominal length before hanging up anyway.
const APOLOGY_SLACK_MS: u64 = 3_000;

pub struct CallSession {
    p: SessionParams,
    out: VecDeque<Output>,
    notices: Vec<Notice>,
    writer: OutboundWriter,
    start: Millis,
    upstream: Upstream,
    phase: Phase,
    end_reason: Option<(EndReason, Option<String>)>,
    greeted: bool,
    backlog: VecDeque<String>,

    // Inbound scratch buffers, reused for every frame.
    bytes: Vec<u8>,
    pcm8k: Vec<i16>,
    pcm24k: Vec<i16>,
    b64: String,
    vad: FrameVad,
    speech_run_ms: u64,
    silence_gap_ms: u64,
    speech_onset: Option<Millis>,
    up: Option<Upsampler>,
    down: Option<Downsampler>,
    down_carry: Option<u8>,

    // Outbound: held audio, what is queued at Twilio, the ledger of items.
    held: FrameQueue,
    frame: Vec<u8>,
    /// The chunk being assembled by `pump`: its frames go to Twilio as one `media` message,
    /// followed by its mark.
    chunk_audio: Vec<u8>,
    outstanding: Outstanding,
    items: Vec<AgentItem>,
    item_index: HashMap<String, usize>,
    cut_responses: HashSet<String>,

    // Responses: one at a time; ours are queued, never doubled.
    response_active: Option<String>,
    cancel_sent: bool,
    create_in_flight: Option<(String, String)>,
    /// The last `response.create` sent, kept to re-queue it if the server refuses it.
    last_create: Option<(String, String)>,
    create_queue: VecDeque<(String, String)>,
    create_seq: u64,

    /// Last sign of life: caller speech, agent audio playing or a response in progress.
    last_activity: Millis,
    reconnects: Vec<ReconnectRecord>,
    /// When the current upstream session became ready.
    upstream_since: Millis,
    rotating: bool,
    /// `end_call` or `transfer_call` was called: the goodbye (or the announcement) plays
    /// without barge-in, then the call ends (or is transferred).
    ending: Option<Ending>,
    /// Side-effecting tools still running, and a barge-in that waits for them.
    side_effect_calls: HashSet<String>,
    deferred_barge_in: Option<BargeInSource>,
    bookings: Vec<crate::core::domain::booking::Booking>,
    transferred_to: Option<String>,
    /// The number a transfer in progress dials.
    transfer_number: Option<String>,
    ending_goodbye_requested: bool,
    idle_prompts: u32,
    goodbye_requested: bool,
    caller_turns: Vec<TranscriptTurn>,
    caller_item_start: HashMap<String, Millis>,
    interruptions: u32,
    caller_talk_ms: u64,
    usage: Usage,
    stats: CallStats,
}

impl std::fmt::Debug for CallSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSession")
            .field("call_sid", &self.p.call_sid)
            .field("upstream", &self.upstream)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl CallSession {
    /// A session for a stream whose `start` has been received. `upstream_ready` is true when a
    /// pre-warmed, checked Realtime session is already attached.
    pub fn new(p: SessionParams, now: Millis, upstream_ready: bool) -> Self {
        let (up, down) = match p.audio_format {
            AudioFormat::Pcmu => (None, None),
            // The constructors fail only on invalid fixed parameters (never, with ours); if one
            // did, that direction would carry no audio rather than wrong-rate audio.
            AudioFormat::Pcm24k => (Upsampler::new().ok(), Downsampler::new().ok()),
        };
        let writer = OutboundWriter::new(&p.stream_sid);
        let vad = FrameVad::new(p.barge_in.vad_mode);
        let mut s = Self {
            writer,
            out: VecDeque::with_capacity(16),
            notices: Vec::new(),
            start: now,
            upstream: Upstream::Pending,
            phase: Phase::Live,
            end_reason: None,
            greeted: false,
            backlog: VecDeque::new(),
            bytes: Vec::with_capacity(FRAME_BYTES * 2),
            pcm8k: Vec::with_capacity(FRAME_BYTES * 2),
            pcm24k: Vec::with_capacity(FRAME_BYTES * 6),
            b64: String::with_capacity(1024),
            vad,
            speech_run_ms: 0,
            silence_gap_ms: 0,
            speech_onset: None,
            up,
            down,
            down_carry: None,
            held: FrameQueue::new(),
            frame: Vec::with_capacity(FRAME_BYTES),
            chunk_audio: Vec::with_capacity(FRAME_BYTES * DEFAULT_FRAMES_PER_MARK as usize),
            outstanding: Outstanding::default(),
            items: Vec::new(),
            item_index: HashMap::new(),
            cut_responses: HashSet::new(),
            response_active: None,
            cancel_sent: false,
            create_in_flight: None,
            last_create: None,
            create_queue: VecDeque::new(),
            create_seq: 0,
            last_activity: now,
            reconnects: Vec::new(),
            upstream_since: now,
            rotating: false,
            ending: None,
            side_effect_calls: HashSet::new(),
            deferred_barge_in: None,
            bookings: Vec::new(),
            transferred_to: None,
            transfer_number: None,
            ending_goodbye_requested: false,
            idle_prompts: 0,
            goodbye_requested: false,
            caller_turns: Vec::new(),
            caller_item_start: HashMap::new(),
            interruptions: 0,
            caller_talk_ms: 0,
            usage: Usage::default(),
            stats: CallStats::default(),
            p,
        };
        if upstream_ready {
            s.on_realtime_ready(now);
        }
        s
    }

    pub fn params(&self) -> &SessionParams {
        &self.p
    }

    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    /// The next thing to send or do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Things to log or count since the last call.
    pub fn drain_notices(&mut self) -> std::vec::Drain<'_, Notice> {
        self.notices.drain(..)
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        match self.phase {
            Phase::Apologizing { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// True while outputs are waiting to be drained.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// True once the call is over and every output has been drained.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Ended && self.out.is_empty()
    }

    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Whether the upstream socket is expected to be open.
    pub fn upstream_open(&self) -> bool {
        self.upstream != Upstream::Gone
    }

    /// Deadlines and the idle check. The idle check needs no precise wake-up: calling this
    /// about once a second is enough.
    pub fn handle_timeout(&mut self, now: Millis) {
        if let Phase::Apologizing { deadline } = self.phase
            && now >= deadline
        {
            self.end();
        }
        self.check_idle(now);
        self.check_rotation(now);
        self.check_ending();
    }

    fn on_function_call(&mut self, call_id: String, name: String, arguments: String) {
        match name.as_str() {
            "end_call" => {
                self.out.push_back(Output::Realtime(client::function_call_output(&call_id, r#"{"ok":true}"#)));
                self.ending.get_or_insert(Ending::Hangup);
                self.check_ending();
            }
            "transfer_call" => {
                let target = serde_json::from_str::<serde_json::Value>(&arguments)
                    .ok()
                    .and_then(|v| v.get("target").and_then(|t| t.as_str()).map(str::to_owned))
                    .filter(|t| !t.is_empty());
                let known = match &target {
                    None => !self.p.transfer_targets.is_empty(),
                    Some(t) => self.p.transfer_targets.iter().any(|x| x == t),
                };
                if !known || self.ending.is_some() {
                    let why = if self.p.transfer_targets.is_empty() {
                        "transfers are not available on this line".to_owned()
                    } else {
                        format!("unknown target; choose one of: {}", self.p.transfer_targets.join(", "))
                    };
                    let out = serde_json::json!({"ok": false, "error": why}).to_string();
                    self.out.push_back(Output::Realtime(client::function_call_output(&call_id, &out)));
                    self.request_response(None);
                    return;
                }
                let out = serde_json::json!({"ok": true, "transferring_to": target}).to_string();
                self.out.push_back(Output::Realtime(client::function_call_output(&call_id, &out)));
                self.ending = Some(Ending::Transfer { target, requested: false });
                self.check_ending();
            }
            _ => {
                if self.p.side_effect_tools.contains(&name) {
                    self.side_effect_calls.insert(call_id.clone());
                }
                self.out.push_back(Output::RunTool { call_id, name, arguments });
            }
        }
    }

    /// A tool's result: give it to the model, which then goes on. A barge-in that waited for
    /// a side-effecting tool happens now, if the caller is still talking.
    pub fn on_tool_result(&mut self, now: Millis, call_id: &str, output: &str) {
        let was_side_effect = self.side_effect_calls.remove(call_id);
        if self.phase != Phase::Live || self.upstream != Upstream::Ready {
            self.check_ending();
            return;
        }
        self.out.push_back(Output::Realtime(client::function_call_output(call_id, output)));
        self.request_response(None);
        self.last_activity = now;
        // The caller is still talking (the server has not seen the end of their speech, or
        // the local VAD still hears it): the interruption happens now.
        if was_side_effect
            && self.side_effect_calls.is_empty()
            && let Some(source) = self.deferred_barge_in.take()
            && (source == BargeInSource::ServerVad || self.speech_run_ms > 0)
        {
            self.barge_in(now, source);
        }
    }

    /// Why the call ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.end_reason.as_ref().map(|(r, _)| *r)
    }

    /// A booking `take_booking` validated and made: it goes into the call record.
    pub fn on_booking(&mut self, booking: crate::core::domain::booking::Booking) {
        self.bookings.push(booking);
    }

    /// After `end_call` / `transfer_call`: once the last words have been generated and heard,
    /// hang up, or ask the bridge to transfer.
    fn check_ending(&mut self) {
        // A tool that changes something (a booking) finishes first: its result belongs in the
        // record. Tools always answer within their timeout.
        if !self.ending_goodbye_requested
            || self.phase != Phase::Live
            || self.agent_busy()
            || !self.side_effect_calls.is_empty()
        {
            return;
        }
        match &mut self.ending {
            None => {}
            Some(Ending::Hangup) => {
                self.end_reason = Some((EndReason::AgentEnded, None));
                self.end();
            }
            Some(Ending::Transfer { target, requested }) if !*requested => {
                *requested = true;
                let target = target.clone();
                self.out.push_back(Output::Transfer { target });
            }
            Some(Ending::Transfer { .. }) => {}
        }
    }

    /// The bridge is redirecting the call to `number` (its REST answer follows).
    pub fn on_transfer_started(&mut self, number: &str) {
        self.transfer_number = Some(number.to_owned());
    }

    /// The bridge redirected the call: this stream ends (Twilio now dials the target).
    pub fn on_transferred(&mut self, _now: Millis, to: &str) {
        if self.phase != Phase::Live {
            return;
        }
        self.transferred_to = Some(to.to_owned());
        self.end_reason = Some((EndReason::Transferred, Some(format!("transferred to {to}"))));
        self.end();
    }

    /// The redirect failed: the agent says so and the call goes on.
    pub fn on_transfer_failed(&mut self, now: Millis, why: &str) {
        if self.phase != Phase::Live {
            return;
        }
        self.ending = None;
        self.ending_goodbye_requested = false;
        self.notices
            .push(Notice::UpstreamError { code: Some("transfer_failed".into()), message: Some(why.to_owned()) });
        if self.upstream == Upstream::Ready {
            self.request_response(Some(TRANSFER_FAILED));
        }
        self.last_activity = now;
    }

    fn agent_busy(&self) -> bool {
        self.agent_audio_pending()
            || self.response_active.is_some()
            || self.create_in_flight.is_some()
            || !self.create_queue.is_empty()
    }

    /// The caller is there: forget any idle prompt.
    fn caller_active(&mut self, now: Millis) {
        self.last_activity = now;
        self.idle_prompts = 0;
        self.goodbye_requested = false;
    }

    /// Between two turns: nothing playing or being generated, and the caller not talking.
    fn between_turns(&self) -> bool {
        !self.agent_busy() && self.speech_run_ms == 0
    }

    fn check_rotation(&mut self, now: Millis) {
        if self.rotating
            || self.phase != Phase::Live
            || self.upstream != Upstream::Ready
            || self.p.rotate_after_ms == 0
            || now.saturating_sub(self.upstream_since) < self.p.rotate_after_ms
            || !self.between_turns()
        {
            return;
        }
        self.rotating = true;
        self.out.push_back(Output::Rotate);
    }

    /// A fresh session is open and configured. Returns true if the bridge must swap it in now
    /// (then the session seeds it); false if a turn started meanwhile (the bridge closes it and
    /// the rotation is tried again at the next quiet moment).
    pub fn rotation_ready(&mut self, now: Millis) -> bool {
        self.rotating = false;
        if self.phase != Phase::Live || self.upstream != Upstream::Ready || !self.between_turns() {
            return false;
        }
        self.upstream_since = now;
        self.stats.rotations += 1;
        let seed = self.conversation_so_far("You are taking over this ongoing phone call; continue it seamlessly.");
        if !seed.is_empty() {
            self.out.push_back(Output::Realtime(client::system_text_item(&seed)));
        }
        true
    }

    /// Opening the fresh session failed; the current one carries on and the rotation is tried
    /// again in 30 s (the server's own limit still ends in a reconnect if it never succeeds).
    pub fn rotation_failed(&mut self, now: Millis) {
        self.rotating = false;
        self.upstream_since = now.saturating_sub(self.p.rotate_after_ms) + 30_000;
    }

    fn check_idle(&mut self, now: Millis) {
        if self.phase != Phase::Live || self.upstream != Upstream::Ready || self.p.idle_prompt_ms == 0 {
            return;
        }
        if self.agent_busy() {
            self.last_activity = now;
            return;
        }
        if self.goodbye_requested {
            // The goodbye has been said and heard.
            self.end_reason = Some((EndReason::IdleCaller, None));
            self.end();
            return;
        }
        if now.saturating_sub(self.last_activity) < u64::from(self.p.idle_prompt_ms) {
            return;
        }
        self.last_activity = now;
        self.idle_prompts += 1;
        if self.idle_prompts == 1 {
            self.request_response(Some(IDLE_PROMPT));
        } else {
            self.goodbye_requested = true;
            self.request_response(Some(IDLE_GOODBYE));
        }
    }

    // ------------------------------------------------------------------ upstream lifecycle

    /// The Realtime session is open and its `session.updated` checked: relay, then greet.
    pub fn on_realtime_ready(&mut self, now: Millis) {
        if self.phase != Phase::Live {
            return;
        }
        match self.upstream {
            Upstream::Pending => {}
            Upstream::Reconnecting => return self.on_realtime_restored(now),
            Upstream::Ready | Upstream::Gone => return,
        }
        self.upstream = Upstream::Ready;
        self.upstream_since = now;
        while let Some(m) = self.backlog.pop_front() {
            self.out.push_back(Output::Realtime(m));
        }
        if !self.greeted {
            self.greeted = true;
            let instructions = greeting_instructions(&self.p.greeting);
            self.request_response(Some(&instructions));
        }
    }

    /// The upstream dropped mid-call (closed, errored, expired). Within the reconnect budget:
    /// stop the lost response's audio, say the filler, ask the bridge for a new session and
    /// buffer the caller meanwhile. Beyond it: the apology.
    pub fn on_realtime_lost(&mut self, now: Millis, detail: &str) {
        if self.phase != Phase::Live || matches!(self.upstream, Upstream::Gone | Upstream::Reconnecting) {
            return;
        }
        if self.upstream == Upstream::Pending || self.reconnects.len() as u32 >= self.p.max_reconnects {
            return self.on_realtime_failed(now, detail);
        }
        self.reconnects.push(ReconnectRecord {
            at_ms: now.saturating_sub(self.start),
            reason: detail.to_owned(),
            restored_after_ms: None,
        });
        self.upstream = Upstream::Reconnecting;
        // Whatever the lost session was saying is gone: record what was heard, stop playing it.
        if self.agent_audio_pending() {
            self.snapshot_heard(now);
            for item in self.items.iter_mut() {
                if item.kind == ItemKind::Agent && item.heard_bytes < item.generated_bytes {
                    item.cut = true;
                    item.interrupted = true;
                }
            }
            self.clear_playback();
        }
        self.forget_responses();
        self.play_prerecorded(now, "switchboard-filler", self.p.filler);
        self.out.push_back(Output::Reconnect);
    }

    /// A new session replaced the dropped one: seed it with the conversation so far, let the
    /// caller's buffered audio through, and have the agent pick up where it was.
    fn on_realtime_restored(&mut self, now: Millis) {
        self.upstream = Upstream::Ready;
        self.upstream_since = now;
        self.rotating = false;
        if let Some(r) = self.reconnects.last_mut() {
            r.restored_after_ms = Some(now.saturating_sub(self.start).saturating_sub(r.at_ms));
        }
        let seed = self.conversation_so_far("The connection to you was briefly interrupted; the call goes on.");
        if !seed.is_empty() {
            self.out.push_back(Output::Realtime(client::system_text_item(&seed)));
        }
        while let Some(m) = self.backlog.pop_front() {
            self.out.push_back(Output::Realtime(m));
        }
        self.request_response(Some(RESUME));
    }

    /// The last turns as plain text, for seeding a new session.
    fn conversation_so_far(&self, preface: &str) -> String {
        let turns = self.transcript();
        let lines: Vec<String> = turns
            .iter()
            .rev()
            .take(SEED_TURNS)
            .rev()
            .filter(|t| !t.text.is_empty())
            .map(|t| format!("{}: {}", if t.speaker == Speaker::Caller { "Caller" } else { "Agent" }, t.text))
            .collect();
        if lines.is_empty() {
            return String::new();
        }
        format!(
            "{preface} The conversation so far (the agent's lines are what the caller actually heard):\n{}",
            lines.join("\n")
        )
    }

    /// Queues pre-rendered audio (apology, filler) as its own item and starts playing it.
    fn play_prerecorded(&mut self, now: Millis, id: &str, audio: &'static [u8]) {
        let idx = self.items.len();
        let mut item = AgentItem::new(id.into(), None, ItemKind::Apology, now.saturating_sub(self.start));
        item.generated_bytes = audio.len() as u64;
        item.generation_done = true;
        self.items.push(item);
        self.held.push(idx, audio);
        self.pump(now);
    }

    /// The Realtime session could not be opened, was misconfigured, or dropped: apologise in
    /// the tenant's language with pre-rendered audio, then hang up. No dead air.
    pub fn on_realtime_failed(&mut self, now: Millis, detail: &str) {
        if self.phase != Phase::Live {
            return;
        }
        if self.upstream != Upstream::Gone {
            self.upstream = Upstream::Gone;
            self.out.push_back(Output::CloseRealtime);
        }
        self.end_reason = Some((EndReason::UpstreamFailed, Some(detail.to_owned())));
        // Stop whatever agent audio is queued; the apology replaces it.
        if self.agent_audio_pending() {
            self.clear_playback();
        }
        self.forget_responses();
        let dur = self.p.apology.len() as u64 / 8;
        self.phase = Phase::Apologizing { deadline: now + dur + APOLOGY_SLACK_MS };
        self.play_prerecorded(now, "switchboard-apology", self.p.apology);
    }

    // ------------------------------------------------------------------ Twilio side

    /// One text frame from Twilio. Malformed frames are counted and ignored.
    pub fn handle_twilio_text(&mut self, now: Millis, text: &str) {
        let msg = match Inbound::parse(text) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed_in += 1;
                self.notices.push(Notice::MalformedTwilio(e.to_string()));
                return;
            }
        };
        match msg {
            Inbound::Media { payload, inbound, .. } => {
                if inbound {
                    self.on_media(now, &payload);
                }
            }
            Inbound::Mark { name } => self.on_mark(now, &name),
            Inbound::Dtmf { digit } => self.on_dtmf(now, &digit),
            Inbound::Stop { .. } => self.on_twilio_closed(now, EndReason::CallerHangup),
            Inbound::Connected { .. } => {}
            Inbound::Start(_) => {
                // A second start on the same socket is a protocol violation; ignore it.
                self.stats.malformed_in += 1;
                self.notices.push(Notice::MalformedTwilio("repeated start".into()));
            }
        }
    }

    /// The Twilio socket ended (`stop`, close, or error).
    pub fn on_twilio_closed(&mut self, _now: Millis, reason: EndReason) {
        if self.phase == Phase::Ended {
            return;
        }
        // A redirect makes Twilio stop this stream, possibly before its REST answer reaches
        // us: a stream that ends while a transfer is under way was transferred.
        if let (Some(Ending::Transfer { requested: true, .. }), Some(number)) = (&self.ending, &self.transfer_number) {
            let number = number.clone();
            self.transferred_to = Some(number.clone());
            self.end_reason = Some((EndReason::Transferred, Some(format!("transferred to {number}"))));
            self.end();
            return;
        }
        if self.end_reason.is_none() || reason == EndReason::CallerHangup {
            // A hang-up during the apology keeps the upstream failure as the reason.
            if !matches!(self.end_reason, Some((EndReason::UpstreamFailed, _))) {
                self.end_reason = Some((reason, None));
            }
        }
        self.end();
    }

    /// The daemon is shutting down: end now.
    pub fn on_shutdown(&mut self, _now: Millis) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.end_reason.is_none() {
            self.end_reason = Some((EndReason::Shutdown, None));
        }
        self.end();
    }

    /// An oversized or otherwise unusable stream: end it.
    pub fn on_protocol_error(&mut self, _now: Millis, detail: &str) {
        if self.phase == Phase::Ended {
            return;
        }
        self.end_reason = Some((EndReason::ProtocolError, Some(detail.to_owned())));
        self.end();
    }

    fn on_media(&mut self, now: Millis, payload: &str) {
        self.bytes.clear();
        if B64.decode_vec(payload.as_bytes(), &mut self.bytes).is_err() || self.bytes.is_empty() {
            self.stats.malformed_in += 1;
            self.notices.push(Notice::MalformedTwilio("media payload is not base64 audio".into()));
            return;
        }
        self.stats.frames_in += 1;
        mulaw::decode_into(&self.bytes, &mut self.pcm8k);
        let frame_ms = self.bytes.len() as u64 / 8;

        // Local VAD, 20 ms at a time (any remainder shorter than 10 ms is not classified).
        let mut speech = false;
        for chunk in self.pcm8k.chunks(FRAME_BYTES) {
            if self.vad.is_speech(chunk) {
                speech = true;
            }
        }
        self.track_speech(now, speech, frame_ms);

        if self.phase != Phase::Live {
            return;
        }
        let msg = match self.p.audio_format {
            // Pass-through: the caller's base64 is forwarded as received (it decoded, so it is
            // plain base64 and needs no escaping).
            AudioFormat::Pcmu => client::append_audio(payload),
            AudioFormat::Pcm24k => {
                self.pcm24k.clear();
                if let Some(up) = self.up.as_mut() {
                    up.process(&self.pcm8k, &mut self.pcm24k);
                }
                if self.pcm24k.is_empty() {
                    return;
                }
                self.bytes.clear();
                for s in &self.pcm24k {
                    self.bytes.extend_from_slice(&s.to_le_bytes());
                }
                self.b64.clear();
                B64.encode_string(&self.bytes, &mut self.b64);
                client::append_audio(&self.b64)
            }
        };
        match self.upstream {
            Upstream::Ready => self.out.push_back(Output::Realtime(msg)),
            Upstream::Pending | Upstream::Reconnecting => {
                if self.backlog.len() >= self.p.backlog_frames.max(1) {
                    self.backlog.pop_front();
                    self.stats.frames_dropped += 1;
                }
                self.backlog.push_back(msg);
            }
            Upstream::Gone => {}
        }
    }

    fn track_speech(&mut self, now: Millis, speech: bool, frame_ms: u64) {
        if speech {
            self.caller_active(now);
            if self.speech_run_ms == 0 {
                self.speech_onset = Some(now);
            }
            self.speech_run_ms += frame_ms;
            self.silence_gap_ms = 0;
            self.caller_talk_ms += frame_ms;
        } else {
            self.silence_gap_ms += frame_ms;
            if self.silence_gap_ms > VAD_HANGOVER_MS {
                self.speech_run_ms = 0;
                self.speech_onset = None;
            }
        }
        if self.speech_run_ms >= u64::from(self.p.barge_in.min_speech_ms) {
            self.barge_in(now, BargeInSource::LocalVad);
        }
    }

    fn on_mark(&mut self, now: Millis, name: &str) {
        match self.outstanding.ack(name, now) {
            Some(acks) => {
                // The agent was just heard: silence is measured from here.
                self.last_activity = now;
                for (tag, end) in acks {
                    self.stats.marks_acked += 1;
                    if let Some(item) = self.items.get_mut(tag) {
                        item.heard_bytes = item.heard_bytes.max(end);
                    }
                }
                self.pump(now);
                self.maybe_finish_apology();
                if self.goodbye_requested {
                    self.check_idle(now);
                }
                self.check_ending();
            }
            None => {
                // Echo of a cleared generation, or not ours: ignored by design.
            }
        }
    }

    fn on_dtmf(&mut self, now: Millis, digit: &str) {
        let valid = digit.len() == 1 && digit.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#');
        if !valid {
            self.stats.malformed_in += 1;
            self.notices.push(Notice::MalformedTwilio(format!("bad dtmf digit {digit:?}")));
            return;
        }
        self.stats.dtmf_digits += 1;
        self.caller_active(now);
        self.caller_turns.push(caller_turn(now.saturating_sub(self.start), format!("[pressed {digit}]"), None));
        let key = digit.chars().next().unwrap_or(' ');
        let action = self.p.key_actions.iter().find(|(k, _)| *k == key).map(|(_, a)| a.clone());
        if let Some(action) = action
            && self.ending.is_none()
            && self.phase == Phase::Live
        {
            let (ending, note) = match action {
                KeyAction::Transfer(target) if !self.p.transfer_targets.is_empty() => (
                    Ending::Transfer { target, requested: false },
                    format!(
                        "(The caller pressed {digit} to be transferred to a person; the call is being transferred.)"
                    ),
                ),
                KeyAction::Transfer(_) => return self.dtmf_to_model(digit),
                KeyAction::EndCall => {
                    (Ending::Hangup, format!("(The caller pressed {digit} to end the call; the call is ending.)"))
                }
            };
            let instructions = ending.instructions();
            self.ending = Some(ending);
            self.ending_goodbye_requested = true;
            if self.upstream == Upstream::Ready {
                self.out.push_back(Output::Realtime(client::user_text_item(&note)));
                self.request_response(Some(instructions));
            }
            self.check_ending();
            return;
        }
        self.dtmf_to_model(digit);
    }

    fn dtmf_to_model(&mut self, digit: &str) {
        if self.upstream == Upstream::Ready && self.phase == Phase::Live {
            let text = format!("(The caller pressed the key {digit} on their phone keypad.)");
            self.out.push_back(Output::Realtime(client::user_text_item(&text)));
            self.request_response(None);
        }
    }

    // ------------------------------------------------------------------ Realtime side

    /// One text frame from the Realtime API.
    pub fn handle_realtime_text(&mut self, now: Millis, text: &str) {
        let ev = match ServerEvent::parse(text) {
            Ok(ev) => ev,
            Err(e) => {
                self.stats.malformed_upstream += 1;
                self.notices.push(Notice::MalformedRealtime(e.to_string()));
                return;
            }
        };
        if self.upstream != Upstream::Ready {
            return;
        }
        match ev {
            ServerEvent::AudioDelta { item_id, delta, response_id } => {
                self.on_audio_delta(now, &item_id, response_id.as_deref(), &delta)
            }
            ServerEvent::SpeechStarted { item_id, .. } => {
                self.caller_active(now);
                if let Some(id) = item_id {
                    self.caller_item_start.insert(id, now.saturating_sub(self.start));
                }
                self.barge_in(now, BargeInSource::ServerVad);
            }
            ServerEvent::InputTranscriptionCompleted { item_id, transcript } => {
                self.push_caller_turn(now, item_id, transcript.trim().to_owned())
            }
            ServerEvent::InputTranscriptionFailed { item_id, .. } => {
                self.push_caller_turn(now, item_id, "(inaudible)".into())
            }
            ServerEvent::ResponseCreated { response_id } => {
                self.last_activity = now;
                self.create_in_flight = None;
                self.response_active = Some(response_id);
                self.cancel_sent = false;
            }
            ServerEvent::ResponseDone { response_id, usage, .. } => {
                self.last_activity = now;
                if let Some(u) = usage {
                    self.usage.add(&u);
                }
                for item in self.items.iter_mut().filter(|i| i.response_id.as_deref() == Some(&response_id)) {
                    item.generation_done = true;
                }
                self.flush_resampler_tail(now);
                if self.response_active.as_deref() == Some(response_id.as_str()) || response_id.is_empty() {
                    self.response_active = None;
                }
                self.cancel_sent = false;
                if let Some(ending) = &self.ending
                    && !self.ending_goodbye_requested
                {
                    // `end_call` / `transfer_call` came without spoken words in its response:
                    // ask for the goodbye (or the announcement).
                    let instructions = ending.instructions();
                    let said_something = self
                        .items
                        .iter()
                        .any(|i| i.response_id.as_deref() == Some(&response_id) && i.generated_bytes > 0);
                    self.ending_goodbye_requested = true;
                    if !said_something {
                        self.request_response(Some(instructions));
                    }
                }
                self.next_response();
                self.pump(now);
                self.check_ending();
            }
            ServerEvent::OutputItemAdded { response_id, item_id, item_type, role } => {
                if item_type == "message" && role.as_deref().is_none_or(|r| r == "assistant") {
                    self.item_for(now, &item_id, response_id.as_deref());
                }
            }
            ServerEvent::AudioDone { item_id } => {
                self.flush_resampler_tail(now);
                if let Some(&i) = self.item_index.get(&item_id) {
                    self.items[i].generation_done = true;
                }
                self.pump(now);
            }
            ServerEvent::TranscriptDelta { item_id, delta } => {
                if let Some(&i) = self.item_index.get(&item_id) {
                    self.items[i].transcript.push_str(&delta);
                }
            }
            ServerEvent::TranscriptDone { item_id, transcript } => {
                if let Some(&i) = self.item_index.get(&item_id) {
                    self.items[i].transcript = transcript;
                }
            }
            ServerEvent::Error(err) => {
                let busy = err.code.as_deref() == Some("conversation_already_has_active_response");
                let ours = match (err.event_id.as_deref(), &self.last_create) {
                    (Some(e), Some((id, _))) => e == id,
                    (None, Some(_)) => busy && self.create_in_flight.is_some(),
                    _ => false,
                };
                if ours && let Some(c) = self.last_create.take() {
                    self.create_in_flight = None;
                    if busy {
                        // The server started a response of its own first: ours waits its turn.
                        self.create_queue.push_front(c);
                    }
                    // Any other refusal drops that request; the queue must keep moving.
                    self.next_response();
                }
                let fatal = err.is_fatal();
                self.notices.push(Notice::UpstreamError { code: err.code.clone(), message: err.message.clone() });
                if fatal {
                    // e.g. `session_expired` at the 60-minute limit: a new session carries on.
                    let detail = format!("realtime error {}", err.code.as_deref().unwrap_or("unknown"));
                    self.on_realtime_lost(now, &detail);
                }
            }
            ServerEvent::FunctionCallArgumentsDone { call_id, name, arguments, .. } => {
                self.on_function_call(call_id, name, arguments)
            }
            ServerEvent::SpeechStopped { .. } => {
                // The caller finished before the side-effecting tool did: nothing to cut.
                if self.deferred_barge_in == Some(BargeInSource::ServerVad) {
                    self.deferred_barge_in = None;
                }
            }
            ServerEvent::SessionCreated
            | ServerEvent::SessionUpdated { .. }
            | ServerEvent::InputCommitted { .. }
            | ServerEvent::ItemTruncated { .. }
            | ServerEvent::Other(_) => {}
        }
    }

    fn push_caller_turn(&mut self, now: Millis, item_id: String, text: String) {
        let start_ms = self.caller_item_start.remove(&item_id).unwrap_or(now.saturating_sub(self.start));
        self.caller_turns.push(caller_turn(start_ms, text, Some(item_id)));
    }

    fn item_for(&mut self, now: Millis, item_id: &str, response_id: Option<&str>) -> usize {
        if let Some(&i) = self.item_index.get(item_id) {
            return i;
        }
        let i = self.items.len();
        self.items.push(AgentItem::new(
            item_id.to_owned(),
            response_id.map(str::to_owned),
            ItemKind::Agent,
            now.saturating_sub(self.start),
        ));
        self.item_index.insert(item_id.to_owned(), i);
        i
    }

    fn on_audio_delta(&mut self, now: Millis, item_id: &str, response_id: Option<&str>, delta: &str) {
        if self.phase != Phase::Live {
            return;
        }
        if response_id.is_some_and(|r| self.cut_responses.contains(r)) {
            self.stats.late_deltas_dropped += 1;
            return;
        }
        let idx = self.item_for(now, item_id, response_id);
        if self.items[idx].cut {
            self.stats.late_deltas_dropped += 1;
            return;
        }
        self.bytes.clear();
        if B64.decode_vec(delta.as_bytes(), &mut self.bytes).is_err() {
            self.stats.malformed_upstream += 1;
            self.notices.push(Notice::MalformedRealtime("audio delta is not base64".into()));
            return;
        }
        match self.p.audio_format {
            AudioFormat::Pcmu => {
                self.items[idx].generated_bytes += self.bytes.len() as u64;
                self.held.push(idx, &self.bytes);
            }
            AudioFormat::Pcm24k => {
                self.items[idx].generated_pcm24k_bytes += self.bytes.len() as u64;
                self.pcm24k.clear();
                let mut raw = self.bytes.as_slice();
                if let Some(lo) = self.down_carry.take()
                    && let Some((&hi, rest)) = raw.split_first()
                {
                    self.pcm24k.push(i16::from_le_bytes([lo, hi]));
                    raw = rest;
                }
                let mut pairs = raw.chunks_exact(2);
                self.pcm24k.extend(pairs.by_ref().map(|b| i16::from_le_bytes([b[0], b[1]])));
                if let [odd] = pairs.remainder() {
                    self.down_carry = Some(*odd);
                }
                self.resample_down_into_item(idx);
            }
        }
        self.pump(now);
    }

    /// Downsamples `self.pcm24k` and appends the mu-law result to item `idx`.
    fn resample_down_into_item(&mut self, idx: usize) {
        self.pcm8k.clear();
        if let Some(down) = self.down.as_mut() {
            down.process(&self.pcm24k, &mut self.pcm8k);
        }
        self.bytes.clear();
        mulaw::encode_into(&self.pcm8k, &mut self.bytes);
        self.items[idx].generated_bytes += self.bytes.len() as u64;
        self.held.push(idx, &self.bytes);
    }

    /// In pcm24k mode the downsampler holds back up to one chunk; flush it at item end so the
    /// last syllable is not lost.
    fn flush_resampler_tail(&mut self, _now: Millis) {
        if self.p.audio_format != AudioFormat::Pcm24k {
            return;
        }
        let Some(idx) = self.items.iter().rposition(|i| i.kind == ItemKind::Agent && !i.cut) else {
            return;
        };
        if self.items[idx].tail_flushed || self.items[idx].generated_pcm24k_bytes == 0 {
            return;
        }
        self.items[idx].tail_flushed = true;
        self.down_carry = None;
        self.pcm8k.clear();
        if let Some(down) = self.down.as_mut() {
            down.flush(&mut self.pcm8k);
        }
        self.bytes.clear();
        mulaw::encode_into(&self.pcm8k, &mut self.bytes);
        self.items[idx].generated_bytes += self.bytes.len() as u64;
        self.held.push(idx, &self.bytes);
    }

    // ------------------------------------------------------------------ outbound pacing

    /// Sends held frames while less than the playback lead is queued at Twilio, closing each
    /// chunk of `frames_per_mark` frames (or of one item, or of what is available) with a mark.
    fn pump(&mut self, now: Millis) {
        if self.phase == Phase::Ended {
            return;
        }
        let lead = u64::from(self.p.barge_in.playback_lead_ms) * 8;
        let per_mark = self.p.frames_per_mark.max(1);
        let mut chunk: Option<(usize, u64, u32)> = None; // (item, bytes, frames)
        while self.outstanding.queued_bytes() + chunk.map_or(0, |c| c.1) < lead {
            let Some((tag, avail)) = self.held.front() else { break };
            let done = self.items.get(tag).is_none_or(|i| i.generation_done);
            if avail < FRAME_BYTES && !done && !self.held.has_later() {
                break; // wait for the rest of the frame
            }
            if let Some((ctag, _, _)) = chunk
                && ctag != tag
            {
                self.close_chunk(now, chunk.take());
            }
            let Some(tag) = self.held.pop(FRAME_BYTES, &mut self.frame) else { break };
            self.chunk_audio.extend_from_slice(&self.frame);
            self.stats.frames_out += 1;
            let n = self.frame.len() as u64;
            let item = &mut self.items[tag];
            item.sent_bytes += n;
            if item.first_sent_ms.is_none() {
                item.first_sent_ms = Some(now.saturating_sub(self.start));
                if self.stats.first_audio_ms.is_none() && item.kind == ItemKind::Agent {
                    self.stats.first_audio_ms = Some(now.saturating_sub(self.start));
                }
            }
            let c = chunk.get_or_insert((tag, 0, 0));
            c.1 += n;
            c.2 += 1;
            if c.2 >= per_mark {
                self.close_chunk(now, chunk.take());
            }
        }
        self.close_chunk(now, chunk);
    }

    /// Sends the chunk's audio as one `media` message (Twilio accepts any length and plays it
    /// in order; one message instead of one per 20 ms frame saves framing on both sides),
    /// then its mark.
    fn close_chunk(&mut self, now: Millis, chunk: Option<(usize, u64, u32)>) {
        let Some((tag, bytes, _)) = chunk else { return };
        if !self.chunk_audio.is_empty() {
            self.b64.clear();
            B64.encode_string(&self.chunk_audio, &mut self.b64);
            self.chunk_audio.clear();
            self.out.push_back(Output::Twilio(self.writer.media(&self.b64)));
        }
        let end = self.items[tag].sent_bytes;
        let name = self.outstanding.push(tag, end, bytes, now);
        self.out.push_back(Output::Twilio(self.writer.mark(&name)));
        self.stats.marks_sent += 1;
    }

    fn agent_audio_pending(&self) -> bool {
        self.outstanding.queued_bytes() > 0 || self.held.held_bytes() > 0
    }

    /// Drops everything queued at Twilio and held locally; later echoes are ignored.
    fn clear_playback(&mut self) {
        self.out.push_back(Output::Twilio(self.writer.clear()));
        self.outstanding.clear_generation();
        self.held.clear();
        // In pcm24k mode the downsampler still holds the cut audio's tail.
        if let Some(d) = self.down.as_mut() {
            d.reset();
        }
        self.down_carry = None;
    }

    /// Records what each item has been heard up to now: echoed marks, plus the playback clock
    /// inside the chunk playing now.
    fn snapshot_heard(&mut self, now: Millis) {
        for (idx, item) in self.items.iter_mut().enumerate() {
            if let Some(pos) = self.outstanding.playing_position(idx, now) {
                item.heard_bytes = item.heard_bytes.max(pos);
            }
        }
    }

    /// The upstream is gone: no response is active, requested or waiting any more.
    fn forget_responses(&mut self) {
        self.response_active = None;
        self.cancel_sent = false;
        self.create_in_flight = None;
        self.last_create = None;
        self.create_queue.clear();
    }

    /// The caller talks over the agent: `clear`, truncate to what was heard, cancel.
    fn barge_in(&mut self, now: Millis, source: BargeInSource) {
        // The goodbye after `end_call` (or the transfer announcement) is not interruptible.
        if !self.p.barge_in.enabled || self.ending.is_some() || self.phase != Phase::Live || !self.agent_audio_pending()
        {
            return;
        }
        // A tool that changes something is running: the caller's interruption waits for its
        // result (then applies if they are still talking).
        if !self.side_effect_calls.is_empty() {
            self.deferred_barge_in = Some(source);
            return;
        }
        // Before `clear` makes Twilio echo every pending mark.
        self.snapshot_heard(now);
        let mut first_end = None;
        let pending: Vec<usize> = self
            .items
            .iter()
            .enumerate()
            .filter(|(_, i)| i.kind == ItemKind::Agent && !i.cut && i.heard_bytes < i.generated_bytes)
            .map(|(n, _)| n)
            .collect();
        self.clear_playback();
        // The active response is abandoned too, even if none of its audio has arrived yet:
        // its late deltas must not play over the caller.
        if let Some(r) = &self.response_active {
            self.cut_responses.insert(r.clone());
        }
        for item in
            self.items.iter_mut().filter(|i| i.kind == ItemKind::Agent && !i.generation_done && i.generated_bytes == 0)
        {
            item.cut = true;
        }
        for idx in pending {
            let item = &mut self.items[idx];
            item.cut = true;
            item.interrupted = true;
            let end = item.heard_ms().min(item.generated_ms());
            if let Some(r) = &item.response_id
                && !item.generation_done
            {
                self.cut_responses.insert(r.clone());
            }
            if item.generated_bytes > 0 {
                self.out.push_back(Output::Realtime(client::truncate(&item.item_id, end)));
                first_end.get_or_insert(end);
            }
        }
        // The server cancels on its own `speech_started` (interrupt_response): no second cancel.
        if self.response_active.is_some() && !self.cancel_sent && source == BargeInSource::LocalVad {
            self.cancel_sent = true;
            self.out.push_back(Output::Realtime(client::response_cancel()));
        } else if source == BargeInSource::ServerVad {
            self.cancel_sent = true;
        }
        self.interruptions += 1;
        let latency_ms = now.saturating_sub(self.speech_onset.unwrap_or(now));
        self.stats.barge_in_max_ms = Some(self.stats.barge_in_max_ms.unwrap_or(0).max(latency_ms));
        self.notices.push(Notice::BargeIn { source, latency_ms, audio_end_ms: first_end });
    }

    // ------------------------------------------------------------------ responses

    fn request_response(&mut self, instructions: Option<&str>) {
        self.create_seq += 1;
        let id = format!("sb_resp_{}", self.create_seq);
        let msg = client::response_create(&id, instructions);
        self.create_queue.push_back((id, msg));
        self.next_response();
    }

    fn next_response(&mut self) {
        if self.response_active.is_some() || self.create_in_flight.is_some() || self.upstream != Upstream::Ready {
            return;
        }
        if let Some((id, msg)) = self.create_queue.pop_front() {
            self.out.push_back(Output::Realtime(msg.clone()));
            self.create_in_flight = Some((id.clone(), msg.clone()));
            self.last_create = Some((id, msg));
        }
    }

    // ------------------------------------------------------------------ ending

    fn maybe_finish_apology(&mut self) {
        if matches!(self.phase, Phase::Apologizing { .. })
            && self.outstanding.queued_bytes() == 0
            && self.held.held_bytes() == 0
        {
            self.end();
        }
    }

    fn end(&mut self) {
        if self.phase == Phase::Ended {
            return;
        }
        self.phase = Phase::Ended;
        if self.upstream != Upstream::Gone {
            self.upstream = Upstream::Gone;
            self.out.push_back(Output::CloseRealtime);
        }
        if self.end_reason.is_none() {
            self.end_reason = Some((EndReason::StreamClosed, None));
        }
        self.out.push_back(Output::Hangup);
    }

    /// Caller and agent turns in call order; agent turns hold what the caller heard.
    fn transcript(&self) -> Vec<TranscriptTurn> {
        let mut turns = self.caller_turns.clone();
        turns.extend(self.items.iter().filter(|i| i.kind == ItemKind::Agent).filter_map(AgentItem::turn));
        turns.sort_by_key(|t| t.start_ms);
        turns
    }

    /// The call record. Call once, after the session ended (or to force an end).
    pub fn into_record(mut self, now: Millis) -> CallRecord {
        if self.phase != Phase::Ended {
            self.on_twilio_closed(now, EndReason::StreamClosed);
        }
        let duration_ms = now.saturating_sub(self.start);
        let (end_reason, end_detail) = self.end_reason.clone().unwrap_or((EndReason::StreamClosed, None));
        let transcript = self.transcript();
        let agent_talk_ms = self.items.iter().filter(|i| i.kind == ItemKind::Agent).map(AgentItem::heard_ms).sum();
        CallRecord {
            tenant_id: self.p.tenant_id.clone(),
            call_sid: self.p.call_sid.clone(),
            stream_sid: self.p.stream_sid.clone(),
            from: self.p.from.clone(),
            to: self.p.to.clone(),
            started_at_ms: self.p.started_at_unix_ms,
            ended_at_ms: self.p.started_at_unix_ms + duration_ms,
            duration_ms,
            end_reason,
            end_detail,
            transcript,
            interruptions: self.interruptions,
            caller_talk_ms: self.caller_talk_ms,
            agent_talk_ms,
            usage: self.usage,
            stats: self.stats,
            reconnects: self.reconnects,
            bookings: self.bookings,
            transferred_to: self.transferred_to,
        }
    }
}

fn caller_turn(start_ms: u64, text: String, item_id: Option<String>) -> TranscriptTurn {
    TranscriptTurn {
        speaker: Speaker::Caller,
        start_ms,
        text,
        item_id,
        interrupted: false,
        heard_ms: None,
        generated_ms: None,
        generated_text: None,
    }
}

#[cfg(test)]
mod tests;
