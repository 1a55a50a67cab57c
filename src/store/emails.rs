//! The email outbox: each message is stored whole before any attempt to send it, and marked
//! `sent` only after the server accepted it. Delivery is driven by a job per message.

use sqlx::AssertSqlSafe;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError, to_i64, to_u64};

/// Delivery state of one email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailStatus {
    /// Waiting for (another) attempt.
    Pending,
    /// Accepted by the SMTP server (or written to the file outbox).
    Sent,
    /// Refused for good by the server (5xx); kept for operators to see.
    Rejected,
    /// Retried until the deadline without success.
    Failed,
}

impl EmailStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailStatus::Pending => "pending",
            EmailStatus::Sent => "sent",
            EmailStatus::Rejected => "rejected",
            EmailStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => EmailStatus::Pending,
            "sent" => EmailStatus::Sent,
            "rejected" => EmailStatus::Rejected,
            "failed" => EmailStatus::Failed,
            other => return Err(StoreError::Corrupt(format!("email status {other:?}"))),
        })
    }
}

/// An email to store in the outbox.
#[derive(Debug, Clone)]
pub struct NewEmail {
    pub id: String,
    pub tenant_id: String,
    pub call_sid: Option<String>,
    /// Stable per call, without angle brackets.
    pub message_id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub created_at_ms: u64,
}

#[derive(Debug, Clone)]
pub struct EmailRow {
    pub id: String,
    pub tenant_id: String,
    pub call_sid: Option<String>,
    pub message_id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub status: EmailStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The server's reply or the file written.
    pub detail: Option<String>,
    pub created_at_ms: u64,
    pub sent_at_ms: Option<u64>,
}

const COLUMNS: &str = "id, tenant_id, call_sid, message_id, sender, recipients, subject, body_text, body_html, status, \
     attempts, last_error, detail, created_at_ms, sent_at_ms";

impl Store {
    /// Stores `email` unless one with the same Message-ID exists; true if stored.
    pub(crate) async fn insert_email_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        email: &NewEmail,
    ) -> Result<bool> {
        let recipients = serde_json::to_string(&email.recipients).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let r = sqlx::query(
            "INSERT INTO emails (id, tenant_id, call_sid, message_id, sender, recipients, subject, body_text, \
             body_html, status, attempts, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $12) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(&email.id)
        .bind(&email.tenant_id)
        .bind(email.call_sid.as_deref())
        .bind(&email.message_id)
        .bind(&email.sender)
        .bind(recipients)
        .bind(&email.subject)
        .bind(&email.text)
        .bind(&email.html)
        .bind(EmailStatus::Pending.as_str())
        .bind(to_i64(email.created_at_ms))
        .bind(to_i64(email.created_at_ms))
        .execute(&mut **tx)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn email(&self, id: &str) -> Result<Option<EmailRow>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {COLUMNS} FROM emails WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| email_row(&r)).transpose()
    }

    /// The emails about one call, oldest first.
    pub async fn emails_for_call(&self, call_sid: &str) -> Result<Vec<EmailRow>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM emails WHERE call_sid = $1 ORDER BY created_at_ms, id"
        )))
        .bind(call_sid)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(email_row).collect()
    }

    /// Records one delivery attempt and its outcome.
    pub async fn record_email_attempt(
        &self,
        id: &str,
        status: EmailStatus,
        now_ms: u64,
        error: Option<&str>,
        detail: Option<&str>,
    ) -> Result<()> {
        let sent_at = (status == EmailStatus::Sent).then_some(to_i64(now_ms));
        sqlx::query(
            "UPDATE emails SET status = $1, attempts = attempts + 1, last_error = COALESCE($2, last_error), \
             detail = COALESCE($3, detail), updated_at_ms = $4, sent_at_ms = COALESCE($5, sent_at_ms) WHERE id = $6",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(detail)
        .bind(to_i64(now_ms))
        .bind(sent_at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Emails per status (metrics).
    pub async fn email_counts(&self) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM emails GROUP BY status ORDER BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("status")?, to_u64(r.try_get("n")?)))).collect()
    }
}

fn email_row(r: &AnyRow) -> Result<EmailRow> {
    let recipients: String = r.try_get("recipients")?;
    Ok(EmailRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        call_sid: r.try_get("call_sid")?,
        message_id: r.try_get("message_id")?,
        sender: r.try_get("sender")?,
        recipients: serde_json::from_str(&recipients)
            .map_err(|e| StoreError::Corrupt(format!("email recipients: {e}")))?,
        subject: r.try_get("subject")?,
        text: r.try_get("body_text")?,
        html: r.try_get("body_html")?,
        status: EmailStatus::parse(&r.try_get::<String, _>("status")?)?,
        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
        last_error: r.try_get("last_error")?,
        detail: r.try_get("detail")?,
        created_at_ms: to_u64(r.try_get("created_at_ms")?),
        sent_at_ms: r.try_get::<Option<i64>, _>("sent_at_ms")?.map(to_u64),
    })
}
