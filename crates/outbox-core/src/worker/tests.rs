//! The loop against a real SQLite file and a real (silent) HTTP peer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::event::{EventType, NewEvent};
use crate::store::OpenOptions;

/// A peer that accepts connections, counts them and never answers.
async fn silent_peer() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            open.push(socket);
        }
    });
    (addr, accepted)
}

fn payload(order: &str) -> String {
    serde_json::json!({
        "station_uuid": "8f5fdb60-9374-4c11-bdc2-a32d8369258c", "device_no": "S1",
        "port_no": "1", "replenish_order": order, "start_time": "2026-11-24T08:20:00Z",
        "end_time": "2026-11-24T09:20:00Z", "vin": "川A660N2", "quantity": 6556,
        "energy_value": 207, "fee_value": 975, "total_value": 1182, "energy_code": "CN_AC"
    })
    .to_string()
}

/// Issue 12 item 2: a delivery that outlasts the lease. The worker renews the lease of the
/// row it is delivering and never reclaims it from itself, so the row gets exactly one
/// attempt (here it then gives up: `max_attempts = 1`). Before the fix, its own
/// housekeeping reclaimed the row mid-delivery, claimed it again (attempts climbing, a
/// second request), and the first verdict landed on the second claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_longer_than_the_lease_is_attempted_once() {
    std::env::set_var("OUTBOXD_TEST_WORKER_SECRET", "s3cret");
    let (peer, accepted) = silent_peer().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let mut config = Config::parse(
        &format!(
            r#"
            database_url = "{url}"
            [worker]
            poll_interval = "10ms"
            [retry]
            max_attempts = 1
            [sinks.pyun]
            type = "pyun"
            url = "http://{peer}/gate/1.0/energy/internal/replenish"
            app_id = "op1"
            secret_env = "OUTBOXD_TEST_WORKER_SECRET"
            timeout = "600ms"
            connect_timeout = "100ms"
            concurrency = 4
            "#
        ),
        std::path::Path::new("test.toml"),
    )
    .unwrap();
    // Far shorter than the delivery (validation forbids it; a stalled database or a slow
    // claim has the same effect).
    config.worker.lease = Duration::from_millis(100);
    let store = Store::open(
        &url,
        &OpenOptions {
            create: true,
            ..OpenOptions::default()
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let ev = NewEvent {
        sink: "pyun".into(),
        event_type: EventType::ChargeEnd,
        idempotency_key: "SLOW-1".into(),
        payload: payload("SLOW-1"),
        ordering_key: None,
        not_before: None,
        supersede_key: None,
    };
    assert!(store.enqueue(&ev).await.unwrap());

    let run = run(
        &config,
        store.clone(),
        Shutdown::never(),
        RunOptions::new(RunMode::UntilIdle),
    );
    let summary = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run ends")
        .unwrap();

    let dead = store.dead_list(None, None, None, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].attempts, 1, "one attempt: {dead:?}");
    assert!(
        dead[0].reason.starts_with("gave up after 1 attempts"),
        "{dead:?}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one request");
    assert_eq!((summary.claimed, summary.dead), (1, 1), "{summary:?}");
}
