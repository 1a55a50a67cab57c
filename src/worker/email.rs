//! The `email.send` job: deliver one outbox email.
//!
//! The email is marked `sent` only after the server accepted it. Connection errors and 4xx
//! replies are retried with backoff until `give_up_after` has passed since the email was
//! written (48 hours by default, across restarts: the job and the email are in the database);
//! then it is `failed`. A 5xx reply is a refusal: recorded as `rejected`, never retried.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::{JobError, JobHandler, now_ms};
use crate::bridge::sink::BoxFuture;
use crate::mail::{Mailer, OutgoingEmail, SendError};
use crate::metrics::Metrics;
use crate::store::{ClaimedJob, EmailStatus, NewEmail, NewJob, Store};

pub const KIND: &str = "email.send";

/// The delivery job of a stored email (one per email).
pub fn job(email: &NewEmail, now_ms: u64, max_attempts: u32) -> NewJob {
    NewJob {
        kind: KIND,
        dedupe_key: email.id.clone(),
        tenant_id: Some(email.tenant_id.clone()),
        payload: serde_json::json!({ "emailId": email.id }),
        run_at_ms: now_ms,
        max_attempts,
    }
}

#[derive(Clone)]
pub struct SendEmail {
    pub store: Store,
    pub mailer: Arc<Mailer>,
    pub give_up_after: Duration,
    pub metrics: Arc<Metrics>,
}

impl JobHandler for SendEmail {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), JobError>> {
        let me = self.clone();
        Box::pin(async move { me.deliver(job).await })
    }

    fn on_dead(&self, job: ClaimedJob, error: String) -> BoxFuture<'static, ()> {
        let me = self.clone();
        Box::pin(async move {
            let Some(id) = job.payload["emailId"].as_str() else { return };
            if let Ok(Some(e)) = me.store.email(id).await
                && e.status == EmailStatus::Pending
            {
                let _ = me.store.record_email_attempt(id, EmailStatus::Failed, now_ms(), Some(&error), None).await;
                me.metrics.emails_failed.fetch_add(1, Relaxed);
            }
        })
    }
}

impl SendEmail {
    async fn deliver(&self, job: ClaimedJob) -> Result<(), JobError> {
        let id = job.payload["emailId"].as_str().ok_or_else(|| JobError::Fatal("payload has no emailId".into()))?;
        let email = self
            .store
            .email(id)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?
            .ok_or_else(|| JobError::Fatal(format!("email {id} is not stored")))?;
        if email.status != EmailStatus::Pending {
            return Ok(());
        }
        let outgoing = OutgoingEmail {
            message_id: email.message_id.clone(),
            from: email.sender.clone(),
            to: email.recipients.clone(),
            subject: email.subject.clone(),
            text: email.text.clone(),
            html: email.html.clone(),
        };
        let result = self.mailer.send(&outgoing).await;
        let now = now_ms();
        let record = |status, error: Option<&str>, detail: Option<&str>| {
            let store = self.store.clone();
            let id = email.id.clone();
            let error = error.map(str::to_owned);
            let detail = detail.map(str::to_owned);
            async move { store.record_email_attempt(&id, status, now, error.as_deref(), detail.as_deref()).await }
        };
        match result {
            Ok(delivered) => {
                self.metrics.emails_sent.fetch_add(1, Relaxed);
                tracing::info!(email_id = %email.id, call_sid = ?email.call_sid, detail = %delivered.detail, to = ?email.recipients, "email delivered");
                // If this write fails the job retries and sends again: the same Message-ID, so
                // the reader's client shows one message.
                record(EmailStatus::Sent, None, Some(&delivered.detail))
                    .await
                    .map_err(|e| JobError::retry(e.to_string()))
            }
            Err(SendError::Permanent(msg)) => {
                self.metrics.emails_rejected.fetch_add(1, Relaxed);
                tracing::error!(email_id = %email.id, call_sid = ?email.call_sid, error = %msg, "email rejected by the server: not retried");
                record(EmailStatus::Rejected, Some(&msg), None).await.map_err(|e| JobError::retry(e.to_string()))
            }
            Err(SendError::Transient(msg)) => {
                let age = Duration::from_millis(now.saturating_sub(email.created_at_ms));
                if age >= self.give_up_after || job.is_last_attempt() {
                    self.metrics.emails_failed.fetch_add(1, Relaxed);
                    tracing::error!(email_id = %email.id, call_sid = ?email.call_sid, error = %msg, age_secs = age.as_secs(), "email undeliverable: giving up");
                    record(EmailStatus::Failed, Some(&msg), None).await.map_err(|e| JobError::retry(e.to_string()))?;
                    return Err(JobError::Fatal(format!("undeliverable after {} s: {msg}", age.as_secs())));
                }
                self.metrics.email_attempt_failures.fetch_add(1, Relaxed);
                record(EmailStatus::Pending, Some(&msg), None).await.map_err(|e| JobError::retry(e.to_string()))?;
                Err(JobError::retry(msg))
            }
        }
    }
}
