//! The meetings API (JSON, camelCase, tenant API key; routes and field names kept compatible
//! with the frontend that already calls them).
//!
//! Uploads are streamed to a spool file (counting bytes, 413 past the limit), checked to be
//! decodable audio (415 otherwise), copied into the database in chunks, and only then attached
//! to the meeting together with its job, in one transaction (409 if it is already processing).
//! Nothing holds a whole recording in memory.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Multipart, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use super::AppState;
use super::auth::{TenantAuth, Unauthorized, bearer, find_tenant};
use super::calls::{camelize, decode_key, encode_key, limit, rfc3339, store_error};
use super::error::ApiError;
use crate::core::domain::meeting::{TaskInput, jitsi_room_name, validate_tasks};
use crate::core::domain::tenant::Tenant;
use crate::media::{RemoveOnDrop, extension_for, file_extension};
use crate::store::{MeetingRow, NewMeeting};
use crate::worker::meetings::{process_job, summarize_job};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/meetings", post(create).get(list))
        .route("/api/meetings/{id}", get(read))
        .route("/api/meetings/{id}/audio", post(upload).layer(DefaultBodyLimit::disable()))
        .route("/api/meetings/{id}/artifacts", get(artifacts))
        .route("/api/meetings/{id}/summarize", post(resummarize))
        .route("/api/meetings/{id}/tasks", post(edit_tasks))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateBody {
    title: String,
    scheduled_at: Option<String>,
    #[serde(default)]
    public_join: bool,
}

async fn create(
    State(state): State<AppState>,
    TenantAuth(tenant): TenantAuth,
    body: Result<Json<CreateBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let title = body.title.trim();
    if title.is_empty() || title.chars().count() > 300 {
        return Err(ApiError::bad_request("title: 1 to 300 characters"));
    }
    let scheduled_at_ms = body
        .scheduled_at
        .as_deref()
        .map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
                .map_err(|_| ApiError::bad_request("scheduledAt: expected an RFC 3339 date-time"))
        })
        .transpose()?;
    let id = uuid::Uuid::now_v7().to_string();
    let m = NewMeeting {
        jitsi_room_name: jitsi_room_name(&state.meetings.room_secret, &tenant.id, &id),
        id,
        tenant_id: tenant.id.clone(),
        title: title.to_owned(),
        scheduled_at_ms,
        public_join: body.public_join,
        created_at_ms: crate::bridge::unix_ms(),
    };
    state.store.insert_meeting(&m).await.map_err(store_error)?;
    let row = state.store.meeting(Some(&tenant.id), &m.id).await.map_err(store_error)?.ok_or_else(not_found)?;
    Ok((StatusCode::CREATED, Json(meeting_json(&row))))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    TenantAuth(tenant): TenantAuth,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = limit(q.limit, 50)?;
    let cursor = q.cursor.as_deref().map(decode_key).transpose()?;
    let page = state
        .store
        .list_meetings(&tenant.id, cursor.as_ref().map(|(t, id)| (*t, id.as_str())), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "meetings": page.meetings.iter().map(meeting_json).collect::<Vec<_>>(),
        "nextCursor": page.next.map(|(t, id)| encode_key(t, &id)),
    })))
}

/// The key's tenant, if the request carries a key: `None` without `Authorization`, a 401 for
/// a key that matches no tenant.
struct MaybeTenant(Option<Arc<Tenant>>);

impl FromRequestParts<AppState> for MaybeTenant {
    type Rejection = Unauthorized;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(MaybeTenant(None));
        }
        let key = bearer(parts).ok_or(Unauthorized("malformed Authorization header (Bearer <API key>)"))?;
        find_tenant(&state.calls.tenants.current(), key)
            .map(|t| MaybeTenant(Some(t)))
            .ok_or(Unauthorized("invalid API key"))
    }
}

/// The owner sees the meeting; anyone else sees only the public fields of a `publicJoin`
/// meeting (title, room, schedule: what joining needs), never its artifacts.
async fn read(
    State(state): State<AppState>,
    MaybeTenant(tenant): MaybeTenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = state.store.meeting(None, &id).await.map_err(store_error)?;
    match (row, tenant) {
        (Some(m), Some(t)) if m.tenant_id == t.id => Ok(Json(meeting_json(&m))),
        (Some(m), _) if m.public_join => Ok(Json(json!({
            "id": m.id,
            "title": m.title,
            "jitsiRoomName": m.jitsi_room_name,
            "scheduledAt": m.scheduled_at_ms.map(rfc3339),
            "publicJoin": true,
        }))),
        (_, None) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token (Authorization: Bearer <API key>)",
        )),
        _ => Err(not_found()),
    }
}

/// What the upload request carries.
struct Upload {
    path: PathBuf,
    name: String,
    mime: String,
    bytes: u64,
}

async fn upload(
    State(state): State<AppState>,
    TenantAuth(tenant): TenantAuth,
    Path(id): Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let settings = &state.calls.config.meetings;
    let m = state.store.meeting(Some(&tenant.id), &id).await.map_err(store_error)?.ok_or_else(not_found)?;
    if m.status == "processing" {
        return Err(conflict("the meeting's recording is being processed"));
    }
    let limit = settings.max_upload_bytes;
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        drain(request.into_body().into_data_stream().map(|c| c.map_err(|e| e.to_string()))).await;
        return Err(too_large(limit));
    }
    std::fs::create_dir_all(&settings.tmp_dir).map_err(|e| internal(format!("upload folder: {e}")))?;
    let spool = settings.tmp_dir.join(format!("upload-{}", uuid::Uuid::new_v4().simple()));
    let _cleanup = RemoveOnDrop(spool.clone());
    let mut upload = receive(&state, request, &spool, limit).await?;
    // The decoder takes the extension as a hint (a browser's multipart part is often just
    // application/octet-stream).
    let ext = file_extension(&upload.name, &upload.mime);
    let hinted = spool.with_extension(ext);
    std::fs::rename(&spool, &hinted).map_err(|e| internal(format!("spool file: {e}")))?;
    let _cleanup2 = RemoveOnDrop(hinted.clone());
    upload.path = hinted;
    if upload.bytes == 0 {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_audio", "the recording is empty"));
    }
    // Decodable audio, or a 415 now rather than a failed job later.
    let (path, mime) = (upload.path.clone(), upload.mime.clone());
    let info = tokio::task::spawn_blocking(move || crate::media::probe_with_hint(&path, Some(&mime)))
        .await
        .map_err(|e| internal(format!("probe task: {e}")))?
        .map_err(|e| match e {
            crate::media::MediaError::NotAudio(why) | crate::media::MediaError::Unsupported { codec: why } => {
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "not_audio",
                    format!("not a recording we can read (WAV, MP3, M4A/AAC, OGG, FLAC, WebM): {why}"),
                )
            }
            other => internal(other.to_string()),
        })?;
    let now = crate::bridge::unix_ms();
    let blob_id = uuid::Uuid::now_v7().to_string();
    let bytes = match state.store.put_blob(&blob_id, &tenant.id, &upload.path, now).await {
        Ok(b) => b,
        Err(e) => {
            let _ = state.store.delete_blob(&blob_id).await;
            return Err(store_error(e));
        }
    };
    let job = process_job(&tenant.id, &id, &blob_id, now, settings.attempts);
    let started = state
        .store
        .start_meeting_processing(
            &tenant.id,
            &id,
            &blob_id,
            &upload.name,
            &upload.mime,
            bytes,
            info.duration_ms,
            &job,
            now,
        )
        .await;
    let started = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = state.store.delete_blob(&blob_id).await;
            return Err(store_error(e));
        }
    };
    if !started {
        let _ = state.store.delete_blob(&blob_id).await;
        return Err(conflict("the meeting's recording is being processed"));
    }
    state.waker.notify_waiters();
    tracing::info!(meeting = %id, tenant = %tenant.id, bytes, codec = %info.codec, "recording accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": id,
            "status": "processing",
            "audio": { "name": upload.name, "contentType": upload.mime, "bytes": bytes, "durationMs": info.duration_ms, "codec": info.codec },
        })),
    ))
}

/// Streams the request's recording (multipart `file`, or a raw `audio/*` body) into `spool`.
async fn receive(state: &AppState, request: Request, spool: &FsPath, limit: u64) -> Result<Upload, ApiError> {
    let ct = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let media_type = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media_type == "multipart/form-data" {
        let mut mp = Multipart::from_request(request, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("multipart: {}", e.body_text())))?;
        while let Some(field) = mp.next_field().await.map_err(|e| multipart_error(&e.body_text(), limit))? {
            if field.name() != Some("file") {
                continue;
            }
            let name = field.file_name().map(sanitize_name).unwrap_or_else(|| "recording".into());
            let mime = field.content_type().map(str::to_owned).unwrap_or_else(|| "application/octet-stream".into());
            let stream = field.map(|c| c.map_err(|e| e.body_text()));
            let bytes = spool_stream(stream, spool, limit).await?;
            return Ok(Upload { path: spool.to_owned(), name, mime, bytes });
        }
        return Err(ApiError::bad_request("multipart: no `file` field"));
    }
    let raw_ok = media_type.starts_with("audio/")
        || matches!(media_type.as_str(), "video/webm" | "video/mp4" | "application/ogg");
    if !raw_ok {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send multipart/form-data with a `file` field, or the recording itself with an audio/* Content-Type",
        ));
    }
    let ext = extension_for(&media_type);
    let stream = request.into_body().into_data_stream().map(|c| c.map_err(|e| e.to_string()));
    let bytes = spool_stream(stream, spool, limit).await?;
    Ok(Upload { path: spool.to_owned(), name: format!("recording.{ext}"), mime: media_type, bytes })
}

async fn spool_stream<S, B>(mut stream: S, spool: &FsPath, limit: u64) -> Result<u64, ApiError>
where
    S: futures_util::Stream<Item = Result<B, String>> + Unpin,
    B: AsRef<[u8]>,
{
    let mut file = tokio::fs::File::create(spool).await.map_err(|e| internal(format!("spool file: {e}")))?;
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| multipart_error(&e, limit))?;
        let chunk = chunk.as_ref();
        total += chunk.len() as u64;
        if total > limit {
            drain(stream).await;
            return Err(too_large(limit));
        }
        file.write_all(chunk).await.map_err(|e| internal(format!("spool file: {e}")))?;
    }
    file.flush().await.map_err(|e| internal(format!("spool file: {e}")))?;
    Ok(total)
}

/// Reads and discards what is left of a refused upload (a bounded amount, for a bounded time),
/// so the client finishes sending and reads the 413 instead of failing on a reset connection.
async fn drain<S, B>(mut stream: S)
where
    S: futures_util::Stream<Item = Result<B, String>> + Unpin,
    B: AsRef<[u8]>,
{
    const CAP: u64 = 16 << 20;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut n = 0u64;
        while let Some(Ok(c)) = stream.next().await {
            n += c.as_ref().len() as u64;
            if n > CAP {
                break;
            }
        }
    })
    .await;
}

async fn artifacts(
    State(state): State<AppState>,
    TenantAuth(tenant): TenantAuth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let m = state.store.meeting(Some(&tenant.id), &id).await.map_err(store_error)?.ok_or_else(not_found)?;
    match m.status.as_str() {
        "processing" => Ok((StatusCode::ACCEPTED, Json(json!({ "id": m.id, "status": "processing" })))),
        "created" => Err(ApiError::new(StatusCode::CONFLICT, "no_recording", "no recording has been uploaded yet")),
        "failed" => Ok((StatusCode::OK, Json(json!({ "id": m.id, "status": "failed", "error": m.error })))),
        _ => {
            let parse = |s: &Option<String>| s.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok());
            let summary = parse(&m.summary_json).map(camelize).unwrap_or(Value::Null);
            let mut body = json!({
                "id": m.id,
                "status": "ready",
                "title": m.title,
                "language": m.language,
                "durationMs": m.audio_duration_ms,
                "transcript": parse(&m.transcript_json).unwrap_or(Value::Null),
                "summary": summary.get("summary").cloned().unwrap_or(Value::Null),
                "decisions": summary.get("decisions").cloned().unwrap_or(json!([])),
                "openQuestions": summary.get("openQuestions").cloned().unwrap_or(json!([])),
                "tasks": parse(&m.tasks_json).unwrap_or(json!([])),
                "tasksEdited": m.tasks_edited,
                "processedAt": m.processed_at_ms.map(rfc3339),
            });
            if let (Value::Object(b), Value::Object(s)) = (&mut body, &summary) {
                for (k, v) in s {
                    if !b.contains_key(k) && k != "tasks" {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
            Ok((StatusCode::OK, Json(body)))
        }
    }
}

async fn resummarize(
    State(state): State<AppState>,
    TenantAuth(tenant): TenantAuth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let m = state.store.meeting(Some(&tenant.id), &id).await.map_err(store_error)?.ok_or_else(not_found)?;
    let now = crate::bridge::unix_ms();
    let job = summarize_job(&tenant.id, &m.id, now, state.calls.config.meetings.attempts);
    if !state.store.request_meeting_summary(&tenant.id, &id, &job, now).await.map_err(store_error)? {
        return Err(conflict(match m.status.as_str() {
            "processing" => "the meeting is being processed",
            _ => "there is no transcript to summarize yet",
        }));
    }
    state.waker.notify_waiters();
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "status": "processing" }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TasksBody {
    tasks: Vec<TaskInput>,
}

async fn edit_tasks(
    State(state): State<AppState>,
    TenantAuth(tenant): TenantAuth,
    Path(id): Path<String>,
    body: Result<Json<TasksBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let m = state.store.meeting(Some(&tenant.id), &id).await.map_err(store_error)?.ok_or_else(not_found)?;
    let tasks = validate_tasks(body.tasks).map_err(|problems| ApiError::bad_request(problems.join("; ")))?;
    let json = serde_json::to_string(&tasks).map_err(|e| internal(e.to_string()))?;
    if !state.store.set_meeting_tasks(&tenant.id, &m.id, &json, crate::bridge::unix_ms()).await.map_err(store_error)? {
        return Err(conflict("tasks can be edited once the meeting is ready"));
    }
    Ok(Json(json!({ "id": id, "tasks": tasks, "tasksEdited": true })))
}

fn meeting_json(m: &MeetingRow) -> Value {
    json!({
        "id": m.id,
        "title": m.title,
        "status": m.status,
        "jitsiRoomName": m.jitsi_room_name,
        "scheduledAt": m.scheduled_at_ms.map(rfc3339),
        "publicJoin": m.public_join,
        "createdAt": rfc3339(m.created_at_ms),
        "updatedAt": rfc3339(m.updated_at_ms),
        "error": m.error,
        "audio": m.audio_name.as_ref().map(|n| json!({
            "name": n, "contentType": m.audio_mime, "bytes": m.audio_bytes, "durationMs": m.audio_duration_ms,
        })),
        "hasArtifacts": m.status == "ready",
    })
}

fn sanitize_name(n: &str) -> String {
    let base = n.rsplit(['/', '\\']).next().unwrap_or(n);
    let clean: String = base.chars().filter(|c| !c.is_control()).take(200).collect();
    if clean.trim().is_empty() { "recording".into() } else { clean }
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such meeting")
}

fn conflict(msg: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "conflict", msg)
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the recording is larger than {} MB", limit.div_ceil(1024 * 1024)),
    )
}

fn multipart_error(text: &str, limit: u64) -> ApiError {
    if text.contains("length limit") {
        too_large(limit)
    } else {
        ApiError::bad_request(format!("upload interrupted or malformed: {text}"))
    }
}

fn internal(detail: String) -> ApiError {
    tracing::error!(error = %detail, "meeting upload failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the upload could not be stored; try again")
}
