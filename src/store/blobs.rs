//! Uploaded files kept in the database (shared by every daemon), in chunks of at most 1 MiB:
//! writing or reading one never holds more than a chunk in memory.

use std::path::Path;

use sqlx::Row as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Result, Store, StoreError, to_i64, to_u64};

pub const CHUNK_BYTES: usize = 1 << 20;

impl Store {
    /// Copies the file at `path` into a new blob; returns its size. Chunks are written one
    /// statement at a time (no long write lock on SQLite); the blob is only referenced once
    /// the caller's transaction names it, so a crash mid-copy leaves an orphan, never a
    /// half-read recording.
    pub async fn put_blob(&self, id: &str, tenant_id: &str, path: &Path, now_ms: u64) -> Result<u64> {
        let io = |e: std::io::Error| StoreError::Config(format!("reading the upload: {e}"));
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        sqlx::query("INSERT INTO blobs (id, tenant_id, bytes, created_at_ms) VALUES ($1, $2, 0, $3)")
            .bind(id)
            .bind(tenant_id)
            .bind(to_i64(now_ms))
            .execute(&self.pool)
            .await?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut total = 0u64;
        let mut seq = 0i64;
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                let n = file.read(&mut buf[filled..]).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            sqlx::query("INSERT INTO blob_chunks (blob_id, seq, data) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(seq)
                .bind(buf[..filled].to_vec())
                .execute(&self.pool)
                .await?;
            seq += 1;
            total += filled as u64;
            if filled < buf.len() {
                break;
            }
        }
        sqlx::query("UPDATE blobs SET bytes = $1 WHERE id = $2")
            .bind(to_i64(total))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(total)
    }

    /// Writes a blob out to `path`, chunk by chunk. `None` if the blob does not exist.
    pub async fn blob_to_file(&self, id: &str, path: &Path) -> Result<Option<u64>> {
        let io = |e: std::io::Error| StoreError::Config(format!("writing {}: {e}", path.display()));
        let Some(row) =
            sqlx::query("SELECT bytes FROM blobs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?
        else {
            return Ok(None);
        };
        let expected = to_u64(row.try_get("bytes")?);
        let mut out = tokio::fs::File::create(path).await.map_err(io)?;
        let mut written = 0u64;
        let mut seq = 0i64;
        while let Some(r) = sqlx::query("SELECT data FROM blob_chunks WHERE blob_id = $1 AND seq = $2")
            .bind(id)
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?
        {
            let data: Vec<u8> = r.try_get("data")?;
            out.write_all(&data).await.map_err(io)?;
            written += data.len() as u64;
            seq += 1;
        }
        out.flush().await.map_err(io)?;
        if written != expected {
            return Err(StoreError::Corrupt(format!("blob {id}: {written} bytes stored, {expected} expected")));
        }
        Ok(Some(written))
    }

    /// Deletes a blob and its chunks (inside `tx`).
    pub(crate) async fn delete_blob_in(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM blob_chunks WHERE blob_id = $1").bind(id).execute(&mut **tx).await?;
        sqlx::query("DELETE FROM blobs WHERE id = $1").bind(id).execute(&mut **tx).await?;
        Ok(())
    }

    pub async fn delete_blob(&self, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        self.delete_blob_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether a blob (still) exists.
    pub async fn blob_exists(&self, id: &str) -> Result<bool> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM blob_chunks WHERE blob_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let b = sqlx::query("SELECT id FROM blobs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        Ok(n > 0 || b.is_some())
    }
}

impl Store {
    /// Deletes blobs older than `before_ms` that no meeting references (an upload whose client
    /// went away mid-copy, or whose meeting update failed). Returns how many.
    pub async fn sweep_orphan_blobs(&self, before_ms: u64) -> Result<u64> {
        let rows = sqlx::query(
            "SELECT id FROM blobs WHERE created_at_ms < $1 AND id NOT IN \
             (SELECT audio_blob_id FROM meetings WHERE audio_blob_id IS NOT NULL)",
        )
        .bind(to_i64(before_ms))
        .fetch_all(&self.pool)
        .await?;
        let mut n = 0;
        for r in rows {
            let id: String = r.try_get("id")?;
            self.delete_blob(&id).await?;
            n += 1;
        }
        Ok(n)
    }
}
