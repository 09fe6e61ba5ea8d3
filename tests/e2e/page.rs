//! The admin page as a person sees it: the real daemon with the platform simulator, a few
//! delivered rows, a dead row whose payload carries markup, a paused sink; headless
//! Chromium (Debian's `chromium`, installed by scripts/test.sh) renders `/` and the dead
//! row's page, and the test reads the DOM it built. A screenshot of each backend's `/` is
//! written under `target/` (docs/admin-page.png is one of them).
//!
//! Without Chromium the test fails in CI (`CI` set) and is skipped elsewhere, with a note.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use outbox_core::event::EventType;
use outbox_core::store::Store;
use outboxd_e2e::{charge_end, Env};
use platform_sim::Step;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

const SOON: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(25);

/// What the producer put in the dead row's payload: markup that must stay text.
const EVIL_VIN: &str = r#"<script>alert(1)</script> "quotes" & <img src=x onerror=alert(2)>"#;
/// What the platform answered (its hint becomes the dead reason).
const EVIL_HINT: &str = "`vin` <b>invalid</b> & \"refused\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_the_admin_page_shows_sinks_charts_and_dead_letters_escaped() {
    let Some(chromium) = chromium() else { return };
    the_admin_page_shows_sinks_charts_and_dead_letters_escaped(
        Env::sqlite().await,
        &chromium,
        "sqlite",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_the_admin_page_shows_sinks_charts_and_dead_letters_escaped() {
    let Some(chromium) = chromium() else { return };
    if let Some(env) = Env::postgres().await {
        the_admin_page_shows_sinks_charts_and_dead_letters_escaped(env, &chromium, "postgres")
            .await;
    }
}

async fn the_admin_page_shows_sinks_charts_and_dead_letters_escaped(
    env: Env,
    chromium: &Path,
    backend: &str,
) {
    // A second sink, paused by an operator before the daemon starts, with a row waiting;
    // a third one held after its first refused credential, next probe in an hour.
    env.write_config(&format!(
        "{}\n{}\n[sinks.stuck.health]\nhold_after = 1\nprobe_initial = \"1h\"\n",
        env.pyun_sink("parked", &["concurrency = 2"]),
        env.pyun_sink("stuck", &["concurrency = 2"]),
    ));
    let store = env.store().await;
    env.sim
        .script_pyun("PG-BAD", vec![Step::code_hint("400", EVIL_HINT)]);
    for key in ["PG-OK1", "PG-OK2", "PG-OK3"] {
        enqueue(&env, &store, "pyun", key, charge_end(key)).await;
    }
    let mut bad = charge_end("PG-BAD");
    bad["vin"] = EVIL_VIN.into();
    enqueue(&env, &store, "pyun", "PG-BAD", bad).await;
    enqueue(&env, &store, "parked", "PG-PARKED", charge_end("PG-PARKED")).await;
    env.sim.script_pyun("PG-STUCK", vec![Step::code("401")]);
    enqueue(&env, &store, "stuck", "PG-STUCK", charge_end("PG-STUCK")).await;
    let out = tokio::process::Command::from(env.outboxd())
        .args(["pause", "parked"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut daemon = env.spawn_daemon();
    let admin = admin_addr(&mut daemon).await;
    let deadline = Instant::now() + SOON;
    let dead_id = loop {
        let dead = store.dead_list(None, None, None, 10).await.unwrap();
        let stats = store.stats(outbox_core::clock::now_ms()).await.unwrap();
        let delivered = stats.iter().find(|s| s.sink == "pyun").map(|s| s.delivered);
        if let (Some(d), Some(3)) = (dead.first(), delivered) {
            break d.id;
        }
        assert!(
            Instant::now() < deadline,
            "rows not final in time: {stats:?}"
        );
        tokio::time::sleep(POLL).await;
    };

    // The overview, as Chromium builds it.
    let dom = dump_dom(chromium, admin, "/").await;
    for seen in [
        "<h1>outboxd</h1>",
        ">pyun</td>",
        ">parked</td>",
        "class=\"state active\">active</span>",
        "class=\"state paused\">paused</span>",
        ">stuck</td>",
        "class=\"state held\">held</span> (auth) for",
        "4pyun code 401",
        "next probe in 5", // 59m or 58m: an hour away
        "PG-BAD",
        // The dead reason, shown as text.
        "`vin` &lt;b&gt;invalid&lt;/b&gt; &amp; \"refused\"",
        "Deliveries and failures per minute",
        "Backlog (pending and in flight)",
        &format!("href=\"/dead/{dead_id}\""),
    ] {
        assert!(dom.contains(seen), "{seen:?} not on the page:\n{dom}");
    }
    // The charts: the deliveries are on them (a dot for a lone sample, a line once
    // there are two minutes of them).
    assert!(
        dom.contains("fill=\"#17702b\"></circle>") || dom.contains("stroke=\"#17702b\" points="),
        "no delivered mark on the chart:\n{dom}"
    );
    assert_no_injected_elements(&dom);
    let target = target_dir();
    let shot = target.join(format!("admin-page-{backend}.png"));
    screenshot(chromium, admin, "/", &shot).await;
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 1000)
            .unwrap_or(false),
        "no screenshot at {}",
        shot.display()
    );

    // The dead row's page: the payload as text, the attempt with the platform's reply.
    let dom = dump_dom(chromium, admin, &format!("/dead/{dead_id}")).await;
    for seen in [
        &format!("Dead letter {dead_id}") as &str,
        "PG-BAD",
        "permanent",
        "&lt;script&gt;alert(1)&lt;/script&gt; \\\"quotes\\\" &amp; &lt;img src=x onerror=alert(2)&gt;",
        "`vin` &lt;b&gt;invalid&lt;/b&gt; &amp; \"refused\"",
        "<table id=\"attempts\">",
    ] {
        assert!(dom.contains(seen), "{seen:?} not on the row page:\n{dom}");
    }
    assert_no_injected_elements(&dom);
    screenshot(
        chromium,
        admin,
        &format!("/dead/{dead_id}"),
        &target.join(format!("admin-dead-row-{backend}.png")),
    )
    .await;

    // No such row: a 404 page; read-only: nothing but GET.
    let (code, body) = http(admin, "GET", "/dead/999999").await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("No dead letter"), "{body}");
    assert_eq!(http(admin, "GET", "/dead/nope").await.0, 404);
    assert_eq!(http(admin, "POST", "/").await.0, 404);

    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
}

/// The DOM holds no element the data could have injected: no script, no img, no `<b>`.
fn assert_no_injected_elements(dom: &str) {
    for tag in ["<script", "<img", "<b>", "onerror=alert(2)>"] {
        assert!(!dom.contains(tag), "{tag} in the DOM:\n{dom}");
    }
}

async fn enqueue(env: &Env, store: &Store, sink: &str, key: &str, payload: Value) {
    env.enqueue(store, sink, EventType::ChargeEnd, key, &payload)
        .await;
}

/// Debian's `chromium`, or `None` (with a note) outside CI; in CI its absence fails.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("chromium"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing: in CI the admin page test must run (scripts/test.sh installs it)"
        );
        eprintln!(
            "note: chromium not found; skipping the admin page test (apt-get install chromium)"
        );
    }
    found
}

/// Chromium's flags for a headless run here (as root, in a container, offline), with a
/// profile directory of its own so two runs never share one.
fn headless(chromium: &Path, profile: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(chromium);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .stdin(Stdio::null())
    .kill_on_drop(true);
    c
}

async fn dump_dom(chromium: &Path, admin: SocketAddr, path: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        headless(chromium, profile.path())
            .arg("--dump-dom")
            .arg(format!("http://{admin}{path}"))
            .output(),
    )
    .await
    .expect("chromium --dump-dom did not finish in a minute")
    .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("a UTF-8 DOM")
}

async fn screenshot(chromium: &Path, admin: SocketAddr, path: &str, file: &Path) {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        headless(chromium, profile.path())
            .arg(format!("--screenshot={}", file.display()))
            .arg("--window-size=1280,1600")
            .arg("--hide-scrollbars")
            .arg(format!("http://{admin}{path}"))
            .output(),
    )
    .await
    .expect("chromium --screenshot did not finish in a minute")
    .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `target/`: the screenshots are kept there for the docs.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp is under target/")
        .to_path_buf()
}

/// The admin listener's address, from the daemon's log line that reports it (stderr, JSON
/// lines); the rest of the output is drained so the daemon never blocks on a full pipe.
pub(crate) async fn admin_addr(daemon: &mut tokio::process::Child) -> SocketAddr {
    let stderr = daemon.stderr.take().expect("piped stderr");
    let stdout = daemon.stdout.take().expect("piped stdout");
    tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = BufReader::new(stdout).read_to_end(&mut out).await;
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if !line.contains("\"bound\"") {
                continue;
            }
            let v: Value = serde_json::from_str(&line).expect("a JSON log line");
            if let (Some(tx), Some(addr)) = (tx.take(), v["bound"].as_str()) {
                let _ = tx.send(addr.parse::<SocketAddr>().expect("an address"));
            }
        }
    });
    tokio::time::timeout(SOON, rx)
        .await
        .expect("no admin listener address logged in time")
        .expect("the daemon exited before logging its admin address")
}

/// A plain HTTP/1.1 request: (status, body).
pub(crate) async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    let reply = String::from_utf8(reply).expect("a UTF-8 reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, body.to_string())
}
