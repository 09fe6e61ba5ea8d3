//! deploy/outboxd.toml documents every default as a commented `#key = value` line: those
//! values must be the code's defaults, or an operator reading the file is misled.

use outbox_core::config::{AdminConfig, WorkerConfig};
use outbox_core::retry::RetryPolicy;

const REFERENCE: &str = include_str!("../../../deploy/outboxd.toml");

/// The commented `#key = value` lines of one top-level `[section]`, uncommented.
fn documented_defaults(section: &str) -> String {
    let mut inside = false;
    let mut out = String::new();
    for line in REFERENCE.lines() {
        if line.starts_with('[') || line.starts_with("#[") {
            inside = line == format!("[{section}]");
            continue;
        }
        if let Some(kv) = line.strip_prefix('#') {
            let key = kv.split(" = ").next().unwrap_or("");
            if inside
                && kv.contains(" = ")
                && !key.is_empty()
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                out.push_str(kv);
                out.push('\n');
            }
        }
    }
    assert!(!out.is_empty(), "no documented default in [{section}]");
    out
}

#[test]
fn worker_defaults_are_the_documented_ones() {
    let text = documented_defaults("worker");
    let documented: WorkerConfig = toml::from_str(&text).unwrap();
    // `worker_id` is documented with an example value; its default is unset.
    let code = WorkerConfig {
        worker_id: documented.worker_id.clone(),
        ..WorkerConfig::default()
    };
    assert_eq!(documented, code, "deploy/outboxd.toml [worker]:\n{text}");
}

#[test]
fn retry_defaults_are_the_documented_ones() {
    let text = documented_defaults("retry");
    let documented: RetryPolicy = toml::from_str(&text).unwrap();
    assert_eq!(
        documented,
        RetryPolicy::default(),
        "deploy/outboxd.toml [retry]:\n{text}"
    );
}

#[test]
fn admin_defaults_are_the_documented_ones() {
    let text = documented_defaults("admin");
    let documented: AdminConfig = toml::from_str(&text).unwrap();
    assert_eq!(
        documented,
        AdminConfig::default(),
        "deploy/outboxd.toml [admin]:\n{text}"
    );
}

#[test]
fn the_documented_unit_runs_outbox_migrate_as_the_unit_does() {
    let unit = include_str!("../../../systemd/outboxd.service");
    let operations = include_str!("../../../docs/OPERATIONS.md");
    let pre = unit
        .lines()
        .find(|l| l.starts_with("ExecStartPre="))
        .expect("the unit migrates before starting");
    assert!(
        operations.contains(&format!("`{pre}`")),
        "docs/OPERATIONS.md does not show {pre}"
    );
    assert!(
        !operations.contains("outbox-migrate --database-url ...`"),
        "docs/OPERATIONS.md still shows an ExecStartPre= with --database-url"
    );
}
