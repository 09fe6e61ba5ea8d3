//! A migrated outbox database and the harness's own connection pool to it: the harness
//! plays the producer (plain `INSERT`s) and reads the results with plain SQL, the same on
//! SQLite and Postgres.

use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, Row, SqlitePool};

use crate::{bin, fail, wait_until, PgServer, Result};

/// A producer's insert; a key already in the outbox is left alone.
const ENQUEUE: &str = "INSERT INTO outbox (sink, event_type, idempotency_key, payload) \
                       VALUES ($1, $2, $3, $4) ON CONFLICT (sink, idempotency_key) DO NOTHING";

/// `$body` with `$p` bound to the pool of either backend (the code is the same, the types
/// differ).
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            Pool::Sqlite($p) => $body,
            Pool::Pg($p) => $body,
        }
    };
}

#[derive(Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

/// A migrated outbox database and a connection pool to it.
#[derive(Clone)]
pub struct Db {
    pub url: String,
    pub pool: Pool,
}

impl Db {
    /// A SQLite outbox at `path`, created by the real `outbox-migrate`.
    pub async fn sqlite(path: &Path) -> Result<Db> {
        let url = format!("sqlite://{}", path.display());
        migrate(&url)?;
        Db::open(&url).await
    }

    /// A Postgres outbox in a new database of `pg`, created by the real `outbox-migrate`.
    pub async fn postgres(pg: &PgServer, name: &str) -> Result<Db> {
        let url = pg.database(name).await?;
        migrate(&url)?;
        Db::open(&url).await
    }

    /// A pool to the existing outbox at `url` (`sqlite://` or `postgres://`).
    pub async fn open(url: &str) -> Result<Db> {
        let pool = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .busy_timeout(Duration::from_secs(10))
                // A producer's defaults: the WAL mode is in the file, synchronous stays FULL.
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts)
                    .await?,
            )
        } else {
            Pool::Pg(PgPoolOptions::new().max_connections(2).connect(url).await?)
        };
        Ok(Db {
            url: url.to_string(),
            pool,
        })
    }

    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Pg(_) => "postgres",
        }
    }

    pub async fn exec(&self, sql: &str) -> Result<u64> {
        Ok(on_pool!(&self.pool, p => sqlx::query(sql).execute(p).await?.rows_affected()))
    }

    /// A query returning one integer (NULL reads as 0).
    pub async fn int(&self, sql: &str) -> Result<i64> {
        let v: Option<i64> = on_pool!(&self.pool, p => sqlx::query_scalar(sql).fetch_one(p).await?);
        Ok(v.unwrap_or(0))
    }

    /// Rows of text columns (cast non-text columns in the SQL).
    pub async fn rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        Ok(on_pool!(&self.pool, p => sqlx::query(sql)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| (0..r.len()).map(|i| r.try_get(i).unwrap_or(None)).collect())
            .collect()))
    }

    /// After bulk writes: a checkpoint (SQLite: the WAL back to empty) or VACUUM ANALYZE
    /// (Postgres: fresh statistics and visibility map), as a table at rest would have.
    pub async fn settle(&self) -> Result<()> {
        let sql = match self.pool {
            Pool::Sqlite(_) => "PRAGMA wal_checkpoint(TRUNCATE)",
            Pool::Pg(_) => "VACUUM ANALYZE outbox",
        };
        self.exec(sql).await.map(drop)
    }

    /// Inserts one event the way a producer does (one statement, committed); whether it
    /// was new.
    pub async fn enqueue(
        &self,
        sink: &str,
        event_type: &str,
        key: &str,
        payload: &str,
    ) -> Result<bool> {
        let n = on_pool!(&self.pool, p => sqlx::query(ENQUEUE)
            .bind(sink)
            .bind(event_type)
            .bind(key)
            .bind(payload)
            .execute(p)
            .await?
            .rows_affected());
        Ok(n == 1)
    }

    /// Inserts events `(sink, event_type, key, payload)` the way a producer does, 500 per
    /// transaction.
    pub async fn enqueue_many(&self, events: &[(String, String, String, String)]) -> Result<()> {
        // SQLite: a write transaction takes the lock up front, or it may fail at once when
        // another writer is busy.
        let begin = match self.pool {
            Pool::Sqlite(_) => "BEGIN IMMEDIATE",
            Pool::Pg(_) => "BEGIN",
        };
        for chunk in events.chunks(500) {
            on_pool!(&self.pool, p => {
                let mut tx = p.begin_with(begin).await?;
                for (sink, ty, key, payload) in chunk {
                    sqlx::query(ENQUEUE)
                        .bind(sink)
                        .bind(ty)
                        .bind(key)
                        .bind(payload)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            });
        }
        Ok(())
    }

    /// Rows not final yet (pending or in flight).
    pub async fn open_rows(&self) -> Result<i64> {
        self.int("SELECT count(*) FROM outbox WHERE status IN ('pending', 'in_flight')")
            .await
    }

    /// Waits until no row is pending or in flight.
    pub async fn wait_drained(&self, timeout: Duration) -> Result<()> {
        let open = std::cell::Cell::new(0);
        wait_until(
            "draining the outbox",
            timeout,
            Duration::from_millis(50),
            || async {
                open.set(self.open_rows().await?);
                Ok(open.get() == 0)
            },
        )
        .await
        .map_err(|_| format!("{} rows still open after {timeout:?}", open.get()).into())
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Pg(p) => p.close().await,
        }
    }
}

/// Runs the real `outbox-migrate`, creating a SQLite file that does not exist yet.
pub fn migrate(url: &str) -> Result<()> {
    let out = Command::new(bin("outbox-migrate")?)
        .arg("--create")
        .arg("--database-url")
        .arg(url)
        .output()?;
    if !out.status.success() {
        return fail(format!(
            "outbox-migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
