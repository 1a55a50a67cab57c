//! After the call, through the real daemon on SQLite and on PostgreSQL, with the in-repo SMTP
//! sink and the fake OpenAI: hang-up → record → summary → email; SMTP down then back (across a
//! restart); the model rate-limited, down, or answering garbage; a duplicate `stop`; a refusal
//! by the mail server; the file outbox when no SMTP is configured.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use switchboard::store::{EmailStatus, Store};
use switchboard::testkit::fake_openai_http::ChatReply;
use switchboard::testkit::pg::PgSchema;
use switchboard::testkit::{ReceivedMail, SinkMode, SmtpSink};

const T: Duration = Duration::from_secs(20);

/// Fast retries so the tests see several attempts in a second or two.
const FAST: &[(&str, &str)] = &[
    ("JOB_POLL_MS", "50"),
    ("SUMMARY_RETRY_BASE_MS", "100"),
    ("SUMMARY_RETRY_CAP_MS", "400"),
    ("EMAIL_RETRY_BASE_MS", "100"),
    ("EMAIL_RETRY_CAP_MS", "300"),
    ("SMTP_SENDER", "Switchboard <calls@sb.example.test>"),
];

/// A database for one test: a SQLite file in a temp dir, or a private PostgreSQL schema.
struct Db {
    url: String,
    pg: Option<PgSchema>,
}

impl Db {
    async fn new(postgres: bool) -> Db {
        if postgres {
            let pg = PgSchema::create().await.expect("postgres");
            Db { url: pg.url.clone(), pg: Some(pg) }
        } else {
            let dir = std::env::temp_dir().join(format!("sb-after-{}", uuid::Uuid::new_v4().simple()));
            Db { url: format!("sqlite://{}/db.sqlite", dir.display()), pg: None }
        }
    }

    async fn store(&self) -> Store {
        Store::open(&self.url, 2).await.expect("store")
    }

    async fn drop(self) {
        if let Some(pg) = self.pg {
            pg.drop_schema().await.expect("drop schema");
        }
    }
}

/// A Italian booking summary, as the model would write it for the test call.
fn italian_summary() -> Value {
    json!({
        "language": "it",
        "intent": "booking",
        "intent_detail": "Tavolo per 4 sabato",
        "caller_name": "Giulia <Rossi>",
        "caller_phone": null,
        "booking": { "date": "2026-11-28", "time": "20:00", "party_size": 4, "name": "Rossi", "notes": "Un seggiolone & un vegetariano" },
        "key_points": ["Un ospite vegetariano"],
        "action_items": ["Confermare la prenotazione"],
        "follow_up_needed": true,
        "follow_up_reason": "Da confermare",
        "sentiment": "positive",
        "summary": "Giulia ha chiesto un tavolo per 4 sabato 28 novembre alle 20:00."
    })
}

async fn start(db: &Db, smtp: Option<&str>, extra: &[(&str, &str)]) -> Harness {
    let mut env: Vec<(&str, &str)> = FAST.to_vec();
    env.push(("DATABASE_URL", &db.url));
    if let Some(url) = smtp {
        env.push(("SMTP_URL", url));
    }
    env.extend_from_slice(extra);
    let h = Harness::start_with(script(), None, &env).await;
    h.fake.set_default_chat_reply(ChatReply::Summary(italian_summary()));
    h
}

/// One short call to mario: greeting, the caller's booking request, hang-up. Returns its CallSid.
async fn one_call(h: &Harness) -> String {
    let mut call = h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 1_000, T).await.expect("greeting");
    let at = call.play(SPEECH_IT);
    call.wait_for(|s| s.caller_audio_ms >= at + 3_600, T).await.expect("speech sent");
    h.fake.wait_for(|ev| ev.iter().filter(|e| e.kind() == "response.create").count() >= 2, T).await.expect("reply");
    call.wait_for(|s| s.received_ms >= 2_500, T).await.expect("reply heard");
    let sid = call.call_sid().to_owned();
    call.stop().await;
    sid
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + T;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn api(h: &Harness, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", h.http))
        .bearer_auth(api_key("mario"))
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.expect("json")
}

fn check_summary_email(m: &ReceivedMail, sid: &str) {
    assert_eq!(m.rcpt_to, ["mario@owner.test"]);
    assert_eq!(m.content_type().as_deref(), Some("multipart/alternative"), "{}", m.data);
    let subject = m.header("Subject").expect("subject");
    assert!(subject.contains("Test mario"), "tenant in the subject: {subject}");
    assert!(subject.contains('4') && subject.contains("20:00"), "the gist (booking) in the subject: {subject}");
    assert!(subject.contains("Giulia"), "the caller in the subject: {subject}");
    assert_eq!(m.header("Message-ID").as_deref(), Some(format!("<call-{sid}@sb.example.test>").as_str()));
    let text = m.part("text/plain").expect("a text part");
    let html = m.part("text/html").expect("an html part");
    for part in [&text, &html] {
        assert!(part.contains("tavolo per 4 sabato 28 novembre"), "summary in both parts");
        assert!(part.contains("Confermare la prenotazione"), "action items in both parts");
        assert!(part.contains("Vorrei prenotare un tavolo per quattro."), "transcript in both parts");
    }
    // Model and caller values are escaped in HTML.
    assert!(html.contains("Giulia &lt;Rossi&gt;") && !html.contains("Giulia <Rossi>"), "escaped name");
    assert!(html.contains("seggiolone &amp; un"), "escaped notes");
    assert!(text.contains("Giulia <Rossi>"), "the text part is plain text");
}

async fn hangup_to_record_summary_and_email(postgres: bool) {
    let db = Db::new(postgres).await;
    let smtp = SmtpSink::start().await.unwrap();
    let h = start(&db, Some(&smtp.url()), &[]).await;
    let sid = one_call(&h).await;
    let mails = smtp.wait_for_messages(1, T).await.expect("the summary email");
    check_summary_email(&mails[0], &sid);

    // The prompt: the tenant's language, the caller's number and what was actually said.
    let req = h.fake.chat_requests().pop().expect("a chat request");
    let prompt = req.to_string();
    assert!(prompt.contains("Italian"), "summary in the tenant's language");
    assert!(prompt.contains("+393331234567"));
    assert!(prompt.contains("Vorrei prenotare un tavolo per quattro."));
    assert_eq!(req["response_format"]["json_schema"]["strict"], true);

    // Everything is visible through the API.
    wait_until("the email marked sent", || async {
        api(&h, &format!("/api/calls/{sid}")).await["email"]["status"] == "sent"
    })
    .await;
    let c = api(&h, &format!("/api/calls/{sid}")).await;
    assert_eq!(c["summaryStatus"], "ready");
    assert_eq!(c["summary"]["booking"]["partySize"], 4);
    assert_eq!(c["hasBooking"], true);
    assert_eq!(c["sentiment"], "positive");
    assert_eq!(c["email"]["attempts"], 1);
    assert!(c["transcript"].as_array().unwrap().len() >= 2);
    assert!(h.metric("switchboard_emails_sent_total").await >= 1);
    assert!(h.fake.violations().is_empty(), "{:?}", h.fake.violations());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.messages().len(), 1, "exactly one email");
    db.drop().await;
}

async fn smtp_down_at_hangup_then_back_after_a_restart(postgres: bool) {
    let db = Db::new(postgres).await;
    // A port with nothing listening: the mail server is down at hang-up time.
    let probe = SmtpSink::start().await.unwrap();
    let addr = probe.addr();
    let url = probe.url();
    probe.stop().await;
    let h = start(&db, Some(&url), &[]).await;
    let sid = one_call(&h).await;
    let store = db.store().await;
    wait_until("failed delivery attempts", || async {
        store.emails_for_call(&sid).await.unwrap().first().is_some_and(|e| e.attempts >= 2)
    })
    .await;
    let e = store.emails_for_call(&sid).await.unwrap().remove(0);
    assert_eq!(e.status, EmailStatus::Pending, "still pending, not lost");
    assert!(e.last_error.is_some(), "the last error is kept");

    // The daemon restarts; the mail server comes back.
    let tenants = h.dir.join("tenants.toml");
    h.daemon.shutdown();
    h.daemon.wait().await.expect("clean stop");
    let smtp = SmtpSink::start_on(addr).await.expect("the mail server is back on its port");
    let mut env: Vec<(&str, &str)> = FAST.to_vec();
    env.extend([("DATABASE_URL", db.url.as_str()), ("SMTP_URL", url.as_str())]);
    let h2 = Harness::start_with(script(), Some(tenants), &env).await;
    let mails = smtp.wait_for_messages(1, T).await.expect("delivered after the restart");
    check_summary_email(&mails[0], &sid);
    wait_until("sent", || async { store.emails_for_call(&sid).await.unwrap()[0].status == EmailStatus::Sent }).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(smtp.messages().len(), 1, "delivered once");
    assert_eq!(store.emails_for_call(&sid).await.unwrap().len(), 1);
    h2.daemon.shutdown();
    let _ = h2.daemon.wait().await;
    store.close().await;
    db.drop().await;
}

async fn model_rate_limited_then_answers(postgres: bool) {
    let db = Db::new(postgres).await;
    let smtp = SmtpSink::start().await.unwrap();
    let h = start(&db, Some(&smtp.url()), &[]).await;
    h.fake.push_chat_reply(ChatReply::Status {
        status: 429,
        retry_after: Some(1),
        body: json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}}),
    });
    let sid = one_call(&h).await;
    wait_until("the first (rate-limited) request", || async { !h.fake.chat_requests().is_empty() }).await;
    let first = Instant::now();
    wait_until("the retry", || async { h.fake.chat_requests().len() >= 2 }).await;
    // The base delay is 100 ms: only Retry-After explains waiting a second.
    assert!(first.elapsed() >= Duration::from_millis(900), "Retry-After honoured: {:?}", first.elapsed());
    let mails = smtp.wait_for_messages(1, T).await.expect("email after the retry");
    check_summary_email(&mails[0], &sid);
    assert_eq!(h.fake.chat_requests().len(), 2);
    db.drop().await;
}

async fn model_down_still_emails_the_transcript(postgres: bool) {
    let db = Db::new(postgres).await;
    let smtp = SmtpSink::start().await.unwrap();
    let h = start(&db, Some(&smtp.url()), &[("SUMMARY_MAX_ATTEMPTS", "3")]).await;
    h.fake.set_default_chat_reply(ChatReply::error(503, "server_error", "The server is overloaded"));
    let sid = one_call(&h).await;
    let mails = smtp.wait_for_messages(1, T).await.expect("an email even without a summary");
    assert_eq!(h.fake.chat_requests().len(), 3, "every attempt was made first");
    let m = &mails[0];
    let text = m.part("text/plain").unwrap();
    let html = m.part("text/html").unwrap();
    assert!(text.contains("Vorrei prenotare un tavolo per quattro."), "the transcript: {text}");
    assert!(html.contains("Vorrei prenotare un tavolo per quattro."));
    assert!(text.contains("did not answer after several attempts"), "a plain note: {text}");
    assert!(!text.contains("503") && !text.contains("overloaded"), "no technical detail for the owner");
    assert!(m.header("Subject").unwrap().contains("Test mario"));
    let c = api(&h, &format!("/api/calls/{sid}")).await;
    assert_eq!(c["summaryStatus"], "unavailable");
    assert!(c["summaryError"].as_str().unwrap().contains("503"), "operators see the cause: {c}");
    assert_eq!(c["summary"], Value::Null);
    db.drop().await;
}

async fn malformed_model_output_is_retried_not_sent(postgres: bool) {
    let db = Db::new(postgres).await;
    let smtp = SmtpSink::start().await.unwrap();
    let h = start(&db, Some(&smtp.url()), &[]).await;
    h.fake.push_chat_reply(ChatReply::Malformed("{\"summary\": \"half a summ".into()));
    let mut wrong = italian_summary();
    wrong["sentiment"] = json!("ecstatic");
    h.fake.push_chat_reply(ChatReply::Summary(wrong));
    let sid = one_call(&h).await;
    let mails = smtp.wait_for_messages(1, T).await.expect("the email after the retries");
    assert_eq!(h.fake.chat_requests().len(), 3, "two bad replies, then a good one");
    check_summary_email(&mails[0], &sid);
    let text = mails[0].part("text/plain").unwrap();
    assert!(!text.contains("half a summ") && !text.contains("ecstatic"), "no garbage in the email");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.messages().len(), 1);
    db.drop().await;
}

async fn duplicate_stop_gives_one_record_and_one_email(postgres: bool) {
    let db = Db::new(postgres).await;
    let smtp = SmtpSink::start().await.unwrap();
    let h = start(&db, Some(&smtp.url()), &[]).await;
    let mut call = h.call(MARIO).await;
    call.wait_for(|s| s.played_ms >= 1_000, T).await.unwrap();
    let stop = json!({"event": "stop", "streamSid": call.stream_sid(),
        "stop": {"accountSid": "AC00000000000000000000000000000000", "callSid": call.call_sid()}});
    call.send_event(stop.clone());
    call.send_event(stop);
    let sid = call.call_sid().to_owned();
    call.stop().await;
    let record = h.next_record(T).await.expect("a record");
    assert_eq!(record.call_sid, sid);
    // The same record again (a crash-restart replaying it, a second stream): still one.
    let store = db.store().await;
    let job = switchboard::worker::summarize::job(&record, 0, 3);
    assert!(!store.insert_call(&record, "it", &job, 0).await.unwrap(), "already stored");
    smtp.wait_for_messages(1, T).await.expect("one email");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.messages().len(), 1, "one email");
    let list = api(&h, "/api/calls").await;
    assert_eq!(list["calls"].as_array().unwrap().len(), 1, "one record: {list}");
    assert_eq!(h.fake.chat_requests().len(), 1, "one summary");
    assert!(h.next_record(Duration::from_millis(300)).await.is_none(), "one record handed over");
    store.close().await;
    db.drop().await;
}

async fn a_refusing_mail_server_is_recorded_not_retried(postgres: bool) {
    let db = Db::new(postgres).await;
    let smtp = SmtpSink::start().await.unwrap();
    smtp.set_mode(SinkMode::Reject);
    let h = start(&db, Some(&smtp.url()), &[]).await;
    let sid = one_call(&h).await;
    wait_until("the rejection recorded", || async {
        api(&h, &format!("/api/calls/{sid}")).await["email"]["status"] == "rejected"
    })
    .await;
    let c = api(&h, &format!("/api/calls/{sid}")).await;
    assert!(c["email"]["lastError"].as_str().unwrap().contains("550"), "{c}");
    let tx = smtp.transactions();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(smtp.transactions(), tx, "a 5xx is not retried");
    assert_eq!(h.metric("switchboard_emails_rejected_total").await, 1);
    db.drop().await;
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

both!(hangup_to_record_summary_and_email);
both!(smtp_down_at_hangup_then_back_after_a_restart);
both!(model_rate_limited_then_answers);
both!(model_down_still_emails_the_transcript);
both!(malformed_model_output_is_retried_not_sent);
both!(duplicate_stop_gives_one_record_and_one_email);
both!(a_refusing_mail_server_is_recorded_not_retried);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_emails_are_written_to_the_outbox_folder() {
    let db = Db::new(false).await;
    let h = start(&db, None, &[]).await;
    let sid = one_call(&h).await;
    let outbox = h.dir.join("data/outbox");
    wait_until("an .eml file", || async {
        std::fs::read_dir(&outbox)
            .map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "eml")))
            .unwrap_or(false)
    })
    .await;
    let file = std::fs::read_dir(&outbox)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .unwrap();
    let eml = std::fs::read_to_string(file.path()).unwrap();
    let m = ReceivedMail { mail_from: String::new(), rcpt_to: vec![], data: eml, auth_user: None };
    assert_eq!(m.content_type().as_deref(), Some("multipart/alternative"));
    assert!(m.part("text/plain").unwrap().contains("tavolo per 4"));
    assert_eq!(m.header("Message-ID").as_deref(), Some(format!("<call-{sid}@sb.example.test>").as_str()));
    let c = api(&h, &format!("/api/calls/{sid}")).await;
    assert_eq!(c["email"]["status"], "sent");
    db.drop().await;
}

/// A summary job whose daemons kept dying (its last lease lapsed): it goes `dead`, and the
/// owner still gets the transcript instead of nothing.
async fn a_summary_job_abandoned_by_dying_daemons_still_emails_the_transcript(postgres: bool) {
    use switchboard::core::domain::call::{CallRecord, CallStats, EndReason, Speaker, TranscriptTurn};
    let db = Db::new(postgres).await;
    let store = db.store().await;
    let now = switchboard::worker::now_ms();
    let rec = CallRecord {
        tenant_id: "mario".into(),
        call_sid: "CA0123456789abcdef0123456789abcdef".into(),
        stream_sid: "MZ1".into(),
        from: "+393331234567".into(),
        to: MARIO.into(),
        started_at_ms: now - 60_000,
        ended_at_ms: now,
        duration_ms: 60_000,
        end_reason: EndReason::CallerHangup,
        end_detail: None,
        transcript: vec![TranscriptTurn {
            speaker: Speaker::Caller,
            start_ms: 1_000,
            text: "Vorrei prenotare per domani sera".into(),
            item_id: None,
            interrupted: false,
            heard_ms: None,
            generated_ms: None,
            generated_text: None,
        }],
        interruptions: 0,
        caller_talk_ms: 3_000,
        agent_talk_ms: 4_000,
        usage: Default::default(),
        stats: CallStats::default(),
        reconnects: Vec::new(),
        bookings: Vec::new(),
        transferred_to: None,
    };
    let job = switchboard::worker::summarize::job(&rec, now, 1);
    assert!(store.insert_call(&rec, "it", &job, now).await.unwrap());
    // A daemon takes the job and dies with it.
    assert!(store.claim_job("dying-daemon", now, 1).await.unwrap().is_some());
    let smtp = SmtpSink::start().await.unwrap();
    let h = start(&db, Some(&smtp.url()), &[]).await;
    let mail = smtp.wait_for_messages(1, T).await.expect("the transcript is emailed").remove(0);
    assert!(mail.part("text/plain").unwrap().contains("Vorrei prenotare per domani sera"));
    let row = store.job("call.summarize", &rec.call_sid).await.unwrap().unwrap();
    assert_eq!(row.status, "dead");
    let c = api(&h, &format!("/api/calls/{}", rec.call_sid)).await;
    assert_eq!(c["summaryStatus"], "unavailable");
    assert!(h.fake.chat_requests().is_empty(), "an abandoned job is not retried past its limit");
    store.close().await;
    db.drop().await;
}
both!(a_summary_job_abandoned_by_dying_daemons_still_emails_the_transcript);
