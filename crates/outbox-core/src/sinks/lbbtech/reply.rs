//! What each lbbtech reply means at each step of the flow. Pure: no I/O, no clock.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::flow::{FlowState, PollState, Settings, VerifyState};
use super::payload::Charger;
use super::{MAX_VERIFY_QUERIES, OUTCOME_UNKNOWN};
use crate::event::ClaimedRow;
use crate::health::SinkCause;
use crate::outcome::{truncate, Blame, Verdict};

/// The platform's answer to an order query for an order it does not have ("订单不存在").
const NO_ORDER_MARK: &str = "不存在";

/// What came back from one call, as the pure step functions see it. Texts are already
/// scrubbed of the token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reply<'a> {
    Http { status: u16, body: &'a str },
    NotSent(&'a str),
    MaybeSent(&'a str),
}

/// The platform's refusal of the token ("token无效"): a wrong or revoked token.
const BAD_TOKEN_MARK: &str = "token";

/// Whose fault a failed call is, whatever the step: a refused token (and 401/403), a wrong
/// URL (404, 3xx) and an unwell platform (5xx, 429, a reply that is not JSON) are the sink's;
/// nothing sent is the link's; any other refusal (a bad field, a charger that failed to
/// start) is the row's.
pub fn blame(reply: Reply<'_>) -> Blame {
    let (status, body) = match reply {
        Reply::NotSent(_) => return Blame::Link,
        Reply::MaybeSent(_) => return Blame::Sink(SinkCause::Unavailable),
        Reply::Http { status, body } => (status, body),
    };
    if let Some(b) = Blame::of_status(status) {
        return b;
    }
    let Some(obj) = json_object(body) else {
        return Blame::Sink(SinkCause::Unavailable);
    };
    let refused_token = success_of(&obj) == Some(false)
        && text_of(obj.get("error")).is_some_and(|e| e.contains(BAD_TOKEN_MARK));
    if refused_token {
        Blame::Sink(SinkCause::Auth)
    } else {
        Blame::Row
    }
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
pub(super) fn after(ms: i64) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(ms.max(0) as u64))
}

pub(super) fn unknown(detail: impl std::fmt::Display) -> Verdict {
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
        Some(true) => start_accepted(charger, &obj, body, now, s),
        None => unknown(format!(
            "the start reply has no `success`: {}",
            truncate(body, 200)
        )),
    }
}

/// A start that lbbtech accepted: poll its result, or look its order up.
fn start_accepted(
    charger: Charger,
    obj: &Map<String, Value>,
    body: &str,
    now: i64,
    s: &Settings,
) -> Verdict {
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
/// entry with our order number, and none means no order: another order's status says
/// nothing about ours.
fn order_of(obj: &Map<String, Value>, order_num: &str) -> Option<Order> {
    let detail = match obj.get("data") {
        None | Some(Value::Null) => return Some(Order::Absent),
        Some(Value::Array(list)) => {
            match list
                .iter()
                .find(|e| text_of(e.get("orderNum")).as_deref() == Some(order_num))
            {
                Some(entry) => entry,
                None => return Some(Order::Absent),
            }
        }
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
