use std::time::Duration;

use super::payload::is_utc_second;
use super::*;

const SECRET: &str = "6409292d66625a2a0912acfc61ed956c";

/// The request example of the seed contract (003) and its `sign`.
fn vector() -> Vec<(&'static str, &'static str)> {
    vec![
        ("fee_value", "561"),
        ("total_value", "1156"),
        ("quantity", "5682"),
        ("replenish_order", "20230410183256K7fh6t"),
        ("end_time", "2023-04-10T18:32:56Z"),
        ("device_no", "S1"),
        ("energy_code", "CN_AC"),
        ("start_time", "2023-04-10T17:32:56Z"),
        ("energy_value", "595"),
        ("vin", "川A660N2"),
        ("station_uuid", "8f5fdb60-9374-4c11-bdc2-a32d8369258c"),
        ("app_id", "op00961963581daa7"),
        ("timestamp", "1681122776000"),
        ("port_no", "1"),
    ]
}

#[test]
fn seed_request_example() {
    assert_eq!(sign(&vector(), SECRET), "4EC351C604ECB191964EB67565AA8E87");
}

/// The public test vector of the public 4pyun open-platform docs.
#[test]
fn public_test_vector() {
    let params = [
        ("app_id", "op00961963581daa7"),
        ("device_no", "S1"),
        ("end_time", "2023-04-11T09:20:00Z"),
        ("energy_code", "CN_AC"),
        ("energy_value", "207"),
        ("fee_value", "975"),
        ("port_no", "1"),
        ("quantity", "6556"),
        ("replenish_order", "202304110920004SfjdX"),
        ("start_time", "2023-04-11T08:20:00Z"),
        ("station_uuid", "8f5fdb60-9374-4c11-bdc2-a32d8369258c"),
        ("timestamp", "1681176000816"),
        ("total_value", "1182"),
        ("vin", "川A660N2"),
    ];
    assert_eq!(sign(&params, SECRET), "90A80901298B87DC9E15DE9F236FD164");
}

#[test]
fn signature_ignores_order_sign_and_empty_values() {
    let mut v = vector();
    v.reverse();
    v.push(("sign", "WHATEVER"));
    v.push(("note", "  "));
    assert_eq!(sign(&v, SECRET), "4EC351C604ECB191964EB67565AA8E87");
    v.push(("extra", "x"));
    assert_ne!(sign(&v, SECRET), "4EC351C604ECB191964EB67565AA8E87");
}

fn payload() -> serde_json::Value {
    serde_json::json!({
        "fee_value": 561, "total_value": 1156, "quantity": "5682",
        "replenish_order": "20230410183256K7fh6t", "end_time": "2023-04-10T18:32:56Z",
        "device_no": "S1", "energy_code": "CN_AC", "start_time": "2023-04-10T17:32:56Z",
        "energy_value": 595, "vin": "川A660N2", "station_uuid": "8f5fdb60-9374-4c11-bdc2-a32d8369258c",
        "port_no": "1"
    })
}

#[test]
fn form_body_signs_what_it_sends() {
    let fields = validate(&payload().to_string(), "20230410183256K7fh6t").unwrap();
    let body = form_body(
        &fields,
        "op00961963581daa7",
        &Secret::new(SECRET),
        1681122776000,
    );
    let sent: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let sign_sent = sent.iter().find(|(k, _)| k == "sign").unwrap().1.clone();
    assert_eq!(sign_sent, "4EC351C604ECB191964EB67565AA8E87");
    assert!(!body.contains(SECRET));
}

#[test]
fn invalid_payloads_name_the_field() {
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            serde_json::json!({"start_time": null}),
            "`start_time` is required",
        ),
        (
            serde_json::json!({"start_time": "2023-04-11 08:20:00"}),
            "`start_time` must be UTC",
        ),
        (
            serde_json::json!({"end_time": "2023-02-30T09:20:00Z"}),
            "`end_time` must be UTC",
        ),
        (
            serde_json::json!({"end_time": "2023-04-10T17:32:55Z"}),
            "`end_time` (2023-04-10T17:32:55Z) is before",
        ),
        (
            serde_json::json!({"energy_code": "CN_XX"}),
            "`energy_code` must be CN_AC or CN_DC",
        ),
        (
            serde_json::json!({"quantity": -1}),
            "`quantity` must be a non-negative whole number",
        ),
        (
            serde_json::json!({"fee_value": 9.75}),
            "`fee_value` must be",
        ),
        (
            serde_json::json!({"total_value": "12a"}),
            "`total_value` must be",
        ),
        (
            serde_json::json!({"replenish_order": "OTHER"}),
            "must equal the row's idempotency_key",
        ),
        (
            serde_json::json!({"sign": "X"}),
            "`sign` must not be in the payload",
        ),
        (
            serde_json::json!({"colour": "red"}),
            "unknown field `colour`",
        ),
        (serde_json::json!({"vin": 5}), "`vin` must be a string"),
        (
            serde_json::json!({"device_no": ""}),
            "`device_no` must not be empty",
        ),
        (
            serde_json::json!({"device_no": "S\u{0}1"}),
            "`device_no` contains a control character",
        ),
        (
            serde_json::json!({"station_uuid": "x".repeat(129)}),
            "`station_uuid` is 129 characters long",
        ),
    ];
    for (patch, needle) in cases {
        let mut p = payload();
        for (k, v) in patch.as_object().unwrap() {
            p[k] = v.clone();
        }
        let err = validate(&p.to_string(), "20230410183256K7fh6t").unwrap_err();
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    assert!(validate("[1]", "k").unwrap_err().contains("JSON object"));
    assert!(validate("{not json", "k")
        .unwrap_err()
        .contains("not valid JSON"));
    assert!(validate(&payload().to_string(), "20230410183256K7fh6t").is_ok());
}

#[test]
fn utc_seconds() {
    assert!(is_utc_second("2024-02-29T23:59:59Z"));
    assert!(!is_utc_second("2023-02-29T00:00:00Z"));
    assert!(!is_utc_second("2023-04-11T24:00:00Z"));
    assert!(!is_utc_second("2023-04-11T08:20:00.000Z"));
    assert!(!is_utc_second("2023-04-11T08:20:00+08"));
    assert!(!is_utc_second("2023-04-1１T08:20:00Z"));
}

fn verdict(status: u16, body: &str) -> Verdict {
    classify(status, None, body, &PyunCodes::default()).verdict
}

#[test]
fn classifies_the_documented_replies() {
    // Seed examples.
    assert_eq!(
        verdict(
            200,
            r#"{"code":"200","message":"OK","seqno":"abc6c253b93cc940"}"#
        ),
        Verdict::Delivered {
            hint: None,
            result: None
        }
    );
    let hinted = classify(
        200,
        None,
        r#"{"code":"200","message":"已忽略当前请求","hint":"签名验证不通过","seqno":"e820972bdf2eaf19"}"#,
        &PyunCodes::default(),
    );
    assert_eq!(
        hinted.verdict,
        Verdict::Delivered {
            hint: Some("签名验证不通过".into()),
            result: None
        }
    );
    assert_eq!(hinted.hint.as_deref(), Some("签名验证不通过"));
    assert!(matches!(
        verdict(200, r#"{"code":"400","message":"请求参数错误","hint":"`start_time` required~","seqno":"48bf"}"#),
        Verdict::Permanent { reason } if reason.contains("`start_time` required~") && reason.contains("48bf")
    ));
    assert!(matches!(
        verdict(200, r#"{"code":"500","message":"服务器内部错误"}"#),
        Verdict::Retry { .. }
    ));
    assert!(matches!(
        verdict(200, r#"{"code":"503","message":"服务暂不可用"}"#),
        Verdict::Retry { .. }
    ));
    // Current docs.
    assert!(matches!(
        verdict(200, r#"{"code":"1001","message":"ok"}"#),
        Verdict::Delivered { .. }
    ));
    assert!(matches!(
        verdict(200, r#"{"code":"1002","message":"无停车记录"}"#),
        Verdict::Completed { .. }
    ));
    assert!(matches!(
        verdict(200, r#"{"code":"401","message":"sign"}"#),
        Verdict::Permanent { .. }
    ));
    assert!(matches!(
        verdict(200, r#"{"code":1503}"#),
        Verdict::Retry { .. }
    ));
    // Transport-level.
    assert!(matches!(verdict(503, ""), Verdict::Retry { .. }));
    assert!(matches!(verdict(429, ""), Verdict::Retry { .. }));
    assert!(matches!(
        verdict(200, "<html>bad gateway</html>"),
        Verdict::Retry { .. }
    ));
    assert!(matches!(
        verdict(200, r#"{"message":"no code"}"#),
        Verdict::Retry { .. }
    ));
    assert!(
        matches!(verdict(404, "not found"), Verdict::Permanent { reason } if reason.contains("url"))
    );
    assert!(
        matches!(verdict(200, r#"{"code":"777"}"#), Verdict::Retry { reason, .. } if reason.contains("code table"))
    );
    let ra = classify(503, Some(Duration::from_secs(7)), "", &PyunCodes::default());
    assert_eq!(
        ra.verdict,
        Verdict::Retry {
            reason: "HTTP 503 from 4pyun".into(),
            retry_after: Some(Duration::from_secs(7))
        }
    );
}

#[test]
fn code_table_is_configurable() {
    let codes = PyunCodes {
        success: vec!["OK".into()],
        ..PyunCodes::default()
    };
    assert!(matches!(
        classify(200, None, r#"{"code":"OK"}"#, &codes).verdict,
        Verdict::Delivered { .. }
    ));
    assert!(matches!(
        classify(200, None, r#"{"code":"200"}"#, &codes).verdict,
        Verdict::Retry { .. }
    ));
}

#[test]
fn each_documented_code_is_blamed_on_the_row_the_sink_or_the_link() {
    use crate::health::SinkCause::{Auth, Clock, Config, Unavailable};
    use crate::outcome::Blame;
    let blame = |status: u16, body: &str| classify(status, None, body, &PyunCodes::default()).blame;
    let code = |c: &str, hint: Option<&str>| {
        let mut reply = serde_json::json!({"code": c, "message": "m", "seqno": "1"});
        if let Some(h) = hint {
            reply["hint"] = h.into();
        }
        blame(200, &reply.to_string())
    };
    // A parameter the hint names: the row's.
    assert_eq!(code("400", Some("`vin` is required")), Blame::Row);
    assert_eq!(code("1400", None), Blame::Row);
    // Signature and app_id: the sink's credentials.
    assert_eq!(code("401", None), Blame::Sink(Auth));
    assert_eq!(code("1401", None), Blame::Sink(Auth));
    assert_eq!(code("403", Some("app_id unknown")), Blame::Sink(Auth));
    // The 10-minute timestamp window: the clock.
    assert_eq!(
        code("403", Some("timestamp out of window")),
        Blame::Sink(Clock)
    );
    // The platform's own errors, a reply that is not JSON, HTTP 5xx/429: toward a streak.
    for c in ["500", "503", "1500", "1503"] {
        assert_eq!(code(c, None), Blame::Sink(Unavailable), "{c}");
    }
    assert_eq!(blame(200, "<html>"), Blame::Sink(Unavailable));
    assert_eq!(blame(503, ""), Blame::Sink(Unavailable));
    assert_eq!(blame(429, ""), Blame::Sink(Unavailable));
    // HTTP 401/403 credentials, 404 the URL.
    assert_eq!(blame(401, ""), Blame::Sink(Auth));
    assert_eq!(blame(403, ""), Blame::Sink(Auth));
    assert_eq!(blame(404, ""), Blame::Sink(Config));
    // Final answers say nothing against the row or the sink.
    assert_eq!(code("1002", None), Blame::Row);
}
