//! The job runner: `n` workers claim jobs from the store, run their handler, and record the
//! outcome. Any daemon's worker can take any job (the queue is in the database).
//!
//! - Claims are atomic with a lease; while a handler runs, its lease is extended, so a job
//!   outlives no daemon: when one dies, the lease lapses and another takes the job.
//! - A handler runs in its own task: a panic is caught and counted as a failed attempt.
//! - Failures retry with exponential backoff and full jitter (or the delay a provider asked
//!   for, when longer); after `max_attempts` the job is `dead`, with its last error.
//! - Workers wake on a local notify (jobs enqueued by this daemon), on PostgreSQL `NOTIFY`
//!   (jobs enqueued by another daemon), and otherwise poll.
//!
//! This module decides nothing about what a job does: handlers (in the submodules) do.

pub mod email;
pub mod meetings;
pub mod summarize;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::bridge::sink::BoxFuture;
use crate::metrics::Metrics;
use crate::store::{Backend, ClaimedJob, Store};

/// Why a job attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt; `after` is the provider's own hint (Retry-After), if any.
    #[error("{message}")]
    Retry { message: String, after: Option<Duration> },
    /// Never worth retrying: the job goes `dead` at once.
    #[error("{0}")]
    Fatal(String),
}

impl JobError {
    pub fn retry(message: impl Into<String>) -> Self {
        JobError::Retry { message: message.into(), after: None }
    }
}

/// Runs one kind of job.
pub trait JobHandler: Send + Sync + 'static {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), JobError>>;

    /// The job has gone `dead` (its attempts are spent, it panicked on the last one, or it was
    /// abandoned by dying daemons too often): leave what it concerns in a final, visible state
    /// (a meeting `failed`, a call emailed without its summary). Best effort.
    fn on_dead(&self, _job: ClaimedJob, _error: String) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// How a kind of job backs off between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// Delay before attempt `attempts + 1`: `base·2^(attempts−1)` capped, with full jitter
    /// over its upper half (so a burst of failures does not retry in lockstep), and never
    /// shorter than the provider's `hint`.
    pub fn delay(&self, attempts: u32, hint: Option<Duration>, rng: &mut impl rand::Rng) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let ms = u64::try_from(full.as_millis()).unwrap_or(u64::MAX);
        let jittered = Duration::from_millis(rng.random_range(ms / 2..=ms.max(1)));
        match hint {
            Some(h) => jittered.max(h),
            None => jittered,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Concurrent jobs in this daemon.
    pub workers: usize,
    /// Poll interval when nothing wakes a worker.
    pub poll: Duration,
    /// Lease on a claimed job; extended every third of it while the job runs.
    pub lease: Duration,
    /// This daemon's name in `locked_by`.
    pub worker_id: String,
}

struct Kind {
    handler: Arc<dyn JobHandler>,
    backoff: Backoff,
}

/// The handlers, by job kind.
#[derive(Default)]
pub struct Registry {
    kinds: HashMap<&'static str, Kind>,
}

impl Registry {
    pub fn register(&mut self, kind: &'static str, backoff: Backoff, handler: Arc<dyn JobHandler>) {
        self.kinds.insert(kind, Kind { handler, backoff });
    }
}

/// A running set of workers.
pub struct Workers {
    store: Store,
    notify: Arc<Notify>,
    stop_claiming: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
}

impl Workers {
    /// A handle other parts use to wake the workers after enqueuing.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }

    /// Starts `config.workers` workers (and a PostgreSQL listener).
    pub fn start(
        store: Store,
        registry: Registry,
        config: WorkerConfig,
        notify: Arc<Notify>,
        stats: Arc<Metrics>,
    ) -> Workers {
        let claimable: Arc<[&'static str]> = registry.kinds.keys().copied().collect();
        let registry = Arc::new(registry);
        let stop_claiming = CancellationToken::new();
        let abort = CancellationToken::new();
        let tracker = TaskTracker::new();
        let config = Arc::new(config);
        for n in 0..config.workers.max(1) {
            let w = Worker {
                store: store.clone(),
                registry: Arc::clone(&registry),
                claimable: Arc::clone(&claimable),
                config: Arc::clone(&config),
                notify: Arc::clone(&notify),
                stop_claiming: stop_claiming.clone(),
                abort: abort.clone(),
                stats: Arc::clone(&stats),
                tracker: tracker.clone(),
            };
            tracker.spawn(w.run().instrument(info_span!("worker", n)));
        }
        if store.backend() == Backend::Postgres {
            tracker.spawn(listen(store.url().to_owned(), Arc::clone(&notify), stop_claiming.clone()));
        }
        info!(workers = config.workers, worker_id = %config.worker_id, "job workers started");
        Workers { store, notify, stop_claiming, abort, tracker }
    }

    /// Stops claiming; lets running jobs finish within `grace`, then aborts them and gives
    /// their jobs back to the queue (another daemon, or this one after restart, takes them).
    pub async fn shutdown(&self, grace: Duration) {
        self.stop_claiming.cancel();
        self.notify.notify_waiters();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            warn!("jobs still running at the end of the grace period: giving them back");
            self.abort.cancel();
            self.tracker.wait().await;
        }
        let _ = &self.store;
    }
}

struct Worker {
    store: Store,
    registry: Arc<Registry>,
    /// The registry's kinds: the only jobs this daemon claims.
    claimable: Arc<[&'static str]>,
    config: Arc<WorkerConfig>,
    notify: Arc<Notify>,
    stop_claiming: CancellationToken,
    abort: CancellationToken,
    stats: Arc<Metrics>,
    tracker: TaskTracker,
}

/// Unix milliseconds now (the worker is part of the shell: it reads the clock).
pub fn now_ms() -> u64 {
    crate::bridge::unix_ms()
}

impl Worker {
    async fn run(self) {
        loop {
            if self.stop_claiming.is_cancelled() {
                return;
            }
            // Register interest before claiming, so a notify between an empty claim and the
            // wait is not lost.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let lease_ms = u64::try_from(self.config.lease.as_millis()).unwrap_or(u64::MAX);
            match self.store.claim_job_of(&self.config.worker_id, now_ms(), lease_ms, &self.claimable).await {
                Ok(Some(job)) => {
                    self.run_one(job).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "claiming a job failed"),
            }
            let wait = match self.store.next_job_due_ms().await {
                Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_ms())).min(self.config.poll),
                _ => self.config.poll,
            };
            tokio::select! {
                _ = self.stop_claiming.cancelled() => return,
                _ = notified => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
            }
        }
    }

    async fn run_one(&self, job: ClaimedJob) {
        let span = info_span!("job", id = %job.id, kind = %job.kind, attempt = job.attempts);
        async {
            let Some(kind) = self.registry.kinds.get(job.kind.as_str()) else {
                self.record(&job, Err(JobError::Fatal(format!("no handler for job kind {:?}", job.kind))), None).await;
                return;
            };
            if job.attempts > job.max_attempts {
                // Its leases lapsed on every attempt (daemons died mid-job).
                let msg = format!("abandoned {} times: giving up", job.attempts - 1);
                self.record(&job, Err(JobError::Fatal(msg)), Some(kind)).await;
                return;
            }
            debug!("job started");
            let handle = self.tracker.spawn(kind.handler.run(job.clone()).in_current_span());
            let abort = handle.abort_handle();
            let lease = self.config.lease;
            let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
            let mut beat = tokio::time::interval(lease / 3);
            beat.tick().await;
            tokio::pin!(handle);
            let outcome = loop {
                tokio::select! {
                    r = &mut handle => break r,
                    _ = beat.tick() => {
                        match self.store.extend_lease(&job, now_ms(), lease_ms).await {
                            Ok(true) => {}
                            Ok(false) => {
                                // Another worker took the job (our lease lapsed): stop, so the
                                // two never both write its results.
                                warn!("lease lost to another worker: abandoning this run");
                                abort.abort();
                                let _ = (&mut handle).await;
                                return;
                            }
                            Err(e) => warn!(error = %e, "extending the lease failed"),
                        }
                    }
                    _ = self.abort.cancelled() => {
                        abort.abort();
                        let _ = (&mut handle).await;
                        match self.store.release_job(&job, now_ms()).await {
                            Ok(_) => info!("job given back at shutdown"),
                            Err(e) => warn!(error = %e, "giving the job back failed; its lease will lapse"),
                        }
                        return;
                    }
                }
            };
            let result = match outcome {
                Ok(r) => r,
                Err(e) if e.is_panic() => {
                    self.stats.job_panics.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let msg = panic_message(e.into_panic());
                    error!(panic = %msg, "job handler panicked");
                    Err(JobError::retry(format!("handler panicked: {msg}")))
                }
                Err(e) => Err(JobError::retry(format!("handler task failed: {e}"))),
            };
            self.record(&job, result, Some(kind)).await;
        }
        .instrument(span)
        .await
    }

    async fn record(&self, job: &ClaimedJob, result: Result<(), JobError>, kind: Option<&Kind>) {
        use std::sync::atomic::Ordering::Relaxed;
        let backoff = kind.map(|k| k.backoff);
        let now = now_ms();
        let outcome = match &result {
            Ok(()) => {
                self.stats.jobs_completed.fetch_add(1, Relaxed);
                debug!("job done");
                self.store.complete_job(job, now).await
            }
            Err(JobError::Retry { message, after }) if !job.is_last_attempt() && backoff.is_some() => {
                let backoff = backoff.unwrap_or(Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(1) });
                let delay = backoff.delay(job.attempts, *after, &mut rand::rng());
                self.stats.jobs_retried.fetch_add(1, Relaxed);
                warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
                self.store.fail_job(job, now, message, Some(now.saturating_add(delay.as_millis() as u64))).await
            }
            Err(e) => {
                self.stats.jobs_dead.fetch_add(1, Relaxed);
                error!(error = %e, attempts = job.attempts, "job failed for good: dead");
                let r = self.store.fail_job(job, now, &e.to_string(), None).await;
                if matches!(r, Ok(true))
                    && let Some(k) = kind
                {
                    k.handler.on_dead(job.clone(), e.to_string()).await;
                }
                r
            }
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => warn!("the job's lease was lost before its outcome was recorded"),
            Err(e) => error!(error = %e, "recording the job's outcome failed; its lease will lapse and it runs again"),
        }
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Wakes local workers on PostgreSQL `NOTIFY switchboard_jobs` (jobs enqueued by any daemon).
/// A broken listener is retried; meanwhile polling covers.
async fn listen(url: String, notify: Arc<Notify>, stop: CancellationToken) {
    loop {
        let attempt = async {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen("switchboard_jobs").await?;
            loop {
                l.recv().await?;
                notify.notify_waiters();
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = attempt => if let Err(e) = r {
                warn!(error = %e, "job listener failed; polling until it is back");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// The handlers of every job kind this daemon runs, with their clients.
pub fn registry(
    config: &crate::config::Config,
    store: &Store,
    tenants: &crate::bridge::TenantsHandle,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Registry> {
    use anyhow::Context as _;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let chat = crate::openai::chat::ChatClient::new(
        http.clone(),
        config.openai_base_url.clone(),
        config.openai_api_key.clone(),
    )
    .with_timeout(config.jobs.summary_timeout);
    let mailer = match &config.smtp {
        Some(s) => crate::mail::Mailer::smtp(s.clone()).context("configuring SMTP")?,
        None => crate::mail::Mailer::files(config.outbox_dir.clone()),
    };
    info!(mailer = %mailer, "summary emails go to {mailer}");
    let jobs = &config.jobs;
    let mut r = Registry::default();
    r.register(
        summarize::KIND,
        Backoff { base: jobs.summary_retry_base, cap: jobs.summary_retry_cap },
        Arc::new(summarize::Summarize {
            store: store.clone(),
            tenants: tenants.clone(),
            chat: chat.clone(),
            model: config.summary_model.clone(),
            sender: config.smtp_sender.clone(),
            email_attempts: jobs.email_attempts,
            metrics: Arc::clone(metrics),
        }),
    );
    let m = &config.meetings;
    let meeting_jobs = Arc::new(meetings::MeetingJobs {
        store: store.clone(),
        tenants: tenants.clone(),
        transcribe: crate::openai::transcribe::TranscribeClient::new(
            http,
            config.openai_base_url.clone(),
            config.openai_api_key.clone(),
            config.transcribe_model.clone(),
        )
        .with_timeout(m.transcribe_timeout),
        chat: chat.clone(),
        model: config.summary_model.clone(),
        tmp_dir: m.tmp_dir.clone(),
        max_upload_bytes: m.transcribe_max_bytes,
        max_secs: m.transcribe_max_secs,
        decode_permits: Arc::new(tokio::sync::Semaphore::new(1)),
    });
    let meeting_backoff = Backoff { base: jobs.summary_retry_base, cap: jobs.summary_retry_cap };
    r.register(meetings::PROCESS, meeting_backoff, meeting_jobs.clone());
    r.register(meetings::SUMMARIZE, meeting_backoff, meeting_jobs);
    r.register(
        email::KIND,
        Backoff { base: jobs.email_retry_base, cap: jobs.email_retry_cap },
        Arc::new(email::SendEmail {
            store: store.clone(),
            mailer: Arc::new(mailer),
            give_up_after: jobs.email_give_up_after,
            metrics: Arc::clone(metrics),
        }),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn backoff_doubles_is_capped_jittered_and_honours_hints() {
        let b = Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(300) };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 1..=12 {
            let full = Duration::from_secs(10 * (1u64 << (attempt - 1))).min(Duration::from_secs(300));
            let mut seen = std::collections::HashSet::new();
            for _ in 0..50 {
                let d = b.delay(attempt, None, &mut rng);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} not in [{:?}, {full:?}]", full / 2);
                seen.insert(d);
            }
            assert!(seen.len() > 10, "jittered");
        }
        let d = b.delay(1, Some(Duration::from_secs(60)), &mut rng);
        assert!(d >= Duration::from_secs(60), "Retry-After is a floor: {d:?}");
    }
}
