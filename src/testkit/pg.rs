//! A private PostgreSQL schema per test run, on the server of this machine.
//!
//! `SWITCHBOARD_TEST_PG_URL` overrides the server (default
//! `postgres://postgres@127.0.0.1:5432/test`). Each [`PgSchema`] is a fresh schema; the
//! returned URL selects it with `search_path`, so the daemon's migrations and queries run
//! inside it, apart from every other run.

use sqlx::Connection as _;

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug, Clone)]
pub struct PgSchema {
    pub name: String,
    pub url: String,
    base: String,
}

impl PgSchema {
    pub async fn create() -> anyhow::Result<PgSchema> {
        let base = std::env::var("SWITCHBOARD_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
        let name = format!("sb_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&base).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}"))).execute(&mut conn).await?;
        conn.close().await?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Ok(PgSchema { name, url, base })
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(&self) -> anyhow::Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.base).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }
}
