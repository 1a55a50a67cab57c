//! The daemon's mail transport, for the summary emails (protocols.md E).
//!
//! - [`smtp_settings`] reads the SMTP configuration (`SMTP_URL`, or the split `SMTP_SERVER`,
//!   `SMTP_PORT`, `SMTP_USERNAME`, `SMTP_PASSWORD`, `SMTP_TLS`; and `SMTP_TIMEOUT_SECS`).
//! - [`Mailer`] turns an [`OutgoingEmail`] into one RFC 5322 message (`multipart/alternative`,
//!   plain text then HTML, with the caller's stable `Message-ID`) and either hands it to an
//!   SMTP server through one pooled lettre transport, or, when no SMTP server is configured,
//!   writes it as `<message id>.eml` into a directory.
//!
//! What this module does **not** do: it never retries, waits, queues or decides whether a
//! failure is worth another attempt. It sends once and classifies the outcome: a
//! [`SendError::Transient`] may succeed later (connection refused, timeouts, TLS failures,
//! `4xx` replies), a [`SendError::Permanent`] will not (`5xx` replies, addresses that do not
//! parse). The caller owns the retry policy. Because the `Message-ID` is the caller's, a
//! retried message is recognisable as the same message (and overwrites the same file).
//!
//! Each send is bounded by `SMTP_TIMEOUT_SECS` as a whole (lettre's async transport only
//! bounds the connect). A timeout after the server took the message but before its reply
//! arrived is reported transient, so the mail may arrive twice; the stable `Message-ID` is
//! what lets the duplicate be recognised. A send that does not finish discards the connection
//! pool, so a connection left mid-transaction is never reused.
//!
//! It never logs or reports a password: [`SmtpSettings`] redacts it in `Debug`, and
//! configuration problems never echo `SMTP_URL` or `SMTP_PASSWORD`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::response::Response;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Digest as _;

use crate::config::Secret;

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// TLS from the first byte (`smtps://`, port 465; RFC 8314).
    Implicit,
    /// Plain connect, then `STARTTLS`; fails if the server does not offer it, so credentials
    /// and mail never travel in clear (port 587).
    StartTlsRequired,
    /// `STARTTLS` if offered, plain otherwise (downgradable: avoid).
    StartTlsOpportunistic,
    /// No TLS at all: only for local relays and tests.
    None,
}

impl fmt::Display for SmtpTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Implicit => "implicit TLS",
            Self::StartTlsRequired => "STARTTLS required",
            Self::StartTlsOpportunistic => "STARTTLS opportunistic",
            Self::None => "no TLS",
        })
    }
}

/// A user name and password for `AUTH`; the password is printed as `***`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpCredentials {
    pub username: String,
    pub password: Secret,
}

/// Where and how to submit mail. `Debug` redacts the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub credentials: Option<SmtpCredentials>,
    /// Bounds the TCP connect, and each whole send (connect, TLS, `AUTH`, transaction).
    pub timeout: Duration,
}

const SPLIT_KEYS: [&str; 5] = ["SMTP_SERVER", "SMTP_PORT", "SMTP_USERNAME", "SMTP_PASSWORD", "SMTP_TLS"];
const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Longest `Message-ID` accepted (it also names the file in files mode).
const MAX_MESSAGE_ID: usize = 200;

/// Reads the SMTP settings through `get` (the environment, or a map in tests). Empty or
/// whitespace-only values count as unset; values are trimmed.
///
/// `Ok(None)` when neither `SMTP_URL` nor any split variable is set (mail then goes to files).
/// `Err` lists every problem found; none of them echoes the URL or the password.
///
/// - `SMTP_URL`: `smtps://user:pass@host[:465]` (implicit TLS), `smtp://user:pass@host[:587]`
///   (STARTTLS required), `smtp://host:25` (no TLS: local relays). For `smtp://`, a query
///   `?tls=required|opportunistic|none` overrides that choice. The user name and password are
///   percent-decoded.
/// - Or `SMTP_SERVER`, `SMTP_PORT` (default 587, or 465 with `SMTP_TLS=implicit`),
///   `SMTP_USERNAME` and `SMTP_PASSWORD` (both or neither), `SMTP_TLS`
///   (`required|opportunistic|none|implicit`; default: implicit on port 465, none on 25,
///   STARTTLS required otherwise).
/// - `SMTP_TIMEOUT_SECS`: 1..=600, default 30; see [`SmtpSettings::timeout`].
pub fn smtp_settings(get: impl Fn(&str) -> Option<String>) -> Result<Option<SmtpSettings>, Vec<String>> {
    let get = |k: &str| get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let mut problems = Vec::new();

    let timeout = match get("SMTP_TIMEOUT_SECS") {
        None => DEFAULT_TIMEOUT_SECS,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=600).contains(&n) => n,
            _ => {
                problems.push(format!("SMTP_TIMEOUT_SECS={v:?}: expected an integer in 1..=600"));
                DEFAULT_TIMEOUT_SECS
            }
        },
    };

    let split: Vec<&str> = SPLIT_KEYS.into_iter().filter(|k| get(k).is_some()).collect();
    let endpoint = match get("SMTP_URL") {
        Some(_) if !split.is_empty() => {
            problems.push(format!("SMTP_URL and {} are both set: configure SMTP one way only", split.join(", ")));
            None
        }
        Some(url) => parse_url(&url, &mut problems),
        None if !split.is_empty() => parse_split(&get, &mut problems),
        None => None,
    };

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(endpoint.map(|(host, port, tls, credentials)| SmtpSettings {
        host,
        port,
        tls,
        credentials,
        timeout: Duration::from_secs(timeout),
    }))
}

type Endpoint = (String, u16, SmtpTls, Option<SmtpCredentials>);

/// `smtp[s]://[user:pass@]host[:port][/][?tls=…]`. Problems never quote any part of the URL:
/// a misplaced character can move a password into any of them.
fn parse_url(url: &str, problems: &mut Vec<String>) -> Option<Endpoint> {
    const HINT: &str = "special characters in the user name or password must be percent-encoded";
    let before = problems.len();
    let Some((scheme, rest)) = url.split_once("://") else {
        problems.push("SMTP_URL: expected smtp://… or smtps://…".into());
        return None;
    };
    let implicit = match scheme.to_ascii_lowercase().as_str() {
        "smtp" => false,
        "smtps" => true,
        _ => {
            problems.push("SMTP_URL: expected smtp://… or smtps://…".into());
            return None;
        }
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    if tail.contains('#') {
        problems.push(format!("SMTP_URL: a fragment (#…) is not allowed; {HINT}"));
    }
    if !path.is_empty() && path != "/" {
        problems.push(format!("SMTP_URL: a path is not supported; {HINT}"));
    }

    let mut tls_param = None;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("tls", v)) if tls_param.is_none() => tls_param = Some(v),
            _ => {
                problems.push("SMTP_URL: the only query parameter supported is tls=required|opportunistic|none".into())
            }
        }
    }
    let tls = match (implicit, tls_param) {
        (true, None) => Some(SmtpTls::Implicit),
        (true, Some(_)) => {
            problems.push("SMTP_URL: smtps:// always uses implicit TLS; drop the tls= parameter".into());
            None
        }
        (false, Some("required")) => Some(SmtpTls::StartTlsRequired),
        (false, Some("opportunistic")) => Some(SmtpTls::StartTlsOpportunistic),
        (false, Some("none")) => Some(SmtpTls::None),
        (false, Some(_)) => {
            problems.push("SMTP_URL: tls= must be required, opportunistic or none".into());
            None
        }
        (false, None) => None, // decided by the port below
    };

    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let credentials = match userinfo.filter(|u| !u.is_empty()).map(|u| u.split_once(':').unwrap_or((u, ""))) {
        None => None,
        Some((user, pass)) => match (percent_decode(user), percent_decode(pass)) {
            (Some(user), Some(pass)) => credentials_pair(
                "SMTP_URL",
                Some(user).filter(|u| !u.is_empty()),
                Some(pass).filter(|p| !p.is_empty()),
                problems,
            ),
            _ => {
                problems.push("SMTP_URL: the user name or password has invalid percent-encoding".into());
                None
            }
        },
    };

    let (host, port) = match split_host_port(hostport) {
        Some((host, port)) if valid_host(&host) => (host, port),
        _ => {
            problems.push(format!("SMTP_URL: expected a host name or address, with an optional :port; {HINT}"));
            (String::new(), None)
        }
    };
    let port = match port {
        None => Some(if implicit { 465 } else { 587 }),
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => {
                problems.push(format!("SMTP_URL: the port must be a number in 1..=65535; {HINT}"));
                None
            }
        },
    };
    if problems.len() > before {
        return None;
    }
    let port = port?;
    let tls = tls.unwrap_or(if port == 25 { SmtpTls::None } else { SmtpTls::StartTlsRequired });
    Some((host, port, tls, credentials))
}

fn parse_split(get: &impl Fn(&str) -> Option<String>, problems: &mut Vec<String>) -> Option<Endpoint> {
    let before = problems.len();
    // An IPv6 address may come in brackets.
    let unbracket = |h: String| h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).map_or(h.clone(), str::to_owned);
    let host = match get("SMTP_SERVER").map(unbracket) {
        Some(h) if valid_host(&h) => Some(h),
        Some(h) => {
            problems.push(format!("SMTP_SERVER={h:?}: expected a host name or IP address (no scheme, no port)"));
            None
        }
        None => {
            problems.push("SMTP_SERVER is not set, but other SMTP_* variables are".into());
            None
        }
    };
    let tls = match get("SMTP_TLS").as_deref() {
        None => None,
        Some("required") => Some(SmtpTls::StartTlsRequired),
        Some("opportunistic") => Some(SmtpTls::StartTlsOpportunistic),
        Some("none") => Some(SmtpTls::None),
        Some("implicit") => Some(SmtpTls::Implicit),
        Some(v) => {
            problems.push(format!("SMTP_TLS={v:?}: expected required, opportunistic, none or implicit"));
            None
        }
    };
    let port = match get("SMTP_PORT") {
        None => Some(if tls == Some(SmtpTls::Implicit) { 465 } else { 587 }),
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => {
                problems.push(format!("SMTP_PORT={p:?}: expected a number in 1..=65535"));
                None
            }
        },
    };
    let credentials =
        credentials_pair("SMTP_USERNAME/SMTP_PASSWORD", get("SMTP_USERNAME"), get("SMTP_PASSWORD"), problems);
    if problems.len() > before {
        return None;
    }
    let (host, port) = (host?, port?);
    let tls = tls.unwrap_or(match port {
        465 => SmtpTls::Implicit,
        25 => SmtpTls::None,
        _ => SmtpTls::StartTlsRequired,
    });
    Some((host, port, tls, credentials))
}

/// Both or neither; the problem names which one is missing, never the values.
fn credentials_pair(
    source: &str,
    user: Option<String>,
    pass: Option<String>,
    problems: &mut Vec<String>,
) -> Option<SmtpCredentials> {
    match (user, pass) {
        (Some(username), Some(password)) => Some(SmtpCredentials { username, password: Secret::new(password) }),
        (None, None) => None,
        (Some(_), None) => {
            problems.push(format!("{source}: a user name is given without a password"));
            None
        }
        (None, Some(_)) => {
            problems.push(format!("{source}: a password is given without a user name"));
            None
        }
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → (host without brackets, port text).
fn split_host_port(s: &str) -> Option<(String, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            a => Some(a.strip_prefix(':')?),
        };
        return Some((host.to_owned(), port));
    }
    Some(match s.split_once(':') {
        Some((h, p)) => (h.to_owned(), Some(p)),
        None => (s.to_owned(), None),
    })
}

/// A DNS name (letters, digits, `-`, `.`, `_`) or an IP address.
fn valid_host(h: &str) -> bool {
    h.parse::<std::net::IpAddr>().is_ok()
        || (!h.is_empty()
            && h.len() <= 253
            && !h.starts_with(['.', '-'])
            && h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
}

/// `%XX` → byte (RFC 3986); the result must be UTF-8. `+` stays `+`.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ------------------------------------------------------------------------------------------
// Sending

/// One summary email. `message_id` is stable across retries (without `<>`, e.g.
/// `call-CA123.summary@switchboard.example`); addresses may carry a display name
/// (`"Voice Agent <agent@example.com>"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEmail {
    pub message_id: String,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The message was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The server's final reply (`250 2.0.0 OK queued as …`), or the path of the file written.
    pub detail: String,
}

/// Why a message was not accepted, classified for the caller's retry policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// May succeed later: connection refused or lost, timeout, TLS failure, a `4xx` reply,
    /// a file that could not be written.
    #[error("transient mail failure: {0}")]
    Transient(String),
    /// Will not succeed as it is: a `5xx` reply, an address or message id that does not parse.
    #[error("permanent mail failure: {0}")]
    Permanent(String),
}

impl SendError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

/// A [`Mailer`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("SMTP {server}: cannot set up the transport: {source}")]
    Transport {
        server: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("Mailer::smtp must be called inside a Tokio runtime (the connection pool spawns a task)")]
    NoRuntime,
}

/// Sends [`OutgoingEmail`]s over SMTP, or writes them to files. Cheap to clone; clones share
/// the SMTP connection pool.
#[derive(Clone)]
pub struct Mailer {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Smtp(Arc<SmtpInner>),
    Files { dir: PathBuf },
}

type Transport = AsyncSmtpTransport<Tokio1Executor>;

struct SmtpInner {
    settings: SmtpSettings,
    /// `host:port (tls mode)`, for messages.
    server: String,
    /// One pooled transport, replaced when a send is abandoned (see [`Abandoned`]).
    transport: Mutex<Transport>,
}

impl SmtpInner {
    fn transport(&self) -> Transport {
        self.transport.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts a new pool. The old one (and the connection stuck in it) is dropped once the last
    /// send using it ends.
    fn replace_transport(&self) {
        match build_transport(&self.settings) {
            Ok(t) => *self.transport.lock().unwrap_or_else(|e| e.into_inner()) = t,
            // Cannot happen with settings that built once; keep the old pool if it does.
            Err(e) => tracing::warn!(server = %self.server, error = %e, "cannot rebuild the SMTP transport"),
        }
    }
}

/// Armed while a send is in flight. lettre's async transport applies its timeout to the TCP
/// connect only, and a send dropped half-way (our deadline, or the caller's cancellation) puts
/// its connection back in the pool mid-transaction, where the next send would wait on it for
/// ever. So a send that does not finish discards the whole pool.
struct Abandoned<'a> {
    inner: &'a SmtpInner,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        // Building a pool spawns its cleanup task: only possible inside a runtime.
        if self.armed && tokio::runtime::Handle::try_current().is_ok() {
            tracing::debug!(server = %self.inner.server, "SMTP send abandoned: starting a new connection pool");
            self.inner.replace_transport();
        }
    }
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mailer({self})")
    }
}

/// `SMTP smtp.example.com:587 (STARTTLS required)` or `files in ./outbox`.
impl fmt::Display for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Smtp(inner) => write!(f, "SMTP {}", inner.server),
            Kind::Files { dir } => write!(f, "files in {}", dir.display()),
        }
    }
}

impl Mailer {
    /// One pooled SMTP transport for `settings` (lettre `relay` for implicit TLS,
    /// `starttls_relay` for STARTTLS required, `builder_dangerous` with `Tls::Opportunistic` or
    /// no TLS otherwise; the configured port and credentials). `settings.timeout` bounds the
    /// connect and, separately, each whole send. No connection is made until the first send.
    /// Must be called inside a Tokio runtime.
    pub fn smtp(settings: SmtpSettings) -> Result<Mailer, MailError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(MailError::NoRuntime);
        }
        let (host, port, tls) = (&settings.host, settings.port, settings.tls);
        let server = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        if settings.credentials.is_some() && tls == SmtpTls::None && !is_loopback(host) {
            tracing::warn!(%server, "SMTP credentials will be sent without TLS");
        }
        let transport =
            build_transport(&settings).map_err(|source| MailError::Transport { server: server.clone(), source })?;
        let server = format!("{server} ({tls})");
        Ok(Mailer { kind: Kind::Smtp(Arc::new(SmtpInner { settings, server, transport: Mutex::new(transport) })) })
    }

    /// Writes each message to `dir/<message id>.eml` instead of sending it (the default when
    /// no SMTP server is configured). The directory is created on first use.
    pub fn files(dir: PathBuf) -> Mailer {
        Mailer { kind: Kind::Files { dir } }
    }

    /// Sends `email` once and says how it went; see the module docs for what is transient.
    pub async fn send(&self, email: &OutgoingEmail) -> Result<Delivered, SendError> {
        let message = build_message(email)?;
        match &self.kind {
            Kind::Smtp(inner) => {
                let server = &inner.server;
                let deadline = inner.settings.timeout;
                let attempt = async {
                    let transport = inner.transport();
                    let mut abandoned = Abandoned { inner, armed: true };
                    let result = transport.send(message).await;
                    abandoned.armed = false;
                    result
                };
                match tokio::time::timeout(deadline, attempt).await {
                    Ok(Ok(response)) => {
                        let detail = reply_text(&response);
                        tracing::info!(message_id = %email.message_id, %server, reply = %detail, "mail sent");
                        Ok(Delivered { detail })
                    }
                    Ok(Err(e)) => Err(classify(server, &e)),
                    Err(_) => Err(SendError::Transient(format!("SMTP {server}: timed out after {deadline:?}"))),
                }
            }
            Kind::Files { dir } => {
                let path = write_atomically(dir, &file_name(&email.message_id), &message.formatted()).await?;
                tracing::info!(message_id = %email.message_id, path = %path.display(), "mail written to a file (no SMTP server configured)");
                Ok(Delivered { detail: path.display().to_string() })
            }
        }
    }
}

fn build_transport(settings: &SmtpSettings) -> Result<Transport, lettre::transport::smtp::Error> {
    let host = settings.host.as_str();
    let builder = match settings.tls {
        SmtpTls::Implicit => Transport::relay(host)?,
        SmtpTls::StartTlsRequired => Transport::starttls_relay(host)?,
        SmtpTls::StartTlsOpportunistic => {
            Transport::builder_dangerous(host).tls(Tls::Opportunistic(TlsParameters::new(host.to_owned())?))
        }
        SmtpTls::None => Transport::builder_dangerous(host),
    };
    let mut builder = builder.port(settings.port).timeout(Some(settings.timeout));
    if let Some(c) = &settings.credentials {
        builder = builder
            .credentials(Credentials::new(c.username.clone(), c.password.expose().to_owned()))
            .authentication(vec![Mechanism::Plain, Mechanism::Login]);
    }
    Ok(builder.build())
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `250 2.0.0 OK queued as …` (all lines of the reply, joined by spaces).
fn reply_text(response: &Response) -> String {
    let lines: Vec<&str> = response.message().collect();
    format!("{} {}", response.code(), lines.join(" ")).trim_end().to_owned()
}

/// `5xx` → permanent; everything else (4xx, network, connection, timeout, TLS, a server that
/// does not offer STARTTLS or a usable AUTH mechanism, a malformed reply) → transient.
fn classify(server: &str, e: &lettre::transport::smtp::Error) -> SendError {
    if e.is_permanent() {
        SendError::Permanent(format!("SMTP {server}: {e}"))
    } else if e.is_timeout() {
        SendError::Transient(format!("SMTP {server}: timed out: {e}"))
    } else {
        SendError::Transient(format!("SMTP {server}: {e}"))
    }
}

/// The RFC 5322 message: From, To (each), Subject, `Message-ID: <id>`, Date, and a
/// `multipart/alternative` body with the UTF-8 text part first and the HTML part last.
fn build_message(email: &OutgoingEmail) -> Result<Message, SendError> {
    check_message_id(&email.message_id)?;
    let mailbox = |role: &str, s: &str| {
        s.parse::<Mailbox>().map_err(|e| SendError::Permanent(format!("invalid {role} address {s:?}: {e}")))
    };
    if email.to.is_empty() {
        return Err(SendError::Permanent("no recipients".into()));
    }
    let mut builder = Message::builder().from(mailbox("From", &email.from)?);
    for to in &email.to {
        builder = builder.to(mailbox("To", to)?);
    }
    builder
        .subject(email.subject.as_str())
        .message_id(Some(format!("<{}>", email.message_id)))
        .multipart(MultiPart::alternative_plain_html(email.text.clone(), email.html.clone()))
        .map_err(|e| SendError::Permanent(format!("cannot build the message: {e}")))
}

/// `left@right`, printable ASCII without `<`, `>` or spaces, at most 200 characters: enough
/// for RFC 5322's msg-id and safe as a file name once sanitised.
fn check_message_id(id: &str) -> Result<(), SendError> {
    let well_formed = id.len() <= MAX_MESSAGE_ID
        && id.bytes().all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
        && id.split_once('@').is_some_and(|(l, r)| !l.is_empty() && !r.is_empty() && !r.contains('@'));
    if well_formed {
        Ok(())
    } else {
        Err(SendError::Permanent(format!(
            "invalid Message-ID {id:?}: expected left@right in printable ASCII without <>, at most {MAX_MESSAGE_ID} characters"
        )))
    }
}

/// `<id>.eml` with every character outside `[A-Za-z0-9._@+=-]` (and a leading `.`) replaced by
/// `_`; if anything was replaced, a hash of the id is appended so two ids cannot share a file.
fn file_name(message_id: &str) -> String {
    let safe: String = message_id
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let keep = c.is_ascii_alphanumeric() || matches!(c, '_' | '@' | '+' | '=' | '-') || (c == '.' && i > 0);
            if keep { c } else { '_' }
        })
        .collect();
    if safe == message_id {
        format!("{safe}.eml")
    } else {
        let digest = sha2::Sha256::digest(message_id.as_bytes());
        format!("{safe}-{}.eml", &hex::encode(digest)[..12])
    }
}

/// Writes `bytes` to `dir/name` through a temporary file in the same directory and a rename,
/// so a reader never sees half a message and a second write replaces the first.
async fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, SendError> {
    let io =
        |what: &str, path: &Path, e: std::io::Error| SendError::Transient(format!("{what} {}: {e}", path.display()));
    tokio::fs::create_dir_all(dir).await.map_err(|e| io("cannot create", dir, e))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = async {
        use tokio::io::AsyncWriteExt as _;
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await?;
        tokio::fs::rename(&tmp, &path).await
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io("cannot write", &path, e));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{ReceivedMail, SinkMode, SmtpSink};
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Option<SmtpSettings>, Vec<String>> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        smtp_settings(|k| m.get(k).cloned())
    }

    fn ok(pairs: &[(&str, &str)]) -> SmtpSettings {
        settings(pairs).unwrap().unwrap()
    }

    fn problems(pairs: &[(&str, &str)]) -> Vec<String> {
        let p = settings(pairs).unwrap_err();
        for (_, v) in pairs {
            for secret in ["hunter2", "s3cr%40t", "s3cr@t"] {
                if v.contains(secret) {
                    assert!(!p.join("\n").contains(secret), "password echoed: {p:?}");
                }
            }
        }
        p
    }

    fn creds(s: &SmtpSettings) -> Option<(&str, &str)> {
        s.credentials.as_ref().map(|c| (c.username.as_str(), c.password.expose()))
    }

    #[test]
    fn nothing_set_means_no_smtp() {
        assert_eq!(settings(&[]).unwrap(), None);
        assert_eq!(settings(&[("SMTP_URL", "  "), ("SMTP_SERVER", "")]).unwrap(), None);
    }

    #[test]
    fn smtp_urls_choose_tls_port_and_credentials() {
        let s = ok(&[("SMTP_URL", "smtp://user:hunter2@mail.example.com:587")]);
        assert_eq!((s.host.as_str(), s.port, s.tls), ("mail.example.com", 587, SmtpTls::StartTlsRequired));
        assert_eq!(creds(&s), Some(("user", "hunter2")));
        assert_eq!(s.timeout, Duration::from_secs(30));

        let s = ok(&[("SMTP_URL", "smtps://user:hunter2@mail.example.com"), ("SMTP_TIMEOUT_SECS", "5")]);
        assert_eq!((s.port, s.tls, s.timeout), (465, SmtpTls::Implicit, Duration::from_secs(5)));

        let s = ok(&[("SMTP_URL", "SMTPS://mail.example.com:2465/")]);
        assert_eq!((s.port, s.tls, s.credentials), (2465, SmtpTls::Implicit, None));

        let s = ok(&[("SMTP_URL", "smtp://relay.internal:25")]);
        assert_eq!((s.port, s.tls, s.credentials), (25, SmtpTls::None, None));

        let s = ok(&[("SMTP_URL", "smtp://mail.example.com")]);
        assert_eq!((s.port, s.tls), (587, SmtpTls::StartTlsRequired));

        for (q, tls) in [
            ("required", SmtpTls::StartTlsRequired),
            ("opportunistic", SmtpTls::StartTlsOpportunistic),
            ("none", SmtpTls::None),
        ] {
            let s = ok(&[("SMTP_URL", &format!("smtp://127.0.0.1:2525?tls={q}"))]);
            assert_eq!((s.host.as_str(), s.port, s.tls), ("127.0.0.1", 2525, tls));
        }
        let s = ok(&[("SMTP_URL", "smtp://relay:25?tls=required")]);
        assert_eq!(s.tls, SmtpTls::StartTlsRequired, "the query overrides the port's default");

        let s = ok(&[("SMTP_URL", "smtp://[::1]:1025?tls=none")]);
        assert_eq!((s.host.as_str(), s.port), ("::1", 1025));
    }

    #[test]
    fn url_userinfo_is_percent_decoded() {
        let s = ok(&[("SMTP_URL", "smtps://apikey%40example.com:s3cr%40t%3A%2F+x@smtp.example.com")]);
        assert_eq!(creds(&s), Some(("apikey@example.com", "s3cr@t:/+x")));
        // An unencoded '@' in the password still finds the host (the last '@' wins).
        let s = ok(&[("SMTP_URL", "smtps://user:s3cr@t@smtp.example.com")]);
        assert_eq!((s.host.as_str(), creds(&s)), ("smtp.example.com", Some(("user", "s3cr@t"))));
    }

    #[test]
    fn bad_urls_are_reported_without_the_password() {
        let cases: &[(&str, &str)] = &[
            ("http://user:hunter2@mail.example.com", "expected smtp://"),
            ("mail.example.com", "expected smtp://"),
            ("smtp://user@mail.example.com", "user name is given without a password"),
            ("smtp://:hunter2@mail.example.com", "password is given without a user name"),
            ("smtp://user:hunter2@mail.example.com:99999", "port"),
            ("smtp://user:hunter2@mail.example.com:abc", "port"),
            ("smtp://user:hunter2", "port"), // no '@': the password lands in the port
            ("smtp://user:hunter2@", "host name"),
            ("smtp://user:hunter2@mail.example.com?tls=always", "tls= must be"),
            ("smtp://user:hunter2@mail.example.com?auth=plain", "only query parameter"),
            ("smtps://user:hunter2@mail.example.com?tls=none", "drop the tls="),
            ("smtp://user:hunter2@mail.example.com/ehlo", "path"),
            ("smtp://user:hunter2@mail.example.com#x", "fragment"),
            ("smtp://us%zzer:hunter2@mail.example.com", "percent-encoding"),
            ("smtp://user:pa/hunter2@mail.example.com", "path"),
        ];
        for (url, expected) in cases {
            let p = problems(&[("SMTP_URL", url)]);
            assert!(p.iter().any(|p| p.contains(expected)), "{url}: {p:?}");
            assert!(p.iter().all(|p| !p.contains("hunter2")), "{url}: {p:?}");
        }
    }

    #[test]
    fn split_variables_work_and_default_by_port() {
        let s = ok(&[
            ("SMTP_SERVER", "smtp.example.com"),
            ("SMTP_USERNAME", "agent"),
            ("SMTP_PASSWORD", "hunter2"),
            ("SMTP_TIMEOUT_SECS", "10"),
        ]);
        assert_eq!((s.host.as_str(), s.port, s.tls), ("smtp.example.com", 587, SmtpTls::StartTlsRequired));
        assert_eq!((creds(&s), s.timeout), (Some(("agent", "hunter2")), Duration::from_secs(10)));
        assert_eq!(ok(&[("SMTP_SERVER", "h"), ("SMTP_PORT", "465")]).tls, SmtpTls::Implicit);
        assert_eq!(ok(&[("SMTP_SERVER", "h"), ("SMTP_PORT", "25")]).tls, SmtpTls::None);
        assert_eq!(ok(&[("SMTP_SERVER", "h"), ("SMTP_PORT", "2525")]).tls, SmtpTls::StartTlsRequired);
        let s = ok(&[("SMTP_SERVER", "h"), ("SMTP_TLS", "implicit")]);
        assert_eq!((s.port, s.tls), (465, SmtpTls::Implicit));
        let s = ok(&[("SMTP_SERVER", "h"), ("SMTP_PORT", "25"), ("SMTP_TLS", "opportunistic")]);
        assert_eq!(s.tls, SmtpTls::StartTlsOpportunistic);
        let s = ok(&[("SMTP_SERVER", "[::1]"), ("SMTP_PORT", "2525"), ("SMTP_TLS", "none")]);
        assert_eq!((s.host.as_str(), s.tls), ("::1", SmtpTls::None));
    }

    #[test]
    fn split_variable_and_conflict_problems_are_all_reported() {
        let p = problems(&[("SMTP_USERNAME", "agent"), ("SMTP_PORT", "x"), ("SMTP_TLS", "yes")]);
        assert_eq!(p.len(), 4, "{p:?}"); // no server, bad port, bad tls, user without password
        assert!(p.iter().any(|p| p.contains("SMTP_SERVER is not set")), "{p:?}");
        assert!(p.iter().any(|p| p.contains("without a password")), "{p:?}");
        let p = problems(&[("SMTP_SERVER", "h"), ("SMTP_PASSWORD", "hunter2")]);
        assert_eq!(p, vec!["SMTP_USERNAME/SMTP_PASSWORD: a password is given without a user name"]);
        let p = problems(&[("SMTP_SERVER", "smtp://h"), ("SMTP_TIMEOUT_SECS", "0")]);
        assert_eq!(p.len(), 2, "{p:?}");

        let p =
            problems(&[("SMTP_URL", "smtp://user:hunter2@h:587"), ("SMTP_SERVER", "h"), ("SMTP_PASSWORD", "hunter2")]);
        assert_eq!(p, vec!["SMTP_URL and SMTP_SERVER, SMTP_PASSWORD are both set: configure SMTP one way only"]);
    }

    #[test]
    fn debug_redacts_the_password() {
        let s = ok(&[("SMTP_URL", "smtps://agent:hunter2@smtp.example.com")]);
        let dbg = format!("{s:?}");
        assert!(dbg.contains("agent") && dbg.contains("smtp.example.com"), "{dbg}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    fn email(id: &str) -> OutgoingEmail {
        OutgoingEmail {
            message_id: id.into(),
            from: "Voice Agent <agent@example.com>".into(),
            to: vec!["owner@example.com".into(), "Jane Doe <jane@example.com>".into()],
            subject: "Call summary – Zoë from Café Crème".into(),
            text: "Summary: caller asked about opening hours.\nPrix: 12 €.".into(),
            html: "<p><b>Summary:</b> caller asked about opening hours. Prix: 12 €.</p>".into(),
        }
    }

    fn parsed(data: String) -> ReceivedMail {
        ReceivedMail { mail_from: String::new(), rcpt_to: vec![], data, auth_user: None }
    }

    /// What every formatted message must satisfy, whichever way it travelled.
    fn assert_well_formed(m: &ReceivedMail, e: &OutgoingEmail) {
        assert_eq!(m.header("Message-ID").unwrap(), format!("<{}>", e.message_id));
        assert_eq!(m.header("Subject").unwrap(), e.subject);
        assert!(m.header("From").unwrap().contains("agent@example.com"));
        let to = m.header("To").unwrap();
        assert!(to.contains("owner@example.com") && to.contains("jane@example.com"), "{to}");
        assert!(m.header("Date").is_some());
        assert_eq!(m.content_type().as_deref(), Some("multipart/alternative"));
        assert_eq!(m.part("text/plain").unwrap(), e.text.replace('\n', "\r\n"));
        assert_eq!(m.part("text/html").unwrap(), e.html);
        let (plain, html) =
            (m.data.find("Content-Type: text/plain").unwrap(), m.data.find("Content-Type: text/html").unwrap());
        assert!(plain < html, "plain text part first");
        assert!(m.data.to_ascii_lowercase().contains("text/plain; charset=utf-8"));
    }

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("switchboard-mail-{}", uuid::Uuid::new_v4().simple()))
    }

    #[tokio::test]
    async fn files_mode_writes_one_parseable_file_per_message_id() {
        let dir = temp_dir().join("outbox");
        let mailer = Mailer::files(dir.clone());
        let e = email("call-CA42.summary@switchboard.example");
        let delivered = mailer.send(&e).await.unwrap();
        let path = dir.join("call-CA42.summary@switchboard.example.eml");
        assert_eq!(delivered.detail, path.display().to_string());
        assert_well_formed(&parsed(std::fs::read_to_string(&path).unwrap()), &e);

        // A retry of the same message replaces the file instead of adding one.
        let retry = OutgoingEmail { subject: "second attempt".into(), ..e.clone() };
        assert_eq!(mailer.send(&retry).await.unwrap().detail, delivered.detail);
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|f| f.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(parsed(std::fs::read_to_string(&path).unwrap()).header("Subject").unwrap(), "second attempt");

        // Unsafe characters are replaced, and a hash keeps such ids apart.
        let odd = mailer.send(&email("a/b@x")).await.unwrap();
        let odd2 = mailer.send(&email("a_b@x")).await.unwrap();
        assert!(odd.detail.ends_with(".eml") && odd.detail.contains("a_b@x-"), "{}", odd.detail);
        assert_ne!(odd.detail, odd2.detail);
        assert_eq!(Path::new(&odd.detail).parent(), Some(dir.as_path()));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn files_mode_io_errors_are_transient() {
        let dir = temp_dir();
        std::fs::write(&dir, b"a file, not a directory").unwrap();
        let err = Mailer::files(dir.join("outbox")).send(&email("x@y")).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        std::fs::remove_file(&dir).unwrap();
    }

    #[tokio::test]
    async fn bad_addresses_and_ids_are_permanent_and_nothing_is_sent() {
        let sink = SmtpSink::start().await.unwrap();
        let mailer = Mailer::smtp(sink_settings(&sink)).unwrap();
        let cases = [
            OutgoingEmail { from: "not an address".into(), ..email("a@b") },
            OutgoingEmail { to: vec!["owner@example.com".into(), "owner at example".into()], ..email("a@b") },
            OutgoingEmail { to: vec![], ..email("a@b") },
            email("no-at-sign"),
            email("<a@b>"),
            email("a b@c"),
            email(&format!("{}@b", "x".repeat(MAX_MESSAGE_ID))),
        ];
        for e in &cases {
            let err = mailer.send(e).await.unwrap_err();
            assert!(err.is_permanent(), "{e:?}: {err}");
        }
        let err = mailer.send(&cases[1]).await.unwrap_err();
        assert!(err.to_string().contains("\"owner at example\""), "{err}");
        assert_eq!(sink.connections(), 0);
    }

    #[test]
    fn header_injection_through_the_subject_is_not_possible() {
        let e = OutgoingEmail { subject: "hi\r\nBcc: evil@example.com".into(), ..email("a@b") };
        let m = parsed(String::from_utf8(build_message(&e).unwrap().formatted()).unwrap());
        assert_eq!(m.header("Bcc"), None, "{}", m.data);
    }

    fn sink_settings(sink: &SmtpSink) -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".into(),
            port: sink.addr().port(),
            tls: SmtpTls::None,
            credentials: None,
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn smtp_delivers_both_parts_and_the_message_id() {
        let sink = SmtpSink::start().await.unwrap();
        let settings = smtp_settings(|k| (k == "SMTP_URL").then(|| sink.url())).unwrap().unwrap();
        let settings = SmtpSettings {
            credentials: Some(SmtpCredentials { username: "agent".into(), password: Secret::new("pw") }),
            ..settings
        };
        let mailer = Mailer::smtp(settings).unwrap();
        assert!(mailer.to_string().contains("(no TLS)"), "{mailer}");
        let e = email("call-CA7.summary@switchboard.example");
        let delivered = mailer.send(&e).await.unwrap();
        assert!(delivered.detail.starts_with("250 ") && delivered.detail.contains("queued"), "{}", delivered.detail);

        let m = sink.wait_for_messages(1, Duration::from_secs(5)).await.unwrap().remove(0);
        assert_eq!(m.mail_from, "agent@example.com");
        assert_eq!(m.rcpt_to, vec!["owner@example.com", "jane@example.com"]);
        assert_eq!(m.auth_user.as_deref(), Some("agent"));
        assert_well_formed(&m, &e);

        // The pooled connection is reused for the next message (lettre parks it from a spawned
        // task, hence the pause).
        tokio::time::sleep(Duration::from_millis(50)).await;
        mailer.send(&email("second@switchboard.example")).await.unwrap();
        assert_eq!((sink.messages().len(), sink.connections()), (2, 1));
    }

    #[tokio::test]
    async fn smtp_replies_are_classified() {
        let sink = SmtpSink::start().await.unwrap();
        let mailer = Mailer::smtp(sink_settings(&sink)).unwrap();

        sink.set_mode(SinkMode::TempFail);
        let err = mailer.send(&email("a@b")).await.unwrap_err();
        assert!(err.is_transient() && err.to_string().contains("451"), "{err}");

        sink.set_mode(SinkMode::Reject);
        let err = mailer.send(&email("a@b")).await.unwrap_err();
        assert!(err.is_permanent(), "{err}");
        assert!(err.to_string().contains("550") && err.to_string().contains("Reject mode"), "{err}");

        sink.set_mode(SinkMode::Hangup);
        let err = mailer.send(&email("a@b")).await.unwrap_err();
        assert!(err.is_transient(), "{err}");

        sink.set_mode(SinkMode::Accept);
        mailer.send(&email("a@b")).await.unwrap();
        assert_eq!(sink.messages().len(), 1);
    }

    #[tokio::test]
    async fn an_outage_is_transient_and_the_same_mailer_recovers() {
        let sink = SmtpSink::start().await.unwrap();
        let addr = sink.addr();
        let mailer = Mailer::smtp(sink_settings(&sink)).unwrap();
        mailer.send(&email("before@b")).await.unwrap();

        sink.stop().await;
        let err = mailer.send(&email("during@b")).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "names the server: {err}");

        let sink = SmtpSink::start_on(addr).await.unwrap();
        mailer.send(&email("after@b")).await.unwrap();
        let m = sink.wait_for_messages(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(m[0].header("Message-ID").unwrap(), "<after@b>");
    }

    #[tokio::test]
    async fn timeouts_and_tls_failures_are_transient() {
        // Accepts connections and never says a word.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let settings = SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            tls: SmtpTls::None,
            credentials: None,
            timeout: Duration::from_millis(200),
        };
        let err = Mailer::smtp(settings).unwrap().send(&email("a@b")).await.unwrap_err();
        assert!(err.is_transient() && err.to_string().contains("timed out"), "{err}");
        held.abort();

        let sink = SmtpSink::start().await.unwrap();
        for tls in [SmtpTls::StartTlsRequired, SmtpTls::Implicit] {
            let mailer = Mailer::smtp(SmtpSettings { tls, ..sink_settings(&sink) }).unwrap();
            let err = mailer.send(&email("a@b")).await.unwrap_err();
            assert!(err.is_transient(), "{tls}: {err}");
        }
        assert!(sink.messages().is_empty());
    }

    #[tokio::test]
    async fn a_send_that_times_out_mid_transaction_does_not_poison_the_pool() {
        let sink = SmtpSink::start().await.unwrap();
        let mailer =
            Mailer::smtp(SmtpSettings { timeout: Duration::from_millis(300), ..sink_settings(&sink) }).unwrap();
        mailer.send(&email("first@b")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // let lettre park the connection

        sink.set_mode(SinkMode::Stall);
        let err = mailer.send(&email("stalled@b")).await.unwrap_err();
        assert!(err.is_transient() && err.to_string().contains("timed out"), "{err}");

        // The stalled connection must not be reused: it would never answer again.
        sink.set_mode(SinkMode::Accept);
        tokio::time::sleep(Duration::from_millis(50)).await;
        mailer.send(&email("after@b")).await.unwrap();
        let ids: Vec<String> = sink.messages().iter().filter_map(|m| m.header("Message-ID")).collect();
        assert_eq!(ids, vec!["<first@b>", "<after@b>"]);
    }

    #[tokio::test]
    async fn nothing_listening_is_transient() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let settings = SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            tls: SmtpTls::None,
            credentials: None,
            timeout: Duration::from_secs(5),
        };
        let err = Mailer::smtp(settings).unwrap().send(&email("a@b")).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
    }

    #[test]
    fn smtp_needs_a_runtime() {
        let s = ok(&[("SMTP_URL", "smtp://h:25")]);
        assert!(matches!(Mailer::smtp(s), Err(MailError::NoRuntime)));
    }
}
