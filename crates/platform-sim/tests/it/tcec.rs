//! T/CEC over HTTP: tokens, envelope checks, signed and encrypted replies, scripts.

use std::time::Duration;

use platform_sim::tcec::{self, TcecSim};
use platform_sim::{Platform, SimHandle, SimScript};
use serde_json::{json, Value};

use crate::http;
use crate::pyun::sim;

/// The demo platform's secrets, to build requests and read replies.
fn client() -> TcecSim {
    TcecSim::default()
}

fn order(seq: &str) -> Value {
    json!({
        "StartChargeSeq": seq, "ConnectorID": "C1",
        "StartTime": "2024-05-01 10:00:00", "EndTime": "2024-05-01 11:00:00",
        "TotalPower": 12.5, "TotalElecMoney": 10.1, "TotalSeviceMoney": 5.2, "TotalMoney": 15.3,
        "StopReason": 0, "SumPeriod": 1,
        "ChargeDetails": [{"DetailStartTime": "2024-05-01 10:00:00",
            "DetailEndTime": "2024-05-01 11:00:00", "ElecPrice": 0.808, "SevicePrice": 0.416,
            "DetailPower": 12.5, "DetailElecMoney": 10.1, "DetailSeviceMoney": 5.2}]
    })
}

async fn call(sim: &SimHandle, interface: &str, token: Option<&str>, body: &Value) -> http::Reply {
    // The test client writes its Content-Type line verbatim: the bearer rides along on it.
    let content_type = match token {
        Some(token) => format!("{}\r\nAuthorization: Bearer {token}", http::JSON),
        None => http::JSON.to_owned(),
    };
    let path = format!("{}/{interface}", tcec::BASE_PATH);
    http::post(
        sim.addr(),
        &path,
        &content_type,
        body.to_string().as_bytes(),
    )
    .await
    .unwrap()
}

/// Sends `data` sealed with the demo secrets; returns (Ret, Msg, Data) of a verified reply.
async fn push(
    sim: &SimHandle,
    interface: &str,
    token: Option<&str>,
    data: &Value,
) -> (i64, String, Option<Value>) {
    let body = client().seal_request(data, "20240501100000", "0001");
    let reply = call(sim, interface, token, &body).await;
    assert_eq!(reply.status, 200);
    client()
        .open_reply(&reply.json())
        .expect("reply signed with the SigSecret")
}

async fn token(sim: &SimHandle) -> String {
    let data =
        json!({"OperatorID": tcec::DEMO_OPERATOR_ID, "OperatorSecret": tcec::DEMO_OPERATOR_SECRET});
    let (ret, _, data) = push(sim, tcec::QUERY_TOKEN, None, &data).await;
    assert_eq!(ret, 0);
    let data = data.unwrap();
    assert_eq!(data["SuccStat"], 0);
    assert_eq!(data["TokenAvailableTime"], 7200);
    data["AccessToken"].as_str().unwrap().to_owned()
}

fn script(value: Value) -> SimScript {
    serde_json::from_value(json!({ "tcec": value })).unwrap()
}

#[tokio::test]
async fn order_is_confirmed_once_and_a_resend_is_a_duplicate() {
    let sim = sim().await;
    let token = token(&sim).await;
    for _ in 0..2 {
        let (ret, _, data) = push(&sim, tcec::CHARGE_ORDER, Some(&token), &order("O-1")).await;
        assert_eq!(ret, 0);
        assert_eq!(
            data.unwrap(),
            json!({"StartChargeSeq": "O-1", "ConnectorID": "C1", "ConfirmResult": 0})
        );
    }
    assert_eq!(sim.request_count(Platform::Tcec, "O-1"), 2);
    assert_eq!(sim.applied_count(Platform::Tcec, "O-1"), 1);
    assert_eq!(sim.stats().tcec.duplicates, 1);
    assert!(sim.tcec_url().ends_with("/evcs/v20160701"));
    // The recorded params are the decrypted Data; the token request's secret is not kept.
    let requests = sim.requests();
    assert_eq!(requests[1].params["StartChargeSeq"], "O-1");
    assert_eq!(requests[0].params["OperatorSecret"], "[redacted]");
}

#[tokio::test]
async fn token_refused_for_unknown_operator_or_wrong_secret() {
    let sim = sim().await;
    for (data, reason) in [
        (
            json!({"OperatorID": "999999999", "OperatorSecret": tcec::DEMO_OPERATOR_SECRET}),
            1,
        ),
        (
            json!({"OperatorID": tcec::DEMO_OPERATOR_ID, "OperatorSecret": "wrong"}),
            2,
        ),
    ] {
        let (ret, _, data) = push(&sim, tcec::QUERY_TOKEN, None, &data).await;
        assert_eq!(ret, 0);
        let data = data.unwrap();
        assert_eq!(
            (data["SuccStat"].clone(), data["FailReason"].clone()),
            (json!(1), json!(reason))
        );
    }
}

#[tokio::test]
async fn envelope_and_token_are_checked_on_every_request() {
    let sim = sim().await;
    // No token, a made-up token.
    for token in [None, Some("tok-made-up")] {
        let (ret, _, _) = push(&sim, tcec::CHARGE_ORDER, token, &order("O-2")).await;
        assert_eq!(ret, 4002);
    }
    let token = token(&sim).await;
    // A request signed with another SigSecret.
    let mut body = client().seal_request(&order("O-2"), "20240501100000", "0001");
    body["Sig"] = json!("00000000000000000000000000000000");
    let reply = client()
        .open_reply(
            &call(&sim, tcec::CHARGE_ORDER, Some(&token), &body)
                .await
                .json(),
        )
        .unwrap();
    assert_eq!(reply.0, 4001);
    // Encrypted with another DataSecret, signed correctly.
    let mut other = client();
    other.data_secret = "0000000000000000".into();
    let body = other.seal_request(&order("O-2"), "20240501100000", "0001");
    let reply = client()
        .open_reply(
            &call(&sim, tcec::CHARGE_ORDER, Some(&token), &body)
                .await
                .json(),
        )
        .unwrap();
    assert_eq!(reply.0, 4001);
    // Not an envelope.
    let reply = call(&sim, tcec::CHARGE_ORDER, Some(&token), &json!({"x": 1})).await;
    assert_eq!(client().open_reply(&reply.json()).unwrap().0, 4003);
    // A business error names the field.
    let mut bad = order("O-2");
    bad["SumPeriod"] = json!(3);
    let (ret, msg, _) = push(&sim, tcec::CHARGE_ORDER, Some(&token), &bad).await;
    assert_eq!(ret, 4004);
    assert!(msg.contains("SumPeriod"), "{msg}");
    assert_eq!(sim.applied_count(Platform::Tcec, "O-2"), 0);
    // Unknown interface.
    let reply = call(&sim, "notification_nothing", Some(&token), &json!({})).await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn tokens_expire_after_their_available_time() {
    let sim = sim().await;
    sim.apply_script(script(json!({"token_available_time": 1})));
    let data =
        json!({"OperatorID": tcec::DEMO_OPERATOR_ID, "OperatorSecret": tcec::DEMO_OPERATOR_SECRET});
    let (_, _, data) = push(&sim, tcec::QUERY_TOKEN, None, &data).await;
    let data = data.unwrap();
    assert_eq!(data["TokenAvailableTime"], 1);
    let token = data["AccessToken"].as_str().unwrap().to_owned();
    assert_eq!(
        push(&sim, tcec::CHARGE_ORDER, Some(&token), &order("O-3"))
            .await
            .0,
        0
    );
    // Real expiry is the thing under test: there is no signal to wait for but the clock.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        push(&sim, tcec::CHARGE_ORDER, Some(&token), &order("O-3"))
            .await
            .0,
        4002
    );
}

#[tokio::test]
async fn scripted_steps() {
    let sim = sim().await;
    sim.apply_script(script(json!({
        "pushes": {
            "O-4": [{"ret": 500}, {"expire_token": true}, {"confirm_result": 1}],
            "O-5": [{"ret": 4004, "msg": "枪编号不存在"}, {"bad_sig": true}],
            "O-6": [{"http": 503}, {"drop": "after"}],
            "C9": [{"confirm_result": 1}]
        },
        "token": [{"fail_reason": 2}, {"ret": -1}]
    })));
    let data =
        json!({"OperatorID": tcec::DEMO_OPERATOR_ID, "OperatorSecret": tcec::DEMO_OPERATOR_SECRET});
    let (_, _, refused) = push(&sim, tcec::QUERY_TOKEN, None, &data).await;
    assert_eq!(refused.unwrap()["FailReason"], 2);
    assert_eq!(push(&sim, tcec::QUERY_TOKEN, None, &data).await.0, -1);
    let first = token(&sim).await;

    assert_eq!(
        push(&sim, tcec::CHARGE_ORDER, Some(&first), &order("O-4"))
            .await
            .0,
        500
    );
    assert_eq!(
        push(&sim, tcec::CHARGE_ORDER, Some(&first), &order("O-4"))
            .await
            .0,
        4002
    );
    // The revoked token stays revoked; a new one works.
    assert_eq!(
        push(&sim, tcec::CHARGE_ORDER, Some(&first), &order("O-4"))
            .await
            .0,
        4002
    );
    let second = token(&sim).await;
    let (ret, _, data) = push(&sim, tcec::CHARGE_ORDER, Some(&second), &order("O-4")).await;
    assert_eq!((ret, data.unwrap()["ConfirmResult"].clone()), (0, json!(1)));
    assert_eq!(sim.applied_count(Platform::Tcec, "O-4"), 1);

    let (ret, msg, _) = push(&sim, tcec::CHARGE_ORDER, Some(&second), &order("O-5")).await;
    assert_eq!((ret, msg.as_str()), (4004, "枪编号不存在"));
    let body = client().seal_request(&order("O-5"), "20240501100000", "0002");
    let forged = call(&sim, tcec::CHARGE_ORDER, Some(&second), &body)
        .await
        .json();
    assert_eq!(forged["Ret"], 0);
    assert!(
        client().open_reply(&forged).is_none(),
        "reply Sig must not verify"
    );
    assert_eq!(sim.applied_count(Platform::Tcec, "O-5"), 1);

    let body = client().seal_request(&order("O-6"), "20240501100000", "0003");
    assert_eq!(
        call(&sim, tcec::CHARGE_ORDER, Some(&second), &body)
            .await
            .status,
        503
    );
    assert_eq!(sim.applied_count(Platform::Tcec, "O-6"), 0);
    let path = format!("{}/{}", tcec::BASE_PATH, tcec::CHARGE_ORDER);
    let content_type = format!("{}\r\nAuthorization: Bearer {second}", http::JSON);
    assert!(http::post(
        sim.addr(),
        &path,
        &content_type,
        body.to_string().as_bytes()
    )
    .await
    .is_err());
    assert_eq!(sim.applied_count(Platform::Tcec, "O-6"), 1);

    let status = json!({"ConnectorStatusInfo": {"ConnectorID": "C9", "Status": 3}});
    let (ret, _, data) = push(&sim, tcec::STATION_STATUS, Some(&second), &status).await;
    assert_eq!((ret, data.unwrap()), (0, json!({"Status": 1})));
    let (_, _, data) = push(&sim, tcec::STATION_STATUS, Some(&second), &status).await;
    assert_eq!(data.unwrap(), json!({"Status": 0}));
    assert_eq!(sim.applied_count(Platform::Tcec, "C9"), 2);
}
