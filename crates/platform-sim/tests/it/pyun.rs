//! 4pyun replenish over HTTP: signature, window, dedup, and every fault step.

use std::time::{Duration, Instant};

use platform_sim::{Platform, RandomFaults, SimConfig, SimHandle, Step};

use crate::http::{self, FORM};

pub async fn sim() -> SimHandle {
    sim_with(SimConfig::default()).await
}

pub async fn sim_with(config: SimConfig) -> SimHandle {
    platform_sim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

/// The public vector's fields for `order`, stamped `timestamp`, without `sign`.
pub fn fields(order: &str, timestamp: i64) -> Vec<(String, String)> {
    [
        ("app_id", "op00961963581daa7"),
        ("device_no", "S1"),
        ("end_time", "2023-04-11T09:20:00Z"),
        ("energy_code", "CN_AC"),
        ("energy_value", "207"),
        ("fee_value", "975"),
        ("port_no", "1"),
        ("quantity", "6556"),
        ("replenish_order", order),
        ("start_time", "2023-04-11T08:20:00Z"),
        ("station_uuid", "8f5fdb60-9374-4c11-bdc2-a32d8369258c"),
        ("total_value", "1182"),
        ("vin", "川A660N2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([("timestamp".to_owned(), timestamp.to_string())])
    .collect()
}

/// The form body of `fields`, signed with the demo secret.
pub fn signed(mut fields: Vec<(String, String)>) -> Vec<u8> {
    let sign = platform_sim::pyun::sign(
        fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        platform_sim::config::DEMO_PYUN_APP_SECRET,
    );
    fields.push(("sign".into(), sign));
    http::form(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

pub fn valid(sim: &SimHandle, order: &str) -> Vec<u8> {
    signed(fields(order, sim.now_ms()))
}

pub async fn push(sim: &SimHandle, body: &[u8]) -> std::io::Result<http::Reply> {
    http::post(sim.addr(), platform_sim::pyun::PATH, FORM, body).await
}

#[tokio::test]
async fn valid_push_is_applied_once_and_the_duplicate_is_ignored() {
    let sim = sim().await;
    let body = valid(&sim, "ORDER-1");
    let first = push(&sim, &body).await.unwrap();
    assert_eq!(first.status, 200);
    let reply = first.json();
    assert_eq!(reply["code"], "200");
    assert_eq!(reply["message"], "OK");
    assert_eq!(reply["data_node"], "CN-South/HS3-1");
    assert_eq!(reply["seqno"].as_str().unwrap().len(), 16);
    assert!(reply.get("hint").is_none());
    assert!(first
        .header("content-type")
        .unwrap()
        .contains("application/json"));

    let again = push(&sim, &body).await.unwrap().json();
    assert_eq!(again["code"], "200");
    assert_eq!(again["message"], "已忽略当前请求");
    assert_eq!(again["hint"], "重复的充电单号");

    assert_eq!(sim.request_count(Platform::Pyun, "ORDER-1"), 2);
    assert_eq!(sim.applied_count(Platform::Pyun, "ORDER-1"), 1);
    assert_eq!(sim.applied_keys(Platform::Pyun), ["ORDER-1"]);
    let records = sim.requests();
    assert_eq!(records[0].params["vin"], "川A660N2");
    assert_eq!(records[0].reply_code.as_deref(), Some("200"));
    assert!(records[1].duplicate && !records[1].applied);
    assert_eq!(sim.stats().pyun.duplicates, 1);
}

#[tokio::test]
async fn success_code_1001_when_configured() {
    let sim = sim_with(SimConfig {
        pyun_success_code: "1001".into(),
        ..SimConfig::default()
    })
    .await;
    let reply = push(&sim, &valid(&sim, "ORDER-1001")).await.unwrap().json();
    assert_eq!(reply["code"], "1001");
}

#[tokio::test]
async fn bad_signature_is_401_and_not_applied() {
    let sim = sim().await;
    let mut tampered = fields("ORDER-SIGN", sim.now_ms());
    let body = {
        let sign = platform_sim::pyun::sign(
            tampered.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "not-the-secret",
        );
        tampered.push(("sign".into(), sign));
        http::form(tampered.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    };
    let reply = push(&sim, &body).await.unwrap().json();
    assert_eq!(reply["code"], "401");
    assert_eq!(reply["message"], "签名验证不通过");
    assert_eq!(sim.applied_count(Platform::Pyun, "ORDER-SIGN"), 0);
}

#[tokio::test]
async fn timestamp_eleven_minutes_old_is_403() {
    let sim = sim().await;
    let body = signed(fields("ORDER-OLD", sim.now_ms() - 11 * 60 * 1000));
    let reply = push(&sim, &body).await.unwrap().json();
    assert_eq!(reply["code"], "403");
    assert_eq!(reply["message"], "访问被拦截");
    assert_eq!(reply["hint"], "timestamp out of window");
    assert_eq!(sim.applied_count(Platform::Pyun, "ORDER-OLD"), 0);
}

#[tokio::test]
async fn skewed_platform_clock_rejects_a_fresh_timestamp() {
    let sim = sim().await;
    let body = valid(&sim, "ORDER-SKEW");
    sim.set_clock_offset_ms(11 * 60 * 1000);
    assert_eq!(push(&sim, &body).await.unwrap().json()["code"], "403");
    sim.set_clock_offset_ms(0);
    assert_eq!(push(&sim, &body).await.unwrap().json()["code"], "200");
}

#[tokio::test]
async fn missing_parameter_is_400_naming_it() {
    let sim = sim().await;
    let without: Vec<_> = fields("ORDER-MISSING", sim.now_ms())
        .into_iter()
        .filter(|(k, _)| k != "start_time")
        .collect();
    let reply = push(&sim, &signed(without)).await.unwrap().json();
    assert_eq!(reply["code"], "400");
    assert_eq!(reply["message"], "请求参数错误");
    assert_eq!(reply["hint"], "`start_time` required~");
}

#[tokio::test]
async fn a_json_body_is_not_a_form() {
    let sim = sim().await;
    let reply = http::post(sim.addr(), platform_sim::pyun::PATH, http::JSON, b"{}")
        .await
        .unwrap()
        .json();
    assert_eq!(reply["hint"], "`app_id` required~");
}

#[tokio::test]
async fn scripted_503_with_retry_after_then_normal() {
    let sim = sim().await;
    sim.script_pyun(
        "ORDER-503",
        vec![Step::http_retry_after(503, 1), Step::code("503")],
    );
    let body = valid(&sim, "ORDER-503");
    let bare = push(&sim, &body).await.unwrap();
    assert_eq!(bare.status, 503);
    assert_eq!(bare.header("retry-after"), Some("1"));
    let coded = push(&sim, &body).await.unwrap();
    assert_eq!(coded.status, 200);
    assert_eq!(coded.json()["code"], "503");
    assert_eq!(coded.json()["message"], "服务暂不可用");
    let ok = push(&sim, &body).await.unwrap().json();
    assert_eq!(ok["code"], "200");
    assert!(ok.get("hint").is_none());
    assert_eq!(sim.request_count(Platform::Pyun, "ORDER-503"), 3);
    assert_eq!(sim.applied_count(Platform::Pyun, "ORDER-503"), 1);
    let records = sim.requests();
    assert_eq!(records[0].http_status, Some(503));
    assert_eq!(records[0].fault, Some(Step::http_retry_after(503, 1)));
    assert!(!records[0].fault_random);
    assert_eq!(records[2].fault, None);
}

#[tokio::test]
async fn scripted_success_with_hint_applies_nothing() {
    let sim = sim().await;
    sim.script_pyun("ORDER-HINT", vec![Step::code_hint("200", "签名验证不通过")]);
    let reply = push(&sim, &valid(&sim, "ORDER-HINT")).await.unwrap().json();
    assert_eq!(reply["code"], "200");
    assert_eq!(reply["message"], "已忽略当前请求");
    assert_eq!(reply["hint"], "签名验证不通过");
    assert_eq!(sim.applied_count(Platform::Pyun, "ORDER-HINT"), 0);
}

#[tokio::test]
async fn drop_before_is_a_client_error_and_applies_nothing() {
    let sim = sim().await;
    sim.script_pyun("ORDER-DB", vec![Step::drop_before()]);
    let error = push(&sim, &valid(&sim, "ORDER-DB")).await.unwrap_err();
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{error:?}"
    );
    assert_eq!(sim.request_count(Platform::Pyun, "ORDER-DB"), 1);
    assert_eq!(sim.applied_count(Platform::Pyun, "ORDER-DB"), 0);
    assert_eq!(sim.requests()[0].http_status, None);
    // The next attempt is the first applied one.
    let reply = push(&sim, &valid(&sim, "ORDER-DB")).await.unwrap().json();
    assert!(reply.get("hint").is_none());
}

#[tokio::test]
async fn drop_after_is_a_client_error_but_applied() {
    let sim = sim().await;
    sim.script_pyun("ORDER-DA", vec![Step::drop_after()]);
    assert!(push(&sim, &valid(&sim, "ORDER-DA")).await.is_err());
    assert_eq!(sim.applied_count(Platform::Pyun, "ORDER-DA"), 1);
    let record = &sim.requests()[0];
    assert_eq!(record.http_status, None);
    assert_eq!(record.reply_code.as_deref(), Some("200"));
    // The retry the sender makes is the duplicate.
    let reply = push(&sim, &valid(&sim, "ORDER-DA")).await.unwrap().json();
    assert_eq!(reply["hint"], "重复的充电单号");
    assert_eq!(sim.applied_count(Platform::Pyun, "ORDER-DA"), 1);
    assert_eq!(sim.stats().pyun.dropped, 1);
}

#[tokio::test]
async fn garbage_is_http_200_not_json() {
    let sim = sim().await;
    sim.script_pyun("ORDER-G", vec![Step::garbage()]);
    let reply = push(&sim, &valid(&sim, "ORDER-G")).await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&reply.body).is_err());
    assert_eq!(sim.applied_count(Platform::Pyun, "ORDER-G"), 0);
    assert_eq!(sim.stats().pyun.replies["garbage"], 1);
}

#[tokio::test]
async fn delayed_step_replies_late_but_is_recorded_at_once() {
    let sim = sim().await;
    sim.script_pyun(
        "ORDER-SLOW",
        vec![Step::ok().delayed(Duration::from_millis(300))],
    );
    let body = valid(&sim, "ORDER-SLOW");
    let started = Instant::now();
    let (reply, waited) = tokio::join!(
        push(&sim, &body),
        sim.wait_for_requests(1, Duration::from_secs(2))
    );
    assert!(waited);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(reply.unwrap().json()["code"], "200");
    assert_eq!(sim.applied_count(Platform::Pyun, "ORDER-SLOW"), 1);
}

#[tokio::test]
async fn seeded_random_faults_replay_identically() {
    async fn run() -> Vec<Option<u16>> {
        let sim = sim().await;
        sim.set_random_faults(RandomFaults {
            p_503: 0.3,
            p_drop_before: 0.2,
            p_drop_after: 0.2,
            delay_ms: Some([0, 2]),
            seed: Some(99),
        });
        for i in 0..20 {
            let _ = push(&sim, &valid(&sim, &format!("R-{i}"))).await;
        }
        let statuses: Vec<_> = sim.requests().iter().map(|r| r.http_status).collect();
        assert!(sim.requests().iter().all(|r| r.fault_random));
        statuses
    }
    let first = run().await;
    assert_eq!(first, run().await);
    assert!(first.contains(&None) && first.contains(&Some(503)) && first.contains(&Some(200)));
}

#[tokio::test]
async fn scripts_take_precedence_over_random_faults() {
    let sim = sim_with(SimConfig {
        random: RandomFaults {
            p_503: 1.0,
            ..RandomFaults::none()
        },
        ..SimConfig::default()
    })
    .await;
    sim.script_pyun("ORDER-S", vec![Step::ok()]);
    let reply = push(&sim, &valid(&sim, "ORDER-S")).await.unwrap();
    assert_eq!(reply.status, 200);
    let reply = push(&sim, &valid(&sim, "ORDER-S")).await.unwrap();
    assert_eq!(reply.status, 503);
}
