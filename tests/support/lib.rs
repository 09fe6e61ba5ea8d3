//! Shared harness of the end-to-end tests: a temp directory with a real SQLite file (or a
//! database on the test Postgres cluster), the platform simulator on loopback, and the real
//! `outboxd` / `outbox-migrate` binaries run as separate processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outbox_core::event::{EventType, NewEvent};
use outbox_core::store::{OpenOptions, Store};
use platform_sim::{SimConfig, SimHandle};

/// Secret values the tests hand to outboxd; they must never show up in its output or DB.
pub const PYUN_SECRET: &str = platform_sim::config::DEMO_PYUN_APP_SECRET;
pub const EPEIS_DYNAMIC_KEY: &str = platform_sim::config::DEMO_EPEIS_DYNAMIC_KEY;
pub const LBBTECH_TOKEN: &str = platform_sim::config::DEMO_LBBTECH_TOKEN;

/// A built binary of the workspace. `cargo test` builds the test's own package only, so the
/// scripts build every binary first (`cargo build --workspace --bins`).
pub fn bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test executable path");
    dir.pop(); // deps/
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pub sim: SimHandle,
    pub config_path: PathBuf,
}

impl Env {
    /// A fresh SQLite outbox, migrated by the real `outbox-migrate`, and a simulator.
    pub async fn sqlite() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_url = format!("sqlite://{}", dir.path().join("outbox.db").display());
        Env::with_url(dir, db_url).await
    }

    /// A fresh database on the test Postgres cluster (`OUTBOX_TEST_PG_URL`); `None` outside
    /// CI when no cluster is configured. In CI a missing cluster is a failure, never a skip.
    pub async fn postgres() -> Option<Env> {
        let base = match std::env::var("OUTBOX_TEST_PG_URL") {
            Ok(u) => u,
            Err(_) if std::env::var_os("CI").is_some() => {
                panic!("OUTBOX_TEST_PG_URL is not set: in CI the Postgres tests must run (scripts/test.sh starts a cluster)")
            }
            Err(_) => {
                eprintln!(
                    "skipping: OUTBOX_TEST_PG_URL is not set (scripts/test.sh starts a cluster)"
                );
                return None;
            }
        };
        Some(Env::postgres_on(&base).await)
    }

    /// A fresh database on the cluster at `base` (a URL ending in a database name).
    pub async fn postgres_on(base: &str) -> Env {
        let name = format!("e2e_{}_{}", std::process::id(), rand_suffix());
        let admin = sqlx::PgPool::connect(base)
            .await
            .expect("connecting to the test cluster");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("creating a test database");
        admin.close().await;
        let i = base.rfind('/').expect("a database part in the URL");
        Env::with_url(
            tempfile::tempdir().expect("temp dir"),
            format!("{}/{name}", &base[..i]),
        )
        .await
    }

    async fn with_url(dir: tempfile::TempDir, db_url: String) -> Env {
        let out = Command::new(bin("outbox-migrate"))
            .arg("--create")
            .arg("--database-url")
            .arg(&db_url)
            .output()
            .expect("running outbox-migrate");
        assert!(
            out.status.success(),
            "outbox-migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sim = platform_sim::start("127.0.0.1:0".parse().unwrap(), SimConfig::default())
            .await
            .expect("starting the simulator");
        let config_path = dir.path().join("outboxd.toml");
        let env = Env {
            dir,
            db_url,
            sim,
            config_path,
        };
        env.write_config("");
        env
    }

    /// Writes the config: a pyun sink pointed at the simulator with quick retries, plus
    /// `extra` TOML appended (later keys of the same table are not allowed by TOML, so
    /// tests that need other values use [`Env::write_config_raw`]).
    pub fn write_config(&self, extra: &str) {
        self.write_config_raw(&format!(
            r#"database_url = "{db}"
log_level = "info,outbox_core=debug"

[admin]
listen = "127.0.0.1:0"

[worker]
poll_interval = "100ms"
lease = "5s"
shutdown_grace = "3s"

[retry]
base = "50ms"
cap = "200ms"
floor = "20ms"
max_attempts = 5
max_age = "1h"

[sinks.pyun]
type = "pyun"
url = "{url}"
app_id = "{app_id}"
secret_env = "TEST_PYUN_SECRET"
timeout = "1s"
connect_timeout = "1s"
concurrency = 16
{extra}
"#,
            db = self.db_url,
            url = self.sim.pyun_url(),
            app_id = SimConfig::default().pyun_app_id,
        ));
    }

    pub fn write_config_raw(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("writing the config");
    }

    /// `outboxd` with this env's config and the secrets in its environment.
    pub fn outboxd(&self) -> Command {
        let mut c = Command::new(bin("outboxd"));
        c.arg("--config").arg(&self.config_path);
        c.env("TEST_PYUN_SECRET", PYUN_SECRET);
        c.env("TEST_EPEIS_KEY", EPEIS_DYNAMIC_KEY);
        c.env("TEST_LBBTECH_TOKEN", LBBTECH_TOKEN);
        c.env_remove("RUST_LOG");
        c
    }

    /// Runs `outboxd run --until-idle` to completion (bounded by `timeout`).
    pub async fn run_until_idle(&self, timeout: Duration) -> Output {
        let mut cmd = tokio::process::Command::from(self.outboxd());
        cmd.args(["run", "--until-idle"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().expect("starting outboxd");
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .expect("outboxd --until-idle did not finish in time")
            .expect("waiting for outboxd");
        assert!(
            out.status.success(),
            "outboxd failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts the daemon in the background with piped output: the caller must read it (or
    /// use [`Env::spawn_daemon_logged`]), or a chatty daemon blocks on the full pipe.
    pub fn spawn_daemon(&self) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::from(self.outboxd());
        cmd.arg("run")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn().expect("starting outboxd")
    }

    /// Starts the daemon in the background with its output going to a file in the env's
    /// directory (returned), so a chatty daemon can never block on a full pipe.
    pub fn spawn_daemon_logged(&self) -> (tokio::process::Child, PathBuf) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.dir.path().join(format!("outboxd-{n}.log"));
        let file = std::fs::File::create(&log).expect("creating the daemon log");
        let mut cmd = tokio::process::Command::from(self.outboxd());
        cmd.arg("run")
            .stdout(file.try_clone().expect("log file handle"))
            .stderr(file)
            .kill_on_drop(true);
        (cmd.spawn().expect("starting outboxd"), log)
    }

    pub async fn store(&self) -> Store {
        Store::open(
            &self.db_url,
            &OpenOptions {
                max_connections: 2,
                ..OpenOptions::default()
            },
        )
        .await
        .expect("opening the test store")
    }

    pub async fn enqueue(
        &self,
        store: &Store,
        sink: &str,
        event_type: EventType,
        key: &str,
        payload: &serde_json::Value,
    ) {
        let ev = NewEvent {
            sink: sink.into(),
            event_type,
            idempotency_key: key.into(),
            payload: payload.to_string(),
            ordering_key: None,
            not_before: None,
        };
        assert!(
            store.enqueue(&ev).await.expect("enqueue"),
            "key {key} was already there"
        );
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish() % 1_000_000_000
}

/// A valid charge_end payload for order `order`.
pub fn charge_end(order: &str) -> serde_json::Value {
    serde_json::json!({
        "station_uuid": "8f5fdb60-9374-4c11-bdc2-a32d8369258c",
        "device_no": "S1",
        "port_no": "1",
        "replenish_order": order,
        "start_time": "2026-11-24T08:20:00Z",
        "end_time": "2026-11-24T09:20:00Z",
        "vin": "川A660N2",
        "quantity": 6556,
        "energy_value": 207,
        "fee_value": 975,
        "total_value": 1182,
        "energy_code": "CN_AC"
    })
}

/// Whether `needle` occurs anywhere in the SQLite database files (main file and WAL), as
/// raw bytes: the strongest form of "this secret is not in the database".
pub fn sqlite_files_contain(dir: &Path, needle: &str) -> bool {
    ["outbox.db", "outbox.db-wal"].iter().any(|f| {
        std::fs::read(dir.join(f))
            .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .unwrap_or(false)
    })
}

/// Whether Postgres tests should run here: yes with `OUTBOX_TEST_PG_URL`, a failure in CI
/// without it, a skip (with a note) elsewhere.
pub fn postgres_available() -> bool {
    if std::env::var_os("OUTBOX_TEST_PG_URL").is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("OUTBOX_TEST_PG_URL is not set: in CI the Postgres tests must run (scripts/test.sh starts a cluster)");
    }
    eprintln!("skipping: OUTBOX_TEST_PG_URL is not set (scripts/test.sh starts a cluster)");
    false
}

/// A Postgres cluster of the test's own (for tests that restart it), started with
/// scripts/pg-cluster.sh and stopped on drop.
pub struct PgCluster {
    dir: PathBuf,
    pub url: String,
}

impl PgCluster {
    pub fn start() -> PgCluster {
        let dir = std::env::temp_dir().join(format!(
            "outboxd-e2e-pg-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let out = Command::new("bash")
            .arg(script("pg-cluster.sh"))
            .arg("start")
            .arg(&dir)
            .output()
            .expect("running pg-cluster.sh");
        assert!(
            out.status.success(),
            "pg-cluster.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        PgCluster { dir, url }
    }

    /// Fast restart: every connection is cut, the server is back a moment later.
    pub fn restart(&self) {
        let out = Command::new("bash")
            .arg(script("pg-cluster.sh"))
            .arg("restart")
            .arg(&self.dir)
            .output()
            .expect("running pg-cluster.sh");
        assert!(
            out.status.success(),
            "pg-cluster.sh restart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script("pg-cluster.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}
