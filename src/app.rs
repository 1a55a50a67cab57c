//! Composition root: tenants, metrics, pre-warm, call runtime, HTTP, signals, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::bridge::prewarm::Prewarmer;
use crate::bridge::sink::{CallSink, StoreSink};
use crate::bridge::{CallRuntime, TenantsHandle};
use crate::config::Config;
use crate::http::{AppState, MeetingsState};
use crate::metrics::Metrics;
use crate::shutdown::{self, SignalEvent};
use crate::store::Store;
use crate::tenants;
use crate::worker::{WorkerConfig, Workers};

/// A running daemon.
pub struct Daemon {
    pub addr: SocketAddr,
    runtime: Arc<CallRuntime>,
    drain: CancellationToken,
    done: JoinHandle<anyhow::Result<()>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Daemon {
    pub fn runtime(&self) -> &Arc<CallRuntime> {
        &self.runtime
    }

    /// Starts the graceful shutdown (as SIGTERM does).
    pub fn shutdown(&self) {
        self.drain.cancel();
    }

    /// Re-reads the tenants file (as SIGHUP does). A bad file is rejected, the old one kept.
    pub fn reload_tenants(&self) -> anyhow::Result<()> {
        reload(&self.runtime)
    }

    /// Waits until the daemon has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await.context("daemon task panicked")?
    }
}

fn reload(rt: &CallRuntime) -> anyhow::Result<()> {
    match tenants::load(&rt.config.tenants_file) {
        Ok(dir) => {
            let n = dir.tenants().len();
            rt.tenants.replace(dir);
            rt.metrics.tenant_reloads.fetch_add(1, Relaxed);
            info!(tenants = n, "tenants reloaded");
            Ok(())
        }
        Err(e) => {
            rt.metrics.tenant_reload_failures.fetch_add(1, Relaxed);
            error!(error = %e, "tenants reload rejected; keeping the previous tenants");
            Err(e.into())
        }
    }
}

/// Starts the daemon on `listener`: opens the database (applying migrations), starts the job
/// workers and serves. Each finished call is stored; `observer`, if any, also gets it.
pub async fn start(
    config: Config,
    listener: TcpListener,
    observer: Option<Arc<dyn CallSink>>,
) -> anyhow::Result<Daemon> {
    let dir = tenants::load(&config.tenants_file)
        .with_context(|| format!("loading tenants from {}", config.tenants_file.display()))?;
    for p in config.call_readiness_problems() {
        warn!("{p}");
    }
    if config.insecure_skip_signature {
        warn!(
            "!!! SWITCHBOARD_INSECURE_SKIP_SIGNATURE=1: Twilio signatures are NOT checked. Anyone can open calls on your bill. Never use this in production. !!!"
        );
    }
    for id in tenants::demo_key_tenants(&dir) {
        warn!(tenant = %id, "!!! tenant {id} still accepts the public demo API key: replace api_keys_sha256 before exposing the API !!!");
    }
    let store = Store::open(config.database_url.expose(), config.database_max_connections)
        .await
        .context("opening the database (DATABASE_URL)")?;
    info!(backend = ?store.backend(), "database ready");
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let tenants = TenantsHandle::new(dir);
    let waker = Arc::new(Notify::new());
    let sink: Arc<dyn CallSink> = Arc::new(StoreSink {
        store: store.clone(),
        tenants: tenants.clone(),
        waker: Arc::clone(&waker),
        summary_attempts: config.jobs.summary_attempts,
        observer,
        metrics: Arc::clone(&metrics),
        spool_dir: config.spool_dir.clone(),
    });
    // Records spooled while the database was down (by this daemon before a restart).
    let replayed =
        crate::bridge::sink::replay_spool(&store, &tenants, &config.spool_dir, config.jobs.summary_attempts).await;
    if replayed > 0 {
        info!(records = replayed, "spooled call records stored");
    }
    let workers = Workers::start(
        store.clone(),
        crate::worker::registry(&config, &store, &tenants, &metrics)?,
        WorkerConfig {
            workers: config.jobs.workers,
            poll: config.jobs.poll,
            lease: config.jobs.lease,
            worker_id: format!("sb-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]),
        },
        waker,
        Arc::clone(&metrics),
    );
    let tracker = TaskTracker::new();
    let calls_cancel = CancellationToken::new();
    let prewarm = Prewarmer::new(config.prewarm_ttl, tracker.clone(), calls_cancel.child_token(), Arc::clone(&metrics));
    // Twilio's REST API and webhook tools: no redirects (a webhook endpoint must not be able to
    // bounce the signed request, with the caller's number, to another host).
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let twilio = match (&config.twilio_account_sid, &config.twilio_auth_token) {
        (Some(sid), Some(token)) => Some(crate::twilio_rest::TwilioRest::new(
            http.clone(),
            config.twilio_api_base.clone(),
            sid.clone(),
            token.clone(),
        )),
        _ => {
            warn!("TWILIO_ACCOUNT_SID is not set: transfers are off and calls end by closing the stream");
            None
        }
    };
    let runtime = Arc::new(CallRuntime {
        config: Arc::clone(&config),
        twilio,
        http,
        tenants,
        prewarm,
        metrics,
        live: DashMap::new(),
        sink,
        calls_cancel,
        tracker,
        draining: Default::default(),
        streams: Default::default(),
        streamed: DashMap::new(),
    });
    let addr = listener.local_addr()?;
    let room_secret = match &config.meetings.room_secret {
        Some(s) => s.expose().as_bytes().to_vec(),
        None => store
            .setting_or_insert("jitsi_room_secret", &uuid::Uuid::new_v4().simple().to_string())
            .await
            .context("reading the shared room secret")?
            .into_bytes(),
    };
    let router = crate::http::router(AppState {
        calls: Arc::clone(&runtime),
        store: store.clone(),
        waker: workers.waker(),
        meetings: Arc::new(MeetingsState { room_secret }),
    });
    let drain = CancellationToken::new();
    let server_stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = server_stop.clone();
        // Small frames (marks, `clear`) must not wait for Nagle's delayed ACK.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        async move { axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await }
    });
    // Housekeeping: spooled records once the database is back (every minute), and uploads no
    // meeting references (hourly, older than a day).
    let maintenance = CancellationToken::new();
    let housekeeping = tokio::spawn({
        let (store, tenants, stop) = (store.clone(), runtime.tenants.clone(), maintenance.clone());
        let (spool, attempts) = (config.spool_dir.clone(), config.jobs.summary_attempts);
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                crate::bridge::sink::replay_spool(&store, &tenants, &spool, attempts).await;
                if n.is_multiple_of(60) {
                    let day_ago = crate::bridge::unix_ms().saturating_sub(86_400_000);
                    match store.sweep_orphan_blobs(day_ago).await {
                        Ok(0) => {}
                        Ok(k) => info!(blobs = k, "orphaned uploads deleted"),
                        Err(e) => warn!(error = %e, "sweeping orphaned uploads failed"),
                    }
                }
                n += 1;
            }
        }
    });
    let done = tokio::spawn({
        let rt = Arc::clone(&runtime);
        let drain = drain.clone();
        async move {
            drain.cancelled().await;
            drain_and_stop(&rt).await;
            maintenance.cancel();
            let _ = housekeeping.await;
            // Calls have handed their records over; let running jobs finish (or give them back).
            workers.shutdown(rt.config.shutdown_grace.max(Duration::from_secs(5))).await;
            server_stop.cancel();
            server.await.context("http server task")?.context("http server")?;
            store.close().await;
            info!("stopped");
            Ok(())
        }
    });
    info!(%addr, "listening");
    Ok(Daemon { addr, runtime, drain, done })
}

/// Refuse new calls, let live ones finish within the grace period, then end the rest.
async fn drain_and_stop(rt: &CallRuntime) {
    rt.draining.store(true, Relaxed);
    let grace = rt.config.shutdown_grace;
    info!(
        live_calls = rt.live.len(),
        streams = rt.streams.load(Relaxed),
        grace_secs = grace.as_secs(),
        "draining: refusing new calls"
    );
    let finished = tokio::time::timeout(grace, async {
        while rt.streams.load(Relaxed) > 0 || !rt.live.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok();
    if !finished {
        warn!(live_calls = rt.live.len(), "grace period over; ending the remaining calls");
    }
    rt.calls_cancel.cancel();
    rt.tracker.close();
    // Cancelled calls still hand their records to the store: wait for the stream tasks (on the
    // tracker; `streams` also counts upgrades whose task has not started yet) before the
    // workers and the pool stop.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        rt.tracker.wait().await;
        while rt.streams.load(Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if ended.is_err() {
        warn!("some call tasks did not finish within 10 s of cancellation");
    }
}

/// `switchboard serve`: bind, run until SIGTERM/SIGINT, reload tenants on SIGHUP.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.bind).await.with_context(|| format!("binding {}", config.bind))?;
    let daemon = start(config, listener, None).await?;
    let mut signals = shutdown::listen().context("installing signal handlers")?;
    let drain = daemon.drain.clone();
    let rt = Arc::clone(&daemon.runtime);
    tokio::spawn(async move {
        while let Some(ev) = signals.recv().await {
            match ev {
                SignalEvent::Terminate => {
                    info!("termination signal received");
                    drain.cancel();
                }
                SignalEvent::Reload => {
                    let _ = reload(&rt);
                }
            }
        }
    });
    daemon.wait().await
}
