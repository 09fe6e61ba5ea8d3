//! outboxd as a service: signals, reload, readiness.
//!
//! The real daemon (`outboxd run`) as systemd runs it, driven with real signals (`kill`).
//! Every wait is on something the daemon or the simulator does (a log line on stderr, a
//! request reaching the simulator, a row changing in the database, the process exiting),
//! never on a fixed sleep.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_core::clock::now_ms;
use outbox_core::event::EventType;
use outbox_core::store::Store;
use outboxd_e2e::{charge_end, Env};
use platform_sim::{Platform, Step};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixDatagram;
use tokio::process::Command;
use tokio::sync::watch;

const RUN: Duration = Duration::from_secs(60);
const STARTUP: Duration = Duration::from_secs(30);
/// Slack on top of the shutdown grace for recording verdicts and exiting, generous enough
/// for debug binaries on a loaded two-core CI machine.
const EXIT_MARGIN: Duration = Duration::from_secs(2);

/// A running `outboxd run` whose stderr (JSON log lines, since it is not a terminal) is
/// collected as it arrives, so a test can wait for a line.
struct Daemon {
    child: tokio::process::Child,
    pid: u32,
    log: Arc<Mutex<String>>,
    lines: watch::Receiver<usize>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Starts the daemon as systemd does (with a notification socket) and waits for
    /// READY=1, after which signals are handled (`sigterm_right_after_ready_is_graceful`),
    /// and for its worker loop to start.
    async fn start(env: &Env) -> Daemon {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let path = env.path().join(format!(
            "notify-{}.sock",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let socket = UnixDatagram::bind(&path).expect("binding a notification socket");
        let child = daemon_command(env, &path, None)
            .spawn()
            .expect("starting outboxd");
        let ready = next_notification(&socket).await;
        assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
        // Later notifications (STOPPING=1) fail to connect and are ignored by the daemon.
        drop(socket);
        let _ = std::fs::remove_file(&path);
        Daemon::start_child(child).await
    }

    async fn start_child(mut child: tokio::process::Child) -> Daemon {
        let pid = child.id().expect("daemon pid");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = watch::channel(0usize);
        let sink = log.clone();
        let reader = tokio::spawn(async move {
            // Drain stdout too, so the daemon never blocks on a full pipe.
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = stdout.read_to_end(&mut buf).await;
            });
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
                drop(l);
                tx.send_modify(|n| *n += 1);
            }
        });
        let mut d = Daemon {
            child,
            pid,
            log,
            lines,
            reader: Some(reader),
        };
        d.wait_for_log("outboxd worker started", STARTUP).await;
        d
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Every stderr line, each of which must be one JSON object.
    fn json_lines(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .collect()
    }

    /// Waits until stderr has a line containing `needle`; panics with the log on timeout
    /// or if the daemon exits first.
    async fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let log = self.log.clone();
        let seen = tokio::time::timeout(
            timeout,
            self.lines
                .wait_for(|_| log.lock().unwrap().contains(needle)),
        )
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
        // An error means stderr closed (the daemon exited): the line may still be there.
        if !seen && !self.log().contains(needle) {
            panic!(
                "no log line containing {needle:?} within {timeout:?}; daemon log:\n{}",
                self.log()
            );
        }
    }

    /// Sends a signal with kill(1), as systemd's ExecReload= and an operator do.
    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// Waits for the daemon to exit and for the rest of its log.
    async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => s.expect("waiting for outboxd"),
            Err(_) => panic!(
                "outboxd did not exit within {timeout:?}; log:\n{}",
                self.log()
            ),
        };
        if let Some(r) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        status
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("polling outboxd").is_none()
    }

    /// SIGTERM and a clean exit, for tests that are done with the daemon.
    async fn stop(mut self) {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(15)).await;
        assert_eq!(status.code(), Some(0), "log:\n{}", self.log());
    }
}

/// Polls `check` every 20 ms until it holds; panics after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rows still claimed: `in_flight`, or holding any part of a lease.
async fn leased_rows(env: &Env) -> i64 {
    let pool = sqlx::SqlitePool::connect(&env.db_url)
        .await
        .expect("opening the outbox");
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM outbox WHERE status = 'in_flight' \
         OR lease_owner IS NOT NULL OR lease_expires_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .expect("counting leased rows");
    pool.close().await;
    n
}

async fn enqueue_all(env: &Env, store: &Store, keys: &[String]) {
    for key in keys {
        env.enqueue(store, "pyun", EventType::ChargeEnd, key, &charge_end(key))
            .await;
    }
}

/// The harness config with some lines replaced (TOML forbids repeating a key).
fn write_config_with(env: &Env, replacements: &[(&str, &str)]) {
    env.write_config("");
    let mut cfg = std::fs::read_to_string(&env.config_path).unwrap();
    for (from, to) in replacements {
        assert!(cfg.contains(from), "{from:?} is not in the harness config");
        cfg = cfg.replacen(from, to, 1);
    }
    env.write_config_raw(&cfg);
}

/// `outboxd run` with systemd's notification socket (and, optionally, watchdog) set.
fn daemon_command(env: &Env, socket: &std::path::Path, watchdog: Option<Duration>) -> Command {
    let mut cmd = Command::from(env.outboxd());
    cmd.arg("run")
        .env("NOTIFY_SOCKET", socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(w) = watchdog {
        cmd.env("WATCHDOG_USEC", w.as_micros().to_string());
    }
    cmd
}

/// The next datagram on the notification socket, as text.
async fn next_notification(socket: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(RUN, socket.recv(&mut buf))
        .await
        .expect("no notification from outboxd")
        .expect("reading the notification socket");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn systemd_hears_ready_watchdog_and_stopping() {
    let env = Env::sqlite().await;
    let socket_path = env.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("binding the notification socket");

    // No READY=1 while the schema is missing: the start fails and names the fix.
    let empty = env.path().join("empty.db");
    std::fs::File::create(&empty).unwrap();
    let empty_url = format!("sqlite://{}", empty.display());
    write_config_with(&env, &[(env.db_url.as_str(), empty_url.as_str())]);
    let out = daemon_command(&env, &socket_path, None)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outbox-migrate"));
    let mut buf = [0u8; 64];
    assert!(
        socket.try_recv(&mut buf).is_err(),
        "a daemon that cannot start must not report ready"
    );

    // READY=1 with a status once the database is reachable and current; then watchdog
    // pings from the worker loop (WATCHDOG_USEC = 400 ms: a ping every 100 ms or so); then
    // STOPPING=1 on SIGTERM.
    env.write_config("");
    let child = daemon_command(&env, &socket_path, Some(Duration::from_millis(400)))
        .spawn()
        .expect("starting outboxd");
    let ready = next_notification(&socket).await;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS=delivering"), "{ready:?}");
    let mut daemon = Daemon::start_child(child).await;
    let mut pings = 0;
    let watched = Instant::now();
    while pings < 3 {
        let msg = next_notification(&socket).await;
        assert_eq!(msg.trim_end(), "WATCHDOG=1");
        pings += 1;
    }
    assert!(
        watched.elapsed() < Duration::from_secs(2),
        "3 watchdog pings took {:?} for a 400 ms watchdog",
        watched.elapsed()
    );
    daemon.signal("TERM");
    loop {
        let msg = next_notification(&socket).await;
        if msg.lines().any(|l| l == "STOPPING=1") {
            break;
        }
        assert_eq!(msg.trim_end(), "WATCHDOG=1", "unexpected notification");
    }
    let status = daemon.wait_exit(RUN).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
}

#[tokio::test]
async fn sigterm_mid_drain_finishes_in_flight_work_and_exits_0() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    // Every fifth reply is slow, so deliveries are in flight when the signal comes; the
    // harness config has shutdown_grace = 3s, enough for them to finish.
    let n = 300;
    let keys: Vec<String> = (0..n).map(|i| format!("TERM-{i:04}")).collect();
    for key in keys.iter().step_by(5) {
        env.sim
            .script_pyun(key, vec![Step::ok().delayed(Duration::from_millis(500))]);
    }
    enqueue_all(&env, &store, &keys).await;

    let mut daemon = Daemon::start(&env).await;
    assert!(
        env.sim.wait_for_requests(40, RUN).await,
        "the daemon made no progress"
    );
    let signalled = Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait_exit(RUN).await;
    let took = signalled.elapsed();
    let log = daemon.log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(
        took < Duration::from_secs(3) + EXIT_MARGIN,
        "took {took:?} to stop"
    );
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(log.contains("outboxd worker stopped"), "{log}");
    assert!(
        !log.contains("shutdown grace over"),
        "500 ms replies fit in a 3 s grace; log:\n{log}"
    );

    // No lease left, and nothing lost: every row is delivered or still pending, and every
    // request the platform saw before the stop was recorded as delivered.
    assert_eq!(leased_rows(&env).await, 0);
    let stats = store.stats(now_ms()).await.unwrap();
    let pyun = stats.iter().find(|s| s.sink == "pyun").unwrap();
    assert_eq!(pyun.in_flight, 0);
    assert_eq!(pyun.delivered + pyun.pending, n as i64, "{pyun:?}");
    assert!(
        pyun.pending > 0,
        "stopped too late to test anything: {pyun:?}"
    );
    for key in &keys {
        let row = store.row("pyun", key).await.unwrap().unwrap();
        match env.sim.request_count(Platform::Pyun, key) {
            0 => assert_eq!((row.status.as_str(), row.attempts), ("pending", 0), "{key}"),
            _ => assert_eq!(row.status, "delivered", "{key}: sent but not recorded"),
        }
    }

    // The rest is delivered by the next run, and a graceful stop sends nothing twice.
    env.run_until_idle(RUN).await;
    for key in &keys {
        assert_eq!(env.sim.applied_count(Platform::Pyun, key), 1, "{key}");
        assert_eq!(env.sim.request_count(Platform::Pyun, key), 1, "{key}");
        assert_eq!(
            store.row("pyun", key).await.unwrap().unwrap().status,
            "delivered"
        );
    }
}

#[tokio::test]
async fn a_grace_too_short_releases_the_slow_row_for_the_next_run() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    // A 5 s reply against a 1 s grace; the sink timeout and lease are raised so that the
    // grace, not the request timeout, is what cuts the delivery short.
    write_config_with(
        &env,
        &[
            ("shutdown_grace = \"3s\"", "shutdown_grace = \"1s\""),
            ("lease = \"5s\"", "lease = \"30s\""),
            ("\ntimeout = \"1s\"", "\ntimeout = \"10s\""),
        ],
    );
    env.sim
        .script_pyun("SLOW", vec![Step::ok().delayed(Duration::from_secs(5))]);
    enqueue_all(&env, &store, &["SLOW".to_string()]).await;

    let mut daemon = Daemon::start(&env).await;
    assert!(env.sim.wait_for_requests(1, RUN).await);
    let signalled = Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait_exit(RUN).await;
    let took = signalled.elapsed();
    let log = daemon.log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the 1 s grace was over"
    );
    assert!(
        took < Duration::from_secs(1) + EXIT_MARGIN,
        "took {took:?} to stop"
    );
    assert!(log.contains("shutdown grace over"), "{log}");

    // Released, not left leased: the next worker may take it at once.
    assert_eq!(leased_rows(&env).await, 0);
    let row = store.row("pyun", "SLOW").await.unwrap().unwrap();
    assert_eq!(row.status, "pending");
    assert!(row.next_attempt_at <= now_ms());

    let started = Instant::now();
    env.run_until_idle(RUN).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the released row waited for something (a lease?)"
    );
    let row = store.row("pyun", "SLOW").await.unwrap().unwrap();
    assert_eq!(row.status, "delivered");
    // The abandoned request had reached the platform; 4pyun ignores the repeat of an order.
    assert_eq!(env.sim.request_count(Platform::Pyun, "SLOW"), 2);
    assert_eq!(env.sim.applied_count(Platform::Pyun, "SLOW"), 1);
}

#[tokio::test]
async fn sighup_with_a_broken_config_keeps_the_running_one() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    let mut daemon = Daemon::start(&env).await;

    // Not TOML at all.
    env.write_config_raw("database_url = \"sqlite://x.db\"\n[sinks.pyun\ntype = ");
    daemon.signal("HUP");
    daemon
        .wait_for_log("the new configuration is invalid", RUN)
        .await;
    // Logged as JSON (stderr is not a terminal), at error level, with the parser's reason.
    let line = daemon.json_lines().into_iter().find(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("the new configuration is invalid"))
    });
    let line = line.expect("the invalid-config line is a JSON object");
    assert_eq!(line["level"], "ERROR", "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap_or("")
            .contains("is not valid"),
        "{line}"
    );

    // Valid TOML that fails validation: a secret that is not there (a classic slip).
    write_config_with(
        &env,
        &[(
            "secret_env = \"TEST_PYUN_SECRET\"",
            "secret_env = \"OUTBOXD_E2E_NOT_SET\"",
        )],
    );
    daemon.signal("HUP");
    daemon.wait_for_log("OUTBOXD_E2E_NOT_SET", RUN).await;
    assert!(!daemon.log().contains("configuration reloaded"));
    assert!(daemon.is_running());

    // Still delivering, on the old config.
    enqueue_all(&env, &store, &["AFTER-BAD-HUP".to_string()]).await;
    assert!(env.sim.wait_for_requests(1, RUN).await);
    eventually("the row to be delivered", RUN, || async {
        store
            .row("pyun", "AFTER-BAD-HUP")
            .await
            .unwrap()
            .is_some_and(|r| r.status == "delivered")
    })
    .await;
    assert_eq!(env.sim.applied_count(Platform::Pyun, "AFTER-BAD-HUP"), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn sighup_with_a_new_retry_policy_applies_it() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    // 503 forever; retries every 20-200 ms. The first config allows 50 attempts.
    write_config_with(&env, &[("max_attempts = 5", "max_attempts = 50")]);
    env.sim.script_pyun("FAILING", vec![Step::code("503"); 200]);
    enqueue_all(&env, &store, &["FAILING".to_string()]).await;

    let mut daemon = Daemon::start(&env).await;
    assert!(env.sim.wait_for_requests(3, RUN).await);

    // Reload with a 2-attempt policy: the row has used more than that, so its next failure
    // dead-letters it.
    write_config_with(&env, &[("max_attempts = 5", "max_attempts = 2")]);
    daemon.signal("HUP");
    daemon.wait_for_log("configuration reloaded", RUN).await;
    let at_reload = env.sim.request_count(Platform::Pyun, "FAILING");
    assert!(
        (3..50).contains(&at_reload),
        "{at_reload} attempts before the reload"
    );

    eventually("the row to be dead-lettered", RUN, || async {
        !store
            .dead_list(Some("pyun"), None, None, 10)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let dead = store.dead_list(Some("pyun"), None, None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("max_attempts = 2"),
        "{}",
        dead[0].reason
    );
    // At most the one attempt that was due (or in flight) at the reload came after it.
    let total = env.sim.request_count(Platform::Pyun, "FAILING");
    assert!(
        total == at_reload || total == at_reload + 1,
        "{at_reload} attempts at the reload, {total} in all"
    );
    assert_eq!(dead[0].attempts, total as i64);
    assert!(daemon.is_running());
    daemon.stop().await;
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once_with_130() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    // Replies take 3 s and the grace is 20 s: only the second signal can end this quickly.
    // A short lease lets the next run take the abandoned rows soon after.
    write_config_with(
        &env,
        &[
            ("shutdown_grace = \"3s\"", "shutdown_grace = \"20s\""),
            ("lease = \"5s\"", "lease = \"6s\""),
            ("\ntimeout = \"1s\"", "\ntimeout = \"4s\""),
        ],
    );
    let keys: Vec<String> = (0..4).map(|i| format!("HARD-{i}")).collect();
    for key in &keys {
        env.sim
            .script_pyun(key, vec![Step::ok().delayed(Duration::from_secs(3))]);
    }
    enqueue_all(&env, &store, &keys).await;

    let mut daemon = Daemon::start(&env).await;
    assert!(env.sim.wait_for_requests(keys.len(), RUN).await);
    daemon.signal("TERM");
    daemon.wait_for_log("shutdown requested", RUN).await;
    let second = Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait_exit(RUN).await;
    let took = second.elapsed();
    let log = daemon.log();
    assert_eq!(status.code(), Some(130), "log:\n{log}");
    assert!(
        took < Duration::from_millis(1500),
        "took {took:?} after the second signal"
    );
    assert!(log.contains("second signal"), "{log}");

    // The hard exit leaves the rows leased: they are taken again once the lease expires,
    // and nothing is lost (4pyun ignores the repeated orders).
    assert_eq!(leased_rows(&env).await, keys.len() as i64);
    env.run_until_idle(RUN).await;
    for key in &keys {
        assert_eq!(
            store.row("pyun", key).await.unwrap().unwrap().status,
            "delivered"
        );
        assert_eq!(env.sim.applied_count(Platform::Pyun, key), 1, "{key}");
    }
}

/// systemd may stop a unit as soon as it reported READY=1, and that stop must be graceful:
/// the SIGTERM and SIGINT handlers are installed before READY=1 is sent.
#[tokio::test]
async fn sigterm_right_after_ready_is_graceful() {
    let env = Env::sqlite().await;
    let path = env.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let child = daemon_command(&env, &path, None)
        .spawn()
        .expect("starting outboxd");
    let pid = child.id().unwrap();
    let ready = next_notification(&socket).await;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(RUN, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}; log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
