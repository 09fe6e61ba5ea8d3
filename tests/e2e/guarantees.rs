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
