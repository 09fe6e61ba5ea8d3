//! Property-based fuzzing of what outboxd reads from outside: producers' payloads (the sinks'
//! validators) and platforms' replies (the sinks' classifiers). For every input: no panic,
//! and a classified outcome that keeps the safety rules (a non-idempotent start is never
//! retried unless it provably was not sent; a 5xx is never final success; ...).
//!
//! Inputs come from three generators: arbitrary text, arbitrary JSON, and valid payloads or
//! replies with one field replaced, removed or added, so the cases reach past the JSON parse
//! into every field check. Kept to a few seconds in a debug build (it runs in CI);
//! `PROPTEST_CASES=100000 cargo test -p outbox-core --test fuzz --release` runs it longer.

use std::time::Duration;

use outbox_core::outcome::Verdict;
use outbox_core::secret::Secret;
use outbox_core::sinks::lbbtech::{self, Charger, FlowState, PollState, Reply, VerifyState};
use outbox_core::sinks::pyun::PyunCodes;
use outbox_core::sinks::send::{parse_retry_after, SendError};
use outbox_core::sinks::{epeis, pyun, tcec};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Epoch ms the flow functions are called with: any time from 2001 to 2096.
const NOW: std::ops::Range<i64> = 1_000_000_000_000..4_000_000_000_000;

fn config() -> ProptestConfig {
    // 256 cases per property, unless PROPTEST_CASES says otherwise.
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Texts a producer or a platform could send, biased towards the tricky ones.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,20}",
        "-?[0-9]{1,18}(\\.[0-9]{0,4})?",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z",
        "[ -~]{0,30}",
        Just(String::new()),
        Just("   ".to_string()),
        Just("CN_AC".to_string()),
        Just("1e400".to_string()),
        Just("川A660N2é€😀".to_string()),
    ]
    .boxed()
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        (0i64..100_000, 0u32..1000).prop_map(|(w, f)| json!(w as f64 + f as f64 / 1000.0)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1e300)),
        Just(json!(1e-7)),
    ]
    .boxed()
}

fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ]
    .boxed()
}

/// Any JSON value, a few levels deep.
fn any_json() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(text(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// One change to a JSON object: a field set to any value, removed, or a new field added.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, Value),
    Remove(usize),
    Add(String, Value),
}

fn edits() -> BoxedStrategy<Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), any_json()).prop_map(|(i, v)| Edit::Set(i, v)),
        any::<usize>().prop_map(Edit::Remove),
        (text(), leaf()).prop_map(|(k, v)| Edit::Add(k, v)),
    ];
    prop::collection::vec(edit, 0..4).boxed()
}

/// Applies `edits` to the object `v`, and the same kind of edit one level down where a field
/// holds an object or an array of objects.
fn mutate(v: &mut Value, edits: &[Edit]) {
    let Value::Object(m) = v else { return };
    for e in edits {
        let keys: Vec<String> = m.keys().cloned().collect();
        match e {
            Edit::Set(i, val) if !keys.is_empty() => {
                m.insert(keys[i % keys.len()].clone(), val.clone());
            }
            Edit::Remove(i) if !keys.is_empty() => {
                m.remove(&keys[i % keys.len()]);
            }
            Edit::Add(k, val) => {
                m.insert(k.clone(), val.clone());
            }
            _ => {}
        }
    }
}

fn nested(v: &mut Value, edits: &[Edit]) {
    if let Value::Object(m) = v {
        for child in m.values_mut() {
            match child {
                Value::Object(_) => mutate(child, edits),
                Value::Array(items) => items.iter_mut().for_each(|i| mutate(i, edits)),
                _ => {}
            }
        }
    }
}

/// A payload as a producer could write it: any text, any JSON, or a valid one mutated.
fn payload(valid: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<String> {
    prop_oneof![
        1 => text(),
        1 => any_json().prop_map(|v| v.to_string()),
        4 => (valid, edits(), edits(), any::<bool>()).prop_map(|(mut v, top, inner, deep)| {
            mutate(&mut v, &top);
            if deep {
                nested(&mut v, &inner);
            }
            v.to_string()
        }),
    ]
    .boxed()
}

fn reason_of(v: &Verdict) -> Option<&str> {
    match v {
        Verdict::Retry { reason, .. }
        | Verdict::Permanent { reason }
        | Verdict::Ambiguous { reason } => Some(reason),
        Verdict::Completed { note, .. } | Verdict::Continue { note, .. } => Some(note),
        Verdict::Delivered { .. } => None,
    }
}

/// Every verdict that is not a success explains itself.
fn explained(v: &Verdict) -> bool {
    reason_of(v).is_none_or(|r| !r.trim().is_empty())
}

// ---------------------------------------------------------------------------------------
// 4pyun

fn pyun_valid() -> impl Strategy<Value = (Value, String)> {
    (
        "[A-Za-z0-9]{1,32}",
        0u64..10_000_000,
        prop::bool::ANY,
        prop::option::of("[A-Z0-9]{1,17}"),
    )
        .prop_map(|(order, quantity, as_text, vin)| {
            let q = if as_text {
                json!(quantity.to_string())
            } else {
                json!(quantity)
            };
            let mut v = json!({
                "station_uuid": "8f5fdb60-9374-4c11-bdc2-a32d8369258c",
                "device_no": "S1", "port_no": 1, "replenish_order": order,
                "start_time": "2024-02-29T08:20:00Z", "end_time": "2024-02-29T09:20:00Z",
                "quantity": q, "energy_value": 207, "fee_value": "975", "total_value": 1182,
                "energy_code": "CN_DC",
            });
            if let Some(vin) = vin {
                v["vin"] = json!(vin);
            }
            (v, order)
        })
}

fn pyun_reply() -> impl Strategy<Value = String> {
    let code = prop_oneof![
        Just(json!("200")),
        Just(json!("1001")),
        Just(json!("1002")),
        Just(json!("401")),
        Just(json!("503")),
        Just(json!(200)),
        Just(json!("")),
        leaf(),
    ];
    let valid = (code, prop::option::of(text()), prop::option::of(leaf())).prop_map(
        |(code, hint, seqno)| {
            let mut v = json!({"code": code, "message": "OK", "data_node": "CN-South/HS3-1"});
            if let Some(h) = hint {
                v["hint"] = json!(h);
            }
            if let Some(s) = seqno {
                v["seqno"] = s;
            }
            v
        },
    );
    payload(valid)
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => Just(200u16),
        1 => 100u16..600,
        1 => any::<u16>(),
        1 => prop::sample::select(vec![201u16, 204, 400, 401, 403, 404, 408, 425, 429, 500, 502, 503, 504]),
    ]
}

fn retry_after() -> impl Strategy<Value = Option<Duration>> {
    prop::option::of((0u64..100_000).prop_map(Duration::from_millis))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn pyun_validate_classifies_every_payload(
        (payload, key) in pyun_valid().prop_flat_map(|(v, key)| {
            let key = Just(key).boxed();
            (payload(Just(v)), prop_oneof![3 => key, 1 => text().boxed()])
        })
    ) {
        match pyun::validate(&payload, &key) {
            Ok(fields) => {
                // Only a payload with every required field passes, and what is sent is what
                // the producer wrote for the key.
                for name in ["station_uuid", "device_no", "port_no", "replenish_order",
                             "start_time", "end_time", "energy_code", "quantity",
                             "energy_value", "fee_value", "total_value"] {
                    prop_assert!(fields.iter().any(|(k, _)| *k == name), "{name} missing from {fields:?}");
                }
                let order = fields.iter().find(|(k, _)| *k == "replenish_order").map(|(_, v)| v);
                prop_assert_eq!(order, Some(&key));
            }
            Err(reason) => prop_assert!(
                reason.starts_with("invalid charge_end payload: ") || reason.starts_with("payload "),
                "unexpected reason {reason:?}"
            ),
        }
    }

    #[test]
    fn pyun_valid_payloads_pass((v, key) in pyun_valid()) {
        let fields = pyun::validate(&v.to_string(), &key);
        prop_assert!(fields.is_ok(), "{:?}", fields);
    }

    #[test]
    fn pyun_classify_classifies_every_reply(
        status in status(), retry_after in retry_after(), body in pyun_reply(),
    ) {
        let codes = PyunCodes::default();
        let c = pyun::classify(status, retry_after, &body, &codes);
        prop_assert!(explained(&c.verdict), "{:?}", c.verdict);
        let transient = matches!(status, 408 | 425 | 429) || status >= 500;
        match &c.verdict {
            Verdict::Delivered { .. } => {
                prop_assert!((200..300).contains(&status));
                prop_assert!(c.code.as_ref().is_some_and(|code| codes.success.contains(code)));
            }
            Verdict::Completed { .. } => prop_assert!((200..300).contains(&status)),
            Verdict::Retry { .. } => prop_assert!(transient || (200..300).contains(&status)),
            Verdict::Permanent { .. } => prop_assert!(!transient),
            // The platform deduplicates on replenish_order: nothing it says is ambiguous, and
            // a one-step flow never continues.
            v @ (Verdict::Ambiguous { .. } | Verdict::Continue { .. }) => {
                prop_assert!(false, "unexpected verdict {v:?}")
            }
        }
        if transient {
            let retry = matches!(c.verdict, Verdict::Retry { .. });
            prop_assert!(retry, "{:?}", c.verdict);
        }
    }
}

// ---------------------------------------------------------------------------------------
// epeis

fn epeis_valid() -> impl Strategy<Value = Value> {
    (
        "[A-Z0-9]{1,16}",
        prop::collection::vec(
            (
                "[A-Z0-9]{1,16}",
                1u8..=2,
                1u8..=2,
                1u8..=8,
                (0i64..100_000_000, 0u8..100),
                any::<bool>(),
            ),
            1..4,
        ),
    )
        .prop_map(|(aid, meters)| {
            let meters: Vec<Value> = meters
                .into_iter()
                .map(|(did, retro, flow, readings, (whole, cents), as_text)| {
                    let cons = if as_text {
                        json!(format!("{whole}.{cents:02}"))
                    } else {
                        json!(whole)
                    };
                    json!({"DEVICE_DID": did, "NORMAL_RETRO_TYPE": retro.to_string(),
                           "ENERGY_FLOW_TYPE": flow, "READINGS_TYPE": readings.to_string(),
                           "ADDED_CONS": cons})
                })
                .collect();
            json!({"COM_METERAGE": {"SETTLEMENT_AID": aid, "NORMAL_RETRO_TYPE": 2},
                   "COM_METER_INFO_TMP": meters,
                   "SYS_HEAD": {"REGISTER_DID": "RG00000000000001"}})
        })
}

fn epeis_reply() -> impl Strategy<Value = String> {
    let code = prop_oneof![
        Just(json!(0)),
        Just(json!("0")),
        Just(json!(" 0 ")),
        Just(json!(2001)),
        Just(json!("abc")),
        Just(json!(0.0)),
        leaf(),
    ];
    payload((code, leaf()).prop_map(|(c, m)| json!({"CODE": c, "MESSAGE": m, "DATA": {}})))
}

fn rules() -> impl Strategy<Value = epeis::Rules> {
    (prop::collection::vec(-5i64..5000, 0..4), any::<bool>()).prop_map(
        |(retryable_codes, retry_ambiguous)| epeis::Rules {
            retryable_codes,
            retry_ambiguous,
        },
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn epeis_validate_classifies_every_payload(payload in payload(epeis_valid())) {
        match epeis::validate(&payload) {
            Ok(d) => {
                prop_assert!(!d.meters.is_empty());
                prop_assert!(!d.settlement_aid.trim().is_empty());
                // Every amount sent is a plain JSON number that round-trips.
                for m in &d.meters {
                    let parsed: Result<Value, _> = serde_json::from_str(&m.added_cons);
                    prop_assert!(matches!(parsed, Ok(Value::Number(_))), "{}", m.added_cons);
                }
            }
            Err(reason) => prop_assert!(reason.starts_with("invalid dosage payload: "), "{reason:?}"),
        }
    }

    #[test]
    fn epeis_valid_payloads_pass(v in epeis_valid()) {
        let d = epeis::validate(&v.to_string());
        prop_assert!(d.is_ok(), "{:?}", d);
    }

    #[test]
    fn epeis_decimal_text_is_exact_or_refused(v in prop_oneof![number(), text().prop_map(Value::String), leaf()]) {
        if let Ok(text) = epeis::decimal_text(&v) {
            let digits = text.trim_start_matches('-');
            let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
            prop_assert!(whole.len() <= 14 && frac.len() <= 2, "{text}");
            prop_assert!(whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()), "{text}");
            let parsed: Result<Value, _> = serde_json::from_str(&text);
            prop_assert!(matches!(parsed, Ok(Value::Number(_))), "{text}");
        }
    }

    #[test]
    fn epeis_classify_classifies_every_reply(
        status in status(), retry_after in retry_after(), body in epeis_reply(),
        rules in rules(), aid in text(),
    ) {
        let c = epeis::classify(status, retry_after, &body, &rules, &aid);
        prop_assert!(explained(&c.verdict), "{:?}", c.verdict);
        let refused = matches!(status, 408 | 429) || status >= 500;
        match &c.verdict {
            Verdict::Delivered { .. } => {
                prop_assert!((200..300).contains(&status));
                prop_assert!(c.code.is_some());
            }
            Verdict::Retry { .. } => prop_assert!(refused || (200..300).contains(&status)),
            Verdict::Permanent { .. } => prop_assert!(!refused),
            // No CODE in a 2xx: it may have been booked.
            Verdict::Ambiguous { reason } => {
                prop_assert!((200..300).contains(&status) && c.code.is_none());
                prop_assert!(reason.starts_with("outcome unknown"));
            }
            v @ (Verdict::Completed { .. } | Verdict::Continue { .. }) => {
                prop_assert!(false, "unexpected verdict {v:?}")
            }
        }
    }

    #[test]
    fn epeis_transport_failures_are_retried_only_when_not_sent(
        what in text(), aid in text(), sent in any::<bool>(), retry_ambiguous in any::<bool>(),
    ) {
        let e = if sent { SendError::MaybeSent(what) } else { SendError::NotSent(what) };
        let v = epeis::transport_verdict(&e, &aid, retry_ambiguous);
        if sent {
            prop_assert!(matches!(v, Verdict::Ambiguous { .. }), "{v:?}");
        } else {
            prop_assert!(matches!(v, Verdict::Retry { .. }), "{v:?}");
        }
    }

    #[test]
    fn epeis_valid_until_never_panics(s in prop_oneof![
        text(),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([+-][0-9]{2}:[0-9]{2}|Z)?",
        "\\PC{0,4}[+-][0-9\\PC]{2}:[0-9\\PC]{2}",
    ]) {
        let _ = epeis::parse_valid_until(&s);
    }

    #[test]
    fn retry_after_header_never_panics(s in prop_oneof![text(), "[0-9]{1,25}", "\\PC{0,40}"]) {
        let _ = parse_retry_after(&s);
    }
}

// ---------------------------------------------------------------------------------------
// lbbtech

fn lbbtech_valid() -> impl Strategy<Value = Value> {
    (
        "[0-9]{15}",
        any::<bool>(),
        0i64..20,
        (1u32..100_000).prop_map(|c| c as f64 / 100.0),
        prop::option::of(0i64..1_000_000),
    )
        .prop_map(|(sim_id, car, port, money, user)| {
            let mut v = json!({
                "simId": sim_id, "portNum": port, "param": 1, "payMoney": money,
                "selectPriceType": 1, "infoPriceId": 42, "chargeBefore": 0,
                "isAdvanceReceive": 0, "charger": if car { "car" } else { "two_wheeler" },
            });
            if let Some(u) = user {
                v["userId"] = json!(u);
            }
            v
        })
}

/// Replies to a start, a poll and an order query, valid ones mutated among them.
fn lbbtech_body() -> impl Strategy<Value = String> {
    let success = prop_oneof![
        Just(json!(true)),
        Just(json!(false)),
        Just(json!("true")),
        leaf()
    ];
    let data = prop_oneof![
        Just(json!({"resultKey": "rk-1", "orderNum": "O1", "domain": "http://x"})),
        Just(json!({"orderNum": "O1"})),
        Just(json!({"result": 1})),
        Just(json!({"result": "3"})),
        Just(json!({"status": 2, "orderNum": "O1"})),
        Just(json!([{"orderNum": "O2", "status": 4}, {"orderNum": "O1", "status": "3"}])),
        Just(json!([])),
        any_json(),
    ];
    let valid = (success, data, leaf(), leaf())
        .prop_map(|(s, d, code, err)| json!({"success": s, "data": d, "code": code, "error": err}));
    prop_oneof![
        3 => payload(valid),
        1 => Just(r#"{"code":"-1","error":"订单不存在","success":false}"#.to_string()),
    ]
}

fn reply_parts() -> impl Strategy<Value = (u8, u16, String)> {
    (0u8..6, status(), lbbtech_body())
}

fn reply(parts: &(u8, u16, String)) -> Reply<'_> {
    match parts.0 {
        0 => Reply::NotSent(&parts.2),
        1 => Reply::MaybeSent(&parts.2),
        _ => Reply::Http {
            status: parts.1,
            body: &parts.2,
        },
    }
}

fn settings() -> impl Strategy<Value = lbbtech::Settings> {
    (
        1i64..10_000,
        0i64..120_000,
        0i64..1_000_000,
        prop::collection::vec(0i64..6, 0..3),
    )
        .prop_map(|(interval, window, verify, statuses)| lbbtech::Settings {
            poll_interval_ms: interval,
            poll_window_ms: window,
            verify_after_ms: verify,
            started_statuses: statuses,
        })
}

fn charger() -> impl Strategy<Value = Charger> {
    prop_oneof![Just(Charger::Car), Just(Charger::TwoWheeler)]
}

fn poll_state() -> impl Strategy<Value = PollState> {
    (text(), prop::option::of(text()), charger(), NOW, 0u32..100).prop_map(
        |(result_key, order_num, charger, started_at, polls)| PollState {
            result_key,
            order_num,
            charger,
            started_at,
            polls,
        },
    )
}

fn verify_state() -> impl Strategy<Value = VerifyState> {
    (
        text(),
        charger(),
        NOW,
        prop::option::of(-100i64..100),
        0u32..20,
    )
        .prop_map(
            |(order_num, charger, verify_at, poll_result, queries)| VerifyState {
                order_num,
                charger,
                verify_at,
                poll_result,
                queries,
            },
        )
}

/// A flow step's verdict is one the worker can record: a `Continue` carries a state the next
/// step can read back, a final outcome a result producers can read.
fn recordable(v: &Verdict) -> Result<(), TestCaseError> {
    prop_assert!(explained(v), "{v:?}");
    match v {
        Verdict::Continue { state, .. } => {
            let parsed = FlowState::parse(Some(state));
            prop_assert!(matches!(parsed, Ok(Some(_))), "{state}: {parsed:?}");
        }
        Verdict::Delivered { result, .. } | Verdict::Completed { result, .. } => {
            let r = result
                .as_deref()
                .map(serde_json::from_str::<Map<String, Value>>);
            prop_assert!(matches!(r, Some(Ok(_))), "result {result:?}");
        }
        Verdict::Ambiguous { reason } => prop_assert!(reason.starts_with(lbbtech::OUTCOME_UNKNOWN)),
        Verdict::Retry { .. } | Verdict::Permanent { .. } => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lbbtech_validate_classifies_every_payload(payload in payload(lbbtech_valid())) {
        match lbbtech::validate(&payload) {
            Ok(cmd) => {
                prop_assert!(cmd.fields.iter().any(|(k, v)| *k == "simId" && !v.trim().is_empty()));
                prop_assert!(cmd.fields.iter().all(|(k, _)| *k != "token"));
            }
            Err(reason) => prop_assert!(
                reason.starts_with("invalid charge_start payload") || reason.starts_with("payload "),
                "{reason:?}"
            ),
        }
    }

    #[test]
    fn lbbtech_valid_payloads_pass(v in lbbtech_valid()) {
        let c = lbbtech::validate(&v.to_string());
        prop_assert!(c.is_ok(), "{:?}", c);
    }

    /// Starting a charge is not idempotent: it is sent again only when it provably never
    /// left, or the platform refused it unprocessed (429).
    #[test]
    fn lbbtech_start_is_never_resent_after_it_may_have_arrived(
        parts in reply_parts(), charger in charger(), now in NOW, s in settings(),
    ) {
        let r = reply(&parts);
        let v = lbbtech::after_start(charger, r, now, &s);
        recordable(&v)?;
        if matches!(v, Verdict::Retry { .. }) {
            prop_assert!(
                matches!(r, Reply::NotSent(_) | Reply::Http { status: 429, .. }),
                "start retried after {r:?}"
            );
        }
        if matches!(r, Reply::MaybeSent(_)) || matches!(r, Reply::Http { status, .. } if status >= 500) {
            prop_assert!(matches!(v, Verdict::Ambiguous { .. }), "{v:?} after {r:?}");
        }
    }

    #[test]
    fn lbbtech_poll_classifies_every_reply(
        parts in reply_parts(), state in poll_state(), s in settings(), later in 0i64..200_000,
    ) {
        let now = state.started_at + later;
        let v = lbbtech::after_poll(&state, reply(&parts), now, &s);
        recordable(&v)?;
        // Polls are read-only: nothing about them is a reason to give up on the charge
        // other than its window or a definite result.
        prop_assert!(!matches!(v, Verdict::Retry { .. } | Verdict::Permanent { .. }), "{v:?}");
    }

    #[test]
    fn lbbtech_verify_classifies_every_reply(
        parts in reply_parts(), state in verify_state(), s in settings(), later in 0i64..200_000,
    ) {
        let now = state.verify_at + later;
        let v = lbbtech::after_verify(&state, reply(&parts), now, &s);
        recordable(&v)?;
        prop_assert!(!matches!(v, Verdict::Retry { .. } | Verdict::Permanent { .. }), "{v:?}");
        if state.queries + 1 >= lbbtech::MAX_VERIFY_QUERIES {
            prop_assert!(!matches!(v, Verdict::Continue { .. }), "query {} continued", state.queries + 1);
        }
    }

    #[test]
    fn lbbtech_reply_code_and_flow_state_never_panic(body in lbbtech_body(), state in any_json()) {
        let _ = lbbtech::reply_code(&body);
        let _ = FlowState::parse(Some(&body));
        let _ = FlowState::parse(Some(&state.to_string()));
    }
}

/// Deeply nested JSON stops at serde_json's recursion limit with an error, not a stack
/// overflow, in every validator and classifier.
#[test]
fn deeply_nested_json_is_refused_not_a_crash() {
    for depth in [127, 128, 129, 10_000, 1_000_000] {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let obj = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        for p in [&body, &obj] {
            assert!(pyun::validate(p, "k").is_err());
            assert!(epeis::validate(p).is_err());
            assert!(lbbtech::validate(p).is_err());
            let c = pyun::classify(200, None, p, &PyunCodes::default());
            assert!(
                matches!(c.verdict, Verdict::Retry { .. }),
                "{:?}",
                c.verdict
            );
            let c = epeis::classify(200, None, p, &epeis::Rules::default(), "A");
            assert!(
                matches!(c.verdict, Verdict::Ambiguous { .. }),
                "{:?}",
                c.verdict
            );
            let v = lbbtech::after_start(
                Charger::Car,
                Reply::Http {
                    status: 200,
                    body: p,
                },
                NOW.start,
                &lbbtech::Settings {
                    poll_interval_ms: 100,
                    poll_window_ms: 1000,
                    verify_after_ms: 1000,
                    started_statuses: vec![2, 3],
                },
            );
            assert!(matches!(v, Verdict::Ambiguous { .. }), "{v:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// T/CEC

fn tcec_keys() -> tcec::envelope::Keys {
    tcec::envelope::Keys {
        data_secret: Secret::new("1234567890abcdef"),
        data_secret_iv: Secret::new("abcdef1234567890"),
        sig_secret: Secret::new("fuzz-sig-secret"),
    }
}

fn tcec_order_valid() -> impl Strategy<Value = Value> {
    ("[A-Z0-9]{1,32}", 0u32..100_000, 0u32..100_000, 0u32..10_000).prop_map(
        |(seq, elec, service, power)| {
            let yuan = |fen: u32| json!(fen as f64 / 100.0);
            json!({
                "StartChargeSeq": seq, "ConnectorID": "C1",
                "StartTime": "2026-11-24 08:20:00", "EndTime": "2026-11-24 09:20:00",
                "TotalPower": yuan(power), "TotalElecMoney": yuan(elec),
                "TotalSeviceMoney": yuan(service), "TotalMoney": yuan(elec + service),
                "StopReason": 0, "SumPeriod": 0, "ChargeDetails": []
            })
        },
    )
}

fn tcec_status_valid() -> impl Strategy<Value = Value> {
    ("[A-Z0-9_]{1,20}", prop_oneof![0i64..5, Just(255)]).prop_map(|(connector, status)| {
        json!({"ConnectorStatusInfo": {"ConnectorID": connector, "Status": status}})
    })
}

/// A reply body: signed with the right or a wrong key, any `Ret`, `Msg` and `Data`, or text.
fn tcec_body() -> impl Strategy<Value = (String, bool)> {
    let data = prop_oneof![
        Just(json!({"StartChargeSeq": "O1", "ConnectorID": "C1", "ConfirmResult": 0})),
        Just(json!({"StartChargeSeq": "O1", "ConnectorID": "C1", "ConfirmResult": 1})),
        Just(json!({"Status": 0})),
        Just(json!({"Status": 1})),
        any_json(),
    ];
    let ret = prop_oneof![Just(0i64), Just(-1), Just(500), 4001i64..4005, any::<i64>()];
    let sealed = (ret, text(), payload(data), any::<bool>()).prop_map(|(ret, msg, data, good)| {
        let keys = if good {
            tcec_keys()
        } else {
            tcec::envelope::Keys {
                sig_secret: Secret::new("another-sig-key"),
                ..tcec_keys()
            }
        };
        let reply = tcec::envelope::seal_reply(&keys, ret, &msg, &data).unwrap();
        (serde_json::to_string(&reply).unwrap(), good)
    });
    prop_oneof![
        3 => sealed,
        1 => text().prop_map(|t| (t, false)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tcec_validate_classifies_every_payload(
        order in payload(tcec_order_valid()),
        status in payload(tcec_status_valid()),
        service in any::<bool>(),
    ) {
        let spelling = if service {
            tcec::payload::MoneySpelling::Service
        } else {
            tcec::payload::MoneySpelling::Sevice
        };
        if let Err(e) = tcec::payload::charge_order(&order, spelling) {
            prop_assert!(!e.trim().is_empty());
        }
        if let Err(e) = tcec::payload::connector_status(&status) {
            prop_assert!(!e.trim().is_empty());
        }
    }

    #[test]
    fn tcec_valid_payloads_pass(order in tcec_order_valid(), status in tcec_status_valid()) {
        let spelling = tcec::payload::MoneySpelling::Sevice;
        let v = tcec::payload::charge_order(&order.to_string(), spelling);
        prop_assert!(v.is_ok(), "{:?} {}", v, order);
        prop_assert!(tcec::payload::connector_status(&status.to_string()).is_ok());
    }

    #[test]
    fn tcec_classify_classifies_every_reply(
        (body, signed) in tcec_body(),
        status in status(),
        order in any::<bool>(),
    ) {
        let interface = if order {
            tcec::Interface::ChargeOrder
        } else {
            tcec::Interface::StationStatus
        };
        let c = tcec::reply::classify_http(interface, status, &body, &tcec_keys(), Some("O1"));
        prop_assert!(explained(&c.verdict), "{:?}", c.verdict);
        let success = matches!(c.verdict, Verdict::Delivered { .. } | Verdict::Completed { .. });
        // Success needs a 2xx and a reply signed with the sink's key.
        prop_assert!(!success || ((200..300).contains(&status) && signed), "{:?}", c);
        // Neither a secret nor a key ever reaches a verdict.
        let text = format!("{:?}", c.verdict);
        prop_assert!(!text.contains("1234567890abcdef") && !text.contains("fuzz-sig-secret"));
        // The platform deduplicates: nothing is parked as ambiguous.
        let ambiguous = matches!(c.verdict, Verdict::Ambiguous { .. });
        prop_assert!(!ambiguous, "{:?}", c.verdict);
    }
}
