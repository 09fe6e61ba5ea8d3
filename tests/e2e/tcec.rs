//! charge_order / connector_status → a T/CEC 102 supervision platform, through the real
//! daemon and the simulator's independent T/CEC implementation (it checks the envelope, the
//! Sig and the token of every request).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use outbox_core::event::{EventType, NewEvent};
use outbox_core::store::Store;
use outbox_testkit::SecretRef;
use outboxd_e2e::{sqlite_files_contain, wait_until, Env, TCEC_SECRETS, TCEC_SECRET_ENVS};
use platform_sim::{Platform, RecordedRequest, SimScript};
use serde_json::{json, Value};

const RUN: Duration = Duration::from_secs(60);
/// Upper bound for a state we know is coming; never a stand-in for one.
const WAIT: Duration = Duration::from_secs(30);
const SINK: &str = "city";

/// A valid `notification_charge_order_info` Data object for order `seq`.
fn order(seq: &str) -> Value {
    json!({
        "StartChargeSeq": seq, "ConnectorID": "3702120244102_1",
        "StartTime": "2026-11-24 08:20:00", "EndTime": "2026-11-24 09:20:00",
        "TotalPower": 20.7, "TotalElecMoney": 9.75, "TotalSeviceMoney": 2.07,
        "TotalMoney": 11.82, "StopReason": 0, "SumPeriod": 1,
        "ChargeDetails": [{
            "DetailStartTime": "2026-11-24 08:20:00", "DetailEndTime": "2026-11-24 09:20:00",
            "ElecPrice": 0.4710, "SevicePrice": 0.1000, "DetailPower": 20.7,
            "DetailElecMoney": 9.75, "DetailSeviceMoney": 2.07
        }]
    })
}

/// A valid `notification_stationStatus` Data object.
fn status(connector: &str, status: i64) -> Value {
    json!({"ConnectorStatusInfo": {"ConnectorID": connector, "Status": status}})
}

fn configure(env: &Env) {
    env.write_config(&format!("\n{}", env.tcec_sink(SINK, &[])));
}

async fn enqueue_orders(env: &Env, store: &Store, keys: &[String]) {
    for key in keys {
        env.enqueue(store, SINK, EventType::ChargeOrder, key, &order(key))
            .await;
    }
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:03}")).collect()
}

fn script(env: &Env, tcec: Value) {
    let script: SimScript = serde_json::from_value(json!({ "tcec": tcec })).unwrap();
    env.sim.apply_script(script);
}

fn tcec_requests(env: &Env) -> Vec<RecordedRequest> {
    env.sim
        .requests()
        .into_iter()
        .filter(|r| r.platform == Platform::Tcec)
        .collect()
}

fn token_requests(env: &Env) -> Vec<RecordedRequest> {
    tcec_requests(env)
        .into_iter()
        .filter(|r| r.path.ends_with("/query_token"))
        .collect()
}

/// The tokens the simulator issued.
fn issued_tokens(env: &Env) -> Vec<String> {
    token_requests(env)
        .iter()
        .filter_map(|r| r.reply.as_ref()?["Data"]["AccessToken"].as_str())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Neither the four secrets nor any issued token in `log`, nor (SQLite) in the database files.
fn assert_no_secrets(env: &Env, log: &str, also: &[&str]) {
    let tokens = issued_tokens(env);
    assert!(!tokens.is_empty(), "no token was issued");
    let needles = TCEC_SECRETS
        .iter()
        .copied()
        .chain(tokens.iter().map(String::as_str))
        .chain(also.iter().copied());
    for needle in needles {
        assert!(!log.contains(needle), "a secret or token is in the log");
        if env.db_url.starts_with("sqlite:") {
            assert!(
                !sqlite_files_contain(env.path(), needle),
                "a secret or token is in the database file"
            );
        }
    }
}

async fn orders_are_delivered_once_with_valid_envelopes(env: Env) {
    configure(&env);
    let store = env.store().await;
    let orders = keys("ORDER", 30);
    enqueue_orders(&env, &store, &orders).await;
    for c in 0..3 {
        let connector = format!("C-{c}");
        env.enqueue(
            &store,
            SINK,
            EventType::ConnectorStatus,
            &format!("STATUS-{c}"),
            &status(&connector, 3),
        )
        .await;
    }
    let out = env.run_until_idle(RUN).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("33 delivered"), "{stdout}");
    for key in &orders {
        assert_eq!(env.sim.applied_count(Platform::Tcec, key), 1, "{key}");
        let row = store.row(SINK, key).await.unwrap().unwrap();
        assert_eq!(
            (row.status.as_str(), row.attempts),
            ("delivered", 1),
            "{key}"
        );
    }
    for c in 0..3 {
        assert_eq!(env.sim.applied_count(Platform::Tcec, &format!("C-{c}")), 1);
    }
    assert_eq!(env.sim.stats().tcec.duplicates, 0);
    // One token for the whole run, shared by every request; every push opened, signed and
    // accepted by the platform.
    assert_eq!(token_requests(&env).len(), 1);
    let pushes: Vec<_> = tcec_requests(&env)
        .into_iter()
        .filter(|r| !r.path.ends_with("/query_token"))
        .collect();
    assert_eq!(pushes.len(), 33);
    for push in &pushes {
        assert!(
            push.applied
                && push
                    .reply_code
                    .as_deref()
                    .is_some_and(|c| c.starts_with('0')),
            "{push:?}"
        );
    }
    store.close().await;
    assert_no_secrets(&env, &output_text(&out), &[]);
}

#[tokio::test]
async fn orders_are_delivered_once_with_valid_envelopes_sqlite() {
    orders_are_delivered_once_with_valid_envelopes(Env::sqlite().await).await;
}

#[tokio::test]
async fn orders_are_delivered_once_with_valid_envelopes_postgres() {
    let Some(env) = Env::postgres().await else {
        eprintln!("OUTBOX_TEST_PG_URL not set: skipping the Postgres variant");
        return;
    };
    orders_are_delivered_once_with_valid_envelopes(env).await;
}

#[tokio::test]
async fn a_token_expired_mid_run_is_refreshed_once_and_no_row_is_lost() {
    let env = Env::sqlite().await;
    configure(&env);
    let store = env.store().await;
    let orders = keys("EXP", 20);
    // The platform revokes the token when ORDER EXP-010 arrives (answered Ret 4002).
    script(
        &env,
        json!({"pushes": {"EXP-010": [{"expire_token": true}]}}),
    );
    enqueue_orders(&env, &store, &orders).await;
    env.run_until_idle(RUN).await;
    assert_eq!(token_requests(&env).len(), 2, "one refresh, shared");
    for key in &orders {
        assert_eq!(env.sim.applied_count(Platform::Tcec, key), 1, "{key}");
        let row = store.row(SINK, key).await.unwrap().unwrap();
        // The refresh and the second push are part of the same attempt.
        assert_eq!(
            (row.status.as_str(), row.attempts),
            ("delivered", 1),
            "{key}"
        );
    }
    assert_eq!(env.sim.request_count(Platform::Tcec, "EXP-010"), 2);
    assert_eq!(env.sim.stats().tcec.duplicates, 0);
}

#[tokio::test]
async fn a_reply_with_a_bad_sig_is_not_counted_as_delivered() {
    let env = Env::sqlite().await;
    configure(&env);
    let store = env.store().await;
    // The platform applies the order but signs its first two replies with a wrong key.
    script(
        &env,
        json!({"pushes": {"FORGED": [{"bad_sig": true}, {"bad_sig": true}]}}),
    );
    enqueue_orders(&env, &store, &["FORGED".to_string()]).await;
    let out = env.run_until_idle(RUN).await;
    let row = store.row(SINK, "FORGED").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("delivered", 3));
    let attempts = store.attempts(row.id).await.unwrap();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry", "retry", "delivered"]);
    for a in &attempts[..2] {
        assert_eq!(
            (a.http_status, a.reply_code.as_deref()),
            (Some(200), None),
            "{a:?}"
        );
    }
    let log = output_text(&out);
    let retried = log
        .lines()
        .filter(|l| l.contains("FORGED") && l.contains("reply signature does not match"))
        .count();
    assert_eq!(retried, 2, "{log}");
    // Applied once on the platform; the re-sends were answered as duplicates (idempotent).
    assert_eq!(env.sim.applied_count(Platform::Tcec, "FORGED"), 1);
    assert_eq!(env.sim.request_count(Platform::Tcec, "FORGED"), 3);
}

#[tokio::test]
async fn a_disputed_order_is_final_and_surfaced_to_operators() {
    let env = Env::sqlite().await;
    configure(&env);
    let store = env.store().await;
    script(
        &env,
        json!({"pushes": {"DISPUTED": [{"confirm_result": 1}]}}),
    );
    enqueue_orders(&env, &store, &["DISPUTED".to_string(), "FINE".to_string()]).await;
    let out = env.run_until_idle(RUN).await;
    assert_eq!(
        env.sim.request_count(Platform::Tcec, "DISPUTED"),
        1,
        "a dispute is final, never retried"
    );
    let row = store.row(SINK, "DISPUTED").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("delivered", 1));
    let hint = row
        .hint
        .clone()
        .expect("the dispute is kept as the row's hint");
    assert!(hint.contains("ConfirmResult 1"), "{hint}");
    assert_eq!(store.row(SINK, "FINE").await.unwrap().unwrap().hint, None);
    // In the log, `status` (the hint count) and `show`.
    assert!(output_text(&out).contains("ConfirmResult 1"));
    let status = env.outboxd().args(["status", "--json"]).output().unwrap();
    let stats: Value = serde_json::from_slice(&status.stdout).unwrap();
    let city = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == SINK)
        .unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(city["hints"], 1, "{stats}");
    let show = env
        .outboxd()
        .args(["show", "--sink", SINK, "--key", "DISPUTED"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.status.success() && shown.contains("hint") && shown.contains("ConfirmResult 1"),
        "{shown}"
    );
}

/// Sends `sig` (e.g. `-HUP`) to `pid`.
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

async fn all_delivered(store: &Store, keys: &[String]) -> bool {
    for key in keys {
        match store.row(SINK, key).await.unwrap() {
            Some(row) if row.status == "delivered" => {}
            _ => return false,
        }
    }
    true
}

async fn all_final(store: &Store, keys: &[String]) -> bool {
    for key in keys {
        match store.row(SINK, key).await.unwrap() {
            Some(row) if row.status == "delivered" || row.status == "superseded" => {}
            _ => return false,
        }
    }
    true
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the daemon's log file at `path` holds `needle`; panics with the log after
/// [`WAIT`].
async fn wait_for_log(path: &Path, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !read(path).contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needle:?} not logged within {WAIT:?}:\n{}",
            read(path)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_wrong_operator_secret_holds_the_sink_until_fixed_and_reloaded() {
    let env = Env::sqlite().await;
    let wrong = "wrong-operator-secret-4711";
    let secret_file = env.path().join("tcec_operator_secret");
    std::fs::write(&secret_file, format!("{wrong}\n")).unwrap();
    let [_, data, iv, sig] = TCEC_SECRET_ENVS.map(SecretRef::Env);
    let section = outbox_testkit::tcec_sink(
        SINK,
        &env.sim.tcec_url(),
        SecretRef::File(&secret_file),
        [data, iv, sig],
        &["timeout = \"1s\"", "connect_timeout = \"1s\""],
    );
    env.write_config(&format!("\n{section}"));
    let store = env.store().await;
    let orders = keys("HELD", 5);
    enqueue_orders(&env, &store, &orders).await;

    let (mut daemon, log) = env.spawn_daemon_logged();
    wait_for_log(&log, "holding this sink's rows").await;
    let held = read(&log);
    let line = held
        .lines()
        .find(|l| l.contains("holding this sink's rows"))
        .unwrap();
    assert!(
        line.contains(SINK) && line.contains("OperatorSecret is wrong") && line.contains("SIGHUP"),
        "{line}"
    );
    // Nothing dead-lettered, nothing pushed: the rows wait.
    assert!(store
        .dead_list(Some(SINK), None, None, 10)
        .await
        .unwrap()
        .is_empty());
    for key in &orders {
        let row = store.row(SINK, key).await.unwrap().unwrap();
        assert_eq!(row.status, "pending", "{key}");
        assert_eq!(env.sim.request_count(Platform::Tcec, key), 0, "{key}");
    }

    // The operator installs the right secret and reloads: every row is delivered.
    std::fs::write(&secret_file, format!("{}\n", TCEC_SECRETS[0])).unwrap();
    signal(daemon.id().unwrap(), "-HUP");
    wait_until("every held row delivered", WAIT, || {
        all_delivered(&store, &orders)
    })
    .await;
    signal(daemon.id().unwrap(), "-TERM");
    let exit = tokio::time::timeout(WAIT, daemon.wait())
        .await
        .expect("outboxd did not stop on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit}");
    for key in &orders {
        assert_eq!(env.sim.applied_count(Platform::Tcec, key), 1, "{key}");
    }
    assert!(store
        .dead_list(Some(SINK), None, None, 10)
        .await
        .unwrap()
        .is_empty());
    store.close().await;
    assert_no_secrets(&env, &read(&log), &[wrong]);
}

/// Issue 15: 50 `connector_status` rows for 3 connectors, written while the sink is paused
/// (an outage), end as 3 requests, the newest status of each connector; the other 47 rows
/// finish `superseded` without being sent.
async fn a_status_burst_during_an_outage_sends_one_request_per_connector(env: Env) {
    configure(&env);
    let store = env.store().await;
    let (mut daemon, log) = env.spawn_daemon_logged();
    let pause = env.outboxd().args(["pause", SINK]).output().unwrap();
    assert!(pause.status.success(), "{}", output_text(&pause));

    let connector = |i: usize| format!("C-{}", i % 3);
    let mut newest = std::collections::HashMap::new();
    for i in 0..50 {
        let key = format!("STATUS-{i:03}");
        let ev = NewEvent {
            sink: SINK.into(),
            event_type: EventType::ConnectorStatus,
            idempotency_key: key.clone(),
            payload: status(&connector(i), (i % 4) as i64).to_string(),
            ordering_key: None,
            not_before: None,
            supersede_key: Some(connector(i)),
        };
        assert!(store.enqueue(&ev).await.unwrap());
        newest.insert(connector(i), key);
    }
    let resume = env.outboxd().args(["resume", SINK]).output().unwrap();
    assert!(resume.status.success(), "{}", output_text(&resume));

    let all: Vec<String> = (0..50).map(|i| format!("STATUS-{i:03}")).collect();
    wait_until("every status row final", WAIT, || all_final(&store, &all)).await;
    signal(daemon.id().unwrap(), "-TERM");
    let exit = tokio::time::timeout(WAIT, daemon.wait())
        .await
        .expect("outboxd did not stop on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit}\n{}", read(&log));

    let pushes: Vec<_> = tcec_requests(&env)
        .into_iter()
        .filter(|r| !r.path.ends_with("/query_token"))
        .collect();
    assert_eq!(pushes.len(), 3, "{pushes:?}");
    let mut superseded = 0;
    for key in &all {
        let row = store.row(SINK, key).await.unwrap().unwrap();
        if newest.values().any(|k| k == key) {
            assert_eq!(
                (row.status.as_str(), row.attempts),
                ("delivered", 1),
                "{key}"
            );
        } else {
            assert_eq!(
                (row.status.as_str(), row.attempts),
                ("superseded", 0),
                "{key}"
            );
            superseded += 1;
        }
    }
    assert_eq!(superseded, 47);
    for c in 0..3 {
        assert_eq!(env.sim.applied_count(Platform::Tcec, &format!("C-{c}")), 1);
    }
    store.close().await;
}

/// `outboxd enqueue --supersede-key` writes the column: of two status rows with the same
/// key, only the newer one is sent.
#[tokio::test]
async fn the_enqueue_cli_takes_a_supersede_key() {
    let env = Env::sqlite().await;
    configure(&env);
    for (key, st) in [("CLI-OLD", 1), ("CLI-NEW", 2)] {
        let out = env
            .outboxd()
            .args([
                "enqueue",
                "--sink",
                SINK,
                "--type",
                "connector_status",
                "--key",
                key,
            ])
            .args(["--payload", &status("C-9", st).to_string()])
            .args(["--supersede-key", "C-9"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let out = env.run_until_idle(RUN).await;
    let store = env.store().await;
    let old = store.row(SINK, "CLI-OLD").await.unwrap().unwrap();
    let new = store.row(SINK, "CLI-NEW").await.unwrap().unwrap();
    assert_eq!(
        (old.status.as_str(), new.status.as_str()),
        ("superseded", "delivered"),
        "{}",
        output_text(&out)
    );
    assert_eq!(env.sim.applied_count(Platform::Tcec, "C-9"), 1);
    store.close().await;
}

#[tokio::test]
async fn a_status_burst_during_an_outage_sends_one_request_per_connector_sqlite() {
    a_status_burst_during_an_outage_sends_one_request_per_connector(Env::sqlite().await).await;
}

#[tokio::test]
async fn a_status_burst_during_an_outage_sends_one_request_per_connector_postgres() {
    let Some(env) = Env::postgres().await else {
        eprintln!("OUTBOX_TEST_PG_URL not set: skipping the Postgres variant");
        return;
    };
    a_status_burst_during_an_outage_sends_one_request_per_connector(env).await;
}
