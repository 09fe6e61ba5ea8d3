//! The control API and the in-process handle's waiting and counting.

use std::time::{Duration, Instant};

use platform_sim::{Platform, Stats};
use serde_json::json;

use crate::http::{self, JSON};
use crate::pyun::{push, sim, valid};

#[tokio::test]
async fn wait_for_requests_wakes_on_arrival_and_times_out() {
    let sim = sim().await;
    let started = Instant::now();
    assert!(!sim.wait_for_requests(1, Duration::from_millis(50)).await);
    assert!(started.elapsed() < Duration::from_secs(1));

    let body = valid(&sim, "W-1");
    let sender = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        push(&sim, &body).await.unwrap();
        push(&sim, &body).await.unwrap();
    };
    let (_, reached) = tokio::join!(sender, sim.wait_for_requests(2, Duration::from_secs(5)));
    assert!(reached);
    // Already reached: returns at once.
    assert!(sim.wait_for_requests(2, Duration::ZERO).await);
}

#[tokio::test]
async fn control_api_scripts_lists_and_counts() {
    let sim = sim().await;
    let script = json!({
        "pyun": {"C-1": [{"http": 503, "retry_after": 2}, {"delay_ms": 10, "then": "ok"}]},
        "clock_offset_ms": 0
    });
    let reply = http::post(
        sim.addr(),
        "/_sim/script",
        JSON,
        script.to_string().as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    let bad = http::post(
        sim.addr(),
        "/_sim/script",
        JSON,
        br#"{"pyun":{"x":["boom"]}}"#,
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 400);

    let body = valid(&sim, "C-1");
    assert_eq!(push(&sim, &body).await.unwrap().status, 503);
    assert_eq!(push(&sim, &body).await.unwrap().json()["code"], "200");

    let requests = http::get(sim.addr(), "/_sim/requests")
        .await
        .unwrap()
        .json();
    assert_eq!(requests.as_array().unwrap().len(), 2);
    assert_eq!(requests[0]["platform"], "pyun");
    assert_eq!(requests[0]["key"], "C-1");
    assert_eq!(requests[0]["http_status"], 503);
    assert_eq!(requests[0]["fault"], json!({"http": 503, "retry_after": 2}));
    assert_eq!(requests[1]["fault"], json!({"delay_ms": 10}));
    assert_eq!(requests[1]["applied"], true);

    let stats: Stats =
        serde_json::from_slice(&http::get(sim.addr(), "/_sim/stats").await.unwrap().body).unwrap();
    assert_eq!(stats.pyun.requests, 2);
    assert_eq!(stats.pyun.applied, 1);
    assert_eq!(stats.pyun.replies["http 503"], 1);
    assert_eq!(stats.pyun.replies["200"], 1);
    assert_eq!(stats, sim.stats());
    assert_eq!(sim.request_count(Platform::Pyun, "C-1"), 2);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused_unrecorded() {
    let sim = sim().await;
    assert_eq!(http::get(sim.addr(), "/nowhere").await.unwrap().status, 404);
    assert_eq!(
        http::get(sim.addr(), platform_sim::pyun::PATH)
            .await
            .unwrap()
            .status,
        405
    );
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn urls_point_at_the_server_and_shutdown_closes_it() {
    let sim = sim().await;
    let base = sim.base_url();
    assert_eq!(base, format!("http://{}", sim.addr()));
    assert_eq!(
        sim.pyun_url(),
        format!("{base}/gate/1.0/energy/internal/replenish")
    );
    assert_eq!(sim.lbbtech_base_url(), format!("{base}/open"));
    let addr = sim.addr();
    sim.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
