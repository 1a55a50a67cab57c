//! The database: calls, transcripts, jobs and the email outbox, on SQLite (the embedded
//! default) or PostgreSQL (to share between daemons).
//!
//! One code path through sqlx's `Any` driver with `$n` placeholders; the few statements whose
//! dialects differ (claiming a job, full-text search) are chosen by [`Backend`]. Migrations are
//! embedded per backend and applied at start.
//!
//! What this module must not do: decide policy (retry delays, what a call's summary says), read
//! the clock (`now_ms` is an argument), or assume it is the only daemon on the database: every
//! write that could race is a single atomic statement or guarded by a unique key.

mod blobs;
mod calls;
mod emails;
mod jobs;
mod meetings;

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, SqlStr};

pub use calls::{
    Analytics, AnalyticsDay, CallFilter, CallPage, CallRow, CallSummaryUpdate, Cursor, SearchHit, TurnRow,
};
pub use emails::{EmailRow, EmailStatus, NewEmail};
pub use jobs::{ClaimedJob, JobCounts, JobRow, NewJob};
pub use meetings::{MeetingArtifacts, MeetingPage, MeetingRow, NewMeeting};

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish_non_exhaustive()
    }
}

impl Store {
    /// Connects (creating a SQLite file and its folder if missing) and applies migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, url) = prepare_url(url)?;
        let opts = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        let store = Store { pool, backend, url };
        if backend == Backend::Sqlite && !store.url.contains("mode=memory") {
            // WAL lets the API read while a worker writes; the setting is kept in the file.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&store.pool).await?;
        }
        migrator(backend).run(&store.pool).await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection URL (for a PostgreSQL `LISTEN` connection). May hold a password.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction for writes. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`), so two writers wait for each other instead of failing on a lock upgrade.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Answers when the database does (health checks).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Normalises a `DATABASE_URL`: SQLite files are created (with their folder) when missing.
fn prepare_url(url: &str) -> Result<(Backend, String)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_owned()));
    }
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Err(StoreError::Config("DATABASE_URL: expected sqlite://… or postgres://…".into()));
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let memory = path == ":memory:" || query.is_some_and(|q| q.contains("mode=memory"));
    if !memory
        && !path.is_empty()
        && let Some(parent) = Path::new(path).parent().filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", parent.display())))?;
    }
    let url = match query {
        Some(q) if q.contains("mode=") => format!("sqlite://{path}?{q}"),
        Some(q) => format!("sqlite://{path}?{q}&mode=rwc"),
        None if memory => format!("sqlite://{path}"),
        None => format!("sqlite://{path}?mode=rwc"),
    };
    Ok((Backend::Sqlite, url))
}

fn migrator(backend: Backend) -> Migrator {
    let files: &[(i64, &str, &'static str)] = match backend {
        Backend::Sqlite => &[
            (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
            (2, "meetings", include_str!("../../migrations/sqlite/0002_meetings.sql")),
        ],
        Backend::Postgres => &[
            (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
            (2, "meetings", include_str!("../../migrations/postgres/0002_meetings.sql")),
        ],
    };
    Migrator::with_migrations(
        files
            .iter()
            .map(|(v, d, sql)| {
                Migration::new(*v, Cow::Borrowed(*d), MigrationType::Simple, SqlStr::from_static(sql), false)
            })
            .collect(),
    )
}

/// Stored integers are `i64`; our counters are `u64` and far below `i64::MAX`.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_are_created_on_first_start() {
        let dir = std::env::temp_dir().join(format!("sb-store-url-{}", uuid::Uuid::new_v4().simple()));
        let url = format!("sqlite://{}/sub/x.db", dir.display());
        let (b, u) = prepare_url(&url).unwrap();
        assert_eq!(b, Backend::Sqlite);
        assert!(u.ends_with("/sub/x.db?mode=rwc"), "{u}");
        assert!(dir.join("sub").is_dir());
        assert_eq!(prepare_url("sqlite::memory:").unwrap().1, "sqlite://:memory:");
        assert_eq!(prepare_url("sqlite://a.db?mode=ro").unwrap().1, "sqlite://a.db?mode=ro");
        assert_eq!(prepare_url("postgres://x/y").unwrap().0, Backend::Postgres);
        assert!(prepare_url("mysql://x").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
