//! The command line as an operator meets it: config errors, schema checks, enqueue.

use outboxd_e2e::{bin, Env};

#[tokio::test]
async fn refuses_to_start_on_a_missing_schema_and_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::sqlite().await;
    let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    // An empty database file (no migrations applied).
    std::fs::write(dir.path().join("fresh.db"), b"").unwrap();
    let out = env
        .outboxd()
        .args(["--database-url", &url, "run"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("outbox-migrate --database-url"), "{err}");
}

#[tokio::test]
async fn check_config_explains_every_problem() {
    let env = Env::sqlite().await;
    env.write_config_raw(
        r#"
[worker]
lease = "1s"
[sinks.pyun]
type = "pyun"
url = "http://127.0.0.1:9/"
secret_env = "NOT_SET_ANYWHERE"
"#,
    );
    let out = env.outboxd().arg("check-config").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["app_id is required", "NOT_SET_ANYWHERE", "worker.lease"] {
        assert!(err.contains(needle), "{needle:?} missing in {err}");
    }
    env.write_config("");
    let ok = env.outboxd().arg("check-config").output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test]
async fn enqueue_command_is_idempotent() {
    let env = Env::sqlite().await;
    let payload = env.path().join("p.json");
    std::fs::write(&payload, outboxd_e2e::charge_end("CLI-1").to_string()).unwrap();
    let arg = format!("@{}", payload.display());
    let run = || {
        env.outboxd()
            .args([
                "enqueue",
                "--sink",
                "pyun",
                "--type",
                "charge_end",
                "--key",
                "CLI-1",
                "--payload",
                &arg,
            ])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("enqueued"));
    let second = run();
    assert!(String::from_utf8_lossy(&second.stdout).contains("already in the outbox"));
    let bad = env
        .outboxd()
        .args([
            "enqueue",
            "--sink",
            "pyun",
            "--type",
            "refund",
            "--key",
            "x",
            "--payload",
            "{}",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown event type"));
    let _ = bin("outboxd");
}

#[tokio::test]
async fn a_database_password_never_reaches_the_error_text() {
    let env = Env::sqlite().await;
    let url = "postgres://outboxd:topsecretpw@127.0.0.1:1/outbox";
    for args in [
        vec!["--database-url", url, "status"],
        vec!["--database-url", url, "run"],
    ] {
        let out = env.outboxd().args(&args).output().unwrap();
        assert!(!out.status.success());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("cannot open the outbox database"), "{text}");
        assert!(!text.contains("topsecretpw"), "{text}");
    }
    let out = std::process::Command::new(bin("outbox-migrate"))
        .args(["--database-url", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !text.contains("topsecretpw"),
        "{text}"
    );
}

/// Issue 12 item 11: `outbox-migrate` never creates a missing SQLite file unless asked to
/// (an unmounted volume must not get a fresh, empty outbox).
#[tokio::test]
async fn outbox_migrate_creates_a_missing_sqlite_file_only_with_create() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-mounted").join("outbox.db");
    std::fs::create_dir(path.parent().unwrap()).unwrap();
    let url = format!("sqlite://{}", path.display());
    let out = std::process::Command::new(bin("outbox-migrate"))
        .args(["--database-url", &url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&path.display().to_string()) && err.contains("--create"),
        "{err}"
    );
    assert!(!path.exists(), "nothing created");
    let out = std::process::Command::new(bin("outbox-migrate"))
        .args(["--create", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(path.exists());
    // Once it exists, the plain run (the service's) upgrades it as before.
    let out = std::process::Command::new(bin("outbox-migrate"))
        .args(["--database-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
