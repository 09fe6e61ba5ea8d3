use serde_json::{json, Value};

use super::*;
use crate::sinks::{PlatformConfig, SinkConfig};

const T0: i64 = 1_700_000_000_000;

fn settings() -> Settings {
    Settings {
        poll_interval_ms: 3_000,
        poll_window_ms: 30_000,
        verify_after_ms: 300_000,
        started_statuses: vec![2, 3],
    }
}

fn payload() -> Value {
    json!({
        "simId": "865933034812509", "portNum": 5, "param": 1, "payMoney": 10.5,
        "selectPriceType": 1, "infoPriceId": 42, "userId": 7, "chargeBefore": 0,
        "isAdvanceReceive": 0, "charger": "car"
    })
}

fn ok(body: &str) -> Reply<'_> {
    Reply::Http { status: 200, body }
}

fn poll_state(charger: Charger) -> PollState {
    PollState {
        result_key: "charge_865933034812509_5_15966_".into(),
        order_num: Some("20190504152521862699".into()),
        charger,
        started_at: T0,
        polls: 0,
    }
}

fn verify_state() -> VerifyState {
    VerifyState {
        order_num: "20190504152521862699".into(),
        charger: Charger::Car,
        verify_at: T0 + 330_000,
        poll_result: None,
        queries: 0,
    }
}

/// The `result` JSON of a final verdict.
fn result(v: &Verdict) -> Value {
    match v {
        Verdict::Delivered {
            result: Some(r), ..
        }
        | Verdict::Completed {
            result: Some(r), ..
        } => serde_json::from_str(r).unwrap(),
        other => panic!("not final: {other:?}"),
    }
}

/// The next state and due time of a `Continue`.
fn next(v: &Verdict) -> (FlowState, i64) {
    match v {
        Verdict::Continue { state, next_at, .. } => {
            (FlowState::parse(Some(state)).unwrap().unwrap(), *next_at)
        }
        other => panic!("not a continue: {other:?}"),
    }
}

fn is_unknown(v: &Verdict) -> bool {
    matches!(v, Verdict::Ambiguous { reason } if reason.starts_with("outcome unknown: check the charger before refunding"))
}

#[test]
fn valid_payload_becomes_the_documented_form() {
    let cmd = validate(&payload().to_string()).unwrap();
    assert_eq!(cmd.charger, Charger::Car);
    let body = form_body(
        &Secret::new("tok&en"),
        &cmd.fields
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        body,
        "token=tok%26en&simId=865933034812509&portNum=5&param=1&payMoney=10.5&selectPriceType=1\
             &infoPriceId=42&userId=7&chargeBefore=0&isAdvanceReceive=0"
    );
    // Optional userId, defaulted chargeBefore, whole payMoney, two-wheeler at 0 money.
    let mut p = payload();
    let o = p.as_object_mut().unwrap();
    o.remove("userId");
    o.remove("chargeBefore");
    o.insert("payMoney".into(), json!(0));
    o.insert("charger".into(), json!("two_wheeler"));
    let cmd = validate(&p.to_string()).unwrap();
    assert_eq!(cmd.charger, Charger::TwoWheeler);
    let names: Vec<&str> = cmd.fields.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        names,
        [
            "simId",
            "portNum",
            "param",
            "payMoney",
            "selectPriceType",
            "infoPriceId",
            "chargeBefore",
            "isAdvanceReceive"
        ]
    );
    assert!(cmd.fields.contains(&("chargeBefore", "0".into())));
    assert!(cmd.fields.contains(&("payMoney", "0".into())));
}

#[test]
fn invalid_payloads_name_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"simId": null}), "`simId` is required"),
        (
            json!({"simId": 865933034812509u64}),
            "`simId` must be a string",
        ),
        (json!({"simId": " "}), "`simId` must not be empty"),
        (json!({"portNum": "5"}), "`portNum` must be a whole number"),
        (json!({"param": 1.5}), "`param` must be a whole number"),
        (json!({"infoPriceId": null}), "`infoPriceId` is required"),
        (
            json!({"isAdvanceReceive": null}),
            "`isAdvanceReceive` is required",
        ),
        (
            json!({"payMoney": "10"}),
            "`payMoney` must be a non-negative number",
        ),
        (
            json!({"payMoney": -1}),
            "`payMoney` must be a non-negative number",
        ),
        (
            json!({"payMoney": 0}),
            "`payMoney` must be above 0 for a car charger",
        ),
        (
            json!({"selectPriceType": 2}),
            "`selectPriceType` must be 0 or 1",
        ),
        (
            json!({"selectPriceType": null}),
            "`selectPriceType` is required",
        ),
        (
            json!({"chargeBefore": true}),
            "`chargeBefore` must be 0 or 1",
        ),
        (json!({"userId": "7"}), "`userId` must be a whole number"),
        (
            json!({"charger": "truck"}),
            "`charger` must be \"car\" or \"two_wheeler\"",
        ),
        (json!({"charger": null}), "`charger` is required"),
        (json!({"token": "x"}), "`token` must not be in the payload"),
        (json!({"colour": "red"}), "unknown field `colour`"),
    ];
    for (patch, needle) in cases {
        let mut p = payload();
        for (k, v) in patch.as_object().unwrap() {
            p[k] = v.clone();
        }
        let err = validate(&p.to_string()).unwrap_err();
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    assert!(validate("[1]").unwrap_err().contains("JSON object"));
    assert!(validate("{").unwrap_err().contains("not valid JSON"));
    // All problems at once.
    let err = validate(r#"{"charger":"car"}"#).unwrap_err();
    for f in ["simId", "portNum", "param", "payMoney", "infoPriceId"] {
        assert!(err.contains(&format!("`{f}`")), "{f} in {err}");
    }
}

#[test]
fn seed_start_reply_moves_on_to_polling() {
    let body = r#"{ "data": { "portNum":5, "domain":"https://center.lbbtech.com", "simId":"865933034812509", "resultKey":"charge_865933034812509_5_15966_", "orderNum":"20190504152521862699" }, "success":true }"#;
    let v = after_start(Charger::Car, ok(body), T0, &settings());
    let (state, at) = next(&v);
    assert_eq!(state, FlowState::Poll(poll_state(Charger::Car)));
    assert_eq!(at, T0 + 3_000);
    assert_eq!(reply_code(body).as_deref(), Some("success"));
    // The state is small, readable JSON the view and operators can use.
    let Verdict::Continue { state, .. } = v else {
        unreachable!()
    };
    let j: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(j["step"], "poll");
    assert_eq!(j["order_num"], "20190504152521862699");
}

#[test]
fn refused_start_is_a_failure_with_refund() {
    let body = r#"{"code":"-1","error":"余额不足","success":false}"#;
    let v = after_start(Charger::TwoWheeler, ok(body), T0, &settings());
    let r = result(&v);
    assert!(matches!(v, Verdict::Completed { .. }));
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["refund"], true);
    assert_eq!(r["code"], "-1");
    assert!(r["reason"].as_str().unwrap().contains("余额不足"));
    assert_eq!(r["orderNum"], Value::Null);
    assert_eq!(reply_code(body).as_deref(), Some("-1"));
}

#[test]
fn a_start_is_resent_only_when_it_never_left() {
    let s = settings();
    assert!(matches!(
        after_start(Charger::Car, Reply::NotSent("connection refused"), T0, &s),
        Verdict::Retry { .. }
    ));
    assert!(matches!(
        after_start(
            Charger::Car,
            Reply::Http {
                status: 429,
                body: ""
            },
            T0,
            &s
        ),
        Verdict::Retry { .. }
    ));
    for reply in [
        Reply::MaybeSent("no reply within the timeout"),
        Reply::Http {
            status: 503,
            body: "",
        },
        Reply::Http {
            status: 502,
            body: "<html>bad gateway</html>",
        },
        ok("<html>oops</html>"),
        ok(r#"{"data":{}}"#),
        ok(r#"{"success":true,"data":{}}"#),
    ] {
        let v = after_start(Charger::TwoWheeler, reply, T0, &s);
        assert!(is_unknown(&v), "{reply:?} gave {v:?}");
    }
    assert!(matches!(
        after_start(Charger::Car, Reply::Http { status: 404, body: "no" }, T0, &s),
        Verdict::Permanent { reason } if reason.contains("url")
    ));
}

#[test]
fn start_without_result_key_goes_straight_to_verification() {
    let v = after_start(
        Charger::TwoWheeler,
        ok(r#"{"success":true,"data":{"orderNum":"42"}}"#),
        T0,
        &settings(),
    );
    let (state, at) = next(&v);
    assert_eq!(at, T0 + 330_000);
    assert!(matches!(state, FlowState::Verify(v) if v.order_num == "42"));
}

#[test]
fn in_doubt_row_without_state_is_unknown_without_sending() {
    let mut row = ClaimedRow {
        id: 1,
        sink: "lbb".into(),
        event_type: "charge_start".into(),
        idempotency_key: "k".into(),
        payload: payload().to_string(),
        ordering_key: None,
        created_at: T0,
        attempts: 2,
        flow_state: None,
        in_doubt: true,
        defect: None,
    };
    assert!(before_start(&row).as_ref().is_some_and(is_unknown));
    row.in_doubt = false;
    assert_eq!(before_start(&row), None);
    // In doubt mid-flow: polls are read-only, so the flow just goes on.
    row.in_doubt = true;
    row.flow_state = Some(FlowState::Poll(poll_state(Charger::Car)).to_json());
    assert_eq!(before_start(&row), None);
}

#[test]
fn result_1_is_started() {
    let body = r#"{"success":true,"code":"0","error":"","data":{"result":1,"deviceId":"865933034812509","portNum":5}}"#;
    let v = after_poll(&poll_state(Charger::Car), ok(body), T0 + 6_000, &settings());
    assert!(matches!(v, Verdict::Delivered { hint: None, .. }));
    assert_eq!(
        result(&v),
        json!({"outcome": "started", "orderNum": "20190504152521862699"})
    );
    // A string result is read the same way.
    let v = after_poll(
        &poll_state(Charger::TwoWheeler),
        ok(r#"{"success":true,"data":{"result":"1"}}"#),
        T0,
        &settings(),
    );
    assert_eq!(result(&v)["outcome"], "started");
}

#[test]
fn pending_polls_continue_until_the_window_ends() {
    let s = settings();
    let pending = r#"{"success":false,"code":"-1","error":"结果未返回"}"#;
    let mut state = poll_state(Charger::TwoWheeler);
    let v = after_poll(&state, ok(pending), T0 + 3_000, &s);
    let (n, at) = next(&v);
    state.polls = 1;
    assert_eq!(n, FlowState::Poll(state.clone()));
    assert_eq!(at, T0 + 6_000);
    assert!(matches!(&v, Verdict::Continue { note, .. } if note.contains("结果未返回")));
    // Network errors, 5xx and expired keys while polling: keep polling.
    for reply in [
        Reply::MaybeSent("reset"),
        Reply::NotSent("refused"),
        Reply::Http {
            status: 503,
            body: "",
        },
        ok(r#"{"success":false,"code":"-1","error":"resultKey已过期"}"#),
        ok("garbage"),
        ok(r#"{"success":true,"data":{}}"#),
    ] {
        assert!(matches!(
            after_poll(&state, reply, T0 + 9_000, &s),
            Verdict::Continue { .. }
        ));
    }
    // The last poll is due exactly at the window's end.
    let (_, at) = next(&after_poll(&state, ok(pending), T0 + 28_500, &s));
    assert_eq!(at, T0 + 30_000);
}

#[test]
fn window_over_fails_two_wheelers_and_verifies_cars() {
    let s = settings();
    let pending = r#"{"success":false,"code":"-1","error":"结果未返回"}"#;
    let v = after_poll(
        &poll_state(Charger::TwoWheeler),
        ok(pending),
        T0 + 30_000,
        &s,
    );
    let r = result(&v);
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["refund"], true);
    assert_eq!(r["code"], Value::Null);
    assert_eq!(r["orderNum"], "20190504152521862699");
    assert!(r["reason"].as_str().unwrap().contains("poll window"));

    // A car waits `verify_after` past the window's end, counted from the start reply,
    // however late the last poll ran (a restart).
    for now in [T0 + 30_000, T0 + 95_000] {
        let (state, at) = next(&after_poll(&poll_state(Charger::Car), ok(pending), now, &s));
        assert_eq!(at, T0 + 330_000);
        assert_eq!(state, FlowState::Verify(verify_state()));
    }
    let mut no_order = poll_state(Charger::Car);
    no_order.order_num = None;
    assert!(is_unknown(&after_poll(
        &no_order,
        ok(pending),
        T0 + 30_000,
        &s
    )));
}

#[test]
fn failure_results_keep_their_code_and_meaning() {
    let s = settings();
    for (code, meaning) in [
        (3, "not plugged in"),
        (4, "fuse"),
        (58, "start timeout"),
        (62, "already charging"),
        (63, "unknown start error"),
        (65, "re-plug the gun"),
        (99, "code 99"),
    ] {
        let body = format!(r#"{{"success":true,"code":"0","data":{{"result":{code}}}}}"#);
        // Two-wheeler: final.
        let v = after_poll(&poll_state(Charger::TwoWheeler), ok(&body), T0 + 3_000, &s);
        let r = result(&v);
        assert_eq!(r["outcome"], "failed");
        assert_eq!(r["refund"], true);
        assert_eq!(r["code"], code.to_string());
        assert!(r["reason"].as_str().unwrap().contains(meaning), "{r}");
        // Car: verified before any refund, keeping the code.
        let (state, at) = next(&after_poll(
            &poll_state(Charger::Car),
            ok(&body),
            T0 + 3_000,
            &s,
        ));
        assert_eq!(at, T0 + 330_000);
        assert_eq!(
            state,
            FlowState::Verify(VerifyState {
                poll_result: Some(code),
                ..verify_state()
            })
        );
    }
}

#[test]
fn verification_reads_object_or_list_orders() {
    let s = settings();
    let at = T0 + 330_000;
    for body in [
        r#"{"success":true,"code":"0","data":{"orderNum":"20190504152521862699","status":2}}"#,
        r#"{"success":true,"code":"0","data":[{"orderNum":"20190504152521862699","status":3}]}"#,
        r#"{"success":true,"data":[{"orderNum":"other","status":0},{"orderNum":"20190504152521862699","status":"2"}]}"#,
    ] {
        let v = after_verify(&verify_state(), ok(body), at, &s);
        let r = result(&v);
        assert_eq!(r["outcome"], "started", "{body}");
        assert_eq!(r["orderNum"], "20190504152521862699");
    }
    // Another status, or no order: failed, refund.
    for (body, needle) in [
        (
            r#"{"success":true,"data":{"status":4}}"#,
            "status 4 (ended abnormally)",
        ),
        (r#"{"success":true,"data":[]}"#, "no order"),
        (r#"{"success":true,"data":null}"#, "no order"),
        (
            r#"{"success":false,"code":"-1","error":"订单不存在"}"#,
            "订单不存在",
        ),
    ] {
        let v = after_verify(&verify_state(), ok(body), at, &s);
        assert!(matches!(v, Verdict::Completed { .. }), "{body}");
        let r = result(&v);
        assert_eq!(r["outcome"], "failed");
        assert_eq!(r["refund"], true);
        assert!(r["reason"].as_str().unwrap().contains(needle), "{r}");
    }
    // The status set is configuration.
    let only_charging = Settings {
        started_statuses: vec![2],
        ..settings()
    };
    let v = after_verify(
        &verify_state(),
        ok(r#"{"success":true,"data":{"status":3}}"#),
        at,
        &only_charging,
    );
    assert_eq!(result(&v)["outcome"], "failed");
    // A polled failure code survives verification.
    let polled = VerifyState {
        poll_result: Some(62),
        ..verify_state()
    };
    let r = result(&after_verify(
        &polled,
        ok(r#"{"success":false,"error":"订单不存在"}"#),
        at,
        &s,
    ));
    assert_eq!(r["code"], "62");
    assert!(r["reason"].as_str().unwrap().contains("already charging"));
    let r = result(&after_verify(
        &polled,
        ok(r#"{"success":true,"data":{"status":2}}"#),
        at,
        &s,
    ));
    assert_eq!(r["outcome"], "started");
}

#[test]
fn failed_lookups_retry_with_backoff_then_give_up_as_unknown() {
    let s = settings();
    let at = T0 + 330_000;
    let mut state = verify_state();
    let mut waits = Vec::new();
    for reply in [
        Reply::MaybeSent("reset"),
        Reply::Http {
            status: 503,
            body: "",
        },
        ok(r#"{"success":false,"code":"-1","error":"token无效"}"#),
        ok("garbage"),
        ok(r#"{"success":true,"data":{"orderNum":"x"}}"#),
    ] {
        let (n, next_at) = next(&after_verify(&state, reply, at, &s));
        let FlowState::Verify(n) = n else {
            panic!("left verification")
        };
        assert_eq!(n.queries, state.queries + 1);
        waits.push(next_at - at);
        state = n;
    }
    assert_eq!(waits, [3_000, 6_000, 12_000, 24_000, 48_000]);
    state.queries = MAX_VERIFY_QUERIES - 2;
    let (_, next_at) = next(&after_verify(&state, Reply::NotSent("x"), at, &s));
    assert_eq!(next_at - at, 300_000, "capped at five minutes");
    state.queries = MAX_VERIFY_QUERIES - 1;
    let v = after_verify(&state, Reply::NotSent("refused"), at, &s);
    assert!(is_unknown(&v), "{v:?}");
    assert!(matches!(v, Verdict::Ambiguous { reason } if reason.contains("20190504152521862699")));
}

#[test]
fn flow_state_round_trips_and_rejects_garbage() {
    for s in [
        FlowState::Poll(poll_state(Charger::TwoWheeler)),
        FlowState::Verify(verify_state()),
    ] {
        assert_eq!(FlowState::parse(Some(&s.to_json())).unwrap(), Some(s));
    }
    assert_eq!(FlowState::parse(None).unwrap(), None);
    assert!(FlowState::parse(Some(r#"{"step":"dance"}"#)).is_err());
}

fn lbb(c: &SinkConfig) -> &LbbtechConfig {
    match &c.platform {
        PlatformConfig::Lbbtech(l) => l,
        other => panic!("not an lbbtech section: {other:?}"),
    }
}

/// The platform's own checks of a section.
fn validate_config(name: &str, c: &SinkConfig) -> Vec<String> {
    config::validate_config(name, &c.settings.url, lbb(c))
}

fn sink_config(extra: &str) -> SinkConfig {
    toml::from_str(&format!(
        "type = \"lbbtech\"\nurl = \"http://127.0.0.1:1/open\"\nsecret_env = \"X\"\n{extra}"
    ))
    .unwrap()
}

#[test]
fn config_defaults_and_checks() {
    let s = Settings::from_config(lbb(&sink_config("")));
    assert_eq!(s, settings());
    let s = Settings::from_config(lbb(&sink_config(
            "poll_interval = \"100ms\"\npoll_window = \"1s\"\nverify_after = \"2s\"\nstarted_statuses = [2]",
        )));
    assert_eq!(
        (s.poll_interval_ms, s.poll_window_ms, s.verify_after_ms),
        (100, 1_000, 2_000)
    );
    assert!(validate_config("lbb", &sink_config("")).is_empty());
    let problems = validate_config(
            "lbb",
            &sink_config(
                "poll_interval = \"10s\"\npoll_window = \"5s\"\nstarted_statuses = []\ncallback_url = \"http://x/\"",
            ),
        );
    let text = problems.join("\n");
    for needle in ["poll_window", "started_statuses", "callback_url"] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    let mut c = sink_config("");
    c.settings.url = "https://center.lbbtech.com/open/newPriceStandardCharge".into();
    assert!(validate_config("lbb", &c)[0].contains("API base"));
}

#[tokio::test]
async fn the_token_never_reaches_an_attempt_record() {
    // A server that echoes the request body back (as a broken gateway might).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&req).contains("isAdvanceReceive=") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the body");
            req.extend_from_slice(&buf[..n]);
        }
        let req = String::from_utf8_lossy(&req).to_string();
        let body = format!(
            "{{\"success\":false,\"code\":\"-1\",\"error\":\"{}\"}}",
            req.replace(['"', '\r', '\n'], " ")
        );
        let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        s.write_all(reply.as_bytes()).await.unwrap();
    });
    let mut cfg = sink_config("");
    cfg.settings.url = format!("http://{addr}/open");
    let http = Sender::new(&cfg.settings, Secret::new("sEcReT-T0KEN")).unwrap();
    let sink = Lbbtech::build(&cfg.settings, lbb(&cfg), http).unwrap();
    let row = ClaimedRow {
        id: 1,
        sink: "lbb".into(),
        event_type: "charge_start".into(),
        idempotency_key: "k".into(),
        payload: payload().to_string(),
        ordering_key: None,
        created_at: T0,
        attempts: 1,
        flow_state: None,
        in_doubt: false,
        defect: None,
    };
    let out = sink.deliver(&row).await;
    let all = format!("{out:?}");
    assert!(all.contains("[redacted]"), "{all}");
    assert!(!all.contains("sEcReT-T0KEN"), "{all}");
    assert!(matches!(out.verdict, Verdict::Completed { .. }));
}

#[test]
fn an_order_list_without_our_order_is_no_order() {
    let st = verify_state();
    let body = json!({"success": true, "data": [
        {"orderNum": "SOMEONE-ELSES-ORDER", "status": 2},
        {"orderNum": "ANOTHER-ORDER", "status": 3}
    ]})
    .to_string();
    let v = after_verify(&st, ok(&body), T0 + 330_000, &settings());
    match &v {
        Verdict::Completed { note, .. } => {
            assert!(
                note.contains(&format!("no order {}", st.order_num)),
                "{note}"
            )
        }
        other => panic!("another order decided: {other:?}"),
    }
    assert_eq!(result(&v)["outcome"], "failed");
}
