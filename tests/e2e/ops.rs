//! Operator commands against a running daemon, on SQLite and Postgres: `status`, `dead
//! list/show/requeue/purge`, `pause`/`resume`, retention, and the admin listener's
//! `/metrics` and `/healthz` scraped over HTTP.
//!
//! Each scenario is one `async fn` taking an [`Env`], run once per backend. The tests wait
//! on signals (process exit, simulator counts, log lines) or poll the database with a
//! deadline; the few fixed waits are the durations under test themselves (retention).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_core::clock::now_ms;
use outbox_core::event::{EventType, NewEvent};
use outbox_core::store::{Engine, SinkStats, Store};
use outboxd_e2e::{charge_end, migrate, Env, PgCluster};
use platform_sim::{Platform, Step};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::time::Instant;

const RUN: Duration = Duration::from_secs(60);
/// Deadlines for things that take milliseconds when all is well: generous, never waited
/// out unless something is broken.
const SOON: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(25);

on_both_backends! {
    status_figures_match_what_happened
        => sqlite_status_figures_match_what_happened, postgres_status_figures_match_what_happened;
    dead_list_filters_and_show_every_attempt
        => sqlite_dead_list_filters_and_show_every_attempt, postgres_dead_list_filters_and_show_every_attempt;
    requeue_while_the_daemon_drains
        => sqlite_requeue_while_the_daemon_drains, postgres_requeue_while_the_daemon_drains;
    requeue_never_duplicates_a_key_already_in_the_outbox
        => sqlite_requeue_never_duplicates_a_key_already_in_the_outbox, postgres_requeue_never_duplicates_a_key_already_in_the_outbox;
    purge_deletes_old_dead_rows_and_their_history
        => sqlite_purge_deletes_old_dead_rows_and_their_history, postgres_purge_deletes_old_dead_rows_and_their_history;
    pause_holds_a_sink_while_the_daemon_drains_and_resume_delivers
        => sqlite_pause_holds_a_sink_while_the_daemon_drains_and_resume_delivers, postgres_pause_holds_a_sink_while_the_daemon_drains_and_resume_delivers;
    pause_takes_effect_when_the_command_returns
        => sqlite_pause_takes_effect_when_the_command_returns, postgres_pause_takes_effect_when_the_command_returns;
    retention_prunes_delivered_rows_and_their_history
        => sqlite_retention_prunes_delivered_rows_and_their_history, postgres_retention_prunes_delivered_rows_and_their_history;
    metrics_match_what_happened
        => sqlite_metrics_match_what_happened, postgres_metrics_match_what_happened;
}

// ---------------------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------------------

async fn status_figures_match_what_happened(env: Env) {
    // A second sink whose retries are an hour away, so a failed row stays "retrying".
    env.write_config(&extra_pyun_sink(&env, "slow", Some("1h")));
    let store = env.store().await;
    env.sim
        .script_pyun("ST-HINT", vec![Step::code_hint("200", "签名验证不通过")]);
    env.sim
        .script_pyun("ST-BAD", vec![Step::code_hint("400", "`vin` invalid~")]);
    env.sim.script_pyun("ST-SLOW", vec![Step::code("503")]);
    for key in ["ST-D1", "ST-D2", "ST-D3", "ST-HINT", "ST-BAD"] {
        enqueue(&env, &store, "pyun", key).await;
    }
    enqueue(&env, &store, "slow", "ST-SLOW").await;

    let mut daemon = Daemon::start(&env);
    eventually("the first rows to be final", SOON, || async {
        let s = stats(&store).await;
        let (p, slow) = (find(&s, "pyun"), find(&s, "slow"));
        p.delivered == 4 && p.dead == 1 && slow.retrying == 1
    })
    .await;
    // A row the daemon dies with in flight: its lease holds it until another worker
    // reclaims it, so it shows as in flight.
    env.sim
        .script_pyun("ST-HANG", vec![Step::ok().delayed(Duration::from_secs(30))]);
    let before_hang = now_ms();
    enqueue(&env, &store, "pyun", "ST-HANG").await;
    let after_hang = now_ms();
    let seen = env.sim.requests().len();
    assert!(env.sim.wait_for_requests(seen + 1, SOON).await);
    daemon.kill().await;

    // Producer rows the daemon has not seen: two due now, one not before 2099.
    for key in ["ST-P1", "ST-P2"] {
        let out = ok_json(
            &env,
            &[
                "enqueue",
                "--sink",
                "pyun",
                "--type",
                "charge_end",
                "--key",
                key,
                "--payload",
                &charge_end(key).to_string(),
                "--json",
            ],
        )
        .await;
        assert_eq!(out["enqueued"], true, "{out}");
    }
    let out = cli(
        &env,
        &[
            "enqueue",
            "--sink",
            "pyun",
            "--type",
            "charge_end",
            "--key",
            "ST-FUT",
            "--payload",
            &charge_end("ST-FUT").to_string(),
            "--not-before",
            "2099-01-01T00:00:00Z",
        ],
    )
    .await;
    assert_success(&out);
    let paused = ok_json(
        &env,
        &["pause", "slow", "--note", "credentials rotation", "--json"],
    )
    .await;
    assert_eq!(paused["paused"], true, "{paused}");
    // One delivery from two hours ago: counted in DELIVERED, not in LAST HOUR.
    let two_hours_ago = now_ms() - 2 * 3_600_000;
    let n = sql(
        &store,
        &format!("UPDATE outbox SET finished_at = {two_hours_ago} WHERE idempotency_key = 'ST-D1'"),
    )
    .await;
    assert_eq!(n, 1);

    let before_status = now_ms();
    let all = ok_json(&env, &["status", "--json"]).await;
    let after_status = now_ms();
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sink"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pyun", "slow"], "{all}");
    let pyun = &all[0];
    let expect = [
        ("pending", 3),
        ("in_flight", 1),
        ("due_now", 2),
        ("delivered", 4),
        ("delivered_last_hour", 3),
        ("done", 0),
        ("retrying", 0),
        ("dead", 1),
        ("hints", 1),
    ];
    for (field, n) in expect {
        assert_eq!(pyun[field], n, "pyun {field}: {pyun}");
    }
    assert_eq!(pyun["paused"], false);
    assert_eq!(pyun["last_error"], Value::Null);
    // The oldest unfinished row is the one in flight.
    let oldest = pyun["oldest_pending_ms"].as_i64().unwrap();
    let bounds = (before_status - after_hang - 50)..=(after_status - before_hang + 50);
    assert!(
        bounds.contains(&oldest),
        "oldest {oldest} not in {bounds:?}"
    );

    let slow = &all[1];
    for (field, n) in [
        ("pending", 1),
        ("in_flight", 0),
        ("due_now", 0),
        ("retrying", 1),
        ("delivered", 0),
        ("dead", 0),
    ] {
        assert_eq!(slow[field], n, "slow {field}: {slow}");
    }
    assert_eq!(slow["paused"], true);
    assert!(
        slow["last_error"].as_str().unwrap_or("").contains("503"),
        "{slow}"
    );

    // The table an operator reads: aligned, no colour codes when piped, what to do next.
    let text = stdout(&cli(&env, &["status"]).await);
    assert!(
        !text.contains('\x1b'),
        "colour codes in piped output:\n{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("SINK  STATE   PENDING  DUE  IN FLIGHT"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("pyun  active        3    2          1"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("slow  paused        1    0          0"),
        "{text}"
    );
    let dead_col = lines[0].find("DEAD").unwrap() + 3;
    assert_eq!(&lines[1][dead_col..=dead_col], "1", "DEAD column:\n{text}");
    for needle in [
        "slow: last error:",
        "`outboxd resume slow`",
        "`outboxd dead list --sink pyun`",
        "pyun: 1 delivered row(s) carried a platform hint",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }

    // One row, as `show` has it.
    let shown = ok_json(
        &env,
        &["show", "--sink", "pyun", "--key", "ST-HINT", "--json"],
    )
    .await;
    assert_eq!(shown["row"]["hint"], "签名验证不通过", "{shown}");
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1);
    let text = stdout(&cli(&env, &["show", "--sink", "slow", "--key", "ST-SLOW"]).await);
    assert!(
        text.contains("pending, 1 attempt(s), next attempt in"),
        "{text}"
    );
    let missing = cli(&env, &["show", "--sink", "pyun", "--key", "NOPE"]).await;
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("outboxd dead list --sink pyun"));
}

// ---------------------------------------------------------------------------------------
// dead list / show
// ---------------------------------------------------------------------------------------

async fn dead_list_filters_and_show_every_attempt(env: Env) {
    // Holds off (issue 13): every failure here is dead-lettered row by row, as the listing
    // needs.
    env.write_config(&format!(
        "[sinks.pyun.health]\nhold_after = 0\n\n{}",
        extra_pyun_sink(&env, "other", None)
    ));
    let store = env.store().await;
    env.sim
        .script_pyun("DL-VIN", vec![Step::code_hint("400", "`vin` invalid~")]);
    env.sim
        .script_pyun("DL-SIGN", vec![Step::code_hint("401", "签名验证不通过")]);
    env.sim
        .script_pyun("DL-RETRIES", vec![Step::code("503"); 5]);
    env.sim
        .script_pyun("DL-OTHER", vec![Step::code_hint("400", "`vin` invalid~")]);
    for key in ["DL-VIN", "DL-SIGN", "DL-RETRIES"] {
        enqueue(&env, &store, "pyun", key).await;
    }
    enqueue(&env, &store, "other", "DL-OTHER").await;
    let mut invalid = charge_end("DL-INVALID");
    invalid["end_time"] = "yesterday".into();
    env.enqueue(&store, "pyun", EventType::ChargeEnd, "DL-INVALID", &invalid)
        .await;
    env.run_until_idle(RUN).await;
    // One of them was dead-lettered three hours ago.
    let three_hours_ago = now_ms() - 3 * 3_600_000;
    sql(
        &store,
        &format!(
            "UPDATE outbox_dead SET dead_at = {three_hours_ago} WHERE idempotency_key = 'DL-SIGN'"
        ),
    )
    .await;

    let list = |args: &'static [&'static str]| {
        let env = &env;
        async move {
            let mut a = vec!["dead", "list", "--json"];
            a.extend_from_slice(args);
            let v = ok_json(env, &a).await;
            let mut keys: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["idempotency_key"].as_str().unwrap().to_string())
                .collect();
            keys.sort();
            keys
        }
    };
    assert_eq!(
        list(&[]).await,
        ["DL-INVALID", "DL-OTHER", "DL-RETRIES", "DL-SIGN", "DL-VIN"]
    );
    assert_eq!(list(&["--sink", "other"]).await, ["DL-OTHER"]);
    assert_eq!(
        list(&["--reason", "VIN` INVALID"]).await,
        ["DL-OTHER", "DL-VIN"]
    );
    assert_eq!(list(&["--reason", "gave up"]).await, ["DL-RETRIES"]);
    assert_eq!(
        list(&["--since", "1h"]).await,
        ["DL-INVALID", "DL-OTHER", "DL-RETRIES", "DL-VIN"]
    );
    assert_eq!(
        list(&["--since", "4h", "--reason", "签名"]).await,
        ["DL-SIGN"]
    );
    assert_eq!(
        list(&["--sink", "pyun", "--since", "1h", "--reason", "vin"]).await,
        ["DL-VIN"]
    );
    assert_eq!(list(&["--limit", "2"]).await.len(), 2);
    assert!(list(&["--sink", "nosuchsink"]).await.is_empty());

    // `show`: the payload and every attempt with its reply.
    let id = dead_id(&store, "DL-RETRIES").await;
    let shown = ok_json(&env, &["dead", "show", &id.to_string(), "--json"]).await;
    let payload: Value = serde_json::from_str(shown["dead"]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload, charge_end("DL-RETRIES"));
    assert_eq!(shown["dead"]["attempts"], 5);
    let attempts = shown["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 5, "{shown}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["attempt"], i as i64 + 1, "{a}");
        assert_eq!(a["outcome"], "retry");
        assert_eq!(a["reply_code"], "503");
        assert!(a["reply"].as_str().unwrap().contains("503"), "{a}");
    }
    assert_eq!(
        env.sim.request_count(Platform::Pyun, "DL-RETRIES"),
        5,
        "one request per attempt shown"
    );

    let id = dead_id(&store, "DL-VIN").await;
    let text = stdout(&cli(&env, &["dead", "show", &id.to_string()]).await);
    for needle in [
        "DL-VIN",
        "after 1 attempt(s)",
        "\"replenish_order\": \"DL-VIN\"",
        "`vin` invalid~",
        "replies:",
        &format!("outboxd dead requeue {id}"),
    ] {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }
    let text = stdout(&cli(&env, &["dead", "list", "--sink", "pyun"]).await);
    assert!(
        text.starts_with("ID  SINK  KEY         TYPE        ATTEMPTS  DEAD"),
        "{text}"
    );
    assert!(text.contains("3h ago"), "{text}");
    assert!(!text.contains('\x1b'));
    let empty = stdout(&cli(&env, &["dead", "list", "--sink", "nosuchsink"]).await);
    assert!(empty.contains("no dead-lettered rows with sink nosuchsink"));

    let missing = cli(&env, &["dead", "show", "999999"]).await;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no dead-lettered row with id 999999"),
        "{}",
        stderr(&missing)
    );
}

// ---------------------------------------------------------------------------------------
// requeue
// ---------------------------------------------------------------------------------------

async fn requeue_while_the_daemon_drains(env: Env) {
    let store = env.store().await;
    env.sim.script_pyun(
        "RQ-1",
        vec![
            Step::code("503"),
            Step::code("503"),
            Step::code_hint("400", "`vin` invalid~"),
        ],
    );
    env.sim
        .script_pyun("RQ-A", vec![Step::code_hint("400", "`vin` invalid~")]);
    env.sim
        .script_pyun("RQ-B", vec![Step::code_hint("400", "`vin` invalid~")]);
    for key in ["RQ-1", "RQ-A", "RQ-B"] {
        enqueue(&env, &store, "pyun", key).await;
    }
    env.run_until_idle(RUN).await;
    let dead = store.dead_list(None, None, None, 10).await.unwrap();
    assert_eq!(dead.len(), 3);
    let rq1 = dead.iter().find(|d| d.idempotency_key == "RQ-1").unwrap();
    assert_eq!(rq1.attempts, 3);

    // Keep the daemon busy with slow replies while the operator requeues.
    let fillers: Vec<String> = (0..80).map(|i| format!("RQ-FILL-{i:02}")).collect();
    for key in &fillers {
        env.sim
            .script_pyun(key, vec![Step::ok().delayed(Duration::from_millis(100))]);
        enqueue(&env, &store, "pyun", key).await;
    }
    let before = env.sim.requests().len();
    let daemon = Daemon::start(&env);
    assert!(env.sim.wait_for_requests(before + 16, SOON).await);

    let out = ok_json(&env, &["dead", "requeue", &rq1.id.to_string(), "--json"]).await;
    assert_eq!(out["requeued"], serde_json::json!([rq1.id]), "{out}");
    assert_eq!(out["failed"], serde_json::json!([]));
    assert!(store.dead_get(rq1.id).await.unwrap().is_none());
    eventually("the requeued row to be delivered", SOON, || async {
        row_status(&store, "pyun", "RQ-1").await.as_deref() == Some("delivered")
    })
    .await;
    let row = store.row("pyun", "RQ-1").await.unwrap().unwrap();
    assert_eq!(row.id, rq1.outbox_id, "requeued under its old id");
    assert_eq!(row.attempts, 1, "attempts were reset, then one delivery");
    let outcomes: Vec<String> = store
        .attempts(row.id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        outcomes,
        ["retry", "retry", "permanent", "delivered"],
        "history kept"
    );
    assert_eq!(env.sim.applied_count(Platform::Pyun, "RQ-1"), 1);

    // Every dead row of a sink at once.
    let text = stdout(&cli(&env, &["dead", "requeue", "--sink", "pyun", "--all"]).await);
    assert!(text.contains("requeued 2 row(s)"), "{text}");
    eventually("RQ-A and RQ-B to be delivered", SOON, || async {
        row_status(&store, "pyun", "RQ-A").await.as_deref() == Some("delivered")
            && row_status(&store, "pyun", "RQ-B").await.as_deref() == Some("delivered")
    })
    .await;
    eventually("the fillers to be delivered", SOON, || async {
        find(&stats(&store).await, "pyun").delivered == 83
    })
    .await;
    daemon.stop().await;
    for key in ["RQ-1", "RQ-A", "RQ-B"]
        .into_iter()
        .chain(fillers.iter().map(String::as_str))
    {
        assert_eq!(env.sim.applied_count(Platform::Pyun, key), 1, "{key}");
    }
    assert!(store
        .dead_list(None, None, None, 10)
        .await
        .unwrap()
        .is_empty());
    let none = stdout(&cli(&env, &["dead", "requeue", "--sink", "pyun", "--all"]).await);
    assert!(none.contains("no dead-lettered rows"), "{none}");

    // Usage mistakes name the right form.
    let bad = cli(&env, &["dead", "requeue", "--sink", "pyun"]).await;
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("needs --all"), "{}", stderr(&bad));
    let bad = cli(&env, &["dead", "requeue"]).await;
    assert!(
        stderr(&bad).contains("--sink NAME --all"),
        "{}",
        stderr(&bad)
    );
}

async fn requeue_never_duplicates_a_key_already_in_the_outbox(env: Env) {
    let store = env.store().await;
    for key in ["DUP-1", "DUP-2", "DUP-3"] {
        env.sim
            .script_pyun(key, vec![Step::code_hint("400", "`vin` invalid~")]);
        enqueue(&env, &store, "pyun", key).await;
    }
    env.run_until_idle(RUN).await;
    let id1 = dead_id(&store, "DUP-1").await;

    // The producer sent DUP-1 again: that row is pending, so the dead copy stays dead. (A
    // known key is ignored now: forget it first, as after key_retention or for a row
    // inserted before keys were remembered.)
    sql(
        &store,
        "DELETE FROM outbox_keys WHERE sink = 'pyun' AND idempotency_key = 'DUP-1'",
    )
    .await;
    enqueue(&env, &store, "pyun", "DUP-1").await;
    let out = cli(&env, &["dead", "requeue", &id1.to_string()]).await;
    assert!(!out.status.success());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("sent this key again") && text.contains("pending"),
        "{text}"
    );
    let out = cli(&env, &["dead", "requeue", &id1.to_string(), "--json"]).await;
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["failed"][0]["id"], id1, "{v}");
    assert!(store.dead_get(id1).await.unwrap().is_some());
    let row = store.row("pyun", "DUP-1").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 0));

    env.run_until_idle(RUN).await;
    assert_eq!(env.sim.applied_count(Platform::Pyun, "DUP-1"), 1);
    // Delivered now: still refused.
    let out = cli(&env, &["dead", "requeue", &id1.to_string()]).await;
    assert!(!out.status.success());
    assert!(stdout(&out).contains("delivered"), "{}", stdout(&out));

    // Requeued first, then re-sent by the producer: the producer's insert is ignored.
    let id2 = dead_id(&store, "DUP-2").await;
    ok_json(&env, &["dead", "requeue", &id2.to_string(), "--json"]).await;
    let again = event("pyun", "DUP-2", None);
    assert!(!store.enqueue(&again).await.unwrap());

    // Two operators requeueing the same row at once: it is requeued once.
    let id3 = dead_id(&store, "DUP-3").await;
    let id3 = id3.to_string();
    let args = ["dead", "requeue", id3.as_str()];
    let (a, b) = tokio::join!(cli(&env, &args), cli(&env, &args));
    assert_eq!(
        [a.status.success(), b.status.success()]
            .iter()
            .filter(|ok| **ok)
            .count(),
        1,
        "exactly one requeue wins:\n{}\n{}",
        stderr(&a),
        stderr(&b)
    );

    env.run_until_idle(RUN).await;
    for key in ["DUP-1", "DUP-2", "DUP-3"] {
        assert_eq!(env.sim.applied_count(Platform::Pyun, key), 1, "{key}");
        assert_eq!(
            env.sim.request_count(Platform::Pyun, key),
            2,
            "{key}: the 400, then one delivery"
        );
    }
}

// ---------------------------------------------------------------------------------------
// purge
// ---------------------------------------------------------------------------------------

async fn purge_deletes_old_dead_rows_and_their_history(env: Env) {
    let store = env.store().await;
    for key in ["PG-OLD-1", "PG-OLD-2", "PG-NEW"] {
        env.sim
            .script_pyun(key, vec![Step::code_hint("400", "`vin` invalid~")]);
        enqueue(&env, &store, "pyun", key).await;
    }
    env.run_until_idle(RUN).await;
    let forty_days_ago = now_ms() - 40 * 86_400_000;
    sql(
        &store,
        &format!(
            "UPDATE outbox_dead SET dead_at = {forty_days_ago} WHERE idempotency_key LIKE 'PG-OLD-%'"
        ),
    )
    .await;
    let old = store
        .dead_list(None, None, Some("vin"), 10)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.idempotency_key == "PG-OLD-1")
        .unwrap();
    let new_id = dead_id(&store, "PG-NEW").await;
    let new = store.dead_get(new_id).await.unwrap().unwrap();
    assert_eq!(store.attempts(old.outbox_id).await.unwrap().len(), 1);
    // A backlog from a long outage, purged in several batches.
    sql(
        &store,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500) \
             INSERT INTO outbox_dead (outbox_id, sink, event_type, idempotency_key, payload, \
                                      created_at, attempts, reason, dead_at) \
             SELECT 1000000 + i, 'pyun', 'charge_end', 'BULK-' || i, '{{}}', 0, 15, \
                    'gave up after 15 attempts', {forty_days_ago} FROM n"
        ),
    )
    .await;

    let out = ok_json(&env, &["dead", "purge", "--older-than", "30d", "--json"]).await;
    assert_eq!(out["purged"], 2502, "{out}");
    let left: Vec<String> = store
        .dead_list(None, None, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.idempotency_key)
        .collect();
    assert_eq!(left, ["PG-NEW"]);
    assert!(
        store.attempts(old.outbox_id).await.unwrap().is_empty(),
        "history purged with the row"
    );
    assert_eq!(
        store.attempts(new.outbox_id).await.unwrap().len(),
        1,
        "newer history kept"
    );
    let text = stdout(&cli(&env, &["dead", "purge", "--older-than", "30d"]).await);
    assert!(text.starts_with("purged 0 dead row(s)"), "{text}");
    let bad = cli(&env, &["dead", "purge", "--older-than", "30 fortnights"]).await;
    assert!(!bad.status.success());
}

// ---------------------------------------------------------------------------------------
// pause / resume
// ---------------------------------------------------------------------------------------

async fn pause_holds_a_sink_while_the_daemon_drains_and_resume_delivers(env: Env) {
    env.write_config(&extra_pyun_sink(&env, "other", None));
    let store = env.store().await;
    let keys: Vec<String> = (0..160).map(|i| format!("PZ-{i:03}")).collect();
    for key in &keys {
        env.sim
            .script_pyun(key, vec![Step::ok().delayed(Duration::from_millis(150))]);
        enqueue(&env, &store, "pyun", key).await;
    }
    let daemon = Daemon::start(&env);
    assert!(env.sim.wait_for_requests(20, SOON).await);

    let out = ok_json(&env, &["pause", "pyun", "--json"]).await;
    assert_eq!(out["paused"], true, "{out}");
    // The daemon notices within a poll interval: the rows it had in flight finish, and
    // no new ones are claimed. Nothing in flight can also be a moment between two claims,
    // so it must hold for longer than the daemon takes to claim again (immediately, with
    // due rows and free slots).
    eventually("the daemon to stop claiming pyun", SOON, || async {
        let before = find(&stats(&store).await, "pyun");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let after = find(&stats(&store).await, "pyun");
        before.in_flight == 0 && after.in_flight == 0 && before.pending == after.pending
    })
    .await;
    let held = held_rows(&store, &keys).await;
    assert!(
        held.len() > 20,
        "paused too late to hold anything ({} held)",
        held.len()
    );
    let requests = env.sim.requests().len();

    // The loop keeps going round for other sinks; after this row is delivered, the paused
    // sink has had every chance to be claimed again.
    enqueue(&env, &store, "other", "PZ-OTHER").await;
    eventually("the other sink's row to be delivered", SOON, || async {
        row_status(&store, "other", "PZ-OTHER").await.as_deref() == Some("delivered")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // three poll intervals
    assert_eq!(
        held_rows(&store, &keys).await,
        held,
        "held rows unchanged: still pending, no attempt used"
    );
    assert_eq!(
        env.sim.requests().len(),
        requests + 1,
        "only PZ-OTHER was sent"
    );
    let st = ok_json(&env, &["status", "--json"]).await;
    let pyun = st
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == "pyun")
        .unwrap();
    assert_eq!(pyun["paused"], true);
    assert_eq!(pyun["pending"], held.len() as i64);

    let text = stdout(&cli(&env, &["resume", "pyun"]).await);
    assert!(text.contains("sink pyun resumed"), "{text}");
    eventually("every held row to be delivered", SOON, || async {
        find(&stats(&store).await, "pyun").delivered == keys.len() as i64
    })
    .await;
    daemon.stop().await;
    for key in &keys {
        assert_eq!(env.sim.applied_count(Platform::Pyun, key), 1, "{key}");
        assert_eq!(env.sim.request_count(Platform::Pyun, key), 1, "{key}");
    }
    let text = stdout(&cli(&env, &["resume", "pyun"]).await);
    assert!(text.contains("was not paused"), "{text}");
    // Issue 16: a sink the config lacks is an error now (it was a warning).
    let out = cli(&env, &["pause", "pyuun"]).await;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("check the name"), "{}", stderr(&out));
}

/// Issue 13: rows inserted right after `outboxd pause` returns are never sent until
/// `resume`, though the daemon re-reads its list of paused sinks only at housekeeping. The
/// poll interval (housekeeping) is 1 s here so that list stays stale while the new rows wake
/// the daemon: only the claim itself reading the pause holds them.
async fn pause_takes_effect_when_the_command_returns(env: Env) {
    env.write_config(&extra_pyun_sink(&env, "other", None));
    let config = std::fs::read_to_string(&env.config_path).unwrap();
    assert!(config.contains("poll_interval = \"100ms\""), "{config}");
    env.write_config_raw(&config.replace("poll_interval = \"100ms\"", "poll_interval = \"1s\""));
    let store = env.store().await;
    let daemon = Daemon::start(&env);
    // The daemon is up and claiming pyun (it has read the pauses: none).
    enqueue(&env, &store, "pyun", "PT-FIRST").await;
    assert!(env.sim.wait_for_requests(1, SOON).await);
    eventually("PT-FIRST to be delivered", SOON, || async {
        row_status(&store, "pyun", "PT-FIRST").await.as_deref() == Some("delivered")
    })
    .await;

    let out = ok_json(&env, &["pause", "pyun", "--json"]).await;
    assert_eq!(out["paused"], true, "{out}");
    let keys: Vec<String> = (0..5).map(|i| format!("PT-{i}")).collect();
    for key in &keys {
        enqueue(&env, &store, "pyun", key).await;
    }
    // The daemon goes round for the other sink meanwhile (woken by its row).
    enqueue(&env, &store, "other", "PT-OTHER").await;
    eventually("the other sink's row to be delivered", SOON, || async {
        row_status(&store, "other", "PT-OTHER").await.as_deref() == Some("delivered")
    })
    .await;
    // Waiting for an absence has no signal to wait on: watch the simulator for 2 s, two
    // housekeeping intervals and many worker rounds (each insert woke the daemon), far
    // longer than the few ms it takes to claim and send a due row of an unpaused sink.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        for key in &keys {
            assert_eq!(
                env.sim.request_count(Platform::Pyun, key),
                0,
                "{key} was sent after `pause` returned"
            );
        }
        tokio::time::sleep(POLL).await;
    }
    for key in &keys {
        let row = store.row("pyun", key).await.unwrap().unwrap();
        assert_eq!((row.status.as_str(), row.attempts), ("pending", 0), "{key}");
    }

    let text = stdout(&cli(&env, &["resume", "pyun"]).await);
    assert!(text.contains("sink pyun resumed"), "{text}");
    eventually("every held row to be delivered", SOON, || async {
        find(&stats(&store).await, "pyun").delivered == keys.len() as i64 + 1
    })
    .await;
    daemon.stop().await;
    for key in &keys {
        assert_eq!(env.sim.applied_count(Platform::Pyun, key), 1, "{key}");
        assert_eq!(env.sim.request_count(Platform::Pyun, key), 1, "{key}");
    }
}

/// Pending rows among `keys` with their attempt counts and due times, by key.
async fn held_rows(store: &Store, keys: &[String]) -> Vec<(String, i64, i64)> {
    let mut held = Vec::new();
    for key in keys {
        let row = store.row("pyun", key).await.unwrap().unwrap();
        if row.status == "pending" {
            held.push((key.clone(), row.attempts, row.next_attempt_at));
        }
    }
    held
}

// ---------------------------------------------------------------------------------------
// retention
// ---------------------------------------------------------------------------------------

async fn retention_prunes_delivered_rows_and_their_history(env: Env) {
    env.write_config("");
    let config = std::fs::read_to_string(&env.config_path).unwrap().replace(
        "shutdown_grace = \"3s\"",
        "shutdown_grace = \"3s\"\nretention = \"1s\"",
    );
    env.write_config_raw(&config);
    let store = env.store().await;
    // More than one pruning batch (500).
    let keys: Vec<String> = (0..620).map(|i| format!("RT-{i:03}")).collect();
    for key in &keys {
        enqueue(&env, &store, "pyun", key).await;
    }
    env.sim
        .script_pyun("RT-DEAD", vec![Step::code_hint("400", "`vin` invalid~")]);
    enqueue(&env, &store, "pyun", "RT-DEAD").await;
    env.run_until_idle(RUN).await;
    let finished_by = now_ms();
    let ids = {
        let mut ids = Vec::new();
        for key in &keys {
            ids.push(store.row("pyun", key).await.unwrap().unwrap().id);
        }
        ids
    };
    assert_eq!(store.attempts(ids[0]).await.unwrap().len(), 1);
    let dead = store.dead_get(dead_id(&store, "RT-DEAD").await).await;
    let dead = dead.unwrap().unwrap();
    let later = event("pyun", "RT-LATER", Some(now_ms() + 3_600_000));
    assert!(store.enqueue(&later).await.unwrap());

    // Retention is the thing under test: let it pass, then start a daemon, whose pruner
    // runs at once and then every minute.
    let wait = (finished_by + 1_100 - now_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let daemon = Daemon::start(&env);
    eventually("the delivered rows to be pruned", SOON, || async {
        find(&stats(&store).await, "pyun").delivered == 0
    })
    .await;
    // Delivery goes on meanwhile.
    enqueue(&env, &store, "pyun", "RT-NEW").await;
    eventually("a new row to be delivered", SOON, || async {
        row_status(&store, "pyun", "RT-NEW").await.as_deref() == Some("delivered")
    })
    .await;
    daemon.stop().await;

    for (key, id) in keys.iter().zip(&ids).step_by(61) {
        assert!(store.row("pyun", key).await.unwrap().is_none(), "{key}");
        assert!(
            store.attempts(*id).await.unwrap().is_empty(),
            "{key}: history pruned with the row"
        );
    }
    assert_eq!(
        store.attempts(dead.outbox_id).await.unwrap().len(),
        1,
        "dead rows keep their history (purge is an operator's call)"
    );
    assert_eq!(
        row_status(&store, "pyun", "RT-LATER").await.as_deref(),
        Some("pending")
    );
    let st = find(&stats(&store).await, "pyun");
    assert_eq!((st.delivered, st.pending, st.dead), (1, 1, 1), "{st:?}");
}

// ---------------------------------------------------------------------------------------
// metrics and health
// ---------------------------------------------------------------------------------------

async fn metrics_match_what_happened(env: Env) {
    let store = env.store().await;
    env.sim
        .script_pyun("M-HINT", vec![Step::code_hint("200", "签名验证不通过")]);
    env.sim
        .script_pyun("M-FLAKY", vec![Step::code("503"), Step::ok()]);
    env.sim
        .script_pyun("M-BAD", vec![Step::code_hint("400", "`vin` invalid~")]);
    for key in ["M-OK1", "M-OK2", "M-HINT", "M-FLAKY", "M-BAD"] {
        enqueue(&env, &store, "pyun", key).await;
    }
    let mut invalid = charge_end("M-INVALID");
    invalid["quantity"] = "a lot".into();
    env.enqueue(&store, "pyun", EventType::ChargeEnd, "M-INVALID", &invalid)
        .await;

    let daemon = Daemon::start(&env);
    let admin = daemon.admin_addr().await;
    eventually("/healthz to answer 200", SOON, || async {
        http_get(admin, "/healthz").await.0 == 200
    })
    .await;
    eventually("every row to be final", SOON, || async {
        let p = find(&stats(&store).await, "pyun");
        p.delivered == 4 && p.dead == 2 && p.pending + p.in_flight == 0
    })
    .await;

    // Counters are bumped just after each verdict is committed: scrape until they settle.
    let deadline = Instant::now() + SOON;
    let text = loop {
        let (code, text) = http_get(admin, "/metrics").await;
        assert_eq!(code, 200, "{text}");
        let outcome = |o: &str| {
            try_metric(
                &text,
                &format!(r#"outboxd_deliveries_total{{sink="pyun",outcome="{o}"}}"#),
            )
        };
        if outcome("delivered") == Some(4.0)
            && outcome("retry") == Some(1.0)
            && outcome("permanent") == Some(2.0)
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "delivered 4, retry 1, permanent 2 expected:\n{text}"
        );
        tokio::time::sleep(POLL).await;
    };
    let m = |series: &str| metric(&text, series);
    assert_eq!(m(r#"outboxd_hints_total{sink="pyun"}"#), 1.0);
    // The latency histogram observes HTTP attempts: one per request the platform saw.
    let http_attempts = env.sim.requests().len() as f64;
    assert_eq!(http_attempts, 6.0);
    assert_eq!(
        m(r#"outboxd_attempt_duration_seconds_count{sink="pyun"}"#),
        http_attempts
    );
    assert_eq!(
        m(r#"outboxd_attempt_duration_seconds_bucket{sink="pyun",le="+Inf"}"#),
        http_attempts
    );
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(r#"outboxd_attempt_duration_seconds_bucket{sink="pyun""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 13);
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative buckets: {buckets:?}"
    );
    assert!(m(r#"outboxd_attempt_duration_seconds_sum{sink="pyun"}"#) > 0.0);
    assert_eq!(m(r#"outboxd_queue_pending{sink="pyun"}"#), 0.0);
    assert_eq!(m(r#"outboxd_queue_in_flight{sink="pyun"}"#), 0.0);
    assert_eq!(m(r#"outboxd_dead_letter_rows{sink="pyun"}"#), 2.0);
    assert_eq!(m(r#"outboxd_hint_rows{sink="pyun"}"#), 1.0);
    assert_eq!(m(r#"outboxd_sink_paused{sink="pyun"}"#), 0.0);
    assert_eq!(m(r#"outboxd_oldest_pending_age_seconds{sink="pyun"}"#), 0.0);

    // Queue gauges come from the database at scrape time. Rows due in an hour stay put
    // (the daemon may not have noticed the pause yet).
    ok_json(&env, &["pause", "pyun", "--json"]).await;
    let before = now_ms();
    for key in ["M-LATER-1", "M-LATER-2"] {
        let later = event("pyun", key, Some(now_ms() + 3_600_000));
        assert!(store.enqueue(&later).await.unwrap());
    }
    let (_, text) = http_get(admin, "/metrics").await;
    let waited = (now_ms() - before) as f64 / 1000.0;
    let m = |series: &str| metric(&text, series);
    assert_eq!(m(r#"outboxd_queue_pending{sink="pyun"}"#), 2.0, "{text}");
    assert_eq!(m(r#"outboxd_queue_due{sink="pyun"}"#), 0.0);
    assert_eq!(m(r#"outboxd_sink_paused{sink="pyun"}"#), 1.0);
    let age = m(r#"outboxd_oldest_pending_age_seconds{sink="pyun"}"#);
    assert!(
        (0.0..=waited + 0.05).contains(&age),
        "age {age}, waited {waited}"
    );
    assert_eq!(
        http_get(admin, "/healthz").await,
        (200, "ok\n".to_string()),
        "a paused sink is healthy"
    );
    assert_eq!(http_get(admin, "/nope").await.0, 404);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_healthz_fails_while_the_database_is_unreachable() {
    let env = Env::sqlite().await;
    let outage = Outage::SqliteLocked {
        shm: env.path().join("outbox.db-shm"),
        holder: None,
    };
    healthz_fails_while_the_database_is_unreachable(env, outage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_healthz_fails_while_the_database_is_unreachable() {
    let Some(mut env) = Env::postgres().await else {
        return;
    };
    // A cluster of its own to stop: the shared one serves the other tests.
    let cluster = PgCluster::start();
    migrate(&cluster.url);
    env.db_url = cluster.url.clone();
    env.write_config("");
    healthz_fails_while_the_database_is_unreachable(env, Outage::PostgresDown(cluster)).await;
}

async fn healthz_fails_while_the_database_is_unreachable(env: Env, mut outage: Outage) {
    let daemon = Daemon::start(&env);
    let admin = daemon.admin_addr().await;
    eventually("/healthz to answer 200", SOON, || async {
        http_get(admin, "/healthz").await.0 == 200
    })
    .await;

    outage.begin().await;
    // SQLite gives up on a locked WAL index after about 10 s, and the daemon's only
    // connection may be busy with such a query first.
    let (code, body) = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let (code, body) = http_get(admin, "/healthz").await;
            if code != 200 {
                return (code, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("/healthz kept answering 200 with the database unreachable");
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("database unavailable"), "{body}");
    daemon
        .wait_for_log(
            "the worker noticing",
            |l| l.contains("database unavailable during"),
            Duration::from_secs(60),
        )
        .await;

    outage.end().await;
    eventually("/healthz to recover", Duration::from_secs(90), || async {
        http_get(admin, "/healthz").await.0 == 200
    })
    .await;
    // And it delivers again.
    let store = env.store().await;
    enqueue(&env, &store, "pyun", "HZ-AFTER").await;
    eventually("a row to be delivered after the outage", SOON, || async {
        row_status(&store, "pyun", "HZ-AFTER").await.as_deref() == Some("delivered")
    })
    .await;
    daemon.stop().await;
}

/// Ways to take the database away from a running daemon.
enum Outage {
    /// Another process holds every lock of the WAL index (as a crashed tool holding the
    /// file might): readers cannot start a transaction, the open file descriptor does not
    /// help. Python's `fcntl` takes the same POSIX locks SQLite uses.
    SqliteLocked {
        shm: PathBuf,
        holder: Option<tokio::process::Child>,
    },
    PostgresDown(PgCluster),
}

impl Outage {
    async fn begin(&mut self) {
        match self {
            Outage::SqliteLocked { shm, holder } => {
                // The WAL-index locks are bytes 120..128 of the -shm file (write, checkpoint,
                // recover, read marks 0-4); byte 128 is the one every connection shares.
                let script = "import fcntl, os, sys, time\n\
                              fd = os.open(sys.argv[1], os.O_RDWR)\n\
                              fcntl.lockf(fd, fcntl.LOCK_EX, 8, 120, os.SEEK_SET)\n\
                              print('locked', flush=True)\n\
                              time.sleep(600)\n";
                let mut child = tokio::process::Command::new("python3")
                    .arg("-c")
                    .arg(script)
                    .arg(&*shm)
                    .stdout(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("python3 is needed for this test (scripts/test.sh checks for it)");
                let mut line = String::new();
                BufReader::new(child.stdout.as_mut().unwrap())
                    .read_line(&mut line)
                    .await
                    .unwrap();
                assert_eq!(line.trim(), "locked");
                *holder = Some(child);
            }
            Outage::PostgresDown(c) => c.down(),
        }
    }

    async fn end(&mut self) {
        match self {
            Outage::SqliteLocked { holder, .. } => {
                let mut child = holder.take().expect("begun");
                child.kill().await.unwrap();
            }
            Outage::PostgresDown(c) => c.up(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The daemon in the background, its log (JSON lines on stderr) collected as it comes.
struct Daemon {
    child: tokio::process::Child,
    log: Arc<Mutex<Vec<String>>>,
    lines: watch::Receiver<usize>,
}

impl Daemon {
    fn start(env: &Env) -> Daemon {
        let mut child = env.spawn_daemon();
        let stderr = child.stderr.take().expect("piped stderr");
        let stdout = child.stdout.take().expect("piped stdout");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = watch::channel(0);
        let collected = log.clone();
        // Read everything, so the daemon never blocks on a full pipe.
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let n = {
                    let mut log = collected.lock().unwrap();
                    log.push(line);
                    log.len()
                };
                tx.send_replace(n);
            }
        });
        tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = BufReader::new(stdout).read_to_end(&mut out).await;
        });
        Daemon { child, log, lines }
    }

    async fn wait_for_log(
        &self,
        what: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        let mut lines = self.lines.clone();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            match tokio::time::timeout_at(deadline, lines.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("the daemon exited before logging {what}"),
                Err(_) => panic!("no log line for {what} within {timeout:?}"),
            }
        }
    }

    /// The admin listener's address, from the log line that reports it.
    async fn admin_addr(&self) -> SocketAddr {
        let line = self
            .wait_for_log("the admin listener", |l| l.contains("\"bound\""), SOON)
            .await;
        let v: Value = serde_json::from_str(&line).expect("a JSON log line");
        v["bound"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"))
    }

    /// SIGTERM, and a clean exit within the shutdown grace.
    async fn stop(mut self) {
        let pid = self.child.id().expect("the daemon is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the daemon did not stop on SIGTERM")
            .unwrap();
        assert!(status.success(), "the daemon exited with {status}");
    }

    /// SIGKILL: whatever it had in flight stays leased.
    async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log.lock().unwrap();
            let tail = log.len().saturating_sub(60);
            eprintln!("--- last lines of the daemon's log ---");
            for l in &log[tail..] {
                eprintln!("{l}");
            }
        }
    }
}

/// A second 4pyun sink on the same simulator (keys never overlap across tests' sinks), with
/// its retries `retry_after` apart if given.
pub(crate) fn extra_pyun_sink(env: &Env, name: &str, retry_after: Option<&str>) -> String {
    let mut s = env.pyun_sink(name, &["concurrency = 4"]);
    if let Some(d) = retry_after {
        s.push_str(&format!(
            "\n[sinks.{name}.retry]\nbase = \"{d}\"\nfloor = \"{d}\"\ncap = \"{d}\"\nmax_attempts = 5\nmax_age = \"48h\"\n"
        ));
    }
    s
}

/// A charge_end event for `key`, as a producer writes it.
pub(crate) fn event(sink: &str, key: &str, not_before: Option<i64>) -> NewEvent {
    NewEvent {
        sink: sink.into(),
        event_type: EventType::ChargeEnd,
        idempotency_key: key.into(),
        payload: charge_end(key).to_string(),
        ordering_key: None,
        not_before,
        supersede_key: None,
    }
}

pub(crate) async fn enqueue(env: &Env, store: &Store, sink: &str, key: &str) {
    env.enqueue(store, sink, EventType::ChargeEnd, key, &charge_end(key))
        .await;
}

pub(crate) async fn cli(env: &Env, args: &[&str]) -> Output {
    tokio::process::Command::from(env.outboxd())
        .args(args)
        .output()
        .await
        .expect("running outboxd")
}

pub(crate) fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "outboxd failed ({}):\n{}{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

pub(crate) async fn ok_json(env: &Env, args: &[&str]) -> Value {
    let out = cli(env, args).await;
    assert_success(&out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{}", stdout(&out)))
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub(crate) async fn stats(store: &Store) -> Vec<SinkStats> {
    store.stats(now_ms()).await.expect("stats")
}

pub(crate) fn find(stats: &[SinkStats], sink: &str) -> SinkStats {
    stats
        .iter()
        .find(|s| s.sink == sink)
        .cloned()
        .unwrap_or_default()
}

pub(crate) async fn row_status(store: &Store, sink: &str, key: &str) -> Option<String> {
    store.row(sink, key).await.unwrap().map(|r| r.status)
}

pub(crate) async fn dead_id(store: &Store, key: &str) -> i64 {
    store
        .dead_list(None, None, None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.idempotency_key == key)
        .unwrap_or_else(|| panic!("{key} is not dead-lettered"))
        .id
}

/// Runs a statement the operator commands do not offer (back-dating rows, so "old" needs
/// no waiting; seeding rows in bulk).
pub(crate) async fn sql(store: &Store, statement: &str) -> u64 {
    match store.engine() {
        Engine::Sqlite(s) => sqlx::query(statement)
            .execute(s.pool())
            .await
            .expect(statement)
            .rows_affected(),
        Engine::Postgres(p) => sqlx::query(statement)
            .execute(p.pool())
            .await
            .expect(statement)
            .rows_affected(),
    }
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A plain HTTP/1.1 GET: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the admin listener");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8(reply).expect("a UTF-8 reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    (status, body.to_string())
}

/// The value of one series (name with its labels, exactly as exposed).
fn metric(text: &str, series: &str) -> f64 {
    try_metric(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

fn try_metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.parse().expect("a number"))
}
