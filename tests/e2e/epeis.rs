//! dosage → epeis RepairDosageBack, through the real daemon.
//!
//! epeis has no idempotency key, so most tests here are about one question: could the
//! request have been applied? Only a request that provably never left is sent again; anything
//! else is parked as "outcome unknown" for an operator (or retried when the sink opts in with
//! `retry_ambiguous = true`, and then applied twice, which the tests show too).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_core::event::EventType;
use outbox_core::store::{DeadRow, Store};
use outboxd_e2e::{charge_end, sqlite_files_contain, Env, EPEIS_DYNAMIC_KEY};
use platform_sim::config::DEMO_EPEIS_CHANNEL_DID;
use platform_sim::{Platform, Step};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const RUN: Duration = Duration::from_secs(60);
/// Upper bound for a log line we know is coming; never a stand-in for one.
const LOG_WAIT: Duration = Duration::from_secs(30);

/// The `[sinks.epeis]` section, pointed at `url`, with `extra` lines appended.
fn section(url: &str, extra: &str) -> String {
    format!(
        r#"
[sinks.epeis]
type = "epeis"
url = "{url}"
channel_did = "{DEMO_EPEIS_CHANNEL_DID}"
register_did = "RG00000000000001"
account_did = "AC00000000000001"
secret_env = "TEST_EPEIS_KEY"
timeout = "1s"
connect_timeout = "1s"
{extra}
"#
    )
}

fn configure(env: &Env, extra: &str) {
    env.write_config(&section(&env.sim.epeis_url(), extra));
}

/// A valid dosage payload for settlement account `aid` (also the tests' idempotency key and
/// the simulator's script key).
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

async fn enqueue(env: &Env, store: &Store, aid: &str) {
    env.enqueue(store, "epeis", EventType::Dosage, aid, &dosage(aid))
        .await;
}

/// The dead-letter row of `key`, which must exist.
async fn dead(store: &Store, key: &str) -> DeadRow {
    let all = store
        .dead_list(Some("epeis"), None, None, 100)
        .await
        .unwrap();
    all.into_iter()
        .find(|d| d.idempotency_key == key)
        .unwrap_or_else(|| panic!("{key} is not dead-lettered"))
}

async fn outcomes(store: &Store, outbox_id: i64) -> Vec<String> {
    store
        .attempts(outbox_id)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome)
        .collect()
}

fn epeis_requests(env: &Env, key: &str) -> Vec<platform_sim::RecordedRequest> {
    env.sim
        .requests()
        .into_iter()
        .filter(|r| r.platform == Platform::Epeis && r.key.as_deref() == Some(key))
        .collect()
}

/// `outboxd run` in the background, its log (JSON lines) read as it comes.
struct Daemon {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Daemon {
    fn start(env: &Env) -> Daemon {
        let mut child = env.spawn_daemon();
        let (tx, lines) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![
            read_lines(stdout, tx.clone(), log.clone()),
            read_lines(stderr, tx, log.clone()),
        ];
        Daemon {
            child,
            lines,
            log,
            readers,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line `matches` accepts (bounded by [`LOG_WAIT`]) and returns it.
    async fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + LOG_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if matches(&v) {
                            return v;
                        }
                    }
                }
                Ok(None) => panic!("outboxd exited before logging {what}:\n{}", self.log()),
                Err(_) => panic!(
                    "outboxd did not log {what} within {LOG_WAIT:?}:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// Waits for the worker's "delivered" line for `key`.
    async fn wait_delivered(&mut self, key: &str) {
        self.wait_for(&format!("the delivery of {key}"), |v| {
            v["message"] == "delivered" && v["key"] == key
        })
        .await;
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Stops the daemon the way systemd does (SIGTERM) and returns everything it logged.
    /// It exits only once its verdicts are committed: the worker logs "delivered" before
    /// the row is written, so this, not the log line, is what a test waits for.
    async fn stop(mut self) -> String {
        self.signal("-TERM");
        let status = tokio::time::timeout(LOG_WAIT, self.child.wait())
            .await
            .expect("outboxd did not stop on SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}:\n{}", self.log());
        self.drain().await
    }

    /// Kills the daemon (SIGKILL) and returns everything it logged.
    async fn kill(mut self) -> String {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        self.drain().await
    }

    async fn drain(&mut self) -> String {
        for r in self.readers.drain(..) {
            r.await.unwrap();
        }
        self.log()
    }
}

fn read_lines(
    from: impl AsyncRead + Unpin + Send + 'static,
    tx: mpsc::UnboundedSender<String>,
    log: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
            let _ = tx.send(line);
        }
    })
}

/// `secs` since the epoch as RFC 3339 UTC (Howard Hinnant's civil-from-days).
fn rfc3339_utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::test]
async fn delivers_each_adjustment_once_with_the_configured_credentials() {
    let env = Env::sqlite().await;
    configure(&env, "");
    let store = env.store().await;
    enqueue(&env, &store, "SA-PLAIN").await;
    // Enumerations as integers, ADDED_CONS as a decimal string, both ids overridden.
    let mut p = dosage("SA-OVERRIDE");
    p["COM_METERAGE"]["NORMAL_RETRO_TYPE"] = json!(1);
    p["COM_METER_INFO_TMP"][0]["READINGS_TYPE"] = json!(3);
    p["COM_METER_INFO_TMP"][0]["ENERGY_FLOW_TYPE"] = json!(2);
    p["COM_METER_INFO_TMP"][0]["ADDED_CONS"] = json!("12345678901234.50");
    p["SYS_HEAD"] = json!({"REGISTER_DID": "RG00000000000009"});
    p["ACCOUNT_DID"] = json!("AC00000000000009");
    env.enqueue(&store, "epeis", EventType::Dosage, "SA-OVERRIDE", &p)
        .await;

    let out = env.run_until_idle(RUN).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 delivered"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for key in ["SA-PLAIN", "SA-OVERRIDE"] {
        assert_eq!(env.sim.applied_count(Platform::Epeis, key), 1, "{key}");
        let row = store.row("epeis", key).await.unwrap().unwrap();
        assert_eq!(
            (row.status.as_str(), row.attempts),
            ("delivered", 1),
            "{key}"
        );
        let attempts = store.attempts(row.id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].http_status, Some(200));
        assert_eq!(attempts[0].reply_code.as_deref(), Some("0"));
    }

    let plain = &epeis_requests(&env, "SA-PLAIN")[0].params;
    assert_eq!(plain["SYS_HEAD"]["CHANNEL_DID"], DEMO_EPEIS_CHANNEL_DID);
    assert_eq!(plain["SYS_HEAD"]["DYNAMIC_KEY"], EPEIS_DYNAMIC_KEY);
    assert_eq!(plain["SYS_HEAD"]["REGISTER_DID"], "RG00000000000001");
    assert_eq!(plain["SYS_HEAD"]["ACCOUNT_DID"], "AC00000000000001");
    assert_eq!(plain["COM_METER_INFO_TMP"][0]["ADDED_CONS"], json!(12.5));

    let sent = &epeis_requests(&env, "SA-OVERRIDE")[0].params;
    assert_eq!(sent["SYS_HEAD"]["REGISTER_DID"], "RG00000000000009");
    assert_eq!(sent["SYS_HEAD"]["ACCOUNT_DID"], "AC00000000000009");
    assert_eq!(sent["COM_METERAGE"]["NORMAL_RETRO_TYPE"], "1");
    let meter = &sent["COM_METER_INFO_TMP"][0];
    assert_eq!(
        (&meter["READINGS_TYPE"], &meter["ENERGY_FLOW_TYPE"]),
        (&json!("3"), &json!("2"))
    );
    assert!(meter["ADDED_CONS"].is_number(), "{meter}");
    assert_eq!(meter["ADDED_CONS"].as_f64(), Some(12345678901234.5));
    assert!(
        sent.get("ACCOUNT_DID").is_none(),
        "overrides go into SYS_HEAD"
    );
}

#[tokio::test]
async fn a_non_zero_code_is_dead_lettered_with_its_message_after_one_attempt() {
    let env = Env::sqlite().await;
    configure(&env, "");
    let store = env.store().await;
    env.sim.script_epeis(
        "SA-REFUSED",
        vec![Step::code_message("2001", "参数错误: 结算户不存在")],
    );
    // Not in retryable_codes (none configured): permanent as well.
    env.sim
        .script_epeis("SA-BUSY", vec![Step::code_message("9", "busy")]);
    enqueue(&env, &store, "SA-REFUSED").await;
    enqueue(&env, &store, "SA-BUSY").await;
    enqueue(&env, &store, "SA-FINE").await;
    env.run_until_idle(RUN).await;

    assert_eq!(
        env.sim.applied_count(Platform::Epeis, "SA-FINE"),
        1,
        "one refused row does not block the rest"
    );
    for (key, code, reason) in [
        (
            "SA-REFUSED",
            "2001",
            "epeis CODE 2001: 参数错误: 结算户不存在",
        ),
        ("SA-BUSY", "9", "epeis CODE 9: busy"),
    ] {
        assert_eq!(env.sim.request_count(Platform::Epeis, key), 1, "{key}");
        let d = dead(&store, key).await;
        assert_eq!(d.attempts, 1, "{key}");
        assert_eq!(d.reason, reason);
        assert!(d.last_reply.as_deref().unwrap_or("").contains("\"CODE\""));
        let attempts = store.attempts(d.outbox_id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome, "permanent");
        assert_eq!(attempts[0].reply_code.as_deref(), Some(code));
    }
}

#[tokio::test]
async fn a_configured_retryable_code_is_retried_then_delivered() {
    let env = Env::sqlite().await;
    configure(&env, "retryable_codes = [9, 503]");
    let store = env.store().await;
    env.sim.script_epeis(
        "SA-RETRY",
        vec![
            Step::code_message("9", "busy"),
            Step::code("503"),
            Step::ok(),
        ],
    );
    enqueue(&env, &store, "SA-RETRY").await;
    env.run_until_idle(RUN).await;

    let row = store.row("epeis", "SA-RETRY").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("delivered", 3));
    assert_eq!(env.sim.request_count(Platform::Epeis, "SA-RETRY"), 3);
    assert_eq!(env.sim.applied_count(Platform::Epeis, "SA-RETRY"), 1);
    let attempts = store.attempts(row.id).await.unwrap();
    let seen: Vec<(&str, Option<&str>)> = attempts
        .iter()
        .map(|a| (a.outcome.as_str(), a.reply_code.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            ("retry", Some("9")),
            ("retry", Some("503")),
            ("delivered", Some("0"))
        ]
    );
}

#[tokio::test]
async fn http_5xx_is_retried_then_delivered_honouring_retry_after() {
    let env = Env::sqlite().await;
    // The default cap (200ms) would also cap Retry-After.
    configure(
        &env,
        "[sinks.epeis.retry]\nbase = \"50ms\"\ncap = \"5s\"\nfloor = \"20ms\"\nmax_attempts = 5\nmax_age = \"1h\"",
    );
    let store = env.store().await;
    env.sim
        .script_epeis("SA-5XX", vec![Step::http(503), Step::http(502), Step::ok()]);
    env.sim
        .script_epeis("SA-SLOWDOWN", vec![Step::http_retry_after(503, 1)]);
    // One after the other: a Retry-After holds the whole sink, and a row failing while the
    // sink is held keeps its attempt count (issue 13).
    enqueue(&env, &store, "SA-5XX").await;
    env.run_until_idle(RUN).await;
    enqueue(&env, &store, "SA-SLOWDOWN").await;
    env.run_until_idle(RUN).await;

    let row = store.row("epeis", "SA-5XX").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("delivered", 3));
    assert_eq!(env.sim.applied_count(Platform::Epeis, "SA-5XX"), 1);
    let statuses: Vec<Option<i64>> = store
        .attempts(row.id)
        .await
        .unwrap()
        .iter()
        .map(|a| a.http_status)
        .collect();
    assert_eq!(statuses, [Some(503), Some(502), Some(200)]);

    let reqs = epeis_requests(&env, "SA-SLOWDOWN");
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].received_at_ms - reqs[0].received_at_ms;
    assert!(gap >= 1000, "retried after {gap}ms despite Retry-After: 1");
    assert_eq!(env.sim.applied_count(Platform::Epeis, "SA-SLOWDOWN"), 1);
}

#[tokio::test]
async fn a_refused_connection_is_not_sent_and_retried_until_epeis_answers() {
    let env = Env::sqlite().await;
    // A port nobody listens on yet: connecting fails, so the request provably never left.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/Service/v1/RepairDosageBack/");
    env.write_config(&section(
        &url,
        "[sinks.epeis.retry]\nbase = \"50ms\"\ncap = \"100ms\"\nfloor = \"20ms\"\nmax_attempts = 1000\nmax_age = \"1h\"",
    ));
    let store = env.store().await;
    enqueue(&env, &store, "SA-REFUSED").await;
    let mut daemon = Daemon::start(&env);
    let retry = daemon
        .wait_for("a not-sent retry", |v| {
            v["message"] == "delivery failed; will retry"
                && v["key"] == "SA-REFUSED"
                && v["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("not sent"))
        })
        .await;
    assert!(env.sim.requests().is_empty(), "{retry}");

    // epeis comes up on that port (a forwarder to the simulator).
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("re-binding the reserved port");
    let sim = env.sim.addr();
    let forwarder = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(sim).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    daemon.wait_delivered("SA-REFUSED").await;
    daemon.stop().await;
    forwarder.abort();

    assert_eq!(env.sim.request_count(Platform::Epeis, "SA-REFUSED"), 1);
    assert_eq!(env.sim.applied_count(Platform::Epeis, "SA-REFUSED"), 1);
    let row = store.row("epeis", "SA-REFUSED").await.unwrap().unwrap();
    assert_eq!(row.status, "delivered");
    let attempts = store.attempts(row.id).await.unwrap();
    let (last, before) = attempts.split_last().unwrap();
    assert_eq!(last.outcome, "delivered");
    assert!(!before.is_empty());
    for a in before {
        assert_eq!(a.outcome, "retry");
        assert!(a.error.as_deref().unwrap().starts_with("not sent"), "{a:?}");
    }
}

#[tokio::test]
async fn a_timeout_after_sending_is_parked_as_outcome_unknown_and_not_resent() {
    let env = Env::sqlite().await;
    configure(&env, "");
    let store = env.store().await;
    // Applied at once, answered after the 1s client timeout.
    env.sim.script_epeis(
        "SA-TIMEOUT",
        vec![Step::ok().delayed(Duration::from_secs(3))],
    );
    enqueue(&env, &store, "SA-TIMEOUT").await;
    env.run_until_idle(RUN).await;

    assert_eq!(env.sim.applied_count(Platform::Epeis, "SA-TIMEOUT"), 1);
    assert_eq!(
        env.sim.request_count(Platform::Epeis, "SA-TIMEOUT"),
        1,
        "not sent again"
    );
    let d = dead(&store, "SA-TIMEOUT").await;
    assert_eq!(d.attempts, 1);
    assert!(d.reason.starts_with("outcome unknown:"), "{}", d.reason);
    for needle in [
        "timeout",
        "check SETTLEMENT_AID SA-TIMEOUT",
        "requeueing sends it again",
    ] {
        assert!(d.reason.contains(needle), "{needle:?} not in {}", d.reason);
    }
    let attempts = store.attempts(d.outbox_id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, "ambiguous");
    assert_eq!(attempts[0].http_status, None);
    assert!(attempts[0].error.as_deref().unwrap().contains("timeout"));
}

#[tokio::test]
async fn with_retry_ambiguous_a_timeout_is_retried_and_applied_twice() {
    let env = Env::sqlite().await;
    configure(&env, "retry_ambiguous = true");
    let store = env.store().await;
    env.sim
        .script_epeis("SA-TWICE", vec![Step::ok().delayed(Duration::from_secs(3))]);
    enqueue(&env, &store, "SA-TWICE").await;
    env.run_until_idle(RUN).await;

    let row = store.row("epeis", "SA-TWICE").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("delivered", 2));
    assert_eq!(outcomes(&store, row.id).await, ["ambiguous", "delivered"]);
    // The documented trade-off of retry_ambiguous: epeis booked the adjustment twice.
    assert_eq!(env.sim.request_count(Platform::Epeis, "SA-TWICE"), 2);
    assert_eq!(env.sim.applied_count(Platform::Epeis, "SA-TWICE"), 2);
    assert!(epeis_requests(&env, "SA-TWICE")[1].duplicate);
}

#[tokio::test]
async fn a_closed_connection_or_a_reply_without_code_is_outcome_unknown() {
    let env = Env::sqlite().await;
    configure(&env, "");
    let store = env.store().await;
    // Applied, then the connection closes without a reply.
    env.sim
        .script_epeis("SA-DROP-AFTER", vec![Step::drop_after()]);
    // Not applied, then closed: on the wire it looks exactly like the case above (the body
    // was written, no reply came), so it must be treated the same way.
    env.sim
        .script_epeis("SA-DROP-BEFORE", vec![Step::drop_before()]);
    // HTTP 200 with a body that is not epeis's JSON: it reached something that answered.
    env.sim.script_epeis("SA-GARBAGE", vec![Step::garbage()]);
    for key in ["SA-DROP-AFTER", "SA-DROP-BEFORE", "SA-GARBAGE"] {
        enqueue(&env, &store, key).await;
    }
    env.run_until_idle(RUN).await;

    for (key, applied) in [
        ("SA-DROP-AFTER", 1),
        ("SA-DROP-BEFORE", 0),
        ("SA-GARBAGE", 0),
    ] {
        assert_eq!(env.sim.request_count(Platform::Epeis, key), 1, "{key}");
        assert_eq!(
            env.sim.applied_count(Platform::Epeis, key),
            applied,
            "{key}"
        );
        let d = dead(&store, key).await;
        assert_eq!(d.attempts, 1, "{key}");
        assert!(
            d.reason.starts_with("outcome unknown:")
                && d.reason.contains(&format!("check SETTLEMENT_AID {key}")),
            "{key}: {}",
            d.reason
        );
    }
    assert!(dead(&store, "SA-GARBAGE")
        .await
        .reason
        .contains("without a CODE"));

    // A plain requeue of an unknown outcome is refused: it could book the adjustment twice.
    let d = dead(&store, "SA-DROP-BEFORE").await;
    let refused = env
        .outboxd()
        .args(["dead", "requeue", &d.id.to_string()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("--force"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
    // The operator checked epeis: SA-DROP-BEFORE was not booked, so it is requeued with
    // --force, and delivered once.
    let requeue = env
        .outboxd()
        .args(["dead", "requeue", "--force", &d.id.to_string()])
        .output()
        .unwrap();
    assert!(
        requeue.status.success(),
        "{}",
        String::from_utf8_lossy(&requeue.stderr)
    );
    env.run_until_idle(RUN).await;
    let row = store.row("epeis", "SA-DROP-BEFORE").await.unwrap().unwrap();
    assert_eq!(row.status, "delivered");
    assert_eq!(env.sim.applied_count(Platform::Epeis, "SA-DROP-BEFORE"), 1);
    assert_eq!(outcomes(&store, row.id).await, ["ambiguous", "delivered"]);
}

#[tokio::test]
async fn an_interrupted_delivery_is_parked_not_sent_again() {
    let env = Env::sqlite().await;
    // A 3s timeout leaves a wide window to kill the daemon mid-request (lease 5s).
    env.write_config(
        &section(&env.sim.epeis_url(), "")
            .replace("timeout = \"1s\"\nconnect", "timeout = \"3s\"\nconnect"),
    );
    let store = env.store().await;
    env.sim.script_epeis(
        "SA-KILLED",
        vec![Step::ok().delayed(Duration::from_secs(20))],
    );
    enqueue(&env, &store, "SA-KILLED").await;
    let daemon = Daemon::start(&env);
    assert!(
        env.sim.wait_for_requests(1, LOG_WAIT).await,
        "the daemon sent nothing"
    );
    daemon.kill().await; // SIGKILL while the request is in flight

    // The next worker finds the lease expired: the row is in doubt.
    env.run_until_idle(RUN).await;
    assert_eq!(
        env.sim.request_count(Platform::Epeis, "SA-KILLED"),
        1,
        "not sent again"
    );
    assert_eq!(env.sim.applied_count(Platform::Epeis, "SA-KILLED"), 1);
    let d = dead(&store, "SA-KILLED").await;
    assert!(
        d.reason
            .starts_with("outcome unknown: a previous attempt was interrupted")
            && d.reason.contains("check SETTLEMENT_AID SA-KILLED"),
        "{}",
        d.reason
    );
}

#[tokio::test]
async fn invalid_payloads_are_dead_lettered_without_a_request() {
    let env = Env::sqlite().await;
    configure(&env, "");
    let store = env.store().await;
    let patch = |aid: &str, f: &dyn Fn(&mut Value)| {
        let mut p = dosage(aid);
        f(&mut p);
        p
    };
    let meter = |p: &mut Value, field: &str, v: Value| p["COM_METER_INFO_TMP"][0][field] = v;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "INV-AID-MISSING",
            patch("x", &|p| {
                p["COM_METERAGE"]
                    .as_object_mut()
                    .unwrap()
                    .remove("SETTLEMENT_AID");
            }),
            "`COM_METERAGE.SETTLEMENT_AID` is required",
        ),
        (
            "INV-AID-LONG",
            dosage("SA0000000000000017"),
            "`COM_METERAGE.SETTLEMENT_AID` must be at most 16 characters",
        ),
        (
            "INV-RETRO",
            patch("SA-1", &|p| {
                p["COM_METERAGE"]["NORMAL_RETRO_TYPE"] = json!("3")
            }),
            "`COM_METERAGE.NORMAL_RETRO_TYPE` must be 1 or 2",
        ),
        (
            "INV-NO-METERS",
            patch("SA-2", &|p| p["COM_METER_INFO_TMP"] = json!([])),
            "`COM_METER_INFO_TMP` must not be empty",
        ),
        (
            "INV-READINGS",
            patch("SA-3", &|p| {
                let mut second = p["COM_METER_INFO_TMP"][0].clone();
                second["READINGS_TYPE"] = json!(9);
                p["COM_METER_INFO_TMP"].as_array_mut().unwrap().push(second);
            }),
            "`COM_METER_INFO_TMP[1].READINGS_TYPE` must be 1 to 8",
        ),
        (
            "INV-FLOW",
            patch("SA-4", &|p| meter(p, "ENERGY_FLOW_TYPE", json!("3"))),
            "`COM_METER_INFO_TMP[0].ENERGY_FLOW_TYPE` must be 1 or 2",
        ),
        (
            "INV-METER-RETRO",
            patch("SA-5", &|p| meter(p, "NORMAL_RETRO_TYPE", json!("x"))),
            "`COM_METER_INFO_TMP[0].NORMAL_RETRO_TYPE` must be 1 or 2",
        ),
        (
            "INV-DEVICE",
            patch("SA-6", &|p| {
                meter(p, "DEVICE_DID", json!("DV00000000000000017"))
            }),
            "`COM_METER_INFO_TMP[0].DEVICE_DID` must be at most 16 characters",
        ),
        (
            "INV-DECIMALS",
            patch("SA-7", &|p| meter(p, "ADDED_CONS", json!(1.234))),
            "`COM_METER_INFO_TMP[0].ADDED_CONS` has 3 decimals",
        ),
        (
            "INV-DIGITS",
            patch("SA-8", &|p| {
                meter(p, "ADDED_CONS", json!(123456789012345_i64))
            }),
            "`COM_METER_INFO_TMP[0].ADDED_CONS` has 15 digits before the decimal point",
        ),
        (
            "INV-NOT-A-NUMBER",
            patch("SA-9", &|p| meter(p, "ADDED_CONS", json!("12,5"))),
            "`COM_METER_INFO_TMP[0].ADDED_CONS` must be a decimal number",
        ),
        (
            "INV-REGISTER",
            patch("SA-10", &|p| p["REGISTER_DID"] = json!("RG1")),
            "`REGISTER_DID` must be exactly 16 characters",
        ),
        (
            "INV-UNKNOWN",
            patch("SA-11", &|p| p["REMARK"] = json!("late reading")),
            "unknown field `REMARK`",
        ),
        ("INV-NOT-OBJECT", json!([1, 2]), "must be a JSON object"),
    ];
    for (key, payload, _) in &cases {
        env.enqueue(&store, "epeis", EventType::Dosage, key, payload)
            .await;
    }
    env.run_until_idle(RUN).await;

    assert!(
        env.sim.requests().is_empty(),
        "no HTTP call for invalid rows"
    );
    for (key, _, needle) in &cases {
        let d = dead(&store, key).await;
        assert_eq!(d.attempts, 1, "{key}");
        assert!(
            d.reason.starts_with("invalid dosage payload") && d.reason.contains(needle),
            "{key}: {needle:?} not in {}",
            d.reason
        );
    }
}

#[tokio::test]
async fn a_payload_carrying_credentials_is_refused() {
    let env = Env::sqlite().await;
    configure(&env, "");
    let store = env.store().await;
    let cases = [
        (
            "CRED-TOP",
            json!({"DYNAMIC_KEY": "producer-copy"}),
            "`DYNAMIC_KEY`",
        ),
        (
            "CRED-HEAD",
            json!({"SYS_HEAD": {"DYNAMIC_KEY": "producer-copy", "REGISTER_DID": "RG00000000000001"}}),
            "`SYS_HEAD.DYNAMIC_KEY`",
        ),
        (
            "CRED-CHANNEL",
            json!({"SYS_HEAD": {"CHANNEL_DID": DEMO_EPEIS_CHANNEL_DID}}),
            "`SYS_HEAD.CHANNEL_DID`",
        ),
    ];
    for (key, extra, _) in &cases {
        let mut p = dosage(key);
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        env.enqueue(&store, "epeis", EventType::Dosage, key, &p)
            .await;
    }
    env.run_until_idle(RUN).await;
    assert!(env.sim.requests().is_empty());
    for (key, _, field) in &cases {
        let d = dead(&store, key).await;
        assert!(
            d.reason.contains(field) && d.reason.contains("secrets don't belong in the outbox"),
            "{key}: {}",
            d.reason
        );
    }
}

#[tokio::test]
async fn wrong_credentials_hold_the_sink_with_the_platforms_message() {
    let env = Env::sqlite().await;
    let wrong = "WK".repeat(32);
    let key_file = env.path().join("dynamic_key");
    std::fs::write(&key_file, format!("{wrong}\n")).unwrap();
    env.write_config(&section(&env.sim.epeis_url(), "").replace(
        "secret_env = \"TEST_EPEIS_KEY\"",
        &format!("secret_file = {:?}", key_file.display().to_string()),
    ));
    let store = env.store().await;
    enqueue(&env, &store, "SA-WRONG-KEY").await;
    // Until idle: the run ends once the sink is held (issue 13: a credential rejection holds
    // the sink instead of dead-lettering its rows).
    let out = env.run_until_idle(RUN).await;
    assert!(store
        .dead_list(Some("epeis"), None, None, 10)
        .await
        .unwrap()
        .is_empty());
    let row = store.row("epeis", "SA-WRONG-KEY").await.unwrap().unwrap();
    assert_eq!(row.status, "pending");
    assert_eq!(env.sim.applied_count(Platform::Epeis, "SA-WRONG-KEY"), 0);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains("epeis held (auth): epeis CODE 1001: 渠道认证失败"),
        "{log}"
    );
    assert!(!log.contains(&wrong));
    store.close().await;
    assert!(!sqlite_files_contain(env.path(), &wrong));
}

#[tokio::test]
async fn an_expired_dynamic_key_holds_the_rows_until_a_new_one_is_loaded() {
    let env = Env::sqlite().await;
    configure(
        &env,
        "dynamic_key_valid_until = \"2024-01-01T08:00:00+08:00\"",
    );
    let store = env.store().await;
    enqueue(&env, &store, "SA-HELD").await;
    let mut daemon = Daemon::start(&env);
    let held = daemon
        .wait_for("the hold", |v| {
            v["sink"] == "epeis" && v["message"].as_str().is_some_and(|m| m.contains("holding"))
        })
        .await;
    let reason = held["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("DYNAMIC_KEY expired at 2024-01-01T00:00:00Z: install a new key"),
        "{reason}"
    );

    // The loop keeps going round: a pyun row enqueued now is delivered, the epeis row is
    // still untouched.
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "PYUN-WHILE-HELD",
        &charge_end("PYUN-WHILE-HELD"),
    )
    .await;
    daemon.wait_delivered("PYUN-WHILE-HELD").await;
    assert_eq!(env.sim.request_count(Platform::Epeis, "SA-HELD"), 0);
    let row = store.row("epeis", "SA-HELD").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 0));

    // A new key's validity, then SIGHUP: delivered on its first attempt.
    configure(&env, "dynamic_key_valid_until = \"2999-01-01T00:00:00Z\"");
    daemon.signal("-HUP");
    daemon.wait_delivered("SA-HELD").await;
    let log = daemon.stop().await;
    let row = store.row("epeis", "SA-HELD").await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("delivered", 1));
    assert_eq!(env.sim.applied_count(Platform::Epeis, "SA-HELD"), 1);
    assert!(!log.contains(EPEIS_DYNAMIC_KEY));
}

#[tokio::test]
async fn the_daemon_warns_before_the_dynamic_key_expires() {
    assert_eq!(rfc3339_utc(1_801_353_600), "2027-01-31T00:00:00Z");
    assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
    let env = Env::sqlite().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let until = rfc3339_utc(now + 3 * 86_400);
    configure(&env, &format!("dynamic_key_valid_until = \"{until}\""));
    let store = env.store().await;
    enqueue(&env, &store, "SA-SOON").await;
    let out = env.run_until_idle(RUN).await;
    let log = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("DYNAMIC_KEY expires soon"))
        .collect();
    assert_eq!(warnings.len(), 1, "warned once a day, not per loop:\n{log}");
    assert!(warnings[0].contains(&until), "{}", warnings[0]);
    let row = store.row("epeis", "SA-SOON").await.unwrap().unwrap();
    assert_eq!(row.status, "delivered", "still valid: still delivering");
}

#[tokio::test]
async fn check_config_names_every_epeis_problem_without_the_key() {
    let env = Env::sqlite().await;
    let short_key = "SK".repeat(20);
    let key_file = env.path().join("short_key");
    std::fs::write(&key_file, &short_key).unwrap();
    env.write_config(&format!(
        r#"
[sinks.epeis]
type = "epeis"
url = "{}"
channel_did = "CH1"
account_did = "AC00000000000001"
secret_file = {:?}
dynamic_key_valid_until = "31/01/2027"
"#,
        env.sim.epeis_url(),
        key_file.display().to_string()
    ));
    let out = env.outboxd().arg("check-config").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "sinks.epeis: channel_did must be exactly 16 characters, got 3",
        "sinks.epeis: register_did is required",
        "sinks.epeis: the DYNAMIC_KEY (secret_file/secret_env) must be 64 characters, got 40",
        "sinks.epeis: dynamic_key_valid_until \"31/01/2027\"",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in {err}");
    }
    assert!(!err.contains(&short_key));

    configure(
        &env,
        "dynamic_key_valid_until = \"2027-01-31T00:00:00+08:00\"",
    );
    let ok = env.outboxd().arg("check-config").output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test]
async fn the_dynamic_key_never_reaches_logs_or_the_database() {
    let env = Env::sqlite().await;
    // 1001 dead-letters its row here (not a credential code), so its texts are stored.
    configure(&env, "retryable_codes = [9]\ncredential_codes = []");
    let store = env.store().await;
    // Every error path writes its text somewhere; one reply even echoes the key back.
    env.sim.script_epeis(
        "SA-S1",
        vec![
            Step::http(503),
            Step::code_message("9", format!("busy, key {EPEIS_DYNAMIC_KEY}")),
            Step::ok(),
        ],
    );
    env.sim.script_epeis(
        "SA-S2",
        vec![Step::code_message(
            "1001",
            format!("DYNAMIC_KEY {EPEIS_DYNAMIC_KEY} 无效"),
        )],
    );
    env.sim
        .script_epeis("SA-S3", vec![Step::ok().delayed(Duration::from_secs(3))]);
    env.sim.script_epeis("SA-S4", vec![Step::drop_after()]);
    env.sim.script_epeis("SA-S5", vec![Step::garbage()]);
    for key in ["SA-S1", "SA-S2", "SA-S3", "SA-S4", "SA-S5"] {
        enqueue(&env, &store, key).await;
    }
    let out = env.run_until_idle(RUN).await;

    let s2 = dead(&store, "SA-S2").await;
    assert!(s2.reason.contains("[redacted]"), "{}", s2.reason);
    assert!(s2.last_reply.unwrap().contains("[redacted]"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("SA-S2"),
        "the log should mention the dead row"
    );
    assert!(!text.contains(EPEIS_DYNAMIC_KEY), "key in the log");
    assert!(
        !text.contains(&EPEIS_DYNAMIC_KEY[..16]),
        "part of the key in the log"
    );
    store.close().await;
    assert!(
        !sqlite_files_contain(env.path(), EPEIS_DYNAMIC_KEY),
        "key in the database"
    );
    // The check itself works: the payloads' settlement ids are in the file.
    assert!(sqlite_files_contain(env.path(), "SA-S2"));
}
