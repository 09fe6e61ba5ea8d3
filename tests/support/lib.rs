//! The end-to-end tests' side of `outbox-testkit` (the harness they share with
//! `outbox-bench`): a temp directory with a real SQLite file (or a database on the test
//! Postgres server), the platform simulator on loopback, and the real `outboxd` /
//! `outbox-migrate` binaries run as separate processes. Failures here panic: they are the
//! test's failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outbox_core::event::{EventType, NewEvent};
use outbox_core::store::{OpenOptions, Store};
use outbox_testkit::{Config, SecretRef};
use platform_sim::{SimConfig, SimHandle};

/// Secret values the tests hand to outboxd; they must never show up in its output or DB.
pub use outbox_testkit::{EPEIS_DYNAMIC_KEY, LBBTECH_TOKEN, PYUN_SECRET};

/// The environment variables `Env::outboxd` passes the secrets in (`secret_env` of the
/// sink sections).
pub const PYUN_SECRET_ENV: &str = "TEST_PYUN_SECRET";
pub const EPEIS_KEY_ENV: &str = "TEST_EPEIS_KEY";
pub const LBBTECH_TOKEN_ENV: &str = "TEST_LBBTECH_TOKEN";
/// The T/CEC OperatorSecret, DataSecret, DataSecretIV and SigSecret (`tcec_sink`), in that
/// order, and the simulator's values for them.
pub const TCEC_SECRET_ENVS: [&str; 4] = [
    "TEST_TCEC_OPERATOR_SECRET",
    "TEST_TCEC_DATA_SECRET",
    "TEST_TCEC_DATA_SECRET_IV",
    "TEST_TCEC_SIG_SECRET",
];
pub const TCEC_SECRETS: [&str; 4] = [
    platform_sim::tcec::DEMO_OPERATOR_SECRET,
    platform_sim::tcec::DEMO_DATA_SECRET,
    platform_sim::tcec::DEMO_DATA_SECRET_IV,
    platform_sim::tcec::DEMO_SIG_SECRET,
];

/// A built binary of the workspace. `cargo test` builds the test's own package only, so the
/// scripts build every binary first (`cargo build --workspace --bins`).
pub fn bin(name: &str) -> PathBuf {
    outbox_testkit::bin(name).unwrap_or_else(|e| panic!("{e}"))
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
        Some(Env::postgres_on(&outbox_testkit::test_pg_url()?).await)
    }

    /// A fresh database on the cluster at `base` (a URL ending in a database name).
    pub async fn postgres_on(base: &str) -> Env {
        let name = format!(
            "e2e_{}_{}",
            std::process::id(),
            outbox_testkit::unique_suffix()
        );
        let url = outbox_testkit::create_database(base, &name)
            .await
            .unwrap_or_else(|e| panic!("creating a test database: {e}"));
        Env::with_url(tempfile::tempdir().expect("temp dir"), url).await
    }

    async fn with_url(dir: tempfile::TempDir, db_url: String) -> Env {
        migrate(&db_url);
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
        let config = Config {
            log_level: Some("info,outbox_core=debug".into()),
            admin_listen: "127.0.0.1:0".into(),
            worker: lines(&[
                "poll_interval = \"100ms\"",
                "lease = \"5s\"",
                "shutdown_grace = \"3s\"",
            ]),
            retry: lines(&[
                "base = \"50ms\"",
                "cap = \"200ms\"",
                "floor = \"20ms\"",
                "max_attempts = 5",
                "max_age = \"1h\"",
            ]),
            sinks: vec![self.pyun_sink("pyun", &["concurrency = 16", extra])],
        };
        self.write_config_raw(&config.render(&self.db_url));
    }

    /// A `[sinks.NAME]` section of type pyun pointed at the simulator, with the secret from
    /// `TEST_PYUN_SECRET`, 1 s timeouts and `extra` lines appended.
    pub fn pyun_sink(&self, name: &str, extra: &[&str]) -> String {
        let secret = SecretRef::Env(PYUN_SECRET_ENV);
        let lines = [&TIMEOUTS[..], extra].concat();
        outbox_testkit::pyun_sink(name, &self.sim.pyun_url(), secret, &lines)
    }

    /// A `[sinks.NAME]` section of type epeis pointed at the simulator, with the key from
    /// `TEST_EPEIS_KEY`, 1 s timeouts and `extra` lines appended.
    pub fn epeis_sink(&self, name: &str, extra: &[&str]) -> String {
        let secret = SecretRef::Env(EPEIS_KEY_ENV);
        let lines = [&TIMEOUTS[..], extra].concat();
        outbox_testkit::epeis_sink(name, &self.sim.epeis_url(), secret, &lines)
    }

    /// A `[sinks.NAME]` section of type lbbtech pointed at the simulator, with the token
    /// from `TEST_LBBTECH_TOKEN`, 1 s timeouts and `extra` lines appended.
    pub fn lbbtech_sink(&self, name: &str, extra: &[&str]) -> String {
        let secret = SecretRef::Env(LBBTECH_TOKEN_ENV);
        let lines = [&TIMEOUTS[..], extra].concat();
        outbox_testkit::lbbtech_sink(name, &self.sim.lbbtech_base_url(), secret, &lines)
    }

    /// A `[sinks.NAME]` section of type tcec pointed at the simulator, with its four secrets
    /// from [`TCEC_SECRET_ENVS`], 1 s timeouts and `extra` lines appended.
    pub fn tcec_sink(&self, name: &str, extra: &[&str]) -> String {
        let [op, data, iv, sig] = TCEC_SECRET_ENVS.map(SecretRef::Env);
        let lines = [&TIMEOUTS[..], extra].concat();
        outbox_testkit::tcec_sink(name, &self.sim.tcec_url(), op, [data, iv, sig], &lines)
    }

    pub fn write_config_raw(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("writing the config");
    }

    /// `outboxd` with this env's config and the secrets in its environment.
    pub fn outboxd(&self) -> Command {
        let mut c = Command::new(bin("outboxd"));
        c.arg("--config").arg(&self.config_path);
        c.env(PYUN_SECRET_ENV, PYUN_SECRET);
        c.env(EPEIS_KEY_ENV, EPEIS_DYNAMIC_KEY);
        c.env(LBBTECH_TOKEN_ENV, LBBTECH_TOKEN);
        for (var, value) in TCEC_SECRET_ENVS.iter().zip(TCEC_SECRETS) {
            c.env(var, value);
        }
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
            supersede_key: None,
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

/// The sinks' timeouts in the tests: short, so a test never waits long on a dead peer.
const TIMEOUTS: [&str; 2] = ["timeout = \"1s\"", "connect_timeout = \"1s\""];

fn lines(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
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
    outbox_testkit::test_pg_url().is_some()
}

/// A Postgres cluster of the test's own (for tests that stop or restart it), started with
/// scripts/pg-cluster.sh and stopped on drop.
pub struct PgCluster {
    cluster: outbox_testkit::PgCluster,
    pub url: String,
}

impl PgCluster {
    pub fn start() -> PgCluster {
        let cluster = outbox_testkit::PgCluster::start().unwrap_or_else(|e| panic!("{e}"));
        PgCluster {
            url: cluster.url.clone(),
            cluster,
        }
    }

    /// Fast restart: every connection is cut, the server is back a moment later.
    pub fn restart(&self) {
        self.cluster.restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the server, keeping its data.
    pub fn down(&self) {
        self.cluster.down().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the server again after [`PgCluster::down`], on the same port.
    pub fn up(&self) {
        self.cluster.up().unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after `timeout`. For
/// conditions with no signal to wait on (a row's state in the database).
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    outbox_testkit::wait_until(what, timeout, Duration::from_millis(50), || {
        let fut = check();
        async move { Ok(fut.await) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Runs the real `outbox-migrate` on `url`.
pub fn migrate(url: &str) {
    outbox_testkit::migrate(url).unwrap_or_else(|e| panic!("{e}"));
}
