//! The per-call owner task: one task owns the Twilio socket, the Realtime socket and the
//! `CallSession`, in one loop that polls only the sources that woke it (see `wakeups`). No
//! locks on the hot path; the only shared state is the live-call registry and relaxed counters.

pub mod prewarm;
pub mod sink;
pub mod tools;
mod wakeups;
pub mod webhook;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Config;
use crate::core::audio::apology::{apology_ulaw, filler_ulaw};
use crate::core::domain::call::{CallStats, EndReason};
use crate::core::domain::tenant::{DtmfAction, Tenant, TenantDirectory};
use crate::core::realtime::session_config::SessionSpec;
use crate::core::session::{CallSession, KeyAction, Millis, Notice, Output, SessionParams};
use crate::core::twilio::binding::{ISSUED_PARAM, MAX_AGE_SECS, TOKEN_PARAM, verify_stream_token};
use crate::core::twilio::messages::{Inbound, Start};
use crate::metrics::Metrics;
use crate::openai::realtime::{self, RealtimeConn, RealtimeError, RealtimeSettings, RealtimeSocket};
use prewarm::Prewarmer;
use sink::CallSink;

/// The current tenants; replaced whole on reload (live calls keep the `Arc<Tenant>` they had).
#[derive(Debug, Clone)]
pub struct TenantsHandle(Arc<RwLock<Arc<TenantDirectory>>>);

impl TenantsHandle {
    pub fn new(dir: TenantDirectory) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(dir))))
    }
    pub fn current(&self) -> Arc<TenantDirectory> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc; the value is whole.
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }
    pub fn replace(&self, dir: TenantDirectory) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(dir);
    }
}

/// A call in progress, as others may see it.
#[derive(Debug, Clone)]
pub struct LiveCall {
    pub tenant_id: String,
    pub from: String,
    pub started_at_ms: u64,
}

/// Everything a call needs from the process.
pub struct CallRuntime {
    pub config: Arc<Config>,
    /// Twilio's REST API, when `TWILIO_ACCOUNT_SID` is set (hang-ups, transfers).
    pub twilio: Option<crate::twilio_rest::TwilioRest>,
    /// For webhook tools.
    pub http: reqwest::Client,
    pub tenants: TenantsHandle,
    pub prewarm: Arc<Prewarmer>,
    pub metrics: Arc<Metrics>,
    pub live: DashMap<String, LiveCall>,
    pub sink: Arc<dyn CallSink>,
    /// Fired when the shutdown grace period is over: live calls end at once.
    pub calls_cancel: CancellationToken,
    /// Every call and pre-warm task.
    pub tracker: TaskTracker,
    /// Set on SIGTERM: new webhooks get 503 (streams of calls already answered still connect).
    pub draining: AtomicBool,
    /// Media streams from upgrade to end (some may not have sent `start` yet).
    pub streams: AtomicUsize,
    /// CallSids that have streamed (Unix s): one stream per call, no token replay.
    pub streamed: DashMap<String, u64>,
}

/// Counts a media stream from its upgrade until it ends; keeps shutdown waiting for it.
#[derive(Debug)]
pub struct StreamGuard {
    rt: Arc<CallRuntime>,
    _task: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl StreamGuard {
    pub fn new(rt: &Arc<CallRuntime>) -> Self {
        rt.streams.fetch_add(1, Relaxed);
        Self { rt: Arc::clone(rt), _task: rt.tracker.token() }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.rt.streams.fetch_sub(1, Relaxed);
    }
}

impl std::fmt::Debug for CallRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallRuntime").field("live", &self.live.len()).finish_non_exhaustive()
    }
}

impl CallRuntime {
    pub fn realtime_settings(&self) -> Option<RealtimeSettings> {
        Some(RealtimeSettings {
            url: self.config.realtime_url(),
            api_key: self.config.openai_api_key.clone()?,
            timeout: self.config.realtime_connect_timeout,
        })
    }

    /// The tenant's session, told today's local date so it can resolve "tomorrow".
    pub fn session_spec(&self, tenant: &Tenant) -> SessionSpec {
        let mut spec = SessionSpec::for_tenant(tenant, &self.config.transcribe_model);
        let now_local = crate::tenants::local_datetime(&tenant.timezone, unix_ms());
        spec.today = Some(crate::core::realtime::session_config::format_today(now_local, &tenant.timezone));
        spec
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }
}

/// Wall-clock Unix milliseconds (the shell's clock; the core is given values).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Twilio's REST redirect of a transfer: the number dialled, or why it failed.
type TransferFuture = Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>;

/// The Media Stream's WebSocket: the upgraded HTTP/1.1 connection, owned by the call's task.
pub type TwilioSocket = crate::ws::WsStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

type ConnectFuture = Pin<Box<dyn std::future::Future<Output = Result<RealtimeConn, RealtimeError>> + Send>>;

/// Runs one Media Stream from upgrade to record. Never panics on caller input.
pub async fn run(rt: Arc<CallRuntime>, socket: TwilioSocket) {
    let t0 = Instant::now();
    // One task reads and writes each socket, never at the same time: no split, no lock.
    let mut tw = socket;

    // 1. Handshake: wait for `start` (anything else before it is counted and ignored).
    let start = match tokio::time::timeout(rt.config.stream_start_timeout, wait_for_start(&rt, &mut tw)).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(_) => {
            warn!("media stream sent no start in time; closing");
            within(tw.close()).await;
            return;
        }
    };
    let Some(tenant) = admit(&rt, &start) else {
        rt.metrics.calls_rejected.fetch_add(1, Relaxed);
        // A peer that does not read must not hold the task (or shutdown) for long.
        within(
            tw.send(Message::Close(Some(CloseFrame {
                code: 1008.into(),
                reason: "stream not bound to a call".into(),
            }))),
        )
        .await;
        return;
    };
    let span = info_span!("call", call_sid = %start.call_sid, tenant = %tenant.id);
    async move { run_call(rt, t0, start, tenant, tw).await }.instrument(span).await
}

async fn wait_for_start(rt: &CallRuntime, rx: &mut TwilioSocket) -> Option<Start> {
    while let Some(msg) = rx.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(Message::Binary(_)) => {
                rt.metrics.malformed_frames.fetch_add(1, Relaxed);
                continue;
            }
            Ok(_) => continue,
        };
        match Inbound::parse(&text) {
            Ok(Inbound::Start(s)) => return Some(s),
            Ok(Inbound::Connected { .. }) => {}
            Ok(other) => {
                rt.metrics.malformed_frames.fetch_add(1, Relaxed);
                debug!(event = ?std::mem::discriminant(&other), "message before start ignored");
            }
            Err(e) => {
                rt.metrics.malformed_frames.fetch_add(1, Relaxed);
                debug!(error = %e, "malformed message before start ignored");
            }
        }
    }
    None
}

/// Checks the stream's binding token, claims its CallSid (one stream per call, so a captured
/// token cannot be replayed) and finds its tenant.
fn admit(rt: &CallRuntime, start: &Start) -> Option<Arc<Tenant>> {
    let params = &start.custom_parameters;
    let dir = rt.tenants.current();
    let tenant_id = params.get("tenant").map(String::as_str).unwrap_or_default();
    let now_s = unix_ms() / 1000;
    if rt.config.verify_signatures() {
        let token = params.get(TOKEN_PARAM).map(String::as_str).unwrap_or_default();
        let issued = params.get(ISSUED_PARAM).map(String::as_str).unwrap_or_default();
        let auth = rt.config.twilio_auth_token.as_ref()?;
        if let Err(e) = verify_stream_token(auth.expose(), &start.call_sid, tenant_id, issued, token, now_s) {
            warn!(call_sid = %start.call_sid, reason = %e, "stream not bound to its call; refused");
            return None;
        }
    }
    let tenant = dir.by_id(tenant_id).or_else(|| params.get("to").and_then(|to| dir.resolve(to)));
    let Some(tenant) = tenant else {
        warn!(call_sid = %start.call_sid, tenant = %tenant_id, "stream for an unknown tenant; refused");
        return None;
    };
    if rt.streamed.len() > 4096 {
        rt.streamed.retain(|_, at| now_s.saturating_sub(*at) <= 2 * MAX_AGE_SECS);
    }
    match rt.streamed.entry(start.call_sid.clone()) {
        dashmap::Entry::Occupied(_) => {
            warn!(call_sid = %start.call_sid, "this call already streamed; refused");
            None
        }
        dashmap::Entry::Vacant(v) => {
            v.insert(now_s);
            Some(tenant)
        }
    }
}

async fn run_call(rt: Arc<CallRuntime>, t0: Instant, start: Start, tenant: Arc<Tenant>, mut tw: TwilioSocket) {
    let now = || t0.elapsed().as_millis() as Millis;
    let params = &start.custom_parameters;
    let call_sid = start.call_sid.clone();
    let from = params.get("from").cloned().unwrap_or_default();
    let started_at = unix_ms();
    rt.live.insert(
        call_sid.clone(),
        LiveCall { tenant_id: tenant.id.clone(), from: from.clone(), started_at_ms: started_at },
    );
    rt.metrics.live_calls.fetch_add(1, Relaxed);
    rt.metrics.calls_started.fetch_add(1, Relaxed);
    info!(from = %from, "call started");

    // 2. The upstream: a pre-warmed session, or open one now.
    let spec = rt.session_spec(&tenant);
    let mut connecting: Option<ConnectFuture> = None;
    let mut immediate: Option<Result<RealtimeConn, RealtimeError>> = None;
    match rt.realtime_settings() {
        None => immediate = Some(Err(RealtimeError::Request("OPENAI_API_KEY is not set".into()))),
        Some(settings) => {
            let prewarm = Arc::clone(&rt.prewarm);
            let sid = call_sid.clone();
            let t_conn = Instant::now();
            let metrics = Arc::clone(&rt.metrics);
            connecting = Some(Box::pin(async move {
                match prewarm.claim(&sid, &spec).await {
                    Some(Ok(conn)) => return Ok(conn),
                    // It already used the whole budget: the caller must not wait twice.
                    Some(Err(e @ RealtimeError::Timeout(_))) => return Err(e),
                    Some(Err(e)) => debug!(error = %e, "pre-warmed session failed; opening a fresh one"),
                    None => {}
                }
                let mut settings = settings;
                settings.timeout = settings.timeout.saturating_sub(t_conn.elapsed());
                if settings.timeout.is_zero() {
                    return Err(RealtimeError::Timeout(t_conn.elapsed()));
                }
                let r = realtime::open(&settings, &spec).await;
                if r.is_ok() {
                    metrics.realtime_connect.observe(t_conn.elapsed().as_millis() as u64);
                }
                r
            }));
        }
    }

    let mut session = CallSession::new(
        SessionParams {
            tenant_id: tenant.id.clone(),
            call_sid: call_sid.clone(),
            stream_sid: start.stream_sid.clone(),
            from,
            to: params.get("to").cloned().unwrap_or_else(|| tenant.numbers.first().cloned().unwrap_or_default()),
            started_at_unix_ms: started_at,
            language: tenant.language.clone(),
            greeting: tenant.greeting.clone(),
            audio_format: tenant.audio_format,
            barge_in: tenant.barge_in.clone(),
            apology: apology_ulaw(&tenant.language),
            filler: filler_ulaw(&tenant.language),
            max_reconnects: MAX_RECONNECTS,
            rotate_after_ms: rt.config.session_rotate_after.as_millis() as u64,
            backlog_frames: rt.config.backlog_frames,
            frames_per_mark: crate::core::session::DEFAULT_FRAMES_PER_MARK,
            idle_prompt_ms: tenant.idle_prompt_ms,
            transfer_targets: tenant.transfer.iter().map(|t| t.name.clone()).collect(),
            key_actions: tenant
                .dtmf
                .iter()
                .map(|(k, a)| {
                    let action = match a {
                        DtmfAction::Transfer(t) => KeyAction::Transfer(t.clone()),
                        DtmfAction::EndCall => KeyAction::EndCall,
                    };
                    (*k, action)
                })
                .collect(),
            side_effect_tools: std::iter::once("take_booking".to_owned())
                .chain(tenant.webhook_tools.iter().filter(|t| t.side_effects).map(|t| t.name.clone()))
                .collect(),
        },
        now(),
        false,
    );
    let tool_ctx = tools::ToolContext {
        call_sid: call_sid.clone(),
        caller: params.get("from").cloned().unwrap_or_default(),
        http: rt.http.clone(),
    };
    // A transfer in progress: Twilio's REST redirect (the number dialled, or why it failed).
    let mut transferring: Option<TransferFuture> = None;
    let mut up: Option<RealtimeSocket> = None;
    let mut up_readable = false;
    // A fresh session being opened to replace an old one between two turns.
    let mut rotation: Option<ConnectFuture> = None;
    // Results of the tools the model called.
    let (tool_tx, mut tool_rx) = tokio::sync::mpsc::channel::<tools::ToolDone>(16);
    let mut last_stats = CallStats::default();
    let mut shutdown_seen = false;
    // One waiter per call on its own child token, created once: re-creating `cancelled()` on
    // the shared token every loop turn would register and drop a waiter under one mutex for
    // every frame of every call.
    let cancel_token = rt.calls_cancel.child_token();
    let cancelled = cancel_token.cancelled();
    tokio::pin!(cancelled);

    if let Some(Err(e)) = immediate.take() {
        warn!(error = %e, "realtime unavailable");
        session.on_realtime_failed(now(), &e.to_string());
    }

    // 3. The loop. Each source is polled with its own waker (see `wakeups`): a turn waits
    // until some source fires, polls only the sources that fired (each until it has nothing
    // more), then writes the outputs with one flush per socket. At 50 frames a second per
    // call, polling the quiet sources on every frame cost more than the frames.
    let mut last_twilio = Instant::now();
    let mut watchdog = tokio::time::interval(Duration::from_secs(1));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The session's own deadline (the apology's end), on one timer that is re-armed, not
    // re-created.
    let mut timer = Box::pin(tokio::time::sleep(Duration::from_secs(86_400)));
    let mut timer_at: Option<Millis> = None;
    let wakeups = wakeups::Wakeups::new(SOURCES);
    // Sources to poll without waiting for their waker: new or replaced ones, and those a
    // turn left with messages unread. Everything is polled once at the start.
    let mut forced: u32 = (1 << SOURCES) - 1;
    // A write to Twilio failed or timed out: no more writes (each would wait again).
    let mut tw_dead = false;
    loop {
        // Tokio's cooperative budget: a turn that never has to wait (a long burst) still hands
        // the thread back now and then. Without it, sources refused by an exhausted budget
        // would wake this task's bits forever without it ever yielding.
        tokio::task::consume_budget().await;
        let want = session.poll_timeout();
        if want != timer_at {
            timer_at = want;
            if let Some(ms) = want {
                timer.as_mut().reset(tokio::time::Instant::from_std(t0 + Duration::from_millis(ms)));
            }
            forced |= bit(S_TIMER);
        }
        let mut due = std::mem::take(&mut forced);
        // Outputs queued by the last turn's own writes (a failed write ends the call) are
        // drained now, not at the next wake-up.
        let leftover = session.has_output();
        due |= std::future::poll_fn(|cx| {
            let fired = wakeups.take(cx);
            if fired != 0 || due != 0 || leftover { Poll::Ready(fired) } else { Poll::Pending }
        })
        .await;

        for _ in 0..BATCH_MAX {
            let mut again = 0;
            if due & bit(S_CANCEL) != 0 && !shutdown_seen {
                let mut cx = Context::from_waker(wakeups.waker(S_CANCEL));
                if cancelled.as_mut().poll(&mut cx).is_ready() {
                    shutdown_seen = true;
                    session.on_shutdown(now());
                }
            }
            if due & bit(S_TWILIO) != 0 && !session.is_ended() {
                let mut cx = Context::from_waker(wakeups.waker(S_TWILIO));
                if let Poll::Ready(msg) = tw.poll_next_unpin(&mut cx) {
                    last_twilio = Instant::now();
                    on_twilio_msg(&rt, &mut session, now(), msg);
                    again |= bit(S_TWILIO);
                }
            }
            if due & bit(S_UP) != 0
                && up_readable
                && let Some(ws) = up.as_mut()
            {
                let mut cx = Context::from_waker(wakeups.waker(S_UP));
                if let Poll::Ready(msg) = ws.poll_next_unpin(&mut cx) {
                    if !on_realtime_msg(&mut session, now(), msg) {
                        up_readable = false;
                    }
                    again |= bit(S_UP);
                }
            }
            if due & bit(S_CONNECT) != 0
                && let Some(res) = poll_slot(&mut connecting, wakeups.waker(S_CONNECT))
            {
                match res {
                    Ok(conn) if session.upstream_open() && !session.is_ended() => {
                        up = Some(conn.socket);
                        up_readable = true;
                        again |= bit(S_UP);
                        session.on_realtime_ready(now());
                    }
                    Ok(conn) => close_upstream(&rt, conn.socket),
                    Err(e) => {
                        warn!(error = %e, "could not open the realtime session");
                        session.on_realtime_failed(now(), &e.to_string());
                    }
                }
            }
            if due & bit(S_ROTATE) != 0
                && let Some(res) = poll_slot(&mut rotation, wakeups.waker(S_ROTATE))
            {
                match res {
                    Ok(conn) => {
                        if up.is_some() && up_readable && session.rotation_ready(now()) {
                            // Swap before the outputs are drained: the seed goes to the fresh one.
                            if let Some(old) = up.replace(conn.socket) {
                                close_upstream(&rt, old);
                            }
                            again |= bit(S_UP);
                            rt.metrics.rotations.fetch_add(1, Relaxed);
                            info!("realtime session rotated");
                        } else {
                            close_upstream(&rt, conn.socket);
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "could not open a fresh realtime session; keeping the current one");
                        session.rotation_failed(now());
                    }
                }
            }
            if due & bit(S_TOOL) != 0 {
                let mut cx = Context::from_waker(wakeups.waker(S_TOOL));
                // `None` cannot happen: this task holds a sender.
                if let Poll::Ready(Some(done)) = tool_rx.poll_recv(&mut cx) {
                    again |= bit(S_TOOL);
                    if let Some(b) = done.booking {
                        info!(date = %b.date, time = %b.time, party = b.party_size, "booking taken");
                        rt.metrics.bookings.fetch_add(1, Relaxed);
                        session.on_booking(b);
                    }
                    session.on_tool_result(now(), &done.call_id, &done.output);
                }
            }
            if due & bit(S_TRANSFER) != 0
                && let Some(res) = poll_slot(&mut transferring, wakeups.waker(S_TRANSFER))
            {
                match res {
                    Ok(number) => {
                        info!(to = %number, "call transferred");
                        rt.metrics.transfers.fetch_add(1, Relaxed);
                        session.on_transferred(now(), &number);
                    }
                    Err(why) => {
                        warn!(error = %why, "transfer failed");
                        session.on_transfer_failed(now(), &why);
                    }
                }
            }
            if due & bit(S_TIMER) != 0 && timer_at.is_some() {
                let mut cx = Context::from_waker(wakeups.waker(S_TIMER));
                if timer.as_mut().poll(&mut cx).is_ready() {
                    // Re-armed by the next turn if the session still has a deadline.
                    timer_at = None;
                    session.handle_timeout(now());
                }
            }
            if due & bit(S_WATCHDOG) != 0 {
                let mut cx = Context::from_waker(wakeups.waker(S_WATCHDOG));
                if watchdog.poll_tick(&mut cx).is_ready() {
                    again |= bit(S_WATCHDOG);
                    // Twilio streams a frame every 20 ms, silence included: a quiet socket is
                    // dead (half-open TCP), and the call must not hold an upstream session for
                    // an hour.
                    if last_twilio.elapsed() >= TWILIO_IDLE {
                        warn!(
                            idle_ms = last_twilio.elapsed().as_millis() as u64,
                            "no message from Twilio; ending the call"
                        );
                        session.on_twilio_closed(now(), EndReason::StreamClosed);
                    }
                    // The idle-caller check runs on this tick too (it needs no finer clock),
                    // and the call's counters reach the process metrics once a second.
                    session.handle_timeout(now());
                    rt.metrics.sync_call(&mut last_stats, session.stats());
                }
            }
            // A source that gave a message is polled again (until it has none, which also
            // registers its waker); so is any that fired meanwhile.
            due = again | wakeups.take_fired();
            if due == 0 {
                break;
            }
        }
        // Messages left after the batch: read them after writing, without waiting.
        forced |= due;

        // Drain outputs: feed everything, then one flush per socket.
        let mut tw_dirty = false;
        let mut rt_dirty = false;
        let mut hangup = false;
        while let Some(out) = session.poll_output() {
            match out {
                // After one failed or timed-out write the socket is dead: the rest of this
                // drain must not wait `WRITE_TIMEOUT` again for each message.
                Output::Twilio(_) if tw_dead => {}
                Output::Twilio(s) => {
                    if !within(tw.feed(Message::text(s))).await {
                        tw_dead = true;
                        session.on_twilio_closed(now(), EndReason::StreamClosed);
                    }
                    tw_dirty = true;
                }
                Output::Realtime(s) => {
                    if let Some(ws) = up.as_mut()
                        && !within(ws.feed(Message::text(s))).await
                    {
                        up = None;
                        up_readable = false;
                        session.on_realtime_lost(now(), "upstream write failed");
                    }
                    rt_dirty = true;
                }
                Output::CloseRealtime => {
                    connecting = None;
                    up_readable = false;
                    if let Some(ws) = up.take() {
                        close_upstream(&rt, ws);
                    }
                }
                Output::Hangup => hangup = true,
                Output::RunTool { call_id, name, arguments } => {
                    let ctx = tool_ctx.clone();
                    tools::spawn(&rt.tracker, Arc::clone(&tenant), ctx, call_id, name, arguments, tool_tx.clone());
                }
                Output::Transfer { target } => {
                    let dest = match &target {
                        Some(name) => tenant.transfer.iter().find(|t| &t.name == name),
                        None => tenant.transfer.first(),
                    };
                    let rest = rt.twilio.clone();
                    let sid = call_sid.clone();
                    let dest = dest.map(|d| d.number.clone());
                    if let Some(n) = &dest {
                        session.on_transfer_started(n);
                    }
                    forced |= bit(S_TRANSFER);
                    transferring = Some(Box::pin(async move {
                        let number = dest.ok_or_else(|| "no transfer number is configured".to_owned())?;
                        let rest = rest.ok_or_else(|| {
                            "TWILIO_ACCOUNT_SID is not set: transfers need Twilio's REST API".to_owned()
                        })?;
                        let twiml = crate::core::twilio::twiml::dial(&number, None, None);
                        rest.redirect(&sid, &twiml).await.map_err(|e| e.to_string())?;
                        Ok(number)
                    }));
                }
                Output::Rotate => match rt.realtime_settings() {
                    Some(settings) => {
                        let spec = rt.session_spec(&tenant);
                        rotation = Some(Box::pin(async move { realtime::open(&settings, &spec).await }));
                        forced |= bit(S_ROTATE);
                    }
                    None => session.rotation_failed(now()),
                },
                Output::Reconnect => {
                    up_readable = false;
                    if let Some(ws) = up.take() {
                        close_upstream(&rt, ws);
                    }
                    match rt.realtime_settings() {
                        Some(settings) => {
                            warn!("realtime session lost; reconnecting");
                            rt.metrics.reconnects.fetch_add(1, Relaxed);
                            connecting = Some(Box::pin(reconnect(settings, rt.session_spec(&tenant))));
                            forced |= bit(S_CONNECT);
                        }
                        None => session.on_realtime_failed(now(), "OPENAI_API_KEY is not set"),
                    }
                }
            }
        }
        if tw_dirty && !tw_dead && !within(tw.flush()).await {
            tw_dead = true;
            session.on_twilio_closed(now(), EndReason::StreamClosed);
        }
        if rt_dirty
            && let Some(ws) = up.as_mut()
            && !within(ws.flush()).await
        {
            up = None;
            up_readable = false;
            session.on_realtime_lost(now(), "upstream write failed");
        }
        handle_notices(&rt, &mut session);
        if hangup || session.is_finished() {
            break;
        }
    }

    // 4. Close and record, exactly once. A call the agent ended (after its goodbye was heard)
    // is hung up through Twilio's REST API first: closing the stream alone would leave Twilio
    // to run the rest of the TwiML.
    if matches!(session.end_reason(), Some(EndReason::AgentEnded | EndReason::IdleCaller))
        && let Some(rest) = rt.twilio.clone()
    {
        match tokio::time::timeout(Duration::from_secs(5), rest.end_call(&call_sid)).await {
            Ok(Ok(outcome)) => info!(?outcome, "call ended through the REST API"),
            Ok(Err(e)) => warn!(error = %e, "ending the call through the REST API failed; closing the stream"),
            Err(_) => warn!("Twilio's REST API did not answer in 5 s; closing the stream"),
        }
    }
    if !tw_dead {
        within(tw.close()).await;
    }
    if let Some(ws) = up.take() {
        close_upstream(&rt, ws);
    }
    let record = session.into_record(now());
    rt.metrics.sync_call(&mut last_stats, &record.stats);
    if let Some(ms) = record.stats.first_audio_ms {
        rt.metrics.first_audio_latency.observe(ms);
    }
    if record.end_reason == EndReason::UpstreamFailed {
        rt.metrics.upstream_failures.fetch_add(1, Relaxed);
    }
    rt.live.remove(&call_sid);
    rt.metrics.live_calls.fetch_sub(1, Relaxed);
    rt.metrics.calls_ended.fetch_add(1, Relaxed);
    info!(
        reason = ?record.end_reason,
        duration_ms = record.duration_ms,
        interruptions = record.interruptions,
        frames_in = record.stats.frames_in,
        frames_out = record.stats.frames_out,
        malformed = record.stats.malformed_in,
        "call ended"
    );
    rt.sink.submit(record).await;
}

/// Closes the upstream socket properly, off the call's path: send the close frame, then read
/// until the server's close (at most 2 s). Dropping a socket with unread data makes the kernel
/// send RST, and a RST makes the server discard the caller audio it has not read yet — the
/// last words before a hang-up.
fn close_upstream(rt: &CallRuntime, mut ws: RealtimeSocket) {
    rt.tracker.spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = ws.close().await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    });
}

/// Upstream drops a call survives before the apology.
const MAX_RECONNECTS: u32 = 3;
/// How long a dropped upstream may take to come back before the apology.
const RECONNECT_BUDGET: Duration = Duration::from_secs(5);

/// Opens a new session after a drop: attempts with growing pauses (0, 250, 500, 1000 ms…)
/// within [`RECONNECT_BUDGET`] overall.
async fn reconnect(settings: RealtimeSettings, spec: SessionSpec) -> Result<RealtimeConn, RealtimeError> {
    let t0 = Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        let left = RECONNECT_BUDGET.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Err(RealtimeError::Timeout(RECONNECT_BUDGET));
        }
        let attempt = RealtimeSettings { timeout: left.min(settings.timeout), ..settings.clone() };
        match realtime::open(&attempt, &spec).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                debug!(error = %e, "reconnect attempt failed");
                let left = RECONNECT_BUDGET.saturating_sub(t0.elapsed());
                if left <= pause {
                    return Err(e);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Rounds of polls per loop turn (each round reads at most one message per source).
const BATCH_MAX: usize = 32;

// A call's event sources, by waker index (see `wakeups`).
const S_CANCEL: usize = 0;
const S_TWILIO: usize = 1;
const S_UP: usize = 2;
const S_CONNECT: usize = 3;
const S_ROTATE: usize = 4;
const S_TOOL: usize = 5;
const S_TRANSFER: usize = 6;
const S_TIMER: usize = 7;
const S_WATCHDOG: usize = 8;
const SOURCES: usize = 9;

const fn bit(source: usize) -> u32 {
    1 << source
}

/// A one-shot future the call may be waiting on (a connect, a rotation, a transfer).
type Slot<T> = Option<Pin<Box<dyn std::future::Future<Output = T> + Send>>>;

/// Polls the slot's future, if any, with `waker`: its output once, and the slot is emptied.
fn poll_slot<T>(slot: &mut Slot<T>, waker: &std::task::Waker) -> Option<T> {
    let fut = slot.as_mut()?;
    match fut.as_mut().poll(&mut Context::from_waker(waker)) {
        Poll::Ready(out) => {
            *slot = None;
            Some(out)
        }
        Poll::Pending => None,
    }
}

fn on_twilio_msg(rt: &CallRuntime, session: &mut CallSession, now: Millis, msg: Option<Result<Message, WsError>>) {
    match msg {
        Some(Ok(Message::Text(t))) => session.handle_twilio_text(now, &t),
        // Twilio only sends text; a binary frame is counted as malformed and ignored.
        Some(Ok(Message::Binary(_))) => session.handle_twilio_text(now, ""),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
        Some(Ok(Message::Close(_))) | None => session.on_twilio_closed(now, EndReason::StreamClosed),
        Some(Err(e)) => {
            let detail = e.to_string();
            if matches!(e, WsError::Capacity(_)) {
                rt.metrics.oversized_messages.fetch_add(1, Relaxed);
                warn!(error = %detail, "oversized message; closing this stream");
                session.on_protocol_error(now, &detail);
            } else {
                debug!(error = %detail, "twilio socket error");
                session.on_twilio_closed(now, EndReason::StreamClosed);
            }
        }
    }
}

/// Returns false when the upstream socket is finished.
fn on_realtime_msg(session: &mut CallSession, now: Millis, msg: Option<Result<Message, WsError>>) -> bool {
    match msg {
        Some(Ok(Message::Text(t))) => {
            session.handle_realtime_text(now, &t);
            true
        }
        Some(Ok(Message::Close(frame))) => {
            let why = frame
                .map(|f| format!("upstream closed ({} {})", u16::from(f.code), f.reason))
                .unwrap_or_else(|| "upstream closed".into());
            if !session.is_ended() {
                warn!(reason = %why, "realtime session ended mid-call");
            }
            session.on_realtime_lost(now, &why);
            false
        }
        Some(Ok(_)) => true,
        Some(Err(e)) => {
            if !session.is_ended() {
                warn!(error = %e, "realtime socket failed mid-call");
            }
            session.on_realtime_lost(now, &format!("upstream error: {e}"));
            false
        }
        None => {
            session.on_realtime_lost(now, "upstream closed");
            false
        }
    }
}

fn handle_notices(rt: &CallRuntime, session: &mut CallSession) {
    for n in session.drain_notices() {
        match n {
            Notice::BargeIn { source, latency_ms, audio_end_ms } => {
                rt.metrics.barge_ins.fetch_add(1, Relaxed);
                rt.metrics.barge_in_latency.observe(latency_ms);
                info!(?source, latency_ms, ?audio_end_ms, "barge-in");
            }
            Notice::MalformedTwilio(e) => debug!(error = %e, "malformed media stream message ignored"),
            Notice::MalformedRealtime(e) => warn!(error = %e, "unreadable realtime event ignored"),
            Notice::UpstreamError { code, message } => {
                warn!(
                    code = code.as_deref().unwrap_or("-"),
                    message = message.as_deref().unwrap_or("-"),
                    "realtime error"
                )
            }
        }
    }
}

/// A peer that stops reading must not stall the call's owner task.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// No message from Twilio for this long means the stream is dead.
const TWILIO_IDLE: Duration = Duration::from_secs(10);

/// Runs a socket write with [`WRITE_TIMEOUT`]; false if it failed or timed out.
async fn within<E>(fut: impl std::future::Future<Output = Result<(), E>>) -> bool {
    matches!(tokio::time::timeout(WRITE_TIMEOUT, fut).await, Ok(Ok(())))
}
