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
