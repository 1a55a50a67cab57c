-- Switchboard schema, SQLite dialect. Times are unix milliseconds (INTEGER); JSON is TEXT.
-- Kept in step with migrations/postgres/0001_init.sql: same tables, same columns.

CREATE TABLE calls (
    call_sid        TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    stream_sid      TEXT NOT NULL,
    from_number     TEXT NOT NULL,
    to_number       TEXT NOT NULL,
    language        TEXT NOT NULL,
    started_at_ms   INTEGER NOT NULL,
    ended_at_ms     INTEGER NOT NULL,
    duration_ms     INTEGER NOT NULL,
    status          TEXT NOT NULL,
    end_reason      TEXT NOT NULL,
    end_detail      TEXT,
    interruptions   INTEGER NOT NULL,
    caller_talk_ms  INTEGER NOT NULL,
    agent_talk_ms   INTEGER NOT NULL,
    input_tokens    INTEGER NOT NULL,
    output_tokens   INTEGER NOT NULL,
    total_tokens    INTEGER NOT NULL,
    reconnects      INTEGER NOT NULL,
    record_json     TEXT NOT NULL,
    transcript_text TEXT NOT NULL,
    summary_status  TEXT NOT NULL,
    summary_json    TEXT,
    summary_text    TEXT,
    summary_error   TEXT,
    sentiment       TEXT,
    has_booking     INTEGER NOT NULL DEFAULT 0,
    summary_tokens  INTEGER NOT NULL DEFAULT 0,
    created_at_ms   INTEGER NOT NULL
);
CREATE INDEX calls_by_tenant_time ON calls (tenant_id, started_at_ms DESC, call_sid DESC);

CREATE TABLE call_turns (
    call_sid       TEXT NOT NULL REFERENCES calls (call_sid) ON DELETE CASCADE,
    seq            INTEGER NOT NULL,
    speaker        TEXT NOT NULL,
    start_ms       INTEGER NOT NULL,
    text           TEXT NOT NULL,
    interrupted    INTEGER NOT NULL,
    heard_ms       INTEGER,
    generated_ms   INTEGER,
    generated_text TEXT,
    PRIMARY KEY (call_sid, seq)
);

-- Full text over what was said and the summary; kept by the store beside `calls`.
CREATE VIRTUAL TABLE calls_fts USING fts5 (
    call_sid UNINDEXED,
    tenant_id UNINDEXED,
    transcript,
    summary,
    tokenize = 'unicode61 remove_diacritics 2'
);

CREATE TABLE jobs (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL,
    dedupe_key     TEXT NOT NULL,
    tenant_id      TEXT,
    payload        TEXT NOT NULL,
    status         TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    max_attempts   INTEGER NOT NULL,
    run_at_ms      INTEGER NOT NULL,
    lease_token    TEXT,
    locked_by      TEXT,
    lease_until_ms INTEGER,
    last_error     TEXT,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
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
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    detail        TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    sent_at_ms    INTEGER
);
CREATE INDEX emails_by_call ON emails (call_sid);
