//! lbbtech over HTTP: start, poll until the result, expiry, order details.

use std::time::Duration;

use platform_sim::{LbbOrder, LbbScript, Platform, SimConfig, SimHandle, Step};
use serde_json::{json, Value};

use crate::http::{self, FORM};
use crate::pyun::{sim, sim_with};

const SIM_ID: &str = "865933034812509";

async fn call(sim: &SimHandle, api: &str, fields: &[(&str, &str)]) -> std::io::Result<http::Reply> {
    let body = http::form(fields.iter().copied());
    http::post(sim.addr(), &format!("/open/{api}"), FORM, &body).await
}

pub async fn start(sim: &SimHandle, sim_id: &str) -> std::io::Result<http::Reply> {
    call(
        sim,
        "newPriceStandardCharge",
        &[
            ("token", "demo-token"),
            ("simId", sim_id),
            ("portNum", "5"),
            ("param", "1"),
            ("payMoney", "20"),
            ("selectPriceType", "1"),
            ("infoPriceId", "42"),
            ("chargeBefore", "0"),
            ("isAdvanceReceive", "0"),
        ],
    )
    .await
}

async fn poll(sim: &SimHandle, key: &str) -> Value {
    call(
        sim,
        "query/result",
        &[("token", "demo-token"), ("resultKey", key)],
    )
    .await
    .unwrap()
    .json()
}

async fn order(sim: &SimHandle, order_num: &str) -> Value {
    call(
        sim,
        "queryChargeOrderDetail",
        &[("token", "demo-token"), ("orderNum", order_num)],
    )
    .await
    .unwrap()
    .json()
}

fn data(reply: &Value, field: &str) -> String {
    reply["data"][field].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn start_then_pending_polls_then_result() {
    let sim = sim().await;
    sim.script_lbbtech(
        SIM_ID,
        LbbScript {
            result_after_polls: 2,
            ..LbbScript::default()
        },
    );
    let reply = start(&sim, SIM_ID).await.unwrap().json();
    assert_eq!(reply["success"], true);
    assert_eq!(reply["data"]["portNum"], 5);
    assert_eq!(reply["data"]["simId"], SIM_ID);
    assert_eq!(reply["data"]["domain"], sim.base_url());
    let key = data(&reply, "resultKey");
    assert!(key.starts_with(&format!("charge_{SIM_ID}_5_")) && key.ends_with('_'));
    let order_num = data(&reply, "orderNum");
    assert_eq!(order_num.len(), 20);
    assert!(order_num.bytes().all(|b| b.is_ascii_digit()));

    for _ in 0..2 {
        assert_eq!(
            poll(&sim, &key).await,
            json!({"success": false, "code": "-1", "error": "结果未返回"})
        );
    }
    assert_eq!(
        poll(&sim, &key).await,
        json!({"success": true, "code": "0", "error": "",
               "data": {"result": 1, "deviceId": SIM_ID, "portNum": 5}})
    );
    assert_eq!(
        order(&sim, &order_num).await,
        json!({"success": true, "code": "0", "data": {"orderNum": order_num, "status": 2}})
    );
    assert_eq!(sim.applied_count(Platform::Lbbtech, SIM_ID), 1);
    assert_eq!(sim.request_count(Platform::Lbbtech, SIM_ID), 5);
}

#[tokio::test]
async fn result_expires_after_the_ttl_and_unknown_keys_are_expired() {
    let sim = sim_with(SimConfig {
        lbbtech_result_ttl: Duration::from_millis(150),
        ..SimConfig::default()
    })
    .await;
    let key = data(&start(&sim, SIM_ID).await.unwrap().json(), "resultKey");
    assert_eq!(poll(&sim, &key).await["data"]["result"], 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let expired = json!({"success": false, "code": "-1", "error": "resultKey已过期"});
    assert_eq!(poll(&sim, &key).await, expired);
    assert_eq!(poll(&sim, "charge_nobody_1_1_").await, expired);
}

#[tokio::test]
async fn failure_result_has_no_order_unless_scripted() {
    let sim = sim().await;
    sim.script_lbbtech(
        SIM_ID,
        LbbScript {
            result: 58,
            ..LbbScript::default()
        },
    );
    sim.script_lbbtech(
        SIM_ID,
        LbbScript {
            never_result: true,
            order: LbbOrder::Status(3),
            order_as_list: true,
            ..LbbScript::default()
        },
    );
    let first = start(&sim, SIM_ID).await.unwrap().json();
    assert_eq!(
        poll(&sim, &data(&first, "resultKey")).await["data"]["result"],
        58
    );
    assert_eq!(
        order(&sim, &data(&first, "orderNum")).await,
        json!({"success": false, "code": "-1", "error": "订单不存在"})
    );

    let second = start(&sim, SIM_ID).await.unwrap().json();
    assert_eq!(
        poll(&sim, &data(&second, "resultKey")).await["error"],
        "结果未返回"
    );
    let order_num = data(&second, "orderNum");
    assert_eq!(
        order(&sim, &order_num).await,
        json!({"success": true, "code": "0", "data": [{"orderNum": order_num, "status": 3}]})
    );
    assert_eq!(sim.applied_count(Platform::Lbbtech, SIM_ID), 2);
}

#[tokio::test]
async fn start_faults() {
    let sim = sim().await;
    sim.script_lbbtech(
        "A",
        LbbScript {
            start: Step::drop_after(),
            ..LbbScript::default()
        },
    );
    sim.script_lbbtech(
        "B",
        LbbScript {
            start: Step::drop_before(),
            ..LbbScript::default()
        },
    );
    sim.script_lbbtech(
        "C",
        LbbScript {
            start: Step::code_message("-1", "设备离线"),
            ..LbbScript::default()
        },
    );
    assert!(start(&sim, "A").await.is_err());
    assert_eq!(sim.applied_count(Platform::Lbbtech, "A"), 1);
    assert!(start(&sim, "B").await.is_err());
    assert_eq!(sim.applied_count(Platform::Lbbtech, "B"), 0);
    assert_eq!(
        start(&sim, "C").await.unwrap().json(),
        json!({"success": false, "code": "-1", "error": "设备离线"})
    );
    assert_eq!(sim.applied_count(Platform::Lbbtech, "C"), 0);
    assert_eq!(sim.applied_keys(Platform::Lbbtech), ["A"]);
    // The dropped reply still carried a result key; the record keeps it for the test.
    let dropped = &sim.requests()[0];
    assert_eq!(dropped.http_status, None);
    assert!(dropped.reply.as_ref().unwrap()["data"]["resultKey"].is_string());
}

#[tokio::test]
async fn wrong_token_and_missing_field() {
    let sim = sim().await;
    let reply = call(
        &sim,
        "newPriceStandardCharge",
        &[("token", "x"), ("simId", SIM_ID)],
    )
    .await
    .unwrap()
    .json();
    assert_eq!(
        reply,
        json!({"code": "-1", "error": "token无效", "success": false})
    );
    let reply = call(
        &sim,
        "newPriceStandardCharge",
        &[("token", "demo-token"), ("simId", SIM_ID)],
    )
    .await
    .unwrap()
    .json();
    assert_eq!(reply["success"], false);
    assert_eq!(reply["error"], "参数portNum不能为空");
    let reply = call(&sim, "query/result", &[("token", "x"), ("resultKey", "k")])
        .await
        .unwrap()
        .json();
    assert_eq!(reply["error"], "token无效");
    assert_eq!(sim.applied_count(Platform::Lbbtech, SIM_ID), 0);
}
