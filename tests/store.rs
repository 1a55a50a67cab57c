//! The store against real databases: a SQLite file and a private schema on this machine's
//! PostgreSQL. Every scenario runs on both.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use switchboard::core::domain::call::{CallRecord, CallStats, EndReason, Speaker, TranscriptTurn};
use switchboard::core::realtime::server::Usage;
use switchboard::store::{CallFilter, CallSummaryUpdate, EmailStatus, NewEmail, NewJob, Store};
use switchboard::testkit::pg::PgSchema;

async fn on_sqlite<F, Fut>(f: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = std::env::temp_dir().join(format!("sb-store-{}", uuid::Uuid::new_v4().simple()));
    let store = Store::open(&format!("sqlite://{}/db.sqlite", dir.display()), 4).await.expect("open sqlite");
    f(store.clone()).await;
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn on_postgres<F, Fut>(f: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let schema = PgSchema::create().await.expect("postgres at 127.0.0.1:5432 (see SWITCHBOARD_TEST_PG_URL)");
    let store = Store::open(&schema.url, 4).await.expect("open postgres");
    f(store.clone()).await;
    store.close().await;
    schema.drop_schema().await.expect("drop schema");
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::on_sqlite(super::$name).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::on_postgres(super::$name).await
            }
        }
    };
}

fn record(tenant: &str, sid: &str, started_at_ms: u64, end: EndReason, turns: &[(Speaker, &str)]) -> CallRecord {
    CallRecord {
        tenant_id: tenant.into(),
        call_sid: sid.into(),
        stream_sid: format!("MZ{sid}"),
        from: "+393331234567".into(),
        to: "+39021111111".into(),
        started_at_ms,
        ended_at_ms: started_at_ms + 60_000,
        duration_ms: 60_000,
        end_reason: end,
        end_detail: None,
        transcript: turns
            .iter()
            .enumerate()
            .map(|(i, (s, t))| TranscriptTurn {
                speaker: *s,
                start_ms: i as u64 * 5_000,
                text: (*t).into(),
                item_id: None,
                interrupted: i == 1,
                heard_ms: (*s == Speaker::Agent).then_some(1_200),
                generated_ms: None,
                generated_text: None,
            })
            .collect(),
        interruptions: 1,
        caller_talk_ms: 20_000,
        agent_talk_ms: 25_000,
        usage: Usage { total_tokens: 300, input_tokens: 200, output_tokens: 100, ..Usage::default() },
        stats: CallStats::default(),
        reconnects: Vec::new(),
        bookings: Vec::new(),
        transferred_to: None,
    }
}

fn summary_job(sid: &str, now: u64) -> NewJob {
    NewJob {
        kind: "call.summarize",
        dedupe_key: sid.into(),
        tenant_id: Some("mario".into()),
        payload: serde_json::json!({ "callSid": sid }),
        run_at_ms: now,
        max_attempts: 3,
    }
}

const T0: u64 = 1_790_000_000_000;
const DAY: u64 = 86_400_000;

async fn a_call_is_stored_once_with_its_job(store: Store) {
    let r = record(
        "mario",
        "CA1",
        T0,
        EndReason::CallerHangup,
        &[(Speaker::Agent, "Pronto, Trattoria Mario!"), (Speaker::Caller, "Vorrei prenotare un tavolo")],
    );
    assert!(store.insert_call(&r, "it", &summary_job("CA1", T0), T0).await.unwrap());
    // A repeated stop, a reconnect, a restart: the same CallSid again changes nothing.
    let mut again = r.clone();
    again.duration_ms = 1;
    assert!(!store.insert_call(&again, "it", &summary_job("CA1", T0), T0).await.unwrap());

    let row = store.call(Some("mario"), "CA1").await.unwrap().expect("stored");
    assert_eq!(row.duration_ms, 60_000);
    assert_eq!(row.status, "completed");
    assert_eq!(row.end_reason, "caller_hangup");
    assert_eq!((row.input_tokens, row.output_tokens), (200, 100));
    assert_eq!(row.summary_status, "pending");
    let back: CallRecord = serde_json::from_str(&row.record_json).unwrap();
    assert_eq!(back, r);
    assert!(store.call(Some("gino"), "CA1").await.unwrap().is_none(), "another tenant sees nothing");
    let turns = store.call_turns("CA1").await.unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1].text, "Vorrei prenotare un tavolo");
    assert!(turns[1].interrupted);
    assert_eq!(turns[0].heard_ms, Some(1_200));
    let jobs = store.jobs().await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!((jobs[0].kind.as_str(), jobs[0].status.as_str()), ("call.summarize", "queued"));
}
both!(a_call_is_stored_once_with_its_job);

async fn jobs_retry_lease_and_die(store: Store) {
    let job = |k: &str| NewJob {
        kind: "test.kind",
        dedupe_key: k.into(),
        tenant_id: None,
        payload: serde_json::json!({ "k": k }),
        run_at_ms: T0,
        max_attempts: 2,
    };
    assert!(store.enqueue(&job("a"), T0).await.unwrap());
    assert!(!store.enqueue(&job("a"), T0).await.unwrap(), "same key twice is one job");
    assert!(store.claim_job("w", T0 - 1, 1_000).await.unwrap().is_none(), "not due yet");

    let c = store.claim_job("w1", T0, 1_000).await.unwrap().expect("due");
    assert_eq!((c.attempts, c.payload["k"].as_str()), (1, Some("a")));
    assert!(store.claim_job("w2", T0 + 500, 1_000).await.unwrap().is_none(), "leased");
    // The lease expires (the worker died): another daemon takes it; the old lease is void.
    let c2 = store.claim_job("w2", T0 + 1_001, 1_000).await.unwrap().expect("lease expired");
    assert_eq!(c2.attempts, 2);
    assert!(!store.complete_job(&c, T0 + 1_002).await.unwrap(), "stale lease cannot complete");
    assert!(c2.is_last_attempt());
    assert!(store.fail_job(&c2, T0 + 1_100, "boom", Some(T0 + 5_000)).await.unwrap());
    let row = store.job("test.kind", "a").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.last_error.as_deref(), row.run_at_ms), ("queued", Some("boom"), T0 + 5_000));
    assert_eq!(store.next_job_due_ms().await.unwrap(), Some(T0 + 5_000));
    let c3 = store.claim_job("w3", T0 + 5_000, 1_000).await.unwrap().expect("retry due");
    assert!(store.fail_job(&c3, T0 + 5_001, "boom again", None).await.unwrap());
    let row = store.job("test.kind", "a").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.last_error.as_deref()), ("dead", Some("boom again")));
    assert!(store.claim_job("w", T0 + 10 * DAY, 1_000).await.unwrap().is_none(), "dead stays dead");

    // Released jobs do not spend an attempt.
    assert!(store.enqueue(&job("b"), T0).await.unwrap());
    let b = store.claim_job("w", T0, 1_000).await.unwrap().unwrap();
    assert!(store.release_job(&b, T0 + 1).await.unwrap());
    let b = store.claim_job("w", T0 + 1, 1_000).await.unwrap().unwrap();
    assert_eq!(b.attempts, 1);
    assert!(store.extend_lease(&b, T0 + 900, 1_000).await.unwrap());
    assert!(store.claim_job("w2", T0 + 1_500, 1_000).await.unwrap().is_none(), "lease extended");
    assert!(store.complete_job(&b, T0 + 1_600).await.unwrap());
    let counts = store.job_counts().await.unwrap();
    assert_eq!((counts.done, counts.dead, counts.queued, counts.running), (1, 1, 0, 0));
}
both!(jobs_retry_lease_and_die);

async fn concurrent_claims_take_each_job_once(store: Store) {
    for i in 0..40 {
        let job = NewJob {
            kind: "test.kind",
            dedupe_key: format!("j{i}"),
            tenant_id: None,
            payload: serde_json::json!({}),
            run_at_ms: T0,
            max_attempts: 1,
        };
        store.enqueue(&job, T0).await.unwrap();
    }
    let store = Arc::new(store);
    let mut tasks = Vec::new();
    for w in 0..6 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(j) = store.claim_job(&format!("w{w}"), T0, 60_000).await.expect("claim") {
                got.push(j.dedupe_key.clone());
                store.complete_job(&j, T0).await.expect("complete");
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 40, "every job claimed exactly once: {all:?}");
    assert_eq!(unique.len(), 40);
}
both!(concurrent_claims_take_each_job_once);

async fn summary_and_email_are_written_together(store: Store) {
    let r = record("mario", "CA9", T0, EndReason::AgentEnded, &[(Speaker::Caller, "tavolo per quattro")]);
    store.insert_call(&r, "it", &summary_job("CA9", T0), T0).await.unwrap();
    let email = NewEmail {
        id: "e1".into(),
        tenant_id: "mario".into(),
        call_sid: Some("CA9".into()),
        message_id: "call-CA9@example.test".into(),
        sender: "sb@example.test".into(),
        recipients: vec!["owner@example.test".into()],
        subject: "Booking for 4".into(),
        text: "text".into(),
        html: "<p>html</p>".into(),
        created_at_ms: T0,
    };
    let send = NewJob {
        kind: "email.send",
        dedupe_key: "e1".into(),
        tenant_id: Some("mario".into()),
        payload: serde_json::json!({ "emailId": "e1" }),
        run_at_ms: T0,
        max_attempts: 100,
    };
    let update = CallSummaryUpdate {
        status: "ready",
        summary_json: Some("{\"summary\":\"x\"}".into()),
        summary_text: Some("Prenotazione per quattro persone".into()),
        sentiment: Some("positive".into()),
        has_booking: true,
        error: None,
        tokens: 77,
    };
    store.save_summary("CA9", &update, Some((&email, &send)), T0).await.unwrap();
    // A retried summary job writes again: still one email, one delivery job.
    let second = NewEmail { id: "e2".into(), ..email.clone() };
    store.save_summary("CA9", &update, Some((&second, &send)), T0).await.unwrap();
    let emails = store.emails_for_call("CA9").await.unwrap();
    assert_eq!(emails.len(), 1);
    assert_eq!(emails[0].status, EmailStatus::Pending);
    assert_eq!(store.jobs().await.unwrap().iter().filter(|j| j.kind == "email.send").count(), 1);
    store.record_email_attempt("e1", EmailStatus::Pending, T0 + 1, Some("421 try later"), None).await.unwrap();
    store.record_email_attempt("e1", EmailStatus::Sent, T0 + 2, None, Some("250 queued")).await.unwrap();
    let e = store.email("e1").await.unwrap().unwrap();
    assert_eq!((e.status, e.attempts, e.sent_at_ms), (EmailStatus::Sent, 2, Some(T0 + 2)));
    assert_eq!((e.last_error.as_deref(), e.detail.as_deref()), (Some("421 try later"), Some("250 queued")));
    let row = store.call(Some("mario"), "CA9").await.unwrap().unwrap();
    assert_eq!((row.summary_status.as_str(), row.has_booking, row.summary_tokens), ("ready", true, 77));
    // The summary is searchable.
    let hits = store.search_calls("mario", "persone", 10).await.unwrap();
    assert_eq!(hits.len(), 1, "summary text is indexed");
}
both!(summary_and_email_are_written_together);

async fn history_search_and_analytics(store: Store) {
    let calls = [
        ("CA-a", T0, EndReason::CallerHangup, "Vorrei prenotare un tavolo per quattro stasera alle venti"),
        ("CA-b", T0 + 3_600_000, EndReason::CallerHangup, "A che ora chiudete la domenica?"),
        ("CA-c", T0 + DAY, EndReason::UpstreamFailed, "Pronto? Non sento niente"),
        ("CA-d", T0 + DAY + 1, EndReason::CallerHangup, "Avete piatti senza glutine? Prenotare si può?"),
        ("CA-e", T0 + 2 * DAY, EndReason::CallerHangup, "Buonasera, volevo disdire la prenotazione"),
    ];
    for (sid, at, end, text) in calls {
        let r =
            record("mario", sid, at, end, &[(Speaker::Agent, "Trattoria Mario, buonasera"), (Speaker::Caller, text)]);
        store.insert_call(&r, "it", &summary_job(sid, at), at).await.unwrap();
    }
    let other = record("gino", "CA-x", T0, EndReason::CallerHangup, &[(Speaker::Caller, "prenotare tavolo")]);
    store.insert_call(&other, "it", &summary_job("CA-x", T0), T0).await.unwrap();
    store
        .save_summary(
            "CA-a",
            &CallSummaryUpdate {
                status: "ready",
                summary_json: None,
                summary_text: Some("Booking for four at 20:00".into()),
                sentiment: Some("positive".into()),
                has_booking: true,
                error: None,
                tokens: 10,
            },
            None,
            T0,
        )
        .await
        .unwrap();

    // Newest first, two per page, cursor to the end.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_calls("mario", &CallFilter::default(), cursor.as_ref(), 2).await.unwrap();
        seen.extend(page.calls.iter().map(|c| c.call_sid.clone()));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["CA-e", "CA-d", "CA-c", "CA-b", "CA-a"]);
    let failed = store
        .list_calls("mario", &CallFilter { status: Some("failed".into()), ..CallFilter::default() }, None, 10)
        .await
        .unwrap();
    assert_eq!(failed.calls.iter().map(|c| c.call_sid.as_str()).collect::<Vec<_>>(), ["CA-c"]);
    let day1 = CallFilter { from_ms: Some(T0 + DAY), to_ms: Some(T0 + 2 * DAY), status: None };
    let page = store.list_calls("mario", &day1, None, 10).await.unwrap();
    assert_eq!(page.calls.iter().map(|c| c.call_sid.as_str()).collect::<Vec<_>>(), ["CA-d", "CA-c"]);

    // Search: ranked, tenant-scoped, with marked snippets; operators in input are inert.
    let hits = store.search_calls("mario", "tavolo quattro", 10).await.unwrap();
    assert_eq!(hits.first().map(|h| h.call.call_sid.as_str()), Some("CA-a"), "{hits:?}");
    assert!(hits.iter().all(|h| h.call.tenant_id == "mario"));
    assert!(hits[0].snippet.contains('\u{2}') && hits[0].snippet.contains('\u{3}'), "{:?}", hits[0].snippet);
    let glutine = store.search_calls("mario", "glutine", 10).await.unwrap();
    assert_eq!(glutine.iter().map(|h| h.call.call_sid.as_str()).collect::<Vec<_>>(), ["CA-d"]);
    assert!(store.search_calls("mario", "\"NEAR( * OR", 10).await.is_ok());
    assert!(store.search_calls("mario", "zzzzqqq", 10).await.unwrap().is_empty());

    // Analytics per day.
    let a = store.analytics("mario", T0 - DAY, T0 + 3 * DAY).await.unwrap();
    assert_eq!(a.days.iter().map(|d| d.calls).collect::<Vec<_>>(), [2, 2, 1], "{a:?}");
    let d0 = &a.days[0];
    assert_eq!(d0.duration_ms, 120_000);
    assert_eq!(d0.silence_ms, 2 * (60_000 - 45_000));
    assert_eq!((d0.bookings, d0.positive, d0.unknown_sentiment), (1, 1, 1));
    assert_eq!(a.days[1].failed, 1);
    assert_eq!(d0.input_tokens, 400);
    assert_eq!(d0.summary_tokens, 10);
    assert_eq!(a.days[1].day - d0.day, 1);
}
both!(history_search_and_analytics);

/// The database refuses a record at hang-up: it waits in the spool folder and is stored by the
/// replay once the database answers again, exactly once.
async fn records_wait_in_the_spool_while_the_database_is_down(store: Store) {
    use switchboard::bridge::sink::{CallSink, StoreSink, replay_spool};
    let spool = std::env::temp_dir().join(format!("sb-spool-{}", uuid::Uuid::new_v4().simple()));
    let tenants =
        switchboard::bridge::TenantsHandle::new(switchboard::core::domain::tenant::TenantDirectory::new(Vec::new()));
    let metrics = Arc::new(switchboard::metrics::Metrics::default());
    // A closed pool stands in for a database that is down.
    let down = Store::open(store.url(), 1).await.unwrap();
    down.close().await;
    let sink = StoreSink {
        store: down,
        tenants: tenants.clone(),
        waker: Arc::new(tokio::sync::Notify::new()),
        summary_attempts: 3,
        observer: None,
        metrics: Arc::clone(&metrics),
        spool_dir: spool.clone(),
    };
    let r = record("mario", "CAspool", T0, EndReason::CallerHangup, &[(Speaker::Caller, "pronto")]);
    sink.submit(r.clone()).await;
    assert_eq!(metrics.call_records_spooled.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(spool.join("CAspool.json").is_file(), "spooled");
    assert!(store.call(None, "CAspool").await.unwrap().is_none());
    // The database is back: the replay stores it with its summary job, once.
    assert_eq!(replay_spool(&store, &tenants, &spool, 3).await, 1);
    assert!(!spool.join("CAspool.json").exists(), "removed once stored");
    let row = store.call(Some("mario"), "CAspool").await.unwrap().expect("stored");
    assert_eq!(serde_json::from_str::<CallRecord>(&row.record_json).unwrap(), r);
    assert!(store.job("call.summarize", "CAspool").await.unwrap().is_some());
    assert_eq!(replay_spool(&store, &tenants, &spool, 3).await, 0);
    let _ = std::fs::remove_dir_all(spool);
}
both!(records_wait_in_the_spool_while_the_database_is_down);
