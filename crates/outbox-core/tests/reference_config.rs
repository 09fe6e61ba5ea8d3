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

/// The reference config with the commented defaults of its live sinks uncommented: each
/// `#key = value` line of a `[sinks.NAME]` section (and its commented `health` and `codes`
/// subsections) that is a default, not an example (`dynamic_key_valid_until`, the
/// `[sinks.pyun.retry]` override and the commented T/CEC sink are examples).
fn with_sink_defaults_uncommented() -> String {
    let live: Vec<&str> = REFERENCE
        .lines()
        .filter_map(|l| l.strip_prefix("[sinks.")?.strip_suffix(']'))
        .filter(|name| !name.contains('.'))
        .collect();
    let mut uncommenting = false;
    let mut out = String::new();
    for line in REFERENCE.lines() {
        let header = line.strip_prefix('#').unwrap_or(line);
        if let Some(section) = header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let parts: Vec<&str> = section.split('.').collect();
            uncommenting = parts.len() >= 2
                && parts[0] == "sinks"
                && live.contains(&parts[1])
                && parts
                    .get(2)
                    .is_none_or(|sub| ["health", "codes"].contains(sub));
            out.push_str(if uncommenting { header } else { line });
            out.push('\n');
            continue;
        }
        let key = header.split(" = ").next().unwrap_or("");
        let is_default = line.starts_with('#')
            && header.contains(" = ")
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            && key != "dynamic_key_valid_until";
        out.push_str(if uncommenting && is_default {
            header
        } else {
            line
        });
        out.push('\n');
    }
    out
}

#[test]
fn sink_defaults_are_the_documented_ones() {
    let path = std::path::Path::new("deploy/outboxd.toml");
    let text = with_sink_defaults_uncommented();
    let uncommented = text.lines().count()
        - text
            .lines()
            .zip(REFERENCE.lines())
            .filter(|(a, b)| a == b)
            .count();
    assert!(
        uncommented > 20,
        "only {uncommented} lines uncommented:\n{text}"
    );
    // Parsing reads the secrets: dummies in place of the service's credentials.
    let creds = tempfile::tempdir().unwrap();
    for (file, secret) in [
        ("pyun-secret", "dummy-pyun-app-secret".to_string()),
        ("epeis-dynamic-key", "0".repeat(64)),
        ("lbbtech-token", "dummy-lbbtech-token".to_string()),
    ] {
        std::fs::write(creds.path().join(file), secret).unwrap();
    }
    let dir = format!("{}/", creds.path().display());
    let parse = |text: &str| {
        let text = text.replace("/run/credentials/outboxd.service/", &dir);
        outbox_core::config::Config::parse(&text, path).unwrap()
    };
    let (as_shipped, documented) = (parse(REFERENCE), parse(&text));
    // The settings every sink has (concurrency, timeouts, health, clock_skew_warn) are
    // resolved by serde: compared whole (no PartialEq: they hold secret references; their
    // Debug is complete). Platform options left out stay `None` until the sink is built,
    // so they cannot be compared this way.
    for (name, sink) in &as_shipped.sinks {
        assert_eq!(
            format!("{:?}", sink.settings),
            format!("{:?}", documented.sinks[name].settings),
            "the documented defaults of [sinks.{name}] are not the code's"
        );
    }
}
