//! lbbtech (驴充充) "newPriceStandardCharge" (charge_start): start a charge, then follow it to
//! a definite outcome the station software can act on: started, or failed (refund).
//!
//! Protocol rules, from `shared/seeds/README.md` and the seed contract (004):
//! - Every call is a form POST to `{url}/<api>` with the `token` as a form field; errors look
//!   like `{"code":"-1","error":"...","success":false}`.
//! - Starting a charge is **not idempotent**. Only a start that provably never left
//!   ([`SendError::NotSent`]) is sent again; one that may have reached the platform (timeout,
//!   reset, HTTP 5xx, an unreadable reply) is dead-lettered as "outcome unknown" for a person
//!   to check at the charger. So is a row found in doubt before its start was recorded (a
//!   worker died mid-start).
//! - The start reply carries a `resultKey` and an `orderNum`. `query/result` is polled every
//!   `poll_interval` until `poll_window` after the start reply: started when `success` is true
//!   and `data.result` is 1; any other result is a failure reason (3 not plugged in, ...).
//! - Two-wheeler chargers: no confirmation within the window, or a failure result, means
//!   failed: refund. Car chargers: neither refunds at once (the seed: "超出30秒未查到结果或者
//!   查询出结果为失败(result为非1)建议不进行立即退款"); the order is looked up with
//!   `queryChargeOrderDetail` at *start reply + `poll_window` + `verify_after`* (the seed's
//!   5 minutes count from the end of the 30 s polling): an order whose status is in
//!   `started_statuses` (default 2 charging, 3 ended normally) means it did start; no order,
//!   or another status, means failed.
//!
//! # The flow, one claim per step
//!
//! Each step is one claim of the row and one HTTP call; [`deliver`](LbbtechSink::deliver)
//! reads the step from the row's `flow_state` and returns [`Verdict::Continue`] with the next
//! state and its due time. Between steps the row is `pending` and holds no lease and no
//! worker slot, and a daemon restarted at any moment resumes from the last recorded state.
//! Polls and order queries are read-only, so repeating one after a crash is harmless.
//!
//! ```text
//! (none) --start ok--> poll --result 1--------------------------------> delivered: started
//!   |                   |--result n, two_wheeler / window over, two_wheeler --> done: failed
//!   |                   `--result n, car / window over, car --> verify --status 2,3--> started
//!   |                                                             `--no order/other--> failed
//!   |--start refused (success false) --> done: failed, refund
//!   |--not sent --> retried
//!   `--may have been sent, no order number --> dead: "outcome unknown: check the charger..."
//! ```
//!
//! Final outcomes land in the row's `result` (JSON) and, for producers, in the
//! `outbox_outcomes` view (migration 0002): `{"outcome":"started","orderNum":..}` or
//! `{"outcome":"failed","refund":true,"reason":..,"code":..,"orderNum":..}`; a dead-lettered
//! row reads `unknown` when its reason starts with [`OUTCOME_UNKNOWN`].
//!
//! The optional `callback_url` is not implemented yet; a config that sets it is refused.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::clock;
use crate::config::SinkConfig;
use crate::event::ClaimedRow;
use crate::http::{self, SendError};
use crate::outcome::{truncate, AttemptInfo, StepOutcome, Verdict};
use crate::secret::Secret;

pub const START_API: &str = "newPriceStandardCharge";
pub const RESULT_API: &str = "query/result";
pub const ORDER_API: &str = "queryChargeOrderDetail";

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(3);
pub const DEFAULT_POLL_WINDOW: Duration = Duration::from_secs(30);
pub const DEFAULT_VERIFY_AFTER: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_STARTED_STATUSES: [i64; 2] = [2, 3];

/// Order queries that may fail (network, 5xx, an unexpected reply) before the row is given
/// to a person as "outcome unknown".
pub const MAX_VERIFY_QUERIES: u32 = 10;
/// The longest wait between two failed order queries.
const MAX_VERIFY_BACKOFF: Duration = Duration::from_secs(5 * 60);

/// How every dead-letter reason of a charge that may have started begins; the
/// `outbox_outcomes` view reads such rows as `unknown`.
pub const OUTCOME_UNKNOWN: &str = "outcome unknown: check the charger before refunding";

/// The platform's answer to an order query for an order it does not have ("订单不存在").
const NO_ORDER_MARK: &str = "不存在";

/// Start fields that must be JSON integers, in the order of the interface document.
const INTEGER_FIELDS: [&str; 4] = ["portNum", "param", "infoPriceId", "isAdvanceReceive"];
/// Fields a producer may send; `token` comes from the config.
const KNOWN_FIELDS: [&str; 10] = [
    "simId",
    "portNum",
    "param",
    "payMoney",
    "selectPriceType",
    "infoPriceId",
    "userId",
    "chargeBefore",
    "isAdvanceReceive",
    "charger",
];

/// The kind of charger, which decides what an unconfirmed start means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Charger {
    Car,
    TwoWheeler,
}

/// A validated charge_start payload.
#[derive(Debug, Clone, PartialEq)]
pub struct StartCommand {
    pub charger: Charger,
    /// The form fields to send (without `token`), in the interface document's order.
    pub fields: Vec<(&'static str, String)>,
}

/// Checks a charge_start payload. Every problem is named by its field.
pub fn validate(payload: &str) -> Result<StartCommand, String> {
    let value: Value =
        serde_json::from_str(payload).map_err(|e| format!("payload is not valid JSON: {e}"))?;
    let obj = value.as_object().ok_or("payload must be a JSON object")?;
    let mut problems = Vec::new();
    for key in obj.keys() {
        if key == "token" {
            problems.push(
                "field `token` must not be in the payload: outboxd adds it from the sink's config"
                    .to_string(),
            );
        } else if !KNOWN_FIELDS.contains(&key.as_str()) {
            problems.push(format!("unknown field `{key}`"));
        }
    }
    let missing = |name: &str| matches!(obj.get(name), None | Some(Value::Null));
    let integer = |name: &str, problems: &mut Vec<String>| -> Option<i64> {
        match obj.get(name) {
            None | Some(Value::Null) => {
                problems.push(format!("field `{name}` is required"));
                None
            }
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
            Some(other) => {
                problems.push(format!(
                    "field `{name}` must be a whole number, got {other}"
                ));
                None
            }
        }
    };
    let flag = |name: &str, default: Option<i64>, problems: &mut Vec<String>| -> Option<i64> {
        if missing(name) {
            if default.is_none() {
                problems.push(format!("field `{name}` is required (0 or 1)"));
            }
            return default;
        }
        match obj.get(name).and_then(Value::as_i64) {
            Some(v @ (0 | 1)) => Some(v),
            _ => {
                problems.push(format!("field `{name}` must be 0 or 1, got {}", obj[name]));
                None
            }
        }
    };

    let sim_id = match obj.get("simId") {
        None | Some(Value::Null) => {
            problems.push("field `simId` is required".into());
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            problems.push("field `simId` must not be empty".into());
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.push(format!("field `simId` must be a string, got {other}"));
            None
        }
    };
    let charger = match obj.get("charger") {
        None | Some(Value::Null) => {
            problems.push("field `charger` is required (\"car\" or \"two_wheeler\")".into());
            None
        }
        Some(Value::String(s)) if s == "car" => Some(Charger::Car),
        Some(Value::String(s)) if s == "two_wheeler" => Some(Charger::TwoWheeler),
        Some(other) => {
            problems.push(format!(
                "field `charger` must be \"car\" or \"two_wheeler\", got {other}"
            ));
            None
        }
    };
    let [port_num, param, info_price_id, is_advance_receive] =
        INTEGER_FIELDS.map(|name| integer(name, &mut problems));
    let pay_money = match obj.get("payMoney") {
        None | Some(Value::Null) => {
            problems.push("field `payMoney` is required".into());
            None
        }
        Some(Value::Number(n)) if n.as_f64().is_some_and(|m| m.is_finite() && m >= 0.0) => {
            Some(n.clone())
        }
        Some(other) => {
            problems.push(format!(
                "field `payMoney` must be a non-negative number, got {other}"
            ));
            None
        }
    };
    // The seed: "汽车桩订单此字段不能为0,请传真实付款金额".
    if let (Some(Charger::Car), Some(m)) = (charger, &pay_money) {
        if m.as_f64() == Some(0.0) {
            problems.push(
                "field `payMoney` must be above 0 for a car charger (lbbtech requires the real amount)"
                    .into(),
            );
        }
    }
    let select_price_type = flag("selectPriceType", None, &mut problems);
    let charge_before = flag("chargeBefore", Some(0), &mut problems);
    let user_id = if missing("userId") {
        None
    } else {
        integer("userId", &mut problems)
    };
    if !problems.is_empty() {
        return Err(format!(
            "invalid charge_start payload: {}",
            problems.join("; ")
        ));
    }
    // Every `Option` is `Some` when there are no problems.
    let (Some(sim_id), Some(charger), Some(pay_money)) = (sim_id, charger, pay_money) else {
        return Err("invalid charge_start payload".into());
    };
    let n = |v: Option<i64>| v.unwrap_or_default().to_string();
    let mut fields = vec![
        ("simId", sim_id),
        ("portNum", n(port_num)),
        ("param", n(param)),
        ("payMoney", pay_money.to_string()),
        ("selectPriceType", n(select_price_type)),
        ("infoPriceId", n(info_price_id)),
    ];
    if let Some(u) = user_id {
        fields.push(("userId", u.to_string()));
    }
    fields.push(("chargeBefore", n(charge_before)));
    fields.push(("isAdvanceReceive", n(is_advance_receive)));
    Ok(StartCommand { charger, fields })
}

/// The form body of a call: `token` first, then the call's fields.
pub fn form_body(token: &Secret, fields: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    ser.append_pair("token", token.expose());
    for (k, v) in fields {
        ser.append_pair(k, v);
    }
    ser.finish()
}

/// The timings and status set of one sink, in epoch-ms arithmetic.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub poll_interval_ms: i64,
    pub poll_window_ms: i64,
    pub verify_after_ms: i64,
    pub started_statuses: Vec<i64>,
}

impl Settings {
    pub fn from_config(cfg: &SinkConfig) -> Settings {
        Settings {
            poll_interval_ms: clock::ms(cfg.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL)),
            poll_window_ms: clock::ms(cfg.poll_window.unwrap_or(DEFAULT_POLL_WINDOW)),
            verify_after_ms: clock::ms(cfg.verify_after.unwrap_or(DEFAULT_VERIFY_AFTER)),
            started_statuses: cfg
                .started_statuses
                .clone()
                .unwrap_or_else(|| DEFAULT_STARTED_STATUSES.to_vec()),
        }
    }

    /// When a car charger's order is looked up: the end of the poll window plus
    /// `verify_after`, counted from the start reply (so a restart never moves it).
    fn verify_at(&self, started_at: i64) -> i64 {
        started_at + self.poll_window_ms + self.verify_after_ms
    }

    /// The wait after failed order query number `queries`: doubling from the poll interval,
    /// at most five minutes.
    fn verify_backoff_ms(&self, queries: u32) -> i64 {
        let base = self.poll_interval_ms.max(1);
        base.saturating_mul(1i64 << queries.saturating_sub(1).min(20))
            .min(clock::ms(MAX_VERIFY_BACKOFF))
    }
}

/// Where a started flow stands between steps: the row's `flow_state`, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum FlowState {
    Poll(PollState),
    Verify(VerifyState),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollState {
    pub result_key: String,
    pub order_num: Option<String>,
    pub charger: Charger,
    /// When the start reply came back (epoch ms): the poll window counts from here.
    pub started_at: i64,
    /// Polls done so far.
    pub polls: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyState {
    pub order_num: String,
    pub charger: Charger,
    /// When the order may be looked up (epoch ms).
    pub verify_at: i64,
    /// The failure result polling saw, if any (car chargers verify those too).
    pub poll_result: Option<i64>,
    /// Order queries that failed so far (network, 5xx, unreadable).
    pub queries: u32,
}

impl FlowState {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("flow states serialise")
    }

    /// `None` before the first step.
    pub fn parse(text: Option<&str>) -> Result<Option<FlowState>, String> {
        match text {
            None => Ok(None),
            Some(t) => serde_json::from_str(t)
                .map(Some)
                .map_err(|e| format!("unreadable flow_state {}: {e}", truncate(t, 200))),
        }
    }
}

/// What came back from one call, as the pure step functions see it. Texts are already
/// scrubbed of the token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reply<'a> {
    Http { status: u16, body: &'a str },
    NotSent(&'a str),
    MaybeSent(&'a str),
}

/// The meaning of a start result code (`query/result` `data.result`).
pub fn result_meaning(code: i64) -> String {
    match code {
        1 => "started".into(),
        3 => "not plugged in".into(),
        4 => "fuse".into(),
        58 => "start timeout".into(),
        62 => "already charging".into(),
        63 => "unknown start error".into(),
        65 => "re-plug the gun".into(),
        n => format!("code {n}"),
    }
}

/// The meaning of an order status (`queryChargeOrderDetail` `data.status`).
pub fn order_status_meaning(status: i64) -> String {
    match status {
        0 => "unpaid".into(),
        1 => "paid, not charging".into(),
        2 => "charging".into(),
        3 => "ended normally".into(),
        4 => "ended abnormally".into(),
        5 => "merged".into(),
        n => format!("status {n}"),
    }
}

/// A wait in milliseconds as operators read it ("5m 30s").
fn after(ms: i64) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(ms.max(0) as u64))
}

fn unknown(detail: impl std::fmt::Display) -> Verdict {
    Verdict::Ambiguous {
        reason: format!("{OUTCOME_UNKNOWN}: {detail}"),
    }
}

fn started(order_num: Option<&str>, order_status: Option<i64>) -> Verdict {
    let mut r = json!({"outcome": "started", "orderNum": order_num});
    if let Some(s) = order_status {
        r["orderStatus"] = json!(s);
    }
    Verdict::Delivered {
        hint: None,
        result: Some(r.to_string()),
    }
}

fn failed(reason: String, code: Option<String>, order_num: Option<&str>) -> Verdict {
    let result = json!({
        "outcome": "failed",
        "refund": true,
        "reason": reason,
        "code": code,
        "orderNum": order_num,
    });
    Verdict::Completed {
        note: format!("charge not started, refund: {reason}"),
        result: Some(result.to_string()),
    }
}

/// `true`/`false`, also as the strings some gateways send.
fn success_of(obj: &Map<String, Value>) -> Option<bool> {
    match obj.get("success")? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `code -1: 余额不足`, from an error reply.
fn describe_error(obj: &Map<String, Value>) -> String {
    let code = text_of(obj.get("code"));
    let message = text_of(obj.get("error")).or_else(|| text_of(obj.get("message")));
    match (code, message) {
        (Some(c), Some(m)) => format!("code {c}: {m}"),
        (Some(c), None) => format!("code {c}"),
        (None, Some(m)) => m,
        (None, None) => "no error text".into(),
    }
}

fn json_object(body: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// The code an attempt records: the reply's `code`, else `success` / `failure`.
pub fn reply_code(body: &str) -> Option<String> {
    let obj = json_object(body)?;
    text_of(obj.get("code"))
        .or_else(|| success_of(&obj).map(|s| if s { "success" } else { "failure" }.to_string()))
}

/// The verdict on a start request.
pub fn after_start(charger: Charger, reply: Reply<'_>, now: i64, s: &Settings) -> Verdict {
    let body = match reply {
        Reply::NotSent(e) => {
            return Verdict::Retry {
                reason: format!("start not sent ({e}); sending it again is safe"),
                retry_after: None,
            }
        }
        Reply::MaybeSent(e) => {
            return unknown(format!(
                "the start request may have reached lbbtech but no reply came back ({e}); no order number is known"
            ))
        }
        Reply::Http { status, body } if status >= 500 => {
            return unknown(format!(
                "lbbtech answered the start with HTTP {status} and may have processed it ({})",
                truncate(body, 200)
            ))
        }
        Reply::Http { status: 429, .. } => {
            return Verdict::Retry {
                reason: "HTTP 429 from lbbtech: the start was refused unprocessed (rate limit)"
                    .into(),
                retry_after: None,
            }
        }
        Reply::Http { status, body } if !(200..300).contains(&status) => {
            return Verdict::Permanent {
                reason: format!(
                    "HTTP {status} from lbbtech to the start (charge not started): check the sink's url ({})",
                    truncate(body, 200)
                ),
            }
        }
        Reply::Http { body, .. } => body,
    };
    let Some(obj) = json_object(body) else {
        return unknown(format!(
            "the start reply is not a JSON object: {}",
            truncate(body, 200)
        ));
    };
    match success_of(&obj) {
        Some(false) => {
            let why = describe_error(&obj);
            failed(
                format!("start refused by lbbtech ({why})"),
                text_of(obj.get("code")),
                None,
            )
        }
        Some(true) => {
            let data = obj.get("data");
            let result_key = text_of(data.and_then(|d| d.get("resultKey")));
            let order_num = text_of(data.and_then(|d| d.get("orderNum")));
            match (result_key, order_num) {
                (Some(result_key), order_num) => {
                    let note = format!(
                        "start accepted (order {}); polling for its result",
                        order_num.as_deref().unwrap_or("?")
                    );
                    Verdict::Continue {
                        state: FlowState::Poll(PollState {
                            result_key,
                            order_num,
                            charger,
                            started_at: now,
                            polls: 0,
                        })
                        .to_json(),
                        next_at: now + s.poll_interval_ms,
                        note,
                    }
                }
                // Nothing to poll: the order is the only way to learn the outcome.
                (None, Some(order_num)) => {
                    let verify_at = s.verify_at(now);
                    Verdict::Continue {
                        note: format!(
                            "start accepted without a resultKey; order {order_num} is looked up in {}",
                            after(verify_at - now)
                        ),
                        state: FlowState::Verify(VerifyState {
                            order_num,
                            charger,
                            verify_at,
                            poll_result: None,
                            queries: 0,
                        })
                        .to_json(),
                        next_at: verify_at,
                    }
                }
                (None, None) => unknown(format!(
                    "the start was accepted but its reply has neither resultKey nor orderNum: {}",
                    truncate(body, 200)
                )),
            }
        }
        None => unknown(format!(
            "the start reply has no `success`: {}",
            truncate(body, 200)
        )),
    }
}

/// The verdict on a poll of the start result.
pub fn after_poll(state: &PollState, reply: Reply<'_>, now: i64, s: &Settings) -> Verdict {
    let order = state.order_num.as_deref();
    let pending = match reply {
        Reply::Http {
            status: 200..=299,
            body,
        } => match json_object(body) {
            Some(obj) if success_of(&obj) == Some(true) => {
                match obj
                    .get("data")
                    .and_then(|d| d.get("result"))
                    .and_then(int_of)
                {
                    Some(1) => return started(order, None),
                    Some(code) => return failure_result(state, code, s),
                    None => format!("success without data.result: {}", truncate(body, 200)),
                }
            }
            Some(obj) => describe_error(&obj),
            None => format!("reply is not a JSON object: {}", truncate(body, 200)),
        },
        Reply::Http { status, .. } => format!("HTTP {status}"),
        Reply::NotSent(e) | Reply::MaybeSent(e) => e.to_string(),
    };
    let next = PollState {
        polls: state.polls + 1,
        ..state.clone()
    };
    let window_end = state.started_at + s.poll_window_ms;
    if now >= window_end {
        return window_over(&next, &pending, s);
    }
    Verdict::Continue {
        note: format!("poll {}: no start result yet ({pending})", next.polls),
        state: FlowState::Poll(next).to_json(),
        // The last poll lands on the window's end.
        next_at: (now + s.poll_interval_ms).min(window_end),
    }
}

/// A start result other than 1: final for two-wheelers, verified first for cars.
fn failure_result(state: &PollState, code: i64, s: &Settings) -> Verdict {
    let reason = format!("start result {code} ({})", result_meaning(code));
    match (state.charger, &state.order_num) {
        (Charger::TwoWheeler, order) => failed(reason, Some(code.to_string()), order.as_deref()),
        (Charger::Car, Some(order_num)) => {
            let verify_at = s.verify_at(state.started_at);
            Verdict::Continue {
                note: format!(
                    "{reason}; car charger: order {order_num} is looked up at start + {} before refunding",
                    after(verify_at - state.started_at)
                ),
                state: FlowState::Verify(VerifyState {
                    order_num: order_num.clone(),
                    charger: Charger::Car,
                    verify_at,
                    poll_result: Some(code),
                    queries: 0,
                })
                .to_json(),
                next_at: verify_at,
            }
        }
        (Charger::Car, None) => unknown(format!(
            "{reason}, but a car charger's result must be verified by its order and the start reply had no orderNum"
        )),
    }
}

/// The poll window passed without a definite result.
fn window_over(state: &PollState, last: &str, s: &Settings) -> Verdict {
    let what = format!(
        "no start result within the poll window ({} after the start, {} polls; last: {last})",
        after(s.poll_window_ms),
        state.polls
    );
    match (state.charger, &state.order_num) {
        (Charger::TwoWheeler, order) => failed(what, None, order.as_deref()),
        (Charger::Car, Some(order_num)) => {
            let verify_at = s.verify_at(state.started_at);
            Verdict::Continue {
                note: format!(
                    "{what}; car charger: order {order_num} is looked up at start + {}",
                    after(verify_at - state.started_at)
                ),
                state: FlowState::Verify(VerifyState {
                    order_num: order_num.clone(),
                    charger: Charger::Car,
                    verify_at,
                    poll_result: None,
                    queries: 0,
                })
                .to_json(),
                next_at: verify_at,
            }
        }
        (Charger::Car, None) => unknown(format!(
            "{what}, and the start reply had no orderNum to verify"
        )),
    }
}

/// What an order query found.
#[derive(Debug, Clone, PartialEq)]
enum Order {
    Status(i64),
    Absent,
}

/// `data` as an object or a list (the platform has been seen sending both); in a list, the
/// entry with our order number, else the first.
fn order_of(obj: &Map<String, Value>, order_num: &str) -> Option<Order> {
    let detail = match obj.get("data") {
        None | Some(Value::Null) => return Some(Order::Absent),
        Some(Value::Array(list)) if list.is_empty() => return Some(Order::Absent),
        Some(Value::Array(list)) => list
            .iter()
            .find(|e| text_of(e.get("orderNum")).as_deref() == Some(order_num))
            .unwrap_or(&list[0]),
        Some(d) => d,
    };
    detail.get("status").and_then(int_of).map(Order::Status)
}

/// The verdict on an order query.
pub fn after_verify(state: &VerifyState, reply: Reply<'_>, now: i64, s: &Settings) -> Verdict {
    let order = state.order_num.as_str();
    let polled = state
        .poll_result
        .map(|c| format!("start result {c} ({}), then ", result_meaning(c)))
        .unwrap_or_default();
    let code = state.poll_result.map(|c| c.to_string());
    let problem = match reply {
        Reply::Http {
            status: 200..=299,
            body,
        } => match json_object(body) {
            Some(obj) if success_of(&obj) == Some(true) => match order_of(&obj, order) {
                Some(Order::Status(st)) if s.started_statuses.contains(&st) => {
                    return started(Some(order), Some(st))
                }
                Some(Order::Status(st)) => {
                    return failed(
                        format!(
                            "{polled}order {order} has status {st} ({})",
                            order_status_meaning(st)
                        ),
                        code,
                        Some(order),
                    )
                }
                Some(Order::Absent) => {
                    return failed(format!("{polled}no order {order}"), code, Some(order))
                }
                None => format!("order detail without a status: {}", truncate(body, 200)),
            },
            Some(obj)
                if success_of(&obj) == Some(false)
                    && text_of(obj.get("error")).is_some_and(|e| e.contains(NO_ORDER_MARK)) =>
            {
                return failed(
                    format!("{polled}no order {order} ({})", describe_error(&obj)),
                    code,
                    Some(order),
                )
            }
            // Any other error (a bad token, a platform fault) says nothing about the order.
            Some(obj) => describe_error(&obj),
            None => format!("reply is not a JSON object: {}", truncate(body, 200)),
        },
        Reply::Http { status, .. } => format!("HTTP {status}"),
        Reply::NotSent(e) | Reply::MaybeSent(e) => e.to_string(),
    };
    let queries = state.queries + 1;
    if queries >= MAX_VERIFY_QUERIES {
        return unknown(format!(
            "order {order} could not be looked up ({queries} queries failed; last: {problem})"
        ));
    }
    let next_at = now + s.verify_backoff_ms(queries);
    Verdict::Continue {
        note: format!(
            "looking up order {order} failed ({problem}); query {}/{MAX_VERIFY_QUERIES} in {}",
            queries + 1,
            after(next_at - now)
        ),
        state: FlowState::Verify(VerifyState {
            queries,
            ..state.clone()
        })
        .to_json(),
        next_at,
    }
}

/// The verdict for a row before anything is sent, if the row decides it alone: a row in
/// doubt with no recorded start may have started a charge already.
pub fn before_start(row: &ClaimedRow) -> Option<Verdict> {
    (row.in_doubt && row.flow_state.is_none()).then(|| {
        unknown(
            "a previous attempt to start this charge was interrupted (its worker stopped or its lease expired mid-request) and may have reached lbbtech; no order number is known",
        )
    })
}

pub fn validate_config(name: &str, cfg: &SinkConfig) -> Vec<String> {
    let mut p = Vec::new();
    if cfg.poll_interval.is_some_and(|d| d.is_zero()) {
        p.push(format!("sinks.{name}: poll_interval must be above 0"));
    }
    let interval = cfg.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL);
    let window = cfg.poll_window.unwrap_or(DEFAULT_POLL_WINDOW);
    if window < interval {
        p.push(format!(
            "sinks.{name}: poll_window ({}) must not be shorter than poll_interval ({})",
            humantime::format_duration(window),
            humantime::format_duration(interval)
        ));
    }
    if cfg.started_statuses.as_ref().is_some_and(|s| s.is_empty()) {
        p.push(format!(
            "sinks.{name}: started_statuses must list at least one order status (default [2, 3])"
        ));
    }
    let url = cfg.url.trim_end_matches('/');
    if [START_API, RESULT_API, ORDER_API]
        .iter()
        .any(|api| url.ends_with(api))
    {
        p.push(format!(
            "sinks.{name}: url must be the API base (e.g. https://center.lbbtech.com/open), not one endpoint"
        ));
    }
    if cfg.callback_url.is_some() {
        p.push(format!(
            "sinks.{name}: callback_url is not supported by this build yet: remove it and read outcomes from the outbox_outcomes view"
        ));
    }
    p
}

pub struct LbbtechSink {
    base: String,
    token: Secret,
    settings: Settings,
    timeout: Duration,
    client: reqwest::Client,
}

impl LbbtechSink {
    pub fn new(cfg: &SinkConfig, secret: Secret, client: reqwest::Client) -> Result<Self, String> {
        Ok(LbbtechSink {
            base: cfg.url.trim_end_matches('/').to_string(),
            token: secret,
            settings: Settings::from_config(cfg),
            timeout: cfg.timeout,
            client,
        })
    }

    /// Never: a start that may have been applied is not sent again, and the poll and
    /// verify steps handle their own failures.
    pub fn retry_ambiguous(&self) -> bool {
        false
    }

    /// Why the sink's rows must be held right now (e.g. an expired credential), if so.
    pub fn hold(&self, _now_ms: i64) -> Option<String> {
        None
    }

    /// Runs the row's next step: start, poll or verify.
    pub async fn deliver(&self, row: &ClaimedRow) -> StepOutcome {
        let now = clock::now_ms();
        let decided = |verdict| StepOutcome {
            verdict,
            info: AttemptInfo {
                started_at: now,
                ..Default::default()
            },
        };
        let state = match FlowState::parse(row.flow_state.as_deref()) {
            Ok(s) => s,
            // A state was recorded, so a start was accepted: it may be charging.
            Err(e) => return decided(unknown(e)),
        };
        match state {
            None => {
                if let Some(v) = before_start(row) {
                    return decided(v);
                }
                let cmd = match validate(&row.payload) {
                    Ok(c) => c,
                    Err(reason) => return decided(Verdict::Permanent { reason }),
                };
                let fields: Vec<(&str, &str)> =
                    cmd.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                self.call(START_API, &fields, |reply, at| {
                    after_start(cmd.charger, reply, at, &self.settings)
                })
                .await
            }
            Some(FlowState::Poll(p)) => {
                self.call(RESULT_API, &[("resultKey", &p.result_key)], |reply, at| {
                    after_poll(&p, reply, at, &self.settings)
                })
                .await
            }
            // Claimed early (a clock step, an operator): wait for the lookup time.
            Some(FlowState::Verify(v)) if now < v.verify_at => decided(Verdict::Continue {
                note: format!(
                    "order {} is looked up in {}",
                    v.order_num,
                    after(v.verify_at - now)
                ),
                next_at: v.verify_at,
                state: FlowState::Verify(v).to_json(),
            }),
            Some(FlowState::Verify(v)) => {
                self.call(ORDER_API, &[("orderNum", &v.order_num)], |reply, at| {
                    after_verify(&v, reply, at, &self.settings)
                })
                .await
            }
        }
    }

    /// Sends one call and classifies its reply with `classify(reply, now)`.
    async fn call(
        &self,
        api: &str,
        fields: &[(&str, &str)],
        classify: impl FnOnce(Reply<'_>, i64) -> Verdict,
    ) -> StepOutcome {
        let request = self
            .client
            .post(format!("{}/{api}", self.base))
            .timeout(self.timeout)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=UTF-8",
            )
            .body(form_body(&self.token, fields));
        let sent = http::send(request).await;
        let mut info = sent.attempt_info();
        let now = clock::now_ms();
        let verdict = match &sent.result {
            Ok(r) => {
                let body = self.token.scrub(&r.body);
                info.http_status = Some(r.status);
                info.reply_code = reply_code(&body);
                info.reply = Some(truncate(&body, 2000));
                classify(
                    Reply::Http {
                        status: r.status,
                        body: &body,
                    },
                    now,
                )
            }
            Err(e) => {
                let text = self.token.scrub(&e.to_string());
                info.error = Some(text.clone());
                match e {
                    SendError::NotSent(_) => classify(Reply::NotSent(&text), now),
                    SendError::MaybeSent(_) => classify(Reply::MaybeSent(&text), now),
                }
            }
        };
        StepOutcome { verdict, info }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(
            matches!(v, Verdict::Ambiguous { reason } if reason.contains("20190504152521862699"))
        );
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

    fn sink_config(extra: &str) -> SinkConfig {
        toml::from_str(&format!(
            "type = \"lbbtech\"\nurl = \"http://127.0.0.1:1/open\"\nsecret_env = \"X\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn config_defaults_and_checks() {
        let s = Settings::from_config(&sink_config(""));
        assert_eq!(s, settings());
        let s = Settings::from_config(&sink_config(
            "poll_interval = \"100ms\"\npoll_window = \"1s\"\nverify_after = \"2s\"\nstarted_statuses = [2]",
        ));
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
        c.url = "https://center.lbbtech.com/open/newPriceStandardCharge".into();
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
        cfg.url = format!("http://{addr}/open");
        let sink = LbbtechSink::new(
            &cfg,
            Secret::new("sEcReT-T0KEN"),
            http::client(Duration::from_secs(2), 1),
        )
        .unwrap();
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
}
