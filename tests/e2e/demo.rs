//! The newcomer path: `scripts/demo.sh` runs to the end and leaves two lines that let a
//! newcomer keep exploring the demo's outbox from any directory.

use std::process::Command;

#[test]
fn demo_ends_with_two_lines_that_keep_the_outbox_at_hand() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg("scripts/demo.sh")
        .current_dir(root)
        // The suite builds every binary first (tests/support's `bin`); a build here would
        // select other features and rebuild them.
        .env("DEMO_NO_BUILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let [config, path] = lines[lines.len() - 2..] else {
        unreachable!()
    };
    assert!(config.starts_with("export OUTBOXD_CONFIG=/"), "{text}");
    assert!(path.starts_with("export PATH=/"), "{text}");
    // Pasted into a shell anywhere, they reach the demo's outbox with the demo's binary.
    let shell = Command::new("bash")
        .arg("-c")
        .arg(format!("{config}\n{path}\ncd /\noutboxd status --json"))
        .env_remove("OUTBOXD_CONFIG")
        .env_remove("OUTBOXD_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        shell.status.success(),
        "{}",
        String::from_utf8_lossy(&shell.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&shell.stdout).unwrap();
    let sinks: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["sink"].as_str())
        .collect();
    assert!(sinks.contains(&"pyun"), "{status}");
}
