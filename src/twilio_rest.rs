//! Twilio's REST API, the one resource the daemon needs: update a live Call (protocols.md
//! A.5.1) to hang it up ([`TwilioRest::end_call`], `Status=completed`) or to run new TwiML in
//! its place ([`TwilioRest::redirect`], `Twiml=…`, e.g. a `<Dial>` to a human).
//!
//! One request, one classified answer: it does not retry (the caller knows whether the call is
//! still worth a second try; [`TwilioError::is_retryable`] and [`TwilioError::retry_after`] say
//! whether it may help). It must never put the auth token in an error or a log line, and it
//! never sends a CallSid it has not checked, so a hostile value cannot change the URL's path.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use serde::Deserialize;

use crate::config::Secret;
use crate::openai::chat::transport_message;

/// Where Twilio's REST API lives.
pub const DEFAULT_API_BASE: &str = "https://api.twilio.com";

/// Whole-request budget (connect, send, wait, read). Updating a call is quick; one stuck
/// request must not hold a hang-up for long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest error message kept from a response body.
const MAX_MESSAGE_CHARS: usize = 500;

/// Twilio's error code for "the requested resource was not found".
const CODE_NOT_FOUND: u32 = 20404;
/// "Call is not in-progress. Cannot redirect." (the call is no longer live).
const CODE_CALL_NOT_IN_PROGRESS: u32 = 21220;

#[derive(Debug, Clone)]
pub struct TwilioRest {
    http: reqwest::Client,
    api_base: String,
    account_sid: String,
    auth_token: Secret,
    /// Whole-request timeout.
    pub timeout: Duration,
}

/// What [`TwilioRest::end_call`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOutcome {
    /// Twilio accepted `Status=completed`: the call is over (or ending).
    Ended,
    /// The call had already ended (or never existed for this account): nothing to hang up.
    AlreadyEnded,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwilioError {
    /// A non-2xx answer other than 429, read from Twilio's error body
    /// (`{"code", "message", "more_info", "status"}`) when it has one.
    #[error("Twilio answered HTTP {status}{}: {message}", code.map(|c| format!(" (error {c})")).unwrap_or_default())]
    Api { status: u16, code: Option<u32>, message: String, more_info: Option<String> },
    /// 429: too many requests; wait `retry_after` (when Twilio said) and retry.
    #[error("Twilio rate limit (HTTP 429){}", retry_after.map(|d| format!(", retry after {:.1} s", d.as_secs_f64())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// No usable answer: connect failure, timeout, a body that could not be read.
    #[error("Twilio request failed: {0}")]
    Transport(String),
    /// Not `CA` + 32 hex digits; nothing was sent. Holds the value, clipped and quoted.
    #[error("not a Twilio CallSid: {0}")]
    InvalidCallSid(String),
    /// The configured account SID is not `AC` + 32 hex digits; nothing was sent.
    #[error("not a Twilio AccountSid: {0}")]
    InvalidAccountSid(String),
}

impl TwilioError {
    /// Whether the same request may succeed later: 429, 5xx and transport failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            TwilioError::RateLimited { .. } | TwilioError::Transport(_) => true,
            TwilioError::Api { status, .. } => *status >= 500,
            TwilioError::InvalidCallSid(_) | TwilioError::InvalidAccountSid(_) => false,
        }
    }

    /// The delay Twilio asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TwilioError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// Twilio's error code (`20404`, `21220`…), if the answer had one.
    pub fn code(&self) -> Option<u32> {
        match self {
            TwilioError::Api { code, .. } => *code,
            _ => None,
        }
    }
}

/// Twilio's error body (A.5.1). Every field is optional: a proxy may answer instead.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: Option<u32>,
    message: Option<String>,
    more_info: Option<String>,
}

/// `prefix` + 32 hex digits, as every Twilio SID of that kind.
fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s.as_bytes()[2..].iter().all(u8::is_ascii_hexdigit)
}

/// A rejected value as it can appear in an error: `Debug`-quoted (so control characters are
/// visible) and clipped.
fn shown(s: &str) -> String {
    format!("{:?}", clip(s, 64))
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

impl TwilioRest {
    /// `api_base` is [`DEFAULT_API_BASE`] in production (a trailing slash is fine).
    pub fn new(http: reqwest::Client, api_base: String, account_sid: String, auth_token: Secret) -> Self {
        let api_base = api_base.trim_end_matches('/').to_string();
        TwilioRest { http, api_base, account_sid, auth_token, timeout: REQUEST_TIMEOUT }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Hangs up `call_sid` (`Status=completed`, which ends the call even when it is in progress
    /// or inside `<Dial>`). Idempotent: a call that is already gone is [`EndOutcome::AlreadyEnded`]
    /// (Twilio's 404 / 20404, or 21220 "not in-progress"), not an error.
    pub async fn end_call(&self, call_sid: &str) -> Result<EndOutcome, TwilioError> {
        match self.update(call_sid, &[("Status", "completed")], "end call").await {
            Ok(()) => Ok(EndOutcome::Ended),
            Err(TwilioError::Api { status: 404, code: Some(CODE_NOT_FOUND), .. })
            | Err(TwilioError::Api { code: Some(CODE_CALL_NOT_IN_PROGRESS), .. }) => {
                tracing::info!(call_sid, "twilio: call already ended");
                Ok(EndOutcome::AlreadyEnded)
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces what `call_sid` is doing with `twiml` (a whole `<Response>` document, see
    /// `crate::core::twilio::twiml`). A call inside `<Connect><Stream>` loses its stream: Twilio
    /// sends `stop` and closes the media socket, then runs `twiml`.
    pub async fn redirect(&self, call_sid: &str, twiml: &str) -> Result<(), TwilioError> {
        self.update(call_sid, &[("Twiml", twiml)], "redirect").await
    }

    /// `POST {base}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` with `params`.
    async fn update(&self, call_sid: &str, params: &[(&str, &str)], what: &'static str) -> Result<(), TwilioError> {
        if !is_sid(call_sid, "CA") {
            tracing::warn!(call_sid = %shown(call_sid), "twilio {what}: refusing an invalid CallSid");
            return Err(TwilioError::InvalidCallSid(shown(call_sid)));
        }
        if !is_sid(&self.account_sid, "AC") {
            tracing::warn!(account_sid = %shown(&self.account_sid), "twilio {what}: invalid AccountSid configured");
            return Err(TwilioError::InvalidAccountSid(shown(&self.account_sid)));
        }
        let url = format!("{}/2010-04-01/Accounts/{}/Calls/{call_sid}.json", self.api_base, self.account_sid);
        // Finished before the first await: the serializer is not `Send`.
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            for (k, v) in params {
                form.append_pair(k, v);
            }
            form.finish()
        };
        let started = std::time::Instant::now();
        let resp = self
            .http
            .post(&url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(body)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.transport(call_sid, what, &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| self.transport(call_sid, what, &e))?;
        tracing::debug!(
            call_sid,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "twilio {what}"
        );
        if status.is_success() {
            return Ok(());
        }
        let err = self.classify(status, &headers, &body);
        let (code, more_info) = match &err {
            TwilioError::Api { code, more_info, .. } => (*code, more_info.clone()),
            _ => (None, None),
        };
        tracing::warn!(
            call_sid,
            status = status.as_u16(),
            twilio_code = code.map(i64::from).unwrap_or(-1),
            more_info = more_info.as_deref().unwrap_or(""),
            "twilio {what} failed: {err}"
        );
        Err(err)
    }

    fn transport(&self, call_sid: &str, what: &'static str, e: &reqwest::Error) -> TwilioError {
        let message = self.redact(&transport_message(e, self.timeout));
        tracing::warn!(call_sid, "twilio {what} failed: {message}");
        TwilioError::Transport(message)
    }

    /// Maps a non-2xx answer to its error.
    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> TwilioError {
        if status == StatusCode::TOO_MANY_REQUESTS {
            return TwilioError::RateLimited { retry_after: crate::openai::chat::retry_after(headers) };
        }
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let (code, message, more_info) = match parsed {
            Some(b) => (b.code, b.message, b.more_info),
            None => (None, None, None),
        };
        let message = message
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
        let message =
            if message.is_empty() { status.canonical_reason().unwrap_or("no message").to_string() } else { message };
        TwilioError::Api {
            status: status.as_u16(),
            code,
            message: self.redact(&clip(&message, MAX_MESSAGE_CHARS)),
            more_info: more_info.map(|m| self.redact(&clip(&m, MAX_MESSAGE_CHARS))),
        }
    }

    /// Removes the auth token from a message bound for an error or a log line.
    fn redact(&self, message: &str) -> String {
        let token = self.auth_token.expose();
        if token.is_empty() { message.to_string() } else { message.replace(token, "***") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::FakeTwilioRest;
    use crate::testkit::fake_twilio_rest::{error_body, not_found_body};
    use serde_json::json;

    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "tok-0123456789secret";
    const CALL: &str = "CAfedcba9876543210fedcba9876543210";
    const WAIT: Duration = Duration::from_secs(2);

    async fn setup() -> (FakeTwilioRest, TwilioRest) {
        let fake = FakeTwilioRest::start(ACCOUNT, TOKEN).await.unwrap();
        let client = TwilioRest::new(reqwest::Client::new(), fake.base_url() + "/", ACCOUNT.into(), Secret::new(TOKEN));
        (fake, client)
    }

    #[tokio::test]
    async fn end_call_sends_status_completed_with_basic_auth() {
        let (fake, client) = setup().await;
        assert_eq!(client.end_call(CALL).await, Ok(EndOutcome::Ended));
        let reqs = fake.wait_for_requests(1, WAIT).await.unwrap();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].account_sid, ACCOUNT);
        assert_eq!(reqs[0].call_sid, CALL);
        assert_eq!(reqs[0].params, vec![("Status".to_string(), "completed".to_string())]);
        // The fake answers 401 and records a violation on bad credentials, a wrong path or
        // content type, or unknown parameters.
        assert_eq!(fake.violations(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn not_found_means_already_ended() {
        let (fake, client) = setup().await;
        fake.push_reply(404, not_found_body(ACCOUNT, CALL));
        assert_eq!(client.end_call(CALL).await, Ok(EndOutcome::AlreadyEnded));
        fake.push_reply(400, error_body(400, 21220, "Call is not in-progress. Cannot redirect."));
        assert_eq!(client.end_call(CALL).await, Ok(EndOutcome::AlreadyEnded));
        assert_eq!(fake.requests().len(), 2);
        // A 404 that is not Twilio's (e.g. a wrong API base behind a proxy) is an error.
        fake.push_reply(404, json!({"detail": "no route"}));
        let err = client.end_call(CALL).await.unwrap_err();
        assert!(matches!(err, TwilioError::Api { status: 404, code: None, .. }), "{err:?}");
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[tokio::test]
    async fn twilio_error_body_is_parsed() {
        let (fake, client) = setup().await;
        fake.push_reply(400, error_body(400, 21218, "Invalid ApplicationSid"));
        let err = client.end_call(CALL).await.unwrap_err();
        assert_eq!(
            err,
            TwilioError::Api {
                status: 400,
                code: Some(21218),
                message: "Invalid ApplicationSid".into(),
                more_info: Some("https://www.twilio.com/docs/errors/21218".into()),
            }
        );
        assert_eq!(err.code(), Some(21218));
        assert!(!err.is_retryable());
        assert_eq!(err.to_string(), "Twilio answered HTTP 400 (error 21218): Invalid ApplicationSid");

        fake.push_reply(400, error_body(400, 21220, "Call is not in-progress. Cannot redirect."));
        let err = client.redirect(CALL, "<Response><Hangup/></Response>").await.unwrap_err();
        assert!(matches!(err, TwilioError::Api { status: 400, code: Some(21220), .. }), "{err:?}");

        fake.push_reply(503, json!({"code": 20500, "message": "Internal Server Error", "status": 503}));
        let err = client.end_call(CALL).await.unwrap_err();
        assert!(matches!(err, TwilioError::Api { status: 503, code: Some(20500), more_info: None, .. }));
        assert!(err.is_retryable());

        fake.push_reply_with_retry_after(429, error_body(429, 20429, "Too Many Requests"), 3);
        let err = client.end_call(CALL).await.unwrap_err();
        assert_eq!(err, TwilioError::RateLimited { retry_after: Some(Duration::from_secs(3)) });
        assert!(err.is_retryable());
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[tokio::test]
    async fn redirect_sends_the_twiml_form_encoded() {
        let (fake, client) = setup().await;
        let twiml = crate::core::twilio::twiml::dial("+390212345678", None, Some(("Un attimo & grazie", "it")));
        client.redirect(CALL, &twiml).await.unwrap();
        let reqs = fake.wait_for_requests(1, WAIT).await.unwrap();
        assert_eq!(reqs[0].params, vec![("Twiml".to_string(), twiml.clone())]);
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[test]
    fn the_form_body_is_what_twilio_decodes() {
        // The exact bytes on the wire for a TwiML with every character that matters in a form.
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Twiml", "<Say>a & b = c+d?</Say>");
        assert_eq!(form.finish(), "Twiml=%3CSay%3Ea+%26+b+%3D+c%2Bd%3F%3C%2FSay%3E");
    }

    #[tokio::test]
    async fn a_hostile_call_sid_is_never_sent() {
        let (fake, client) = setup().await;
        for bad in [
            "",
            "CA0123",
            "CA../../Accounts/AC0000000000000000000000000000000",
            "CAfedcba9876543210fedcba987654321/",
            "CAfedcba9876543210fedcba987654321?",
            "CAfedcba9876543210fedcba9876543210/../x",
            "PNfedcba9876543210fedcba9876543210",
            "CAfedcba9876543210fedcba98765432é",
        ] {
            let err = client.end_call(bad).await.unwrap_err();
            assert!(matches!(err, TwilioError::InvalidCallSid(_)), "{bad:?}: {err:?}");
            assert!(matches!(client.redirect(bad, "<Response/>").await, Err(TwilioError::InvalidCallSid(_))));
        }
        let bad_account =
            TwilioRest::new(reqwest::Client::new(), fake.base_url(), "AC/../x".into(), Secret::new(TOKEN));
        assert!(matches!(bad_account.end_call(CALL).await, Err(TwilioError::InvalidAccountSid(_))));
        assert!(fake.requests().is_empty());
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }

    #[tokio::test]
    async fn wrong_credentials_are_an_api_error_without_the_token() {
        let (fake, _) = setup().await;
        let client =
            TwilioRest::new(reqwest::Client::new(), fake.base_url(), ACCOUNT.into(), Secret::new("wrong-token"));
        let err = client.end_call(CALL).await.unwrap_err();
        assert!(matches!(err, TwilioError::Api { status: 401, code: Some(20003), .. }), "{err:?}");
        assert!(fake.requests().is_empty());
        assert_eq!(fake.violations().len(), 1, "{:?}", fake.violations());
        // A body echoing the token is redacted.
        let (fake, client) = setup().await;
        fake.push_reply(400, error_body(400, 20001, &format!("bad token {TOKEN}")));
        let err = client.end_call(CALL).await.unwrap_err();
        assert!(!format!("{err} {err:?}").contains(TOKEN), "{err:?}");
        assert!(!format!("{client:?}").contains(TOKEN));
    }

    #[tokio::test]
    async fn transport_failures_are_classified() {
        // A port nobody listens on: bind, learn the port, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = TwilioRest::new(
            reqwest::Client::new(),
            format!("http://127.0.0.1:{port}"),
            ACCOUNT.into(),
            Secret::new(TOKEN),
        );
        let err = client.end_call(CALL).await.unwrap_err();
        assert!(matches!(err, TwilioError::Transport(_)), "{err:?}");
        assert!(err.is_retryable());
        assert!(!err.to_string().contains(TOKEN));
    }
}
