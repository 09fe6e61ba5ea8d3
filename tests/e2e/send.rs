//! The send path at its edges, through the real daemon: redirects are never followed (a 307
//! would carry the body, credentials included, to another host) and a huge reply is read
//! only up to a cap.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_core::event::EventType;
use outbox_core::store::{DeadRow, Store};
use outboxd_e2e::{charge_end, Env, EPEIS_DYNAMIC_KEY};
use platform_sim::config::DEMO_EPEIS_CHANNEL_DID;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RUN: Duration = Duration::from_secs(60);

/// Reads one HTTP/1.1 request (headers and a `Content-Length` body) and returns it as text.
async fn read_request(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A loopback server answering every request with `head` (status line and headers, without
/// the blank line) and `body_len` bytes of filler; returns its address and what it received.
async fn serve(head: String, body_len: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (head, log) = (head.clone(), log.clone());
            tokio::spawn(async move {
                let request = read_request(&mut s).await;
                log.lock().unwrap().push(request);
                let reply =
                    format!("{head}\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n");
                if s.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                let filler = vec![b'x'; 64 * 1024];
                let mut left = body_len;
                while left > 0 {
                    let n = left.min(filler.len());
                    // The client may stop reading and close: that is the point.
                    if s.write_all(&filler[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
    (addr, seen)
}

async fn dead_row(store: &Store, sink: &str, key: &str) -> Option<DeadRow> {
    store
        .dead_list(Some(sink), None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.idempotency_key == key)
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_holds_the_sink() {
    let env = Env::sqlite().await;
    // The second host answers like epeis accepting the adjustment.
    let (elsewhere, received) = serve(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json".into(),
        0,
    )
    .await;
    let location = format!("http://{elsewhere}/Service/v1/RepairDosageBack/");
    let (redirector, _) = serve(
        format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}"),
        0,
    )
    .await;
    env.write_config(&format!(
        r#"
[sinks.epeis]
type = "epeis"
url = "http://{redirector}/Service/v1/RepairDosageBack/"
channel_did = "{DEMO_EPEIS_CHANNEL_DID}"
register_did = "RG00000000000001"
account_did = "AC00000000000001"
secret_env = "TEST_EPEIS_KEY"
timeout = "1s"
connect_timeout = "1s"
"#
    ));
    let store = env.store().await;
    let payload = json!({
        "COM_METERAGE": {"SETTLEMENT_AID": "SA-REDIRECT-1", "NORMAL_RETRO_TYPE": "2"},
        "COM_METER_INFO_TMP": [{
            "DEVICE_DID": "DV00000000000001", "NORMAL_RETRO_TYPE": "2",
            "ENERGY_FLOW_TYPE": "1", "READINGS_TYPE": "1", "ADDED_CONS": 12.5
        }]
    });
    env.enqueue(
        &store,
        "epeis",
        EventType::Dosage,
        "SA-REDIRECT-1",
        &payload,
    )
    .await;
    let out = env.run_until_idle(RUN).await;

    assert!(
        received.lock().unwrap().is_empty(),
        "the redirect target received the request (DYNAMIC_KEY included): {:?}",
        received
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains(EPEIS_DYNAMIC_KEY))
    );
    // The URL is the sink's problem (issue 13): the row is not dead-lettered, the sink is
    // held with the reason, and the run ends idle.
    assert!(dead_row(&store, "epeis", "SA-REDIRECT-1").await.is_none());
    let row = store.row("epeis", "SA-REDIRECT-1").await.unwrap().unwrap();
    assert_eq!(row.status, "pending");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let held = log
        .lines()
        .find(|l| l.contains("epeis held (config)"))
        .unwrap_or_else(|| panic!("no hold in the log: {log}"));
    assert!(held.contains("307"), "{held}");
    assert!(held.contains(&location), "{held}");
    assert!(held.contains("check the sink url"), "{held}");
}

/// Peak resident memory of a running process, in KiB (Linux).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test]
async fn a_huge_reply_is_read_only_up_to_the_cap() {
    const BODY: usize = 96 * 1024 * 1024;
    let env = Env::sqlite().await;
    // A 400 is the row's problem and dead-letters it (a 404 would hold the sink).
    let (addr, received) = serve("HTTP/1.1 400 Bad Request".into(), BODY).await;
    env.write_config_raw(
        &std::fs::read_to_string(&env.config_path)
            .unwrap()
            .replace(&env.sim.pyun_url(), &format!("http://{addr}/replenish")),
    );
    let store = env.store().await;
    env.enqueue(
        &store,
        "pyun",
        EventType::ChargeEnd,
        "BIG-REPLY-1",
        &charge_end("BIG-REPLY-1"),
    )
    .await;
    let (mut daemon, _log) = env.spawn_daemon_logged();
    let pid = daemon.id().unwrap();
    let deadline = Instant::now() + RUN;
    let dead = loop {
        if let Some(d) = dead_row(&store, "pyun", "BIG-REPLY-1").await {
            break d;
        }
        assert!(Instant::now() < deadline, "the row was not dead-lettered");
        // Polling the database: the daemon gives no other sign that a row was settled.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let peak_mib = peak_rss_kib(pid) / 1024;
    daemon.kill().await.unwrap();
    assert_eq!(received.lock().unwrap().len(), 1);
    assert!(dead.reason.contains("HTTP 400"), "{}", dead.reason);
    let attempts = store.attempts(dead.outbox_id).await.unwrap();
    let stored = attempts[0].reply.as_deref().unwrap();
    assert!(
        stored.len() <= 2100,
        "stored reply of {} bytes",
        stored.len()
    );
    assert!(
        peak_mib < 64,
        "the daemon peaked at {peak_mib} MiB reading a {} MiB reply",
        BODY >> 20
    );
}
