//! One typed configuration, read from the environment once at start (after `.env`).
//! Every problem is collected and reported together; secrets never reach `Debug` or logs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A secret string: printed as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Settings the live call path needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    /// Public base URL Twilio reaches, without trailing slash (e.g. `https://sb.example.com`).
    pub public_base_url: Option<String>,
    pub twilio_auth_token: Option<Secret>,
    /// With the auth token, enables Twilio's REST API: hanging up after the goodbye, transfers.
    pub twilio_account_sid: Option<String>,
    /// Twilio's REST API base (a fake in tests).
    pub twilio_api_base: String,
    pub insecure_skip_signature: bool,
    pub openai_api_key: Option<Secret>,
    pub openai_base_url: String,
    pub realtime_model: String,
    pub transcribe_model: String,
    pub tenants_file: PathBuf,
    /// `sqlite://…` (default `./data/switchboard.db`) or `postgres://…`. May hold a password.
    pub database_url: Secret,
    pub database_max_connections: u32,
    /// The mail server; `None` writes emails to `outbox_dir`.
    pub smtp: Option<crate::mail::SmtpSettings>,
    /// `From:` of the summary emails.
    pub smtp_sender: String,
    /// Where emails go as `.eml` files when no SMTP server is configured.
    pub outbox_dir: PathBuf,
    /// Where call records wait while the database is down.
    pub spool_dir: PathBuf,
    pub summary_model: String,
    /// The after-call jobs.
    pub jobs: JobSettings,
    pub meetings: MeetingSettings,
    /// CORS: origins allowed to call the API from a browser (empty: none).
    pub allowed_origins: Vec<String>,
    pub cors_allow_credentials: bool,
    /// An unclaimed pre-warmed Realtime session is closed after this long.
    pub prewarm_ttl: Duration,
    /// Time allowed to open and configure a Realtime session.
    pub realtime_connect_timeout: Duration,
    /// On SIGTERM, live calls get this long to finish.
    pub shutdown_grace: Duration,
    /// Largest Media Streams message accepted; a larger one closes that stream.
    pub max_stream_message_bytes: usize,
    /// The wait for Twilio's `start` after the upgrade.
    pub stream_start_timeout: Duration,
    /// Caller audio kept while the upstream is not ready (frames of 20 ms).
    pub backlog_frames: usize,
    /// Age at which a Realtime session is replaced between two turns (the server ends sessions
    /// at 60 minutes); zero turns it off.
    pub session_rotate_after: Duration,
    pub log_json: bool,
}

/// Job queue and retry settings (the after-call work).
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Concurrent jobs in this daemon.
    pub workers: usize,
    pub poll: Duration,
    pub lease: Duration,
    /// Attempts at a summary before the email goes out without one.
    pub summary_attempts: u32,
    pub summary_retry_base: Duration,
    pub summary_retry_cap: Duration,
    pub summary_timeout: Duration,
    /// Delivery is retried until this long after the email was written (then `failed`).
    pub email_give_up_after: Duration,
    /// A bound on attempts within that window (a safety net, not the policy).
    pub email_attempts: u32,
    pub email_retry_base: Duration,
    pub email_retry_cap: Duration,
}

/// Meetings: uploads and their processing.
#[derive(Debug, Clone)]
pub struct MeetingSettings {
    /// Largest accepted recording (413 above).
    pub max_upload_bytes: u64,
    /// Where uploads are spooled before they go to the database, and jobs unpack them.
    pub tmp_dir: PathBuf,
    /// The transcription service's upload limit: larger recordings are split.
    pub transcribe_max_bytes: u64,
    /// The transcription model's duration limit per request: longer recordings are split.
    pub transcribe_max_secs: u64,
    pub transcribe_timeout: Duration,
    /// Secret that derives Jitsi room names; when unset one is generated and kept in the
    /// database, shared by every daemon.
    pub room_secret: Option<Secret>,
    pub attempts: u32,
}

/// Every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let mut problems = Vec::new();

        let bind = match (get("SWITCHBOARD_BIND"), get("PORT")) {
            (Some(b), _) => b.parse::<SocketAddr>().map_err(|e| format!("SWITCHBOARD_BIND={b:?}: {e}")),
            (None, Some(p)) => {
                p.parse::<u16>().map(|p| SocketAddr::from(([0, 0, 0, 0], p))).map_err(|e| format!("PORT={p:?}: {e}"))
            }
            (None, None) => Ok(SocketAddr::from(([0, 0, 0, 0], 8080))),
        }
        .unwrap_or_else(|e| {
            problems.push(e);
            SocketAddr::from(([0, 0, 0, 0], 8080))
        });

        let public_base_url = get("PUBLIC_BASE_URL").and_then(|u| match check_base_url(&u) {
            Ok(u) => Some(u),
            Err(e) => {
                problems.push(format!("PUBLIC_BASE_URL={u:?}: {e}"));
                None
            }
        });
        let openai_base_url = match get("OPENAI_BASE_URL") {
            None => "https://api.openai.com/v1".to_owned(),
            Some(u) => check_base_url(&u).unwrap_or_else(|e| {
                problems.push(format!("OPENAI_BASE_URL={u:?}: {e}"));
                u
            }),
        };
        let insecure_skip_signature = match get("SWITCHBOARD_INSECURE_SKIP_SIGNATURE").as_deref() {
            None | Some("0" | "false" | "no") => false,
            Some("1" | "true" | "yes") => true,
            Some(v) => {
                problems.push(format!("SWITCHBOARD_INSECURE_SKIP_SIGNATURE={v:?}: expected 1 or 0"));
                false
            }
        };
        let log_json = match get("SWITCHBOARD_LOG_FORMAT").as_deref() {
            None | Some("text" | "pretty") => false,
            Some("json") => true,
            Some(v) => {
                problems.push(format!("SWITCHBOARD_LOG_FORMAT={v:?}: expected json or text"));
                false
            }
        };
        let mut num = |key: &str, default: u64, min: u64, max: u64| -> u64 {
            match get(key) {
                None => default,
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => n,
                    _ => {
                        problems.push(format!("{key}={v:?}: expected an integer in {min}..={max}"));
                        default
                    }
                },
            }
        };
        let prewarm_ttl = Duration::from_secs(num("SWITCHBOARD_PREWARM_TTL_SECS", 10, 1, 120));
        let realtime_connect_timeout = Duration::from_millis(num("SWITCHBOARD_REALTIME_TIMEOUT_MS", 5000, 100, 60_000));
        let shutdown_grace = Duration::from_secs(num("SWITCHBOARD_SHUTDOWN_GRACE_SECS", 30, 0, 3600));
        let max_stream_message_bytes = num("SWITCHBOARD_MAX_STREAM_MESSAGE_BYTES", 64 * 1024, 1024, 16 << 20) as usize;
        let stream_start_timeout =
            Duration::from_millis(num("SWITCHBOARD_STREAM_START_TIMEOUT_MS", 10_000, 100, 120_000));
        let backlog_frames = num("SWITCHBOARD_BACKLOG_FRAMES", 50, 1, 3000) as usize;
        let session_rotate_after = Duration::from_secs(num("SWITCHBOARD_SESSION_ROTATE_SECS", 55 * 60, 0, 59 * 60));
        let jobs = JobSettings {
            workers: num("JOB_WORKERS", 2, 1, 64) as usize,
            poll: Duration::from_millis(num("JOB_POLL_MS", 2_000, 10, 60_000)),
            lease: Duration::from_secs(num("JOB_LEASE_SECS", 300, 1, 86_400)),
            summary_attempts: num("SUMMARY_MAX_ATTEMPTS", 5, 1, 100) as u32,
            summary_retry_base: Duration::from_millis(num("SUMMARY_RETRY_BASE_MS", 15_000, 1, 3_600_000)),
            summary_retry_cap: Duration::from_millis(num("SUMMARY_RETRY_CAP_MS", 600_000, 1, 86_400_000)),
            summary_timeout: Duration::from_secs(num("SUMMARY_TIMEOUT_SECS", 60, 1, 600)),
            email_give_up_after: Duration::from_secs(num("EMAIL_GIVE_UP_AFTER_SECS", 48 * 3600, 1, 30 * 86_400)),
            email_attempts: num("EMAIL_MAX_ATTEMPTS", 1_000, 1, 100_000) as u32,
            email_retry_base: Duration::from_millis(num("EMAIL_RETRY_BASE_MS", 30_000, 1, 3_600_000)),
            email_retry_cap: Duration::from_millis(num("EMAIL_RETRY_CAP_MS", 900_000, 1, 86_400_000)),
        };
        let database_max_connections = num("DATABASE_MAX_CONNECTIONS", 8, 1, 1000) as u32;
        let meetings = MeetingSettings {
            max_upload_bytes: num("MEETING_MAX_UPLOAD_BYTES", 200 * 1024 * 1024, 1024, 1 << 40),
            tmp_dir: PathBuf::new(),
            transcribe_max_bytes: num("TRANSCRIBE_MAX_UPLOAD_BYTES", 24 * 1024 * 1024, 64 * 1024, 1 << 32),
            transcribe_max_secs: num("TRANSCRIBE_MAX_SECONDS", 1_400, 10, 86_400),
            transcribe_timeout: Duration::from_secs(num("TRANSCRIBE_TIMEOUT_SECS", 300, 1, 3_600)),
            room_secret: None,
            attempts: num("MEETING_MAX_ATTEMPTS", 5, 1, 100) as u32,
        };

        if let Some(sid) = get("TWILIO_ACCOUNT_SID")
            && !(sid.len() == 34 && sid.starts_with("AC") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        {
            problems.push(format!("TWILIO_ACCOUNT_SID={sid:?}: expected AC followed by 32 hex digits"));
        }
        let allowed_origins: Vec<String> = get("ALLOWED_ORIGINS")
            .map(|v| {
                v.split(',').map(|o| o.trim().trim_end_matches('/').to_owned()).filter(|o| !o.is_empty()).collect()
            })
            .unwrap_or_default();
        for o in &allowed_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                problems.push(format!("ALLOWED_ORIGINS: {o:?} is not an origin (https://host[:port]) or *"));
            }
        }
        let cors_allow_credentials = match get("CORS_ALLOW_CREDENTIALS").as_deref() {
            None | Some("0" | "false" | "no") => false,
            Some("1" | "true" | "yes") => true,
            Some(v) => {
                problems.push(format!("CORS_ALLOW_CREDENTIALS={v:?}: expected true or false"));
                false
            }
        };
        if cors_allow_credentials && allowed_origins.iter().any(|o| o == "*") {
            problems.push("CORS_ALLOW_CREDENTIALS=true cannot be combined with ALLOWED_ORIGINS=*".into());
        }
        let smtp = crate::mail::smtp_settings(get).unwrap_or_else(|p| {
            problems.extend(p);
            None
        });
        let database_url = get("DATABASE_URL").unwrap_or_else(|| "sqlite://./data/switchboard.db".into());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            problems.push("DATABASE_URL: expected sqlite://… or postgres://…".into());
        }

        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Self {
            bind,
            public_base_url,
            twilio_auth_token: get("TWILIO_AUTH_TOKEN").map(Secret),
            twilio_account_sid: get("TWILIO_ACCOUNT_SID"),
            twilio_api_base: get("TWILIO_API_BASE")
                .map(|u| u.trim_end_matches('/').to_owned())
                .unwrap_or_else(|| "https://api.twilio.com".into()),
            insecure_skip_signature,
            openai_api_key: get("OPENAI_API_KEY").map(Secret),
            openai_base_url,
            realtime_model: get("OPENAI_REALTIME_MODEL").unwrap_or_else(|| "gpt-realtime-1.5".into()),
            transcribe_model: get("OPENAI_TRANSCRIBE_MODEL").unwrap_or_else(|| "gpt-4o-transcribe".into()),
            tenants_file: get("TENANTS_FILE").map(PathBuf::from).unwrap_or_else(|| "./tenants.toml".into()),
            database_url: Secret(database_url),
            database_max_connections,
            smtp,
            smtp_sender: get("SMTP_SENDER").unwrap_or_else(|| "Switchboard <switchboard@localhost>".into()),
            outbox_dir: get("OUTBOX_DIR").map(PathBuf::from).unwrap_or_else(|| "./data/outbox".into()),
            spool_dir: get("SPOOL_DIR").map(PathBuf::from).unwrap_or_else(|| "./data/spool".into()),
            jobs,
            meetings: MeetingSettings {
                tmp_dir: get("UPLOAD_TMP_DIR").map(PathBuf::from).unwrap_or_else(|| "./data/tmp".into()),
                room_secret: get("MEETING_ROOM_SECRET").map(Secret),
                ..meetings
            },
            allowed_origins,
            cors_allow_credentials,
            summary_model: get("OPENAI_SUMMARY_MODEL").unwrap_or_else(|| "gpt-4.1-mini".into()),
            prewarm_ttl,
            realtime_connect_timeout,
            shutdown_grace,
            max_stream_message_bytes,
            stream_start_timeout,
            backlog_frames,
            session_rotate_after,
            log_json,
        })
    }

    /// What keeps the daemon from taking calls (it still starts and serves health/metrics).
    pub fn call_readiness_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.public_base_url.is_none() {
            p.push("PUBLIC_BASE_URL is not set: Twilio cannot be given a stream URL".into());
        }
        if self.openai_api_key.is_none() {
            p.push("OPENAI_API_KEY is not set: calls cannot reach the model".into());
        }
        if self.twilio_auth_token.is_none() && !self.insecure_skip_signature {
            p.push("TWILIO_AUTH_TOKEN is not set: webhooks and streams are refused (503)".into());
        }
        p
    }

    /// `wss://host/media-stream` (or `ws://` for an `http` base).
    pub fn stream_url(&self) -> Option<String> {
        Some(format!("{}/media-stream", websocket_base(self.public_base_url.as_deref()?)))
    }

    /// The Realtime WebSocket URL derived from `OPENAI_BASE_URL`.
    pub fn realtime_url(&self) -> String {
        format!("{}/realtime?model={}", websocket_base(&self.openai_base_url), self.realtime_model)
    }

    /// Signatures are enforced (a token is set and the insecure switch is off).
    pub fn verify_signatures(&self) -> bool {
        !self.insecure_skip_signature
    }
}

/// `https://…` → `wss://…`, `http://…` → `ws://…`.
fn websocket_base(base: &str) -> String {
    match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.strip_prefix("http://").unwrap_or(base)),
    }
}

/// Accepts `http(s)://host[:port][/path]`, returns it without a trailing slash.
fn check_base_url(u: &str) -> Result<String, String> {
    let uri: http::Uri = u.parse().map_err(|e| format!("not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("expected an http:// or https:// URL".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("missing host".into());
    }
    if uri.query().is_some() {
        return Err("must not carry a query string".into());
    }
    Ok(u.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_start_without_anything() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.bind.to_string(), "0.0.0.0:8080");
        assert_eq!(c.realtime_model, "gpt-realtime-1.5");
        assert_eq!(c.transcribe_model, "gpt-4o-transcribe");
        assert_eq!(c.realtime_url(), "wss://api.openai.com/v1/realtime?model=gpt-realtime-1.5");
        assert_eq!(c.call_readiness_problems().len(), 3);
    }

    #[test]
    fn urls_are_derived() {
        let c = cfg(&[
            ("PUBLIC_BASE_URL", "https://sb.example.com/"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
            ("PORT", "9000"),
        ])
        .unwrap();
        assert_eq!(c.stream_url().unwrap(), "wss://sb.example.com/media-stream");
        assert_eq!(c.realtime_url(), "ws://127.0.0.1:9/v1/realtime?model=gpt-realtime-1.5");
        assert_eq!(c.bind.port(), 9000);
        let c = cfg(&[("PUBLIC_BASE_URL", "http://localhost:8080")]).unwrap();
        assert_eq!(c.stream_url().unwrap(), "ws://localhost:8080/media-stream");
    }

    #[test]
    fn all_problems_are_reported_together_without_secrets() {
        let e = cfg(&[
            ("SWITCHBOARD_BIND", "nope"),
            ("PUBLIC_BASE_URL", "ftp://x"),
            ("SWITCHBOARD_SHUTDOWN_GRACE_SECS", "-1"),
            ("SMTP_URL", "http://user:hunter2@mail"),
        ])
        .unwrap_err();
        assert_eq!(e.0.len(), 4, "{e}");
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = cfg(&[("OPENAI_API_KEY", "sk-very-secret"), ("TWILIO_AUTH_TOKEN", "tok-secret")]).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sk-very-secret") && !dbg.contains("tok-secret"), "{dbg}");
    }
}
