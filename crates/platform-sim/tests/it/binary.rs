//! The `platform-sim` binary: the listening line, a script file, the control API, SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::http;

#[cfg(unix)]
#[tokio::test]
async fn binary_announces_serves_scripts_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("platform-sim-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.json");
    std::fs::write(&script, r#"{"pyun": {"BIN-1": [{"http": 502}]}}"#).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "file-token\n").unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_platform-sim"))
        .args(["--listen", "127.0.0.1:0", "--script"])
        .arg(&script)
        .arg("--lbbtech-token-file")
        .arg(&token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = line.strip_prefix("listening on http://").unwrap();
    let addr = base.parse().unwrap();

    let body = http::form([("replenish_order", "BIN-1")]);
    let reply = http::post(addr, platform_sim::pyun::PATH, http::FORM, &body)
        .await
        .unwrap();
    assert_eq!(reply.status, 502);
    let reply = http::post(
        addr,
        "/open/query/result",
        http::FORM,
        &http::form([("token", "file-token"), ("resultKey", "k")]),
    )
    .await
    .unwrap();
    assert_eq!(reply.json()["error"], "resultKey已过期");
    let stats = http::get(addr, "/_sim/stats").await.unwrap().json();
    assert_eq!(stats["pyun"]["requests"], 1);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("platform-sim stats"), "{stderr}");
    assert!(
        lines.next_line().await.unwrap().is_none(),
        "one stdout line only"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn binary_count_only_flag_keeps_counts_not_requests() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_platform-sim"))
        .args(["--listen", "127.0.0.1:0", "--count-only"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    let body = http::form([("replenish_order", "BIN-2")]);
    let reply = http::post(addr, platform_sim::pyun::PATH, http::FORM, &body)
        .await
        .unwrap();
    assert_eq!(reply.json()["code"], "400");
    let stats = http::get(addr, "/_sim/stats").await.unwrap().json();
    assert_eq!(stats["pyun"]["requests"], 1);
    let requests = http::get(addr, "/_sim/requests").await.unwrap().json();
    assert_eq!(requests, serde_json::json!([]));
    child.kill().await.unwrap();
}
