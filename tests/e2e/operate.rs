//! Issue 16, the operator's side: finding any row (`list`, `show`, `dead list` filters) and
//! acting on many rows safely (`dead requeue` and `dead purge` by filter with `--dry-run`,
//! `cancel`, `retry-now`), and `pause` of a sink nobody configured. The real binary, on
//! SQLite and Postgres; a daemon runs where the commands must work beside it.

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use outbox_core::clock::now_ms;
use outbox_core::store::{Engine, Store};
use outboxd_e2e::{bin, Env};
use platform_sim::{Platform, Step};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

// The operator-command helpers are shared with the older operator tests.
use crate::ops::{
    assert_success, cli, dead_id, enqueue, event, extra_pyun_sink, find, ok_json, row_status, sql,
    stats, stderr, stdout,
};

const RUN: Duration = Duration::from_secs(60);
/// Deadlines for what takes milliseconds when all is well: never waited out unless broken.
const SOON: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(25);
/// 2100-01-01: a `not_before` no test reaches.
const FAR: i64 = 4_102_444_800_000;

on_both_backends! {
    list_and_show_find_rows_wherever_they_are
        => sqlite_list_and_show_find_rows_wherever_they_are, postgres_list_and_show_find_rows_wherever_they_are;
    dead_requeue_by_filter_and_dry_run_changes_nothing
        => sqlite_dead_requeue_by_filter_and_dry_run_changes_nothing, postgres_dead_requeue_by_filter_and_dry_run_changes_nothing;
    dead_purge_refuses_unknown_outcomes_and_never_prompts_without_a_terminal
        => sqlite_dead_purge_refuses_unknown_outcomes_and_never_prompts_without_a_terminal, postgres_dead_purge_refuses_unknown_outcomes_and_never_prompts_without_a_terminal;
    cancel_and_retry_now_while_the_daemon_drains
        => sqlite_cancel_and_retry_now_while_the_daemon_drains, postgres_cancel_and_retry_now_while_the_daemon_drains;
    retry_now_makes_a_held_sink_probe_at_once
        => sqlite_retry_now_makes_a_held_sink_probe_at_once, postgres_retry_now_makes_a_held_sink_probe_at_once;
    pause_of_a_sink_nobody_configured_is_an_error
        => sqlite_pause_of_a_sink_nobody_configured_is_an_error, postgres_pause_of_a_sink_nobody_configured_is_an_error;
    dead_purge_asks_on_a_terminal_and_shows_progress
        => sqlite_dead_purge_asks_on_a_terminal_and_shows_progress, postgres_dead_purge_asks_on_a_terminal_and_shows_progress;
}

// ---------------------------------------------------------------------------------------
// Finding a row
// ---------------------------------------------------------------------------------------

async fn list_and_show_find_rows_wherever_they_are(env: Env) {
    let store = env.store().await;
    env.sim
        .script_pyun("CE-REJECT", vec![Step::code_hint("400", "`vin` invalid~")]);
    for key in ["CE-OK-1", "CE-OK-2", "CE-OK-3", "CE-REJECT"] {
        enqueue(&env, &store, "pyun", key).await;
    }
    env.run_until_idle(RUN).await;
    store
        .enqueue(&event("pyun", "LATER-1", Some(FAR)))
        .await
        .unwrap();

    // Everything, newest first, from both tables.
    let all = ok_json(&env, &["list", "--json"]).await;
    assert_eq!(all["matched"], 5, "{all}");
    let rows = all["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0]["idempotency_key"], "LATER-1", "{all}");
    assert_eq!(rows[0]["state"], "pending");

    let dead = ok_json(
        &env,
        &["list", "--sink", "pyun", "--state", "dead", "--json"],
    )
    .await;
    assert_eq!(dead["matched"], 1, "{dead}");
    assert_eq!(dead["rows"][0]["idempotency_key"], "CE-REJECT");
    assert_eq!(dead["rows"][0]["place"], "dead");
    assert_eq!(dead["rows"][0]["kind"], "permanent");
    // The reason, ignoring case, in a dead reason.
    let vin = ok_json(&env, &["list", "--reason", "VIN", "--json"]).await;
    assert_eq!(keys(&vin["rows"]), ["CE-REJECT"], "{vin}");
    let pending = ok_json(&env, &["list", "--state", "pending", "--json"]).await;
    assert_eq!(keys(&pending["rows"]), ["LATER-1"]);

    // A limit says on stderr how many more matched; the table is on stdout.
    let out = cli(&env, &["list", "--key-prefix", "CE-OK", "--limit", "2"]).await;
    assert_success(&out);
    assert!(
        stderr(&out).contains("showing the newest 2 of 3 matching row(s)"),
        "{}",
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.starts_with("ID  SINK"), "{text}");
    assert!(
        text.contains("CE-OK-3") && text.contains("CE-OK-2"),
        "{text}"
    );
    assert!(!text.contains("CE-OK-1"), "{text}");

    // Nothing matches: said plainly, not an error.
    let none = cli(&env, &["list", "--since", "2099-01-01T00:00:00Z"]).await;
    assert_success(&none);
    assert_eq!(
        stdout(&none).trim(),
        "no rows with created at or after 2099-01-01T00:00:00Z"
    );
    let none = ok_json(&env, &["list", "--until", "1h", "--json"]).await;
    assert_eq!(none["matched"], 0);
    let bad = cli(&env, &["list", "--state", "lost"]).await;
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("pending, in_flight, delivered"),
        "{}",
        stderr(&bad)
    );

    // `show` finds a dead-lettered key and says so.
    let out = cli(&env, &["show", "--sink", "pyun", "--key", "CE-REJECT"]).await;
    assert_success(&out);
    let text = stdout(&out);
    assert!(
        text.starts_with("pyun / CE-REJECT is not in the outbox: it was dead-lettered (dead row "),
        "{text}"
    );
    assert!(text.contains("kind           permanent"), "{text}");
    assert!(text.contains("payload:"), "{text}");
    let shown = ok_json(
        &env,
        &["show", "--sink", "pyun", "--key", "CE-REJECT", "--json"],
    )
    .await;
    assert_eq!(shown["place"], "dead");
    assert_eq!(shown["dead"]["idempotency_key"], "CE-REJECT");
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1);
    let shown = ok_json(
        &env,
        &["show", "--sink", "pyun", "--key", "CE-OK-1", "--json"],
    )
    .await;
    assert_eq!(shown["place"], "outbox");
    assert_eq!(shown["row"]["status"], "delivered");
    let missing = cli(&env, &["show", "--sink", "pyun", "--key", "NOPE"]).await;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("in the outbox or the dead letters"),
        "{}",
        stderr(&missing)
    );

    // `dead list` takes the same filters.
    let by_key = ok_json(&env, &["dead", "list", "--key", "CE-REJECT", "--json"]).await;
    assert_eq!(by_key.as_array().unwrap().len(), 1);
    let recent = ok_json(
        &env,
        &["dead", "list", "--sink", "pyun", "--since", "1h", "--json"],
    )
    .await;
    assert_eq!(recent.as_array().unwrap().len(), 1);
    let text = stdout(&cli(&env, &["dead", "list", "--kind", "unknown"]).await);
    assert_eq!(text.trim(), "no dead-lettered rows with kind unknown");
}

// ---------------------------------------------------------------------------------------
// dead requeue / purge by filter
// ---------------------------------------------------------------------------------------

async fn dead_requeue_by_filter_and_dry_run_changes_nothing(env: Env) {
    let store = env.store().await;
    for key in ["RQ-1", "RQ-2", "OTHER-1"] {
        env.sim
            .script_pyun(key, vec![Step::code_hint("400", "`vin` invalid~")]);
        enqueue(&env, &store, "pyun", key).await;
    }
    env.run_until_idle(RUN).await;
    // A row whose outcome is unknown, and a dead row whose key is back in the outbox.
    let now = now_ms();
    sql(
        &store,
        &format!(
            "INSERT INTO outbox_dead (outbox_id, sink, event_type, idempotency_key, payload, created_at, \
                                      attempts, reason, dead_at, kind) \
             VALUES (2000001, 'pyun', 'charge_end', 'RQ-UNKNOWN', '{{}}', {now}, 1, \
                     'outcome unknown: connection reset after the request was sent', {now}, 'unknown')"
        ),
    )
    .await;
    store
        .enqueue(&event("pyun", "RQ-BACK", Some(FAR)))
        .await
        .unwrap();
    sql(
        &store,
        &format!(
            "INSERT INTO outbox_dead (outbox_id, sink, event_type, idempotency_key, payload, created_at, \
                                      attempts, reason, dead_at, kind) \
             VALUES (2000002, 'pyun', 'charge_end', 'RQ-BACK', '{{}}', {now}, 3, 'gave up after 3 attempts', {now}, 'expired')"
        ),
    )
    .await;
    let before = snapshot(&store).await;
    let (rq1, rq2) = (dead_id(&store, "RQ-1").await, dead_id(&store, "RQ-2").await);

    let plan = ok_json(
        &env,
        &[
            "dead",
            "requeue",
            "--key-prefix",
            "RQ-",
            "--dry-run",
            "--json",
        ],
    )
    .await;
    let mut ids = [rq1, rq2];
    ids.sort_unstable();
    assert_eq!(plan["would_requeue"], serde_json::json!(ids), "{plan}");
    let refused: Vec<&str> = plan["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"].as_str().unwrap())
        .collect();
    assert_eq!(refused.len(), 2, "{plan}");
    assert!(refused[0].contains("its outcome is unknown"), "{refused:?}");
    assert!(
        refused[1].contains("the producer sent this key again"),
        "{refused:?}"
    );
    let text = stdout(
        &cli(
            &env,
            &["dead", "requeue", "--key-prefix", "RQ-", "--dry-run"],
        )
        .await,
    );
    assert!(text.starts_with("would requeue 2 row(s)"), "{text}");
    assert!(text.contains("nothing changed (--dry-run)"), "{text}");
    assert_eq!(snapshot(&store).await, before, "a dry run changes nothing");

    // For real: the refusals stand (exit status non-zero), the rest is requeued.
    let out = cli(&env, &["dead", "requeue", "--key-prefix", "RQ-"]).await;
    assert!(!out.status.success());
    assert!(
        stdout(&out).starts_with("requeued 2 row(s)"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("2 of 4 row(s) not requeued"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        row_status(&store, "pyun", "RQ-1").await.as_deref(),
        Some("pending")
    );
    assert_eq!(
        row_status(&store, "pyun", "OTHER-1").await,
        None,
        "not selected"
    );
    dead_id(&store, "RQ-UNKNOWN").await;
    // By kind, with --force for the unknown outcome.
    let forced = ok_json(
        &env,
        &["dead", "requeue", "--kind", "unknown", "--force", "--json"],
    )
    .await;
    assert_eq!(forced["requeued"].as_array().unwrap().len(), 1, "{forced}");
    let text = stdout(&cli(&env, &["dead", "requeue", "--key-prefix", "NOPE-"]).await);
    assert_eq!(
        text.trim(),
        "no dead-lettered rows with key starting with \"NOPE-\"; nothing to requeue"
    );
    let bad = cli(&env, &["dead", "requeue", "--sink", "pyun"]).await;
    assert!(stderr(&bad).contains("needs --all"), "{}", stderr(&bad));
}

async fn dead_purge_refuses_unknown_outcomes_and_never_prompts_without_a_terminal(env: Env) {
    let store = env.store().await;
    let dead_rows = |prefix: &str, n: i64, sink: &str, kind: &str, reason: &str| {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
             INSERT INTO outbox_dead (outbox_id, sink, event_type, idempotency_key, payload, \
                                      created_at, attempts, reason, dead_at, kind) \
             SELECT 3000000 + i, '{sink}', 'charge_end', '{prefix}' || i, '{{}}', 0, 15, '{reason}', {}, '{kind}' FROM n",
            now_ms()
        )
    };
    sql(
        &store,
        &dead_rows(
            "BULK-",
            1200,
            "pyun",
            "expired",
            "gave up after 15 attempts",
        ),
    )
    .await;
    sql(
        &store,
        &dead_rows(
            "UNK-",
            3,
            "pyun",
            "unknown",
            "outcome unknown: timed out after sending",
        ),
    )
    .await;
    sql(
        &store,
        &dead_rows("KEEP-", 2, "other", "permanent", "HTTP 400"),
    )
    .await;
    let before = snapshot(&store).await;

    let bad = cli(&env, &["dead", "purge"]).await;
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("say which dead rows"),
        "{}",
        stderr(&bad)
    );
    let plan = ok_json(
        &env,
        &[
            "dead",
            "purge",
            "--sink",
            "pyun",
            "--all",
            "--dry-run",
            "--json",
        ],
    )
    .await;
    assert_eq!(plan["would_purge"].as_array().unwrap().len(), 1200);
    assert_eq!(plan["refused"].as_array().unwrap().len(), 3);
    assert_eq!(snapshot(&store).await, before, "a dry run changes nothing");

    // Standard input a pipe that stays open: a prompt would wait forever.
    let mut child = tokio::process::Command::from(env.outboxd())
        .args(["dead", "purge", "--sink", "pyun", "--all"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take();
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let status = tokio::time::timeout(SOON, child.wait())
        .await
        .expect("dead purge waited: it must not prompt without a terminal")
        .unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    so.read_to_string(&mut out).await.unwrap();
    se.read_to_string(&mut err).await.unwrap();
    assert!(!status.success(), "refusals make the exit status non-zero");
    assert!(!err.contains("[y/N]"), "{err}");
    assert!(
        !err.contains("/1200"),
        "no progress without a terminal: {err}"
    );
    assert!(
        out.starts_with("purged 1200 dead row(s) with sink pyun"),
        "{out}"
    );
    assert!(
        out.contains("refused 3 row(s) whose outcome is unknown"),
        "{out}"
    );
    assert!(err.contains("--force purges them"), "{err}");
    assert_eq!(dead_count(&store, "pyun").await, 3);

    let forced = ok_json(
        &env,
        &["dead", "purge", "--kind", "unknown", "--force", "--json"],
    )
    .await;
    assert_eq!(forced["purged"], 3, "{forced}");
    assert_eq!(dead_count(&store, "pyun").await, 0);
    assert_eq!(
        dead_count(&store, "other").await,
        2,
        "another sink untouched"
    );
    let none = ok_json(&env, &["dead", "purge", "--key-prefix", "NOPE", "--json"]).await;
    assert_eq!(none["purged"], 0);
}

/// `outboxd ARGS` on a pseudo-terminal (util-linux `script`), with `input` typed into it:
/// (exit success, everything the terminal showed).
async fn on_a_terminal(env: &Env, args: &str, input: &str) -> (bool, String) {
    let command = format!(
        "'{}' --config '{}' {args}",
        bin("outboxd").display(),
        env.config_path.display()
    );
    let mut child = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running script(1)");
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, input.as_bytes())
        .await
        .unwrap();
    let out = tokio::time::timeout(SOON, child.wait_with_output())
        .await
        .expect("outboxd on a terminal did not finish")
        .unwrap();
    drop(stdin);
    (out.status.success(), stdout(&out))
}

async fn dead_purge_asks_on_a_terminal_and_shows_progress(env: Env) {
    let store = env.store().await;
    sql(
        &store,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1200) \
             INSERT INTO outbox_dead (outbox_id, sink, event_type, idempotency_key, payload, \
                                      created_at, attempts, reason, dead_at, kind) \
             SELECT 4000000 + i, 'pyun', 'charge_end', 'T-' || i, '{{}}', 0, 15, \
                    'gave up after 15 attempts', {}, 'expired' FROM n",
            now_ms()
        ),
    )
    .await;
    let (ok, shown) = on_a_terminal(&env, "dead purge --sink pyun --all", "n\n").await;
    assert!(!ok, "{shown}");
    assert!(
        shown.contains(
            "delete 1200 dead row(s) with sink pyun and their attempt history, for good? [y/N]"
        ),
        "{shown}"
    );
    assert!(shown.contains("nothing deleted (not confirmed"), "{shown}");
    assert_eq!(dead_count(&store, "pyun").await, 1200);

    let (ok, shown) = on_a_terminal(&env, "dead purge --sink pyun --all", "y\n").await;
    assert!(ok, "{shown}");
    assert!(
        shown.contains("purged 500/1200"),
        "progress on a terminal: {shown}"
    );
    assert!(
        shown.contains("purged 1200 dead row(s) with sink pyun"),
        "{shown}"
    );
    assert_eq!(dead_count(&store, "pyun").await, 0);
    let (ok, shown) = on_a_terminal(&env, "dead purge --sink pyun --all --yes", "").await;
    assert!(ok && !shown.contains("[y/N]"), "--yes never asks: {shown}");
}

// ---------------------------------------------------------------------------------------
// cancel / retry-now
// ---------------------------------------------------------------------------------------

async fn cancel_and_retry_now_while_the_daemon_drains(env: Env) {
    // A sink whose retries are an hour apart: its failed rows wait on backoff.
    env.write_config(&extra_pyun_sink(&env, "slow", Some("1h")));
    let store = env.store().await;
    for key in ["RN-1", "RN-2", "CN-1", "CN-2"] {
        env.sim.script_pyun(key, vec![Step::code("503")]);
        enqueue(&env, &store, "slow", key).await;
    }
    let (_daemon, log) = env.spawn_daemon_logged();
    eventually("four rows waiting on backoff", &log, || async {
        find(&stats(&store).await, "slow").retrying == 4
    })
    .await;

    // cancel: dry run, then for real, with a note.
    let args = [
        "cancel",
        "--sink",
        "slow",
        "--key-prefix",
        "CN-",
        "--note",
        "charger retired",
    ];
    let plan = ok_json(&env, &[&args[..], &["--dry-run", "--json"]].concat()).await;
    assert_eq!(plan["would_cancel"].as_array().unwrap().len(), 2, "{plan}");
    assert_eq!(
        row_status(&store, "slow", "CN-1").await.as_deref(),
        Some("pending")
    );
    let done = ok_json(&env, &[&args[..], &["--json"]].concat()).await;
    assert_eq!(done["cancelled"].as_array().unwrap().len(), 2, "{done}");
    assert!(
        done["note"]
            .as_str()
            .unwrap()
            .ends_with(": charger retired"),
        "{done}"
    );
    assert_eq!(
        row_status(&store, "slow", "CN-1").await.as_deref(),
        Some("cancelled")
    );
    let text = stdout(&cli(&env, &["show", "--sink", "slow", "--key", "CN-1"]).await);
    assert!(
        text.contains("status      cancelled, 1 attempt(s)"),
        "{text}"
    );
    assert!(text.contains(": charger retired"), "{text}");
    let listed = ok_json(&env, &["list", "--state", "cancelled", "--json"]).await;
    assert_eq!(listed["matched"], 2);
    assert!(listed["rows"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("charger retired"));
    let status = ok_json(&env, &["status", "--json"]).await;
    let slow = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == "slow")
        .unwrap();
    assert_eq!(slow["cancelled"], 2, "{status}");
    assert!(
        stdout(&cli(&env, &["status"]).await).contains("slow: 2 row(s) cancelled by an operator")
    );
    let bad = cli(&env, &["cancel", "--sink", "slow"]).await;
    assert!(stderr(&bad).contains("add --all"), "{}", stderr(&bad));
    let bad = cli(&env, &["cancel", "999999"]).await;
    assert!(!bad.status.success());
    assert!(
        stdout(&bad).contains("no such outbox row"),
        "{}",
        stdout(&bad)
    );

    // retry-now: RN-1 is delivered now, not in an hour; RN-2 keeps waiting.
    let out = ok_json(
        &env,
        &["retry-now", "--sink", "slow", "--key", "RN-1", "--json"],
    )
    .await;
    assert_eq!(out["made_due"].as_array().unwrap().len(), 1, "{out}");
    eventually("RN-1 delivered", &log, || async {
        row_status(&store, "slow", "RN-1").await.as_deref() == Some("delivered")
    })
    .await;
    assert_eq!(
        row_status(&store, "slow", "RN-2").await.as_deref(),
        Some("pending")
    );
    // A misspelt sink matches nothing and leaves no trace (no probe request, no sink).
    let text = stdout(&cli(&env, &["retry-now", "--sink", "sloww"]).await);
    assert_eq!(text.trim(), "no rows with sink sloww");
    assert!(stats(&store).await.iter().all(|s| s.sink != "sloww"));
    assert_eq!(
        env.sim.request_count(Platform::Pyun, "CN-1"),
        1,
        "cancelled: never sent again"
    );

    // cancel of a row in flight is refused with a clear message.
    env.sim
        .script_pyun("HANG", vec![Step::ok().delayed(Duration::from_secs(30))]);
    enqueue(&env, &store, "pyun", "HANG").await;
    eventually("HANG in flight", &log, || async {
        row_status(&store, "pyun", "HANG").await.as_deref() == Some("in_flight")
    })
    .await;
    let out = cli(&env, &["cancel", "--sink", "pyun", "--key", "HANG"]).await;
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("it is in flight (being delivered right now)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        row_status(&store, "pyun", "HANG").await.as_deref(),
        Some("in_flight")
    );

    // Thousands of rows, a chunk at a time.
    sql(
        &store,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) \
             INSERT INTO outbox (sink, event_type, idempotency_key, payload, not_before) \
             SELECT 'slow', 'charge_end', 'BIG-' || i, '{{}}', {FAR} FROM n"
        ),
    )
    .await;
    let out = cli(&env, &["list", "--key-prefix", "BIG-"]).await;
    assert!(
        stderr(&out).contains("showing the newest 50 of 3000"),
        "{}",
        stderr(&out)
    );
    let done = ok_json(&env, &["cancel", "--key-prefix", "BIG-", "--json"]).await;
    assert_eq!(done["cancelled"].as_array().unwrap().len(), 3000);
    assert_eq!(find(&stats(&store).await, "slow").cancelled, 3002);
}

async fn retry_now_makes_a_held_sink_probe_at_once(env: Env) {
    // Probes an hour apart: only retry-now can resume the sink within the test.
    env.write_config("\n[sinks.pyun.health]\nprobe_initial = \"1h\"\nprobe_max = \"1h\"");
    let store = env.store().await;
    env.sim.set_wrong_secret(None, &[Platform::Pyun]);
    for i in 0..10 {
        enqueue(&env, &store, "pyun", &format!("HELD-{i}")).await;
    }
    let (_daemon, log) = env.spawn_daemon_logged();
    wait_for_log(&log, "pyun held (auth)").await;
    env.sim.clear_wrong_secret();

    let out = cli(&env, &["retry-now", "--sink", "pyun"]).await;
    assert_success(&out);
    assert!(
        stdout(&out).contains("asked the daemon to probe pyun at once"),
        "{}",
        stdout(&out)
    );
    wait_for_log(&log, "an operator asked for a probe").await;
    eventually("every held row delivered", &log, || async {
        find(&stats(&store).await, "pyun").delivered == 10
    })
    .await;
    assert_eq!(dead_count(&store, "pyun").await, 0);
}

// ---------------------------------------------------------------------------------------
// pause / resume of an unknown sink
// ---------------------------------------------------------------------------------------

async fn pause_of_a_sink_nobody_configured_is_an_error(env: Env) {
    let store = env.store().await;
    let out = cli(&env, &["pause", "pyuun"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("configured sinks are pyun"),
        "{}",
        stderr(&out)
    );
    assert!(
        store.paused_sinks().await.unwrap().is_empty(),
        "nothing paused"
    );
    // --force: a sink only another worker's config has.
    let forced = ok_json(&env, &["pause", "pyuun", "--force", "--json"]).await;
    assert_eq!(forced["paused"], true);
    // A paused sink can always be resumed, config or not.
    assert_success(&cli(&env, &["resume", "pyuun"]).await);

    // No config at all (--database-url alone): the database's sinks stand in.
    let bare = |args: &[&str]| {
        let mut c = tokio::process::Command::new(bin("outboxd"));
        c.arg("--config")
            .arg(env.path().join("no-such-config.toml"))
            .arg("--database-url")
            .arg(&env.db_url)
            .args(args);
        c
    };
    let out = bare(&["pause", "ghost"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no config was read"),
        "{}",
        stderr(&out)
    );
    enqueue(&env, &store, "ghost", "G-1").await;
    let out = bare(&["pause", "ghost"]).output().await.unwrap();
    assert_success(&out);
    assert_eq!(store.paused_sinks().await.unwrap(), ["ghost"]);
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn keys(rows: &Value) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["idempotency_key"].as_str().unwrap().to_string())
        .collect()
}

async fn dead_count(store: &Store, sink: &str) -> usize {
    store
        .dead_list(Some(sink), None, None, 10_000)
        .await
        .unwrap()
        .len()
}

/// Every outbox and dead row as (table, id, status or reason, attempts): what a dry run
/// must leave as it was.
async fn snapshot(store: &Store) -> Vec<(String, i64, String, i64)> {
    let query = "SELECT 'outbox', id, status, attempts FROM outbox \
                 UNION ALL SELECT 'dead', id, reason, attempts FROM outbox_dead ORDER BY 1, 2";
    match store.engine() {
        Engine::Sqlite(s) => sqlx::query_as(query).fetch_all(s.pool()).await.unwrap(),
        Engine::Postgres(p) => sqlx::query_as::<_, (String, i64, String, i32)>(query)
            .fetch_all(p.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|(t, i, s, a)| (t, i, s, i64::from(a)))
            .collect(),
    }
}

/// Polls `check` until it holds; on a timeout, fails with the daemon's log.
async fn eventually<F, Fut>(what: &str, log: &Path, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + SOON;
    while !check().await {
        if Instant::now() >= deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            panic!(
                "timed out waiting for {what}; the daemon's last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the daemon's log has a line containing `needle`.
async fn wait_for_log(log: &Path, needle: &str) {
    eventually(&format!("the log line {needle:?}"), log, || async {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(needle)
    })
    .await;
}

/// The new commands document every argument (the check `help.rs` makes for the others).
#[test]
fn the_new_commands_have_help_for_every_argument() {
    for sub in ["list", "retry-now", "cancel"] {
        let out = std::process::Command::new(bin("outboxd"))
            .args([sub, "--help"])
            .env_remove("OUTBOXD_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{sub}");
        let help = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = help.lines().collect();
        let mut args = 0;
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let indent = l.len() - t.len();
            if (2..=6).contains(&indent) && t.starts_with('-') && !l.contains("  -h, --help") {
                args += 1;
                let next = lines.get(i + 1).copied().unwrap_or("");
                assert!(!next.trim().is_empty(), "{sub}: no help for {t:?}\n{help}");
            }
        }
        assert!(args >= 6, "{sub}: the shared filters are listed\n{help}");
        assert!(help.contains("--key-prefix <PREFIX>"), "{help}");
    }
}
