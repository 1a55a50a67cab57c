//! Where finished calls go. The after-call work persists them; by default they are logged.

use std::future::Future;
use std::pin::Pin;

use crate::core::domain::call::CallRecord;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Receives exactly one record per finished call.
pub trait CallSink: Send + Sync + 'static {
    fn submit(&self, record: CallRecord) -> BoxFuture<'_, ()>;
}

/// Logs each record as one JSON line at `info`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogSink;

impl CallSink for LogSink {
    fn submit(&self, record: CallRecord) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match serde_json::to_string(&record) {
                Ok(json) => {
                    tracing::info!(target: "call_record", call_sid = %record.call_sid, tenant = %record.tenant_id, record = %json, "call record")
                }
                Err(e) => tracing::error!(call_sid = %record.call_sid, error = %e, "call record not serialisable"),
            }
        })
    }
}

/// Sends each record into a channel (tests, and a hook for other consumers).
#[derive(Debug, Clone)]
pub struct ChannelSink(pub tokio::sync::mpsc::UnboundedSender<CallRecord>);

impl CallSink for ChannelSink {
    fn submit(&self, record: CallRecord) -> BoxFuture<'_, ()> {
        let _ = self.0.send(record);
        Box::pin(async {})
    }
}

/// Persists each record, with its summary job in the same transaction, then wakes the
/// workers. A database that does not answer is retried for a while; if it stays down the
/// whole record is logged at `error` (so an operator can replay it) and counted.
pub struct StoreSink {
    pub store: crate::store::Store,
    pub tenants: super::TenantsHandle,
    pub waker: std::sync::Arc<tokio::sync::Notify>,
    pub summary_attempts: u32,
    /// Also told about every record (tests, extra consumers).
    pub observer: Option<std::sync::Arc<dyn CallSink>>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl CallSink for StoreSink {
    fn submit(&self, record: CallRecord) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            use std::sync::atomic::Ordering::Relaxed;
            let language =
                self.tenants.current().by_id(&record.tenant_id).map_or_else(|| "en".to_owned(), |t| t.language.clone());
            let mut delay = std::time::Duration::from_millis(250);
            let mut attempt = 0;
            loop {
                attempt += 1;
                let now = super::unix_ms();
                let job = crate::worker::summarize::job(&record, now, self.summary_attempts);
                match self.store.insert_call(&record, &language, &job, now).await {
                    Ok(true) => {
                        tracing::info!(call_sid = %record.call_sid, tenant = %record.tenant_id, end_reason = record.end_reason.as_str(), "call record stored");
                        self.metrics.calls_persisted.fetch_add(1, Relaxed);
                        self.waker.notify_waiters();
                        break;
                    }
                    Ok(false) => {
                        tracing::warn!(call_sid = %record.call_sid, "call already recorded: kept the first record");
                        self.metrics.call_records_duplicate.fetch_add(1, Relaxed);
                        break;
                    }
                    Err(e) if attempt < 6 => {
                        tracing::warn!(call_sid = %record.call_sid, error = %e, attempt, "saving the call failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    Err(e) => {
                        self.metrics.call_records_unsaved.fetch_add(1, Relaxed);
                        let json = serde_json::to_string(&record).unwrap_or_default();
                        tracing::error!(call_sid = %record.call_sid, error = %e, record = %json, "call record NOT saved: the database stayed down");
                        break;
                    }
                }
            }
            if let Some(o) = &self.observer {
                o.submit(record).await;
            }
        })
    }
}
