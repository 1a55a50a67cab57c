//! The calls API (JSON, camelCase, tenant API key): history, one call in full, full-text
//! search and analytics. Every query is scoped to the key's tenant: another tenant's call is
//! a 404, exactly like a call that does not exist.

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AppState;
use super::auth::TenantAuth;
use super::error::ApiError;
use crate::store::{AnalyticsDay, CallFilter, CallRow, Cursor, EmailRow, StoreError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/calls", get(list))
        .route("/api/calls/search", get(search))
        .route("/api/calls/{call_sid}", get(detail))
        .route("/api/analytics", get(analytics))
}

const DAY_MS: u64 = 86_400_000;
const MAX_LIMIT: u32 = 200;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListQuery {
    from: Option<String>,
    to: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    TenantAuth(tenant): TenantAuth,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = CallFilter {
        from_ms: q.from.as_deref().map(|s| parse_time("from", s)).transpose()?,
        to_ms: q.to.as_deref().map(|s| parse_time("to", s)).transpose()?,
        status: match q.status.as_deref() {
            None => None,
            Some(s) if crate::core::domain::call::CALL_OUTCOMES.contains(&s) => Some(s.to_owned()),
            Some(s) => {
                return Err(ApiError::bad_request(format!(
                    "status {s:?}: expected one of {}",
                    crate::core::domain::call::CALL_OUTCOMES.join(", ")
                )));
            }
        },
    };
    let limit = limit(q.limit, 50)?;
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let page = state.store.list_calls(&tenant.id, &filter, cursor.as_ref(), limit).await.map_err(store_error)?;
    Ok(Json(json!({
        "calls": page.calls.iter().map(call_item).collect::<Vec<_>>(),
        "nextCursor": page.next.as_ref().map(encode_cursor),
    })))
}

async fn detail(
    State(state): State<AppState>,
    TenantAuth(tenant): TenantAuth,
    Path(call_sid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let call = state.store.call(Some(&tenant.id), &call_sid).await.map_err(store_error)?.ok_or_else(not_found)?;
    let turns = state.store.call_turns(&call.call_sid).await.map_err(store_error)?;
    let emails = state.store.emails_for_call(&call.call_sid).await.map_err(store_error)?;
    let record: Value = serde_json::from_str(&call.record_json).unwrap_or(Value::Null);
    let mut body = call_item(&call);
    let extra = json!({
        "streamSid": call.stream_sid,
        "endDetail": call.end_detail,
        "analytics": {
            "callerTalkMs": call.caller_talk_ms,
            "agentTalkMs": call.agent_talk_ms,
            "silenceMs": call.duration_ms.saturating_sub(call.caller_talk_ms + call.agent_talk_ms),
            "interruptions": call.interruptions,
            "reconnects": call.reconnects,
        },
        "usage": {
            "inputTokens": call.input_tokens,
            "outputTokens": call.output_tokens,
            "totalTokens": call.total_tokens,
            "summaryTokens": call.summary_tokens,
        },
        "summary": call.summary_json.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok()).map(camelize),
        "summaryError": call.summary_error,
        "transcript": turns.iter().map(|t| json!({
            "speaker": t.speaker,
            "startMs": t.start_ms,
            "text": t.text,
            "interrupted": t.interrupted,
            "heardMs": t.heard_ms,
            "generatedMs": t.generated_ms,
            "generatedText": t.generated_text,
        })).collect::<Vec<_>>(),
        "email": emails.last().map(email_state),
        "stats": record.get("stats").cloned().unwrap_or(Value::Null),
        "reconnectLog": record.get("reconnects").cloned().unwrap_or(Value::Null),
        "bookings": record.get("bookings").cloned().unwrap_or(json!([])),
        "transferredTo": record.get("transferredTo").cloned().unwrap_or(Value::Null),
    });
    merge(&mut body, extra);
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SearchQuery {
    q: Option<String>,
    limit: Option<u32>,
}

async fn search(
    State(state): State<AppState>,
    TenantAuth(tenant): TenantAuth,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let text = q.q.as_deref().map(str::trim).unwrap_or("");
    if text.is_empty() {
        return Err(ApiError::bad_request("q: a search text is required"));
    }
    if text.chars().count() > 200 {
        return Err(ApiError::bad_request("q: at most 200 characters"));
    }
    let limit = limit(q.limit, 20)?;
    let hits = state.store.search_calls(&tenant.id, text, limit).await.map_err(store_error)?;
    Ok(Json(json!({
        "query": text,
        "results": hits.iter().map(|h| {
            let mut item = call_item(&h.call);
            merge(&mut item, json!({
                "score": h.score,
                "snippet": h.snippet.replace(['\u{2}', '\u{3}'], ""),
                "snippetHtml": snippet_html(&h.snippet),
            }));
            item
        }).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AnalyticsQuery {
    from: Option<String>,
    to: Option<String>,
}

async fn analytics(
    State(state): State<AppState>,
    TenantAuth(tenant): TenantAuth,
    q: Result<Query<AnalyticsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let now = crate::bridge::unix_ms();
    let to = q.to.as_deref().map(|s| parse_time("to", s)).transpose()?.unwrap_or(now - now % DAY_MS + DAY_MS);
    let from = q.from.as_deref().map(|s| parse_time("from", s)).transpose()?.unwrap_or(to.saturating_sub(30 * DAY_MS));
    if from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    if to - from > 400 * DAY_MS {
        return Err(ApiError::bad_request("the period is at most 400 days"));
    }
    let a = state.store.analytics(&tenant.id, from, to).await.map_err(store_error)?;
    // Every day of the period, with zeros where there were no calls (charts want a full axis).
    let by_day: HashMap<i64, &AnalyticsDay> = a.days.iter().map(|d| (d.day, d)).collect();
    let first = (from / DAY_MS) as i64;
    let last = ((to - 1) / DAY_MS) as i64;
    let empty = AnalyticsDay::default();
    let days: Vec<Value> = (first..=last)
        .map(|day| {
            let d = by_day.get(&day).copied().unwrap_or(&empty);
            let mut v = figures(std::slice::from_ref(d));
            merge(&mut v, json!({ "date": date_of_day(day) }));
            v
        })
        .collect();
    let totals = figures(&a.days);
    Ok(Json(json!({
        "tenant": tenant.id,
        "from": rfc3339(from),
        "to": rfc3339(to),
        "totals": totals,
        "days": days,
    })))
}

/// The figures of one or several days together.
fn figures(days: &[AnalyticsDay]) -> Value {
    let s = |f: fn(&AnalyticsDay) -> u64| days.iter().map(f).sum::<u64>();
    let calls = s(|d| d.calls);
    let avg = |total: u64| total.checked_div(calls).unwrap_or(0);
    json!({
        "calls": calls,
        "failedCalls": s(|d| d.failed),
        "totalDurationMs": s(|d| d.duration_ms),
        "avgDurationMs": avg(s(|d| d.duration_ms)),
        "callerTalkMs": s(|d| d.caller_talk_ms),
        "agentTalkMs": s(|d| d.agent_talk_ms),
        "silenceMs": s(|d| d.silence_ms),
        "avgCallerTalkMs": avg(s(|d| d.caller_talk_ms)),
        "avgAgentTalkMs": avg(s(|d| d.agent_talk_ms)),
        "avgSilenceMs": avg(s(|d| d.silence_ms)),
        "interruptions": s(|d| d.interruptions),
        "bookings": s(|d| d.bookings),
        "sentiment": {
            "positive": s(|d| d.positive),
            "neutral": s(|d| d.neutral),
            "negative": s(|d| d.negative),
            "unknown": s(|d| d.unknown_sentiment),
        },
        "tokens": {
            "realtimeInput": s(|d| d.input_tokens),
            "realtimeOutput": s(|d| d.output_tokens),
            "summary": s(|d| d.summary_tokens),
        },
    })
}

/// The fields every list shows.
fn call_item(c: &CallRow) -> Value {
    let summary: Option<Value> = c.summary_json.as_deref().and_then(|s| serde_json::from_str(s).ok());
    let field = |k: &str| summary.as_ref().and_then(|s| s.get(k)).cloned().unwrap_or(Value::Null);
    json!({
        "callSid": c.call_sid,
        "from": c.from,
        "to": c.to,
        "language": c.language,
        "startedAt": rfc3339(c.started_at_ms),
        "endedAt": rfc3339(c.ended_at_ms),
        "durationMs": c.duration_ms,
        "status": c.status,
        "endReason": c.end_reason,
        "interruptions": c.interruptions,
        "summaryStatus": c.summary_status,
        "gist": field("summary"),
        "intent": field("intent"),
        "sentiment": c.sentiment,
        "hasBooking": c.has_booking,
    })
}

fn email_state(e: &EmailRow) -> Value {
    json!({
        "status": e.status.as_str(),
        "messageId": e.message_id,
        "recipients": e.recipients,
        "subject": e.subject,
        "attempts": e.attempts,
        "lastError": e.last_error,
        "detail": e.detail,
        "createdAt": rfc3339(e.created_at_ms),
        "sentAt": e.sent_at_ms.map(rfc3339),
    })
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, extra) {
        a.extend(b);
    }
}

/// snake_case keys (as the model writes them) to camelCase (as the API speaks).
pub fn camelize(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let mut out = String::with_capacity(k.len());
                    let mut up = false;
                    for ch in k.chars() {
                        if ch == '_' {
                            up = true;
                        } else if up {
                            out.extend(ch.to_uppercase());
                            up = false;
                        } else {
                            out.push(ch);
                        }
                    }
                    (out, camelize(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(camelize).collect()),
        other => other,
    }
}

/// The snippet escaped for HTML, matches in `<mark>`.
fn snippet_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\u{2}' => out.push_str("<mark>"),
            '\u{3}' => out.push_str("</mark>"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn limit(v: Option<u32>, default: u32) -> Result<u32, ApiError> {
    match v {
        None => Ok(default),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(format!("limit: expected 1..={MAX_LIMIT}"))),
    }
}

/// RFC 3339 (`2026-11-21T20:00:00Z`), a date (`2026-11-21`, UTC midnight) or Unix ms.
fn parse_time(name: &str, s: &str) -> Result<u64, ApiError> {
    let bad = || ApiError::bad_request(format!("{name}: expected RFC 3339, YYYY-MM-DD or Unix milliseconds"));
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let t = if s.len() == 10 {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(s, &fmt).map_err(|_| bad())?.midnight().assume_utc()
    } else {
        OffsetDateTime::parse(s, &Rfc3339).map_err(|_| bad())?
    };
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())
}

pub fn rfc3339(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn date_of_day(day: i64) -> String {
    rfc3339(u64::try_from(day).unwrap_or(0) * DAY_MS).get(..10).unwrap_or_default().to_owned()
}

fn encode_cursor(c: &Cursor) -> String {
    encode_key(c.started_at_ms, &c.call_sid)
}

fn decode_cursor(s: &str) -> Result<Cursor, ApiError> {
    decode_key(s).map(|(started_at_ms, call_sid)| Cursor { started_at_ms, call_sid })
}

/// An opaque page cursor for the keyset `(time, id)` of the last row of a page.
pub(super) fn encode_key(t: u64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{t}:{id}"))
}

pub(super) fn decode_key(s: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::bad_request("cursor: not a cursor from a previous page");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (t, id) = raw.split_once(':').ok_or_else(bad)?;
    Ok((t.parse().map_err(|_| bad())?, id.to_owned()))
}

fn not_found() -> ApiError {
    ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", "no such call")
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store error");
    ApiError::unavailable("store_unavailable", "the database is not answering; try again")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let c = Cursor { started_at_ms: 1_790_000_000_000, call_sid: "CA:x".into() };
        assert_eq!(decode_cursor(&encode_cursor(&c)).unwrap(), c);
        assert!(decode_cursor("!!").is_err());
        assert!(decode_cursor(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("nope")).is_err());
    }

    #[test]
    fn times_parse_in_three_forms() {
        assert_eq!(parse_time("from", "1790000000000").unwrap(), 1_790_000_000_000);
        assert_eq!(parse_time("from", "1970-01-02").unwrap(), DAY_MS);
        assert_eq!(parse_time("from", "1970-01-01T00:00:01+00:00").unwrap(), 1_000);
        assert!(parse_time("from", "yesterday").is_err());
        assert_eq!(rfc3339(DAY_MS), "1970-01-02T00:00:00Z");
        assert_eq!(date_of_day(1), "1970-01-02");
    }

    #[test]
    fn snippets_escape_everything_but_the_marks() {
        assert_eq!(
            snippet_html("a <b> \u{2}tavolo\u{3} & \"x\""),
            "a &lt;b&gt; <mark>tavolo</mark> &amp; &quot;x&quot;"
        );
        assert_eq!(camelize(json!({"party_size": 4, "a_b": [{"c_d": 1}]})), json!({"partySize": 4, "aB": [{"cD": 1}]}));
    }
}
