//! The `call.summarize` job: ask the model for a structured summary of a finished call, then
//! write the summary and the owner's email (and its delivery job) in one transaction.

use crate::core::domain::call::CallRecord;
use crate::store::NewJob;

pub const KIND: &str = "call.summarize";

/// The job for a call that just ended (deduplicated by CallSid).
pub fn job(record: &CallRecord, now_ms: u64, max_attempts: u32) -> NewJob {
    NewJob {
        kind: KIND,
        dedupe_key: record.call_sid.clone(),
        tenant_id: Some(record.tenant_id.clone()),
        payload: serde_json::json!({ "callSid": record.call_sid }),
        run_at_ms: now_ms,
        max_attempts,
    }
}
