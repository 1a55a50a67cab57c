//! Shared harness: the real daemon on 127.0.0.1:0 (in-process) against the in-repo fakes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchboard::app::{self, Daemon};
use switchboard::bridge::sink::ChannelSink;
use switchboard::config::Config;
use switchboard::core::domain::call::CallRecord;
use switchboard::testkit::{self, FakeRealtime, FakeScript, StartParams, TwilioCall, TwimlStream};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::sync::mpsc::UnboundedReceiver;

pub const PUBLIC: &str = "https://sb.example.test";
pub const AUTH: &str = "test-auth-token";
pub const KEY: &str = "sk-test-key";
pub const MARIO: &str = "+39021111111";
pub const PCM24K: &str = "+39062222222";
pub const SERVER_VAD_ONLY: &str = "+39063333333";
pub const IDLE_3S: &str = "+39064444444";

pub const SPEECH_IT: &[u8] = include_bytes!("../../fixtures/it_caller_booking.ulaw");
pub const AGENT_LONG: &[u8] = include_bytes!("../../fixtures/it_agent_long.ulaw");

/// The API key of a test tenant (its SHA-256 is in the tenants file).
pub fn api_key(tenant: &str) -> String {
    format!("test-api-key-{tenant}")
}

/// A tenants file for tests: a pcmu tenant, a pcm24k tenant and one that barges in on the
/// server's VAD only. No fallback: unknown numbers get the apology.
pub fn tenants_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("prompts")).expect("temp dir");
    std::fs::write(dir.join("prompts/test.md"), "Sei l'assistente di un ristorante di prova.\n").expect("prompt");
    let tenant = |id: &str, number: &str, extra: &str| {
        let key = switchboard::http::auth::key_digest(&api_key(id));
        format!(
            "[[tenants]]\nid = \"{id}\"\nname = \"Test {id}\"\nnumbers = [\"{number}\"]\nlanguage = \"it\"\nvoice = \"marin\"\n\
             prompt_file = \"prompts/test.md\"\ngreeting = \"Pronto, {id}!\"\nsummary_to = [\"{id}@owner.test\"]\n\
             api_keys_sha256 = [\"{key}\"]\n{extra}\n"
        )
    };
    let text = [
        tenant(
            "mario",
            MARIO,
            "[tenants.business]\naddress = \"Via Roma 1, Milano\"\nhours = \"mar-dom 12-15, 19-23\"\n",
        ),
        tenant("gino24k", PCM24K, "audio_format = \"pcm24k\"\n"),
        tenant("servervad", SERVER_VAD_ONLY, "[tenants.barge_in]\nmin_speech_ms = 2000\n"),
        tenant("idle", IDLE_3S, "idle_prompt_ms = 3000\n"),
    ]
    .concat();
    std::fs::write(dir.join("tenants.toml"), text).expect("tenants file");
    dir
}

pub fn env_for(fake_base: &str, tenants_file: &Path, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("PUBLIC_BASE_URL", PUBLIC),
        ("TWILIO_AUTH_TOKEN", AUTH),
        ("OPENAI_API_KEY", KEY),
        ("OPENAI_BASE_URL", fake_base),
        ("SWITCHBOARD_SHUTDOWN_GRACE_SECS", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.insert("TENANTS_FILE".into(), tenants_file.display().to_string());
    // Each daemon gets its own database and outbox beside its tenants file.
    let data = tenants_file.parent().unwrap_or(Path::new(".")).join("data");
    env.insert("DATABASE_URL".into(), format!("sqlite://{}/switchboard.db", data.display()));
    env.insert("OUTBOX_DIR".into(), data.join("outbox").display().to_string());
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

pub struct Harness {
    pub daemon: Daemon,
    pub fake: FakeRealtime,
    pub records: Mutex<UnboundedReceiver<CallRecord>>,
    pub http: String,
    pub dir: PathBuf,
}

pub fn script() -> FakeScript {
    FakeScript {
        expected_api_key: Some(KEY.into()),
        greeting_audio: AGENT_LONG[..16_000].to_vec(),
        greeting_transcript: "Pronto, come posso aiutarla?".into(),
        reply_audio: AGENT_LONG[16_000..24_000].to_vec(),
        reply_transcript: "Certo, a che ora?".into(),
        caller_transcripts: vec!["Vorrei prenotare un tavolo per quattro.".into()],
        ..FakeScript::default()
    }
}

impl Harness {
    pub async fn start(script: FakeScript) -> Harness {
        Self::start_with(script, None, &[]).await
    }

    pub async fn start_with(script: FakeScript, tenants_file: Option<PathBuf>, extra: &[(&str, &str)]) -> Harness {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let fake = FakeRealtime::start(script).await.expect("fake realtime");
        let dir = tenants_dir();
        let file = tenants_file.unwrap_or_else(|| dir.join("tenants.toml"));
        let env = env_for(&fake.base_url(), &file, extra);
        let config = Config::from_lookup(|k| env.get(k).cloned()).expect("valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let daemon = app::start(config, listener, Some(Arc::new(ChannelSink(tx)))).await.expect("daemon starts");
        let http = format!("http://{}", daemon.addr);
        Harness { daemon, fake, records: Mutex::new(rx), http, dir }
    }

    pub fn ws_url(&self, stream: &TwimlStream) -> String {
        stream.url.replacen("wss://sb.example.test", &format!("ws://{}", self.daemon.addr), 1)
    }

    pub async fn webhook(&self, call_sid: &str, to: &str) -> (u16, String) {
        testkit::post_webhook(
            &self.http,
            PUBLIC,
            Some(AUTH),
            &[
                ("CallSid", call_sid),
                ("From", "+393331234567"),
                ("To", to),
                ("AccountSid", "AC00000000000000000000000000000000"),
            ],
        )
        .await
        .expect("webhook request")
    }

    /// Webhook, then the signed stream it describes.
    pub async fn call(&self, to: &str) -> TwilioCall {
        let call_sid = new_call_sid();
        let (status, twiml) = self.webhook(&call_sid, to).await;
        assert_eq!(status, 200, "{twiml}");
        let stream = testkit::parse_twiml_stream(&twiml).expect("TwiML has a <Stream>");
        let sig = testkit::sign(AUTH, &stream.url, &[]);
        TwilioCall::connect(
            &self.ws_url(&stream),
            Some(sig),
            StartParams::from_stream(&stream).with_call_sid(&call_sid),
        )
        .await
        .expect("stream connects")
    }

    pub async fn next_record(&self, timeout: Duration) -> Option<CallRecord> {
        tokio::time::timeout(timeout, self.records.lock().await.recv()).await.ok().flatten()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("{}{path}", self.http)).await.expect("GET");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    pub async fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.get("/metrics").await;
        metric_value(&body, name)
    }
}

pub fn metric_value(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

pub fn new_call_sid() -> String {
    format!("CA{}", uuid::Uuid::new_v4().simple())
}

/// Where speech starts in a mu-law clip: the first 20 ms frame whose RMS exceeds 300
/// (measured with the testkit's own decoder, independent of the daemon's VAD).
pub fn speech_onset_ms(ulaw: &[u8]) -> u64 {
    ulaw.chunks(160).position(|f| testkit::ulaw_rms(f) > 300.0).expect("clip has speech") as u64 * 20
}

/// Finds `needle` as a contiguous run in `hay`.
pub fn contains_run(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Best normalised cross-correlation of `a` against `b` shifted by 0..=max_lag samples.
pub fn best_correlation(a: &[i16], b: &[i16], max_lag: usize) -> (f64, usize) {
    let mut best = (f64::MIN, 0);
    for lag in 0..=max_lag {
        let n = a.len().min(b.len().saturating_sub(lag));
        if n < 800 {
            break;
        }
        let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..n {
            let (x, y) = (f64::from(a[i]), f64::from(b[i + lag]));
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        let c = ab / (aa.sqrt() * bb.sqrt()).max(1.0);
        if c > best.0 {
            best = (c, lag);
        }
    }
    best
}
