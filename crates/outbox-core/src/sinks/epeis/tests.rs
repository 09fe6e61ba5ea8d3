use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::sinks::send::SendError;
use crate::sinks::{PlatformConfig, SinkConfig};

const KEY: &str = "DK00000000000000000000000000000000000000000000000000000000000001";

fn payload() -> Value {
    json!({
        "COM_METERAGE": {"SETTLEMENT_AID": "SA00000000000001", "NORMAL_RETRO_TYPE": "2"},
        "COM_METER_INFO_TMP": [
            {"DEVICE_DID": "DV00000000000001", "NORMAL_RETRO_TYPE": "2",
             "ENERGY_FLOW_TYPE": "1", "READINGS_TYPE": "1", "ADDED_CONS": 12.5},
            {"DEVICE_DID": "DV00000000000002", "NORMAL_RETRO_TYPE": 1,
             "ENERGY_FLOW_TYPE": 2, "READINGS_TYPE": 8, "ADDED_CONS": "-3.05"}
        ]
    })
}

fn head(secret: &Secret) -> Head<'_> {
    Head {
        channel_did: "CH00000000000001",
        dynamic_key: secret,
        register_did: "RG00000000000001",
        account_did: "AC00000000000001",
    }
}

/// Applies `patch` (a JSON pointer → value; `null` removes) to a valid payload.
fn invalid(pointer: &str, value: Value) -> String {
    let mut p = payload();
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    let target = p.pointer_mut(parent).unwrap();
    match (target, value) {
        (Value::Object(m), Value::Null) => {
            m.remove(last);
        }
        (Value::Object(m), v) => {
            m.insert(last.to_string(), v);
        }
        (Value::Array(a), v) => a[last.parse::<usize>().unwrap()] = v,
        _ => panic!("bad pointer {pointer}"),
    }
    validate(&p.to_string()).unwrap_err()
}

#[test]
fn a_valid_payload_is_normalised() {
    let d = validate(&payload().to_string()).unwrap();
    assert_eq!(d.settlement_aid, "SA00000000000001");
    assert_eq!(d.normal_retro_type, "2");
    assert_eq!(
        (d.register_did.as_deref(), d.account_did.as_deref()),
        (None, None)
    );
    assert_eq!(
        d.meters[1],
        Meter {
            device_did: "DV00000000000002".into(),
            normal_retro_type: "1".into(),
            energy_flow_type: "2".into(),
            readings_type: "8".into(),
            added_cons: "-3.05".into(),
        }
    );
    assert_eq!(d.meters[0].added_cons, "12.5");
}

#[test]
fn every_field_rule_names_the_field() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/COM_METERAGE", Value::Null, "`COM_METERAGE` is required"),
        (
            "/COM_METERAGE",
            json!([1]),
            "`COM_METERAGE` must be a JSON object",
        ),
        (
            "/COM_METERAGE/SETTLEMENT_AID",
            Value::Null,
            "`COM_METERAGE.SETTLEMENT_AID` is required",
        ),
        (
            "/COM_METERAGE/SETTLEMENT_AID",
            json!(""),
            "`COM_METERAGE.SETTLEMENT_AID` must not be empty",
        ),
        (
            "/COM_METERAGE/SETTLEMENT_AID",
            json!(12),
            "`COM_METERAGE.SETTLEMENT_AID` must be a string",
        ),
        (
            "/COM_METERAGE/SETTLEMENT_AID",
            json!("SA000000000000017"),
            "`COM_METERAGE.SETTLEMENT_AID` must be at most 16 characters, got 17",
        ),
        (
            "/COM_METERAGE/NORMAL_RETRO_TYPE",
            json!("3"),
            "`COM_METERAGE.NORMAL_RETRO_TYPE` must be 1 or 2",
        ),
        (
            "/COM_METERAGE/NORMAL_RETRO_TYPE",
            json!("01"),
            "`COM_METERAGE.NORMAL_RETRO_TYPE` must be 1 or 2",
        ),
        (
            "/COM_METERAGE/NORMAL_RETRO_TYPE",
            json!(1.0),
            "`COM_METERAGE.NORMAL_RETRO_TYPE` must be 1 or 2",
        ),
        (
            "/COM_METERAGE/NORMAL_RETRO_TYPE",
            Value::Null,
            "`COM_METERAGE.NORMAL_RETRO_TYPE` is required",
        ),
        (
            "/COM_METERAGE/EXTRA",
            json!(1),
            "unknown field `COM_METERAGE.EXTRA`",
        ),
        (
            "/COM_METER_INFO_TMP",
            json!([]),
            "`COM_METER_INFO_TMP` must not be empty",
        ),
        (
            "/COM_METER_INFO_TMP",
            Value::Null,
            "`COM_METER_INFO_TMP` is required",
        ),
        (
            "/COM_METER_INFO_TMP",
            json!({"a": 1}),
            "`COM_METER_INFO_TMP` must be an array",
        ),
        (
            "/COM_METER_INFO_TMP/1",
            json!("meter"),
            "`COM_METER_INFO_TMP[1]` must be a JSON object",
        ),
        (
            "/COM_METER_INFO_TMP/0/DEVICE_DID",
            Value::Null,
            "`COM_METER_INFO_TMP[0].DEVICE_DID` is required",
        ),
        (
            "/COM_METER_INFO_TMP/0/DEVICE_DID",
            json!("设备000000000000001"),
            "`COM_METER_INFO_TMP[0].DEVICE_DID` must be at most 16 characters, got 17",
        ),
        (
            "/COM_METER_INFO_TMP/1/NORMAL_RETRO_TYPE",
            json!(0),
            "`COM_METER_INFO_TMP[1].NORMAL_RETRO_TYPE` must be 1 or 2",
        ),
        (
            "/COM_METER_INFO_TMP/1/ENERGY_FLOW_TYPE",
            json!("3"),
            "`COM_METER_INFO_TMP[1].ENERGY_FLOW_TYPE` must be 1 or 2",
        ),
        (
            "/COM_METER_INFO_TMP/1/READINGS_TYPE",
            json!(9),
            "`COM_METER_INFO_TMP[1].READINGS_TYPE` must be 1 to 8",
        ),
        (
            "/COM_METER_INFO_TMP/1/READINGS_TYPE",
            json!(-1),
            "`COM_METER_INFO_TMP[1].READINGS_TYPE` must be 1 to 8",
        ),
        (
            "/COM_METER_INFO_TMP/1/READINGS_TYPE",
            json!(true),
            "`COM_METER_INFO_TMP[1].READINGS_TYPE` must be 1 to 8",
        ),
        (
            "/COM_METER_INFO_TMP/0/ADDED_CONS",
            Value::Null,
            "`COM_METER_INFO_TMP[0].ADDED_CONS` is required",
        ),
        (
            "/COM_METER_INFO_TMP/0/ADDED_CONS",
            json!(1.234),
            "`COM_METER_INFO_TMP[0].ADDED_CONS` has 3 decimals",
        ),
        (
            "/COM_METER_INFO_TMP/0/ADDED_CONS",
            json!("12.345"),
            "`COM_METER_INFO_TMP[0].ADDED_CONS` has 3 decimals",
        ),
        (
            "/COM_METER_INFO_TMP/0/ADDED_CONS",
            json!(123456789012345_i64),
            "`COM_METER_INFO_TMP[0].ADDED_CONS` has 15 digits before the decimal point",
        ),
        (
            "/COM_METER_INFO_TMP/0/ADDED_CONS",
            json!("12,5"),
            "`COM_METER_INFO_TMP[0].ADDED_CONS` must be a decimal number",
        ),
        (
            "/COM_METER_INFO_TMP/0/ADDED_CONS",
            json!([1]),
            "`COM_METER_INFO_TMP[0].ADDED_CONS` must be a number",
        ),
        (
            "/COM_METER_INFO_TMP/0/COLOUR",
            json!("red"),
            "unknown field `COM_METER_INFO_TMP[0].COLOUR`",
        ),
        (
            "/REGISTER_DID",
            json!("RG0000000000001"),
            "`REGISTER_DID` must be exactly 16 characters, got 15",
        ),
        ("/ACCOUNT_DID", json!(5), "`ACCOUNT_DID` must be a string"),
        (
            "/SYS_HEAD",
            json!({"ACCOUNT_DID": "AC000000000000001"}),
            "`SYS_HEAD.ACCOUNT_DID` must be exactly 16 characters, got 17",
        ),
        (
            "/SYS_HEAD",
            json!({"NOTE": "x"}),
            "unknown field `SYS_HEAD.NOTE`",
        ),
        (
            "/SYS_HEAD",
            json!("head"),
            "`SYS_HEAD` must be a JSON object",
        ),
        ("/colour", json!("red"), "unknown field `colour`"),
    ];
    for (pointer, value, needle) in cases {
        let err = invalid(pointer, value.clone());
        assert!(err.starts_with("invalid dosage payload: "), "{err}");
        assert!(
            err.contains(needle),
            "{pointer} = {value}: {needle:?} not in {err:?}"
        );
    }
    assert!(validate("[1]").unwrap_err().contains("JSON object"));
    assert!(validate("{not json")
        .unwrap_err()
        .contains("not valid JSON"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut p = payload();
    p["COM_METERAGE"]["NORMAL_RETRO_TYPE"] = json!(7);
    p["COM_METER_INFO_TMP"][1]["READINGS_TYPE"] = json!("9");
    let err = validate(&p.to_string()).unwrap_err();
    assert!(err.contains("COM_METERAGE.NORMAL_RETRO_TYPE"), "{err}");
    assert!(err.contains("COM_METER_INFO_TMP[1].READINGS_TYPE"), "{err}");
}

#[test]
fn credentials_are_refused_anywhere_in_the_payload() {
    for (patch, path) in [
        (json!({"DYNAMIC_KEY": "x"}), "`DYNAMIC_KEY`"),
        (
            json!({"SYS_HEAD": {"DYNAMIC_KEY": "x"}}),
            "`SYS_HEAD.DYNAMIC_KEY`",
        ),
        (
            json!({"SYS_HEAD": {"CHANNEL_DID": "CH00000000000001"}}),
            "`SYS_HEAD.CHANNEL_DID`",
        ),
        (json!({"channel_did": "x"}), "`channel_did`"),
    ] {
        let mut p = payload();
        for (k, v) in patch.as_object().unwrap() {
            p[k] = v.clone();
        }
        let err = validate(&p.to_string()).unwrap_err();
        assert!(
            err.contains(path) && err.contains("secrets don't belong in the outbox"),
            "{err}"
        );
        assert!(!err.contains("unknown field"), "reported once: {err}");
    }
    let mut p = payload();
    p["COM_METER_INFO_TMP"][1]["DYNAMIC_KEY"] = json!("x");
    let err = validate(&p.to_string()).unwrap_err();
    assert!(
        err.contains("`COM_METER_INFO_TMP[1].DYNAMIC_KEY` must not be in the payload"),
        "{err}"
    );
}

#[test]
fn overrides_at_the_top_or_in_sys_head_but_not_both() {
    let mut p = payload();
    p["REGISTER_DID"] = json!("RG00000000000009");
    p["SYS_HEAD"] = json!({"ACCOUNT_DID": "AC00000000000009"});
    let d = validate(&p.to_string()).unwrap();
    assert_eq!(d.register_did.as_deref(), Some("RG00000000000009"));
    assert_eq!(d.account_did.as_deref(), Some("AC00000000000009"));
    p["SYS_HEAD"]["REGISTER_DID"] = json!("RG00000000000009");
    let err = validate(&p.to_string()).unwrap_err();
    assert!(err.contains("`REGISTER_DID` is given both"), "{err}");
    // null means "not given".
    let mut q = payload();
    q["REGISTER_DID"] = Value::Null;
    assert_eq!(validate(&q.to_string()).unwrap().register_did, None);
}

#[test]
fn added_cons_is_checked_on_its_decimal_text() {
    let ok = |v: Value, want: &str| assert_eq!(decimal_text(&v).as_deref(), Ok(want), "{v}");
    ok(json!(0), "0");
    ok(json!(12), "12");
    ok(json!(12.5), "12.5");
    ok(json!(-3.25), "-3.25");
    ok(json!(0.1), "0.1");
    ok(json!(12345678901234_i64), "12345678901234");
    ok(json!(12345678901234.56), "12345678901234.56");
    ok(json!("12.50"), "12.50");
    ok(json!("007.10"), "7.10");
    ok(json!("-0.00"), "-0.00");
    // Beyond f64's cents, a string still carries the exact value.
    ok(json!("99999999999999.99"), "99999999999999.99");
    ok(json!("70368744177664.09"), "70368744177664.09");

    let err = |v: Value, needle: &str| {
        let e = decimal_text(&v).unwrap_err();
        assert!(e.contains(needle), "{v}: {needle:?} not in {e:?}");
    };
    // 0.1 + 0.2 as a producer's f64 arithmetic leaves it.
    err(json!(0.1 + 0.2), "has 17 decimals");
    err(json!(1.005), "has 3 decimals");
    err(json!(1e-7), "more than 2 decimals");
    err(json!(1e20), "too large for a JSON number");
    // As a producer's JSON text has it: an f64 cannot hold these cents.
    let parsed: Value = serde_json::from_str("70368744177664.09").unwrap();
    err(parsed, "send it as a decimal string");
    err(json!(123456789012345_u64), "15 digits before");
    err(json!("123456789012345"), "15 digits before");
    for bad in ["", "-", "1.", ".5", "+1", "1e3", " 1", "1.2.3", "NaN", "１"] {
        err(json!(bad), "must be a decimal number");
    }
    err(json!(true), "must be a number");
}

#[test]
fn request_body_has_the_seed_shape_with_strings_and_numbers() {
    let secret = Secret::new(KEY);
    let d = validate(&payload().to_string()).unwrap();
    let body = request_body(&d, &head(&secret));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({
            "SYS_HEAD": {
                "CHANNEL_DID": "CH00000000000001",
                "DYNAMIC_KEY": KEY,
                "REGISTER_DID": "RG00000000000001",
                "ACCOUNT_DID": "AC00000000000001"
            },
            "COM_METERAGE": {"SETTLEMENT_AID": "SA00000000000001", "NORMAL_RETRO_TYPE": "2"},
            "COM_METER_INFO_TMP": [
                {"DEVICE_DID": "DV00000000000001", "NORMAL_RETRO_TYPE": "2",
                 "ENERGY_FLOW_TYPE": "1", "READINGS_TYPE": "1", "ADDED_CONS": 12.5},
                {"DEVICE_DID": "DV00000000000002", "NORMAL_RETRO_TYPE": "1",
                 "ENERGY_FLOW_TYPE": "2", "READINGS_TYPE": "8", "ADDED_CONS": -3.05}
            ]
        })
    );
    // Same top-level and SYS_HEAD keys as the seed's request example.
    let seed: Value = serde_json::from_str(
            r#"{"SYS_HEAD":{"CHANNEL_DID":"","DYNAMIC_KEY":"","REGISTER_DID":"","ACCOUNT_DID":""},
                "COM_METERAGE":{"SETTLEMENT_AID":"","NORMAL_RETRO_TYPE":""},
                "COM_METER_INFO_TMP":[{"DEVICE_DID":"","NORMAL_RETRO_TYPE":"","ENERGY_FLOW_TYPE":"","READINGS_TYPE":"","ADDED_CONS":0}]}"#,
        )
        .unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    for ptr in ["", "/SYS_HEAD", "/COM_METERAGE", "/COM_METER_INFO_TMP/0"] {
        assert_eq!(
            keys(v.pointer(ptr).unwrap()),
            keys(seed.pointer(ptr).unwrap()),
            "{ptr}"
        );
        for (k, field) in seed.pointer(ptr).unwrap().as_object().unwrap() {
            let sent = &v.pointer(ptr).unwrap()[k];
            assert_eq!(field.is_string(), sent.is_string(), "{ptr}/{k}");
            assert_eq!(field.is_number(), sent.is_number(), "{ptr}/{k}");
        }
    }
}

#[test]
fn request_body_keeps_exact_decimals_escapes_text_and_applies_overrides() {
    let secret = Secret::new(KEY);
    let mut p = payload();
    p["COM_METER_INFO_TMP"][0]["ADDED_CONS"] = json!("70368744177664.09");
    p["COM_METER_INFO_TMP"][0]["DEVICE_DID"] = json!("DV\"0\\1");
    p["SYS_HEAD"] = json!({"REGISTER_DID": "RG00000000000009"});
    let body = request_body(&validate(&p.to_string()).unwrap(), &head(&secret));
    assert!(
        body.contains(r#""ADDED_CONS":70368744177664.09}"#),
        "{body}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["COM_METER_INFO_TMP"][0]["DEVICE_DID"], "DV\"0\\1");
    assert_eq!(v["SYS_HEAD"]["REGISTER_DID"], "RG00000000000009");
    assert_eq!(v["SYS_HEAD"]["ACCOUNT_DID"], "AC00000000000001");
}

fn rules() -> Rules {
    Rules {
        retryable_codes: vec![9],
        retry_ambiguous: false,
    }
}

fn verdict(status: u16, body: &str) -> Verdict {
    classify(status, None, body, &rules(), "SA1").verdict
}

#[test]
fn the_seed_reply_example_is_a_delivery() {
    let c = classify(
        200,
        None,
        "{\n\t\"CODE\":\t0,\n\t\"MESSAGE\":\t\"\",\n\t\"DATA\":\t{\n\t}\n}",
        &rules(),
        "SA1",
    );
    assert_eq!(
        c,
        Classified {
            verdict: Verdict::Delivered {
                hint: None,
                result: None
            },
            code: Some("0".into())
        }
    );
    assert!(matches!(
        verdict(200, r#"{"CODE":"0","MESSAGE":"成功"}"#),
        Verdict::Delivered { .. }
    ));
}

#[test]
fn codes_are_permanent_unless_listed() {
    let c = classify(
        200,
        None,
        r#"{"CODE":2001,"MESSAGE":"参数错误: X","DATA":{}}"#,
        &rules(),
        "SA1",
    );
    assert_eq!(c.code.as_deref(), Some("2001"));
    assert_eq!(
        c.verdict,
        Verdict::Permanent {
            reason: "epeis CODE 2001: 参数错误: X".into()
        }
    );
    assert_eq!(
        verdict(200, r#"{"CODE":1001}"#),
        Verdict::Permanent {
            reason: "epeis CODE 1001".into()
        }
    );
    assert!(
        matches!(verdict(200, r#"{"CODE":"E42","MESSAGE":"?"}"#), Verdict::Permanent { reason } if reason == "epeis CODE E42: ?")
    );
    let retry = classify(
        200,
        Some(Duration::from_secs(3)),
        r#"{"CODE":9,"MESSAGE":"busy"}"#,
        &rules(),
        "SA1",
    );
    assert_eq!(
        retry.verdict,
        Verdict::Retry {
            reason: "epeis CODE 9: busy (listed in retryable_codes)".into(),
            retry_after: Some(Duration::from_secs(3))
        }
    );
    assert!(matches!(
        verdict(200, r#"{"CODE":"9"}"#),
        Verdict::Retry { .. }
    ));
}

#[test]
fn http_status_classes() {
    for status in [500, 502, 503, 504, 429, 408] {
        assert!(
            matches!(verdict(status, ""), Verdict::Retry { .. }),
            "{status}"
        );
    }
    let ra = classify(503, Some(Duration::from_secs(7)), "", &rules(), "SA1");
    assert_eq!(
        ra.verdict,
        Verdict::Retry {
            reason: "HTTP 503 from epeis".into(),
            retry_after: Some(Duration::from_secs(7))
        }
    );
    for status in [400, 401, 404, 405] {
        assert!(
            matches!(verdict(status, "nope"), Verdict::Permanent { reason } if reason.contains("url")),
            "{status}"
        );
    }
}

#[test]
fn a_2xx_without_a_code_is_ambiguous() {
    for body in [
        "<html><body>502 Bad Gateway</body></html>",
        "",
        r#"{"MESSAGE":"ok"}"#,
        r#"{"CODE":null}"#,
        "[0]",
    ] {
        match verdict(200, body) {
            Verdict::Ambiguous { reason } => {
                assert!(
                    reason.starts_with("outcome unknown: epeis answered HTTP 200 without a CODE"),
                    "{reason}"
                );
                assert!(reason.contains("check SETTLEMENT_AID SA1"), "{reason}");
            }
            other => panic!("{body:?}: {other:?}"),
        }
    }
}

#[test]
fn not_sent_is_retried_maybe_sent_is_ambiguous() {
    let not_sent = SendError::NotSent("tcp connect error: Connection refused".into());
    assert!(matches!(
        transport_verdict(&not_sent, "SA1", false),
        Verdict::Retry { reason, retry_after: None } if reason.contains("Connection refused")
    ));
    let maybe = SendError::MaybeSent("no reply within the timeout".into());
    assert_eq!(
            transport_verdict(&maybe, "SA1", false),
            Verdict::Ambiguous {
                reason: "outcome unknown: no reply within the timeout. The adjustment may have been applied: check SETTLEMENT_AID SA1 on the epeis side before requeueing; requeueing sends it again".into()
            }
        );
    assert!(matches!(
        transport_verdict(&maybe, "SA1", true),
        Verdict::Ambiguous { reason } if reason.contains("retry_ambiguous = true") && reason.contains("applied twice")
    ));
}

#[test]
fn valid_until_needs_a_zone_and_honours_offsets() {
    assert_eq!(parse_valid_until("1970-01-01T00:00:01Z"), Ok(1000));
    assert_eq!(
        parse_valid_until("2027-01-31T00:00:00Z"),
        Ok(1_801_353_600_000)
    );
    assert_eq!(
        parse_valid_until("2027-01-31T08:00:00+08:00"),
        Ok(1_801_353_600_000)
    );
    assert_eq!(
        parse_valid_until("2027-01-30T19:00:00-05:00"),
        Ok(1_801_353_600_000)
    );
    assert_eq!(
        parse_valid_until("2027-01-31 00:00:00.5z"),
        Ok(1_801_353_600_500)
    );
    for (bad, needle) in [
        ("2027-01-31T00:00:00", "no time zone"),
        ("2027-01-31", "no time zone"),
        ("2027-02-30T00:00:00Z", "not an RFC 3339 time"),
        ("next tuesday Z", "not an RFC 3339 time"),
        ("2027-01-31T00:00:00+25:00", "invalid UTC offset"),
    ] {
        let e = parse_valid_until(bad).unwrap_err();
        assert!(e.contains(needle), "{bad}: {e}");
    }
}

/// The section's checks (common and epeis).
fn validate_config(name: &str, cfg: &SinkConfig) -> Vec<String> {
    cfg.check(name)
}

fn sink_config(extra: &str, key: &str) -> (SinkConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let cfg: SinkConfig = toml::from_str(&format!(
            "type = \"epeis\"\nurl = \"http://127.0.0.1:9/Service/v1/RepairDosageBack/\"\nsecret_file = {:?}\n{extra}",
            key_file.display().to_string()
        ))
        .unwrap();
    (cfg, dir)
}

const IDS: &str = "channel_did = \"CH00000000000001\"\nregister_did = \"RG00000000000001\"\naccount_did = \"AC00000000000001\"\n";

#[test]
fn config_checks() {
    let (good, _d) = sink_config(
        &format!(
            "{IDS}retryable_codes = [9]\ndynamic_key_valid_until = \"2027-01-31T00:00:00+08:00\""
        ),
        KEY,
    );
    assert_eq!(validate_config("e", &good), Vec::<String>::new());

    let short_key = "K".repeat(63);
    let (bad, _d) = sink_config(
            "channel_did = \"CH1\"\naccount_did = \"AC00000000000001\"\nretryable_codes = [0]\ndynamic_key_valid_until = \"2027-01-31\"",
            &short_key,
        );
    let problems = validate_config("e", &bad).join("\n");
    for needle in [
        "sinks.e: channel_did must be exactly 16 characters, got 3",
        "sinks.e: register_did is required",
        "must be 64 characters, got 63",
        "retryable_codes must not contain 0",
        "sinks.e: dynamic_key_valid_until \"2027-01-31\" has no time zone",
    ] {
        assert!(problems.contains(needle), "{needle:?} not in\n{problems}");
    }
    assert!(!problems.contains(&short_key), "the key is never shown");
    assert!(!problems.contains("account_did"), "{problems}");
}

fn sink(extra: &str) -> (Epeis, tempfile::TempDir) {
    let (cfg, dir) = sink_config(&format!("{IDS}{extra}"), KEY);
    let secret = cfg.settings.load_secret("e").unwrap();
    let http = Sender::new(&cfg.settings, secret).unwrap();
    let PlatformConfig::Epeis(c) = &cfg.platform else {
        panic!("not an epeis section")
    };
    (Epeis::build(&cfg.settings, c, http).unwrap(), dir)
}

#[test]
fn hold_once_the_key_has_expired_and_warn_ahead() {
    let (no_expiry, _d) = sink("");
    assert_eq!(no_expiry.hold(i64::MAX), None);

    let (s, _d) = sink("dynamic_key_valid_until = \"2027-01-31T00:00:00Z\"");
    let until = 1_801_353_600_000;
    assert_eq!(s.hold(until - 1), None);
    let held = s.hold(until).unwrap();
    assert_eq!(
            held,
            "DYNAMIC_KEY expired at 2027-01-31T00:00:00Z: install a new key (secret_file/secret_env + dynamic_key_valid_until), then reload (SIGHUP) or restart outboxd"
        );
    assert_eq!(s.hold(until + 1).as_deref(), Some(held.as_str()));
    assert!(!held.contains(KEY));
}

#[test]
fn the_expiry_warning_is_due_once_a_day() {
    let (s, _d) = sink("dynamic_key_valid_until = \"2027-01-31T00:00:00Z\"");
    let day = WARN_EVERY_MS;
    let t0 = 1_801_353_600_000 - 3 * day;
    assert!(s.warn_due(t0));
    assert!(!s.warn_due(t0 + 1));
    assert!(!s.warn_due(t0 + day - 1));
    assert!(s.warn_due(t0 + day));
    assert!(!s.warn_due(t0 + day + 1000));
    // hold() only asks within the last week.
    let (far, _d) = sink("dynamic_key_valid_until = \"2027-01-31T00:00:00Z\"");
    assert_eq!(far.hold(1_801_353_600_000 - 8 * day), None);
    assert_eq!(far.last_warned.load(Ordering::Relaxed), i64::MIN);
    assert_eq!(far.hold(t0), None);
    assert_eq!(far.last_warned.load(Ordering::Relaxed), t0);
}

fn row(payload: &Value, in_doubt: bool) -> ClaimedRow {
    ClaimedRow {
        id: 1,
        sink: "epeis".into(),
        event_type: "dosage".into(),
        idempotency_key: "SA00000000000001".into(),
        payload: payload.to_string(),
        ordering_key: None,
        created_at: 0,
        attempts: 2,
        flow_state: None,
        in_doubt,
        defect: None,
    }
}

#[tokio::test]
async fn an_in_doubt_row_is_parked_without_a_request() {
    // Nobody listens on port 9 of the sink's url: had it sent, the verdict would be a
    // not-sent retry.
    let (s, _d) = sink("");
    let out = s.deliver(&row(&payload(), true)).await;
    match &out.verdict {
        Verdict::Ambiguous { reason } => {
            assert!(
                reason.starts_with("outcome unknown: a previous attempt was interrupted"),
                "{reason}"
            );
            assert!(
                reason.contains("SETTLEMENT_AID SA00000000000001"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out.info.http_status, None);
    assert_eq!(out.info.error, None);

    let (retrying, _d) = sink("retry_ambiguous = true");
    let out = retrying.deliver(&row(&payload(), true)).await;
    assert!(
        matches!(&out.verdict, Verdict::Retry { reason, .. } if reason.starts_with("not sent")),
        "{:?}",
        out.verdict
    );
}

#[tokio::test]
async fn invalid_payloads_are_permanent_and_scrubbed() {
    let (s, _d) = sink("");
    let mut p = payload();
    p["COM_METERAGE"]["NORMAL_RETRO_TYPE"] = json!(KEY);
    let out = s.deliver(&row(&p, false)).await;
    match &out.verdict {
        Verdict::Permanent { reason } => {
            assert!(
                reason.contains("COM_METERAGE.NORMAL_RETRO_TYPE"),
                "{reason}"
            );
            assert!(reason.contains("a string of 64 characters"), "{reason}");
            assert!(!reason.contains(&KEY[..12]), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
