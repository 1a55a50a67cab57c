//! Meetings through the real daemon, on SQLite and on PostgreSQL, with the fake OpenAI
//! (transcriptions + chat) and real audio fixtures: the whole lifecycle, 202 then 200,
//! re-summarize, edited tasks, other tenants, publicJoin, 413/415/409, a recording over the
//! provider's limit split and stitched, failures, and the blob deleted after processing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::store::Store;
use switchboard::testkit::ChatReply;
use switchboard::testkit::fake_openai_http::{TranscriptionReply, default_meeting_summary};
use switchboard::testkit::pg::PgSchema;

const TWO_VOICES_WAV: &[u8] = include_bytes!("../fixtures/meeting/two_voices.wav");
const TWO_VOICES_FLAC: &[u8] = include_bytes!("../fixtures/meeting/two_voices.flac");
const CORRUPT_WAV: &[u8] = include_bytes!("../fixtures/meeting/corrupt.wav");
const FAKE_MP3: &[u8] = include_bytes!("../fixtures/meeting/fake.mp3");
const LONG_FLAC: &[u8] = include_bytes!("../fixtures/meeting/long_speech.flac");

const T: Duration = Duration::from_secs(30);

struct Api {
    h: Harness,
    store: Store,
    pg: Option<PgSchema>,
    http: reqwest::Client,
}

impl Api {
    async fn start(postgres: bool, extra: &[(&str, &str)]) -> Api {
        let pg = if postgres { Some(PgSchema::create().await.expect("postgres")) } else { None };
        let mut env: Vec<(&str, &str)> =
            vec![("JOB_POLL_MS", "50"), ("OPENAI_TRANSCRIBE_MODEL", "whisper-1"), ("SUMMARY_RETRY_BASE_MS", "50")];
        if let Some(p) = &pg {
            env.push(("DATABASE_URL", p.url.as_str()));
        }
        env.extend_from_slice(extra);
        let h = Harness::start_with(script(), None, &env).await;
        h.fake.set_default_chat_reply(ChatReply::Summary(default_meeting_summary()));
        let url = match &pg {
            Some(p) => p.url.clone(),
            None => format!("sqlite://{}/data/switchboard.db", h.dir.display()),
        };
        let store = Store::open(&url, 2).await.expect("store");
        Api { h, store, pg, http: reqwest::Client::new() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.h.http)
    }

    async fn send(&self, rq: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = rq.send().await.expect("request");
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, tenant: Option<&str>) -> (StatusCode, Value) {
        let mut rq = self.http.get(self.url(path));
        if let Some(t) = tenant {
            rq = rq.bearer_auth(api_key(t));
        }
        self.send(rq).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).bearer_auth(api_key("mario")).json(&body)).await
    }

    async fn create(&self, title: &str, public: bool) -> String {
        let (s, m) = self.post("/api/meetings", json!({"title": title, "publicJoin": public})).await;
        assert_eq!(s, StatusCode::CREATED, "{m}");
        m["id"].as_str().unwrap().to_owned()
    }

    async fn upload(&self, id: &str, name: &str, mime: &str, bytes: &[u8]) -> (StatusCode, Value) {
        let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_owned()).mime_str(mime).unwrap();
        let form = reqwest::multipart::Form::new().part("file", part);
        self.send(
            self.http
                .post(self.url(&format!("/api/meetings/{id}/audio")))
                .bearer_auth(api_key("mario"))
                .multipart(form),
        )
        .await
    }

    async fn upload_raw(&self, id: &str, mime: &str, bytes: &[u8]) -> (StatusCode, Value) {
        self.send(
            self.http
                .post(self.url(&format!("/api/meetings/{id}/audio")))
                .bearer_auth(api_key("mario"))
                .header("content-type", mime)
                .body(bytes.to_vec()),
        )
        .await
    }

    /// Polls the artifacts until they are no longer 202.
    async fn artifacts(&self, id: &str) -> (StatusCode, Value) {
        let deadline = Instant::now() + T;
        loop {
            let (s, body) = self.get(&format!("/api/meetings/{id}/artifacts"), Some("mario")).await;
            if s != StatusCode::ACCEPTED {
                return (s, body);
            }
            assert_eq!(body["status"], "processing");
            assert!(Instant::now() < deadline, "still processing");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finish(self) {
        self.store.close().await;
        self.h.daemon.shutdown();
        let _ = self.h.daemon.wait().await;
        if let Some(p) = self.pg {
            p.drop_schema().await.expect("drop schema");
        }
    }
}

async fn lifecycle_resummarize_and_edited_tasks(postgres: bool) {
    let api = Api::start(postgres, &[]).await;
    let (s, m) =
        api.post("/api/meetings", json!({"title": "Launch planning", "scheduledAt": "2026-11-20T10:00:00Z"})).await;
    assert_eq!(s, StatusCode::CREATED, "{m}");
    assert_eq!(m["status"], "created");
    assert_eq!(m["scheduledAt"], "2026-11-20T10:00:00Z");
    let room = m["jitsiRoomName"].as_str().unwrap();
    assert!(room.len() >= 20 && room.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{room}");
    let id = m["id"].as_str().unwrap().to_owned();
    let (_, again) = api.get(&format!("/api/meetings/{id}"), Some("mario")).await;
    assert_eq!(again["jitsiRoomName"], room, "the room name is stable");
    let (s, _) = api.get(&format!("/api/meetings/{id}/artifacts"), Some("mario")).await;
    assert_eq!(s, StatusCode::CONFLICT, "no recording yet");

    let (s, up) = api.upload(&id, "standup.wav", "audio/wav", TWO_VOICES_WAV).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{up}");
    assert_eq!(up["status"], "processing");
    let (s, a) = api.artifacts(&id).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!(a["status"], "ready");
    let segments = a["transcript"]["segments"].as_array().expect("segments");
    assert!(!segments.is_empty());
    assert!(a["summary"].as_str().is_some_and(|s| !s.is_empty()), "{a}");
    assert!(a["tasks"].as_array().is_some_and(|t| !t.is_empty()), "{a}");
    assert!(a["decisions"].is_array() && a["openQuestions"].is_array());
    // One transcription of the whole file; the summary prompt carries its text.
    let reqs = api.h.fake.transcription_requests();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].audio == TWO_VOICES_WAV, "the recording is sent as uploaded");
    let prompt = api.h.fake.chat_requests().last().unwrap().to_string();
    assert!(prompt.contains(segments[0]["text"].as_str().unwrap()), "the transcript is summarized");
    // The recording is gone once processed.
    let row = api.store.meeting(None, &id).await.unwrap().unwrap();
    assert!(row.audio_blob_id.is_none());
    let (_, list) = api.get("/api/meetings", Some("mario")).await;
    assert_eq!(list["meetings"][0]["id"], id.as_str());

    // Edited tasks: validated, persisted, and kept through a re-summarize.
    let (s, bad) = api
        .post(
            &format!("/api/meetings/{id}/tasks"),
            json!({"tasks": [{"title": ""}, {"title": "ok", "dueDate": "2026-02-30"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let msg = bad["error"]["message"].as_str().unwrap();
    assert!(msg.contains("tasks[0]") && msg.contains("tasks[1]"), "every problem reported: {msg}");
    let edited = json!({"tasks": [{"title": "Send the budget", "owner": "Alice", "dueDate": "2026-11-27"}]});
    let (s, r) = api.post(&format!("/api/meetings/{id}/tasks"), edited).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let mut other = default_meeting_summary();
    other["summary"] = json!("A second, better summary.");
    api.h.fake.push_chat_reply(ChatReply::Summary(other));
    let (s, r) = api.post(&format!("/api/meetings/{id}/summarize"), json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let (s, a) = api.artifacts(&id).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(a["summary"], "A second, better summary.");
    assert_eq!(a["tasks"][0]["title"], "Send the budget", "edited tasks survive: {a}");
    assert_eq!(a["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(a["tasksEdited"], true);
    assert_eq!(api.h.fake.transcription_requests().len(), 1, "re-summarizing does not transcribe again");
    assert!(api.h.fake.violations().is_empty(), "{:?}", api.h.fake.violations());
    api.finish().await;
}

async fn other_tenants_keys_and_public_join(postgres: bool) {
    let api = Api::start(postgres, &[]).await;
    let private = api.create("Board meeting", false).await;
    let public = api.create("Open day", true).await;
    for path in [
        format!("/api/meetings/{private}"),
        format!("/api/meetings/{private}/artifacts"),
        format!("/api/meetings/{public}/artifacts"),
    ] {
        let (s, _) = api.get(&path, Some("gino24k")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: another tenant");
        let (s, body) = api.get(&path, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: no key");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let (s, _) = api
        .send(api.http.post(api.url(&format!("/api/meetings/{private}/summarize"))).bearer_auth(api_key("gino24k")))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.send(api.http.get(api.url("/api/meetings")).bearer_auth("nope")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (_, list) = api.get("/api/meetings", Some("gino24k")).await;
    assert_eq!(list["meetings"].as_array().unwrap().len(), 0);
    // publicJoin: readable without a key, public fields only.
    let (s, m) = api.get(&format!("/api/meetings/{public}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(m["title"], "Open day");
    assert!(m["jitsiRoomName"].is_string());
    let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    for hidden in ["status", "audio", "error", "transcript", "summary", "tasks", "hasArtifacts"] {
        assert!(!keys.contains(&hidden), "{hidden} is not public: {m}");
    }
    api.finish().await;
}

async fn bad_uploads_413_415_409(postgres: bool) {
    let api = Api::start(postgres, &[("MEETING_MAX_UPLOAD_BYTES", "400000")]).await;
    let id = api.create("Uploads", false).await;
    let big = vec![0u8; 500_000];
    let (s, b) = api.upload(&id, "big.wav", "audio/wav", &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    assert_eq!(b["error"]["code"], "too_large");
    let (s, _) = api.upload_raw(&id, "audio/wav", &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    for (name, bytes) in [("corrupt.wav", CORRUPT_WAV), ("song.mp3", FAKE_MP3)] {
        let (s, b) = api.upload(&id, name, "audio/mpeg", bytes).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{name}: {b}");
        assert_eq!(b["error"]["code"], "not_audio");
    }
    let (s, _) = api.upload_raw(&id, "text/plain", b"hello").await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (_, m) = api.get(&format!("/api/meetings/{id}"), Some("mario")).await;
    assert_eq!(m["status"], "created", "refused uploads change nothing");

    // A raw FLAC body is accepted; a second upload while processing is a 409.
    api.h.fake.push_transcription_reply(TranscriptionReply::Hang(Duration::from_secs(3)));
    let (s, b) = api.upload_raw(&id, "audio/flac", TWO_VOICES_FLAC).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let (s, b) = api.upload(&id, "again.wav", "audio/wav", TWO_VOICES_WAV).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    api.finish().await;
}

async fn long_recordings_are_split_on_silence_and_stitched(postgres: bool) {
    // 200 kB per request: about 6 s of 16 kHz WAV.
    let api = Api::start(postgres, &[("TRANSCRIBE_MAX_UPLOAD_BYTES", "200000")]).await;
    api.h.fake.set_transcription_limit(200_000);
    let id = api.create("Long one", false).await;
    let (s, b) = api.upload(&id, "long.flac", "audio/flac", LONG_FLAC).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let (s, a) = api.artifacts(&id).await;
    assert_eq!((s, a["status"].as_str()), (StatusCode::OK, Some("ready")), "{a}");
    let reqs = api.h.fake.transcription_requests();
    assert!(reqs.len() >= 3, "split into chunks: {}", reqs.len());
    assert!(reqs.iter().all(|r| r.bytes <= 200_000), "every chunk within the limit");
    let segs = a["transcript"]["segments"].as_array().unwrap();
    let starts: Vec<u64> = segs.iter().map(|s| s["startMs"].as_u64().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "offsets in order: {starts:?}");
    let dur = a["durationMs"].as_u64().unwrap();
    let last_end = segs.last().unwrap()["endMs"].as_u64().unwrap();
    assert!(last_end <= dur + 1_000 && last_end + 10_000 >= dur, "segments span the recording: {last_end} of {dur}");
    assert!(starts.iter().any(|s| *s >= 6_000), "later chunks are offset");
    api.finish().await;
}

async fn a_refused_transcription_fails_clearly_and_drops_the_blob(postgres: bool) {
    let api = Api::start(postgres, &[]).await;
    let id = api.create("Doomed", false).await;
    api.h.fake.push_transcription_reply(TranscriptionReply::Status {
        status: 400,
        retry_after: None,
        body: json!({"error": {"message": "Audio file might be corrupted or unsupported", "type": "invalid_request_error", "param": "file", "code": "invalid_value"}}),
    });
    let (s, _) = api.upload(&id, "x.wav", "audio/wav", TWO_VOICES_WAV).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, a) = api.artifacts(&id).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(a["status"], "failed");
    assert!(a["error"].as_str().unwrap().contains("corrupted or unsupported"), "{a}");
    let row = api.store.meeting(None, &id).await.unwrap().unwrap();
    assert!(row.audio_blob_id.is_none(), "the recording is deleted on failure too");
    assert_eq!(api.h.fake.transcription_requests().len(), 1, "a 400 is not retried");
    api.finish().await;
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(false).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(true).await
            }
        }
    };
}

both!(lifecycle_resummarize_and_edited_tasks);
both!(other_tenants_keys_and_public_join);
both!(bad_uploads_413_415_409);
both!(long_recordings_are_split_on_silence_and_stitched);
both!(a_refused_transcription_fails_clearly_and_drops_the_blob);

#[tokio::test]
async fn cors_preflight_answers_only_allowed_origins() {
    let api =
        Api::start(false, &[("ALLOWED_ORIGINS", "https://app.example.test"), ("CORS_ALLOW_CREDENTIALS", "true")]).await;
    let pre = |origin: &'static str| {
        api.http
            .request(reqwest::Method::OPTIONS, api.url("/api/meetings"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
    };
    let ok = pre("https://app.example.test").send().await.unwrap();
    assert!(ok.status().is_success());
    let h = ok.headers();
    assert_eq!(h.get("access-control-allow-origin").unwrap(), "https://app.example.test");
    assert_eq!(h.get("access-control-allow-credentials").unwrap(), "true");
    assert!(h.get("access-control-allow-headers").unwrap().to_str().unwrap().to_lowercase().contains("authorization"));
    let bad = pre("https://evil.example.test").send().await.unwrap();
    assert!(bad.headers().get("access-control-allow-origin").is_none(), "other origins get no CORS grant");
    api.finish().await;
}

/// A meeting job whose daemons kept dying: the meeting ends `failed` (not stuck in
/// `processing`), its recording is deleted, and a new upload is accepted.
async fn a_meeting_job_abandoned_by_dying_daemons_fails_the_meeting(postgres: bool) {
    let pg = if postgres { Some(PgSchema::create().await.expect("postgres")) } else { None };
    let url = match &pg {
        Some(p) => p.url.clone(),
        None => format!(
            "sqlite://{}/db.sqlite",
            std::env::temp_dir().join(format!("sb-cursed-{}", uuid::Uuid::new_v4().simple())).display()
        ),
    };
    // Before the daemon starts: a meeting whose one-attempt job a daemon took and died with.
    let store = Store::open(&url, 2).await.unwrap();
    let now = switchboard::worker::now_ms();
    let id = "01a20000-0000-7000-8000-00000000c0de";
    store
        .insert_meeting(&switchboard::store::NewMeeting {
            id: id.into(),
            tenant_id: "mario".into(),
            title: "Cursed".into(),
            scheduled_at_ms: None,
            public_join: false,
            jitsi_room_name: "sb-meet-cursed".into(),
            created_at_ms: now,
        })
        .await
        .unwrap();
    let spool = std::env::temp_dir().join(format!("sb-cursed-{}.wav", uuid::Uuid::new_v4().simple()));
    std::fs::write(&spool, TWO_VOICES_WAV).unwrap();
    let bytes = store.put_blob("blob-cursed", "mario", &spool, now).await.unwrap();
    let job = switchboard::worker::meetings::process_job("mario", id, "blob-cursed", now, 1);
    let attached = store
        .start_meeting_processing("mario", id, "blob-cursed", "cursed.wav", "audio/wav", bytes, None, &job, now)
        .await
        .unwrap();
    assert!(attached);
    assert!(store.claim_job("dying-daemon", now, 1).await.unwrap().is_some());

    let mut env: Vec<(&str, &str)> = vec![("JOB_POLL_MS", "50"), ("DATABASE_URL", url.as_str())];
    env.push(("OPENAI_TRANSCRIBE_MODEL", "whisper-1"));
    let h = Harness::start_with(script(), None, &env).await;
    let deadline = Instant::now() + T;
    loop {
        let row = store.meeting(None, id).await.unwrap().unwrap();
        if row.status == "failed" {
            assert!(row.error.as_deref().unwrap_or("").contains("upload the recording again"), "{row:?}");
            assert!(!store.blob_exists("blob-cursed").await.unwrap(), "the recording is deleted");
            break;
        }
        assert!(Instant::now() < deadline, "the meeting stayed {}", row.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(h.fake.transcription_requests().is_empty(), "not run past its limit");
    let part =
        reqwest::multipart::Part::bytes(TWO_VOICES_WAV.to_vec()).file_name("again.wav").mime_str("audio/wav").unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/api/meetings/{id}/audio", h.http))
        .bearer_auth(api_key("mario"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "a new upload is accepted");
    store.close().await;
    h.daemon.shutdown();
    let _ = h.daemon.wait().await;
    let _ = std::fs::remove_file(spool);
    if let Some(p) = pg {
        p.drop_schema().await.unwrap();
    }
}
both!(a_meeting_job_abandoned_by_dying_daemons_fails_the_meeting);
