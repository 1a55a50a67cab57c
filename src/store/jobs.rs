//! The job queue: rows in `jobs`, claimed atomically with a lease.
//!
//! A claim is one statement (`UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`
//! on PostgreSQL; the same without the lock clause on SQLite, whose writers are serialised).
//! Every later change to a claimed job is fenced by its lease token, so a worker whose lease
//! expired (and whose job another daemon took) cannot complete or fail it.

use sqlx::AssertSqlSafe;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Backend, Result, Store, StoreError, to_i64};

/// A job to enqueue. `(kind, dedupe_key)` is unique: enqueuing the same key twice is a no-op.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: &'static str,
    pub dedupe_key: String,
    pub tenant_id: Option<String>,
    pub payload: serde_json::Value,
    pub run_at_ms: u64,
    pub max_attempts: u32,
}

/// A job this worker holds until `lease_until_ms`.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: String,
    pub kind: String,
    pub dedupe_key: String,
    pub tenant_id: Option<String>,
    pub payload: serde_json::Value,
    /// Including this one.
    pub attempts: u32,
    pub max_attempts: u32,
    pub lease_token: String,
}

impl ClaimedJob {
    pub fn is_last_attempt(&self) -> bool {
        self.attempts >= self.max_attempts
    }
}

/// A job as stored (operators, tests).
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub dedupe_key: String,
    pub status: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at_ms: u64,
    pub last_error: Option<String>,
}

/// Jobs per status (metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounts {
    pub queued: u64,
    pub running: u64,
    pub done: u64,
    pub dead: u64,
}

pub(crate) const QUEUED: &str = "queued";
pub(crate) const RUNNING: &str = "running";
pub(crate) const DONE: &str = "done";
pub(crate) const DEAD: &str = "dead";

impl Store {
    /// Enqueues `job` inside `tx` (the transaction that writes what the job concerns).
    /// Returns false when a job with the same kind and key already exists.
    pub(crate) async fn enqueue_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        job: &NewJob,
        now_ms: u64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO jobs (id, kind, dedupe_key, tenant_id, payload, status, attempts, max_attempts, run_at_ms, \
             created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10) \
             ON CONFLICT (kind, dedupe_key) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(job.kind)
        .bind(&job.dedupe_key)
        .bind(job.tenant_id.as_deref())
        .bind(job.payload.to_string())
        .bind(QUEUED)
        .bind(i64::from(job.max_attempts.max(1)))
        .bind(to_i64(job.run_at_ms))
        .bind(to_i64(now_ms))
        .bind(to_i64(now_ms))
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() > 0 && self.backend == Backend::Postgres {
            // Delivered at commit, to every daemon listening: the polling fallback covers a
            // daemon whose listener is down.
            sqlx::raw_sql("NOTIFY switchboard_jobs").execute(&mut **tx).await?;
        }
        Ok(done.rows_affected() > 0)
    }

    /// Enqueues on its own.
    pub async fn enqueue(&self, job: &NewJob, now_ms: u64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let added = self.enqueue_in(&mut tx, job, now_ms).await?;
        tx.commit().await?;
        Ok(added)
    }

    /// Takes the next due job of any kind (or one whose lease expired) for `lease_ms`.
    pub async fn claim_job(&self, worker: &str, now_ms: u64, lease_ms: u64) -> Result<Option<ClaimedJob>> {
        self.claim_job_of(worker, now_ms, lease_ms, &[]).await
    }

    /// Takes the next due job of one of `kinds` (all kinds if empty): a daemon only claims the
    /// jobs it has handlers for (during a rolling upgrade an older one leaves newer kinds alone).
    pub async fn claim_job_of(
        &self,
        worker: &str,
        now_ms: u64,
        lease_ms: u64,
        kinds: &[&str],
    ) -> Result<Option<ClaimedJob>> {
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let kind_filter = if kinds.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = (0..kinds.len()).map(|i| format!("${}", 10 + i)).collect();
            format!(" AND kind IN ({})", list.join(", "))
        };
        let sql = format!(
            "UPDATE jobs SET status = $1, attempts = attempts + 1, lease_token = $2, locked_by = $3, \
             lease_until_ms = $4, updated_at_ms = $5 \
             WHERE id = (SELECT id FROM jobs WHERE ((status = $6 AND run_at_ms <= $7) \
                 OR (status = $8 AND lease_until_ms < $9)){kind_filter} ORDER BY run_at_ms, id LIMIT 1{lock}) \
             RETURNING id, kind, dedupe_key, tenant_id, payload, attempts, max_attempts"
        );
        let token = uuid::Uuid::new_v4().to_string();
        let now = to_i64(now_ms);
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(RUNNING)
            .bind(&token)
            .bind(worker)
            .bind(to_i64(now_ms.saturating_add(lease_ms)))
            .bind(now)
            .bind(QUEUED)
            .bind(now)
            .bind(RUNNING)
            .bind(now);
        for k in kinds {
            q = q.bind(*k);
        }
        let row = q.fetch_optional(&self.pool).await?;
        let Some(row) = row else { return Ok(None) };
        let payload: String = row.try_get("payload")?;
        Ok(Some(ClaimedJob {
            id: row.try_get("id")?,
            kind: row.try_get("kind")?,
            dedupe_key: row.try_get("dedupe_key")?,
            tenant_id: row.try_get("tenant_id")?,
            payload: serde_json::from_str(&payload)
                .map_err(|e| StoreError::Corrupt(format!("job payload is not JSON: {e}")))?,
            attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
            max_attempts: u32::try_from(row.try_get::<i64, _>("max_attempts")?).unwrap_or(1),
            lease_token: token,
        }))
    }

    /// Extends a lease while a long job runs. False if the lease was lost.
    pub async fn extend_lease(&self, job: &ClaimedJob, now_ms: u64, lease_ms: u64) -> Result<bool> {
        let r =
            sqlx::query("UPDATE jobs SET lease_until_ms = $1, updated_at_ms = $2 WHERE id = $3 AND lease_token = $4")
                .bind(to_i64(now_ms.saturating_add(lease_ms)))
                .bind(to_i64(now_ms))
                .bind(&job.id)
                .bind(&job.lease_token)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Marks a job done. False if the lease was lost meanwhile.
    pub async fn complete_job(&self, job: &ClaimedJob, now_ms: u64) -> Result<bool> {
        self.finish(job, DONE, now_ms, None, None).await
    }

    /// Records a failed attempt: the job runs again at `retry_at_ms`, or goes `dead` when
    /// `retry_at_ms` is `None`. False if the lease was lost meanwhile.
    pub async fn fail_job(&self, job: &ClaimedJob, now_ms: u64, error: &str, retry_at_ms: Option<u64>) -> Result<bool> {
        match retry_at_ms {
            Some(at) => self.finish(job, QUEUED, now_ms, Some(error), Some(at)).await,
            None => self.finish(job, DEAD, now_ms, Some(error), None).await,
        }
    }

    /// Gives a job back without counting the attempt (the daemon is stopping).
    pub async fn release_job(&self, job: &ClaimedJob, now_ms: u64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET status = $1, attempts = attempts - 1, run_at_ms = $2, lease_token = NULL, \
             locked_by = NULL, lease_until_ms = NULL, updated_at_ms = $3 WHERE id = $4 AND lease_token = $5",
        )
        .bind(QUEUED)
        .bind(to_i64(now_ms))
        .bind(to_i64(now_ms))
        .bind(&job.id)
        .bind(&job.lease_token)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn finish(
        &self,
        job: &ClaimedJob,
        status: &str,
        now_ms: u64,
        error: Option<&str>,
        run_at_ms: Option<u64>,
    ) -> Result<bool> {
        let finished = (status != QUEUED).then_some(to_i64(now_ms));
        let r = sqlx::query(
            "UPDATE jobs SET status = $1, last_error = COALESCE($2, last_error), run_at_ms = COALESCE($3, run_at_ms), \
             lease_token = NULL, locked_by = NULL, lease_until_ms = NULL, updated_at_ms = $4, finished_at_ms = $5 \
             WHERE id = $6 AND lease_token = $7",
        )
        .bind(status)
        .bind(error)
        .bind(run_at_ms.map(to_i64))
        .bind(to_i64(now_ms))
        .bind(finished)
        .bind(&job.id)
        .bind(&job.lease_token)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Jobs of one kind and key (tests and operators).
    pub async fn job(&self, kind: &str, dedupe_key: &str) -> Result<Option<JobRow>> {
        let row = sqlx::query(
            "SELECT id, kind, dedupe_key, status, attempts, max_attempts, run_at_ms, last_error FROM jobs \
             WHERE kind = $1 AND dedupe_key = $2",
        )
        .bind(kind)
        .bind(dedupe_key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| job_row(&r)).transpose()
    }

    /// All jobs, oldest first (tests and operators).
    pub async fn jobs(&self) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(
            "SELECT id, kind, dedupe_key, status, attempts, max_attempts, run_at_ms, last_error FROM jobs \
             ORDER BY created_at_ms, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_row).collect()
    }

    pub async fn job_counts(&self) -> Result<JobCounts> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetch_all(&self.pool).await?;
        let mut c = JobCounts::default();
        for r in rows {
            let n = super::to_u64(r.try_get::<i64, _>("n")?);
            match r.try_get::<String, _>("status")?.as_str() {
                QUEUED => c.queued = n,
                RUNNING => c.running = n,
                DONE => c.done = n,
                DEAD => c.dead = n,
                _ => {}
            }
        }
        Ok(c)
    }

    /// The earliest time a queued job becomes due (so an idle worker sleeps until then).
    pub async fn next_job_due_ms(&self) -> Result<Option<u64>> {
        let row = sqlx::query("SELECT MIN(run_at_ms) AS t FROM jobs WHERE status = $1")
            .bind(QUEUED)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("t")?.map(super::to_u64))
    }
}

fn job_row(r: &AnyRow) -> Result<JobRow> {
    Ok(JobRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        dedupe_key: r.try_get("dedupe_key")?,
        status: r.try_get("status")?,
        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
        max_attempts: u32::try_from(r.try_get::<i64, _>("max_attempts")?).unwrap_or(0),
        run_at_ms: super::to_u64(r.try_get("run_at_ms")?),
        last_error: r.try_get("last_error")?,
    })
}
