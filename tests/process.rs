//! The real binary as operators run it: signals. SIGTERM drains (new calls get 503, live calls
//! finish, then the process exits); SIGHUP reloads tenants.toml without dropping live calls and
//! keeps the old tenants when the new file is bad.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use switchboard::testkit::{self, FakeRealtime, FakeScript};

const T: Duration = Duration::from_secs(15);

struct Proc {
    child: Child,
    http: String,
    log: std::path::PathBuf,
}

impl Proc {
    async fn spawn(fake: &FakeRealtime, tenants: &Path, extra: &[(&str, &str)]) -> Proc {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = tenants.with_file_name("daemon.log");
        let mut env = env_for(&fake.base_url(), tenants, extra);
        env.insert("SWITCHBOARD_BIND".into(), format!("127.0.0.1:{port}"));
        env.insert("SWITCHBOARD_LOG_FORMAT".into(), "json".into());
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .env_clear()
            .envs(&env)
            .current_dir(tenants.parent().unwrap())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .expect("daemon starts");
        let p = Proc { child, http: format!("http://127.0.0.1:{port}"), log };
        let deadline = tokio::time::Instant::now() + T;
        while p.health().await != Some(200) {
            assert!(tokio::time::Instant::now() < deadline, "daemon never became healthy: {}", p.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p
    }

    async fn health(&self) -> Option<u16> {
        reqwest::get(format!("{}/healthz", self.http)).await.ok().map(|r| r.status().as_u16())
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }

    async fn webhook(&self, to: &str) -> (u16, String) {
        testkit::post_webhook(
            &self.http,
            PUBLIC,
            Some(AUTH),
            &[("CallSid", &new_call_sid()), ("From", "+393331234567"), ("To", to)],
        )
        .await
        .unwrap()
    }

    async fn call(&self, to: &str) -> testkit::TwilioCall {
        let sid = new_call_sid();
        let (status, twiml) = testkit::post_webhook(
            &self.http,
            PUBLIC,
            Some(AUTH),
            &[("CallSid", &sid), ("From", "+393331234567"), ("To", to)],
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{twiml}");
        let stream = testkit::parse_twiml_stream(&twiml).unwrap();
        let ws = stream.url.replacen("wss://sb.example.test", &self.http.replacen("http://", "ws://", 1), 1);
        testkit::TwilioCall::connect(
            &ws,
            Some(testkit::sign(AUTH, &stream.url, &[])),
            testkit::StartParams::from_stream(&stream).with_call_sid(&sid),
        )
        .await
        .unwrap()
    }

    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(tokio::time::Instant::now() < deadline, "daemon did not exit: {}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s)).ok();
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn fake() -> FakeRealtime {
    FakeRealtime::start(FakeScript { greeting_audio: AGENT_LONG[..8_000].to_vec(), ..script() }).await.unwrap()
}

#[tokio::test]
async fn sigterm_refuses_new_calls_and_lets_the_live_one_finish() {
    let fake = fake().await;
    let dir = tenants_dir();
    let mut p = Proc::spawn(&fake, &dir.join("tenants.toml"), &[("SWITCHBOARD_SHUTDOWN_GRACE_SECS", "30")]).await;
    let mut call = p.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 500, T).await.unwrap();

    p.signal("-TERM");
    let deadline = tokio::time::Instant::now() + T;
    while p.health().await != Some(503) {
        assert!(tokio::time::Instant::now() < deadline, "healthz never reported draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.webhook(MARIO).await.0, 503, "new calls are refused while draining");
    // The live call still works: caller audio keeps reaching the model.
    let before = fake.appended_ms(0);
    let at = call.play(SPEECH_IT);
    call.wait_for(|s| s.caller_audio_ms >= at + 1_000, T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(fake.appended_ms(0) >= before + 900, "relay continued during the drain");
    assert!(p.child.try_wait().unwrap().is_none(), "still running while a call is live");

    call.stop().await;
    let status = p.wait_exit(T).await;
    assert!(status.success(), "{status:?}");
    let stored = stored_calls(&dir).await;
    assert_eq!(stored.iter().map(|c| c.end_reason.as_str()).collect::<Vec<_>>(), ["caller_hangup"]);
}

#[tokio::test]
async fn sigterm_ends_calls_still_live_after_the_grace_period() {
    let fake = fake().await;
    let dir = tenants_dir();
    let mut p = Proc::spawn(&fake, &dir.join("tenants.toml"), &[("SWITCHBOARD_SHUTDOWN_GRACE_SECS", "1")]).await;
    let call = p.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 300, T).await.unwrap();
    p.signal("-TERM");
    assert!(call.wait_closed(T).await, "the daemon closes the call after the grace period");
    assert!(p.wait_exit(T).await.success());
    let stored = stored_calls(&dir).await;
    assert_eq!(
        stored.iter().map(|c| (c.end_reason.as_str(), c.status.as_str())).collect::<Vec<_>>(),
        [("shutdown", "interrupted")]
    );
}

#[tokio::test]
async fn sighup_reloads_tenants_keeps_live_calls_and_rejects_a_bad_file() {
    let fake = fake().await;
    let dir = tenants_dir();
    let file = dir.join("tenants.toml");
    let p = Proc::spawn(&fake, &file, &[]).await;
    let new_number = "+39099999999";
    let (_, twiml) = p.webhook(new_number).await;
    assert!(twiml.contains("<Hangup/>") && !twiml.contains("<Connect>"), "unknown before the reload");

    let call = p.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 300, T).await.unwrap();

    let original = std::fs::read_to_string(&file).unwrap();
    let added =
        original.replace(&format!("numbers = [\"{MARIO}\"]"), &format!("numbers = [\"{MARIO}\", \"{new_number}\"]"));
    std::fs::write(&file, added).unwrap();
    p.signal("-HUP");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (_, twiml) = p.webhook(new_number).await;
        if twiml.contains("<Connect>") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "reload never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A broken file is rejected; the tenants loaded before stay.
    std::fs::write(&file, "[[tenants]]\nid = \"broken\"\nnot toml at all [[[").unwrap();
    p.signal("-HUP");
    let deadline = tokio::time::Instant::now() + T;
    let metrics_url = format!("{}/metrics", p.http);
    while metric_value(
        &reqwest::get(&metrics_url).await.unwrap().text().await.unwrap(),
        "switchboard_tenant_reload_failures_total",
    ) == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "bad reload not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.webhook(new_number).await.1.contains("<Connect>"));
    assert!(p.webhook(MARIO).await.1.contains("<Connect>"));

    // The call that was live across both reloads is intact.
    assert!(!call.is_closed());
    let played = call.stats().played_ms;
    call.wait_for(|s| s.played_ms >= played.min(900) + 50 || s.played_ms >= 1_000, T).await.unwrap();
    assert!(call.violations().is_empty(), "{:?}", call.violations());
}

#[test]
fn check_reports_tenants_and_fails_on_any_problem() {
    // Run outside the repo so a developer's .env cannot leak in; point at the shipped file.
    let cwd = tenants_dir();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("tenants.toml").display().to_string();
    let run = |envs: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("check")
            .env_clear()
            .env("TENANTS_FILE", &shipped)
            .envs(envs.iter().copied())
            .current_dir(&cwd)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let ready = [
        ("PUBLIC_BASE_URL", "https://voice.example.com"),
        ("TWILIO_AUTH_TOKEN", "secret-token-value"),
        ("OPENAI_API_KEY", "sk-secret-value"),
    ];
    let (code, out) = run(&ready);
    assert_eq!(code, Some(0), "{out}");
    for want in [
        "trattoria-mario",
        "+39021111111",
        "pizzeria-gino",
        "+39062222222",
        "ristorante-elegante",
        "+39063333333",
        "ava",
        "wss://voice.example.com/media-stream",
        "ready to take calls",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(!out.contains("secret-token-value") && !out.contains("sk-secret-value"), "secrets printed:\n{out}");

    // Missing call settings are problems.
    let (code, out) = run(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("OPENAI_API_KEY is not set"));

    // A broken tenants file is a problem, with every issue listed.
    let dir = tenants_dir();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[tenants]]\nid = \"Bad Id\"\nname = \"\"\nnumbers = [\"nope\"]\nlanguage = \"it\"\nvoice = \"robot\"\nprompt_file = \"missing.md\"\ngreeting = \"Ciao\"\nsummary_to = []\napi_keys_sha256 = []\n").unwrap();
    let bad_path = bad.display().to_string();
    let (code, out) = run(&[ready[0], ready[1], ready[2], ("TENANTS_FILE", bad_path.as_str())]);
    assert_eq!(code, Some(1), "{out}");
    for want in ["Bad Id", "nope", "robot", "missing.md"] {
        assert!(out.contains(want), "problem with {want:?} not reported:\n{out}");
    }

    // Invalid configuration values are all reported, exit 2.
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("check")
        .env_clear()
        .envs([("SWITCHBOARD_BIND", "nope"), ("OPENAI_BASE_URL", "ftp://x")])
        .current_dir(&cwd)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("SWITCHBOARD_BIND") && err.contains("OPENAI_BASE_URL"), "{err}");
}

#[test]
fn a_dotenv_file_in_the_working_directory_is_read() {
    let cwd = tenants_dir();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("tenants.toml").display().to_string();
    std::fs::write(
        cwd.join(".env"),
        "PUBLIC_BASE_URL=https://from-dotenv.example.com\nTWILIO_AUTH_TOKEN=dotenv-token\nOPENAI_API_KEY=sk-dotenv\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("check")
        .env_clear()
        .env("TENANTS_FILE", &shipped)
        .current_dir(&cwd)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("wss://from-dotenv.example.com/media-stream"), "{stdout}");
    assert!(!stdout.contains("dotenv-token") && !stdout.contains("sk-dotenv"));
}

/// The calls a stopped daemon stored in its database (beside its tenants file).
async fn stored_calls(dir: &Path) -> Vec<switchboard::store::CallRow> {
    let url = format!("sqlite://{}/data/switchboard.db", dir.display());
    let store = switchboard::store::Store::open(&url, 1).await.expect("the daemon's database");
    let mut all = Vec::new();
    for t in ["mario", "gino24k", "servervad", "idle"] {
        all.extend(store.list_calls(t, &Default::default(), None, 100).await.expect("list").calls);
    }
    store.close().await;
    all
}

/// A daemon killed (SIGKILL) while a meeting is being transcribed: after a restart the job is
/// taken again once its lease lapses, and the meeting ends `ready` with its recording deleted.
async fn killed_mid_job_finishes_after_restart(postgres: bool) {
    use switchboard::testkit::fake_openai_http::{TranscriptionReply, default_meeting_summary};
    let fake = fake().await;
    fake.set_default_chat_reply(switchboard::testkit::ChatReply::Summary(default_meeting_summary()));
    fake.push_transcription_reply(TranscriptionReply::Hang(Duration::from_secs(30)));
    let pg = if postgres { Some(switchboard::testkit::pg::PgSchema::create().await.unwrap()) } else { None };
    let dir = tenants_dir();
    let tenants = dir.join("tenants.toml");
    let mut env = vec![("JOB_LEASE_SECS", "1"), ("JOB_POLL_MS", "100"), ("OPENAI_TRANSCRIBE_MODEL", "whisper-1")];
    if let Some(p) = &pg {
        env.push(("DATABASE_URL", p.url.as_str()));
    }
    let mut p = Proc::spawn(&fake, &tenants, &env).await;
    let http = reqwest::Client::new();
    let key = api_key("mario");
    let m: serde_json::Value = http
        .post(format!("{}/api/meetings", p.http))
        .bearer_auth(&key)
        .json(&serde_json::json!({"title": "Killed"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = m["id"].as_str().unwrap().to_owned();
    let wav = include_bytes!("../fixtures/meeting/two_voices.wav").to_vec();
    let r = http
        .post(format!("{}/api/meetings/{id}/audio", p.http))
        .bearer_auth(&key)
        .header("content-type", "audio/wav")
        .body(wav)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = tokio::time::Instant::now() + T;
    while fake.transcription_requests().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the job never started: {}", p.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.signal("-KILL");
    p.wait_exit(T).await;

    let p2 = Proc::spawn(&fake, &tenants, &env).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let artifacts = loop {
        let r = http.get(format!("{}/api/meetings/{id}/artifacts", p2.http)).bearer_auth(&key).send().await.unwrap();
        if r.status() == 200 {
            break r.json::<serde_json::Value>().await.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "never finished after the restart: {}", p2.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(artifacts["status"], "ready", "{artifacts}");
    assert_eq!(fake.transcription_requests().len(), 2, "the killed attempt, then the one after the restart");
    let url = match &pg {
        Some(p) => p.url.clone(),
        None => format!("sqlite://{}/data/switchboard.db", dir.display()),
    };
    let store = switchboard::store::Store::open(&url, 1).await.unwrap();
    assert!(store.meeting(None, &id).await.unwrap().unwrap().audio_blob_id.is_none(), "recording deleted");
    store.close().await;
    drop(p2);
    if let Some(pg) = pg {
        pg.drop_schema().await.unwrap();
    }
}

#[tokio::test]
async fn killed_mid_job_finishes_after_restart_sqlite() {
    killed_mid_job_finishes_after_restart(false).await;
}

#[tokio::test]
async fn killed_mid_job_finishes_after_restart_postgres() {
    killed_mid_job_finishes_after_restart(true).await;
}
