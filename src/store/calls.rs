//! Calls: the record of each finished call, its transcript turns, its summary, and the queries
//! of the calls API (history, search, analytics). Every query takes the tenant: another
//! tenant's call is simply not found.

use sqlx::AssertSqlSafe;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::jobs::NewJob;
use super::{Backend, Result, Store, to_i64, to_u64};
use crate::core::domain::call::{CallRecord, Speaker};

/// A stored call, without its turns.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRow {
    pub call_sid: String,
    pub tenant_id: String,
    pub stream_sid: String,
    pub from: String,
    pub to: String,
    pub language: String,
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    pub duration_ms: u64,
    pub status: String,
    pub end_reason: String,
    pub end_detail: Option<String>,
    pub interruptions: u64,
    pub caller_talk_ms: u64,
    pub agent_talk_ms: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub reconnects: u64,
    /// `pending`, `ready` or `unavailable`.
    pub summary_status: String,
    pub summary_json: Option<String>,
    pub summary_error: Option<String>,
    pub sentiment: Option<String>,
    pub has_booking: bool,
    pub summary_tokens: u64,
    /// The whole `CallRecord` as JSON (stats, reconnects, usage details).
    pub record_json: String,
}

/// One transcript turn as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRow {
    pub seq: u64,
    pub speaker: String,
    pub start_ms: u64,
    pub text: String,
    pub interrupted: bool,
    pub heard_ms: Option<u64>,
    pub generated_ms: Option<u64>,
    pub generated_text: Option<String>,
}

/// What the summary job writes back.
#[derive(Debug, Clone)]
pub struct CallSummaryUpdate {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    pub summary_json: Option<String>,
    /// Searchable text of the summary.
    pub summary_text: Option<String>,
    pub sentiment: Option<String>,
    pub has_booking: bool,
    pub error: Option<String>,
    pub tokens: u64,
}

/// Filters of `GET /api/calls`.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    pub status: Option<String>,
}

/// Keyset position: the last call of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub started_at_ms: u64,
    pub call_sid: String,
}

#[derive(Debug, Clone)]
pub struct CallPage {
    pub calls: Vec<CallRow>,
    pub next: Option<Cursor>,
}

/// One search result. The snippet marks matches with `\u{2}` … `\u{3}`.
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub call: CallRow,
    pub score: f64,
    pub snippet: String,
}

/// Per UTC day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnalyticsDay {
    /// Days since the Unix epoch.
    pub day: i64,
    pub calls: u64,
    pub duration_ms: u64,
    pub caller_talk_ms: u64,
    pub agent_talk_ms: u64,
    pub silence_ms: u64,
    pub interruptions: u64,
    pub bookings: u64,
    pub positive: u64,
    pub neutral: u64,
    pub negative: u64,
    pub unknown_sentiment: u64,
    pub failed: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub summary_tokens: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Analytics {
    pub days: Vec<AnalyticsDay>,
}

const COLUMNS: &str = "call_sid, tenant_id, stream_sid, from_number, to_number, language, started_at_ms, ended_at_ms, \
     duration_ms, status, end_reason, end_detail, interruptions, caller_talk_ms, agent_talk_ms, input_tokens, \
     output_tokens, total_tokens, reconnects, summary_status, summary_json, summary_error, sentiment, has_booking, \
     summary_tokens, record_json";

/// PostgreSQL text-search configuration for a tenant language.
fn ts_config(language: &str) -> &'static str {
    match language.split(['-', '_']).next().unwrap_or("").to_ascii_lowercase().as_str() {
        "it" => "italian",
        "fr" => "french",
        "en" => "english",
        "de" => "german",
        "es" => "spanish",
        "pt" => "portuguese",
        "nl" => "dutch",
        _ => "simple",
    }
}

/// The transcript as one searchable text.
pub fn transcript_text(record: &CallRecord) -> String {
    let mut s = String::new();
    for t in &record.transcript {
        s.push_str(match t.speaker {
            Speaker::Caller => "Caller: ",
            Speaker::Agent => "Agent: ",
        });
        s.push_str(&t.text);
        s.push('\n');
    }
    s
}

impl Store {
    /// Stores a finished call with its turns and enqueues `job` in the same transaction,
    /// exactly once per CallSid: a second record for the same call changes nothing and
    /// returns false.
    pub async fn insert_call(&self, record: &CallRecord, language: &str, job: &NewJob, now_ms: u64) -> Result<bool> {
        let record_json = serde_json::to_string(record).map_err(|e| super::StoreError::Corrupt(e.to_string()))?;
        let transcript = transcript_text(record);
        let mut tx = self.begin_write().await?;
        let cfg = match self.backend {
            Backend::Postgres => ", ts_config",
            Backend::Sqlite => "",
        };
        let cfg_val = match self.backend {
            Backend::Postgres => ", CAST($27 AS regconfig)",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "INSERT INTO calls (call_sid, tenant_id, stream_sid, from_number, to_number, language, started_at_ms, \
             ended_at_ms, duration_ms, status, end_reason, end_detail, interruptions, caller_talk_ms, agent_talk_ms, \
             input_tokens, output_tokens, total_tokens, reconnects, record_json, transcript_text, summary_status, \
             has_booking, summary_tokens, created_at_ms, sentiment{cfg}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, \
             $22, $23, $24, $25, $26{cfg_val}) ON CONFLICT (call_sid) DO NOTHING"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(&record.call_sid)
            .bind(&record.tenant_id)
            .bind(&record.stream_sid)
            .bind(&record.from)
            .bind(&record.to)
            .bind(language)
            .bind(to_i64(record.started_at_ms))
            .bind(to_i64(record.ended_at_ms))
            .bind(to_i64(record.duration_ms))
            .bind(record.end_reason.outcome())
            .bind(record.end_reason.as_str())
            .bind(record.end_detail.as_deref())
            .bind(i64::from(record.interruptions))
            .bind(to_i64(record.caller_talk_ms))
            .bind(to_i64(record.agent_talk_ms))
            .bind(to_i64(record.usage.input_tokens))
            .bind(to_i64(record.usage.output_tokens))
            .bind(to_i64(record.usage.total_tokens))
            .bind(to_i64(record.reconnects.len() as u64))
            .bind(&record_json)
            .bind(&transcript)
            .bind("pending")
            .bind(0_i64)
            .bind(0_i64)
            .bind(to_i64(now_ms))
            .bind(None::<String>);
        if self.backend == Backend::Postgres {
            q = q.bind(ts_config(language));
        }
        if q.execute(&mut *tx).await?.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for (seq, t) in record.transcript.iter().enumerate() {
            sqlx::query(
                "INSERT INTO call_turns (call_sid, seq, speaker, start_ms, text, interrupted, heard_ms, generated_ms, \
                 generated_text) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&record.call_sid)
            .bind(to_i64(seq as u64))
            .bind(match t.speaker {
                Speaker::Caller => "caller",
                Speaker::Agent => "agent",
            })
            .bind(to_i64(t.start_ms))
            .bind(&t.text)
            .bind(i64::from(t.interrupted))
            .bind(t.heard_ms.map(to_i64))
            .bind(t.generated_ms.map(to_i64))
            .bind(t.generated_text.as_deref())
            .execute(&mut *tx)
            .await?;
        }
        if self.backend == Backend::Sqlite {
            sqlx::query("INSERT INTO calls_fts (call_sid, tenant_id, transcript, summary) VALUES ($1, $2, $3, '')")
                .bind(&record.call_sid)
                .bind(&record.tenant_id)
                .bind(&transcript)
                .execute(&mut *tx)
                .await?;
        }
        self.enqueue_in(&mut tx, job, now_ms).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A call by CallSid, only within `tenant` when given.
    pub async fn call(&self, tenant: Option<&str>, call_sid: &str) -> Result<Option<CallRow>> {
        let row = match tenant {
            Some(t) => {
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM calls WHERE call_sid = $1 AND tenant_id = $2"
                )))
                .bind(call_sid)
                .bind(t)
                .fetch_optional(&self.pool)
                .await?
            }
            None => {
                sqlx::query(AssertSqlSafe(format!("SELECT {COLUMNS} FROM calls WHERE call_sid = $1")))
                    .bind(call_sid)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        row.map(|r| call_row(&r)).transpose()
    }

    pub async fn call_turns(&self, call_sid: &str) -> Result<Vec<TurnRow>> {
        let rows = sqlx::query(
            "SELECT seq, speaker, start_ms, text, interrupted, heard_ms, generated_ms, generated_text FROM call_turns \
             WHERE call_sid = $1 ORDER BY seq",
        )
        .bind(call_sid)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TurnRow {
                    seq: to_u64(r.try_get("seq")?),
                    speaker: r.try_get("speaker")?,
                    start_ms: to_u64(r.try_get("start_ms")?),
                    text: r.try_get("text")?,
                    interrupted: r.try_get::<i64, _>("interrupted")? != 0,
                    heard_ms: r.try_get::<Option<i64>, _>("heard_ms")?.map(to_u64),
                    generated_ms: r.try_get::<Option<i64>, _>("generated_ms")?.map(to_u64),
                    generated_text: r.try_get("generated_text")?,
                })
            })
            .collect()
    }

    /// Writes the summary outcome and, in the same transaction, the email and its delivery job.
    /// The email is keyed by its Message-ID: writing it twice keeps the first.
    pub async fn save_summary(
        &self,
        call_sid: &str,
        update: &CallSummaryUpdate,
        email: Option<(&super::NewEmail, &NewJob)>,
        now_ms: u64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE calls SET summary_status = $1, summary_json = $2, summary_text = $3, sentiment = $4, \
             has_booking = $5, summary_error = $6, summary_tokens = $7 WHERE call_sid = $8 \
             AND summary_status = 'pending'",
        )
        .bind(update.status)
        .bind(update.summary_json.as_deref())
        .bind(update.summary_text.as_deref())
        .bind(update.sentiment.as_deref())
        .bind(i64::from(update.has_booking))
        .bind(update.error.as_deref())
        .bind(to_i64(update.tokens))
        .bind(call_sid)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            // Summarized already (by an earlier run): its summary and email stand.
            tx.rollback().await?;
            return Ok(());
        }
        if self.backend == Backend::Sqlite {
            sqlx::query("UPDATE calls_fts SET summary = $1 WHERE call_sid = $2")
                .bind(update.summary_text.as_deref().unwrap_or(""))
                .bind(call_sid)
                .execute(&mut *tx)
                .await?;
        }
        if let Some((email, job)) = email
            && self.insert_email_in(&mut tx, email).await?
        {
            self.enqueue_in(&mut tx, job, now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Newest first, `limit` per page, continuing after `cursor`.
    pub async fn list_calls(
        &self,
        tenant: &str,
        filter: &CallFilter,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<CallPage> {
        let mut sql = format!("SELECT {COLUMNS} FROM calls WHERE tenant_id = $1");
        let mut ints: Vec<(usize, i64)> = Vec::new();
        let mut texts: Vec<(usize, String)> = vec![(1, tenant.to_owned())];
        let mut n = 1;
        let mut next = |sql: &mut String, clause: &str| {
            n += 1;
            sql.push_str(&clause.replace("$?", &format!("${n}")));
            n
        };
        if let Some(f) = filter.from_ms {
            let i = next(&mut sql, " AND started_at_ms >= $?");
            ints.push((i, to_i64(f)));
        }
        if let Some(t) = filter.to_ms {
            let i = next(&mut sql, " AND started_at_ms < $?");
            ints.push((i, to_i64(t)));
        }
        if let Some(s) = &filter.status {
            let i = next(&mut sql, " AND status = $?");
            texts.push((i, s.clone()));
        }
        if let Some(c) = cursor {
            let a = next(&mut sql, " AND (started_at_ms < $?");
            let b = next(&mut sql, " OR (started_at_ms = $?");
            let d = next(&mut sql, " AND call_sid < $?))");
            ints.push((a, to_i64(c.started_at_ms)));
            ints.push((b, to_i64(c.started_at_ms)));
            texts.push((d, c.call_sid.clone()));
        }
        let li = next(&mut sql, " ORDER BY started_at_ms DESC, call_sid DESC LIMIT $?");
        ints.push((li, i64::from(limit) + 1));
        // Bind in placeholder order.
        let mut binds: Vec<(usize, Result<i64, String>)> =
            ints.into_iter().map(|(i, v)| (i, Ok(v))).chain(texts.into_iter().map(|(i, v)| (i, Err(v)))).collect();
        binds.sort_by_key(|(i, _)| *i);
        let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
        for (_, b) in binds {
            q = match b {
                Ok(v) => q.bind(v),
                Err(s) => q.bind(s),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut calls = rows.iter().map(call_row).collect::<Result<Vec<_>>>()?;
        let next = if calls.len() > limit as usize {
            calls.truncate(limit as usize);
            calls.last().map(|c| Cursor { started_at_ms: c.started_at_ms, call_sid: c.call_sid.clone() })
        } else {
            None
        };
        Ok(CallPage { calls, next })
    }

    /// Full-text search over transcripts and summaries, best first.
    pub async fn search_calls(&self, tenant: &str, query: &str, limit: u32) -> Result<Vec<SearchHit>> {
        let rows = match self.backend {
            Backend::Sqlite => {
                let Some(fts) = fts5_query(query) else { return Ok(Vec::new()) };
                let cols = COLUMNS.split(", ").map(|c| format!("c.{c}")).collect::<Vec<_>>().join(", ");
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {cols}, snippet(calls_fts, -1, char(2), char(3), '…', 16) AS snip, \
                     bm25(calls_fts, 0.0, 0.0, 1.0, 2.0) AS rank \
                     FROM calls_fts JOIN calls c ON c.call_sid = calls_fts.call_sid \
                     WHERE calls_fts MATCH $1 AND calls_fts.tenant_id = $2 AND c.tenant_id = $3 \
                     ORDER BY rank, c.started_at_ms DESC LIMIT $4"
                )))
                .bind(fts)
                .bind(tenant)
                .bind(tenant)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            Backend::Postgres => {
                if query.split_whitespace().next().is_none() {
                    return Ok(Vec::new());
                }
                let cols = COLUMNS.split(", ").map(|c| format!("c.{c}")).collect::<Vec<_>>().join(", ");
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT {cols}, ts_headline(c.ts_config, coalesce(c.summary_text, '') || E'\\n' || c.transcript_text, q, $1) \
                     AS snip, CAST(-ts_rank_cd(c.search, q) AS DOUBLE PRECISION) AS rank \
                     FROM calls c CROSS JOIN LATERAL websearch_to_tsquery(c.ts_config, $2) AS q \
                     WHERE c.tenant_id = $3 AND c.search @@ q ORDER BY rank, c.started_at_ms DESC LIMIT $4"
                )))
                .bind("StartSel=\u{2}, StopSel=\u{3}, MaxWords=24, MinWords=8, MaxFragments=2, FragmentDelimiter=\" … \"")
                .bind(query)
                .bind(tenant)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(SearchHit { call: call_row(r)?, score: -r.try_get::<f64, _>("rank")?, snippet: r.try_get("snip")? })
            })
            .collect()
    }

    /// Per-day figures for `tenant` over `[from_ms, to_ms)`.
    pub async fn analytics(&self, tenant: &str, from_ms: u64, to_ms: u64) -> Result<Analytics> {
        let sum = |e: &str| format!("CAST(COALESCE(SUM({e}), 0) AS BIGINT)");
        let when = |cond: &str| sum(&format!("CASE WHEN {cond} THEN 1 ELSE 0 END"));
        let sql = format!(
            "SELECT started_at_ms / 86400000 AS day, COUNT(*) AS calls, {dur} AS duration_ms, {ct} AS caller_talk_ms, \
             {at} AS agent_talk_ms, {sil} AS silence_ms, {intr} AS interruptions, {book} AS bookings, \
             {pos} AS positive, {neu} AS neutral, {neg} AS negative, {unk} AS unknown_sentiment, {failed} AS failed, \
             {it} AS input_tokens, {ot} AS output_tokens, {st} AS summary_tokens \
             FROM calls WHERE tenant_id = $1 AND started_at_ms >= $2 AND started_at_ms < $3 \
             GROUP BY started_at_ms / 86400000 ORDER BY day",
            dur = sum("duration_ms"),
            ct = sum("caller_talk_ms"),
            at = sum("agent_talk_ms"),
            sil = sum(
                "CASE WHEN duration_ms > caller_talk_ms + agent_talk_ms THEN duration_ms - caller_talk_ms - agent_talk_ms ELSE 0 END"
            ),
            intr = sum("interruptions"),
            book = sum("has_booking"),
            pos = when("sentiment = 'positive'"),
            neu = when("sentiment = 'neutral'"),
            neg = when("sentiment = 'negative'"),
            unk = when("sentiment IS NULL"),
            failed = when("status = 'failed'"),
            it = sum("input_tokens"),
            ot = sum("output_tokens"),
            st = sum("summary_tokens"),
        );
        let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(tenant)
            .bind(to_i64(from_ms))
            .bind(to_i64(to_ms))
            .fetch_all(&self.pool)
            .await?;
        let days = rows
            .iter()
            .map(|r| {
                let g = |c: &str| r.try_get::<i64, _>(c).map(to_u64);
                Ok(AnalyticsDay {
                    day: r.try_get("day")?,
                    calls: g("calls")?,
                    duration_ms: g("duration_ms")?,
                    caller_talk_ms: g("caller_talk_ms")?,
                    agent_talk_ms: g("agent_talk_ms")?,
                    silence_ms: g("silence_ms")?,
                    interruptions: g("interruptions")?,
                    bookings: g("bookings")?,
                    positive: g("positive")?,
                    neutral: g("neutral")?,
                    negative: g("negative")?,
                    unknown_sentiment: g("unknown_sentiment")?,
                    failed: g("failed")?,
                    input_tokens: g("input_tokens")?,
                    output_tokens: g("output_tokens")?,
                    summary_tokens: g("summary_tokens")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Analytics { days })
    }
}

/// A caller's words as an FTS5 query: every word must match (the last also as a prefix).
/// Quoting each word keeps FTS5's operators (`NEAR`, `*`, `:`…) out of user input.
fn fts5_query(q: &str) -> Option<String> {
    let words: Vec<&str> = q.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).take(16).collect();
    let last = words.len().checked_sub(1)?;
    Some(
        words
            .iter()
            .enumerate()
            .map(|(i, w)| if i == last { format!("\"{w}\"*") } else { format!("\"{w}\"") })
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn call_row(r: &AnyRow) -> Result<CallRow> {
    let g = |c: &str| r.try_get::<i64, _>(c).map(to_u64);
    Ok(CallRow {
        call_sid: r.try_get("call_sid")?,
        tenant_id: r.try_get("tenant_id")?,
        stream_sid: r.try_get("stream_sid")?,
        from: r.try_get("from_number")?,
        to: r.try_get("to_number")?,
        language: r.try_get("language")?,
        started_at_ms: g("started_at_ms")?,
        ended_at_ms: g("ended_at_ms")?,
        duration_ms: g("duration_ms")?,
        status: r.try_get("status")?,
        end_reason: r.try_get("end_reason")?,
        end_detail: r.try_get("end_detail")?,
        interruptions: g("interruptions")?,
        caller_talk_ms: g("caller_talk_ms")?,
        agent_talk_ms: g("agent_talk_ms")?,
        input_tokens: g("input_tokens")?,
        output_tokens: g("output_tokens")?,
        total_tokens: g("total_tokens")?,
        reconnects: g("reconnects")?,
        summary_status: r.try_get("summary_status")?,
        summary_json: r.try_get("summary_json")?,
        summary_error: r.try_get("summary_error")?,
        sentiment: r.try_get("sentiment")?,
        has_booking: r.try_get::<i64, _>("has_booking")? != 0,
        summary_tokens: g("summary_tokens")?,
        record_json: r.try_get("record_json")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts5_queries_quote_every_word() {
        assert_eq!(fts5_query("tavolo  per 4").as_deref(), Some("\"tavolo\" \"per\" \"4\"*"));
        assert_eq!(fts5_query("NEAR(a b) OR \"x\"*").as_deref(), Some("\"NEAR\" \"a\" \"b\" \"OR\" \"x\"*"));
        assert_eq!(fts5_query("  ;; "), None);
        assert_eq!(fts5_query("prenotazione").as_deref(), Some("\"prenotazione\"*"));
    }

    #[test]
    fn languages_map_to_text_search_configs() {
        assert_eq!(ts_config("it"), "italian");
        assert_eq!(ts_config("fr-FR"), "french");
        assert_eq!(ts_config("en_GB"), "english");
        assert_eq!(ts_config("xx"), "simple");
    }
}
