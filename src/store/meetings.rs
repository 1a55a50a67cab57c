//! Meetings: what a team created, the recording waiting for its job, and the artifacts
//! (transcript, summary, tasks). Every query takes the tenant, except the job's own reads.

use sqlx::AssertSqlSafe;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::jobs::NewJob;
use super::{Result, Store, to_i64, to_u64};

#[derive(Debug, Clone)]
pub struct NewMeeting {
    pub id: String,
    pub tenant_id: String,
    pub title: String,
    pub scheduled_at_ms: Option<u64>,
    pub public_join: bool,
    pub jitsi_room_name: String,
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MeetingRow {
    pub id: String,
    pub tenant_id: String,
    pub title: String,
    pub scheduled_at_ms: Option<u64>,
    pub public_join: bool,
    pub jitsi_room_name: String,
    /// `created`, `processing`, `ready` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub audio_blob_id: Option<String>,
    pub audio_name: Option<String>,
    pub audio_mime: Option<String>,
    pub audio_bytes: Option<u64>,
    pub audio_duration_ms: Option<u64>,
    pub language: Option<String>,
    pub transcript_json: Option<String>,
    pub summary_json: Option<String>,
    pub tasks_json: Option<String>,
    pub tasks_edited: bool,
    pub summary_tokens: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub processed_at_ms: Option<u64>,
}

/// What a finished job stores.
#[derive(Debug, Clone, Default)]
pub struct MeetingArtifacts {
    pub language: Option<String>,
    pub duration_ms: Option<u64>,
    pub transcript_json: String,
    pub summary_json: String,
    /// The model's tasks; kept out when a person has edited the tasks.
    pub tasks_json: String,
    pub summary_tokens: u64,
}

#[derive(Debug, Clone)]
pub struct MeetingPage {
    pub meetings: Vec<MeetingRow>,
    /// `(created_at_ms, id)` of the last meeting, when there are more.
    pub next: Option<(u64, String)>,
}

const COLUMNS: &str = "id, tenant_id, title, scheduled_at_ms, public_join, jitsi_room_name, status, error, \
     audio_blob_id, audio_name, audio_mime, audio_bytes, audio_duration_ms, language, transcript_json, summary_json, \
     tasks_json, tasks_edited, summary_tokens, created_at_ms, updated_at_ms, processed_at_ms";

impl Store {
    pub async fn insert_meeting(&self, m: &NewMeeting) -> Result<()> {
        sqlx::query(
            "INSERT INTO meetings (id, tenant_id, title, scheduled_at_ms, public_join, jitsi_room_name, status, \
             created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, 'created', $7, $8)",
        )
        .bind(&m.id)
        .bind(&m.tenant_id)
        .bind(&m.title)
        .bind(m.scheduled_at_ms.map(to_i64))
        .bind(i64::from(m.public_join))
        .bind(&m.jitsi_room_name)
        .bind(to_i64(m.created_at_ms))
        .bind(to_i64(m.created_at_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A meeting by id, only within `tenant` when given.
    pub async fn meeting(&self, tenant: Option<&str>, id: &str) -> Result<Option<MeetingRow>> {
        let row = match tenant {
            Some(t) => {
                sqlx::query(AssertSqlSafe(format!("SELECT {COLUMNS} FROM meetings WHERE id = $1 AND tenant_id = $2")))
                    .bind(id)
                    .bind(t)
                    .fetch_optional(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(AssertSqlSafe(format!("SELECT {COLUMNS} FROM meetings WHERE id = $1")))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        row.map(|r| meeting_row(&r)).transpose()
    }

    /// Newest first.
    pub async fn list_meetings(&self, tenant: &str, after: Option<(u64, &str)>, limit: u32) -> Result<MeetingPage> {
        let rows =
            match after {
                None => sqlx::query(AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM meetings WHERE tenant_id = $1 ORDER BY created_at_ms DESC, id DESC LIMIT $2"
                )))
                .bind(tenant)
                .bind(i64::from(limit) + 1)
                .fetch_all(&self.pool)
                .await?,
                Some((at, id)) => {
                    sqlx::query(AssertSqlSafe(format!(
                        "SELECT {COLUMNS} FROM meetings WHERE tenant_id = $1 AND (created_at_ms < $2 OR \
                     (created_at_ms = $3 AND id < $4)) ORDER BY created_at_ms DESC, id DESC LIMIT $5"
                    )))
                    .bind(tenant)
                    .bind(to_i64(at))
                    .bind(to_i64(at))
                    .bind(id)
                    .bind(i64::from(limit) + 1)
                    .fetch_all(&self.pool)
                    .await?
                }
            };
        let mut meetings = rows.iter().map(meeting_row).collect::<Result<Vec<_>>>()?;
        let next = if meetings.len() > limit as usize {
            meetings.truncate(limit as usize);
            meetings.last().map(|m| (m.created_at_ms, m.id.clone()))
        } else {
            None
        };
        Ok(MeetingPage { meetings, next })
    }

    /// Attaches an uploaded recording and enqueues its job, unless the meeting is already
    /// processing (false: the caller answers 409 and drops the blob).
    #[allow(clippy::too_many_arguments)]
    pub async fn start_meeting_processing(
        &self,
        tenant: &str,
        id: &str,
        blob_id: &str,
        name: &str,
        mime: &str,
        bytes: u64,
        duration_ms: Option<u64>,
        job: &NewJob,
        now_ms: u64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let old: Option<String> = sqlx::query("SELECT audio_blob_id FROM meetings WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?
            .and_then(|r| r.try_get("audio_blob_id").ok().flatten());
        let r = sqlx::query(
            "UPDATE meetings SET status = 'processing', error = NULL, audio_blob_id = $1, audio_name = $2, \
             audio_mime = $3, audio_bytes = $4, audio_duration_ms = $5, updated_at_ms = $6, transcript_json = NULL, \
             summary_json = NULL, tasks_json = NULL, tasks_edited = 0, language = NULL, processed_at_ms = NULL \
             WHERE id = $7 AND tenant_id = $8 AND status <> 'processing'",
        )
        .bind(blob_id)
        .bind(name)
        .bind(mime)
        .bind(to_i64(bytes))
        .bind(duration_ms.map(to_i64))
        .bind(to_i64(now_ms))
        .bind(id)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(old) = old.filter(|o| o != blob_id) {
            self.delete_blob_in(&mut tx, &old).await?;
        }
        self.enqueue_in(&mut tx, job, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Stores the artifacts and marks the meeting ready (the recording went with the
    /// transcript), unless another run finished or failed it meanwhile.
    pub async fn finish_meeting(&self, id: &str, a: &MeetingArtifacts, now_ms: u64) -> Result<()> {
        sqlx::query(
            "UPDATE meetings SET status = 'ready', error = NULL, language = COALESCE($1, language), \
             audio_duration_ms = COALESCE($2, audio_duration_ms), transcript_json = $3, summary_json = $4, \
             tasks_json = CASE WHEN tasks_edited = 1 THEN tasks_json ELSE $5 END, summary_tokens = summary_tokens + $6, \
             audio_blob_id = NULL, updated_at_ms = $7, processed_at_ms = $8 WHERE id = $9 AND status = 'processing'",
        )
        .bind(a.language.as_deref())
        .bind(a.duration_ms.map(to_i64))
        .bind(&a.transcript_json)
        .bind(&a.summary_json)
        .bind(&a.tasks_json)
        .bind(to_i64(a.summary_tokens))
        .bind(to_i64(now_ms))
        .bind(to_i64(now_ms))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores the transcript and deletes the recording it came from (the summary follows).
    pub async fn save_meeting_transcript(
        &self,
        id: &str,
        blob_id: &str,
        transcript_json: &str,
        language: Option<&str>,
        duration_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE meetings SET transcript_json = $1, language = COALESCE($2, language), \
             audio_duration_ms = COALESCE($3, audio_duration_ms), audio_blob_id = NULL, updated_at_ms = $4 WHERE id = $5",
        )
        .bind(transcript_json)
        .bind(language)
        .bind(duration_ms.map(to_i64))
        .bind(to_i64(now_ms))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        self.delete_blob_in(&mut tx, blob_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks the meeting failed with a message for people, and deletes the recording.
    pub async fn fail_meeting(&self, id: &str, blob_id: Option<&str>, error: &str, now_ms: u64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query(
            "UPDATE meetings SET status = 'failed', error = $1, audio_blob_id = NULL, updated_at_ms = $2, \
             processed_at_ms = $3 WHERE id = $4 AND status = 'processing'",
        )
        .bind(error)
        .bind(to_i64(now_ms))
        .bind(to_i64(now_ms))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            // Finished (or failed) by another run meanwhile: keep its outcome.
            tx.rollback().await?;
            return Ok(());
        }
        if let Some(b) = blob_id {
            self.delete_blob_in(&mut tx, b).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the tasks with a person's edit (only once the meeting is ready).
    pub async fn set_meeting_tasks(&self, tenant: &str, id: &str, tasks_json: &str, now_ms: u64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE meetings SET tasks_json = $1, tasks_edited = 1, updated_at_ms = $2 \
             WHERE id = $3 AND tenant_id = $4 AND status = 'ready'",
        )
        .bind(tasks_json)
        .bind(to_i64(now_ms))
        .bind(id)
        .bind(tenant)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Queues a new summary of the stored transcript (false unless the meeting has one and is
    /// not processing).
    pub async fn request_meeting_summary(&self, tenant: &str, id: &str, job: &NewJob, now_ms: u64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query(
            "UPDATE meetings SET status = 'processing', error = NULL, updated_at_ms = $1 \
             WHERE id = $2 AND tenant_id = $3 AND status IN ('ready', 'failed') AND transcript_json IS NOT NULL",
        )
        .bind(to_i64(now_ms))
        .bind(id)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        self.enqueue_in(&mut tx, job, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }
}

fn meeting_row(r: &AnyRow) -> Result<MeetingRow> {
    let opt = |c: &str| r.try_get::<Option<i64>, _>(c).map(|v| v.map(to_u64));
    Ok(MeetingRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        title: r.try_get("title")?,
        scheduled_at_ms: opt("scheduled_at_ms")?,
        public_join: r.try_get::<i64, _>("public_join")? != 0,
        jitsi_room_name: r.try_get("jitsi_room_name")?,
        status: r.try_get("status")?,
        error: r.try_get("error")?,
        audio_blob_id: r.try_get("audio_blob_id")?,
        audio_name: r.try_get("audio_name")?,
        audio_mime: r.try_get("audio_mime")?,
        audio_bytes: opt("audio_bytes")?,
        audio_duration_ms: opt("audio_duration_ms")?,
        language: r.try_get("language")?,
        transcript_json: r.try_get("transcript_json")?,
        summary_json: r.try_get("summary_json")?,
        tasks_json: r.try_get("tasks_json")?,
        tasks_edited: r.try_get::<i64, _>("tasks_edited")? != 0,
        summary_tokens: to_u64(r.try_get("summary_tokens")?),
        created_at_ms: to_u64(r.try_get("created_at_ms")?),
        updated_at_ms: to_u64(r.try_get("updated_at_ms")?),
        processed_at_ms: opt("processed_at_ms")?,
    })
}

impl Store {
    /// The shared value called `name`, set to `candidate` if no daemon has set it yet.
    pub async fn setting_or_insert(&self, name: &str, candidate: &str) -> Result<String> {
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(candidate)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1").bind(name).fetch_one(&self.pool).await?;
        Ok(row.try_get("value")?)
    }
}
