//! charge_end → 4pyun replenish, through the real daemon.

use std::time::Duration;

use outbox_core::event::EventType;
use outboxd_e2e::{charge_end, sqlite_files_contain, Env, PYUN_SECRET};
use platform_sim::{Platform, Step};

const RUN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn happy_path_delivers_each_order_once() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    for i in 0..50 {
        let key = format!("ORDER-{i:03}");
        env.enqueue(
            &store,
            "pyun",
            EventType::ChargeEnd,
            &key,
            &charge_end(&key),
        )
        .await;
    }
    let out = env.run_until_idle(RUN).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("50 delivered"), "{stdout}");
    let applied = env.sim.applied_keys(Platform::Pyun);
    assert_eq!(applied.len(), 50);
    for i in 0..50 {
        let key = format!("ORDER-{i:03}");
        assert_eq!(env.sim.applied_count(Platform::Pyun, &key), 1, "{key}");
        let row = store.row("pyun", &key).await.unwrap().unwrap();
        assert_eq!(row.status, "delivered");
        assert_eq!(row.attempts, 1);
    }
    // Every request the platform saw was signed and accepted.
    assert!(env
        .sim
        .requests()
        .iter()
        .all(|r| r.reply_code.as_deref() == Some("200") && r.applied));
}

#[tokio::test]
async fn success_with_hint_is_final_and_visible() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    env.sim
        .script_pyun("HINTED", vec![Step::code_hint("200", "签名验证不通过")]);
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "HINTED",
        &charge_end("HINTED"),
    )
    .await;
    let out = env.run_until_idle(RUN).await;
    assert_eq!(
        env.sim.request_count(Platform::Pyun, "HINTED"),
        1,
        "a hinted success is never retried"
    );
    let row = store.row("pyun", "HINTED").await.unwrap().unwrap();
    assert_eq!(row.status, "delivered");
    assert_eq!(row.hint.as_deref(), Some("签名验证不通过"));
    let attempts = store.attempts(row.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].hint.as_deref(), Some("签名验证不通过"));
    // Operators see it: in the log, and in `status`.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("签名验证不通过"), "{log}");
    let status = env.outboxd().args(["status", "--json"]).output().unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(stats[0]["hints"], 1, "{stats}");
}

#[tokio::test]
async fn retry_after_503_uses_a_fresh_timestamp_and_signature() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    env.sim.script_pyun(
        "FLAKY",
        vec![Step::code("503"), Step::http(503), Step::ok()],
    );
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "FLAKY",
        &charge_end("FLAKY"),
    )
    .await;
    env.run_until_idle(RUN).await;
    let reqs: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.key.as_deref() == Some("FLAKY"))
        .collect();
    assert_eq!(reqs.len(), 3);
    assert!(reqs[2].applied);
    let field = |i: usize, f: &str| reqs[i].params[f].as_str().unwrap().to_string();
    for i in 1..3 {
        assert!(
            field(i, "timestamp").parse::<i64>().unwrap()
                > field(i - 1, "timestamp").parse::<i64>().unwrap()
        );
        assert_ne!(field(i, "sign"), field(i - 1, "sign"));
    }
    let row = store.row("pyun", "FLAKY").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("delivered", 3));
    let outcomes: Vec<String> = store
        .attempts(row.id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "delivered"]);
}

#[tokio::test]
async fn retry_after_header_is_honoured() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    env.sim
        .script_pyun("SLOWDOWN", vec![Step::http_retry_after(503, 1)]);
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "SLOWDOWN",
        &charge_end("SLOWDOWN"),
    )
    .await;
    // The config's cap (200ms) would retry sooner; the cap also bounds Retry-After, so
    // raise it for this test.
    env.write_config("");
    let cfg = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .replace("cap = \"200ms\"", "cap = \"5s\"");
    env.write_config_raw(&cfg);
    env.run_until_idle(RUN).await;
    let reqs: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.key.as_deref() == Some("SLOWDOWN"))
        .collect();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].received_at_ms - reqs[0].received_at_ms;
    assert!(gap >= 1000, "retried after {gap}ms despite Retry-After: 1");
}

#[tokio::test]
async fn a_400_is_dead_lettered_after_one_attempt_with_the_hint() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    env.sim
        .script_pyun("BAD", vec![Step::code_hint("400", "`vin` invalid~")]);
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "BAD",
        &charge_end("BAD"),
    )
    .await;
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "GOOD",
        &charge_end("GOOD"),
    )
    .await;
    env.run_until_idle(RUN).await;
    assert_eq!(env.sim.request_count(Platform::Pyun, "BAD"), 1);
    assert_eq!(
        env.sim.applied_count(Platform::Pyun, "GOOD"),
        1,
        "one bad row does not block the rest"
    );
    let dead = store.dead_list(Some("pyun"), None, None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].idempotency_key, "BAD");
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0].reason.contains("400") && dead[0].reason.contains("`vin` invalid~"),
        "{}",
        dead[0].reason
    );
    assert!(dead[0]
        .last_reply
        .as_deref()
        .unwrap_or("")
        .contains("`vin` invalid~"));
    assert!(store.row("pyun", "BAD").await.unwrap().is_none());
}

#[tokio::test]
async fn invalid_payload_is_dead_lettered_without_a_request() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    let mut p = charge_end("INVALID");
    p["end_time"] = "2026-11-24 09:20:00".into();
    env.enqueue(&store, "pyun", EventType::ChargeEnd, "INVALID", &p)
        .await;
    let mut q = charge_end("MISMATCH");
    q["replenish_order"] = "SOMETHING-ELSE".into();
    env.enqueue(&store, "pyun", EventType::ChargeEnd, "MISMATCH", &q)
        .await;
    env.enqueue(
        &store,
        "pyun",
        EventType::Dosage,
        "WRONG-TYPE",
        &charge_end("WRONG-TYPE"),
    )
    .await;
    env.enqueue(
        &store,
        "nosuchsink",
        EventType::ChargeEnd,
        "NO-SINK",
        &charge_end("NO-SINK"),
    )
    .await;
    env.run_until_idle(RUN).await;
    assert!(
        env.sim.requests().is_empty(),
        "no HTTP call for invalid rows"
    );
    let mut dead = store.dead_list(None, None, None, 10).await.unwrap();
    dead.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
    let reasons: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| (d.idempotency_key.as_str(), d.reason.as_str()))
        .collect();
    // A row for a sink missing from the config is held, not dead-lettered at once (issue
    // 12 item 10): counted in status, dead-lettered only after max_age.
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    let held = store.row("nosuchsink", "NO-SINK").await.unwrap().unwrap();
    assert_eq!(held.status, "pending");
    let stats = store.stats(outbox_core::clock::now_ms()).await.unwrap();
    let nosink = stats.iter().find(|s| s.sink == "nosuchsink").unwrap();
    assert!(
        nosink.unconfigured_since.is_some() && nosink.pending == 1,
        "{nosink:?}"
    );
    assert!(
        reasons[0].0 == "INVALID" && reasons[0].1.contains("`end_time`"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].0 == "MISMATCH" && reasons[1].1.contains("idempotency_key"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].0 == "WRONG-TYPE" && reasons[2].1.contains("delivers charge_end events"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn kill_9_mid_drain_loses_nothing() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    // Slow replies keep rows in flight when the daemon is killed.
    let n = 300;
    for i in 0..n {
        let key = format!("K9-{i:04}");
        if i % 10 == 0 {
            env.sim
                .script_pyun(&key, vec![Step::ok().delayed(Duration::from_millis(300))]);
        }
        env.enqueue(
            &store,
            "pyun",
            EventType::ChargeEnd,
            &key,
            &charge_end(&key),
        )
        .await;
    }
    let mut daemon = env.spawn_daemon_logged().0;
    assert!(
        env.sim
            .wait_for_requests(n / 3, Duration::from_secs(30))
            .await,
        "the daemon made no progress"
    );
    daemon.start_kill().unwrap(); // SIGKILL
    daemon.wait().await.unwrap();
    let seen_before = env.sim.requests().len();
    assert!(
        seen_before < n,
        "killed too late to test anything ({seen_before} requests)"
    );

    env.run_until_idle(RUN).await;
    for i in 0..n {
        let key = format!("K9-{i:04}");
        assert_eq!(
            env.sim.applied_count(Platform::Pyun, &key),
            1,
            "{key} lost or applied twice"
        );
        assert_eq!(
            store.row("pyun", &key).await.unwrap().unwrap().status,
            "delivered",
            "{key}"
        );
    }
    // Duplicates (same key sent again) are bounded by what was claimed but not yet
    // recorded at the kill, which is at most the sink's concurrency.
    let duplicates: usize = (0..n)
        .map(|i| env.sim.request_count(Platform::Pyun, &format!("K9-{i:04}")) - 1)
        .sum();
    assert!(
        duplicates <= 16,
        "{duplicates} duplicate requests; concurrency is 16"
    );
}

#[tokio::test]
async fn secrets_never_reach_logs_or_the_database() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    // Failures of every kind, so every error path writes its text somewhere.
    env.sim.script_pyun(
        "S1",
        vec![
            Step::code("503"),
            Step::garbage(),
            Step::drop_after(),
            Step::ok(),
        ],
    );
    env.sim
        .script_pyun("S2", vec![Step::code_hint("401", "签名验证不通过")]);
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "S1",
        &charge_end("S1"),
    )
    .await;
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "S2",
        &charge_end("S2"),
    )
    .await;
    let out = env.run_until_idle(RUN).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("S2"), "the log should mention the dead row");
    assert!(!text.contains(PYUN_SECRET), "secret in the log");
    store.close().await;
    assert!(
        !sqlite_files_contain(env.path(), PYUN_SECRET),
        "secret in the database"
    );
    // The check itself works: the payload's order number is in the file.
    assert!(sqlite_files_contain(env.path(), "S2"));
}

#[tokio::test]
async fn ordering_key_rows_are_delivered_one_at_a_time_in_order() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    // The second row of the charger fails once: the rows after it must wait for it.
    env.sim.script_pyun("ORD-2", vec![Step::code("503")]);
    for i in 1..=5 {
        let key = format!("ORD-{i}");
        let ev = outbox_core::event::NewEvent {
            sink: "pyun".into(),
            event_type: EventType::ChargeEnd,
            idempotency_key: key.clone(),
            payload: charge_end(&key).to_string(),
            ordering_key: Some("charger-7".into()),
            not_before: None,
            supersede_key: None,
        };
        assert!(store.enqueue(&ev).await.unwrap());
        // An unordered row between them is free to go at any time.
        let free = format!("FREE-{i}");
        env.enqueue(
            &store,
            "pyun",
            EventType::ChargeEnd,
            &free,
            &charge_end(&free),
        )
        .await;
    }
    env.run_until_idle(RUN).await;
    let ordered: Vec<String> = env
        .sim
        .requests()
        .into_iter()
        .filter_map(|r| r.key.filter(|k| k.starts_with("ORD-")))
        .collect();
    assert_eq!(
        ordered,
        ["ORD-1", "ORD-2", "ORD-2", "ORD-3", "ORD-4", "ORD-5"]
    );
    assert_eq!(env.sim.applied_keys(Platform::Pyun).len(), 10);
}

#[tokio::test]
async fn a_python_producer_on_sqlite_3_40_writes_while_the_daemon_drains() {
    let env = Env::sqlite().await;
    let db = env.path().join("outbox.db");
    let mut daemon = env.spawn_daemon_logged().0;
    // Python's sqlite3 module is the producer: its SQLite (3.40 on Debian 12) evaluates the
    // column defaults; only the producer columns are inserted, each in its own transaction
    // together with a business row, as the README tells producers to do.
    let script = r#"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5.0)
db.execute("PRAGMA busy_timeout = 5000")
db.execute("CREATE TABLE IF NOT EXISTS charges (order_no TEXT PRIMARY KEY)")
for i in range(400):
    order = f"PY-{i:04d}"
    payload = {"station_uuid": "8f5fdb60-9374-4c11-bdc2-a32d8369258c", "device_no": "S1", "port_no": "1",
               "replenish_order": order, "start_time": "2026-11-24T08:20:00Z", "end_time": "2026-11-24T09:20:00Z",
               "quantity": 6556, "energy_value": 207, "fee_value": 975, "total_value": 1182, "energy_code": "CN_DC"}
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO charges (order_no) VALUES (?)", (order,))
    db.execute("INSERT INTO outbox (sink, event_type, idempotency_key, payload) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (sink, idempotency_key) DO NOTHING", ("pyun", "charge_end", order, json.dumps(payload)))
    db.execute("COMMIT")
print(sqlite3.sqlite_version)
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&db)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "producer's SQLite: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!(
        env.sim
            .wait_for_requests(400, Duration::from_secs(30))
            .await,
        "not every produced row was delivered"
    );
    // A graceful stop records the last verdicts before exiting.
    let pid = daemon.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(20), daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let store = env.store().await;
    for i in 0..400 {
        assert_eq!(
            env.sim.applied_count(Platform::Pyun, &format!("PY-{i:04}")),
            1
        );
    }
    let stats = store.stats(outbox_core::clock::now_ms()).await.unwrap();
    assert_eq!(stats[0].delivered, 400, "{stats:?}");
}

#[tokio::test]
async fn a_row_that_is_not_text_is_dead_lettered_and_blocks_nothing() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "GOOD-1",
        &charge_end("GOOD-1"),
    )
    .await;
    // A producer wrote bytes that are not UTF-8 (SQLite stores them as they are).
    let db = env.path().join("outbox.db");
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             db = sqlite3.connect(sys.argv[1], timeout=5)\n\
             db.execute(\"INSERT INTO outbox (sink, event_type, idempotency_key, payload) VALUES ('pyun', 'charge_end', 'BAD-BYTES', ?)\", (b'\\xff\\xfe{',))\n\
             db.execute(\"INSERT INTO outbox (sink, event_type, idempotency_key, payload) VALUES ('pyun', 'charge_end', 'BAD-TEXT', CAST(X'7B22FF22' AS TEXT))\")\n\
             db.commit()",
        )
        .arg(&db)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "GOOD-2",
        &charge_end("GOOD-2"),
    )
    .await;
    env.run_until_idle(RUN).await;
    assert_eq!(env.sim.applied_keys(Platform::Pyun), ["GOOD-1", "GOOD-2"]);
    let dead = store.dead_list(None, None, None, 10).await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for d in &dead {
        assert!(d.reason.contains("not valid UTF-8"), "{}", d.reason);
    }
    // Operators can still list them.
    let list = env
        .outboxd()
        .args(["dead", "list", "--json"])
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
}
