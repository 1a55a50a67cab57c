-- Meetings: a recording uploaded by a team, transcribed and summarized by a job.
-- Kept in step with the other backend's 0002_meetings.sql.

CREATE TABLE meetings (
    id                TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    title             TEXT NOT NULL,
    scheduled_at_ms   BIGINT,
    public_join       BIGINT NOT NULL DEFAULT 0,
    jitsi_room_name   TEXT NOT NULL,
    -- created | processing | ready | failed
    status            TEXT NOT NULL,
    error             TEXT,
    audio_blob_id     TEXT,
    audio_name        TEXT,
    audio_mime        TEXT,
    audio_bytes       BIGINT,
    audio_duration_ms BIGINT,
    language          TEXT,
    transcript_json   TEXT,
    summary_json      TEXT,
    tasks_json        TEXT,
    tasks_edited      BIGINT NOT NULL DEFAULT 0,
    summary_tokens    BIGINT NOT NULL DEFAULT 0,
    created_at_ms     BIGINT NOT NULL,
    updated_at_ms     BIGINT NOT NULL,
    processed_at_ms   BIGINT
);
CREATE INDEX meetings_by_tenant_time ON meetings (tenant_id, created_at_ms DESC, id DESC);

-- Uploaded audio waiting for its job, in chunks of at most 1 MiB, so neither an upload nor
-- a job ever holds a whole recording in memory. Deleted once the job is done (or failed).
CREATE TABLE blobs (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    bytes         BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE blob_chunks (
    blob_id TEXT NOT NULL REFERENCES blobs (id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    data    BYTEA NOT NULL,
    PRIMARY KEY (blob_id, seq)
);

-- Values every daemon must share, created once by whichever daemon starts first
-- (e.g. the secret that derives Jitsi room names when none is configured).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
