//! The daemon's log as an operator reads it: with the syslog priority journald needs under
//! systemd (`journalctl -p warning`), and as JSON with real fields for log shippers.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use outbox_core::event::EventType;
use outboxd_e2e::{charge_end, Env};
use serde_json::Value;

const RUN: Duration = Duration::from_secs(60);

/// An env with one valid row (delivered: info lines) and one invalid row (its charge ends
/// before it starts, so it is dead-lettered without a call: a warning line).
async fn env_with_a_warning() -> Env {
    let env = Env::sqlite().await;
    let store = env.store().await;
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "LOG-OK",
        &charge_end("LOG-OK"),
    )
    .await;
    let mut bad = charge_end("LOG-BAD");
    bad["start_time"] = "2026-11-24T09:20:00Z".into();
    bad["end_time"] = "2026-11-24T08:20:00Z".into();
    env.enqueue(&store, "pyun", EventType::ChargeEnd, "LOG-BAD", &bad)
        .await;
    store.close().await;
    env
}

/// Runs `outboxd [args] run --until-idle` with stderr going to `log`, and `JOURNAL_STREAM`
/// set to `journal_stream(dev, inode of log)` when given (as systemd sets it for a service
/// whose stderr is the journal).
async fn run_logged(
    env: &Env,
    args: &[&str],
    log: &Path,
    journal_stream: Option<fn(u64, u64) -> String>,
) -> String {
    let file = std::fs::File::create(log).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = tokio::process::Command::from(env.outboxd());
    cmd.args(args)
        .args(["run", "--until-idle"])
        .stdout(Stdio::null())
        .stderr(file)
        .kill_on_drop(true);
    if let Some(f) = journal_stream {
        cmd.env("JOURNAL_STREAM", f(meta.dev(), meta.ino()));
    } else {
        cmd.env_remove("JOURNAL_STREAM");
    }
    let status = tokio::time::timeout(RUN, cmd.status())
        .await
        .expect("outboxd --until-idle did not finish in time")
        .unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "outboxd failed: {status}\n{text}");
    text
}

#[tokio::test]
async fn under_journald_every_line_carries_its_syslog_priority() {
    let env = env_with_a_warning().await;
    let log = env.path().join("journal.log");
    let text = run_logged(
        &env,
        &["--log-format", "text"],
        &log,
        Some(|dev, ino| format!("{dev}:{ino}")),
    )
    .await;
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty(), "no log at all");
    for l in &lines {
        assert!(
            l.starts_with('<')
                && l[1..].starts_with(|c: char| c.is_ascii_digit())
                && l[2..].starts_with('>'),
            "a line without its priority prefix: {l:?}\n{text}"
        );
    }
    let warning = lines
        .iter()
        .find(|l| l.contains("dead-lettered"))
        .unwrap_or_else(|| panic!("no dead-lettered line in\n{text}"));
    assert!(warning.starts_with("<4>"), "{warning}");
    assert!(warning.contains("LOG-BAD"), "{warning}");
    let info = lines
        .iter()
        .find(|l| l.contains("outboxd worker started"))
        .unwrap_or_else(|| panic!("no start line in\n{text}"));
    assert!(info.starts_with("<6>"), "{info}");
    // Text for the journal: no colour escapes.
    assert!(!text.contains('\u{1b}'), "ANSI escapes in\n{text}");
}

#[tokio::test]
async fn under_journald_json_lines_carry_the_priority_before_the_object() {
    let env = env_with_a_warning().await;
    let log = env.path().join("journal-json.log");
    // No --log-format: stderr is not a terminal, so JSON, as under systemd.
    let text = run_logged(&env, &[], &log, Some(|dev, ino| format!("{dev}:{ino}"))).await;
    let mut warned = false;
    for l in text.lines() {
        let (prefix, json) = l.split_at(l.find('{').unwrap_or_else(|| panic!("{l}")));
        let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {l}"));
        let expected = match v["level"].as_str().unwrap() {
            "ERROR" => "<3>",
            "WARN" => "<4>",
            "INFO" => "<6>",
            _ => "<7>",
        };
        assert_eq!(prefix, expected, "{l}");
        warned |= v["message"] == "dead-lettered";
    }
    assert!(warned, "{text}");
}

#[tokio::test]
async fn no_priority_prefix_when_stderr_is_not_the_journal_stream() {
    let env = env_with_a_warning().await;
    // Inherited from a parent whose stderr was the journal, but ours is a file.
    let log = env.path().join("file.log");
    let text = run_logged(
        &env,
        &["--log-format", "text"],
        &log,
        Some(|dev, ino| format!("{dev}:{}", ino + 1)),
    )
    .await;
    assert!(text.contains("dead-lettered"), "{text}");
    assert!(
        text.lines().all(|l| !l.starts_with('<')),
        "a priority prefix outside the journal:\n{text}"
    );
}

#[tokio::test]
async fn log_format_json_gives_one_object_per_line_with_typed_fields() {
    let env = env_with_a_warning().await;
    let log = env.path().join("json.log");
    let text = run_logged(&env, &["--log-format", "json"], &log, None).await;
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let dead = events
        .iter()
        .find(|v| v["message"] == "dead-lettered")
        .unwrap_or_else(|| panic!("no dead-lettered event in\n{text}"));
    assert_eq!(dead["level"], "WARN", "{dead}");
    assert_eq!(dead["sink"], "pyun", "{dead}");
    assert_eq!(dead["key"], "LOG-BAD", "{dead}");
    assert!(dead["attempt"].is_u64(), "attempt is a number: {dead}");
    assert!(dead["reason"].is_string(), "{dead}");
}

#[tokio::test]
async fn log_format_text_overrides_json_off_a_terminal() {
    let env = env_with_a_warning().await;
    let log = env.path().join("text.log");
    let text = run_logged(&env, &["--log-format", "text"], &log, None).await;
    assert!(text.contains("dead-lettered"), "{text}");
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "JSON despite --log-format text:\n{text}"
    );
    assert!(
        text.contains("key=\"LOG-BAD\"") || text.contains("key=LOG-BAD"),
        "{text}"
    );
}
