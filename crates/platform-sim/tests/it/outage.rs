//! Platform-wide trouble, scripted: a wrong secret for a while, rotated credentials, a clock
//! offset with the `Date` header, refused connections, 5xx/429 streaks with `Retry-After`,
//! and the counting-only mode.

use std::io::ErrorKind;
use std::time::Duration;

use platform_sim::{Credentials, Platform, SimConfig, Stats, Step, Streak};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{self, JSON};
use crate::pyun::{fields, push, sim, sim_with, valid};

async fn control(sim: &platform_sim::SimHandle, script: serde_json::Value) -> http::Reply {
    http::post(
        sim.addr(),
        "/_sim/script",
        JSON,
        script.to_string().as_bytes(),
    )
    .await
    .unwrap()
}

/// The three platforms' answers to one valid request each: 4pyun code, epeis CODE,
/// lbbtech (code, error).
async fn answers(sim: &platform_sim::SimHandle, key: &str) -> (String, i64, String) {
    let pyun = push(sim, &valid(sim, key)).await.unwrap().json();
    let epeis = crate::epeis::send(sim, &crate::epeis::body(&format!("SA{key:0>14}")))
        .await
        .unwrap()
        .json();
    let lbb = crate::lbbtech::start(sim, key).await.unwrap().json();
    let lbb = match lbb["success"].as_bool() {
        Some(true) => "ok".to_owned(),
        _ => format!("{} {}", lbb["code"], lbb["error"]),
    };
    (
        pyun["code"].as_str().unwrap().to_owned(),
        epeis["CODE"].as_i64().unwrap(),
        lbb,
    )
}

fn failing() -> (String, i64, String) {
    ("401".into(), 1001, "\"-1\" \"token无效\"".into())
}

fn working() -> (String, i64, String) {
    ("200".into(), 0, "ok".into())
}

#[tokio::test]
async fn wrong_secret_fails_every_credential_check_until_cleared() {
    let sim = sim().await;
    assert_eq!(answers(&sim, "1").await, working());
    sim.set_wrong_secret(None, &[]);
    assert_eq!(answers(&sim, "2").await, failing());
    assert_eq!(answers(&sim, "3").await, failing());
    let stats = sim.stats();
    assert_eq!(stats.pyun.replies["401"], 2);
    assert_eq!(stats.epeis.replies["1001"], 2);
    sim.clear_wrong_secret();
    assert_eq!(answers(&sim, "4").await, working());
    // Nothing was applied while the secret was wrong.
    assert_eq!(sim.applied_keys(Platform::Pyun), ["1", "4"]);
    // The 2023 behaviour: the success code with the hint, nothing applied.
    let sim = sim_with(SimConfig {
        pyun_bad_sign: platform_sim::BadSignMode::Ignore200,
        ..SimConfig::default()
    })
    .await;
    sim.set_wrong_secret(None, &[Platform::Pyun]);
    let reply = push(&sim, &valid(&sim, "5")).await.unwrap().json();
    assert_eq!(reply["hint"], "签名验证不通过");
    assert!(sim.applied_keys(Platform::Pyun).is_empty());
}

#[tokio::test]
async fn wrong_secret_for_a_while_on_some_platforms_over_the_control_api() {
    let sim = sim().await;
    let reply = control(
        &sim,
        json!({"wrong_secret": {"for_ms": 400, "platforms": ["pyun", "lbbtech"]}}),
    )
    .await;
    assert_eq!(reply.status, 200);
    let (pyun, epeis, lbb) = answers(&sim, "1").await;
    assert_eq!((pyun.as_str(), epeis), ("401", 0));
    assert_eq!(lbb, failing().2);
    // The window is a duration: waiting it out is the behaviour under test.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(answers(&sim, "2").await, working());
    // Clearing over the control API.
    control(&sim, json!({"wrong_secret": true})).await;
    assert_eq!(answers(&sim, "3").await, failing());
    control(&sim, json!({"wrong_secret": false})).await;
    assert_eq!(answers(&sim, "4").await, working());
    assert_eq!(
        control(&sim, json!({"wrong_secret": {"for": 1}}))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn rotated_credentials_refuse_the_old_ones_and_accept_the_new() {
    let sim = sim().await;
    sim.set_credentials(Credentials {
        pyun_app_secret: Some("new-secret".into()),
        ..Credentials::default()
    });
    assert_eq!(
        push(&sim, &valid(&sim, "1")).await.unwrap().json()["code"],
        "401"
    );
    let mut form = fields("1", sim.now_ms());
    let sign = platform_sim::pyun::sign(
        form.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        "new-secret",
    );
    form.push(("sign".into(), sign));
    let body = http::form(form.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    assert_eq!(push(&sim, &body).await.unwrap().json()["code"], "200");
    // Over the control API: the lbbtech token.
    control(
        &sim,
        json!({"credentials": {"lbbtech_token": "other-token"}}),
    )
    .await;
    let reply = crate::lbbtech::start(&sim, "865933034812509")
        .await
        .unwrap()
        .json();
    assert_eq!(reply["error"], "token无效");
    assert_eq!(sim.config().lbbtech_token, "other-token");
}

/// The `Date` header of `reply` is within 2 s of `expected_ms`.
fn date_near(reply: &http::Reply, expected_ms: i64) -> bool {
    let date = reply.header("date").expect("a Date header");
    (-2..=2).any(|s| platform_sim::clock::http_date(expected_ms + s * 1000) == date)
}

#[tokio::test]
async fn clock_offset_rejects_timestamps_and_shows_in_the_date_header() {
    let sim = sim().await;
    let now = platform_sim::clock::system_now_ms();
    let reply = push(&sim, &valid(&sim, "1")).await.unwrap();
    assert!(date_near(&reply, now));
    // 20 minutes ahead: our timestamp falls outside 4pyun's 10-minute window.
    control(&sim, json!({"clock_offset_ms": 20 * 60_000})).await;
    let body = crate::pyun::signed(fields("2", platform_sim::clock::system_now_ms()));
    let reply = push(&sim, &body).await.unwrap();
    let answer = reply.json();
    assert_eq!(
        (answer["code"].as_str(), answer["hint"].as_str()),
        (Some("403"), Some("timestamp out of window"))
    );
    assert!(
        date_near(&reply, now + 20 * 60_000),
        "{:?}",
        reply.header("date")
    );
    // Every reply carries it: control API, unknown paths, bare statuses.
    let stats = http::get(sim.addr(), "/_sim/stats").await.unwrap();
    assert!(date_near(&stats, now + 20 * 60_000));
    let missing = http::get(sim.addr(), "/nowhere").await.unwrap();
    assert!(date_near(&missing, now + 20 * 60_000));
    sim.script_pyun("3", vec![Step::http(503)]);
    let bare = push(&sim, &valid(&sim, "3")).await.unwrap();
    assert_eq!(bare.status, 503);
    assert!(date_near(&bare, now + 20 * 60_000));
    // The offset gone, the same request passes.
    sim.set_clock_offset_ms(0);
    assert_eq!(push(&sim, &body).await.unwrap().json()["code"], "200");
}

fn refused(result: std::io::Result<TcpStream>) -> bool {
    matches!(result, Err(e) if e.kind() == ErrorKind::ConnectionRefused)
}

#[tokio::test]
async fn refused_connections_until_told_then_served_on_the_same_address() {
    let sim = sim().await;
    let addr = sim.addr();
    // A keep-alive connection open before the refusal is closed once idle.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    sim.refuse_connections(None).await;
    assert!(!sim.accepting());
    assert!(refused(TcpStream::connect(addr).await));
    assert!(push(&sim, &valid(&sim, "1")).await.is_err());
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    // Still refused a while later: only told ends it.
    assert!(!sim.wait_accepting(Duration::from_millis(100)).await);
    assert!(refused(TcpStream::connect(addr).await));
    sim.accept_connections().await;
    assert!(sim.accepting());
    assert_eq!(
        push(&sim, &valid(&sim, "2")).await.unwrap().json()["code"],
        "200"
    );
    assert_eq!(sim.requests().len(), 1, "the refused push never arrived");
}

#[tokio::test]
async fn refused_connections_for_a_while_over_the_control_api() {
    let sim = sim().await;
    let addr = sim.addr();
    // The control reply itself still arrives.
    let reply = control(&sim, json!({"refuse_connections": {"for_ms": 300}})).await;
    assert_eq!(reply.status, 200);
    let mut closed = false;
    for _ in 0..100 {
        if refused(TcpStream::connect(addr).await) {
            closed = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(closed, "the listener never closed");
    assert!(sim.wait_accepting(Duration::from_secs(5)).await);
    assert_eq!(
        push(&sim, &valid(&sim, "1")).await.unwrap().json()["code"],
        "200"
    );
    // "Until told" is not possible over the port being closed.
    assert_eq!(
        control(&sim, json!({"refuse_connections": true}))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn a_request_in_progress_is_answered_before_its_connection_closes() {
    let sim = sim().await;
    sim.script_pyun("slow", vec![Step::ok().delayed(Duration::from_millis(200))]);
    let body = valid(&sim, "slow");
    let mut stream = TcpStream::connect(sim.addr()).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        platform_sim::pyun::PATH,
        http::FORM,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    assert!(sim.wait_for_requests(1, Duration::from_secs(5)).await);
    sim.refuse_connections(None).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn streaks_answer_the_next_requests_with_a_bare_status_and_retry_after() {
    let sim = sim().await;
    sim.script_pyun("S", vec![Step::code("500")]);
    control(&sim, json!({"streak": {"count": 3, "retry_after": 2}})).await;
    for order in ["S", "A", "B"] {
        let reply = push(&sim, &valid(&sim, order)).await.unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("retry-after"), Some("2"));
    }
    // The streak consumed no script step: "S" still gets its scripted 500.
    assert_eq!(
        push(&sim, &valid(&sim, "S")).await.unwrap().json()["code"],
        "500"
    );
    assert_eq!(
        push(&sim, &valid(&sim, "S")).await.unwrap().json()["code"],
        "200"
    );
    let requests = sim.requests();
    assert_eq!(requests[0].fault, Some(Step::http_retry_after(503, 2)));
    assert!(!requests[0].fault_random);
    // 429 on one platform only, without Retry-After.
    sim.set_streak(Streak::new(2, 429).on(&[Platform::Epeis]));
    assert_eq!(push(&sim, &valid(&sim, "C")).await.unwrap().status, 200);
    for aid in ["SA00000000000001", "SA00000000000002"] {
        let reply = crate::epeis::send(&sim, &crate::epeis::body(aid))
            .await
            .unwrap();
        assert_eq!((reply.status, reply.header("retry-after")), (429, None));
    }
    let reply = crate::epeis::send(&sim, &crate::epeis::body("SA00000000000003"))
        .await
        .unwrap();
    assert_eq!(reply.json()["CODE"], 0);
    // A per-key Retry-After on a 429.
    sim.script_pyun("D", vec![Step::http_retry_after(429, 120)]);
    let reply = push(&sim, &valid(&sim, "D")).await.unwrap();
    assert_eq!(
        (reply.status, reply.header("retry-after")),
        (429, Some("120"))
    );
}

#[tokio::test]
async fn counting_only_mode_keeps_counts_not_requests() {
    let sim = sim_with(SimConfig {
        count_only: true,
        ..SimConfig::default()
    })
    .await;
    for i in 0..20 {
        let body = valid(&sim, &format!("N-{i}"));
        assert_eq!(push(&sim, &body).await.unwrap().json()["code"], "200");
    }
    push(&sim, &valid(&sim, "N-0")).await.unwrap();
    assert!(sim.wait_for_requests(21, Duration::ZERO).await);
    assert!(sim.requests().is_empty());
    let listed = http::get(sim.addr(), "/_sim/requests")
        .await
        .unwrap()
        .json();
    assert_eq!(listed, json!([]));
    let stats: Stats =
        serde_json::from_slice(&http::get(sim.addr(), "/_sim/stats").await.unwrap().body).unwrap();
    assert_eq!(stats.pyun.requests, 21);
    assert_eq!(stats.pyun.applied, 20);
    assert_eq!(stats.pyun.duplicates, 1);
    // Switched off over the control API: requests are kept again.
    control(&sim, json!({"count_only": false})).await;
    push(&sim, &valid(&sim, "N-99")).await.unwrap();
    assert_eq!(sim.requests().len(), 1);
    assert_eq!(sim.requests()[0].seq, 21);
    assert!(!sim.config().count_only);
}
