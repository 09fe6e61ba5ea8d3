//! epeis RepairDosageBack over HTTP: authentication, validation, repeated bookings.

use platform_sim::{Platform, SimHandle, Step};
use serde_json::{json, Value};

use crate::http::{self, JSON};
use crate::pyun::sim;

pub fn body(aid: &str) -> Value {
    json!({
        "SYS_HEAD": {
            "CHANNEL_DID": platform_sim::config::DEMO_EPEIS_CHANNEL_DID,
            "DYNAMIC_KEY": platform_sim::config::DEMO_EPEIS_DYNAMIC_KEY,
            "REGISTER_DID": "RG00000000000001",
            "ACCOUNT_DID": "AC00000000000001"
        },
        "COM_METERAGE": {"SETTLEMENT_AID": aid, "NORMAL_RETRO_TYPE": "2"},
        "COM_METER_INFO_TMP": [{
            "DEVICE_DID": "DV00000000000001",
            "NORMAL_RETRO_TYPE": "2",
            "ENERGY_FLOW_TYPE": "1",
            "READINGS_TYPE": "1",
            "ADDED_CONS": 6.56
        }]
    })
}

pub async fn send(sim: &SimHandle, body: &Value) -> std::io::Result<http::Reply> {
    http::post(
        sim.addr(),
        platform_sim::epeis::PATH,
        JSON,
        body.to_string().as_bytes(),
    )
    .await
}

#[tokio::test]
async fn every_valid_request_is_booked_again() {
    let sim = sim().await;
    for _ in 0..2 {
        let reply = send(&sim, &body("SA00000000000001")).await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json(), json!({"CODE": 0, "MESSAGE": "", "DATA": {}}));
    }
    assert_eq!(sim.applied_count(Platform::Epeis, "SA00000000000001"), 2);
    assert_eq!(sim.applied_keys(Platform::Epeis), ["SA00000000000001"]);
    assert_eq!(sim.stats().epeis.duplicates, 1);
    assert_eq!(
        sim.requests()[0].params["COM_METERAGE"]["NORMAL_RETRO_TYPE"],
        "2"
    );
}

#[tokio::test]
async fn wrong_channel_credentials_fail_authentication() {
    let sim = sim().await;
    let mut wrong = body("SA00000000000002");
    wrong["SYS_HEAD"]["DYNAMIC_KEY"] = json!("expired");
    let reply = send(&sim, &wrong).await.unwrap().json();
    assert_eq!(
        reply,
        json!({"CODE": 1001, "MESSAGE": "渠道认证失败", "DATA": {}})
    );
    assert_eq!(sim.applied_count(Platform::Epeis, "SA00000000000002"), 0);
    assert_eq!(sim.request_count(Platform::Epeis, "SA00000000000002"), 1);
}

#[tokio::test]
async fn validation_failure_names_the_field() {
    let sim = sim().await;
    let mut invalid = body("SA00000000000003");
    invalid["COM_METER_INFO_TMP"][0]
        .as_object_mut()
        .unwrap()
        .remove("ENERGY_FLOW_TYPE");
    let reply = send(&sim, &invalid).await.unwrap().json();
    assert_eq!(reply["CODE"], 2001);
    assert!(reply["MESSAGE"]
        .as_str()
        .unwrap()
        .contains("COM_METER_INFO_TMP[0].ENERGY_FLOW_TYPE"));
    let mut empty = body("SA00000000000003");
    empty["COM_METER_INFO_TMP"] = json!([]);
    assert_eq!(send(&sim, &empty).await.unwrap().json()["CODE"], 2001);
    assert_eq!(sim.applied_count(Platform::Epeis, "SA00000000000003"), 0);
}

#[tokio::test]
async fn scripted_code_is_numeric_and_drop_after_books() {
    let sim = sim().await;
    sim.script_epeis(
        "SA00000000000004",
        vec![
            Step::code_message("3001", "结算户不存在"),
            Step::drop_after(),
        ],
    );
    let reply = send(&sim, &body("SA00000000000004")).await.unwrap().json();
    assert_eq!(
        reply,
        json!({"CODE": 3001, "MESSAGE": "结算户不存在", "DATA": {}})
    );
    assert!(send(&sim, &body("SA00000000000004")).await.is_err());
    // The ambiguous case: no reply, yet booked; a blind retry books it twice.
    assert_eq!(sim.applied_count(Platform::Epeis, "SA00000000000004"), 1);
    send(&sim, &body("SA00000000000004")).await.unwrap();
    assert_eq!(sim.applied_count(Platform::Epeis, "SA00000000000004"), 2);
}

#[tokio::test]
async fn path_without_trailing_slash_is_served_too() {
    let sim = sim().await;
    let reply = http::post(
        sim.addr(),
        "/Service/v1/RepairDosageBack",
        JSON,
        body("SA00000000000005").to_string().as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply.json()["CODE"], 0);
    assert!(sim.epeis_url().ends_with("/Service/v1/RepairDosageBack/"));
}
