//! The job runner against real databases (SQLite file, private PostgreSQL schema): panics,
//! retries into `dead`, leases of dead daemons, two daemons on one queue, wake-up by NOTIFY,
//! and jobs given back at shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard::bridge::sink::BoxFuture;
use switchboard::metrics::Metrics;
use switchboard::store::{ClaimedJob, NewJob, Store};
use switchboard::testkit::pg::PgSchema;
use switchboard::worker::{Backoff, JobError, JobHandler, Registry, WorkerConfig, Workers, now_ms};
use tokio::sync::Notify;

const KIND: &str = "test.job";
const FAST: Backoff = Backoff { base: Duration::from_millis(20), cap: Duration::from_millis(50) };

/// What a test handler does on each attempt of a job.
#[derive(Clone, Copy)]
enum Behaviour {
    PanicOnce,
    AlwaysFail,
    Fatal,
    Ok,
    Sleep(Duration),
}

#[derive(Clone)]
struct Handler {
    behaviour: Behaviour,
    runs: Arc<Mutex<HashMap<String, u32>>>,
    /// Which daemon ran each job.
    by: Arc<Mutex<Vec<(String, &'static str)>>>,
    name: &'static str,
}

impl Handler {
    fn new(behaviour: Behaviour, name: &'static str) -> Handler {
        Handler { behaviour, runs: Default::default(), by: Default::default(), name }
    }
}

impl JobHandler for Handler {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), JobError>> {
        let me = self.clone();
        Box::pin(async move {
            let n = {
                let mut runs = me.runs.lock().unwrap();
                let n = runs.entry(job.dedupe_key.clone()).or_default();
                *n += 1;
                *n
            };
            me.by.lock().unwrap().push((job.dedupe_key.clone(), me.name));
            match me.behaviour {
                Behaviour::PanicOnce if n == 1 => panic!("handler exploded on attempt {n}"),
                Behaviour::AlwaysFail => Err(JobError::retry(format!("boom {n}"))),
                Behaviour::Fatal => Err(JobError::Fatal("cannot ever work".into())),
                Behaviour::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    }
}

fn workers(store: &Store, h: &Handler, poll: Duration, lease: Duration) -> (Workers, Arc<Notify>, Arc<Metrics>) {
    let mut r = Registry::default();
    r.register(KIND, FAST, Arc::new(h.clone()));
    let notify = Arc::new(Notify::new());
    let metrics = Arc::new(Metrics::default());
    let cfg = WorkerConfig { workers: 2, poll, lease, worker_id: format!("test-{}", h.name) };
    (Workers::start(store.clone(), r, cfg, Arc::clone(&notify), Arc::clone(&metrics)), notify, metrics)
}

fn job(key: &str, max_attempts: u32) -> NewJob {
    NewJob {
        kind: KIND,
        dedupe_key: key.into(),
        tenant_id: None,
        payload: serde_json::json!({}),
        run_at_ms: now_ms(),
        max_attempts,
    }
}

async fn wait_status(store: &Store, key: &str, status: &str) -> switchboard::store::JobRow {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let row = store.job(KIND, key).await.unwrap().expect("job exists");
        if row.status == status {
            return row;
        }
        assert!(Instant::now() < deadline, "job {key} stuck in {row:?}, wanted {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Db {
    url: String,
    pg: Option<PgSchema>,
}

async fn on<F, Fut>(postgres: bool, f: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = if postgres {
        let pg = PgSchema::create().await.expect("postgres");
        Db { url: pg.url.clone(), pg: Some(pg) }
    } else {
        let dir = std::env::temp_dir().join(format!("sb-worker-{}", uuid::Uuid::new_v4().simple()));
        Db { url: format!("sqlite://{}/db.sqlite", dir.display()), pg: None }
    };
    let pg = db.pg.clone();
    f(db).await;
    if let Some(pg) = pg {
        pg.drop_schema().await.expect("drop schema");
    }
}

async fn panics_are_caught_and_retried(db: Db) {
    let store = Store::open(&db.url, 4).await.unwrap();
    let h = Handler::new(Behaviour::PanicOnce, "a");
    let (w, notify, metrics) = workers(&store, &h, Duration::from_millis(50), Duration::from_secs(30));
    store.enqueue(&job("p", 3), now_ms()).await.unwrap();
    notify.notify_waiters();
    let row = wait_status(&store, "p", "done").await;
    assert_eq!(row.attempts, 2);
    assert!(row.last_error.as_deref().unwrap_or("").contains("handler exploded"), "{row:?}");
    assert_eq!(metrics.job_panics.load(SeqCst), 1);
    w.shutdown(Duration::from_secs(1)).await;
}

async fn failures_retry_then_go_dead_with_the_last_error(db: Db) {
    let store = Store::open(&db.url, 4).await.unwrap();
    let h = Handler::new(Behaviour::AlwaysFail, "a");
    let (w, notify, metrics) = workers(&store, &h, Duration::from_millis(50), Duration::from_secs(30));
    store.enqueue(&job("f", 3), now_ms()).await.unwrap();
    notify.notify_waiters();
    let row = wait_status(&store, "f", "dead").await;
    assert_eq!((row.attempts, row.last_error.as_deref()), (3, Some("boom 3")));
    assert_eq!(metrics.jobs_retried.load(SeqCst), 2);
    assert_eq!(metrics.jobs_dead.load(SeqCst), 1);
    let fatal = Handler::new(Behaviour::Fatal, "b");
    w.shutdown(Duration::from_secs(1)).await;
    let (w, notify, _) = workers(&store, &fatal, Duration::from_millis(50), Duration::from_secs(30));
    store.enqueue(&job("x", 5), now_ms()).await.unwrap();
    notify.notify_waiters();
    let row = wait_status(&store, "x", "dead").await;
    assert_eq!(row.attempts, 1, "a fatal error is not retried");
    w.shutdown(Duration::from_secs(1)).await;
}

async fn a_dead_daemons_job_is_taken_after_its_lease(db: Db) {
    let store = Store::open(&db.url, 4).await.unwrap();
    store.enqueue(&job("orphan", 3), now_ms()).await.unwrap();
    // A daemon claims it and dies: it never completes, never extends its lease.
    let claimed = store.claim_job("dead-daemon", now_ms(), 300).await.unwrap().expect("claimed");
    assert_eq!(claimed.dedupe_key, "orphan");
    let h = Handler::new(Behaviour::Ok, "survivor");
    let (w, _, _) = workers(&store, &h, Duration::from_millis(50), Duration::from_secs(30));
    let row = wait_status(&store, "orphan", "done").await;
    assert_eq!(row.attempts, 2, "the dead daemon's attempt counts");
    assert_eq!(h.runs.lock().unwrap().get("orphan"), Some(&1));
    assert!(!store.complete_job(&claimed, now_ms()).await.unwrap(), "the old lease is void");
    w.shutdown(Duration::from_secs(1)).await;
}

async fn two_daemons_share_one_queue(db: Db) {
    let s1 = Store::open(&db.url, 4).await.unwrap();
    let s2 = Store::open(&db.url, 4).await.unwrap();
    let a = Handler::new(Behaviour::Sleep(Duration::from_millis(5)), "a");
    let mut b = Handler::new(Behaviour::Sleep(Duration::from_millis(5)), "b");
    b.runs = Arc::clone(&a.runs);
    b.by = Arc::clone(&a.by);
    let (w1, n1, _) = workers(&s1, &a, Duration::from_millis(30), Duration::from_secs(30));
    let (w2, n2, _) = workers(&s2, &b, Duration::from_millis(30), Duration::from_secs(30));
    for i in 0..40 {
        s1.enqueue(&job(&format!("j{i}"), 1), now_ms()).await.unwrap();
    }
    n1.notify_waiters();
    n2.notify_waiters();
    for i in 0..40 {
        wait_status(&s1, &format!("j{i}"), "done").await;
    }
    let runs = a.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 40);
    assert!(runs.values().all(|n| *n == 1), "each job ran exactly once: {runs:?}");
    let by = a.by.lock().unwrap().clone();
    assert!(by.iter().any(|(_, d)| *d == "a") && by.iter().any(|(_, d)| *d == "b"), "both daemons worked");
    w1.shutdown(Duration::from_secs(1)).await;
    w2.shutdown(Duration::from_secs(1)).await;
}

async fn running_jobs_are_given_back_at_shutdown(db: Db) {
    let store = Store::open(&db.url, 4).await.unwrap();
    let h = Handler::new(Behaviour::Sleep(Duration::from_secs(30)), "slow");
    let (w, notify, _) = workers(&store, &h, Duration::from_millis(50), Duration::from_secs(30));
    store.enqueue(&job("long", 3), now_ms()).await.unwrap();
    notify.notify_waiters();
    wait_status(&store, "long", "running").await;
    w.shutdown(Duration::from_millis(200)).await;
    let row = store.job(KIND, "long").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("queued", 0), "given back, attempt not spent");
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::on(false, super::$name).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::on(true, super::$name).await
            }
        }
    };
}

both!(panics_are_caught_and_retried);
both!(failures_retry_then_go_dead_with_the_last_error);
both!(a_dead_daemons_job_is_taken_after_its_lease);
both!(two_daemons_share_one_queue);
both!(running_jobs_are_given_back_at_shutdown);

/// A job enqueued by another daemon wakes this one through PostgreSQL NOTIFY, long before
/// its 60 s poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_workers_across_daemons_postgres() {
    on(true, |db| async move {
        let here = Store::open(&db.url, 4).await.unwrap();
        let other = Store::open(&db.url, 2).await.unwrap();
        let h = Handler::new(Behaviour::Ok, "listener");
        let (w, _, _) = workers(&here, &h, Duration::from_secs(60), Duration::from_secs(30));
        // Let the workers go idle and the listener subscribe.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        other.enqueue(&job("remote", 1), now_ms()).await.unwrap();
        wait_status(&here, "remote", "done").await;
        assert!(t.elapsed() < Duration::from_secs(30), "woken by NOTIFY, not by the 60 s poll");
        w.shutdown(Duration::from_secs(1)).await;
    })
    .await
}
