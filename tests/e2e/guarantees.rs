//! Delivery guarantees at the edges (issue 12), through the real daemon: a database stalled
//! longer than the lease, a failed round, a scraped admin listener, a loop that keeps
//! failing. Every wait is on something observable (a request at the simulator, a row in the
//! database, a line from a helper process), never a fixed sleep standing in for one.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use outbox_core::event::EventType;
use outbox_core::store::Store;
use outboxd_e2e::{charge_end, Env};
use platform_sim::config::DEMO_EPEIS_CHANNEL_DID;
use platform_sim::{Platform, Step};
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};

const RUN: Duration = Duration::from_secs(60);

/// A pyun and an epeis sink with a short lease (it must exceed timeout + connect_timeout).
fn config(env: &Env, worker_extra: &str) -> String {
    format!(
        r#"database_url = "{db}"
log_level = "info,outbox_core=debug"

[admin]
listen = "127.0.0.1:0"

[worker]
poll_interval = "100ms"
lease = "3s"
shutdown_grace = "3s"
{worker_extra}

[retry]
base = "50ms"
cap = "200ms"
floor = "20ms"
max_attempts = 5
max_age = "1h"

[sinks.pyun]
type = "pyun"
url = "{pyun}"
app_id = "{app_id}"
secret_env = "TEST_PYUN_SECRET"
timeout = "1s"
connect_timeout = "1s"

[sinks.epeis]
type = "epeis"
url = "{epeis}"
channel_did = "{DEMO_EPEIS_CHANNEL_DID}"
register_did = "RG00000000000001"
account_did = "AC00000000000001"
secret_env = "TEST_EPEIS_KEY"
timeout = "1s"
connect_timeout = "1s"
"#,
        db = env.db_url,
        pyun = env.sim.pyun_url(),
        epeis = env.sim.epeis_url(),
        app_id = platform_sim::SimConfig::default().pyun_app_id,
    )
}

fn dosage(aid: &str) -> Value {
    json!({
        "COM_METERAGE": {"SETTLEMENT_AID": aid, "NORMAL_RETRO_TYPE": "2"},
        "COM_METER_INFO_TMP": [{
            "DEVICE_DID": "DV00000000000001",
            "NORMAL_RETRO_TYPE": "2",
            "ENERGY_FLOW_TYPE": "1",
            "READINGS_TYPE": "1",
            "ADDED_CONS": 12.5
        }]
    })
}

/// Another process holding SQLite's write lock (`BEGIN IMMEDIATE`) for `hold`, as a busy
/// producer or a backup tool can. Returns once the lock is taken; the child commits and
/// exits by itself.
async fn hold_write_lock(db: &Path, hold: Duration) -> tokio::process::Child {
    let script = "import sqlite3, sys, time\n\
                  c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n\
                  c.execute('BEGIN IMMEDIATE')\n\
                  print('locked', flush=True)\n\
                  time.sleep(float(sys.argv[2]))\n\
                  c.execute('COMMIT')\n";
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .arg(hold.as_secs_f64().to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 with sqlite3");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let line = lines.next_line().await.expect("python3 output");
    assert_eq!(line.as_deref(), Some("locked"), "the lock was not taken");
    child
}

/// Waits until `done` holds for the store, polling the database (what the daemon writes is
/// the signal); panics after `timeout`.
async fn wait_until<F, Fut>(store: &Store, timeout: Duration, what: &str, done: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !done(store.clone()).await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(store: &Store, sink: &str, key: &str) -> Option<String> {
    store.row(sink, key).await.ok().flatten().map(|r| r.status)
}

fn sqlite_file(env: &Env) -> std::path::PathBuf {
    env.path().join("outbox.db")
}

/// Issue 12 item 2: a verdict the worker holds survives a database stall longer than the
/// lease. Both deliveries reach their platforms, then another process holds the write lock
/// for longer than the lease and the busy timeout while the replies come back. Before the
/// fix, housekeeping ran before the verdicts were written and reclaimed the worker's own
/// rows: the 4pyun row was sent again, the epeis row (answered `CODE 0`) was dead-lettered
/// as outcome unknown, and the log said "being delivered again elsewhere".
#[tokio::test]
async fn a_stall_longer_than_the_lease_keeps_the_verdicts_it_holds() {
    let env = Env::sqlite().await;
    env.write_config_raw(&config(&env, ""));
    let store = env.store().await;
    let aid = "SA00000000000777";
    env.sim.script_pyun(
        "STALL-1",
        vec![Step::ok().delayed(Duration::from_millis(800))],
    );
    env.sim
        .script_epeis(aid, vec![Step::ok().delayed(Duration::from_millis(800))]);
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "STALL-1",
        &charge_end("STALL-1"),
    )
    .await;
    env.enqueue(&store, "epeis", EventType::Dosage, aid, &dosage(aid))
        .await;

    let (mut daemon, log) = env.spawn_daemon_logged();
    assert!(env.sim.wait_for_requests(2, RUN).await, "no deliveries");
    // Both rows are in flight, their replies 800 ms away: stall the database for longer
    // than the lease (3 s) and the busy timeout (5 s).
    let mut locker = hold_write_lock(&sqlite_file(&env), Duration::from_secs(7)).await;
    assert!(
        locker.wait().await.unwrap().success(),
        "the lock holder failed"
    );

    wait_until(&store, RUN, "both rows final", |s| async move {
        let p = status(&s, "pyun", "STALL-1").await;
        let e = status(&s, "epeis", aid).await;
        let dead = !s.dead_list(None, None, None, 10).await.unwrap().is_empty();
        dead || (p.as_deref() != Some("in_flight")
            && p.as_deref() != Some("pending")
            && e.as_deref() != Some("in_flight")
            && e.as_deref() != Some("pending"))
    })
    .await;
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    let log = std::fs::read_to_string(log).unwrap();

    assert!(
        store
            .dead_list(None, None, None, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing is dead-lettered: {:?}",
        store.dead_list(None, None, None, 10).await.unwrap()
    );
    for (sink, key) in [("pyun", "STALL-1"), ("epeis", aid)] {
        let row = store.row(sink, key).await.unwrap().unwrap();
        assert_eq!(row.status, "delivered", "{sink}: {row:?}");
        assert_eq!(row.attempts, 1, "{sink}: sent once: {row:?}");
    }
    assert_eq!(env.sim.request_count(Platform::Pyun, "STALL-1"), 1);
    assert_eq!(env.sim.applied_count(Platform::Epeis, aid), 1);
    assert!(
        !log.contains("being delivered again elsewhere"),
        "no other worker runs: {log}"
    );
}

/// Waits until the daemon's log file has a line containing `needle`.
async fn wait_for_log(log: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?} within {timeout:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy in front of Postgres that, once armed, forwards the first `COMMIT` it sees
/// and then closes that connection without passing on the server's reply: the transaction
/// commits, the client never learns it (a lost acknowledgement). Returns its port.
async fn commit_eating_proxy(upstream: std::net::SocketAddr) -> u16 {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let armed = Arc::new(AtomicBool::new(true));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let armed = armed.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let eat = Arc::new(AtomicBool::new(false));
                let eat_up = eat.clone();
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = cr.read(&mut buf).await {
                        let chunk = &buf[..n];
                        if chunk.windows(6).any(|w| w == b"COMMIT")
                            && armed.swap(false, Ordering::SeqCst)
                        {
                            eat_up.store(true, Ordering::SeqCst);
                        }
                        if sw.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = sr.read(&mut buf).await {
                    if eat.load(Ordering::SeqCst) {
                        // The COMMIT's reply: swallowed, and the connection dies.
                        break;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    port
}

/// Issue 12 item 3: a lost COMMIT acknowledgement on Postgres. The round that claimed an
/// epeis and a 4pyun row committed, but the worker never learned it. Before the fix, the
/// rows stayed leased to the worker until the lease expired and came back in doubt: the
/// epeis row, never sent, was parked as "outcome unknown". Now the next round releases the
/// rows it holds but never sent, and each is delivered once.
#[tokio::test]
async fn a_lost_commit_acknowledgement_releases_the_unsent_rows() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    let store = env.store().await;
    let aid = "SA00000000000888";
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "LOST-1",
        &charge_end("LOST-1"),
    )
    .await;
    env.enqueue(&store, "epeis", EventType::Dosage, aid, &dosage(aid))
        .await;
    // postgres://user@host:port/db: the daemon connects through the proxy.
    let at = env.db_url.find('@').unwrap() + 1;
    let slash = at + env.db_url[at..].find('/').unwrap();
    let host_port = &env.db_url[at..slash];
    let upstream = tokio::net::lookup_host(host_port)
        .await
        .unwrap()
        .next()
        .unwrap();
    let port = commit_eating_proxy(upstream).await;
    let proxied = format!(
        "{}127.0.0.1:{port}{}",
        &env.db_url[..at],
        &env.db_url[slash..]
    );
    let text = config(&env, "").replace(&env.db_url, &proxied);
    env.write_config_raw(&text);

    let (mut daemon, log) = env.spawn_daemon_logged();
    wait_until(&store, RUN, "both rows final", |s| async move {
        let p = status(&s, "pyun", "LOST-1").await;
        let e = status(&s, "epeis", aid).await;
        let open = |x: &Option<String>| matches!(x.as_deref(), Some("in_flight" | "pending"));
        !s.dead_list(None, None, None, 10).await.unwrap().is_empty() || (!open(&p) && !open(&e))
    })
    .await;
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains("released rows a failed round had claimed but never sent"),
        "the COMMIT's reply was lost: {log}"
    );
    assert!(
        store
            .dead_list(None, None, None, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing is dead-lettered: {:?}",
        store.dead_list(None, None, None, 10).await.unwrap()
    );
    for (sink, key) in [("pyun", "LOST-1"), ("epeis", aid)] {
        let row = store.row(sink, key).await.unwrap().unwrap();
        assert_eq!(row.status, "delivered", "{sink}: {row:?}");
        assert_eq!(
            row.attempts, 1,
            "{sink}: the released claim is not counted: {row:?}"
        );
    }
    assert_eq!(env.sim.request_count(Platform::Pyun, "LOST-1"), 1);
    assert_eq!(env.sim.applied_count(Platform::Epeis, aid), 1);
}

/// Issue 12 item 3: a hung query does not stall the loop. Another session holds an
/// exclusive lock on `outbox`; the worker's round waits on it. Before the fix, the round
/// waited as long as the lock was held, silently (the loop stopped going round, and the
/// watchdog would kill the daemon); now it fails after `worker.store_timeout`, is logged,
/// retried, and deliveries resume when the lock goes.
#[tokio::test]
async fn a_hung_query_fails_the_round_after_the_store_timeout() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    env.write_config_raw(&config(&env, "store_timeout = \"1s\""));
    let store = env.store().await;
    let (mut daemon, log) = env.spawn_daemon_logged();
    wait_for_log(&log, "outboxd worker started", RUN).await;

    let mut locker = sqlx::PgConnection::connect(&env.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let locked_at = Instant::now();
    let text = wait_for_log(&log, "did not answer within worker.store_timeout", RUN).await;
    assert!(
        locked_at.elapsed() < Duration::from_secs(8),
        "reported {:?} after the lock: {text}",
        locked_at.elapsed()
    );
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();

    // Deliveries resume.
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "HUNG-1",
        &charge_end("HUNG-1"),
    )
    .await;
    wait_until(&store, RUN, "the row delivered", |s| async move {
        status(&s, "pyun", "HUNG-1").await.as_deref() == Some("delivered")
    })
    .await;
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
}

/// The admin listener's address, from the daemon's log.
async fn admin_addr(log: &Path) -> std::net::SocketAddr {
    let text = wait_for_log(log, "\"bound\"", RUN).await;
    let line = text.lines().find(|l| l.contains("\"bound\"")).unwrap();
    let v: Value = serde_json::from_str(line).unwrap();
    v["bound"].as_str().unwrap().parse().unwrap()
}

/// A plain HTTP/1.1 GET: (status, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// Bulk-inserts `n` delivered 4pyun rows (kept rows the statistics scan reads).
async fn insert_delivered(env: &Env, n: u64) {
    let pool = sqlx::SqlitePool::connect(&env.db_url).await.unwrap();
    let day_ago = outbox_core::clock::now_ms() - 86_400_000;
    sqlx::query(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
         INSERT INTO outbox (sink, event_type, idempotency_key, payload, status, attempts, \
                             finished_at, last_attempt_at, created_at) \
         SELECT 'pyun', 'charge_end', 'KEPT-' || i, '{{}}', 'delivered', 1, {day_ago}, {day_ago}, {day_ago} FROM n"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// Issue 12 item 9: `/metrics` scrapes do not stall deliveries. With many kept rows, the
/// statistics scan takes a while; two scrapers hammer `/metrics` while rows are enqueued
/// one at a time. Before the fix the scan ran on the daemon's only SQLite connection, so
/// each delivery waited for the scan in progress; now the listener has its own connection
/// and the scan is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_scrapes_do_not_stall_deliveries() {
    let env = Env::sqlite().await;
    env.write_config_raw(&config(&env, ""));
    insert_delivered(&env, 400_000).await;
    let store = env.store().await;
    let (mut daemon, log) = env.spawn_daemon_logged();
    let admin = admin_addr(&log).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let scrapers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, scraped) = (stop.clone(), scraped.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (code, text) = http_get(admin, "/metrics").await;
                    assert_eq!(code, 200, "{text}");
                    scraped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + RUN;
    while scraped.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "no scrape answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut latencies = Vec::new();
    for i in 0..8 {
        let key = format!("LAT-{i}");
        let t0 = outbox_core::clock::now_ms();
        env.enqueue(
            &store,
            "pyun",
            EventType::ChargeEnd,
            &key,
            &charge_end(&key),
        )
        .await;
        let deadline = Instant::now() + RUN;
        let received = loop {
            let seen = env
                .sim
                .requests()
                .into_iter()
                .find(|r| r.key.as_deref() == Some(&key));
            if let Some(r) = seen {
                break r.received_at_ms;
            }
            assert!(Instant::now() < deadline, "{key} not delivered");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        latencies.push(received - t0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in scrapers {
        s.await.unwrap();
    }
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    let scrapes = scraped.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("insert-to-request latencies {latencies:?} ms with {scrapes} scrapes");
    let worst = *latencies.iter().max().unwrap();
    assert!(
        worst < 500,
        "insert-to-request latency {latencies:?} ms with {scrapes} scrapes"
    );
}

/// Issue 12 item 9: a row whose `sink` is not text (a BLOB written by a producer) does not
/// break `/metrics`.
#[tokio::test]
async fn a_row_with_a_non_text_sink_does_not_break_metrics() {
    let env = Env::sqlite().await;
    env.write_config_raw(&config(&env, ""));
    let pool = sqlx::SqlitePool::connect(&env.db_url).await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (sink, event_type, idempotency_key, payload) \
         VALUES (x'707975', 'charge_end', 'BLOB-SINK', '{}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let (mut daemon, log) = env.spawn_daemon_logged();
    let admin = admin_addr(&log).await;
    let (code, text) = http_get(admin, "/metrics").await;
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("{sink=\"pyu\"}"), "{text}");
}

/// Issue 12 item 7 (health): `/healthz` reports a worker whose store rounds keep failing
/// while the process is alive and the database answers a ping. Another session holds an
/// exclusive lock on `outbox` (the ping reads another table); every round times out. Before
/// the fix `/healthz` answered 200 "ok" all along (the loop kept going round); now it
/// answers 503 naming the failure once it lasted `admin.stall_after`, and 200 again after.
#[tokio::test]
async fn healthz_reports_a_worker_whose_rounds_keep_failing() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    let text = config(&env, "store_timeout = \"1s\"").replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nstall_after = \"8s\"",
    );
    env.write_config_raw(&text);
    let (mut daemon, log) = env.spawn_daemon_logged();
    let admin = admin_addr(&log).await;
    let deadline = Instant::now() + RUN;
    while http_get(admin, "/healthz").await.0 != 200 {
        assert!(Instant::now() < deadline, "/healthz never answered 200");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut locker = sqlx::PgConnection::connect(&env.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let locked_at = Instant::now();
    let (code, body) = loop {
        let (code, body) = http_get(admin, "/healthz").await;
        if code != 200 || locked_at.elapsed() > Duration::from_secs(20) {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("database unavailable to the worker: its rounds have failed for"),
        "{body}"
    );
    assert!(body.contains("worker.store_timeout"), "{body}");
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();

    let deadline = Instant::now() + RUN;
    while http_get(admin, "/healthz").await.0 != 200 {
        assert!(Instant::now() < deadline, "/healthz did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
}
