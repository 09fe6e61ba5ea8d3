//! The harness every scenario and drill runs on: a work directory, the real binaries as
//! separate processes (`platform-sim`, `outbox-migrate`, `outboxd`), outbox databases on
//! SQLite or on a throwaway Postgres cluster, bulk inserts in SQL, and the figures the kernel
//! keeps about a process (CPU time, peak RSS).
//!
//! Everything started here is stopped when its handle is dropped (processes are killed and
//! reaped, the cluster is stopped and removed, the work directory deleted), so a failed
//! scenario leaves nothing behind; the wrapper scripts add a trap for Ctrl-C.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, Row, SqlitePool};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// An error with a message.
pub fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(msg.into().into())
}

pub const PYUN_PATH: &str = "/gate/1.0/energy/internal/replenish";
pub const EPEIS_PATH: &str = "/Service/v1/RepairDosageBack/";
pub const LBBTECH_PATH: &str = "/open";

/// The repository root (scripts/pg-cluster.sh lives there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A binary built next to this one (`cargo build --release -p outbox-worker ...`).
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().unwrap_or(Path::new(".")).join(name);
    if !path.exists() {
        return fail(format!(
            "{} is missing: build it first (scripts/bench.sh does: cargo build --release -p outbox-worker -p outbox-migrate -p platform-sim -p outbox-bench)",
            path.display()
        ));
    }
    Ok(path)
}

// ---------------------------------------------------------------------------------------
// Work directory

/// A directory for one run, removed on drop unless `keep`.
pub struct Work {
    pub dir: PathBuf,
    keep: bool,
    secrets: Secrets,
}

/// Files holding the simulator's demo credentials, for the sinks' `secret_file`.
pub struct Secrets {
    pub pyun: PathBuf,
    pub epeis: PathBuf,
    pub lbbtech: PathBuf,
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
        let write = |name: &str, value: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, value)?;
            Ok(p)
        };
        let secrets = Secrets {
            pyun: write("pyun.secret", platform_sim::config::DEMO_PYUN_APP_SECRET)?,
            epeis: write("epeis.key", platform_sim::config::DEMO_EPEIS_DYNAMIC_KEY)?,
            lbbtech: write("lbbtech.token", platform_sim::config::DEMO_LBBTECH_TOKEN)?,
        };
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

    pub fn secrets(&self) -> &Secrets {
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

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Processes

/// How a child process ended, with what the kernel counted for it (wait4's rusage).
#[derive(Debug, Clone, Copy, Default)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub user_secs: f64,
    pub sys_secs: f64,
    pub max_rss_kb: u64,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    pub fn cpu_secs(&self) -> f64 {
        self.user_secs + self.sys_secs
    }
}

/// A child process, killed and reaped on drop. Output goes to a log file.
pub struct Proc {
    pub pid: i32,
    pub name: String,
    pub log: PathBuf,
    child: Option<std::process::Child>,
    /// How it ended, once reaped.
    exit: Option<Exit>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr to `log`.
    pub fn spawn(mut cmd: Command, name: &str, log: &Path) -> Result<Proc> {
        let file = std::fs::File::create(log)?;
        cmd.stdout(file.try_clone()?);
        Self::spawn_with(cmd, name, log, file)
    }

    /// Starts `cmd` with stderr to `log` and stdout as the caller set it.
    fn spawn_with(mut cmd: Command, name: &str, log: &Path, file: std::fs::File) -> Result<Proc> {
        cmd.stdin(Stdio::null()).stderr(file).env_remove("RUST_LOG");
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc {
            pid: child.id() as i32,
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
            exit: None,
        })
    }

    pub fn signal(&self, sig: i32) {
        if self.child.is_some() {
            // SAFETY: kill(2) on the pid of a child this handle has not reaped yet.
            unsafe {
                libc::kill(self.pid, sig);
            }
        }
    }

    pub fn alive(&mut self) -> bool {
        self.try_reap().is_none() && self.child.is_some()
    }

    fn try_reap(&mut self) -> Option<Exit> {
        self.child.as_ref()?;
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid value for wait4 to fill.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child, WNOHANG.
        let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
        if r != self.pid {
            return None;
        }
        self.child = None;
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        self.exit = Some(Exit {
            code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
            user_secs: tv(ru.ru_utime),
            sys_secs: tv(ru.ru_stime),
            max_rss_kb: ru.ru_maxrss as u64,
        });
        self.exit
    }

    /// Waits for the process to end (polling every 2 ms).
    pub async fn wait(&mut self, timeout: Duration) -> Result<Exit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_reap() {
                return Ok(e);
            }
            if let Some(e) = self.exit {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                return fail(format!(
                    "{} did not finish within {timeout:?}; its log: {}",
                    self.name,
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) -> Result<Exit> {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10)).await
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<Exit> {
        self.signal(libc::SIGTERM);
        match self.wait(grace).await {
            Ok(e) => Ok(e),
            Err(_) => self.kill().await,
        }
    }

    /// User + system CPU seconds so far, from /proc.
    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs(self.pid)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if !self.alive() {
                return fail(format!(
                    "{} exited; its log:\n{}",
                    self.name,
                    tail(&self.log_text(), 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        fail(format!(
            "{} did not log {needle:?} within {timeout:?}",
            self.name
        ))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGKILL);
            let mut status = 0;
            // SAFETY: blocking wait for our own child, which was just killed.
            unsafe {
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of a process in seconds, from /proc/PID/stat.
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM).
pub fn status_kb(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

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
        let stdout = proc
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .ok_or("no stdout")?;
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

/// The sections of an outboxd config.
#[derive(Clone, Default)]
pub struct Config {
    pub log_level: Option<String>,
    /// Lines of the `[worker]` table.
    pub worker: Vec<String>,
    /// Lines of the `[retry]` table.
    pub retry: Vec<String>,
    /// Whole `[sinks.NAME]` sections.
    pub sinks: Vec<String>,
}

impl Config {
    pub fn render(&self, db_url: &str) -> String {
        let mut s = format!("database_url = \"{db_url}\"\n");
        if let Some(l) = &self.log_level {
            s.push_str(&format!("log_level = \"{l}\"\n"));
        }
        // No admin listener: several daemons run side by side on one machine.
        s.push_str("\n[admin]\nlisten = \"\"\n");
        if !self.worker.is_empty() {
            s.push_str(&format!("\n[worker]\n{}\n", self.worker.join("\n")));
        }
        if !self.retry.is_empty() {
            s.push_str(&format!("\n[retry]\n{}\n", self.retry.join("\n")));
        }
        for sink in &self.sinks {
            s.push('\n');
            s.push_str(sink);
        }
        s
    }
}

/// `[sinks.NAME]` of type pyun pointed at the simulator; `extra` lines appended.
pub fn pyun_sink(work: &Work, name: &str, sim: &Sim, extra: &[&str]) -> String {
    format!(
        "[sinks.{name}]\ntype = \"pyun\"\nurl = \"{}\"\napp_id = \"{}\"\nsecret_file = \"{}\"\n{}\n",
        sim.pyun_url(),
        platform_sim::config::DEMO_PYUN_APP_ID,
        work.secrets().pyun.display(),
        extra.join("\n")
    )
}

pub fn epeis_sink(work: &Work, name: &str, sim: &Sim, extra: &[&str]) -> String {
    format!(
        "[sinks.{name}]\ntype = \"epeis\"\nurl = \"{}\"\nchannel_did = \"{}\"\nregister_did = \"RG00000000000001\"\naccount_did = \"AC00000000000001\"\nsecret_file = \"{}\"\n{}\n",
        sim.epeis_url(),
        platform_sim::config::DEMO_EPEIS_CHANNEL_DID,
        work.secrets().epeis.display(),
        extra.join("\n")
    )
}

pub fn lbbtech_sink(work: &Work, name: &str, sim: &Sim, extra: &[&str]) -> String {
    format!(
        "[sinks.{name}]\ntype = \"lbbtech\"\nurl = \"{}\"\nsecret_file = \"{}\"\n{}\n",
        sim.lbbtech_url(),
        work.secrets().lbbtech.display(),
        extra.join("\n")
    )
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
// Postgres

/// A throwaway cluster (scripts/pg-cluster.sh) or a server given by URL.
pub struct Pg {
    dir: Option<PathBuf>,
    /// URL of a database on the server; scenarios create their own databases next to it.
    pub url: String,
    made: std::sync::Mutex<Vec<String>>,
}

impl Pg {
    pub fn start(work: &Work) -> Result<Pg> {
        let dir = work.dir.join("pg");
        let out = Command::new(repo_root().join("scripts/pg-cluster.sh"))
            .arg("start")
            .arg(&dir)
            .output()?;
        if !out.status.success() {
            return fail(format!(
                "pg-cluster.sh start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Pg {
            dir: Some(dir),
            url: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            made: Default::default(),
        })
    }

    pub fn external(url: &str) -> Pg {
        Pg {
            dir: None,
            url: url.to_string(),
            made: Default::default(),
        }
    }

    /// `pg-cluster.sh restart` (a fast restart: every connection is cut).
    pub fn restart(&self) -> Result<Duration> {
        let Some(dir) = &self.dir else {
            return fail("can only restart a cluster this run started (no --pg-url)");
        };
        let t = Instant::now();
        let out = Command::new(repo_root().join("scripts/pg-cluster.sh"))
            .arg("restart")
            .arg(dir)
            .output()?;
        if !out.status.success() {
            return fail(format!(
                "pg-cluster.sh restart failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(t.elapsed())
    }

    /// A new, empty database on the server; its URL.
    pub async fn database(&self, name: &str) -> Result<String> {
        let name = format!("bench_{name}_{}", std::process::id());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.url)
            .await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        self.made.lock().expect("not poisoned").push(name.clone());
        let base = &self.url[..self.url.rfind('/').ok_or("no database in the URL")?];
        Ok(format!("{base}/{name}"))
    }

    /// Drops one database made by [`Pg::database`] (frees the disk between runs).
    pub async fn drop_database(&self, url: &str) {
        let Some(name) = url.rsplit('/').next() else {
            return;
        };
        if let Ok(admin) = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.url)
            .await
        {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&admin)
                .await;
            admin.close().await;
        }
        self.made
            .lock()
            .expect("not poisoned")
            .retain(|n| n != name);
    }

    /// Drops the databases made on an external server (a cluster of ours goes whole).
    pub async fn cleanup(&self) {
        if self.dir.is_some() {
            return;
        }
        let names = std::mem::take(&mut *self.made.lock().expect("not poisoned"));
        if let Ok(admin) = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.url)
            .await
        {
            for n in names {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
                    .execute(&admin)
                    .await;
            }
            admin.close().await;
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = Command::new(repo_root().join("scripts/pg-cluster.sh"))
                .arg("stop")
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Outbox databases

#[derive(Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

/// A migrated outbox database and a connection pool to it (the harness's own: it plays the
/// producer and reads the results).
#[derive(Clone)]
pub struct Db {
    pub url: String,
    pub pool: Pool,
}

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

impl Db {
    /// A SQLite outbox at `path`, created by the real `outbox-migrate`.
    pub async fn sqlite(path: &Path) -> Result<Db> {
        let url = format!("sqlite://{}", path.display());
        migrate(&url)?;
        let opts = SqliteConnectOptions::from_str(&url)?
            .busy_timeout(Duration::from_secs(10))
            // A producer's defaults: the WAL mode is in the file, synchronous stays FULL.
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        Ok(Db {
            url,
            pool: Pool::Sqlite(pool),
        })
    }

    /// A Postgres outbox in a new database of `pg`.
    pub async fn postgres(pg: &Pg, name: &str) -> Result<Db> {
        let url = pg.database(name).await?;
        migrate(&url)?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await?;
        Ok(Db {
            url,
            pool: Pool::Pg(pool),
        })
    }

    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Pg(_) => "postgres",
        }
    }

    pub async fn exec(&self, sql: &str) -> Result<u64> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => sqlx::query(sql).execute(p).await?.rows_affected(),
            Pool::Pg(p) => sqlx::query(sql).execute(p).await?.rows_affected(),
        })
    }

    /// A query returning one integer (NULL reads as 0).
    pub async fn int(&self, sql: &str) -> Result<i64> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => sqlx::query_scalar::<_, Option<i64>>(sql)
                .fetch_one(p)
                .await?
                .unwrap_or(0),
            Pool::Pg(p) => sqlx::query_scalar::<_, Option<i64>>(sql)
                .fetch_one(p)
                .await?
                .unwrap_or(0),
        })
    }

    /// Rows of text columns.
    /// Rows of text columns (cast non-text columns in the SQL).
    pub async fn rows(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => sqlx::query(sql)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| (0..r.len()).map(|i| r.try_get(i).unwrap_or(None)).collect())
                .collect(),
            Pool::Pg(p) => sqlx::query(sql)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| (0..r.len()).map(|i| r.try_get(i).unwrap_or(None)).collect())
                .collect(),
        })
    }

    /// Bulk-inserts `n` pending charge_end rows for `sink`, keys `{prefix}{i}`, in chunks of
    /// 200,000 rows per statement (one transaction each).
    pub async fn insert_pending(&self, sink: &str, prefix: &str, n: u64) -> Result<()> {
        self.bulk(sink, prefix, n, false).await
    }

    /// Bulk-inserts `n` delivered rows (a day old: inside the default 7-day retention, so
    /// the daemon does not prune them during the run).
    pub async fn insert_delivered(&self, sink: &str, prefix: &str, n: u64) -> Result<()> {
        self.bulk(sink, prefix, n, true).await
    }

    async fn bulk(&self, sink: &str, prefix: &str, n: u64, delivered: bool) -> Result<()> {
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
            let sql = match self.pool {
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
            self.exec(&sql).await?;
            start = end + 1;
        }
        self.settle().await
    }

    /// After bulk writes: a checkpoint (SQLite: the WAL back to empty) or VACUUM ANALYZE
    /// (Postgres: fresh statistics and visibility map), as a table at rest would have.
    pub async fn settle(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(p)
                    .await?;
            }
            Pool::Pg(p) => {
                sqlx::query("VACUUM ANALYZE outbox").execute(p).await?;
            }
        }
        Ok(())
    }

    /// Inserts one event the way a producer does (one statement, committed).
    pub async fn enqueue(
        &self,
        sink: &str,
        event_type: &str,
        key: &str,
        payload: &str,
    ) -> Result<bool> {
        let sql = "INSERT INTO outbox (sink, event_type, idempotency_key, payload) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (sink, idempotency_key) DO NOTHING";
        let n = match &self.pool {
            Pool::Sqlite(p) => sqlx::query(sql)
                .bind(sink)
                .bind(event_type)
                .bind(key)
                .bind(payload)
                .execute(p)
                .await?
                .rows_affected(),
            Pool::Pg(p) => sqlx::query(sql)
                .bind(sink)
                .bind(event_type)
                .bind(key)
                .bind(payload)
                .execute(p)
                .await?
                .rows_affected(),
        };
        Ok(n == 1)
    }

    /// Inserts events the way a producer does, 500 per transaction.
    pub async fn enqueue_many(&self, events: &[(String, String, String, String)]) -> Result<()> {
        let sql = "INSERT INTO outbox (sink, event_type, idempotency_key, payload) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (sink, idempotency_key) DO NOTHING";
        for chunk in events.chunks(500) {
            match &self.pool {
                Pool::Sqlite(p) => {
                    let mut tx = p.begin_with("BEGIN IMMEDIATE").await?;
                    for (sink, ty, key, payload) in chunk {
                        sqlx::query(sql)
                            .bind(sink)
                            .bind(ty)
                            .bind(key)
                            .bind(payload)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                }
                Pool::Pg(p) => {
                    let mut tx = p.begin().await?;
                    for (sink, ty, key, payload) in chunk {
                        sqlx::query(sql)
                            .bind(sink)
                            .bind(ty)
                            .bind(key)
                            .bind(payload)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                }
            }
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
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.open_rows().await?;
            if open == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return fail(format!("{open} rows still open after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Pg(p) => p.close().await,
        }
    }
}

/// Runs the real `outbox-migrate`.
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
