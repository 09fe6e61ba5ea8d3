//! Sink health (issue 13): a failure that belongs to the platform or the link holds the sink,
//! not the backlog. The real daemon against the simulator's scripted trouble.

use std::path::Path;
use std::time::Duration;

use outbox_core::event::EventType;
use outbox_core::store::Store;
use outbox_testkit::{Config, SecretRef};
use outboxd_e2e::{charge_end, wait_until, Env, PYUN_SECRET};
use platform_sim::{Platform, Step, Streak};

const RUN: Duration = Duration::from_secs(60);

/// A config with one pyun sink of `concurrency`, quick retries (5 attempts within well under
/// a second), `health` lines for `[sinks.pyun.health]`, and the secret from `secret`.
fn config(env: &Env, concurrency: u32, health: &[&str], secret: SecretRef<'_>) -> String {
    let concurrency = format!("concurrency = {concurrency}");
    let mut sink = outbox_testkit::pyun_sink(
        "pyun",
        &env.sim.pyun_url(),
        secret,
        &["timeout = \"1s\"", "connect_timeout = \"1s\"", &concurrency],
    );
    sink.push_str(&format!("\n[sinks.pyun.health]\n{}\n", health.join("\n")));
    Config {
        log_level: Some("info".into()),
        admin_listen: "127.0.0.1:0".into(),
        worker: vec![
            "poll_interval = \"100ms\"".into(),
            "lease = \"5s\"".into(),
            "shutdown_grace = \"3s\"".into(),
        ],
        retry: vec![
            "base = \"50ms\"".into(),
            "cap = \"300ms\"".into(),
            "floor = \"20ms\"".into(),
            "max_attempts = 5".into(),
            "max_age = \"1h\"".into(),
        ],
        sinks: vec![sink],
    }
    .render(&env.db_url)
}

fn env_secret() -> SecretRef<'static> {
    SecretRef::Env("TEST_PYUN_SECRET")
}

async fn enqueue_orders(env: &Env, store: &Store, prefix: &str, n: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}-{i:03}");
        env.enqueue(store, "pyun", EventType::ChargeEnd, &key, &charge_end(&key))
            .await;
        keys.push(key);
    }
    keys
}

async fn dead_count(store: &Store) -> usize {
    store
        .dead_list(Some("pyun"), None, None, 1000)
        .await
        .unwrap()
        .len()
}

/// Waits until the daemon's log has a line containing `needle`; returns that line.
async fn wait_for_log(log: &Path, needle: &str) -> String {
    let mut found = String::new();
    wait_until(&format!("log line {needle:?}"), RUN, || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        found = text
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_default()
            .to_string();
        let hit = !found.is_empty();
        async move { hit }
    })
    .await;
    found
}

/// Waits until the simulator applied every key once.
async fn wait_all_applied(env: &Env, n: usize) {
    wait_until("every row delivered", RUN, || {
        let applied = env.sim.applied_keys(Platform::Pyun).len();
        async move { applied >= n }
    })
    .await;
}

/// Waits until the store has `n` delivered pyun rows (the verdicts are committed).
async fn wait_all_delivered(store: &Store, n: i64) {
    wait_until("every row recorded delivered", RUN, || async move {
        let stats = store.stats(outbox_core::clock::now_ms()).await.unwrap();
        stats.iter().any(|s| s.sink == "pyun" && s.delivered >= n)
    })
    .await;
}

fn rows_touched(env: &Env) -> usize {
    let mut keys: Vec<String> = env
        .sim
        .requests()
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    keys.sort();
    keys.dedup();
    keys.len()
}

#[tokio::test]
async fn a_wrong_secret_holds_the_sink_instead_of_dead_lettering_the_backlog() {
    let env = Env::sqlite().await;
    env.write_config_raw(&config(
        &env,
        4,
        &["probe_initial = \"300ms\"", "probe_max = \"1s\""],
        env_secret(),
    ));
    let store = env.store().await;
    env.sim.set_wrong_secret(None, &[Platform::Pyun]);
    let keys = enqueue_orders(&env, &store, "WS", 200).await;
    let (mut daemon, log) = env.spawn_daemon_logged();

    let held = wait_for_log(&log, "pyun held (auth)").await;
    assert!(held.contains("4pyun code 401"), "{held}");
    // Watch the held sink for 3 s: probes only, one row at a time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = env.sim.requests().len();
    let touched = rows_touched(&env);
    let dead = dead_count(&store).await;
    eprintln!(
        "wrong secret, 200 rows, 3 s held: {sent} requests, {touched} rows touched, {dead} dead"
    );
    let mut charged = 0;
    for key in &keys {
        charged += usize::from(store.row("pyun", key).await.unwrap().unwrap().attempts > 0);
    }
    eprintln!("  {charged} rows with an attempt counted");
    // The first claim (concurrency 4), one row at a time up to hold_after (5), then probes
    // at 0.3 s, 0.6 s, 1 s, 1 s, ... (at most ~5 in 3 s), each put back uncounted.
    assert!(sent <= 5 + 6, "{sent} requests");
    assert!(touched <= 5 + 6, "{touched} rows touched");
    assert!(charged < 5, "{charged} rows charged an attempt");
    assert_eq!(dead, 0);

    env.sim.clear_wrong_secret();
    wait_all_applied(&env, keys.len()).await;
    daemon.kill().await.unwrap();
    assert_eq!(dead_count(&store).await, 0);
    for key in &keys {
        assert_eq!(env.sim.applied_count(Platform::Pyun, key), 1, "{key}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    // One line per transition, not per row.
    assert_eq!(text.matches("pyun held (auth)").count(), 1, "{text}");
    assert!(text.contains("pyun active again"), "{text}");
    assert!(!text.contains(PYUN_SECRET));
    let total = env.sim.requests().len();
    eprintln!("wrong secret, 200 rows: {total} requests in all, 0 dead");
}

#[tokio::test]
async fn a_fixed_secret_and_sighup_resume_a_held_sink_at_once() {
    let env = Env::sqlite().await;
    let secret_file = env.path().join("pyun_secret");
    std::fs::write(&secret_file, "not-the-secret\n").unwrap();
    // Probes an hour apart: only the reload can resume the sink within the test.
    env.write_config_raw(&config(
        &env,
        4,
        &["probe_initial = \"1h\"", "probe_max = \"1h\""],
        SecretRef::File(&secret_file),
    ));
    let store = env.store().await;
    let keys = enqueue_orders(&env, &store, "HUP", 50).await;
    let (mut daemon, log) = env.spawn_daemon_logged();
    wait_for_log(&log, "pyun held (auth)").await;
    assert_eq!(dead_count(&store).await, 0);

    std::fs::write(&secret_file, format!("{PYUN_SECRET}\n")).unwrap();
    let pid = daemon.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_log(&log, "pyun active again: configuration reloaded").await;
    wait_all_applied(&env, keys.len()).await;
    daemon.kill().await.unwrap();
    assert_eq!(dead_count(&store).await, 0);
    for key in &keys {
        assert_eq!(env.sim.applied_count(Platform::Pyun, key), 1, "{key}");
    }
}

#[tokio::test]
async fn refused_connections_for_ten_times_the_retry_budget_lose_nothing() {
    let env = Env::sqlite().await;
    env.write_config_raw(&config(
        &env,
        4,
        &["probe_initial = \"200ms\"", "probe_max = \"1s\""],
        env_secret(),
    ));
    let store = env.store().await;
    let keys = enqueue_orders(&env, &store, "DOWN", 50).await;
    // The retry budget (5 attempts, waits of at most 300 ms) is spent in about a second:
    // refuse connections for ten times that.
    let outage = Duration::from_secs(10);
    env.sim.refuse_connections(Some(outage)).await;
    let (mut daemon, log) = env.spawn_daemon_logged();
    let held = wait_for_log(&log, "pyun held (link)").await;
    assert!(held.contains("not sent"), "{held}");
    assert!(env.sim.wait_accepting(outage + RUN).await);
    wait_all_applied(&env, keys.len()).await;
    wait_all_delivered(&store, keys.len() as i64).await;
    daemon.kill().await.unwrap();

    let dead = dead_count(&store).await;
    let mut not_sent = 0;
    for key in &keys {
        assert_eq!(env.sim.applied_count(Platform::Pyun, key), 1, "{key}");
        let row = store.row("pyun", key).await.unwrap().unwrap();
        assert_eq!(row.status, "delivered");
        // The failures that never left are not counted.
        assert_eq!(row.attempts, 1, "{key}");
        not_sent += store
            .attempts(row.id)
            .await
            .unwrap()
            .iter()
            .filter(|a| {
                a.error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("not sent"))
            })
            .count();
    }
    eprintln!(
        "refused connections for {outage:?}, 50 rows: {not_sent} connection attempts, {} requests reached the platform, {dead} dead",
        env.sim.requests().len()
    );
    assert_eq!(dead, 0);
}

#[tokio::test]
async fn a_retry_after_holds_the_whole_sink_beyond_the_retry_cap() {
    let env = Env::sqlite().await;
    env.write_config_raw(&config(&env, 1, &[], env_secret()));
    let store = env.store().await;
    env.sim.set_streak(Streak::new(1, 503).retry_after(2));
    let keys = enqueue_orders(&env, &store, "RA", 3).await;
    let out = env.run_until_idle(RUN).await;
    assert!(out.status.success());
    let reqs = env.sim.requests();
    assert_eq!(reqs.len(), 4, "one 503, then each row once");
    assert_eq!(reqs[0].http_status, Some(503));
    let gap = reqs[1].received_at_ms - reqs[0].received_at_ms;
    assert!(
        gap >= 2000,
        "next request {gap} ms after Retry-After: 2 (cap 300 ms)"
    );
    for key in &keys {
        let row = store.row("pyun", key).await.unwrap().unwrap();
        assert_eq!(row.status, "delivered");
        // The row the 503 came back for keeps its attempt count.
        assert_eq!(row.attempts, 1, "{key}");
    }
}

#[tokio::test]
async fn a_platform_clock_20_minutes_ahead_holds_the_sink_with_the_clock_reason() {
    let env = Env::sqlite().await;
    env.write_config_raw(&config(
        &env,
        4,
        &["probe_initial = \"200ms\"", "probe_max = \"500ms\""],
        env_secret(),
    ));
    let store = env.store().await;
    env.sim.set_clock_offset_ms(20 * 60_000);
    let keys = enqueue_orders(&env, &store, "CLK", 20).await;
    let (mut daemon, log) = env.spawn_daemon_logged();
    let held = wait_for_log(&log, "pyun held (clock)").await;
    assert!(
        held.contains("local clock is 20 min off the platform's (behind it)"),
        "{held}"
    );
    let skew = wait_for_log(&log, "check this host's time synchronisation").await;
    assert!(skew.contains("20 min off"), "{skew}");
    assert_eq!(dead_count(&store).await, 0);

    env.sim.set_clock_offset_ms(0);
    wait_all_applied(&env, keys.len()).await;
    daemon.kill().await.unwrap();
    assert_eq!(dead_count(&store).await, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the platform's clock agrees with ours again"),
        "{text}"
    );
}

#[tokio::test]
async fn a_400_among_successes_dead_letters_only_its_row() {
    let env = Env::sqlite().await;
    env.write_config_raw(&config(&env, 4, &[], env_secret()));
    let store = env.store().await;
    env.sim
        .script_pyun("ROW-007", vec![Step::code_hint("400", "`vin` is required")]);
    let keys = enqueue_orders(&env, &store, "ROW", 20).await;
    let out = env.run_until_idle(RUN).await;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let dead = store
        .dead_list(Some("pyun"), None, None, 100)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].idempotency_key, "ROW-007");
    assert!(
        dead[0].reason.contains("`vin` is required"),
        "{}",
        dead[0].reason
    );
    assert_eq!(env.sim.request_count(Platform::Pyun, "ROW-007"), 1);
    for key in keys.iter().filter(|k| *k != "ROW-007") {
        assert_eq!(env.sim.applied_count(Platform::Pyun, key), 1, "{key}");
    }
    assert!(!text.contains("held ("), "{text}");
}

/// `GET path` on the admin listener: status and body.
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.unwrap();
    let status = reply[9..12].parse().unwrap();
    let body = reply.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

async fn cli(env: &Env, args: &[&str]) -> String {
    let out = tokio::process::Command::from(env.outboxd())
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn status_metrics_and_healthz_show_a_held_sink() {
    let env = Env::sqlite().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("127.0.0.1:{port}");
    env.write_config_raw(
        &config(&env, 4, &["probe_initial = \"1h\""], env_secret())
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin}\"")),
    );
    let store = env.store().await;
    env.sim.set_wrong_secret(None, &[Platform::Pyun]);
    enqueue_orders(&env, &store, "ST", 20).await;
    let (mut daemon, log) = env.spawn_daemon_logged();
    wait_for_log(&log, "pyun held (auth)").await;
    // The worker publishes its health at the start of each round.
    wait_until("the hold published", RUN, || {
        let admin = admin.clone();
        async move {
            http_get(&admin, "/status.json")
                .await
                .1
                .contains("\"held\"")
        }
    })
    .await;

    let (code, body) = http_get(&admin, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ok\n"), "{body}");
    assert!(body.contains("pyun held (auth) for"), "{body}");
    assert!(body.contains("4pyun code 401"), "{body}");
    let (_, metrics) = http_get(&admin, "/metrics").await;
    for line in [
        "outboxd_sink_state{sink=\"pyun\",state=\"held\"} 1",
        "outboxd_sink_state{sink=\"pyun\",state=\"active\"} 0",
        "outboxd_sink_holds_total{sink=\"pyun\",kind=\"auth\"} 1",
        // Issue 14: the in-flight window (back at its start after the hold) and its ceiling.
        "outboxd_sink_window{sink=\"pyun\"} 4",
        "outboxd_sink_concurrency{sink=\"pyun\"} 4",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    let text = cli(&env, &["status"]).await;
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[1].starts_with("pyun  held"), "{text}");
    assert!(lines[0].contains("IN FLIGHT  WINDOW"), "{text}");
    assert!(lines[1].contains(" 4/4 "), "{text}");
    assert!(text.contains("pyun: held (auth) for"), "{text}");
    assert!(text.contains("next probe in"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&cli(&env, &["status", "--json"]).await).unwrap();
    assert_eq!(json[0]["health"]["state"], "held", "{json}");
    assert_eq!(json[0]["health"]["kind"], "auth", "{json}");
    assert_eq!(json[0]["health"]["window"], 4, "{json}");
    assert_eq!(json[0]["health"]["ceiling"], 4, "{json}");

    daemon.kill().await.unwrap();
    let text = cli(&env, &["status"]).await;
    assert!(text.contains("pyun  active"), "{text}");
    assert!(
        text.contains(&format!(
            "sink health: state unknown (daemon not reachable at {admin}"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn connect_failures_on_every_sink_at_once_hold_the_link() {
    let env = Env::sqlite().await;
    let mut text = config(
        &env,
        2,
        &["probe_initial = \"200ms\"", "probe_max = \"1s\""],
        env_secret(),
    );
    text.push('\n');
    text.push_str(&env.epeis_sink("epeis", &["concurrency = 2"]));
    text.push_str("\n[sinks.epeis.health]\nprobe_initial = \"200ms\"\nprobe_max = \"1s\"\n");
    env.write_config_raw(&text);
    let store = env.store().await;
    let pyun = enqueue_orders(&env, &store, "LINK", 10).await;
    for i in 0..10 {
        let aid = format!("SA-LINK-{i:03}");
        let dosage = serde_json::json!({
            "COM_METERAGE": {"SETTLEMENT_AID": aid, "NORMAL_RETRO_TYPE": "2"},
            "COM_METER_INFO_TMP": [{
                "DEVICE_DID": "DV00000000000001", "NORMAL_RETRO_TYPE": "2",
                "ENERGY_FLOW_TYPE": "1", "READINGS_TYPE": "1", "ADDED_CONS": 12.5
            }]
        });
        env.enqueue(&store, "epeis", EventType::Dosage, &aid, &dosage)
            .await;
    }
    env.sim
        .refuse_connections(Some(Duration::from_secs(4)))
        .await;
    let (mut daemon, log) = env.spawn_daemon_logged();
    let held = wait_for_log(&log, "link held (link)").await;
    assert!(held.contains("2 sinks could not connect at once"), "{held}");
    assert!(env.sim.wait_accepting(RUN).await);
    wait_for_log(&log, "link active again").await;
    wait_until("every row delivered", RUN, || {
        let (p, e) = (
            env.sim.applied_keys(Platform::Pyun).len(),
            env.sim.applied_keys(Platform::Epeis).len(),
        );
        async move { p >= 10 && e >= 10 }
    })
    .await;
    daemon.kill().await.unwrap();
    assert_eq!(dead_count(&store).await, 0);
    assert!(store
        .dead_list(Some("epeis"), None, None, 10)
        .await
        .unwrap()
        .is_empty());
    for key in &pyun {
        assert_eq!(env.sim.applied_count(Platform::Pyun, key), 1, "{key}");
    }
}
