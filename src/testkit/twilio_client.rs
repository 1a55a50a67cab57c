//! A fake Twilio: the signed voice webhook, and a Media Streams client that behaves like
//! Twilio on a bidirectional `<Connect><Stream>` call (protocols.md A.3, A.4).
//!
//! - [`sign`], [`post_webhook`], [`parse_twiml_stream`]: the webhook leg.
//! - [`TwilioCall`]: the WebSocket leg. It sends `connected` and `start`, then one 160-byte
//!   `media` frame every 20 ms on a drift-free deadline clock: queued caller audio
//!   ([`TwilioCall::play`]) or μ-law silence, as Twilio does. What the daemon sends back is
//!   checked (only `media`, `mark`, `clear`, with our `streamSid` and no extra fields) and
//!   played out on a real-time playback clock (8 bytes per ms): a `mark` is echoed when the
//!   audio queued before it has played (at once if nothing is queued), and `clear` drops the
//!   queued audio and echoes every pending mark immediately.
//!
//! # Clocks, for measuring barge-in
//!
//! * **Caller-audio time** (`caller_audio_ms`): milliseconds of caller audio sent so far
//!   (`frames × 20`). [`TwilioCall::play`] returns the caller-audio ms at which the clip will
//!   start; each [`ClearRecord`] carries the caller-audio ms when the `clear` arrived. Their
//!   difference is the barge-in delay in audio time.
//! * **Playback**: a [`PlaybackRun`] is one stretch of continuous playback: it starts when
//!   audio arrives while nothing is playing and ends when the queue drains or a `clear` cuts it.
//!   With the daemon streaming an item faster than real time, one agent item is one run, so
//!   [`ClearRecord::run_played_ms`] is what the caller heard of the interrupted item: compare it
//!   with the `audio_end_ms` of the daemon's `conversation.item.truncate`.
//!
//! Every task is bounded: the call hangs up by itself after [`StartParams::max_duration`], and
//! everything stops when the [`TwilioCall`] is dropped. Only `127.0.0.1`/`localhost` targets are
//! accepted by [`post_webhook`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// μ-law bytes per 20 ms frame.
const FRAME_BYTES: usize = 160;
const FRAME: Duration = Duration::from_millis(20);
/// One μ-law byte lasts 125 µs.
const BYTE_NANOS: u128 = 125_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------------------------------------------------------
// Webhook leg

/// `X-Twilio-Signature` (A.3.1): base64(HMAC-SHA1(auth_token, url + each name+value, sorted
/// by name then value)). For the WebSocket upgrade pass the `wss://` URL and no params.
pub fn sign(auth_token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = String::from(url);
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = match Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(), // unreachable: HMAC takes keys of any length
    };
    mac.update(data.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// `application/x-www-form-urlencoded` encoding of one component (`+` becomes `%2B`).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Splits `http://host:port/prefix` into (`host:port`, `/prefix` without trailing slash).
fn split_local_base(base: &str) -> anyhow::Result<(String, String)> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("post_webhook: base must be http://127.0.0.1:PORT, got {base:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    if host != "127.0.0.1" && host != "localhost" {
        anyhow::bail!("post_webhook: only 127.0.0.1/localhost targets are allowed, got {host:?}");
    }
    let authority = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    Ok((authority, path.to_string()))
}

/// Twilio's voice webhook: `POST {base}/twiml`, form-encoded, signed (when `auth_token` is
/// given) over `{public_base}/twiml` — the URL Twilio believes it called. Returns the HTTP
/// status and body. A minimal HTTP/1.1 client (`Connection: close`), bounded to 5 s.
pub async fn post_webhook(
    base: &str,
    public_base: &str,
    auth_token: Option<&str>,
    params: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let (authority, prefix) = split_local_base(base)?;
    let body: Vec<String> = params.iter().map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v))).collect();
    let body = body.join("&");
    let mut request = format!(
        "POST {prefix}/twiml HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: TwilioProxy/1.1\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nAccept: */*\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(token) = auth_token {
        let url = format!("{}/twiml", public_base.trim_end_matches('/'));
        request.push_str(&format!("X-Twilio-Signature: {}\r\n", sign(token, &url, params)));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let exchange = async {
        let mut tcp = TcpStream::connect(authority.as_str()).await?;
        tcp.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        tcp.take(4 << 20).read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("post_webhook: no complete answer within 5 s"))??;
    parse_http_response(&raw)
}

fn parse_http_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("HTTP response without a header terminator"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad HTTP status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if name == "content-length" {
                length = value.parse::<usize>().ok();
            }
        }
    }
    if chunked {
        body = dechunk(&body)?;
    } else if let Some(n) = length {
        body.truncate(n);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol =
            data.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow::anyhow!("truncated chunked body"))?;
        let size_field = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_field.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| anyhow::anyhow!("bad chunk size {size_field:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            anyhow::bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// The `<Stream>` of a TwiML answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwimlStream {
    /// `url` attribute, XML entities decoded.
    pub url: String,
    /// Every attribute of `<Stream>` (url, name, statusCallback, …), in document order.
    pub attributes: Vec<(String, String)>,
    /// `<Parameter name value>` children, in document order.
    pub parameters: Vec<(String, String)>,
    /// Whether the `<Stream>` sits inside `<Connect>` (bidirectional) rather than `<Start>`.
    pub bidirectional: bool,
}

impl TwimlStream {
    /// Value of the `<Parameter>` named `name`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Decodes the five XML entities and numeric character references.
pub fn xml_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") || e.starts_with("#X") => {
                u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32)
            }
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Finds the tag starting at `start` (at its `<`); returns (attributes, end index after `>`,
/// self-closing). Quote-aware; `None` if the tag is not terminated.
/// A parsed start tag: attributes, index just past its `>`, and whether it is self-closing.
type Tag = (Vec<(String, String)>, usize, bool);

fn read_tag(doc: &str, start: usize, name: &str) -> Option<Tag> {
    let bytes = doc.as_bytes();
    let mut i = start + 1 + name.len();
    let mut attrs = Vec::new();
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        match bytes.get(i)? {
            b'>' => return Some((attrs, i + 1, false)),
            b'/' if bytes.get(i + 1) == Some(&b'>') => return Some((attrs, i + 2, true)),
            _ => {}
        }
        let name_start = i;
        while i < bytes.len() && !matches!(bytes[i], b'=' | b'>' | b'/') && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let attr = doc[name_start..i].to_string();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            if attr.is_empty() {
                i += 1; // stray character: skip it
            } else {
                attrs.push((attr, String::new()));
            }
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let quote = *bytes.get(i)?;
        if quote != b'"' && quote != b'\'' {
            return None;
        }
        let value_end = i + 1 + doc[i + 1..].find(quote as char)?;
        attrs.push((attr, xml_unescape(&doc[i + 1..value_end])));
        i = value_end + 1;
    }
}

/// Position of the next `<name` tag (followed by whitespace, `/` or `>`) at or after `from`.
fn find_tag(doc: &str, name: &str, from: usize) -> Option<usize> {
    let needle = format!("<{name}");
    let mut at = from;
    while let Some(i) = doc.get(at..)?.find(&needle) {
        let pos = at + i;
        match doc.as_bytes().get(pos + needle.len()) {
            Some(c) if c.is_ascii_whitespace() || *c == b'/' || *c == b'>' => return Some(pos),
            _ => at = pos + needle.len(),
        }
    }
    None
}

/// Extracts the first `<Stream>` (its `url`, attributes and `<Parameter>` children) from a
/// TwiML document by simple string scanning. `None` if there is no `<Stream url=…>`.
pub fn parse_twiml_stream(twiml: &str) -> Option<TwimlStream> {
    let start = find_tag(twiml, "Stream", 0)?;
    let (attributes, after, self_closing) = read_tag(twiml, start, "Stream")?;
    let url = attributes.iter().find(|(k, _)| k == "url").map(|(_, v)| v.clone())?;
    let mut parameters = Vec::new();
    if !self_closing {
        let end = twiml[after..].find("</Stream").map_or(twiml.len(), |e| after + e);
        let mut at = after;
        while let Some(p) = find_tag(twiml, "Parameter", at).filter(|&p| p < end) {
            let Some((attrs, next, _)) = read_tag(twiml, p, "Parameter") else { break };
            let get = |n: &str| attrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            if let Some(name) = get("name") {
                parameters.push((name, get("value").unwrap_or_default()));
            }
            at = next;
        }
    }
    let before = &twiml[..start];
    let bidirectional = match (before.rfind("<Connect"), before.rfind("<Start")) {
        (Some(c), Some(s)) => c > s,
        (Some(_), None) => true,
        _ => false,
    };
    Some(TwimlStream { url, attributes, parameters, bidirectional })
}

// ------------------------------------------------------------------------------------------
// Media Streams leg

/// What `start` announces. [`StartParams::default`] makes fresh random sids.
#[derive(Debug, Clone)]
pub struct StartParams {
    /// `MZ` + 32 hex.
    pub stream_sid: String,
    /// `CA` + 32 hex.
    pub call_sid: String,
    /// `AC` + 32 hex.
    pub account_sid: String,
    /// `start.customParameters`, from the TwiML `<Parameter>`s.
    pub custom_parameters: Vec<(String, String)>,
    /// The call hangs up (`stop` + close) by itself after this long (default 10 min).
    pub max_duration: Duration,
}

fn sid(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

impl Default for StartParams {
    fn default() -> Self {
        Self {
            stream_sid: sid("MZ"),
            call_sid: sid("CA"),
            account_sid: sid("AC"),
            custom_parameters: Vec::new(),
            max_duration: Duration::from_secs(600),
        }
    }
}

impl StartParams {
    /// Fresh sids and the stream's `<Parameter>`s as `customParameters`.
    pub fn from_stream(stream: &TwimlStream) -> Self {
        Self { custom_parameters: stream.parameters.clone(), ..Self::default() }
    }

    /// Sets the `callSid` (use the `CallSid` posted to the webhook).
    pub fn with_call_sid(mut self, call_sid: &str) -> Self {
        self.call_sid = call_sid.to_string();
        self
    }

    /// Sets the `accountSid`.
    pub fn with_account_sid(mut self, account_sid: &str) -> Self {
        self.account_sid = account_sid.to_string();
        self
    }
}

/// The daemon refused the WebSocket upgrade with this HTTP status (e.g. 403 for a bad
/// signature). Returned inside the `anyhow::Error` of [`TwilioCall::connect`]; use
/// `err.downcast_ref::<UpgradeRefused>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("WebSocket upgrade refused with HTTP {0}")]
pub struct UpgradeRefused(pub u16);

/// One stretch of continuous playback (see the module docs): it begins when audio arrives
/// while nothing plays and ends at a `clear`, or when the queue drains and no audio follows
/// within 100 ms (shorter underruns do not split a run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybackRun {
    pub started_at: Instant,
    /// Caller-audio ms when the run's first byte arrived.
    pub started_caller_ms: u64,
    pub received_bytes: u64,
    pub played_bytes: u64,
    /// When playback stopped (queue drained, or `clear`); `None` while playing.
    pub ended_at: Option<Instant>,
    /// Ended by a `clear`.
    pub cleared: bool,
}

impl PlaybackRun {
    pub fn played_ms(&self) -> u64 {
        self.played_bytes / 8
    }
    pub fn received_ms(&self) -> u64 {
        self.received_bytes / 8
    }
}

/// One `clear` from the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearRecord {
    pub at: Instant,
    /// Caller-audio ms when the `clear` arrived.
    pub caller_audio_ms: u64,
    /// Total ms played over the whole call when the `clear` arrived.
    pub played_ms_total: u64,
    /// Ms played of the run the `clear` cut (0 if nothing was playing): what the caller heard
    /// of the interrupted item.
    pub run_played_ms: u64,
    /// Ms received in that run.
    pub run_received_ms: u64,
    /// Ms of queued audio the `clear` dropped.
    pub dropped_ms: u64,
    /// Pending marks echoed because of this `clear`.
    pub marks_flushed: usize,
}

/// One mark echoed back to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkEcho {
    pub name: String,
    pub received_at: Instant,
    /// When playback reached it (= when the `clear` arrived, for flushed marks).
    pub due_at: Instant,
    /// When the echo was handed to the socket.
    pub echoed_at: Instant,
    /// Echoed because of a `clear`, not because its audio played.
    pub cleared: bool,
}

/// Counters, as of one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallStats {
    pub frames_sent: u64,
    pub caller_audio_ms: u64,
    /// Caller audio still queued by `play` (ms).
    pub caller_queued_ms: u64,
    pub media_received: u64,
    pub received_ms: u64,
    pub played_ms: u64,
    /// Agent audio queued and not yet played (ms).
    pub queued_ms: u64,
    pub marks_received: u64,
    pub marks_echoed: u64,
    pub clears: usize,
    pub dtmf_sent: u64,
    pub closed: bool,
    pub violations: usize,
}

enum Entry {
    /// `chunk` indexes [`Playback::chunks`].
    Audio {
        bytes: Vec<u8>,
        offset: usize,
        chunk: usize,
    },
    Mark {
        name: String,
        received_at: Instant,
    },
}

/// A mark reached by playback (or flushed by `clear`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reached {
    name: String,
    received_at: Instant,
    due_at: Instant,
    cleared: bool,
}

/// Twilio's outbound queue and real-time playback clock, without any I/O: time is an argument.
struct Playback {
    queue: VecDeque<Entry>,
    queued_audio: usize,
    /// Time up to which playback is accounted for.
    clock: Instant,
    played: Vec<u8>,
    played_total: u64,
    runs: Vec<PlaybackRun>,
    current: Option<usize>,
    /// Every `media` payload received: (arrival, bytes played of it).
    chunks: Vec<(Instant, u64)>,
}

/// Playback that resumes within this gap after draining continues the same run (a daemon
/// pacing its output may underrun by a frame or two inside one item).
const RUN_GAP: Duration = Duration::from_millis(100);

impl Playback {
    fn new(now: Instant) -> Self {
        Self {
            queue: VecDeque::new(),
            queued_audio: 0,
            clock: now,
            played: Vec::new(),
            played_total: 0,
            runs: Vec::new(),
            current: None,
            chunks: Vec::new(),
        }
    }

    /// Plays out everything due by `now`; returns the marks reached, in order.
    fn advance(&mut self, now: Instant) -> Vec<Reached> {
        let mut reached = Vec::new();
        loop {
            while matches!(self.queue.front(), Some(Entry::Mark { .. })) {
                if let Some(Entry::Mark { name, received_at }) = self.queue.pop_front() {
                    reached.push(Reached { name, received_at, due_at: self.clock.max(received_at), cleared: false });
                }
            }
            if self.queued_audio == 0 {
                if let Some(run) = self.current.take().and_then(|i| self.runs.get_mut(i)) {
                    run.ended_at = Some(self.clock);
                }
                self.clock = self.clock.max(now);
                break;
            }
            let budget = (now.saturating_duration_since(self.clock).as_nanos() / BYTE_NANOS) as usize;
            if budget == 0 {
                break;
            }
            let Some(Entry::Audio { bytes, offset, chunk }) = self.queue.front_mut() else { break };
            let n = budget.min(bytes.len() - *offset);
            self.played.extend_from_slice(&bytes[*offset..*offset + n]);
            *offset += n;
            let done = *offset == bytes.len();
            if let Some(c) = self.chunks.get_mut(*chunk) {
                c.1 += n as u64;
            }
            self.played_total += n as u64;
            self.queued_audio -= n;
            self.clock += Duration::from_nanos((n as u128 * BYTE_NANOS) as u64);
            if let Some(run) = self.current.and_then(|i| self.runs.get_mut(i)) {
                run.played_bytes += n as u64;
            }
            if done {
                self.queue.pop_front();
            }
        }
        reached
    }

    /// Queues agent audio arriving at `now` (call `advance(now)` first).
    fn push_audio(&mut self, now: Instant, bytes: Vec<u8>, caller_ms: u64) {
        if bytes.is_empty() {
            return;
        }
        if self.queued_audio == 0 {
            self.clock = now;
        }
        if self.current.is_none()
            && let Some(last) = self.runs.last_mut()
            && !last.cleared
            && last.ended_at.is_some_and(|end| now.saturating_duration_since(end) < RUN_GAP)
        {
            last.ended_at = None;
            self.current = Some(self.runs.len() - 1);
        }
        if self.current.is_none() {
            self.runs.push(PlaybackRun {
                started_at: now,
                started_caller_ms: caller_ms,
                received_bytes: 0,
                played_bytes: 0,
                ended_at: None,
                cleared: false,
            });
            self.current = Some(self.runs.len() - 1);
        }
        if let Some(run) = self.current.and_then(|i| self.runs.get_mut(i)) {
            run.received_bytes += bytes.len() as u64;
        }
        self.queued_audio += bytes.len();
        self.chunks.push((now, 0));
        self.queue.push_back(Entry::Audio { bytes, offset: 0, chunk: self.chunks.len() - 1 });
    }

    /// Queues a mark arriving at `now` (call `advance(now)` first); echoed at once when no
    /// audio is queued.
    fn push_mark(&mut self, now: Instant, name: String) -> Option<Reached> {
        if self.queued_audio == 0 {
            return Some(Reached { name, received_at: now, due_at: now, cleared: false });
        }
        self.queue.push_back(Entry::Mark { name, received_at: now });
        None
    }

    /// `clear` at `now` (call `advance(now)` first): drops queued audio, flushes marks.
    /// Returns (flushed marks, dropped bytes, played bytes of the cut run, received bytes of it).
    fn clear(&mut self, now: Instant) -> (Vec<Reached>, usize, u64, u64) {
        let dropped = self.queued_audio;
        let mut flushed = Vec::new();
        for entry in self.queue.drain(..) {
            if let Entry::Mark { name, received_at } = entry {
                flushed.push(Reached { name, received_at, due_at: now, cleared: true });
            }
        }
        self.queued_audio = 0;
        self.clock = now;
        let (mut played, mut received) = (0, 0);
        if let Some(run) = self.current.take().and_then(|i| self.runs.get_mut(i)) {
            run.ended_at = Some(now);
            run.cleared = true;
            played = run.played_bytes;
            received = run.received_bytes;
        }
        (flushed, dropped, played, received)
    }

    /// Bytes played of the audio that arrived in `[from, to)`.
    fn played_between(&self, from: Instant, to: Instant) -> u64 {
        self.chunks.iter().filter(|(at, _)| *at >= from && *at < to).map(|(_, played)| played).sum()
    }

    /// When the next queued mark falls due, if any.
    fn next_due(&self) -> Option<Instant> {
        let mut bytes = 0usize;
        for entry in &self.queue {
            match entry {
                Entry::Audio { bytes: b, offset, .. } => bytes += b.len() - offset,
                Entry::Mark { .. } => {
                    return Some(self.clock + Duration::from_nanos((bytes as u128 * BYTE_NANOS) as u64));
                }
            }
        }
        None
    }
}

enum Outgoing {
    /// A message without `sequenceNumber` (the sender numbers it).
    Event(Value),
    /// Send `stop`, then close the socket.
    Stop,
}

struct State {
    stream_sid: String,
    caller_queue: VecDeque<u8>,
    frames_sent: u64,
    frame_times: Vec<Instant>,
    playback: Playback,
    received: Vec<u8>,
    media_received: u64,
    marks_received: u64,
    echoes: Vec<MarkEcho>,
    clears: Vec<ClearRecord>,
    violations: Vec<String>,
    dtmf_sent: u64,
    closed: bool,
    close_frame: Option<(u16, String)>,
    out: mpsc::UnboundedSender<Outgoing>,
}

impl State {
    fn caller_ms(&self) -> u64 {
        self.frames_sent * 20
    }

    fn violation(&mut self, msg: String) {
        tracing::warn!(target: "testkit::twilio_client", "violation: {msg}");
        self.violations.push(msg);
    }

    fn echo(&mut self, marks: Vec<Reached>) {
        let now = Instant::now();
        for m in marks {
            let msg = json!({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": m.name}});
            let _ = self.out.send(Outgoing::Event(msg));
            self.echoes.push(MarkEcho {
                name: m.name,
                received_at: m.received_at,
                due_at: m.due_at,
                echoed_at: now,
                cleared: m.cleared,
            });
        }
    }

    /// Brings playback up to `now`, echoing the marks it reached.
    fn sync(&mut self, now: Instant) {
        let reached = self.playback.advance(now);
        self.echo(reached);
    }

    fn stats(&mut self) -> CallStats {
        self.sync(Instant::now());
        CallStats {
            frames_sent: self.frames_sent,
            caller_audio_ms: self.caller_ms(),
            caller_queued_ms: self.caller_queue.len() as u64 / 8,
            media_received: self.media_received,
            received_ms: self.received.len() as u64 / 8,
            played_ms: self.playback.played_total / 8,
            queued_ms: self.playback.queued_audio as u64 / 8,
            marks_received: self.marks_received,
            marks_echoed: self.echoes.len() as u64,
            clears: self.clears.len(),
            dtmf_sent: self.dtmf_sent,
            closed: self.closed,
            violations: self.violations.len(),
        }
    }

    /// Checks one text frame from the daemon and applies it.
    fn on_text(&mut self, text: &str, now: Instant) {
        let short: String = text.chars().take(100).collect();
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            self.violation(format!("non-JSON text frame (31951): {short:?}"));
            return;
        };
        let Some(obj) = v.as_object() else {
            self.violation(format!("text frame is not a JSON object (31951): {short:?}"));
            return;
        };
        let event = obj.get("event").and_then(Value::as_str).unwrap_or("").to_string();
        if obj.get("streamSid").and_then(Value::as_str) != Some(self.stream_sid.as_str()) {
            self.violation(format!("{event:?} message with missing or wrong streamSid (31951): {short:?}"));
            return;
        }
        let allowed: &[&str] = match event.as_str() {
            "media" => &["event", "streamSid", "media"],
            "mark" => &["event", "streamSid", "mark"],
            "clear" => &["event", "streamSid"],
            other => {
                self.violation(format!("unsupported message type {other:?} (31951; only media/mark/clear): {short:?}"));
                return;
            }
        };
        if let Some(extra) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            self.violation(format!("{event} message with extra field {extra:?} (31951)"));
            return;
        }
        match event.as_str() {
            "media" => {
                let media = obj.get("media").and_then(Value::as_object);
                let payload = media.and_then(|m| m.get("payload")).and_then(Value::as_str);
                let Some(payload) = payload else {
                    self.violation(format!("media without media.payload string (31951): {short:?}"));
                    return;
                };
                if let Some(extra) = media.and_then(|m| m.keys().find(|k| *k != "payload")) {
                    self.violation(format!("media.{extra} is not a field Twilio accepts (31951)"));
                    return;
                }
                let bytes = match B64.decode(payload) {
                    Ok(b) => b,
                    Err(e) => {
                        self.violation(format!("media payload is not base64 ({e})"));
                        return;
                    }
                };
                if bytes.is_empty() {
                    self.violation("media with an empty payload".into());
                }
                if bytes.starts_with(b"RIFF") {
                    self.violation("media payload starts with a WAV header (plays as a click)".into());
                }
                self.media_received += 1;
                self.received.extend_from_slice(&bytes);
                self.sync(now);
                let caller_ms = self.caller_ms();
                self.playback.push_audio(now, bytes, caller_ms);
            }
            "mark" => {
                let mark = obj.get("mark").and_then(Value::as_object);
                let Some(name) = mark.and_then(|m| m.get("name")).and_then(Value::as_str) else {
                    self.violation(format!("mark without mark.name string (31951): {short:?}"));
                    return;
                };
                if let Some(extra) = mark.and_then(|m| m.keys().find(|k| *k != "name")) {
                    self.violation(format!("mark.{extra} is not a field Twilio accepts (31951)"));
                    return;
                }
                self.marks_received += 1;
                self.sync(now);
                if let Some(r) = self.playback.push_mark(now, name.to_string()) {
                    self.echo(vec![r]);
                }
            }
            _ => {
                self.sync(now);
                let played_ms_total = self.playback.played_total / 8;
                let (flushed, dropped, run_played, run_received) = self.playback.clear(now);
                self.clears.push(ClearRecord {
                    at: now,
                    caller_audio_ms: self.caller_ms(),
                    played_ms_total,
                    run_played_ms: run_played / 8,
                    run_received_ms: run_received / 8,
                    dropped_ms: dropped as u64 / 8,
                    marks_flushed: flushed.len(),
                });
                self.echo(flushed);
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

impl Shared {
    /// Runs `f` on the state without waking waiters (accessors: a waiter must not wake itself).
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// Runs `f` on the state and wakes [`TwilioCall::wait_for`] (the I/O tasks).
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut lock(&self.state));
        self.notify.notify_waiters();
        r
    }
}

/// A fake Twilio Media Streams connection (see the module docs).
pub struct TwilioCall {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Outgoing>,
    start: StartParams,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TwilioCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioCall")
            .field("stream_sid", &self.start.stream_sid)
            .field("call_sid", &self.start.call_sid)
            .finish_non_exhaustive()
    }
}

impl TwilioCall {
    /// Opens the WebSocket to `ws_url` (`ws://127.0.0.1:PORT/…`; local targets only) with
    /// `X-Twilio-Signature` when given, sends `connected` and `start`, and starts streaming
    /// silence. Fails within 5 s; an HTTP refusal is an [`UpgradeRefused`] inside the error.
    pub async fn connect(ws_url: &str, signature: Option<String>, start: StartParams) -> anyhow::Result<TwilioCall> {
        let mut req = ws_url.into_client_request()?;
        let host = req.uri().host().unwrap_or_default();
        if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            anyhow::bail!("TwilioCall::connect: only local targets are allowed, got {host:?}");
        }
        if let Some(sig) = signature {
            req.headers_mut().insert("x-twilio-signature", HeaderValue::from_str(&sig)?);
        }
        // Nagle off: a mark echo queued right behind another must not wait for a delayed ACK.
        let connecting = tokio_tungstenite::connect_async_with_config(req, None, true);
        let (mut ws, _) = match tokio::time::timeout(Duration::from_secs(5), connecting).await {
            Err(_) => anyhow::bail!("connecting to {ws_url} timed out after 5 s"),
            Ok(Err(tungstenite::Error::Http(resp))) => return Err(UpgradeRefused(resp.status().as_u16()).into()),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(pair)) => pair,
        };
        let params: serde_json::Map<String, Value> =
            start.custom_parameters.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let connected = json!({"event": "connected", "protocol": "Call", "version": "1.0.0"});
        let start_msg = json!({
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": start.account_sid,
                "streamSid": start.stream_sid,
                "callSid": start.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": params,
            },
            "streamSid": start.stream_sid,
        });
        let handshake = async {
            ws.send(Message::text(connected.to_string())).await?;
            ws.send(Message::text(start_msg.to_string())).await
        };
        tokio::time::timeout(Duration::from_secs(5), handshake)
            .await
            .map_err(|_| anyhow::anyhow!("sending connected/start timed out"))??;

        let now = Instant::now();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stream_sid: start.stream_sid.clone(),
                caller_queue: VecDeque::new(),
                frames_sent: 0,
                frame_times: Vec::new(),
                playback: Playback::new(now),
                received: Vec::new(),
                media_received: 0,
                marks_received: 0,
                echoes: Vec::new(),
                clears: Vec::new(),
                violations: Vec::new(),
                dtmf_sent: 0,
                closed: false,
                close_frame: None,
                out: tx.clone(),
            }),
            notify: Notify::new(),
        });
        let cancel = CancellationToken::new();
        let (sink, stream) = ws.split();
        let deadline = now + start.max_duration.min(Duration::from_secs(86_400));
        let sender = tokio::spawn(send_loop(shared.clone(), sink, rx, cancel.clone(), start.clone(), now, deadline));
        let receiver =
            tokio::spawn(receive_loop(shared.clone(), stream, cancel.clone(), deadline + Duration::from_secs(5)));
        Ok(TwilioCall { shared, out: tx, start, cancel, tasks: vec![sender, receiver] })
    }

    pub fn stream_sid(&self) -> &str {
        &self.start.stream_sid
    }

    pub fn call_sid(&self) -> &str {
        &self.start.call_sid
    }

    /// Queues caller audio (μ-law 8 kHz) behind whatever is already queued, padded with
    /// silence to whole 20 ms frames. Returns the caller-audio ms at which it starts.
    pub fn play(&self, ulaw: &[u8]) -> u64 {
        self.shared.with(|s| {
            let start = s.caller_ms() + (s.caller_queue.len() / FRAME_BYTES) as u64 * 20;
            s.caller_queue.extend(ulaw.iter().copied());
            let pad = (FRAME_BYTES - s.caller_queue.len() % FRAME_BYTES) % FRAME_BYTES;
            s.caller_queue.extend(std::iter::repeat_n(0xFF, pad));
            start
        })
    }

    /// Drops caller audio queued by [`TwilioCall::play`] and not yet sent (back to silence).
    pub fn stop_playing(&self) {
        self.shared.with(|s| s.caller_queue.clear());
    }

    /// Milliseconds of caller audio (frames × 20) sent so far.
    pub fn caller_audio_ms(&self) -> u64 {
        lock(&self.shared.state).caller_ms()
    }

    /// Send instant of every `media` frame, in order (frame *n* carries caller-audio ms
    /// `[20(n-1), 20n)`).
    pub fn frame_times(&self) -> Vec<Instant> {
        lock(&self.shared.state).frame_times.clone()
    }

    /// Every agent audio byte played so far, in order.
    pub fn played_audio(&self) -> Vec<u8> {
        self.shared.with(|s| {
            s.sync(Instant::now());
            s.playback.played.clone()
        })
    }

    /// Every agent audio byte received (played, queued or cleared), in order.
    pub fn received_audio(&self) -> Vec<u8> {
        lock(&self.shared.state).received.clone()
    }

    /// Total ms of agent audio played so far.
    pub fn played_ms(&self) -> u64 {
        self.stats().played_ms
    }

    /// Milliseconds played of the agent audio that *arrived* in `[from, to)`. With `from` =
    /// when the fake Realtime sent an item's first delta and `to` = the `clear`'s
    /// [`ClearRecord::at`], this is what the caller heard of that item, even if the daemon
    /// under-ran in the middle of it (assuming the previous item's audio had all arrived
    /// before `from`).
    pub fn played_ms_between(&self, from: Instant, to: Instant) -> u64 {
        self.shared.with(|s| {
            s.sync(Instant::now());
            s.playback.played_between(from, to) / 8
        })
    }

    /// The playback runs so far (the last one may still be playing).
    pub fn playback_runs(&self) -> Vec<PlaybackRun> {
        self.shared.with(|s| {
            s.sync(Instant::now());
            s.playback.runs.clone()
        })
    }

    /// Every `clear` received.
    pub fn clears(&self) -> Vec<ClearRecord> {
        lock(&self.shared.state).clears.clone()
    }

    /// Every mark echoed so far, in echo order.
    pub fn mark_echoes(&self) -> Vec<MarkEcho> {
        self.shared.with(|s| {
            s.sync(Instant::now());
            s.echoes.clone()
        })
    }

    /// Protocol violations by the daemon seen so far.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.shared.state).violations.clone()
    }

    /// Counters as of now.
    pub fn stats(&self) -> CallStats {
        self.shared.with(State::stats)
    }

    /// The close frame the daemon sent, if any (code, reason).
    pub fn close_frame(&self) -> Option<(u16, String)> {
        lock(&self.shared.state).close_frame.clone()
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed
    }

    /// Waits until `pred` holds over [`CallStats`] (checked on every event and every 10 ms),
    /// or fails after `timeout` with the last stats in the message.
    pub async fn wait_for<F>(&self, pred: F, timeout: Duration) -> anyhow::Result<CallStats>
    where
        F: Fn(&CallStats) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout.min(Duration::from_secs(86_400));
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let stats = self.stats();
            if pred(&stats) {
                return Ok(stats);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "twilio call: timed out after {timeout:?}; stats {stats:?}; violations {:?}",
                    self.violations()
                );
            }
            let tick = (tokio::time::Instant::now() + Duration::from_millis(10)).min(deadline);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(tick) => {}
            }
        }
    }

    /// Waits until the daemon has closed the socket (or it broke). `true` if closed in time.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        self.wait_for(|s| s.closed, timeout).await.is_ok()
    }

    /// Sends a `dtmf` event for `digit` (`0`–`9`, `*`, `#`).
    pub fn dtmf(&self, digit: char) {
        let msg = json!({"event": "dtmf", "streamSid": self.start.stream_sid,
            "dtmf": {"track": "inbound_track", "digit": digit.to_string()}});
        self.shared.with(|s| s.dtmf_sent += 1);
        let _ = self.out.send(Outgoing::Event(msg));
    }

    /// Sends any JSON event as Twilio would (e.g. a second `stop`).
    pub fn send_event(&self, msg: serde_json::Value) {
        let _ = self.out.send(Outgoing::Event(msg));
    }

    /// The caller hangs up: `stop`, then a close frame; waits (≤ 2 s) for the socket to end.
    pub async fn stop(&mut self) {
        let _ = self.out.send(Outgoing::Stop);
        if !self.wait_closed(Duration::from_secs(2)).await {
            self.close_abruptly();
        }
    }

    /// Drops the TCP connection without `stop` or a close frame (a network failure).
    pub fn close_abruptly(&mut self) {
        self.cancel.cancel();
        for t in &self.tasks {
            t.abort();
        }
        self.shared.update(|s| s.closed = true);
    }
}

impl Drop for TwilioCall {
    fn drop(&mut self) {
        self.cancel.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn send_loop(
    shared: Arc<Shared>,
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    cancel: CancellationToken,
    start: StartParams,
    t0: Instant,
    deadline: Instant,
) {
    let mut seq: u64 = 1; // `start` was "1"
    let mut next_frame = tokio::time::Instant::from_std(t0 + FRAME);
    let deadline = tokio::time::Instant::from_std(deadline);
    let stop = json!({"event": "stop", "stop": {"accountSid": start.account_sid, "callSid": start.call_sid},
        "streamSid": start.stream_sid});
    loop {
        let msg = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            cmd = rx.recv() => match cmd {
                Some(Outgoing::Event(v)) => v,
                Some(Outgoing::Stop) | None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep_until(next_frame) => {
                next_frame += FRAME;
                shared.update(|s| {
                    let mut payload: Vec<u8> = s.caller_queue.drain(..s.caller_queue.len().min(FRAME_BYTES)).collect();
                    payload.resize(FRAME_BYTES, 0xFF);
                    s.frames_sent += 1;
                    s.frame_times.push(Instant::now());
                    let chunk = s.frames_sent;
                    json!({"event": "media", "media": {"track": "inbound", "chunk": chunk.to_string(),
                        "timestamp": ((chunk - 1) * 20).to_string(), "payload": B64.encode(&payload)},
                        "streamSid": start.stream_sid})
                })
            }
        };
        if !send_numbered(&mut sink, msg, &mut seq).await {
            shared.update(|s| s.closed = true);
            return;
        }
    }
    // Hang up: `stop`, then the close handshake (the receive loop sees the socket end).
    if send_numbered(&mut sink, stop, &mut seq).await {
        let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
    // Keep the sink alive until the receiver finishes the handshake (or the call is dropped).
    cancel.cancelled().await;
}

async fn send_numbered(sink: &mut SplitSink<Ws, Message>, mut msg: Value, seq: &mut u64) -> bool {
    *seq += 1;
    if let Some(obj) = msg.as_object_mut() {
        obj.insert("sequenceNumber".into(), Value::String(seq.to_string()));
    }
    matches!(tokio::time::timeout(Duration::from_secs(5), sink.send(Message::text(msg.to_string()))).await, Ok(Ok(())))
}

async fn receive_loop(shared: Arc<Shared>, mut stream: SplitStream<Ws>, cancel: CancellationToken, deadline: Instant) {
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        let due = lock(&shared.state).playback.next_due().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep_until(due.unwrap_or(deadline)), if due.is_some() => {
                shared.update(|s| s.sync(Instant::now()));
            }
            msg = stream.next() => {
                let now = Instant::now();
                match msg {
                    None | Some(Err(_)) => break,
                    Some(Ok(Message::Text(t))) => shared.update(|s| s.on_text(t.as_str(), now)),
                    Some(Ok(Message::Binary(b))) => shared.update(|s| {
                        s.violation(format!("binary frame of {} bytes (31950: Twilio takes JSON text frames only)", b.len()));
                    }),
                    Some(Ok(Message::Close(frame))) => shared.update(|s| {
                        s.close_frame = Some(frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string())));
                    }),
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    shared.update(|s| {
        s.sync(Instant::now());
        s.closed = true;
    });
    // Twilio stops streaming once the socket is gone.
    cancel.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::ulaw_tone;
    use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};

    #[test]
    fn signature_vectors() {
        let params = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ];
        assert_eq!(
            sign("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &params),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        let mut shuffled = params;
        shuffled.reverse();
        assert_eq!(
            sign("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", &shuffled),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_eq!(sign("12345", "wss://agent.example.com/twilio/media", &[]), "jnHHJVRuc+5O5HxzOjyUz1Q19Bc=");
        let json_url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        assert_eq!(sign("12345", json_url, &[]), "a9nBmqA0ju/hNViExpshrM61xv4=");
    }

    #[test]
    fn twiml_stream_is_extracted() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Connect action="https://agent.example.com/twilio/connect-ended" method="POST">
    <Stream url="wss://agent.example.com/twilio/media?x=1&amp;y=2"
            name="agent" statusCallbackMethod='POST'>
      <Parameter name="call_token" value="abc&lt;123&gt;"/>
      <Parameter name="caller" value="+15551234567" />
      <Parameter name="quote" value="&quot;hi&quot; &#38; &#x41;"></Parameter>
    </Stream>
  </Connect>
  <Say>Sorry</Say><Hangup/>
</Response>"#;
        let s = parse_twiml_stream(doc).unwrap();
        assert_eq!(s.url, "wss://agent.example.com/twilio/media?x=1&y=2");
        assert!(s.bidirectional);
        assert_eq!(s.parameter("call_token"), Some("abc<123>"));
        assert_eq!(s.parameter("caller"), Some("+15551234567"));
        assert_eq!(s.parameter("quote"), Some("\"hi\" & A"));
        assert_eq!(s.attributes.iter().find(|(k, _)| k == "statusCallbackMethod").unwrap().1, "POST");
        let one_line =
            r#"<Response><Start><Stream url="wss://x/y" /></Start><Parameter name="outside" value="1"/></Response>"#;
        let s = parse_twiml_stream(one_line).unwrap();
        assert!(!s.bidirectional && s.parameters.is_empty());
        assert!(parse_twiml_stream("<Response><Say>no stream</Say><Streaming/></Response>").is_none());
        assert!(parse_twiml_stream("<Response><Stream url=\"unterminated").is_none());
        assert_eq!(xml_unescape("a &bogus; & b &amp;"), "a &bogus; & b &");
    }

    #[test]
    fn http_responses_are_parsed() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_http_response(raw).unwrap(), (200, "hello".to_string()));
        let raw = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(raw).unwrap(), (403, "abcde".to_string()));
        assert!(parse_http_response(b"garbage").is_err());
        assert_eq!(form_encode("+1 555/ä"), "%2B1+555%2F%C3%A4");
        assert!(split_local_base("http://10.0.0.1:80").is_err());
        assert_eq!(split_local_base("http://127.0.0.1:9/x/").unwrap(), ("127.0.0.1:9".into(), "/x".into()));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn playback_echoes_marks_in_real_time_and_clear_flushes() {
        let t0 = Instant::now();
        let mut p = Playback::new(t0);
        // A mark with nothing queued is echoed at once.
        assert!(p.push_mark(t0, "empty".into()).is_some());
        p.push_audio(t0, vec![1; 1600], 0); // 200 ms
        assert!(p.push_mark(t0, "a".into()).is_none());
        p.push_audio(t0, vec![2; 2400], 0); // 300 ms
        assert!(p.push_mark(t0, "b".into()).is_none());
        assert_eq!(p.next_due(), Some(t0 + ms(200)));
        assert!(p.advance(t0 + ms(100)).is_empty());
        assert_eq!(p.played_total, 800);
        let reached = p.advance(t0 + ms(200));
        assert_eq!(reached.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(reached[0].due_at, t0 + ms(200));
        assert_eq!(p.next_due(), Some(t0 + ms(500)));
        assert!(p.advance(t0 + ms(250)).is_empty());
        let (flushed, dropped, run_played, run_received) = p.clear(t0 + ms(250));
        assert_eq!(flushed.len(), 1);
        assert!(flushed[0].cleared && flushed[0].name == "b");
        assert_eq!((dropped, run_played, run_received), (2000, 2000, 4000));
        assert_eq!(p.next_due(), None);
        assert_eq!(p.played.len(), 2000);
        assert!(p.played[..1600].iter().all(|&b| b == 1) && p.played[1600..].iter().all(|&b| b == 2));

        // After an idle gap, new audio starts a new run on arrival.
        p.push_audio(t0 + ms(1000), vec![3; 80], 777); // 10 ms
        assert!(p.advance(t0 + ms(1005)).is_empty());
        assert!(p.push_mark(t0 + ms(1005), "c".into()).is_none());
        let reached = p.advance(t0 + ms(1050));
        assert_eq!(reached.len(), 1);
        assert_eq!(reached[0].due_at, t0 + ms(1010));
        assert_eq!(p.runs.len(), 2);
        assert!(p.runs[0].cleared);
        assert_eq!(p.runs[1].started_caller_ms, 777);
        assert_eq!(p.runs[1].played_ms(), 10);
        assert_eq!(p.runs[1].ended_at, Some(t0 + ms(1010)));
        assert_eq!(p.played_total, 2080);

        // An underrun shorter than RUN_GAP continues the run; a longer gap starts a new one.
        p.push_audio(t0 + ms(1050), vec![4; 80], 900);
        assert!(p.advance(t0 + ms(1100)).is_empty());
        assert_eq!(p.runs.len(), 2);
        assert_eq!(p.runs[1].played_ms(), 20);
        p.push_audio(t0 + ms(1300), vec![5; 80], 1000);
        p.advance(t0 + ms(1400));
        assert_eq!(p.runs.len(), 3);
        assert_eq!(p.runs[2].started_caller_ms, 1000);
        // What played of the audio that arrived in a window.
        assert_eq!(p.played_between(t0, t0 + ms(1)), 2000);
        assert_eq!(p.played_between(t0 + ms(1000), t0 + ms(1200)), 160);
        assert_eq!(p.played_between(t0, t0 + ms(2000)), 2240);
    }

    /// What the in-test "daemon" observed.
    #[derive(Default)]
    struct Seen {
        frames: Vec<Value>,
        echoes: Vec<(String, Instant)>,
        other: Vec<Value>,
    }

    async fn next_json(ws: &mut WebSocket) -> Option<Value> {
        loop {
            match ws.recv().await? {
                Ok(AxMessage::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
                Ok(AxMessage::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads client messages for `d`, sorting them into `seen`.
    async fn collect(ws: &mut WebSocket, seen: &Arc<Mutex<Seen>>, d: Duration) {
        let _ = tokio::time::timeout(d, async {
            while let Some(v) = next_json(ws).await {
                let mut s = lock(seen);
                match v["event"].as_str() {
                    Some("media") => s.frames.push(v),
                    Some("mark") => {
                        s.echoes.push((v["mark"]["name"].as_str().unwrap_or("").to_string(), Instant::now()))
                    }
                    _ => s.other.push(v),
                }
            }
        })
        .await;
    }

    async fn fake_daemon(mut ws: WebSocket, seen: Arc<Mutex<Seen>>, t_first_media: Arc<Mutex<Option<Instant>>>) {
        let connected = next_json(&mut ws).await.unwrap();
        assert_eq!(connected["event"], "connected");
        let start = next_json(&mut ws).await.unwrap();
        assert_eq!(start["event"], "start");
        assert_eq!(start["sequenceNumber"], "1");
        let sid = start["streamSid"].as_str().unwrap().to_string();
        assert_eq!(start["start"]["streamSid"], sid);
        assert_eq!(sid.len(), 34);
        assert!(sid.starts_with("MZ"));
        assert_eq!(start["start"]["tracks"], json!(["inbound"]));
        assert_eq!(
            start["start"]["mediaFormat"],
            json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1})
        );
        assert_eq!(start["start"]["customParameters"], json!({"tenant": "acme"}));
        lock(&seen).other.push(start);

        // 500 ms of audio in 5 chunks, a mark after each.
        *lock(&t_first_media) = Some(Instant::now());
        for i in 0..5u8 {
            let media =
                json!({"event": "media", "streamSid": sid, "media": {"payload": B64.encode(vec![0x80 + i; 800])}});
            ws.send(AxMessage::text(media.to_string())).await.unwrap();
            let mark = json!({"event": "mark", "streamSid": sid, "mark": {"name": format!("m{i}")}});
            ws.send(AxMessage::text(mark.to_string())).await.unwrap();
        }
        collect(&mut ws, &seen, ms(650)).await;
        // 500 ms more with two marks; clear after 100 ms: both marks come back at once.
        for name in ["x1", "x2"] {
            let media = json!({"event": "media", "streamSid": sid, "media": {"payload": B64.encode(vec![0x90; 2000])}});
            ws.send(AxMessage::text(media.to_string())).await.unwrap();
            let mark = json!({"event": "mark", "streamSid": sid, "mark": {"name": name}});
            ws.send(AxMessage::text(mark.to_string())).await.unwrap();
        }
        collect(&mut ws, &seen, ms(100)).await;
        ws.send(AxMessage::text(json!({"event": "clear", "streamSid": sid}).to_string())).await.unwrap();
        collect(&mut ws, &seen, ms(100)).await;
        // Protocol mistakes the client must report.
        for bad in [
            json!({"event": "media", "streamSid": "MZwrong", "media": {"payload": "/w=="}}),
            json!({"event": "media", "streamSid": sid, "media": {"payload": "/w==", "track": "outbound"}}),
            json!({"event": "play", "streamSid": sid}),
        ] {
            ws.send(AxMessage::text(bad.to_string())).await.unwrap();
        }
        ws.send(AxMessage::text("nope")).await.unwrap();
        ws.send(AxMessage::Binary(vec![1u8, 2, 3].into())).await.unwrap();
        collect(&mut ws, &seen, ms(150)).await;
        let _ = ws.send(AxMessage::Close(None)).await;
        collect(&mut ws, &seen, ms(500)).await;
    }

    #[tokio::test]
    async fn media_marks_clear_against_a_fake_daemon() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let t_first = Arc::new(Mutex::new(None));
        let (seen2, t_first2) = (seen.clone(), t_first.clone());
        let app = axum::Router::new().route(
            "/media",
            axum::routing::get(move |headers: axum::http::HeaderMap, ws: WebSocketUpgrade| {
                let (seen, t_first) = (seen2.clone(), t_first2.clone());
                async move {
                    assert_eq!(headers.get("x-twilio-signature").unwrap(), "sig==");
                    ws.on_upgrade(move |socket| fake_daemon(socket, seen, t_first))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let start = StartParams { custom_parameters: vec![("tenant".into(), "acme".into())], ..StartParams::default() };
        let call = TwilioCall::connect(&format!("ws://{addr}/media"), Some("sig==".into()), start).await.unwrap();
        let speech = ulaw_tone(100, 440.0, 8_000);
        let speech_at = call.play(&speech);
        assert!(speech_at <= 40, "{speech_at}");
        assert!(
            call.wait_closed(Duration::from_secs(3)).await,
            "daemon close not seen: {:?} {:?}",
            call.stats(),
            call.violations()
        );
        let stats = call.stats();
        server.abort();

        // Caller audio: numbered frames every 20 ms, the tone where `play` said.
        let seen = lock(&seen);
        assert!(seen.frames.len() >= 50, "{} frames", seen.frames.len());
        let mut last_seq = 1;
        for (i, f) in seen.frames.iter().enumerate() {
            assert_eq!(f["media"]["chunk"], (i + 1).to_string());
            assert_eq!(f["media"]["timestamp"], (i as u64 * 20).to_string());
            assert_eq!(f["media"]["track"], "inbound");
            assert_eq!(f["streamSid"], call.stream_sid());
            let seq: u64 = f["sequenceNumber"].as_str().unwrap().parse().unwrap();
            assert!(seq > last_seq);
            last_seq = seq;
        }
        let payload = |i: usize| B64.decode(seen.frames[i]["media"]["payload"].as_str().unwrap()).unwrap();
        let first = (speech_at / 20) as usize;
        let sent: Vec<u8> = (first..first + 5).flat_map(payload).collect();
        assert_eq!(sent, speech);
        assert!(payload(first + 5).iter().all(|&b| b == 0xFF));
        let times = call.frame_times();
        let span = *times.last().unwrap() - times[0];
        let expected = ms(20 * (times.len() as u64 - 1));
        assert!(span + ms(30) >= expected && span <= expected + ms(60), "cadence drifted: {span:?} vs {expected:?}");

        // Marks echoed in order, as their audio finished playing; then the clear flush.
        let t_first = lock(&t_first).unwrap();
        let names: Vec<&str> = seen.echoes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["m0", "m1", "m2", "m3", "m4", "x1", "x2"]);
        for (i, (_, at)) in seen.echoes[..5].iter().enumerate() {
            let due = ms(100 * (i as u64 + 1));
            let got = *at - t_first;
            assert!(got + ms(5) >= due && got <= due + ms(150), "mark m{i} echoed after {got:?}, due {due:?}");
        }
        let (_, x1_at) = seen.echoes[5];
        let (_, x2_at) = seen.echoes[6];
        assert!(
            x2_at - x1_at < ms(50),
            "flushed marks should arrive together: {:?} {:?} {:?}",
            x1_at - t_first,
            x2_at - t_first,
            call.mark_echoes()
        );
        assert!(x1_at - t_first >= ms(740), "x1 must wait for the clear, not its 250 ms of audio");

        let clears = call.clears();
        assert_eq!(clears.len(), 1);
        let c = &clears[0];
        assert_eq!(c.marks_flushed, 2);
        assert!((80..=250).contains(&c.run_played_ms), "run played {} ms", c.run_played_ms);
        assert_eq!(c.run_received_ms, 500);
        assert!((499..=500).contains(&(c.dropped_ms + c.run_played_ms)), "ms are floored separately");
        assert!(c.caller_audio_ms >= 700);
        let runs = call.playback_runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].played_ms(), 500);
        assert!(runs[1].cleared);
        let echoes = call.mark_echoes();
        assert!(echoes[..5].iter().all(|e| !e.cleared) && echoes[5..].iter().all(|e| e.cleared));

        let played = call.played_audio();
        assert_eq!(&played[..800], &[0x80; 800][..]);
        assert_eq!(played.len() as u64 / 8, stats.played_ms);
        assert_eq!(call.received_audio().len(), 4000 + 4000);
        assert_eq!((stats.media_received, stats.marks_received, stats.marks_echoed), (7, 7, 7));

        let v = call.violations();
        assert_eq!(v.len(), 5, "{v:?}");
        assert!(v[0].contains("streamSid") && v[1].contains("track") && v[2].contains("play"));
        assert!(v[3].contains("non-JSON") && v[4].contains("binary"));
        assert!(call.is_closed());
    }

    #[tokio::test]
    async fn refused_upgrade_reports_the_status() {
        let app =
            axum::Router::new().route("/media", axum::routing::get(|| async { axum::http::StatusCode::FORBIDDEN }));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let err = TwilioCall::connect(&format!("ws://{addr}/media"), None, StartParams::default()).await.unwrap_err();
        assert_eq!(err.downcast_ref::<UpgradeRefused>(), Some(&UpgradeRefused(403)));
        // The webhook client against a plain route.
        let app = axum::Router::new().route(
            "/hook/twiml",
            axum::routing::post(|headers: axum::http::HeaderMap, body: String| async move {
                let sig =
                    headers.get("x-twilio-signature").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                format!("{sig}|{body}")
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr2 = listener.local_addr().unwrap();
        let server2 = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let params = [("CallSid", "CA1"), ("From", "+1 555")];
        let (status, body) =
            post_webhook(&format!("http://{addr2}/hook"), "https://sb.example.com/hook/", Some("tok"), &params)
                .await
                .unwrap();
        assert_eq!(status, 200);
        let expected_sig = sign("tok", "https://sb.example.com/hook/twiml", &params);
        assert_eq!(body, format!("{expected_sig}|CallSid=CA1&From=%2B1+555"));
        server.abort();
        server2.abort();
    }
}
