//! charge_start → lbbtech start, poll and verify, through the real daemon.
//!
//! Every test ends by checking that the simulator saw exactly one start request per event,
//! and reads the outcome the way a producer does: one query on the `outbox_outcomes` view.
//! Timings are shortened (poll every 100ms, a 1s window, verify 1s after it); tests wait on
//! the simulator or on the row's `flow_state`, never on a guess of how long a step takes.

use std::time::Duration;

use outbox_core::event::EventType;
use outbox_core::sinks::lbbtech::OUTCOME_UNKNOWN;
use outboxd_e2e::{sqlite_files_contain, Env, LBBTECH_TOKEN};
use platform_sim::lbbtech::{ORDER_PATH, RESULT_PATH, START_PATH};
use platform_sim::{LbbOrder, LbbScript, Platform, RecordedRequest, Step};
use serde_json::{json, Value};
use sqlx::SqlitePool;

const RUN: Duration = Duration::from_secs(30);

/// The lbbtech sink section with test timings; `extra` adds keys to it.
fn sink(url: &str, extra: &str) -> String {
    format!(
        r#"
[sinks.lbb]
type = "lbbtech"
url = "{url}"
secret_env = "TEST_LBBTECH_TOKEN"
timeout = "1s"
connect_timeout = "1s"
poll_interval = "100ms"
poll_window = "1s"
verify_after = "1s"
{extra}
"#
    )
}

/// An env whose config has the lbbtech sink pointed at the simulator.
async fn lbb_env(extra: &str) -> Env {
    let env = Env::sqlite().await;
    env.write_config(&sink(&env.sim.lbbtech_base_url(), extra));
    env
}

fn payload(sim_id: &str, charger: &str) -> Value {
    json!({
        "simId": sim_id, "portNum": 5, "param": 1, "payMoney": 20.5, "selectPriceType": 1,
        "infoPriceId": 42, "userId": 1001, "chargeBefore": 0, "isAdvanceReceive": 0,
        "charger": charger
    })
}

/// Enqueues a charge_start keyed `KEY-<sim_id>`.
async fn enqueue(env: &Env, store: &outbox_core::store::Store, sim_id: &str, charger: &str) {
    env.enqueue(
        store,
        "lbb",
        EventType::ChargeStart,
        &key(sim_id),
        &payload(sim_id, charger),
    )
    .await;
}

fn key(sim_id: &str) -> String {
    format!("KEY-{sim_id}")
}

/// The simulator's record of one call type for one `simId`.
fn calls(env: &Env, sim_id: &str, path: &str) -> Vec<RecordedRequest> {
    env.sim
        .requests()
        .into_iter()
        .filter(|r| r.path == path && r.key.as_deref() == Some(sim_id))
        .collect()
}

/// The one start request the simulator saw for `sim_id` (failing if it saw another number),
/// and whether the platform applied it.
fn the_start(env: &Env, sim_id: &str, applied: usize) -> RecordedRequest {
    let starts = calls(env, sim_id, START_PATH);
    assert_eq!(starts.len(), 1, "{sim_id}: start requests {starts:#?}");
    assert_eq!(
        env.sim.applied_count(Platform::Lbbtech, sim_id),
        applied,
        "{sim_id}: starts applied"
    );
    assert_eq!(starts[0].params["token"], LBBTECH_TOKEN);
    assert!(
        starts[0].params.get("charger").is_none(),
        "charger is ours, not lbbtech's"
    );
    starts.into_iter().next().unwrap()
}

/// The start reply's `data` field `f` (the simulator records the reply even when dropped).
fn started_field(start: &RecordedRequest, f: &str) -> String {
    start.reply.as_ref().unwrap()["data"][f]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The producer's view of an event.
#[derive(Debug)]
struct Outcome {
    status: String,
    outcome: String,
    result: Value,
    reason: Option<String>,
}

async fn producer_pool(env: &Env) -> SqlitePool {
    SqlitePool::connect(&env.db_url)
        .await
        .expect("producer connection")
}

/// The producer's one query, on whichever backend the env uses.
async fn outcome(env: &Env, sim_id: &str) -> Outcome {
    type Row = (String, String, Option<String>, Option<String>);
    let query = "SELECT status, outcome, result, reason FROM outbox_outcomes \
                 WHERE sink = $1 AND idempotency_key = $2";
    let row: Row = if env.db_url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&env.db_url).await.unwrap();
        let row = sqlx::query_as(query)
            .bind("lbb")
            .bind(key(sim_id))
            .fetch_one(&pool)
            .await;
        pool.close().await;
        row
    } else {
        let pool = producer_pool(env).await;
        let row = sqlx::query_as(&query.replace('$', "?"))
            .bind("lbb")
            .bind(key(sim_id))
            .fetch_one(&pool)
            .await;
        pool.close().await;
        row
    }
    .expect("one outcome row");
    Outcome {
        status: row.0,
        outcome: row.1,
        result: row
            .2
            .map(|r| serde_json::from_str(&r).expect("result is JSON"))
            .unwrap_or(Value::Null),
        reason: row.3,
    }
}

/// Waits until the row's `flow_state` satisfies `done`; returns it.
async fn wait_for_state(env: &Env, sim_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let pool = producer_pool(env).await;
    let deadline = tokio::time::Instant::now() + RUN;
    loop {
        let state: Option<Option<String>> = sqlx::query_scalar(
            "SELECT flow_state FROM outbox WHERE sink = 'lbb' AND idempotency_key = ?1",
        )
        .bind(key(sim_id))
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(state) = state.flatten() {
            let v: Value = serde_json::from_str(&state).unwrap();
            if done(&v) {
                pool.close().await;
                return v;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sim_id}: flow state never reached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_failed_with_refund(o: &Outcome, code: Option<&str>, reason: &str, order: Option<&str>) {
    assert_eq!(
        (o.status.as_str(), o.outcome.as_str()),
        ("done", "failed"),
        "{o:?}"
    );
    assert_eq!(o.result["refund"], true, "{o:?}");
    assert_eq!(o.result["code"].as_str(), code, "{o:?}");
    assert_eq!(o.result["orderNum"].as_str(), order, "{o:?}");
    let text = o.result["reason"].as_str().unwrap();
    assert!(text.contains(reason), "{reason:?} not in {o:?}");
    assert_eq!(o.reason.as_deref(), Some(text));
}

#[tokio::test]
async fn started_after_k_polls_with_one_start() {
    let env = lbb_env("").await;
    let store = env.store().await;
    let sim = "860000000000001";
    env.sim.script_lbbtech(
        sim,
        LbbScript {
            result_after_polls: 3,
            ..LbbScript::default()
        },
    );
    enqueue(&env, &store, sim, "two_wheeler").await;
    let out = env.run_until_idle(RUN).await;

    let start = the_start(&env, sim, 1);
    assert_eq!(start.params["simId"], sim);
    assert_eq!(start.params["payMoney"], "20.5");
    assert_eq!(start.params["userId"], "1001");
    let polls = calls(&env, sim, RESULT_PATH);
    assert_eq!(polls.len(), 4, "result known on poll 4");
    let result_key = started_field(&start, "resultKey");
    assert!(polls.iter().all(|p| p.params["resultKey"] == result_key));
    for w in polls.windows(2) {
        let gap = w[1].received_at_ms - w[0].received_at_ms;
        assert!(gap >= 90, "polled {gap}ms apart; poll_interval is 100ms");
    }
    assert!(calls(&env, sim, ORDER_PATH).is_empty());

    let o = outcome(&env, sim).await;
    assert_eq!(
        (o.status.as_str(), o.outcome.as_str()),
        ("delivered", "started")
    );
    assert_eq!(
        o.result,
        json!({"outcome": "started", "orderNum": started_field(&start, "orderNum")})
    );
    // One attempt per step: the start, three pending polls, the poll that saw result 1.
    let row = store.row("lbb", &key(sim)).await.unwrap().unwrap();
    let steps: Vec<String> = store
        .attempts(row.id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        steps,
        ["continue", "continue", "continue", "continue", "delivered"]
    );

    // The token never reaches the log or the database.
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!log.contains(LBBTECH_TOKEN), "token in the log");
    store.close().await;
    assert!(!sqlite_files_contain(env.path(), LBBTECH_TOKEN));
    assert!(sqlite_files_contain(env.path(), &result_key));
}

#[tokio::test]
async fn failure_results_refund_two_wheelers_at_once() {
    let env = lbb_env("").await;
    let store = env.store().await;
    let cases = [
        ("860000000000003", 3, "not plugged in"),
        ("860000000000058", 58, "start timeout"),
        ("860000000000062", 62, "already charging"),
    ];
    for (sim, result, _) in cases {
        env.sim.script_lbbtech(
            sim,
            LbbScript {
                result_after_polls: 1,
                result,
                ..LbbScript::default()
            },
        );
        enqueue(&env, &store, sim, "two_wheeler").await;
    }
    env.run_until_idle(RUN).await;
    for (sim, result, meaning) in cases {
        let start = the_start(&env, sim, 1);
        assert_eq!(calls(&env, sim, RESULT_PATH).len(), 2);
        assert!(
            calls(&env, sim, ORDER_PATH).is_empty(),
            "two-wheelers are not verified"
        );
        let order = started_field(&start, "orderNum");
        assert_failed_with_refund(
            &outcome(&env, sim).await,
            Some(&result.to_string()),
            meaning,
            Some(&order),
        );
    }
}

#[tokio::test]
async fn car_failure_result_is_verified_before_refunding() {
    let env = lbb_env("").await;
    let store = env.store().await;
    // Result 62 and no order: failed. Result 58 but the order is charging: it did start.
    let (no_order, charging) = ("861000000000062", "861000000000058");
    env.sim.script_lbbtech(
        no_order,
        LbbScript {
            result: 62,
            ..LbbScript::default()
        },
    );
    env.sim.script_lbbtech(
        charging,
        LbbScript {
            result: 58,
            order: LbbOrder::Status(2),
            ..LbbScript::default()
        },
    );
    enqueue(&env, &store, no_order, "car").await;
    enqueue(&env, &store, charging, "car").await;
    env.run_until_idle(RUN).await;

    for sim in [no_order, charging] {
        let start = the_start(&env, sim, 1);
        assert_eq!(
            calls(&env, sim, RESULT_PATH).len(),
            1,
            "a failure result ends polling"
        );
        let orders = calls(&env, sim, ORDER_PATH);
        assert_eq!(orders.len(), 1);
        assert_eq!(
            orders[0].params["orderNum"],
            started_field(&start, "orderNum")
        );
        // Looked up at start reply + poll_window + verify_after, not before.
        let waited = orders[0].received_at_ms - start.received_at_ms;
        assert!(
            waited >= 2_000,
            "order looked up {waited}ms after the start"
        );
    }
    let start = the_start(&env, no_order, 1);
    assert_failed_with_refund(
        &outcome(&env, no_order).await,
        Some("62"),
        "already charging",
        Some(&started_field(&start, "orderNum")),
    );
    let o = outcome(&env, charging).await;
    assert_eq!(
        (o.status.as_str(), o.outcome.as_str()),
        ("delivered", "started")
    );
    assert_eq!(o.result["orderStatus"], 2);
}

#[tokio::test]
async fn never_result_fails_a_two_wheeler_after_the_window() {
    let env = lbb_env("").await;
    let store = env.store().await;
    let sim = "862000000000001";
    env.sim.script_lbbtech(
        sim,
        LbbScript {
            never_result: true,
            order: LbbOrder::Status(2),
            ..LbbScript::default()
        },
    );
    enqueue(&env, &store, sim, "two_wheeler").await;
    env.run_until_idle(RUN).await;

    let start = the_start(&env, sim, 1);
    let polls = calls(&env, sim, RESULT_PATH);
    assert!(polls.len() >= 5, "{} polls in a 1s window", polls.len());
    let last = polls.last().unwrap().received_at_ms - start.received_at_ms;
    assert!(
        last >= 950,
        "last poll {last}ms after the start: the window is 1s"
    );
    assert!(
        calls(&env, sim, ORDER_PATH).is_empty(),
        "two-wheelers are not verified"
    );
    assert_failed_with_refund(
        &outcome(&env, sim).await,
        None,
        "poll window",
        Some(&started_field(&start, "orderNum")),
    );
}

#[tokio::test]
async fn never_result_car_is_settled_by_its_order() {
    let env = lbb_env("").await;
    let store = env.store().await;
    // (simId, order, as a list, expected: Ok(order status) started / Err(reason) failed)
    let cases: [(&str, LbbOrder, bool, Result<i64, &str>); 4] = [
        ("863000000000002", LbbOrder::Status(2), false, Ok(2)),
        ("863000000000003", LbbOrder::Status(3), true, Ok(3)),
        (
            "863000000000004",
            LbbOrder::Status(4),
            false,
            Err("ended abnormally"),
        ),
        (
            "863000000000000",
            LbbOrder::Absent,
            false,
            Err("订单不存在"),
        ),
    ];
    for (sim, order, order_as_list, _) in cases {
        env.sim.script_lbbtech(
            sim,
            LbbScript {
                never_result: true,
                order,
                order_as_list,
                ..LbbScript::default()
            },
        );
        enqueue(&env, &store, sim, "car").await;
    }
    env.run_until_idle(RUN).await;

    for (sim, _, _, expected) in cases {
        let start = the_start(&env, sim, 1);
        let order = started_field(&start, "orderNum");
        assert_eq!(calls(&env, sim, ORDER_PATH).len(), 1, "{sim}");
        let o = outcome(&env, sim).await;
        match expected {
            Ok(status) => {
                assert_eq!(
                    (o.status.as_str(), o.outcome.as_str()),
                    ("delivered", "started")
                );
                assert_eq!(
                    o.result,
                    json!({"outcome": "started", "orderNum": order, "orderStatus": status})
                );
            }
            Err(reason) => assert_failed_with_refund(&o, None, reason, Some(&order)),
        }
    }
}

#[tokio::test]
async fn refused_start_fails_with_refund_and_no_polls() {
    let env = lbb_env("").await;
    let store = env.store().await;
    let sim = "864000000000001";
    env.sim.script_lbbtech(
        sim,
        LbbScript {
            start: Step::code_message("-1", "余额不足"),
            ..LbbScript::default()
        },
    );
    enqueue(&env, &store, sim, "two_wheeler").await;
    env.run_until_idle(RUN).await;
    the_start(&env, sim, 0);
    assert_eq!(env.sim.request_count(Platform::Lbbtech, sim), 1, "no polls");
    assert_failed_with_refund(&outcome(&env, sim).await, Some("-1"), "余额不足", None);
}

#[tokio::test]
async fn invalid_payload_is_dead_lettered_without_a_request() {
    let env = lbb_env("").await;
    let store = env.store().await;
    let sim = "865000000000001";
    let mut p = payload(sim, "bus");
    p["portNum"] = json!("5");
    env.enqueue(&store, "lbb", EventType::ChargeStart, &key(sim), &p)
        .await;
    env.run_until_idle(RUN).await;
    assert!(
        env.sim.requests().is_empty(),
        "no HTTP call for an invalid row"
    );
    let o = outcome(&env, sim).await;
    assert_eq!((o.status.as_str(), o.outcome.as_str()), ("dead", "dead"));
    let reason = o.reason.unwrap();
    assert!(
        reason.contains("`charger`") && reason.contains("`portNum`"),
        "{reason}"
    );
}

#[tokio::test]
async fn ambiguous_starts_are_dead_lettered_as_unknown_never_resent() {
    let env = lbb_env("").await;
    let store = env.store().await;
    // (simId, start step, applied by the platform). A dropped connection after the request
    // was written looks the same to us whether or not the platform applied it.
    let cases = [
        ("866000000000001", Step::drop_after(), 1),
        ("866000000000002", Step::drop_before(), 0),
        ("866000000000003", Step::http(503), 0),
        (
            "866000000000004",
            Step::ok().delayed(Duration::from_millis(1500)),
            1,
        ),
    ];
    for (sim, start, _) in &cases {
        env.sim.script_lbbtech(
            sim,
            LbbScript {
                start: start.clone(),
                ..LbbScript::default()
            },
        );
        enqueue(&env, &store, sim, "car").await;
    }
    let out = env.run_until_idle(RUN).await;
    for (sim, _, applied) in cases {
        the_start(&env, sim, applied);
        assert_eq!(
            env.sim.request_count(Platform::Lbbtech, sim),
            1,
            "{sim}: nothing after the start"
        );
        let o = outcome(&env, sim).await;
        assert_eq!(
            (o.status.as_str(), o.outcome.as_str()),
            ("dead", "unknown"),
            "{sim}"
        );
        assert!(
            o.reason.as_deref().unwrap().starts_with(OUTCOME_UNKNOWN),
            "{o:?}"
        );
        assert_eq!(o.result["outcome"], "unknown");
    }
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains(LBBTECH_TOKEN), "token in the log");
    store.close().await;
    assert!(!sqlite_files_contain(env.path(), LBBTECH_TOKEN));
}

/// Forwards every connection on `listener` to `target`.
async fn forward(listener: tokio::net::TcpListener, target: std::net::SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test]
async fn unsent_start_is_retried_and_applied_once() {
    let env = Env::sqlite().await;
    let store = env.store().await;
    // Nothing listens on this port at first: connections are refused, so the start provably
    // never left and is retried; then a forwarder to the simulator appears on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.write_config(&sink(
        &format!("http://127.0.0.1:{port}/open"),
        "[sinks.lbb.retry]\nbase = \"100ms\"\ncap = \"200ms\"\nfloor = \"50ms\"\nmax_attempts = 100\nmax_age = \"1h\"",
    ));
    let sim = "867000000000001";
    enqueue(&env, &store, sim, "two_wheeler").await;
    let open_the_port = async {
        let pool = producer_pool(&env).await;
        let deadline = tokio::time::Instant::now() + RUN;
        loop {
            // Attempts that never left are not counted (issue 13): look at the history.
            let (not_sent,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM outbox_attempts a JOIN outbox o ON o.id = a.outbox_id \
                 WHERE o.idempotency_key = ?1 AND a.error LIKE 'not sent%'",
            )
            .bind(key(sim))
            .fetch_one(&pool)
            .await
            .unwrap();
            if not_sent >= 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no refused attempt");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pool.close().await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the port is still free");
        tokio::spawn(forward(listener, env.sim.addr()));
    };
    let (_, ()) = tokio::join!(env.run_until_idle(RUN), open_the_port);

    the_start(&env, sim, 1);
    let o = outcome(&env, sim).await;
    assert_eq!(
        (o.status.as_str(), o.outcome.as_str()),
        ("delivered", "started")
    );
    let row = store.row("lbb", &key(sim)).await.unwrap().unwrap();
    let steps: Vec<String> = store
        .attempts(row.id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert!(
        steps.starts_with(&["retry".to_string(), "retry".to_string()]),
        "{steps:?}"
    );
    assert_eq!(steps.last().map(String::as_str), Some("delivered"));
}

/// Tests that kill the daemon mid-step shorten the lease so the restart reclaims at once.
fn short_lease(env: &Env) {
    let cfg = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .replace("lease = \"5s\"", "lease = \"3s\"");
    env.write_config_raw(&cfg);
}

#[tokio::test]
async fn restart_mid_polling_resumes_without_a_second_start() {
    let env = Env::sqlite().await;
    env.write_config(
        &sink(&env.sim.lbbtech_base_url(), "")
            .replace("poll_window = \"1s\"", "poll_window = \"10s\""),
    );
    short_lease(&env);
    let store = env.store().await;
    let sim = "868000000000001";
    env.sim.script_lbbtech(
        sim,
        LbbScript {
            result_after_polls: 6,
            ..LbbScript::default()
        },
    );
    enqueue(&env, &store, sim, "two_wheeler").await;

    let mut daemon = env.spawn_daemon_logged().0;
    // The start and two polls.
    assert!(env.sim.wait_for_requests(3, RUN).await, "no progress");
    daemon.start_kill().unwrap(); // SIGKILL
    daemon.wait().await.unwrap();
    let polls_before = calls(&env, sim, RESULT_PATH).len();
    assert!(
        (2..7).contains(&polls_before),
        "killed mid-polling ({polls_before} polls)"
    );
    let state = wait_for_state(&env, sim, |s| s["step"] == "poll").await;

    env.run_until_idle(RUN).await;
    let start = the_start(&env, sim, 1);
    assert_eq!(state["result_key"], started_field(&start, "resultKey"));
    let polls = calls(&env, sim, RESULT_PATH);
    assert_eq!(polls.len(), 7, "six pending polls, then the result");
    assert!(polls
        .iter()
        .all(|p| p.params["resultKey"] == state["result_key"]));
    let o = outcome(&env, sim).await;
    assert_eq!(
        (o.status.as_str(), o.outcome.as_str()),
        ("delivered", "started")
    );
    assert_eq!(o.result["orderNum"], started_field(&start, "orderNum"));
}

#[tokio::test]
async fn restart_during_the_verify_wait_resumes_at_the_verify_time() {
    let env = Env::sqlite().await;
    env.write_config(
        &sink(&env.sim.lbbtech_base_url(), "")
            .replace("verify_after = \"1s\"", "verify_after = \"3s\""),
    );
    short_lease(&env);
    let store = env.store().await;
    let sim = "869000000000001";
    env.sim.script_lbbtech(
        sim,
        LbbScript {
            never_result: true,
            order: LbbOrder::Status(3),
            ..LbbScript::default()
        },
    );
    enqueue(&env, &store, sim, "car").await;

    let mut daemon = env.spawn_daemon_logged().0;
    let state = wait_for_state(&env, sim, |s| s["step"] == "verify").await;
    // Waiting for the lookup: pending, no lease, and the producer sees "pending".
    let o = outcome(&env, sim).await;
    assert_eq!(
        (o.status.as_str(), o.outcome.as_str()),
        ("pending", "pending")
    );
    assert!(o.reason.unwrap().contains("looked up"));
    daemon.start_kill().unwrap(); // SIGKILL
    daemon.wait().await.unwrap();
    assert!(
        calls(&env, sim, ORDER_PATH).is_empty(),
        "killed during the wait"
    );

    env.run_until_idle(RUN).await;
    let start = the_start(&env, sim, 1);
    assert_eq!(state["order_num"], started_field(&start, "orderNum"));
    let orders = calls(&env, sim, ORDER_PATH);
    assert_eq!(orders.len(), 1);
    let verify_at = state["verify_at"].as_i64().unwrap();
    assert!(
        orders[0].received_at_ms >= verify_at,
        "looked up {}ms early",
        verify_at - orders[0].received_at_ms
    );
    let o = outcome(&env, sim).await;
    assert_eq!(
        (o.status.as_str(), o.outcome.as_str()),
        ("delivered", "started")
    );
    assert_eq!(o.result["orderStatus"], 3);
}

#[tokio::test]
async fn restart_mid_start_is_unknown_never_resent() {
    let env = lbb_env("").await;
    short_lease(&env);
    let store = env.store().await;
    let sim = "870000000000001";
    // The platform applies the start, then takes 800ms to answer: the daemon dies while
    // waiting, so nothing records that the start went out except the row's lease.
    env.sim.script_lbbtech(
        sim,
        LbbScript {
            start: Step::ok().delayed(Duration::from_millis(800)),
            ..LbbScript::default()
        },
    );
    enqueue(&env, &store, sim, "car").await;
    let mut daemon = env.spawn_daemon_logged().0;
    assert!(env.sim.wait_for_requests(1, RUN).await, "no start");
    daemon.start_kill().unwrap(); // SIGKILL
    daemon.wait().await.unwrap();

    // The restart finds the row in doubt (its lease expired) with no recorded start.
    env.run_until_idle(RUN).await;
    the_start(&env, sim, 1);
    assert_eq!(env.sim.request_count(Platform::Lbbtech, sim), 1);
    let o = outcome(&env, sim).await;
    assert_eq!((o.status.as_str(), o.outcome.as_str()), ("dead", "unknown"));
    assert!(o.reason.unwrap().starts_with(OUTCOME_UNKNOWN));
}

#[tokio::test]
async fn postgres_outcomes_view_reads_every_outcome() {
    let Some(env) = Env::postgres().await else {
        return;
    };
    env.write_config(&sink(&env.sim.lbbtech_base_url(), ""));
    let store = env.store().await;
    let (started, failed, unknown) = ("871000000000001", "871000000000003", "871000000000009");
    env.sim.script_lbbtech(
        failed,
        LbbScript {
            result: 3,
            ..LbbScript::default()
        },
    );
    env.sim.script_lbbtech(
        unknown,
        LbbScript {
            start: Step::drop_after(),
            ..LbbScript::default()
        },
    );
    for sim in [started, failed, unknown] {
        enqueue(&env, &store, sim, "two_wheeler").await;
    }
    env.run_until_idle(RUN).await;
    for sim in [started, failed, unknown] {
        the_start(&env, sim, 1);
    }
    let o = outcome(&env, started).await;
    assert_eq!(
        (o.status.as_str(), o.outcome.as_str()),
        ("delivered", "started")
    );
    let start = the_start(&env, failed, 1);
    assert_failed_with_refund(
        &outcome(&env, failed).await,
        Some("3"),
        "not plugged in",
        Some(&started_field(&start, "orderNum")),
    );
    let o = outcome(&env, unknown).await;
    assert_eq!((o.status.as_str(), o.outcome.as_str()), ("dead", "unknown"));
    assert_eq!(o.result["outcome"], "unknown");
}
