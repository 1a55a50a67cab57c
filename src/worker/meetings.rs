//! The meeting jobs.
//!
//! `meeting.process`: unpack the uploaded recording from the database, transcribe it (whole,
//! or — past the provider's size or duration limit — decoded to 16 kHz mono, split on silence
//! and sent as WAV chunks whose segments are stitched back with their offsets), store the
//! transcript and delete the recording in one transaction, then summarize.
//! `meeting.summarize`: summarize the stored transcript again (after a prompt change).
//!
//! A job killed mid-way is taken again after its lease; a stored transcript is not
//! transcribed twice. Failures a retry cannot fix (not audio, refused by the provider) and the
//! last failed attempt mark the meeting `failed` with a message for people.

use std::path::PathBuf;

use super::{JobError, JobHandler, now_ms};
use crate::bridge::sink::BoxFuture;
use crate::core::audio::split::{split_on_silence, wav_16k_mono};
use crate::core::domain::meeting::{MeetingInput, Transcript, chat_request, parse_reply, stitch};
use crate::openai::chat::ChatClient;
use crate::openai::transcribe::TranscribeClient;
use crate::store::{ClaimedJob, MeetingArtifacts, MeetingRow, NewJob, Store};

pub const PROCESS: &str = "meeting.process";
/// Longest recording decoded for splitting (16 kHz mono i16: about 115 MB per hour in memory).
const MAX_RECORDING: std::time::Duration = std::time::Duration::from_secs(4 * 3600);
pub const SUMMARIZE: &str = "meeting.summarize";

/// Processing of one uploaded recording (deduplicated by the recording).
pub fn process_job(tenant: &str, meeting: &str, blob: &str, now_ms: u64, max_attempts: u32) -> NewJob {
    NewJob {
        kind: PROCESS,
        dedupe_key: blob.to_owned(),
        tenant_id: Some(tenant.to_owned()),
        payload: serde_json::json!({ "meetingId": meeting, "blobId": blob }),
        run_at_ms: now_ms,
        max_attempts,
    }
}

/// A new summary of a stored transcript (one per request).
pub fn summarize_job(tenant: &str, meeting: &str, now_ms: u64, max_attempts: u32) -> NewJob {
    NewJob {
        kind: SUMMARIZE,
        dedupe_key: format!("{meeting}:{}", uuid::Uuid::now_v7()),
        tenant_id: Some(tenant.to_owned()),
        payload: serde_json::json!({ "meetingId": meeting }),
        run_at_ms: now_ms,
        max_attempts,
    }
}

#[derive(Clone)]
pub struct MeetingJobs {
    pub store: Store,
    pub tenants: crate::bridge::TenantsHandle,
    pub transcribe: TranscribeClient,
    pub chat: ChatClient,
    pub model: String,
    pub tmp_dir: PathBuf,
    pub max_upload_bytes: u64,
    pub max_secs: u64,
    /// Long recordings are decoded whole in memory (about 115 MB per hour): one at a time.
    pub decode_permits: std::sync::Arc<tokio::sync::Semaphore>,
}

impl JobHandler for MeetingJobs {
    fn on_dead(&self, job: ClaimedJob, error: String) -> BoxFuture<'static, ()> {
        let me = self.clone();
        Box::pin(async move { me.dead(job, error).await })
    }

    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), JobError>> {
        let me = self.clone();
        Box::pin(async move {
            let id = job.payload["meetingId"].as_str().unwrap_or_default().to_owned();
            let Some(m) = me.store.meeting(None, &id).await.map_err(|e| JobError::retry(e.to_string()))? else {
                return Err(JobError::Fatal(format!("meeting {id} does not exist")));
            };
            if m.status != "processing" {
                return Ok(()); // Done already, or replaced by a newer upload.
            }
            let result = if job.kind == PROCESS { me.process(&job, &m).await } else { me.summarize(&m).await };
            match result {
                Ok(()) => Ok(()),
                Err(Step { message, retryable, after }) if retryable && !job.is_last_attempt() => {
                    Err(JobError::Retry { message, after })
                }
                Err(Step { message, .. }) => {
                    tracing::warn!(meeting = %m.id, error = %message, "meeting failed");
                    let blob = job.payload["blobId"].as_str();
                    me.store
                        .fail_meeting(&m.id, blob, &message, now_ms())
                        .await
                        .map_err(|e| JobError::retry(e.to_string()))
                }
            }
        })
    }
}

impl MeetingJobs {
    /// The job died outside its own failure handling (a panic, a database error on the last
    /// attempt, dying daemons): the meeting must not stay `processing` for ever.
    async fn dead(&self, job: ClaimedJob, error: String) {
        let id = job.payload["meetingId"].as_str().unwrap_or_default();
        let blob = job.payload["blobId"].as_str();
        let msg = format!("processing failed after several attempts ({error}); upload the recording again");
        if let Err(e) = self.store.fail_meeting(id, blob, &msg, now_ms()).await {
            tracing::error!(meeting = %id, error = %e, "could not mark a dead meeting job failed");
        }
    }
}

/// Why a step failed, and whether another attempt may help.
struct Step {
    message: String,
    retryable: bool,
    after: Option<std::time::Duration>,
}

impl Step {
    fn fatal(message: impl Into<String>) -> Step {
        Step { message: message.into(), retryable: false, after: None }
    }
    fn retry(message: impl Into<String>) -> Step {
        Step { message: message.into(), retryable: true, after: None }
    }
}

impl MeetingJobs {
    async fn process(&self, job: &ClaimedJob, m: &MeetingRow) -> Result<(), Step> {
        let blob = job.payload["blobId"].as_str().unwrap_or_default();
        if m.transcript_json.is_none() && m.audio_blob_id.as_deref() != Some(blob) {
            return Ok(()); // A newer upload replaced this one; its own job handles it.
        }
        let transcript = match &m.transcript_json {
            // An earlier attempt got this far: do not pay for the transcription twice.
            Some(t) => {
                serde_json::from_str::<Transcript>(t).map_err(|e| Step::fatal(format!("stored transcript: {e}")))?
            }
            None => {
                let t = self.transcribe_blob(m, blob).await?;
                let json = serde_json::to_string(&t).map_err(|e| Step::fatal(e.to_string()))?;
                self.store
                    .save_meeting_transcript(&m.id, blob, &json, t.language.as_deref(), t.duration_ms, now_ms())
                    .await
                    .map_err(|e| Step::retry(e.to_string()))?;
                t
            }
        };
        self.summarize_transcript(m, &transcript).await
    }

    async fn summarize(&self, m: &MeetingRow) -> Result<(), Step> {
        let t = m.transcript_json.as_deref().ok_or_else(|| Step::fatal("there is no transcript to summarize"))?;
        let transcript: Transcript =
            serde_json::from_str(t).map_err(|e| Step::fatal(format!("stored transcript: {e}")))?;
        self.summarize_transcript(m, &transcript).await
    }

    async fn summarize_transcript(&self, m: &MeetingRow, transcript: &Transcript) -> Result<(), Step> {
        let input = MeetingInput {
            title: &m.title,
            scheduled_at_ms: m.scheduled_at_ms,
            uploaded_at_ms: m.created_at_ms,
            utc_offset_minutes: self.tenants.current().by_id(&m.tenant_id).map_or(0, |t| {
                crate::tenants::utc_offset_minutes(&t.timezone, m.scheduled_at_ms.unwrap_or(m.created_at_ms))
            }),
            language_hint: transcript.language.as_deref().or(m.language.as_deref()),
            transcript,
        };
        let body = chat_request(&input, &self.model);
        let reply = self.chat.create(&body).await.map_err(|e| Step {
            retryable: e.is_retryable(),
            after: e.retry_after(),
            message: format!("summary: {e}"),
        })?;
        let (summary, usage) = parse_reply(&reply).map_err(|e| Step {
            retryable: e.is_retryable(),
            after: None,
            message: format!("summary: {e}"),
        })?;
        let artifacts = MeetingArtifacts {
            language: transcript.language.clone(),
            duration_ms: transcript.duration_ms,
            transcript_json: serde_json::to_string(transcript).map_err(|e| Step::fatal(e.to_string()))?,
            summary_json: serde_json::to_string(&summary).map_err(|e| Step::fatal(e.to_string()))?,
            tasks_json: serde_json::to_string(&summary.tasks).map_err(|e| Step::fatal(e.to_string()))?,
            summary_tokens: usage.map_or(0, |u| u.total_tokens),
        };
        self.store.finish_meeting(&m.id, &artifacts, now_ms()).await.map_err(|e| Step::retry(e.to_string()))?;
        tracing::info!(meeting = %m.id, tasks = summary.tasks.len(), "meeting ready");
        Ok(())
    }

    /// The recording, from the database to a spool file to the provider.
    async fn transcribe_blob(&self, m: &MeetingRow, blob: &str) -> Result<Transcript, Step> {
        std::fs::create_dir_all(&self.tmp_dir).map_err(|e| Step::retry(format!("spool folder: {e}")))?;
        let name = m.audio_name.clone().unwrap_or_else(|| "recording".into());
        let mime = m.audio_mime.clone().unwrap_or_else(|| "application/octet-stream".into());
        let ext = crate::media::file_extension(&name, &mime);
        let path = self.tmp_dir.join(format!("job-{}.{ext}", uuid::Uuid::new_v4().simple()));
        let _cleanup = crate::media::RemoveOnDrop(path.clone());
        let size = match self.store.blob_to_file(blob, &path).await.map_err(|e| Step::retry(e.to_string()))? {
            Some(n) => n,
            None => return Err(Step::fatal("the uploaded recording is missing; upload it again")),
        };
        let too_long = m.audio_duration_ms.is_some_and(|d| d > self.max_secs * 1000);
        if size <= self.max_upload_bytes && !too_long {
            let bytes = tokio::fs::read(&path).await.map_err(|e| Step::retry(format!("spool file: {e}")))?;
            // The service knows Ogg by `.ogg`, not `.opus`.
            let sent_ext = if ext == "opus" || ext == "oga" { "ogg" } else { ext };
            return self.send(&format!("recording.{sent_ext}"), &mime, bytes).await;
        }
        // Too big for one request: decode, resample to 16 kHz mono, split on silence.
        let _permit = self.decode_permits.acquire().await.map_err(|e| Step::retry(format!("decoder: {e}")))?;
        let (p, mt) = (path.clone(), mime.clone());
        let samples = tokio::task::spawn_blocking(move || crate::media::decode_mono_16k(&p, Some(&mt), MAX_RECORDING))
            .await
            .map_err(|e| Step::retry(format!("decoder task: {e}")))?
            .map_err(|e| match e {
                crate::media::MediaError::Unsupported { codec } => Step::fatal(format!(
                    "the recording is too long to send whole and its codec ({codec}) cannot be split here; \
                     upload it as WAV, FLAC, MP3, M4A or OGG Vorbis"
                )),
                crate::media::MediaError::TooLong { max_ms, .. } => {
                    Step::fatal(format!("the recording is longer than {} hours", max_ms / 3_600_000))
                }
                other => Step::fatal(format!("the recording could not be decoded: {other}")),
            })?;
        let by_bytes = (self.max_upload_bytes.saturating_sub(1024) / 2) as usize;
        let by_time = (self.max_secs * 16_000) as usize;
        let max_chunk = by_bytes.min(by_time).max(16_000);
        let ranges = split_on_silence(&samples, 16_000, max_chunk);
        tracing::info!(meeting = %m.id, chunks = ranges.len(), seconds = samples.len() / 16_000, "recording split for transcription");
        let mut parts = Vec::with_capacity(ranges.len());
        for (i, r) in ranges.iter().enumerate() {
            let wav = wav_16k_mono(&samples[r.clone()]);
            let t = self.send(&format!("chunk-{i}.wav"), "audio/wav", wav).await?;
            parts.push((r.start as u64 * 1000 / 16_000, t));
        }
        let mut stitched = stitch(&parts);
        stitched.duration_ms = Some(samples.len() as u64 * 1000 / 16_000);
        Ok(stitched)
    }

    async fn send(&self, name: &str, mime: &str, bytes: Vec<u8>) -> Result<Transcript, Step> {
        self.transcribe.transcribe(name, mime, bytes, None).await.map_err(|e| Step {
            retryable: e.is_retryable(),
            after: e.retry_after(),
            message: format!("transcription: {e}"),
        })
    }
}
