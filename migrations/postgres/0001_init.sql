-- Switchboard schema, PostgreSQL dialect. Times are unix milliseconds (BIGINT); JSON is TEXT
-- (the store reads it through sqlx's Any driver, which knows only basic types).
-- Kept in step with migrations/sqlite/0001_init.sql: same tables, same columns.

CREATE TABLE calls (
    call_sid        TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    stream_sid      TEXT NOT NULL,
    from_number     TEXT NOT NULL,
    to_number       TEXT NOT NULL,
    language        TEXT NOT NULL,
    started_at_ms   BIGINT NOT NULL,
    ended_at_ms     BIGINT NOT NULL,
    duration_ms     BIGINT NOT NULL,
    status          TEXT NOT NULL,
    end_reason      TEXT NOT NULL,
    end_detail      TEXT,
    interruptions   BIGINT NOT NULL,
    caller_talk_ms  BIGINT NOT NULL,
    agent_talk_ms   BIGINT NOT NULL,
    input_tokens    BIGINT NOT NULL,
    output_tokens   BIGINT NOT NULL,
    total_tokens    BIGINT NOT NULL,
    reconnects      BIGINT NOT NULL,
    record_json     TEXT NOT NULL,
    transcript_text TEXT NOT NULL,
    summary_status  TEXT NOT NULL,
    summary_json    TEXT,
    summary_text    TEXT,
    summary_error   TEXT,
    sentiment       TEXT,
    has_booking     BIGINT NOT NULL DEFAULT 0,
    summary_tokens  BIGINT NOT NULL DEFAULT 0,
    created_at_ms   BIGINT NOT NULL,
    -- Stemmed in the call's language (italian, french, english… or simple).
    ts_config       REGCONFIG NOT NULL DEFAULT 'simple',
    search          TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector(ts_config, coalesce(summary_text, '')), 'A')
        || setweight(to_tsvector(ts_config, transcript_text), 'B')
    ) STORED
);
CREATE INDEX calls_by_tenant_time ON calls (tenant_id, started_at_ms DESC, call_sid DESC);
CREATE INDEX calls_search ON calls USING GIN (search);

CREATE TABLE call_turns (
    call_sid       TEXT NOT NULL REFERENCES calls (call_sid) ON DELETE CASCADE,
    seq            BIGINT NOT NULL,
    speaker        TEXT NOT NULL,
    start_ms       BIGINT NOT NULL,
    text           TEXT NOT NULL,
    interrupted    BIGINT NOT NULL,
    heard_ms       BIGINT,
    generated_ms   BIGINT,
    generated_text TEXT,
    PRIMARY KEY (call_sid, seq)
);

CREATE TABLE jobs (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    dedupe_key     TEXT NOT NULL,
    tenant_id      TEXT,
    payload        TEXT NOT NULL,
    status         TEXT NOT NULL,
    attempts       BIGINT NOT NULL DEFAULT 0,
    max_attempts   BIGINT NOT NULL,
    run_at_ms      BIGINT NOT NULL,
    lease_token    TEXT,
    locked_by      TEXT,
    lease_until_ms BIGINT,
    last_error     TEXT,
    created_at_ms  BIGINT NOT NULL,
    updated_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT,
    UNIQUE (kind, dedupe_key)
);
CREATE INDEX jobs_due ON jobs (status, run_at_ms);
CREATE INDEX jobs_leases ON jobs (status, lease_until_ms);

CREATE TABLE emails (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    call_sid      TEXT,
    message_id    TEXT NOT NULL UNIQUE,
    sender        TEXT NOT NULL,
    recipients    TEXT NOT NULL,
    subject       TEXT NOT NULL,
    body_text     TEXT NOT NULL,
    body_html     TEXT NOT NULL,
    status        TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    last_error    TEXT,
    detail        TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    sent_at_ms    BIGINT
);
CREATE INDEX emails_by_call ON emails (call_sid);
