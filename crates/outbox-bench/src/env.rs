//! The harness every scenario and drill runs on, on top of `outbox-testkit` (the harness
//! the end-to-end tests share): a work directory, `platform-sim` and `outboxd` as separate
//! processes, outbox databases on SQLite or on a throwaway Postgres cluster, bulk inserts
//! in SQL, the CPU the Postgres server used, and Markdown tables.
//!
//! Everything started here is stopped when its handle is dropped (processes are killed and
//! reaped, the cluster is stopped and removed, the work directory deleted), so a failed
//! scenario leaves nothing behind; the wrapper scripts add a trap for Ctrl-C.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use outbox_testkit::{config::SecretRef, set_mode, SecretFiles};
use serde::Deserialize;

pub use outbox_testkit::{bin, cpu_secs, fail, status_kb, tail, Config, Db, Pool, Proc, Result};

/// The Postgres server of a run: a throwaway cluster in the work directory, or `--pg-url`.
pub type Pg = outbox_testkit::PgServer;

pub const PYUN_PATH: &str = platform_sim::pyun::PATH;
pub const EPEIS_PATH: &str = platform_sim::epeis::PATH;
pub const LBBTECH_PATH: &str = platform_sim::lbbtech::BASE_PATH;

// ---------------------------------------------------------------------------------------
// Work directory

/// A directory for one run, removed on drop unless `keep`.
pub struct Work {
    pub dir: PathBuf,
    keep: bool,
    secrets: SecretFiles,
}

impl Work {
    /// `dir` (made by a wrapper script) or a new directory under /tmp. World-readable, so
    /// the `postgres` user can reach a cluster made inside it.
    pub fn new(dir: Option<PathBuf>, keep: bool) -> Result<Work> {
        let dir = match dir {
            Some(d) => d,
            None => std::env::temp_dir().join(format!(
                "outbox-bench.{}.{:06}",
                std::process::id(),
                rand::random::<u32>() % 1_000_000
            )),
        };
        std::fs::create_dir_all(&dir)?;
        set_mode(&dir, 0o755)?;
        let secrets = SecretFiles::write(&dir)?;
        Ok(Work { dir, keep, secrets })
    }

    /// A fresh subdirectory.
    pub fn sub(&self, name: &str) -> Result<PathBuf> {
        let p = self.dir.join(name);
        if p.exists() {
            std::fs::remove_dir_all(&p)?;
        }
        std::fs::create_dir_all(&p)?;
        set_mode(&p, 0o755)?;
        Ok(p)
    }

    pub fn secrets(&self) -> &SecretFiles {
        &self.secrets
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept {}", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Processes

/// CPU of every process named `postgres` (the server and its backends) over a span, so a
/// drain on Postgres can show what the database itself used. Backends come and go with
/// outboxd's connections, so their CPU is sampled while they live (every 100 ms) and the
/// last value seen counts.
pub struct PgCpu {
    first: std::collections::HashMap<i32, f64>,
    last: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<i32, f64>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn postgres_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .collect()
}

impl PgCpu {
    pub fn start() -> PgCpu {
        let sample = || -> std::collections::HashMap<i32, f64> {
            postgres_pids()
                .into_iter()
                .filter_map(|p| Some((p, cpu_secs(p)?)))
                .collect()
        };
        let first = sample();
        let last = std::sync::Arc::new(std::sync::Mutex::new(first.clone()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, st) = (last.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                let now = sample();
                l.lock().expect("not poisoned").extend(now);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        PgCpu {
            first,
            last,
            stop,
            task: Some(task),
        }
    }

    /// CPU seconds used since `start`.
    pub async fn finish(mut self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let last = self.last.lock().expect("not poisoned");
        last.iter()
            .map(|(pid, c)| c - self.first.get(pid).copied().unwrap_or(0.0))
            .sum()
    }
}

/// CPU seconds of this process (the bare loop runs in it).
pub fn self_cpu_secs() -> f64 {
    cpu_secs(std::process::id() as i32).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------
// The platform simulator

/// `platform-sim` as a separate process on a loopback port.
pub struct Sim {
    pub proc: Proc,
    pub url: String,
    http: reqwest::Client,
}

/// What the drills need of a recorded request.
#[derive(Debug, Clone, Deserialize)]
pub struct SimRequest {
    pub received_at_ms: i64,
    pub platform: String,
    pub path: String,
    pub key: Option<String>,
    pub applied: bool,
    pub duplicate: bool,
}

impl Sim {
    /// Starts the simulator, with a script (random faults, scripted keys) if given.
    pub async fn start(work: &Work, name: &str, script: Option<serde_json::Value>) -> Result<Sim> {
        let mut cmd = Command::new(bin("platform-sim")?);
        cmd.args(["--listen", "127.0.0.1:0"]);
        if let Some(s) = script {
            let path = work.dir.join(format!("{name}.script.json"));
            std::fs::write(&path, s.to_string())?;
            cmd.arg("--script").arg(path);
        }
        cmd.stdout(Stdio::piped());
        let log = work.dir.join(format!("{name}.log"));
        let mut proc = Proc::spawn_with(cmd, name, &log, std::fs::File::create(&log)?)?;
        let stdout = proc.take_stdout().ok_or("no stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            return fail(format!(
                "platform-sim did not start: {line:?} {}",
                proc.log_text()
            ));
        };
        Ok(Sim {
            url: url.to_string(),
            proc,
            http: reqwest::Client::new(),
        })
    }

    pub fn pyun_url(&self) -> String {
        format!("{}{PYUN_PATH}", self.url)
    }
    pub fn epeis_url(&self) -> String {
        format!("{}{EPEIS_PATH}", self.url)
    }
    pub fn lbbtech_url(&self) -> String {
        format!("{}{LBBTECH_PATH}", self.url)
    }

    pub async fn stats(&self) -> Result<platform_sim::Stats> {
        Ok(self
            .http
            .get(format!("{}/_sim/stats", self.url))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b))??)
    }

    pub async fn requests(&self) -> Result<Vec<SimRequest>> {
        let body = self
            .http
            .get(format!("{}/_sim/requests", self.url))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        Ok(serde_json::from_slice(&body)?)
    }

    pub fn cpu_secs(&self) -> f64 {
        self.proc.cpu_secs().unwrap_or(0.0)
    }

    pub fn rss_mib(&self) -> f64 {
        status_kb(self.proc.pid, "VmHWM").unwrap_or(0) as f64 / 1024.0
    }
}

// ---------------------------------------------------------------------------------------
// outboxd

/// `[sinks.NAME]` of type pyun pointed at the simulator; `extra` lines appended.
pub fn pyun_sink(work: &Work, name: &str, sim: &Sim, extra: &[&str]) -> String {
    let secret = SecretRef::File(&work.secrets().pyun);
    outbox_testkit::pyun_sink(name, &sim.pyun_url(), secret, extra)
}

pub fn epeis_sink(work: &Work, name: &str, sim: &Sim, extra: &[&str]) -> String {
    let secret = SecretRef::File(&work.secrets().epeis);
    outbox_testkit::epeis_sink(name, &sim.epeis_url(), secret, extra)
}

pub fn lbbtech_sink(work: &Work, name: &str, sim: &Sim, extra: &[&str]) -> String {
    let secret = SecretRef::File(&work.secrets().lbbtech);
    outbox_testkit::lbbtech_sink(name, &sim.lbbtech_url(), secret, extra)
}

/// How to start `outboxd`: under `perf` when `PERF` is set (e.g.
/// `PERF="perf record -g -o /tmp/outboxd.perf --"`), under libfaketime when asked.
pub struct Daemon;

impl Daemon {
    pub fn command(config: &Path, until_idle: bool) -> Result<Command> {
        let outboxd = bin("outboxd")?;
        let perf = std::env::var("PERF").unwrap_or_default();
        let mut words = perf.split_whitespace();
        let mut cmd = match words.next() {
            Some(first) => {
                let mut c = Command::new(first);
                c.args(words).arg(&outboxd);
                c
            }
            None => Command::new(&outboxd),
        };
        cmd.arg("--config").arg(config).arg("run");
        if until_idle {
            cmd.arg("--until-idle");
        }
        Ok(cmd)
    }

    /// Writes `config` next to the log and starts `outboxd run`.
    pub fn spawn(
        work: &Work,
        name: &str,
        db_url: &str,
        config: &Config,
        until_idle: bool,
    ) -> Result<Proc> {
        let path = work.dir.join(format!("{name}.toml"));
        std::fs::write(&path, config.render(db_url))?;
        Proc::spawn(
            Self::command(&path, until_idle)?,
            name,
            &work.dir.join(format!("{name}.log")),
        )
    }

    /// Starts `outboxd run` (see [`Daemon::spawn`]) and waits until its worker is up.
    pub async fn start(work: &Work, name: &str, db_url: &str, config: &Config) -> Result<Proc> {
        let mut d = Self::spawn(work, name, db_url, config, false)?;
        d.wait_for_log("outboxd worker started", Duration::from_secs(10))
            .await?;
        Ok(d)
    }

    /// Runs `outboxd` with an operator command (`dead requeue ...`), returning stdout.
    pub fn cli(work: &Work, db_url: &str, config: &Config, args: &[&str]) -> Result<String> {
        let path = work.dir.join("cli.toml");
        std::fs::write(&path, config.render(db_url))?;
        let out = Command::new(bin("outboxd")?)
            .arg("--config")
            .arg(&path)
            .args(args)
            .env_remove("RUST_LOG")
            .output()?;
        if !out.status.success() {
            return fail(format!(
                "outboxd {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

// ---------------------------------------------------------------------------------------
// Outbox databases

/// The charge_end payload of the benchmarks, as SQL over the key expression `k`.
fn pyun_payload_sql(backend: &str, k: &str) -> String {
    let f = if backend == "sqlite" {
        "json_object"
    } else {
        "json_build_object"
    };
    let cast = if backend == "sqlite" { "" } else { "::text" };
    format!(
        "{f}('station_uuid', '8f5fdb60-9374-4c11-bdc2-a32d8369258c', 'device_no', 'S1', 'port_no', '1', \
              'replenish_order', {k}, 'start_time', '2026-11-24T08:20:00Z', 'end_time', '2026-11-24T09:20:00Z', \
              'vin', '川A660N2', 'quantity', 6556, 'energy_value', 207, 'fee_value', 975, 'total_value', 1182, \
              'energy_code', 'CN_AC'){cast}"
    )
}

/// The same payload as JSON text, for the bare loop and single inserts.
pub fn pyun_payload(key: &str) -> String {
    serde_json::json!({
        "station_uuid": "8f5fdb60-9374-4c11-bdc2-a32d8369258c", "device_no": "S1", "port_no": "1",
        "replenish_order": key, "start_time": "2026-11-24T08:20:00Z",
        "end_time": "2026-11-24T09:20:00Z", "vin": "川A660N2", "quantity": 6556,
        "energy_value": 207, "fee_value": 975, "total_value": 1182, "energy_code": "CN_AC"
    })
    .to_string()
}

pub fn now_ms() -> i64 {
    outbox_core::clock::now_ms()
}

/// Bulk inserts of benchmark rows in SQL, on either backend.
#[allow(async_fn_in_trait)]
pub trait Bulk {
    /// Bulk-inserts `n` pending charge_end rows for `sink`, keys `{prefix}{i}`, in chunks of
    /// 200,000 rows per statement (one transaction each).
    async fn insert_pending(&self, sink: &str, prefix: &str, n: u64) -> Result<()>;
    /// Bulk-inserts `n` delivered rows (a day old: inside the default 7-day retention, so
    /// the daemon does not prune them during the run).
    async fn insert_delivered(&self, sink: &str, prefix: &str, n: u64) -> Result<()>;
}

impl Bulk for Db {
    async fn insert_pending(&self, sink: &str, prefix: &str, n: u64) -> Result<()> {
        bulk(self, sink, prefix, n, false).await
    }

    async fn insert_delivered(&self, sink: &str, prefix: &str, n: u64) -> Result<()> {
        bulk(self, sink, prefix, n, true).await
    }
}

async fn bulk(db: &Db, sink: &str, prefix: &str, n: u64, delivered: bool) -> Result<()> {
    const CHUNK: u64 = 200_000;
    let day_ago = now_ms() - 86_400_000;
    let mut start = 1;
    while start <= n {
        let end = (start + CHUNK - 1).min(n);
        let extra_cols = if delivered {
            ", status, attempts, finished_at, last_attempt_at, created_at"
        } else {
            ""
        };
        let extra_vals = if delivered {
            format!(", 'delivered', 1, {day_ago}, {day_ago}, {day_ago}")
        } else {
            String::new()
        };
        let sql = match db.pool {
            Pool::Sqlite(_) => format!(
                "WITH RECURSIVE n(i) AS (SELECT {start} UNION ALL SELECT i + 1 FROM n WHERE i < {end}) \
                 INSERT INTO outbox (sink, event_type, idempotency_key, payload{extra_cols}) \
                 SELECT '{sink}', 'charge_end', '{prefix}' || i, {}{extra_vals} FROM n",
                pyun_payload_sql("sqlite", &format!("'{prefix}' || i"))
            ),
            Pool::Pg(_) => format!(
                "INSERT INTO outbox (sink, event_type, idempotency_key, payload{extra_cols}) \
                 SELECT '{sink}', 'charge_end', '{prefix}' || i, {}{extra_vals} \
                 FROM generate_series({start}::bigint, {end}::bigint) AS i",
                pyun_payload_sql("postgres", &format!("'{prefix}' || i"))
            ),
        };
        db.exec(&sql).await?;
        start = end + 1;
    }
    db.settle().await
}

// ---------------------------------------------------------------------------------------
// Output

/// A table printed as Markdown, so it pastes into docs/ as it is.
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Table {
        Table {
            title: title.to_string(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let n = self.headers.len();
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let parts: Vec<String> = (0..n)
                .map(|i| {
                    let c = cells.get(i).map(String::as_str).unwrap_or("");
                    format!("{c}{}", " ".repeat(w[i] - c.chars().count()))
                })
                .collect();
            format!("| {} |", parts.join(" | "))
        };
        println!("\n### {}\n", self.title);
        println!("{}", line(&self.headers));
        let sep: Vec<String> = w.iter().map(|x| "-".repeat(*x)).collect();
        println!("|-{}-|", sep.join("-|-"));
        for r in &self.rows {
            println!("{}", line(r));
        }
        println!();
    }
}

/// `12,345`.
pub fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The value at quantile `q` of sorted `v`.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}
