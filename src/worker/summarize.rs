//! The `call.summarize` job: ask the model for a structured summary of a finished call, then
//! write the summary and the owner's email (and its delivery job) in one transaction.
//!
//! Rate limits, server errors and replies that do not match the schema are retried (honouring
//! `Retry-After`); garbage never reaches an email. When the model stays unavailable past the
//! last attempt, or refuses for good, the email still goes out: the transcript, and a plain
//! note that the summary is unavailable.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{JobError, JobHandler, now_ms};
use crate::bridge::TenantsHandle;
use crate::bridge::sink::BoxFuture;
use crate::core::domain::call::CallRecord;
use crate::core::domain::email::{CallEmail, render};
use crate::core::domain::summary::{CallSummary, SummaryInput, chat_request, parse_reply};
use crate::core::domain::tenant::Tenant;
use crate::metrics::Metrics;
use crate::openai::chat::{ChatClient, ChatError};
use crate::store::{CallSummaryUpdate, ClaimedJob, NewEmail, NewJob, Store};

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

#[derive(Clone)]
pub struct Summarize {
    pub store: Store,
    pub tenants: TenantsHandle,
    pub chat: ChatClient,
    pub model: String,
    /// `From:` of the emails, e.g. `Switchboard <calls@example.com>`.
    pub sender: String,
    pub email_attempts: u32,
    pub metrics: Arc<Metrics>,
}

impl JobHandler for Summarize {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), JobError>> {
        let me = self.clone();
        Box::pin(async move { me.summarize(job).await })
    }

    fn on_dead(&self, job: ClaimedJob, error: String) -> BoxFuture<'static, ()> {
        let me = self.clone();
        Box::pin(async move { me.dead(job, error).await })
    }
}

impl Summarize {
    async fn summarize(&self, job: ClaimedJob) -> Result<(), JobError> {
        let call_sid =
            job.payload["callSid"].as_str().ok_or_else(|| JobError::Fatal("payload has no callSid".into()))?.to_owned();
        let row = self
            .store
            .call(None, &call_sid)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?
            .ok_or_else(|| JobError::Fatal(format!("call {call_sid} is not stored")))?;
        if row.summary_status != "pending" {
            // Done by an earlier attempt whose completion was not recorded: the summary and its
            // email were written together, so there is nothing left to do.
            return Ok(());
        }
        let record: CallRecord = serde_json::from_str(&row.record_json)
            .map_err(|e| JobError::Fatal(format!("stored record is unreadable: {e}")))?;
        let tenant = self
            .tenants
            .current()
            .by_id(&record.tenant_id)
            .ok_or_else(|| JobError::Fatal(format!("tenant {:?} is no longer configured", record.tenant_id)))?;

        let outcome = self.ask(&tenant, &record).await;
        let (summary, tokens) = match outcome {
            Ok((summary, tokens)) => (with_confirmed_booking(summary, &record), tokens),
            Err(e) if e.retryable && !job.is_last_attempt() => {
                self.metrics.summary_attempt_failures.fetch_add(1, Relaxed);
                return Err(JobError::Retry { message: e.message, after: e.after });
            }
            Err(e) => {
                self.metrics.summary_attempt_failures.fetch_add(1, Relaxed);
                return self.without_summary(&tenant, &record, &e.message, e.retryable).await;
            }
        };
        let update = CallSummaryUpdate {
            status: "ready",
            summary_json: Some(serde_json::to_string(&summary).map_err(|e| JobError::Fatal(e.to_string()))?),
            summary_text: Some(searchable(&summary)),
            sentiment: Some(summary.sentiment.as_str().to_owned()),
            has_booking: summary.booking.is_some() && summary.intent.is_about_booking(),
            error: None,
            tokens,
        };
        self.metrics.summaries_ready.fetch_add(1, Relaxed);
        self.save(&tenant, &record, Some(&summary), None, &update).await
    }

    /// No summary after all: the owner still gets the call, with its transcript and a plain note.
    async fn without_summary(
        &self,
        tenant: &Tenant,
        record: &CallRecord,
        error: &str,
        retried: bool,
    ) -> Result<(), JobError> {
        tracing::warn!(call_sid = %record.call_sid, error = %error, "no summary: emailing the transcript");
        self.metrics.summaries_unavailable.fetch_add(1, Relaxed);
        let update = CallSummaryUpdate {
            status: "unavailable",
            summary_json: None,
            summary_text: None,
            sentiment: None,
            has_booking: !record.bookings.is_empty(),
            error: Some(error.to_owned()),
            tokens: 0,
        };
        let why = if retried {
            "the summary service did not answer after several attempts"
        } else {
            "the summary service could not summarize this call"
        };
        self.save(tenant, record, None, Some(why), &update).await
    }

    /// The job died outside the handler's own fallback (a panic, a database error on the last
    /// attempt, dying daemons): still send the transcript.
    async fn dead(&self, job: ClaimedJob, error: String) {
        let Some(call_sid) = job.payload["callSid"].as_str() else { return };
        let Ok(Some(row)) = self.store.call(None, call_sid).await else { return };
        if row.summary_status != "pending" {
            return;
        }
        let Ok(record) = serde_json::from_str::<CallRecord>(&row.record_json) else { return };
        let Some(tenant) = self.tenants.current().by_id(&record.tenant_id) else { return };
        if let Err(e) = self.without_summary(&tenant, &record, &error, true).await {
            tracing::error!(call_sid = %call_sid, error = %e, "could not email the transcript of a dead summary job");
        }
    }

    /// One request to the model.
    async fn ask(&self, tenant: &Tenant, record: &CallRecord) -> Result<(CallSummary, u64), Failure> {
        let mut input = SummaryInput::new(tenant, record);
        input.utc_offset_minutes = crate::tenants::utc_offset_minutes(&tenant.timezone, record.started_at_ms);
        let body = chat_request(&input, &self.model);
        let reply = self.chat.create(&body).await.map_err(|e| Failure {
            retryable: e.is_retryable(),
            after: e.retry_after(),
            message: match &e {
                ChatError::NoApiKey => "OPENAI_API_KEY is not set".to_owned(),
                other => other.to_string(),
            },
        })?;
        let (summary, usage) = parse_reply(&reply).map_err(|e| Failure {
            retryable: e.is_retryable(),
            after: None,
            message: e.to_string(),
        })?;
        Ok((summary, usage.map_or(0, |u| u.total_tokens)))
    }

    /// Writes the outcome and the email (when the tenant has recipients) together.
    async fn save(
        &self,
        tenant: &Tenant,
        record: &CallRecord,
        summary: Option<&CallSummary>,
        unavailable: Option<&str>,
        update: &CallSummaryUpdate,
    ) -> Result<(), JobError> {
        let now = now_ms();
        let mut ctx = CallEmail::new(tenant, record, summary);
        ctx.utc_offset_minutes = crate::tenants::utc_offset_minutes(&tenant.timezone, record.started_at_ms);
        ctx.summary_unavailable_reason = unavailable;
        let email = if tenant.summary_to.is_empty() {
            tracing::info!(call_sid = %record.call_sid, tenant = %tenant.id, "tenant has no summary_to: no email");
            None
        } else {
            let rendered = render(&ctx).map_err(|e| JobError::Fatal(format!("rendering the email: {e}")))?;
            let id = uuid::Uuid::now_v7().to_string();
            Some(NewEmail {
                id: id.clone(),
                tenant_id: tenant.id.clone(),
                call_sid: Some(record.call_sid.clone()),
                message_id: message_id(&record.call_sid, &self.sender),
                sender: self.sender.clone(),
                recipients: tenant.summary_to.clone(),
                subject: rendered.subject,
                text: rendered.text,
                html: rendered.html,
                created_at_ms: now,
            })
        };
        let send_job = email.as_ref().map(|e| super::email::job(e, now, self.email_attempts));
        let pair = email.as_ref().zip(send_job.as_ref());
        self.store.save_summary(&record.call_sid, update, pair, now).await.map_err(|e| JobError::retry(e.to_string()))
    }
}

/// A booking the agent made with `take_booking` is the truth: it replaces whatever the model
/// read from the transcript (a read-back the caller corrected, a misheard time).
fn with_confirmed_booking(mut s: CallSummary, record: &CallRecord) -> CallSummary {
    if let Some(b) = record.bookings.last() {
        s.booking = Some(crate::core::domain::summary::Booking {
            date: Some(b.date.clone()),
            time: Some(b.time.clone()),
            party_size: Some(b.party_size),
            name: Some(b.name.clone()),
            notes: b.notes.clone(),
        });
        if !s.intent.is_about_booking() {
            s.intent = crate::core::domain::summary::Intent::Booking;
        }
    }
    s
}

struct Failure {
    retryable: bool,
    after: Option<std::time::Duration>,
    message: String,
}

/// The text of a summary that search should find.
fn searchable(s: &CallSummary) -> String {
    let mut parts = vec![s.summary.clone(), s.intent_detail.clone()];
    parts.extend(s.key_points.iter().cloned());
    parts.extend(s.action_items.iter().cloned());
    if let Some(n) = &s.caller_name {
        parts.push(n.clone());
    }
    if let Some(b) = &s.booking {
        parts.extend([b.name.clone(), b.notes.clone()].into_iter().flatten());
    }
    parts.join("\n")
}

/// A stable Message-ID per call (without angle brackets), in the sender's domain: a retry
/// after an uncertain send is recognisably the same message.
pub fn message_id(call_sid: &str, sender: &str) -> String {
    let addr = sender.rsplit_once('<').map_or(sender, |(_, a)| a.trim_end_matches('>'));
    let domain = addr
        .rsplit_once('@')
        .map(|(_, d)| d.trim())
        .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
        .unwrap_or("switchboard.invalid");
    let sid: String = call_sid.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    format!("call-{sid}@{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_in_the_senders_domain() {
        assert_eq!(message_id("CA123", "Switchboard <calls@example.com>"), "call-CA123@example.com");
        assert_eq!(message_id("CA123", "calls@example.com"), "call-CA123@example.com");
        assert_eq!(message_id("CA1<2>3", "x"), "call-CA123@switchboard.invalid");
        assert_eq!(message_id("CA9", "a@b.c"), message_id("CA9", "a@b.c"));
    }
}
