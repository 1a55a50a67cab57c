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
/// workers. A database that does not answer is retried briefly; if it stays down the record is
/// written to the spool folder, and [`replay_spool`] stores it once the database is back (every
/// minute, and at start). Only if even the spool cannot be written is the record logged whole
/// at `error`.
pub struct StoreSink {
    pub store: crate::store::Store,
    pub tenants: super::TenantsHandle,
    pub waker: std::sync::Arc<tokio::sync::Notify>,
    pub summary_attempts: u32,
    /// Also told about every record (tests, extra consumers).
    pub observer: Option<std::sync::Arc<dyn CallSink>>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Where records wait while the database is down.
    pub spool_dir: std::path::PathBuf,
}

/// Stores one record with its summary job; true if it was new.
async fn store_record(
    store: &crate::store::Store,
    tenants: &super::TenantsHandle,
    record: &CallRecord,
    summary_attempts: u32,
) -> Result<bool, crate::store::StoreError> {
    let language = tenants.current().by_id(&record.tenant_id).map_or_else(|| "en".to_owned(), |t| t.language.clone());
    let now = super::unix_ms();
    let job = crate::worker::summarize::job(record, now, summary_attempts);
    store.insert_call(record, &language, &job, now).await
}

/// Writes `record` to the spool folder (atomically: a temp file, then a rename).
fn spool(dir: &std::path::Path, record: &CallRecord) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name: String =
        record.call_sid.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(64).collect();
    let path = dir.join(format!("{name}.json"));
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Stores the records waiting in the spool folder; each is removed once stored (or found
/// already stored). Returns how many were stored. Safe to run from several daemons: the
/// insert is once per CallSid.
pub async fn replay_spool(
    store: &crate::store::Store,
    tenants: &super::TenantsHandle,
    dir: &std::path::Path,
    summary_attempts: u32,
) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut stored = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let record: CallRecord = match std::fs::read(&path).map(|b| serde_json::from_slice(&b)) {
            Ok(Ok(r)) => r,
            _ => {
                tracing::error!(file = %path.display(), "unreadable spooled call record; left in place");
                continue;
            }
        };
        match store_record(store, tenants, &record, summary_attempts).await {
            Ok(new) => {
                stored += usize::from(new);
                let _ = std::fs::remove_file(&path);
                tracing::info!(call_sid = %record.call_sid, "spooled call record stored");
            }
            Err(e) => {
                tracing::warn!(error = %e, "the database is still down; spooled records wait");
                break;
            }
        }
    }
    stored
}

impl CallSink for StoreSink {
    fn submit(&self, record: CallRecord) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            use std::sync::atomic::Ordering::Relaxed;
            let mut delay = std::time::Duration::from_millis(250);
            let mut attempt = 0;
            loop {
                attempt += 1;
                match store_record(&self.store, &self.tenants, &record, self.summary_attempts).await {
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
                    Err(e) if attempt < 3 => {
                        tracing::warn!(call_sid = %record.call_sid, error = %e, attempt, "saving the call failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    Err(e) => match spool(&self.spool_dir, &record) {
                        Ok(path) => {
                            self.metrics.call_records_spooled.fetch_add(1, Relaxed);
                            tracing::warn!(call_sid = %record.call_sid, error = %e, file = %path.display(), "database down: call record spooled, stored when it is back");
                            break;
                        }
                        Err(io) => {
                            self.metrics.call_records_unsaved.fetch_add(1, Relaxed);
                            let json = serde_json::to_string(&record).unwrap_or_default();
                            tracing::error!(call_sid = %record.call_sid, error = %e, spool_error = %io, record = %json, "call record NOT saved: the database and the spool folder both failed");
                            break;
                        }
                    },
                }
            }
            if let Some(o) = &self.observer {
                o.submit(record).await;
            }
        })
    }
}
