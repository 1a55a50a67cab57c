//! A fake SMTP server for tests: plain TCP on `127.0.0.1`, no TLS, written by hand from
//! RFC 5321 so that it checks the client rather than sharing its assumptions.
//!
//! It speaks the greeting, `EHLO`/`HELO`, `AUTH PLAIN`/`AUTH LOGIN` (any credentials are
//! accepted; the user name is recorded), `MAIL`, `RCPT`, `DATA` (dot-unstuffed, ended by
//! `<CRLF>.<CRLF>`), `RSET`, `NOOP` and `QUIT`; anything else is answered `500`. Commands out
//! of sequence get `503`. Lines and messages are bounded ([`MAX_LINE`], [`MAX_MESSAGE`]).
//!
//! Faults are chosen with [`SmtpSink::set_mode`] (`451`, `550`, hang-up, or a server that
//! stops answering mid-transaction). [`SmtpSink::stop`] followed by
//! [`SmtpSink::start_on`] with the same address simulates an outage and the recovery.
//!
//! [`ReceivedMail`] carries small MIME helpers (header unfolding, RFC 2047 encoded words,
//! multipart walking, quoted-printable and base64 decoding) so tests can check what arrived.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use switchboard::testkit::{SinkMode, SmtpSink};
//!
//! let sink = SmtpSink::start().await?;
//! // Give the daemon SMTP_URL = sink.url() (smtp://127.0.0.1:PORT?tls=none) and send a mail…
//! let mail = sink.wait_for_messages(1, Duration::from_secs(5)).await?.remove(0);
//! assert_eq!(mail.content_type().as_deref(), Some("multipart/alternative"));
//! assert!(mail.part("text/plain").is_some_and(|t| t.contains("Summary")));
//!
//! sink.set_mode(SinkMode::TempFail); // the next transaction gets 451
//! let addr = sink.addr();
//! sink.stop().await; // connecting now fails with "connection refused"
//! let sink = SmtpSink::start_on(addr).await?; // back up, on the same port
//! # let _ = sink; Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest command or text line accepted, CRLF included (RFC 5321 asks for at least 512 and
/// 1000; a little slack here keeps the sink from failing a client that is merely generous).
pub const MAX_LINE: usize = 4096;
/// Largest message accepted in `DATA`; a larger one is read to its end and refused with `552`.
pub const MAX_MESSAGE: usize = 10 << 20;
/// Most recipients in one transaction.
const MAX_RECIPIENTS: usize = 100;
/// Upper bound on any wait, whatever the caller asks.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// How the sink answers new transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SinkMode {
    /// `250` after `DATA`: the message is stored.
    #[default]
    Accept,
    /// `451` after the message data (a transient failure); nothing is stored.
    TempFail,
    /// `550` after the message data (a permanent failure); nothing is stored.
    Reject,
    /// New connections are closed as soon as they are accepted, and a `MAIL` on a connection
    /// that was already open closes it.
    Hangup,
    /// `MAIL` is never answered: the connection stays open and everything after it is read
    /// and ignored (a server that hangs mid-transaction).
    Stall,
}

/// One message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM`), without angle brackets; empty for the null path.
    pub mail_from: String,
    /// The envelope recipients (`RCPT TO`), without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message as received (header, blank line, body), dot-unstuffed, CRLF line ends.
    pub data: String,
    /// The user name given in `AUTH` on that connection, if any.
    pub auth_user: Option<String>,
}

impl ReceivedMail {
    /// The first header field called `name` (case-insensitive), unfolded and trimmed, with
    /// RFC 2047 encoded words (UTF-8, `B` or `Q`) decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = split_entity(&self.data);
        header_value(head, name).map(|v| decode_encoded_words(&v))
    }

    /// The media type of the message, lower case and without parameters (for example
    /// `multipart/alternative`); `None` without a `Content-Type` field.
    pub fn content_type(&self) -> Option<String> {
        let (head, _) = split_entity(&self.data);
        header_value(head, "Content-Type").map(|v| media_type(&v))
    }

    /// The first part of type `mime_type` (depth first through nested multiparts; the message
    /// itself if it is not multipart and has that type), transfer-decoded (`quoted-printable`,
    /// `base64`, `7bit`, `8bit`) as UTF-8 text. Line ends stay CRLF as on the wire.
    pub fn part(&self, mime_type: &str) -> Option<String> {
        find_part(&self.data, &mime_type.to_ascii_lowercase(), 0)
    }
}

#[derive(Default)]
struct State {
    mode: SinkMode,
    messages: Vec<ReceivedMail>,
    transactions: usize,
    connections: usize,
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fake SMTP server. See the module docs.
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl SmtpSink {
    /// Binds `127.0.0.1:0` and starts serving in [`SinkMode::Accept`].
    pub async fn start() -> anyhow::Result<SmtpSink> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Binds `addr` (with `SO_REUSEADDR`, so the port of a stopped sink can be taken again)
    /// and starts serving in [`SinkMode::Accept`], with an empty message list.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<SmtpSink> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(64)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), notify: Notify::new() });
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (acc_shared, acc_cancel, acc_tasks) = (shared.clone(), cancel.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = acc_cancel.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (shared, cancel) = (acc_shared.clone(), acc_cancel.clone());
                acc_tasks.spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = serve(stream, &shared) => {}
                    }
                });
            }
            // The listener is dropped here: new connections are refused.
        });
        Ok(SmtpSink { addr, shared, cancel, tasks })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:PORT?tls=none`: what the daemon gets as `SMTP_URL`.
    pub fn url(&self) -> String {
        format!("smtp://{}?tls=none", self.addr)
    }

    /// Sets how new transactions (and, for [`SinkMode::Hangup`], new connections) are answered.
    pub fn set_mode(&self, mode: SinkMode) {
        lock(&self.shared.state).mode = mode;
    }

    /// The messages accepted so far, in order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        lock(&self.shared.state).messages.clone()
    }

    /// Transactions attempted so far (each `MAIL` command, whatever its outcome).
    pub fn transactions(&self) -> usize {
        lock(&self.shared.state).transactions
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.shared.state).connections
    }

    /// Waits until at least `n` messages were accepted and returns them all, or fails after
    /// `timeout` (capped at 60 s) saying how far it got.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<ReceivedMail>> {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = lock(&self.shared.state);
                if state.messages.len() >= n {
                    return Ok(state.messages.clone());
                }
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "smtp sink: timed out after {timeout:?} waiting for {n} message(s); got {}, \
                         {} transaction(s) on {} connection(s), mode {:?}",
                        state.messages.len(),
                        state.transactions,
                        state.connections,
                        state.mode
                    );
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Closes the listener and every open connection, and waits until they are gone: after
    /// this, connecting to [`addr`](Self::addr) is refused. Idempotent.
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ------------------------------------------------------------------------------------------
// The SMTP side

async fn serve(stream: TcpStream, shared: &Shared) {
    let hang_up = {
        let mut state = lock(&shared.state);
        state.connections += 1;
        state.mode == SinkMode::Hangup
    };
    if hang_up {
        return; // the stream is dropped: closed at once
    }
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    // An I/O error ends the session like a disconnect does.
    let _ = session(&mut read, &mut write, shared).await;
}

enum Line {
    Eof,
    TooLong,
    Text(Vec<u8>),
}

/// One line without its line end (CRLF, or a bare LF, tolerated). A line longer than `max`
/// is skipped to its end and reported as [`Line::TooLong`]; a partial last line counts as EOF.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    (&mut *r).take(max as u64).read_until(b'\n', &mut buf).await?;
    if buf.last() != Some(&b'\n') {
        if buf.len() < max {
            return Ok(Line::Eof);
        }
        loop {
            let mut skip = Vec::new();
            let n = (&mut *r).take(max as u64).read_until(b'\n', &mut skip).await?;
            if n == 0 {
                return Ok(Line::Eof);
            }
            if skip.last() == Some(&b'\n') {
                return Ok(Line::TooLong);
            }
        }
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Line::Text(buf))
}

async fn reply<W: AsyncWrite + Unpin>(w: &mut W, text: &str) -> std::io::Result<()> {
    w.write_all(format!("{text}\r\n").as_bytes()).await
}

struct Transaction {
    mode: SinkMode,
    from: String,
    rcpts: Vec<String>,
}

/// What `DATA` read: the message, or why it is refused.
enum Data {
    Message(String),
    TooBig,
}

async fn session<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    shared: &Shared,
) -> std::io::Result<()> {
    reply(w, "220 sink.invalid ESMTP switchboard smtp sink").await?;
    let mut greeted = false;
    let mut auth_user: Option<String> = None;
    let mut txn: Option<Transaction> = None;
    loop {
        let line = match read_line(r, MAX_LINE).await? {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                reply(w, "500 5.5.6 line too long").await?;
                continue;
            }
            Line::Text(line) => String::from_utf8_lossy(&line).into_owned(),
        };
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        match verb.as_str() {
            "EHLO" | "HELO" if arg.is_empty() => reply(w, "501 5.5.4 a domain or address is required").await?,
            "EHLO" => {
                greeted = true;
                txn = None;
                let lines = [
                    format!("250-sink.invalid greets {arg}"),
                    "250-8BITMIME".into(),
                    "250-SMTPUTF8".into(),
                    "250-AUTH PLAIN LOGIN".into(),
                    format!("250 SIZE {MAX_MESSAGE}"),
                ];
                w.write_all(format!("{}\r\n", lines.join("\r\n")).as_bytes()).await?;
            }
            "HELO" => {
                greeted = true;
                txn = None;
                reply(w, "250 sink.invalid").await?;
            }
            "AUTH" if !greeted => reply(w, "503 5.5.1 send EHLO first").await?,
            "AUTH" if txn.is_some() => reply(w, "503 5.5.1 AUTH is not allowed during a mail transaction").await?,
            "AUTH" if auth_user.is_some() => reply(w, "503 5.5.1 already authenticated").await?,
            "AUTH" => {
                if let Some(user) = authenticate(r, w, arg).await? {
                    auth_user = Some(user);
                }
            }
            "MAIL" if !greeted => reply(w, "503 5.5.1 send EHLO or HELO first").await?,
            "MAIL" if txn.is_some() => reply(w, "503 5.5.1 nested MAIL command").await?,
            "MAIL" => {
                let Some(from) = path_after(arg, "FROM:") else {
                    reply(w, "501 5.5.4 syntax: MAIL FROM:<address>").await?;
                    continue;
                };
                let mode = {
                    let mut state = lock(&shared.state);
                    state.transactions += 1;
                    state.mode
                };
                match mode {
                    SinkMode::Hangup => return Ok(()),
                    SinkMode::Stall => {
                        while !matches!(read_line(r, MAX_LINE).await?, Line::Eof) {}
                        return Ok(());
                    }
                    SinkMode::Accept | SinkMode::TempFail | SinkMode::Reject => {}
                }
                txn = Some(Transaction { mode, from, rcpts: Vec::new() });
                reply(w, "250 2.1.0 sender ok").await?;
            }
            "RCPT" => {
                let Some(t) = txn.as_mut() else {
                    reply(w, "503 5.5.1 need MAIL before RCPT").await?;
                    continue;
                };
                match path_after(arg, "TO:") {
                    _ if t.rcpts.len() >= MAX_RECIPIENTS => reply(w, "452 4.5.3 too many recipients").await?,
                    Some(to) if !to.is_empty() => {
                        t.rcpts.push(to);
                        reply(w, "250 2.1.5 recipient ok").await?;
                    }
                    _ => reply(w, "501 5.5.4 syntax: RCPT TO:<address>").await?,
                }
            }
            "DATA" if !arg.is_empty() => reply(w, "501 5.5.4 DATA takes no argument").await?,
            "DATA" => {
                let Some(t) = txn.take_if(|t| !t.rcpts.is_empty()) else {
                    let text =
                        if txn.is_some() { "554 5.5.1 no valid recipients" } else { "503 5.5.1 need MAIL first" };
                    reply(w, text).await?;
                    continue;
                };
                reply(w, "354 end data with <CR><LF>.<CR><LF>").await?;
                let data = match read_data(r).await? {
                    Some(data) => data,
                    None => return Ok(()),
                };
                match (data, t.mode) {
                    (Data::TooBig, _) => reply(w, "552 5.3.4 message too big").await?,
                    (Data::Message(_), SinkMode::TempFail) => {
                        reply(w, "451 4.3.0 temporary failure (sink in TempFail mode)").await?
                    }
                    (Data::Message(_), SinkMode::Reject) => {
                        reply(w, "550 5.7.1 message rejected (sink in Reject mode)").await?
                    }
                    (Data::Message(data), SinkMode::Accept | SinkMode::Hangup | SinkMode::Stall) => {
                        let n = {
                            let mut state = lock(&shared.state);
                            state.messages.push(ReceivedMail {
                                mail_from: t.from,
                                rcpt_to: t.rcpts,
                                data,
                                auth_user: auth_user.clone(),
                            });
                            state.messages.len()
                        };
                        shared.notify.notify_waiters();
                        reply(w, &format!("250 2.0.0 OK queued as sink-{n}")).await?;
                    }
                }
            }
            "RSET" => {
                txn = None;
                reply(w, "250 2.0.0 reset").await?;
            }
            "NOOP" => reply(w, "250 2.0.0 ok").await?,
            "QUIT" => {
                reply(w, "221 2.0.0 bye").await?;
                return Ok(());
            }
            _ => reply(w, "500 5.5.1 command not recognized").await?,
        }
    }
}

/// `FROM:<a@b> PARAMS` → `a@b` (the prefix is case-insensitive; a space after the colon is
/// tolerated; parameters are ignored). `None` without a `<…>` path.
fn path_after(arg: &str, prefix: &str) -> Option<String> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start().strip_prefix('<')?;
    let (path, _params) = rest.split_once('>')?;
    Some(path.to_owned())
}

/// Reads the message up to the `.` line, dot-unstuffed, each line ended with CRLF. `None` if
/// the client went away first.
async fn read_data<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<Data>> {
    let mut data = Vec::new();
    let mut too_big = false;
    loop {
        let line = match read_line(r, MAX_LINE).await? {
            Line::Eof => return Ok(None),
            Line::TooLong => {
                too_big = true;
                continue;
            }
            Line::Text(line) => line,
        };
        if line == b"." {
            break;
        }
        let line = line.strip_prefix(b".").unwrap_or(&line);
        if data.len() + line.len() + 2 > MAX_MESSAGE {
            too_big = true;
        }
        if !too_big {
            data.extend_from_slice(line);
            data.extend_from_slice(b"\r\n");
        }
    }
    Ok(Some(if too_big { Data::TooBig } else { Data::Message(String::from_utf8_lossy(&data).into_owned()) }))
}

/// `AUTH PLAIN [initial]` or `AUTH LOGIN [user]`: any password is accepted. Returns the user
/// name once the exchange succeeded (having sent `235`); otherwise the error reply was sent.
async fn authenticate<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    arg: &str,
) -> std::io::Result<Option<String>> {
    let (mechanism, initial) = match arg.split_once(' ') {
        Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_owned())),
        None => (arg.to_ascii_uppercase(), None),
    };
    let user = match mechanism.as_str() {
        "PLAIN" => {
            let Some(response) = challenge(r, w, initial, "").await? else { return Ok(None) };
            // authzid NUL authcid NUL passwd
            let fields: Vec<&[u8]> = response.split(|&b| b == 0).collect();
            match fields.as_slice() {
                [_authzid, user, _password] => String::from_utf8_lossy(user).into_owned(),
                _ => {
                    reply(w, "501 5.5.2 malformed PLAIN response").await?;
                    return Ok(None);
                }
            }
        }
        "LOGIN" => {
            let Some(user) = challenge(r, w, initial, "VXNlcm5hbWU6").await? else { return Ok(None) };
            if challenge(r, w, None, "UGFzc3dvcmQ6").await?.is_none() {
                return Ok(None);
            }
            String::from_utf8_lossy(&user).into_owned()
        }
        "" => {
            reply(w, "501 5.5.4 syntax: AUTH mechanism").await?;
            return Ok(None);
        }
        _ => {
            reply(w, "504 5.5.4 unrecognized authentication type").await?;
            return Ok(None);
        }
    };
    reply(w, "235 2.7.0 authentication successful").await?;
    Ok(Some(user))
}

/// The client's base64 answer: `initial` if given, otherwise the line after a `334 {prompt}`.
/// `None` (with the error reply sent) if the client cancelled, sent bad base64 or left.
async fn challenge<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    initial: Option<String>,
    prompt: &str,
) -> std::io::Result<Option<Vec<u8>>> {
    let answer = match initial {
        Some(a) => a,
        None => {
            reply(w, &format!("334 {prompt}")).await?;
            match read_line(r, MAX_LINE).await? {
                Line::Text(line) => String::from_utf8_lossy(&line).trim().to_owned(),
                Line::Eof => return Ok(None),
                Line::TooLong => {
                    reply(w, "500 5.5.6 authentication exchange line too long").await?;
                    return Ok(None);
                }
            }
        }
    };
    if answer == "*" {
        reply(w, "501 5.0.0 authentication cancelled").await?;
        return Ok(None);
    }
    // "=" is an empty initial response (RFC 4954).
    let decoded = if answer == "=" { Ok(Vec::new()) } else { BASE64.decode(answer.as_bytes()) };
    match decoded {
        Ok(bytes) => Ok(Some(bytes)),
        Err(_) => {
            reply(w, "501 5.5.2 cannot decode base64").await?;
            Ok(None)
        }
    }
}

// ------------------------------------------------------------------------------------------
// MIME helpers (test-side decoders, written from RFC 5322, 2045, 2046 and 2047)

/// Standard alphabet; padding optional, as decoders in the wild are.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Header section and body of an entity, split at the first empty line (the empty line itself
/// belongs to neither). Without an empty line everything is header.
fn split_entity(entity: &str) -> (&str, &str) {
    let mut pos = 0;
    for line in entity.split_inclusive('\n') {
        if line.trim_end_matches(['\r', '\n']).is_empty() {
            return (&entity[..pos], &entity[pos + line.len()..]);
        }
        pos += line.len();
    }
    (entity, "")
}

/// The first field `name` in a header section, unfolded (line breaks before whitespace
/// removed) and trimmed. Not decoded.
fn header_value(head: &str, name: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            if let Some(v) = value.as_mut() {
                v.push_str(line);
            }
            continue;
        }
        if value.is_some() {
            break; // the field we wanted has ended
        }
        if let Some((n, v)) = line.split_once(':')
            && n.trim_end().eq_ignore_ascii_case(name)
        {
            value = Some(v.to_owned());
        }
    }
    value.map(|v| v.trim().to_owned())
}

/// Decodes RFC 2047 encoded words (`=?charset?B|Q?text?=`) in UTF-8 or US-ASCII; other
/// charsets and malformed words are left as they are. Whitespace between two adjacent encoded
/// words is dropped (RFC 2047 section 6.2); their bytes are joined before UTF-8 decoding.
fn decode_encoded_words(s: &str) -> String {
    let mut out = String::new();
    let mut pending: Vec<u8> = Vec::new(); // bytes of a run of adjacent encoded words
    let mut rest = s;
    while let Some((start, end, bytes)) = next_encoded_word(rest) {
        let between = &rest[..start];
        if pending.is_empty() || !between.chars().all(char::is_whitespace) {
            out.push_str(&String::from_utf8_lossy(&std::mem::take(&mut pending)));
            out.push_str(between);
        }
        pending.extend_from_slice(&bytes);
        rest = &rest[end..];
    }
    out.push_str(&String::from_utf8_lossy(&pending));
    out.push_str(rest);
    out
}

/// The next well-formed encoded word in `s`: (start, end, decoded bytes).
fn next_encoded_word(s: &str) -> Option<(usize, usize, Vec<u8>)> {
    let mut from = 0;
    while let Some(i) = s[from..].find("=?") {
        let start = from + i;
        if let Some((len, bytes)) = parse_encoded_word(&s[start..]) {
            return Some((start, start + len, bytes));
        }
        from = start + 2;
    }
    None
}

/// Parses an encoded word at the start of `s`: (its length, decoded bytes).
fn parse_encoded_word(s: &str) -> Option<(usize, Vec<u8>)> {
    let (raw_charset, rest) = s.strip_prefix("=?")?.split_once('?')?;
    let (encoding, rest) = rest.split_once('?')?;
    let end = rest.find("?=")?;
    let text = &rest[..end];
    // RFC 2231 allows a language suffix: `utf-8*en`.
    let charset = raw_charset.split('*').next().unwrap_or_default();
    if !(charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("us-ascii"))
        || text.contains(char::is_whitespace)
    {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => BASE64.decode(text).ok()?,
        "Q" | "q" => decode_q(text)?,
        _ => return None,
    };
    let len = "=?".len() + raw_charset.len() + 1 + encoding.len() + 1 + end + "?=".len();
    Some((len, bytes))
}

/// The `Q` encoding: `_` is a space, `=XX` a byte.
fn decode_q(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => out.push(b' '),
            b'=' => {
                out.push(hex_byte(bytes.get(i + 1..i + 3)?)?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let s = std::str::from_utf8(two).ok()?;
    u8::from_str_radix(s, 16).ok().filter(|_| s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `text/HTML; charset=utf-8` → `text/html`.
fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// A parameter of a `Content-Type`-like value (`boundary`, `charset`), unquoted.
fn parameter(value: &str, name: &str) -> Option<String> {
    let mut rest = value.split_once(';')?.1;
    loop {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (val, next) = if let Some(quoted) = after.strip_prefix('"') {
            // A quoted string, with `\` escapes.
            let mut val = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => val.push(c),
                }
            }
            let rest = &quoted[end?..];
            (val, rest.split_once(';').map_or("", |(_, n)| n))
        } else {
            match after.split_once(';') {
                Some((v, n)) => (v.trim().to_owned(), n),
                None => (after.trim().to_owned(), ""),
            }
        };
        if key.trim().eq_ignore_ascii_case(name) {
            return Some(val);
        }
        if next.is_empty() {
            return None;
        }
        rest = next;
    }
}

/// The parts of a multipart body: what lies between the delimiter lines (`--boundary`), without
/// the line break that precedes each delimiter (RFC 2046 5.1.1). Preamble and epilogue are
/// skipped; a body without its close delimiter (`--boundary--`) yields nothing.
fn multipart_parts<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    for line in body.split_inclusive('\n') {
        let line_start = pos;
        pos += line.len();
        let Some(after) = line.trim_end_matches(['\r', '\n']).strip_prefix(delimiter.as_str()) else { continue };
        let after = after.trim_end_matches([' ', '\t']);
        let close = after == "--";
        if !(close || after.is_empty()) {
            continue;
        }
        if let Some(s) = start {
            let before = &body[..line_start];
            let end = before.strip_suffix("\r\n").or_else(|| before.strip_suffix('\n')).map_or(line_start, str::len);
            parts.push(&body[s..end.max(s)]);
        }
        if close {
            return parts;
        }
        start = Some(pos);
    }
    Vec::new()
}

/// Depth-first search for an entity of media type `wanted` (lower case); nesting is bounded.
fn find_part(entity: &str, wanted: &str, depth: usize) -> Option<String> {
    if depth > 8 {
        return None;
    }
    let (head, body) = split_entity(entity);
    let content_type = header_value(head, "Content-Type").unwrap_or_else(|| "text/plain".into());
    let kind = media_type(&content_type);
    if kind == wanted {
        let encoding = header_value(head, "Content-Transfer-Encoding").unwrap_or_else(|| "7bit".into());
        return decode_body(body, &encoding);
    }
    if kind.starts_with("multipart/") {
        let boundary = parameter(&content_type, "boundary")?;
        return multipart_parts(body, &boundary).into_iter().find_map(|p| find_part(p, wanted, depth + 1));
    }
    None
}

/// Undoes a `Content-Transfer-Encoding` and reads the result as UTF-8. `None` for an unknown
/// encoding or invalid base64.
fn decode_body(body: &str, encoding: &str) -> Option<String> {
    let bytes = match encoding.trim().to_ascii_lowercase().as_str() {
        "7bit" | "8bit" | "binary" => body.as_bytes().to_vec(),
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => {
            let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            BASE64.decode(compact).ok()?
        }
        _ => return None,
    };
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Quoted-printable (RFC 2045 6.7): `=XX` is a byte, `=` at a line end is a soft break,
/// trailing whitespace on a line is transport padding. Hard line breaks come out as CRLF. A
/// stray `=` is kept as it is.
fn decode_quoted_printable(body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut lines = body.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line).trim_end_matches([' ', '\t']);
        let (line, soft) = match line.strip_suffix('=') {
            Some(l) => (l, true),
            None => (line, false),
        };
        let bytes = line.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'='
                && let Some(b) = bytes.get(i + 1..i + 3).and_then(hex_byte)
            {
                out.push(b);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        if !soft && lines.peek().is_some() {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw client: sends lines, reads replies (multi-line replies joined by `\n`).
    struct Raw {
        r: BufReader<tokio::net::tcp::OwnedReadHalf>,
        w: tokio::net::tcp::OwnedWriteHalf,
    }

    impl Raw {
        async fn connect(sink: &SmtpSink) -> Raw {
            let (r, w) = TcpStream::connect(sink.addr()).await.unwrap().into_split();
            let mut raw = Raw { r: BufReader::new(r), w };
            assert!(raw.read_reply().await.starts_with("220 "));
            raw
        }

        async fn read_reply(&mut self) -> String {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                let n =
                    tokio::time::timeout(Duration::from_secs(5), self.r.read_line(&mut line)).await.unwrap().unwrap();
                assert!(n > 0, "connection closed; got {lines:?}");
                let line = line.trim_end().to_owned();
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line);
                if last {
                    return lines.join("\n");
                }
            }
        }

        async fn cmd(&mut self, line: &str) -> String {
            self.w.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
            self.read_reply().await
        }

        async fn send_raw(&mut self, bytes: &[u8]) {
            self.w.write_all(bytes).await.unwrap();
        }
    }

    fn code(reply: &str) -> &str {
        &reply[..3]
    }

    #[tokio::test]
    async fn a_full_session_is_recorded_with_dot_unstuffing() {
        let sink = SmtpSink::start().await.unwrap();
        let mut c = Raw::connect(&sink).await;
        assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com>").await), "503", "MAIL before EHLO");
        let ehlo = c.cmd("EHLO client.example").await;
        assert!(ehlo.contains("250-AUTH PLAIN LOGIN") && ehlo.contains("8BITMIME"), "{ehlo}");
        let auth = BASE64.encode(b"\0alice\0secret");
        assert_eq!(code(&c.cmd(&format!("AUTH PLAIN {auth}")).await), "235");
        assert_eq!(code(&c.cmd("RCPT TO:<b@example.com>").await), "503", "RCPT before MAIL");
        assert_eq!(code(&c.cmd("mail from:<a@example.com> BODY=8BITMIME").await), "250");
        assert_eq!(code(&c.cmd("DATA").await), "554", "DATA without recipients");
        assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com>").await), "503", "nested MAIL");
        assert_eq!(code(&c.cmd("RSET").await), "250");
        assert_eq!(code(&c.cmd("MAIL FROM:<a@example.com>").await), "250");
        assert_eq!(code(&c.cmd("RCPT TO:<b@example.com>").await), "250");
        assert_eq!(code(&c.cmd("RCPT TO: <c@example.com>").await), "250");
        assert_eq!(code(&c.cmd("DATA").await), "354");
        c.send_raw(b"Subject: hi\r\n\r\n..leading dot\r\nline\r\n.\r\n").await;
        assert_eq!(code(&c.read_reply().await), "250");
        assert_eq!(code(&c.cmd("NOOP").await), "250");
        assert_eq!(code(&c.cmd("VRFY b").await), "500");
        assert_eq!(code(&c.cmd("QUIT").await), "221");

        let m = sink.wait_for_messages(1, Duration::from_secs(2)).await.unwrap().remove(0);
        assert_eq!(m.mail_from, "a@example.com");
        assert_eq!(m.rcpt_to, vec!["b@example.com", "c@example.com"]);
        assert_eq!(m.data, "Subject: hi\r\n\r\n.leading dot\r\nline\r\n");
        assert_eq!(m.auth_user.as_deref(), Some("alice"));
        assert_eq!(sink.transactions(), 2);
    }

    #[tokio::test]
    async fn auth_login_records_the_user() {
        let sink = SmtpSink::start().await.unwrap();
        let mut c = Raw::connect(&sink).await;
        c.cmd("EHLO x").await;
        assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
        assert_eq!(c.cmd(&BASE64.encode("bob")).await, "334 UGFzc3dvcmQ6");
        assert_eq!(code(&c.cmd(&BASE64.encode("pw")).await), "235");
        assert_eq!(code(&c.cmd("AUTH PLAIN").await), "503", "already authenticated");
        c.cmd("MAIL FROM:<>").await;
        c.cmd("RCPT TO:<b@example.com>").await;
        c.cmd("DATA").await;
        assert_eq!(code(&c.cmd("x\r\n.").await), "250");
        let m = sink.wait_for_messages(1, Duration::from_secs(2)).await.unwrap().remove(0);
        assert_eq!((m.mail_from.as_str(), m.auth_user.as_deref()), ("", Some("bob")));
    }

    #[tokio::test]
    async fn modes_answer_new_transactions() {
        let sink = SmtpSink::start().await.unwrap();
        let mut c = Raw::connect(&sink).await;
        c.cmd("HELO x").await;
        async fn send(c: &mut Raw) -> String {
            c.cmd("MAIL FROM:<a@example.com>").await;
            c.cmd("RCPT TO:<b@example.com>").await;
            c.cmd("DATA").await;
            c.cmd("body\r\n.").await
        }
        sink.set_mode(SinkMode::TempFail);
        assert!(send(&mut c).await.starts_with("451 "));
        sink.set_mode(SinkMode::Reject);
        assert!(send(&mut c).await.starts_with("550 "));
        sink.set_mode(SinkMode::Accept);
        assert!(send(&mut c).await.starts_with("250 "));
        assert_eq!(sink.messages().len(), 1);
        assert_eq!(sink.transactions(), 3);

        let mut stalled = Raw::connect(&sink).await;
        stalled.cmd("HELO x").await;
        sink.set_mode(SinkMode::Stall);
        stalled.w.write_all(b"MAIL FROM:<a@example.com>\r\nNOOP\r\n").await.unwrap();
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_millis(100), stalled.r.read_line(&mut line)).await;
        assert!(read.is_err(), "a stalled MAIL gets no answer, got {line:?}");
        assert_eq!(sink.transactions(), 4);

        sink.set_mode(SinkMode::Hangup);
        c.w.write_all(b"MAIL FROM:<a@example.com>\r\n").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(c.r.read(&mut buf).await.unwrap(), 0, "MAIL closes the open connection");
        let (mut r, _w) = TcpStream::connect(sink.addr()).await.unwrap().into_split();
        assert_eq!(r.read(&mut buf).await.unwrap(), 0, "a new connection is closed at once");
        assert_eq!(sink.connections(), 3);
    }

    #[tokio::test]
    async fn long_lines_and_unknown_commands_are_refused_without_dropping_the_session() {
        let sink = SmtpSink::start().await.unwrap();
        let mut c = Raw::connect(&sink).await;
        let long = "X".repeat(MAX_LINE * 2);
        assert_eq!(code(&c.cmd(&long).await), "500");
        assert_eq!(code(&c.cmd("").await), "500");
        assert_eq!(code(&c.cmd("EHLO").await), "501");
        assert_eq!(code(&c.cmd("AUTH CRAM-MD5").await), "503", "before EHLO");
        c.cmd("EHLO x").await;
        assert_eq!(code(&c.cmd("AUTH CRAM-MD5").await), "504");
        assert_eq!(code(&c.cmd("AUTH PLAIN !!!").await), "501");
        assert_eq!(code(&c.cmd("MAIL FROM:a@example.com").await), "501");
        c.cmd("MAIL FROM:<a@example.com>").await;
        c.cmd("RCPT TO:<b@example.com>").await;
        c.cmd("DATA").await;
        c.send_raw(format!("Subject: x\r\n\r\n{long}\r\n.\r\n").as_bytes()).await;
        assert_eq!(code(&c.read_reply().await), "552", "an over-long line in DATA refuses the message");
        assert_eq!(code(&c.cmd("NOOP").await), "250");
        assert!(sink.messages().is_empty());
    }

    #[tokio::test]
    async fn stop_refuses_connections_and_start_on_brings_the_port_back() {
        let sink = SmtpSink::start().await.unwrap();
        let addr = sink.addr();
        assert_eq!(sink.url(), format!("smtp://127.0.0.1:{}?tls=none", addr.port()));
        let mut open = Raw::connect(&sink).await;
        sink.stop().await;
        let mut buf = [0u8; 16];
        assert_eq!(open.r.read(&mut buf).await.unwrap(), 0, "live connections are closed");
        let err = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        sink.stop().await; // idempotent

        let again = SmtpSink::start_on(addr).await.unwrap();
        assert_eq!(again.addr(), addr);
        let mut c = Raw::connect(&again).await;
        assert_eq!(code(&c.cmd("NOOP").await), "250");
        let err = again.wait_for_messages(1, Duration::from_millis(50)).await.unwrap_err();
        assert!(err.to_string().contains("got 0"), "{err}");
    }

    #[test]
    fn headers_are_unfolded_and_encoded_words_decoded() {
        let m = ReceivedMail {
            mail_from: String::new(),
            rcpt_to: vec![],
            data: "Subject: Call summary =?utf-8?b?4oCT?= +1 555\r\n =?utf-8?q?caf=C3=A9_cr=C3=A8me?=\r\n\t=?UTF-8?B?IOKAkyBkb25l?=\r\n\
                   X-Plain: a=?b\r\nContent-Type: multipart/alternative;\r\n boundary=\"b1\"\r\n\r\nbody\r\nSubject: not a header\r\n"
                .into(),
            auth_user: None,
        };
        // The space between two encoded words goes; the one before the first stays.
        assert_eq!(m.header("subject").unwrap(), "Call summary – +1 555 café crème – done");
        assert_eq!(m.header("X-Plain").unwrap(), "a=?b");
        assert_eq!(m.header("Content-Type").unwrap(), "multipart/alternative; boundary=\"b1\"");
        assert_eq!(m.content_type().unwrap(), "multipart/alternative");
        assert_eq!(m.header("Missing"), None);
        // A character split across two words still decodes.
        assert_eq!(decode_encoded_words("=?utf-8?B?w6k=?= x =?utf-8?B?4g==?= =?utf-8?B?gJM=?="), "é x –");
        assert_eq!(decode_encoded_words("=?iso-8859-1?q?caf=E9?="), "=?iso-8859-1?q?caf=E9?=");
        assert_eq!(decode_encoded_words("=?utf-8?q?bad=G1?= ok"), "=?utf-8?q?bad=G1?= ok");
    }

    #[test]
    fn parameters_are_unquoted() {
        let ct = r#"multipart/mixed; charset=utf-8; boundary="a;b \"c\""; x=1"#;
        assert_eq!(parameter(ct, "boundary").unwrap(), r#"a;b "c""#);
        assert_eq!(parameter(ct, "CHARSET").unwrap(), "utf-8");
        assert_eq!(parameter(ct, "x").unwrap(), "1");
        assert_eq!(parameter(ct, "y"), None);
        assert_eq!(parameter("text/plain", "charset"), None);
    }

    #[test]
    fn quoted_printable_and_base64_bodies_decode() {
        assert_eq!(
            String::from_utf8(decode_quoted_printable("caf=C3=A9 =3D ok  \r\nsoft=\r\nbreak\r\nbad =ZZ")).unwrap(),
            "café = ok\r\nsoftbreak\r\nbad =ZZ"
        );
        assert_eq!(decode_body("w6kgw6kg\r\nIQ==\r\n", "base64").unwrap(), "é é !");
        assert_eq!(decode_body("w6k", "BASE64").unwrap(), "é", "padding is optional");
        assert_eq!(decode_body("!!", "base64"), None);
        assert_eq!(decode_body("x", "x-uuencode"), None);
    }

    #[test]
    fn parts_are_found_in_nested_multiparts() {
        let data = "Content-Type: multipart/mixed; boundary=outer\r\n\r\n\
                    preamble\r\n\
                    --outer\r\n\
                    Content-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n\
                    --inner\r\n\
                    Content-Type: text/plain; charset=utf-8\r\n\
                    Content-Transfer-Encoding: quoted-printable\r\n\r\n\
                    Gr=C3=BC=C3=9Fe\r\nline 2\r\n\
                    --inner\r\n\
                    Content-Type: text/html; charset=utf-8\r\n\
                    Content-Transfer-Encoding: base64\r\n\r\n\
                    PHA+aGk8L3A+\r\n\
                    --inner--\r\n\
                    --outer\r\n\
                    Content-Type: application/pdf\r\n\r\n\
                    %PDF\r\n\
                    --outer--\r\nepilogue\r\n";
        let m = ReceivedMail { mail_from: String::new(), rcpt_to: vec![], data: data.into(), auth_user: None };
        assert_eq!(m.part("text/plain").unwrap(), "Grüße\r\nline 2");
        assert_eq!(m.part("TEXT/HTML").unwrap(), "<p>hi</p>");
        assert_eq!(m.part("application/pdf").unwrap(), "%PDF");
        assert_eq!(m.part("image/png"), None);
        // Without the close delimiter nothing is trusted.
        assert!(multipart_parts("--b\r\nx\r\n--b\r\ny\r\n", "b").is_empty());
        assert_eq!(multipart_parts("--b\r\n\r\nx\r\n--b\r\n\r\n--b--", "b"), vec!["\r\nx", ""]);
        // A message that is not multipart is its own part; without a type it is text/plain.
        let plain = ReceivedMail { data: "Subject: x\r\n\r\nhello\r\n".into(), ..m };
        assert_eq!(plain.part("text/plain").unwrap(), "hello\r\n");
        assert_eq!(plain.content_type(), None);
    }
}
