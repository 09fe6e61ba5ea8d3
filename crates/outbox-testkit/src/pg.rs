//! Postgres for tests: the shared server named by `OUTBOX_TEST_PG_URL`, a throwaway cluster
//! of one's own (`scripts/pg-cluster.sh`, for tests that stop or restart the server), and
//! fresh databases on either.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;

use crate::{fail, script, unique_suffix, Result};

/// The test server's URL (`OUTBOX_TEST_PG_URL`, a URL ending in a database name). `None`
/// outside CI when it is not set (with a note on stderr); in CI a missing server is a
/// failure, never a skip.
pub fn test_pg_url() -> Option<String> {
    match std::env::var("OUTBOX_TEST_PG_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CI").is_some() => panic!(
            "OUTBOX_TEST_PG_URL is not set: in CI the Postgres tests must run (scripts/test.sh starts a cluster)"
        ),
        Err(_) => {
            eprintln!("skipping: OUTBOX_TEST_PG_URL is not set (scripts/test.sh starts a cluster)");
            None
        }
    }
}

/// `server_url` with its database part replaced by `name`.
fn with_database(server_url: &str, name: &str) -> Result<String> {
    let i = server_url.rfind('/').ok_or("no database part in the URL")?;
    Ok(format!("{}/{name}", &server_url[..i]))
}

/// Creates the empty database `name` (dropping one of that name first) on the server of
/// `server_url`; its URL.
pub async fn create_database(server_url: &str, name: &str) -> Result<String> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(server_url)
        .await
        .map_err(|e| format!("connecting to the test server: {e}"))?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    with_database(server_url, name)
}

/// Drops the database `name` on the server of `server_url`, cutting its connections; errors
/// are ignored (it only frees disk).
pub async fn drop_database(server_url: &str, name: &str) {
    if let Ok(admin) = PgPoolOptions::new()
        .max_connections(1)
        .connect(server_url)
        .await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}

/// A throwaway cluster made by `scripts/pg-cluster.sh` in a directory of its own; stopped
/// and removed on drop.
pub struct PgCluster {
    dir: PathBuf,
    /// URL of its database `outbox_test`.
    pub url: String,
}

impl PgCluster {
    /// A cluster in a new directory under the system temp dir (not under a 0700 temp dir:
    /// the server runs as `postgres` when the tests run as root, and must reach it).
    pub fn start() -> Result<PgCluster> {
        let dir = std::env::temp_dir().join(format!(
            "outboxd-pg-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        PgCluster::start_in(&dir)
    }

    /// A cluster in `dir` (which must be new or empty and reachable by `postgres`).
    ///
    /// Its port is picked below the kernel's ephemeral range (32768 and up on Linux):
    /// pg-cluster.sh's default (55432 and up) lies inside it, and any outgoing connection
    /// can take such a port between `initdb` and the server's start, or while it is down.
    pub fn start_in(dir: &Path) -> Result<PgCluster> {
        let seed = u64::from(std::process::id()) * 7919 + unique_suffix();
        for attempt in 0..5u64 {
            let port = 20_000 + (seed + attempt * 1_009) % 10_000;
            if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_err() {
                continue;
            }
            match pg_cluster("start", dir, Some(port)) {
                Ok(url) => {
                    return Ok(PgCluster {
                        dir: dir.to_path_buf(),
                        url,
                    })
                }
                Err(e) if e.contains("in use") || e.contains("taken") => {
                    let _ = pg_cluster("stop", dir, None);
                }
                Err(e) => return fail(format!("pg-cluster.sh start failed: {e}")),
            }
        }
        fail("no free port for a test cluster after 5 tries")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fast restart: every connection is cut, the server is back when this returns. How
    /// long it took.
    pub fn restart(&self) -> Result<Duration> {
        let t = Instant::now();
        self.run("restart")?;
        Ok(t.elapsed())
    }

    /// Stops the server, keeping its data ([`PgCluster::up`] starts it again).
    pub fn down(&self) -> Result<()> {
        self.run("down")
    }

    /// Starts the server again after [`PgCluster::down`], on the same port.
    pub fn up(&self) -> Result<()> {
        self.run("start")
    }

    fn run(&self, cmd: &str) -> Result<()> {
        match pg_cluster(cmd, &self.dir, None) {
            Ok(_) => Ok(()),
            Err(e) => fail(format!("pg-cluster.sh {cmd} failed: {e}")),
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = pg_cluster("stop", &self.dir, None);
    }
}

/// Runs scripts/pg-cluster.sh: its stdout, or its stderr on failure.
fn pg_cluster(cmd: &str, dir: &Path, port: Option<u64>) -> std::result::Result<String, String> {
    let mut c = Command::new("bash");
    c.arg(script("pg-cluster.sh")).arg(cmd).arg(dir);
    if let Some(p) = port {
        c.env("PG_PORT", p.to_string());
    }
    let out = c
        .output()
        .map_err(|e| format!("running scripts/pg-cluster.sh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A Postgres server to make databases on: a throwaway cluster of this run's own, or a
/// server given by URL. It remembers the databases it made, for [`PgServer::cleanup`].
pub struct PgServer {
    cluster: Option<PgCluster>,
    /// URL of a database on the server; the databases made here go next to it.
    pub url: String,
    /// Start of the names of the databases made here.
    prefix: String,
    made: Mutex<Vec<String>>,
}

impl PgServer {
    /// A throwaway cluster in `dir`; databases named `{prefix}_{name}_{pid}`.
    pub fn start(dir: &Path, prefix: &str) -> Result<PgServer> {
        let cluster = PgCluster::start_in(dir)?;
        Ok(PgServer {
            url: cluster.url.clone(),
            cluster: Some(cluster),
            prefix: prefix.to_string(),
            made: Mutex::default(),
        })
    }

    /// The server of `url`.
    pub fn external(url: &str, prefix: &str) -> PgServer {
        PgServer {
            cluster: None,
            url: url.to_string(),
            prefix: prefix.to_string(),
            made: Mutex::default(),
        }
    }

    /// Restarts the cluster (a fast restart: every connection is cut); how long it took.
    pub fn restart(&self) -> Result<Duration> {
        match &self.cluster {
            Some(c) => c.restart(),
            None => fail("can only restart a cluster this run started (no --pg-url)"),
        }
    }

    /// A new, empty database on the server; its URL.
    pub async fn database(&self, name: &str) -> Result<String> {
        let name = format!("{}_{name}_{}", self.prefix, std::process::id());
        let url = create_database(&self.url, &name).await?;
        self.made.lock().expect("not poisoned").push(name);
        Ok(url)
    }

    /// Drops one database made by [`PgServer::database`] (frees the disk between runs).
    pub async fn drop_database(&self, url: &str) {
        let Some(name) = url.rsplit('/').next() else {
            return;
        };
        drop_database(&self.url, name).await;
        self.made
            .lock()
            .expect("not poisoned")
            .retain(|n| n != name);
    }

    /// Drops the databases made on an external server (a cluster of ours goes whole).
    pub async fn cleanup(&self) {
        if self.cluster.is_some() {
            return;
        }
        let names = std::mem::take(&mut *self.made.lock().expect("not poisoned"));
        for n in names {
            drop_database(&self.url, &n).await;
        }
    }
}
