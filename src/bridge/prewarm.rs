//! Pre-warm: when the webhook answers, the Realtime session for that CallSid is opened and
//! configured right away, so the upstream connect is off the first turn. The stream claims it
//! by CallSid; an unclaimed session is closed after a TTL.
//!
//! Each pre-warm is one tracked task that owns the socket until it is claimed or expires. The
//! map holds only the claim channel, so removal from the map decides who gets the socket.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::SinkExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::core::realtime::session_config::SessionSpec;
use crate::metrics::Metrics;
use crate::openai::realtime::{self, RealtimeConn, RealtimeError, RealtimeSettings};

type Reply = oneshot::Sender<Result<RealtimeConn, RealtimeError>>;

/// A pending pre-warm: how to claim it, what it was configured with, and which task owns it.
#[derive(Debug)]
struct Slot {
    claim: oneshot::Sender<Reply>,
    spec: SessionSpec,
    id: u64,
}

/// Upper bound on sessions held open at once, against webhook floods.
const MAX_PREWARMED: usize = 10_000;

#[derive(Debug)]
pub struct Prewarmer {
    slots: DashMap<String, Slot>,
    next_id: std::sync::atomic::AtomicU64,
    ttl: Duration,
    tracker: TaskTracker,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Prewarmer {
    pub fn new(ttl: Duration, tracker: TaskTracker, cancel: CancellationToken, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { slots: DashMap::new(), next_id: Default::default(), ttl, tracker, cancel, metrics })
    }

    pub fn pending(&self) -> usize {
        self.slots.len()
    }

    /// Starts opening a session for `call_sid` (no-op if one is already pending).
    pub fn start(self: &Arc<Self>, call_sid: &str, settings: RealtimeSettings, spec: SessionSpec) {
        if self.slots.len() >= MAX_PREWARMED || self.slots.contains_key(call_sid) {
            return;
        }
        let (claim_tx, claim_rx) = oneshot::channel::<Reply>();
        let id = self.next_id.fetch_add(1, Relaxed);
        self.slots.insert(call_sid.to_owned(), Slot { claim: claim_tx, spec: spec.clone(), id });
        self.metrics.prewarm_started.fetch_add(1, Relaxed);
        let this = Arc::clone(self);
        let sid = call_sid.to_owned();
        let span = info_span!("prewarm", call_sid = %sid);
        self.tracker.spawn(async move { this.hold(sid, id, settings, spec, claim_rx).await }.instrument(span));
    }

    async fn hold(
        self: Arc<Self>,
        sid: String,
        id: u64,
        settings: RealtimeSettings,
        spec: SessionSpec,
        mut claim_rx: oneshot::Receiver<Reply>,
    ) {
        let t0 = Instant::now();
        let deadline = tokio::time::Instant::now() + self.ttl;
        // Open while watching for an early claim: the claimer then simply waits for the result.
        let opened = tokio::select! {
            r = realtime::open(&settings, &spec) => r,
            _ = self.cancel.cancelled() => Err(RealtimeError::Closed),
        };
        match &opened {
            Ok(_) => self.metrics.realtime_connect.observe(t0.elapsed().as_millis() as u64),
            Err(e) => warn!(error = %e, "pre-warm failed; the stream will retry on its own"),
        }
        let reply = tokio::select! {
            r = &mut claim_rx => r.ok(),
            _ = tokio::time::sleep_until(deadline) => {
                if self.slots.remove_if(&sid, |_, slot| slot.id == id).is_some() {
                    None // expired unclaimed
                } else {
                    // A claim took the slot just now: it is on its way.
                    claim_rx.await.ok()
                }
            }
            _ = self.cancel.cancelled() => { self.slots.remove_if(&sid, |_, slot| slot.id == id); None }
        };
        match reply {
            Some(reply) => {
                self.metrics.prewarm_claimed.fetch_add(1, Relaxed);
                if let Err(Ok(mut conn)) = reply.send(opened) {
                    let _ = conn.socket.close().await;
                }
            }
            None => {
                self.metrics.prewarm_expired.fetch_add(1, Relaxed);
                debug!("pre-warmed session unclaimed; closing");
                if let Ok(mut conn) = opened {
                    let _ = conn.socket.close().await;
                }
            }
        }
    }

    /// Takes the pre-warmed session for `call_sid`, waiting for it to finish opening. `None`
    /// if there is none (another instance answered the webhook, or it expired).
    /// A session configured differently from `spec` (the tenant changed on reload since the
    /// webhook) is discarded rather than used; the "today" line may differ by the seconds
    /// between webhook and stream.
    pub async fn claim(&self, call_sid: &str, spec: &SessionSpec) -> Option<Result<RealtimeConn, RealtimeError>> {
        let (_, slot) = self.slots.remove(call_sid)?;
        if !slot.spec.same_apart_from_today(spec) {
            debug!("pre-warmed session was configured for an older tenant definition; discarding");
            return None; // dropping the claim sender makes the holder close it
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        slot.claim.send(reply_tx).ok()?;
        reply_rx.await.ok()
    }
}
