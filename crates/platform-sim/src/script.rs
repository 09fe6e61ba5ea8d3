//! Scripted behaviour: what the simulator does with the next request for a key.
//!
//! A [`Step`] is one reply decision (reply normally, reply an error code, a bare HTTP status,
//! drop the connection, reply garbage), optionally after a delay. Scripts are queues of steps
//! per key (4pyun `replenish_order`, epeis `SETTLEMENT_AID`); each request for the key consumes
//! one step, and an exhausted queue means normal behaviour. lbbtech is scripted per start with
//! an [`LbbScript`], because one start drives several later calls (polls, order queries).
//!
//! Every type here deserializes from the friendly JSON form documented on [`Step`], so the
//! binary's script file and the control API share it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::faults::RandomFaults;
use crate::outage::{Credentials, Refusal, Streak, WrongSecret};

/// What to do with one request, after an optional delay.
///
/// JSON forms (all accepted wherever a step is expected):
///
/// | JSON | meaning |
/// |-|-|
/// | `"ok"` | normal behaviour |
/// | `"drop_before"` | read the request, close the connection, apply nothing |
/// | `"drop_after"` | process the request normally (apply it), then close without replying |
/// | `"garbage"` | HTTP 200 with a body that is not JSON; nothing applied |
/// | `{"code": "503", "message": "...", "hint": "..."}` | HTTP 200 with that platform code; nothing applied (`message`, `hint` optional; `code` may be a number) |
/// | `{"http": 503, "retry_after": 2}` | bare HTTP status, optional `Retry-After` seconds; nothing applied |
/// | `{"delay_ms": 2000}` | normal behaviour, reply 2 s late |
/// | `{"delay_ms": 2000, "then": "drop_after"}` | any step, 2 s late |
///
/// `delay_ms` may also sit beside `code` or `http`. A delayed step decides and applies first and
/// then waits, so a client that times out on a delayed `ok` leaves the request applied: the
/// ambiguous case a slow platform produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Wait this long before replying (or dropping).
    pub delay: Option<Duration>,
    /// What to reply.
    pub action: Action,
}

/// The reply decision of a [`Step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Normal platform behaviour.
    Ok,
    /// HTTP 200 with this platform code. For epeis the code is sent as a JSON number when it
    /// parses as one; for lbbtech it becomes `{"success":false,"code":..,"error":message}`.
    Reply {
        code: String,
        message: Option<String>,
        hint: Option<String>,
    },
    /// A bare HTTP status with an empty body.
    Http {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Close the connection without replying and without applying.
    DropBefore,
    /// Apply as normal, then close the connection without replying.
    DropAfter,
    /// HTTP 200 with a non-JSON body.
    Garbage,
}

impl Step {
    fn of(action: Action) -> Self {
        Step {
            delay: None,
            action,
        }
    }

    pub fn ok() -> Self {
        Self::of(Action::Ok)
    }

    /// Reply this platform code with the platform's usual message for it.
    pub fn code(code: impl Into<String>) -> Self {
        Self::of(Action::Reply {
            code: code.into(),
            message: None,
            hint: None,
        })
    }

    pub fn code_message(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::code(code).with_message(message)
    }

    pub fn code_hint(code: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::code(code).with_hint(hint)
    }

    pub fn http(status: u16) -> Self {
        Self::of(Action::Http {
            status,
            retry_after: None,
        })
    }

    pub fn http_retry_after(status: u16, retry_after_secs: u64) -> Self {
        Self::of(Action::Http {
            status,
            retry_after: Some(retry_after_secs),
        })
    }

    pub fn drop_before() -> Self {
        Self::of(Action::DropBefore)
    }

    pub fn drop_after() -> Self {
        Self::of(Action::DropAfter)
    }

    pub fn garbage() -> Self {
        Self::of(Action::Garbage)
    }

    /// The same step, replied `delay` late.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Sets the message of a [`Action::Reply`] step; no effect on other steps.
    pub fn with_message(mut self, text: impl Into<String>) -> Self {
        if let Action::Reply { message, .. } = &mut self.action {
            *message = Some(text.into());
        }
        self
    }

    /// Sets the hint of a [`Action::Reply`] step; no effect on other steps.
    pub fn with_hint(mut self, text: impl Into<String>) -> Self {
        if let Action::Reply { hint, .. } = &mut self.action {
            *hint = Some(text.into());
        }
        self
    }

    /// True for a step that changes nothing: `ok` without delay.
    pub fn is_plain_ok(&self) -> bool {
        self.delay.is_none() && self.action == Action::Ok
    }
}

impl Default for Step {
    fn default() -> Self {
        Step::ok()
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&json)
    }
}

/// A code given in JSON as a string or a number; both mean the same code.
#[derive(Deserialize)]
#[serde(untagged)]
enum CodeRepr {
    Text(String),
    Number(serde_json::Number),
}

/// The friendly JSON form of a step, before validation.
#[derive(Deserialize)]
#[serde(untagged)]
enum StepRepr {
    Word(String),
    Object(Box<StepObject>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepObject {
    delay_ms: Option<u64>,
    then: Option<StepRepr>,
    code: Option<CodeRepr>,
    message: Option<String>,
    hint: Option<String>,
    http: Option<u16>,
    retry_after: Option<u64>,
}

impl TryFrom<StepRepr> for Step {
    type Error = String;

    fn try_from(repr: StepRepr) -> Result<Self, Self::Error> {
        match repr {
            StepRepr::Word(word) => match word.as_str() {
                "ok" => Ok(Step::ok()),
                "drop_before" => Ok(Step::drop_before()),
                "drop_after" => Ok(Step::drop_after()),
                "garbage" => Ok(Step::garbage()),
                other => Err(format!(
                    "unknown step {other:?}: expected ok, drop_before, drop_after, garbage or an object"
                )),
            },
            StepRepr::Object(obj) => {
                let StepObject {
                    delay_ms,
                    then,
                    code,
                    message,
                    hint,
                    http,
                    retry_after,
                } = *obj;
                let chosen = [then.is_some(), code.is_some(), http.is_some()]
                    .iter()
                    .filter(|set| **set)
                    .count();
                if chosen > 1 {
                    return Err("a step takes only one of `then`, `code`, `http`".into());
                }
                if code.is_none() && (message.is_some() || hint.is_some()) {
                    return Err("`message` and `hint` need `code`".into());
                }
                if http.is_none() && retry_after.is_some() {
                    return Err("`retry_after` needs `http`".into());
                }
                let mut step = if let Some(then) = then {
                    Step::try_from(then)?
                } else if let Some(code) = code {
                    let code = match code {
                        CodeRepr::Text(text) => text,
                        CodeRepr::Number(number) => number.to_string(),
                    };
                    Step::of(Action::Reply {
                        code,
                        message,
                        hint,
                    })
                } else if let Some(status) = http {
                    if !(100..=999).contains(&status) {
                        return Err(format!("`http` {status} is not an HTTP status"));
                    }
                    Step::of(Action::Http {
                        status,
                        retry_after,
                    })
                } else if delay_ms.is_some() {
                    Step::ok()
                } else {
                    return Err("empty step object: give `code`, `http`, `then` or `delay_ms`".into());
                };
                if let Some(ms) = delay_ms {
                    // A nested `then` with its own delay waits for both.
                    let total = step.delay.unwrap_or_default() + Duration::from_millis(ms);
                    step.delay = Some(total);
                }
                Ok(step)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let repr = StepRepr::deserialize(deserializer).map_err(|_| {
            D::Error::custom(
                "invalid step: expected \"ok\", \"drop_before\", \"drop_after\", \"garbage\", \
                 {\"code\":..}, {\"http\":..} or {\"delay_ms\":..,\"then\":..}",
            )
        })?;
        Step::try_from(repr).map_err(D::Error::custom)
    }
}

/// The canonical form of a step, written back out in records and the control API.
#[derive(Serialize)]
struct StepOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    then: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl Serialize for Step {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let word = match &self.action {
            Action::Ok => Some("ok"),
            Action::DropBefore => Some("drop_before"),
            Action::DropAfter => Some("drop_after"),
            Action::Garbage => Some("garbage"),
            Action::Reply { .. } | Action::Http { .. } => None,
        };
        let delay_ms = self
            .delay
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if let (Some(word), None) = (word, delay_ms) {
            return serializer.serialize_str(word);
        }
        let mut out = StepOut {
            delay_ms,
            then: None,
            code: None,
            message: None,
            hint: None,
            http: None,
            retry_after: None,
        };
        match &self.action {
            Action::Reply {
                code,
                message,
                hint,
            } => {
                out.code = Some(code);
                out.message = message.as_deref();
                out.hint = hint.as_deref();
            }
            Action::Http {
                status,
                retry_after,
            } => {
                out.http = Some(*status);
                out.retry_after = *retry_after;
            }
            // `ok` with a delay is just `{"delay_ms": N}`.
            Action::Ok => {}
            _ => out.then = word,
        }
        out.serialize(serializer)
    }
}

/// Whether an lbbtech order exists for a start, and with which status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LbbOrder {
    /// An order with status 2 (charging) exists iff the start was applied and its result is 1.
    #[default]
    Auto,
    /// No order, whatever the result.
    Absent,
    /// An order with this status (0..=5) exists once the start was applied, whatever the result.
    Status(u8),
}

impl<'de> Deserialize<'de> for LbbOrder {
    /// `"auto"`, `"none"` / `null`, or a status number.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Status(u8),
            Word(String),
        }
        match Option::<Repr>::deserialize(deserializer)? {
            None => Ok(LbbOrder::Absent),
            Some(Repr::Status(status)) if status <= 5 => Ok(LbbOrder::Status(status)),
            Some(Repr::Status(status)) => Err(D::Error::custom(format!(
                "order status {status} is not one of 0..=5"
            ))),
            Some(Repr::Word(word)) => match word.as_str() {
                "auto" => Ok(LbbOrder::Auto),
                "none" => Ok(LbbOrder::Absent),
                other => Err(D::Error::custom(format!(
                    "order {other:?}: expected \"auto\", \"none\", null or a status 0..=5"
                ))),
            },
        }
    }
}

impl Serialize for LbbOrder {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LbbOrder::Auto => serializer.serialize_str("auto"),
            LbbOrder::Absent => serializer.serialize_str("none"),
            LbbOrder::Status(status) => serializer.serialize_u8(*status),
        }
    }
}

/// The script of one lbbtech start (`newPriceStandardCharge`) for a `simId`, and of the polls
/// and order queries that follow it.
///
/// JSON: `{"start": <step>, "result_after_polls": 2, "result": 1, "never_result": false,
/// "order": "auto" | "none" | null | 0..5, "order_as_list": false}`, every field optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LbbScript {
    /// How the start request itself is answered. `drop_after` applies the start (order and
    /// result exist) but sends no reply.
    pub start: Step,
    /// Polls answered "结果未返回" before the result is known: the result is known on poll
    /// number `result_after_polls + 1`.
    pub result_after_polls: u32,
    /// The start result once known: 1 started; 3, 4, 58, 62, 63, 65 are failure reasons.
    pub result: i64,
    /// The result never becomes known; polls say "结果未返回" until the key expires.
    pub never_result: bool,
    /// Whether an order exists for this start, see [`LbbOrder`].
    pub order: LbbOrder,
    /// Reply order details with `data` as a one-element list instead of an object.
    pub order_as_list: bool,
}

impl Default for LbbScript {
    fn default() -> Self {
        LbbScript {
            start: Step::ok(),
            result_after_polls: 0,
            result: 1,
            never_result: false,
            order: LbbOrder::Auto,
            order_as_list: false,
        }
    }
}

/// One lbbtech script for a `simId`, or a list of them (one per start), in JSON.
fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<HashMap<String, Vec<LbbScript>>, D::Error> {
    let raw = HashMap::<String, serde_json::Value>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(sim_id, value)| {
            let scripts = if value.is_array() {
                Vec::<LbbScript>::deserialize(value)
            } else {
                LbbScript::deserialize(value).map(|one| vec![one])
            };
            scripts
                .map(|scripts| (sim_id.clone(), scripts))
                .map_err(|e| D::Error::custom(format!("lbbtech.{sim_id}: {e}")))
        })
        .collect()
}

/// A whole script document: the binary's `--script` file and the body of `POST /_sim/script`.
///
/// ```json
/// {
///   "pyun":    {"ORDER-1": ["drop_after", {"http": 503, "retry_after": 1}, "ok"]},
///   "epeis":   {"SA00000000000001": [{"code": 2001, "message": "结算户不存在"}]},
///   "lbbtech": {"865933034812509": {"result_after_polls": 2, "result": 1}},
///   "random":  {"p_503": 0.1, "p_drop_before": 0.05, "p_drop_after": 0.05,
///               "delay_ms": [0, 300], "seed": 42},
///   "clock_offset_ms": 0,
///   "wrong_secret": {"for_ms": 5000, "platforms": ["pyun"]},
///   "streak": {"count": 5, "status": 503, "retry_after": 2},
///   "refuse_connections": {"for_ms": 3000},
///   "credentials": {"pyun_app_secret": "new-secret"},
///   "count_only": false
/// }
/// ```
///
/// Applying one appends its steps to the existing queues (`lbbtech` values may be one script
/// or a list, one per start); every other field replaces the current value when present (see
/// [`crate::outage`] for the platform-wide ones). `count_only: true` stops keeping each
/// request (only the counts of `GET /_sim/stats` go on), for benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimScript {
    pub pyun: HashMap<String, Vec<Step>>,
    pub epeis: HashMap<String, Vec<Step>>,
    #[serde(deserialize_with = "one_or_many")]
    pub lbbtech: HashMap<String, Vec<LbbScript>>,
    /// T/CEC steps, see [`crate::tcec`].
    pub tcec: crate::tcec::TcecScript,
    pub random: Option<RandomFaults>,
    pub clock_offset_ms: Option<i64>,
    pub wrong_secret: Option<WrongSecret>,
    pub streak: Option<Streak>,
    pub refuse_connections: Option<Refusal>,
    pub credentials: Option<Credentials>,
    pub count_only: Option<bool>,
}

/// The pending script queues of a running simulator.
#[derive(Debug, Default)]
pub(crate) struct Scripts {
    pyun: HashMap<String, VecDeque<Step>>,
    epeis: HashMap<String, VecDeque<Step>>,
    lbbtech: HashMap<String, VecDeque<LbbScript>>,
}

impl Scripts {
    pub(crate) fn push_pyun(&mut self, key: &str, steps: Vec<Step>) {
        self.pyun.entry(key.to_owned()).or_default().extend(steps);
    }

    pub(crate) fn push_epeis(&mut self, key: &str, steps: Vec<Step>) {
        self.epeis.entry(key.to_owned()).or_default().extend(steps);
    }

    pub(crate) fn push_lbbtech(&mut self, sim_id: &str, scripts: Vec<LbbScript>) {
        self.lbbtech
            .entry(sim_id.to_owned())
            .or_default()
            .extend(scripts);
    }

    pub(crate) fn next_pyun(&mut self, key: &str) -> Option<Step> {
        self.pyun.get_mut(key)?.pop_front()
    }

    pub(crate) fn next_epeis(&mut self, key: &str) -> Option<Step> {
        self.epeis.get_mut(key)?.pop_front()
    }

    pub(crate) fn next_lbbtech(&mut self, sim_id: &str) -> Option<LbbScript> {
        self.lbbtech.get_mut(sim_id)?.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(json: &str) -> Step {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn words_parse() {
        assert_eq!(step(r#""ok""#), Step::ok());
        assert_eq!(step(r#""drop_before""#), Step::drop_before());
        assert_eq!(step(r#""drop_after""#), Step::drop_after());
        assert_eq!(step(r#""garbage""#), Step::garbage());
        assert!(serde_json::from_str::<Step>(r#""explode""#).is_err());
    }

    #[test]
    fn objects_parse() {
        assert_eq!(
            step(r#"{"code":"200","hint":"签名验证不通过"}"#),
            Step::code_hint("200", "签名验证不通过")
        );
        assert_eq!(step(r#"{"code":2001}"#), Step::code("2001"));
        assert_eq!(
            step(r#"{"http":503,"retry_after":1}"#),
            Step::http_retry_after(503, 1)
        );
        assert_eq!(
            step(r#"{"delay_ms":2000}"#),
            Step::ok().delayed(Duration::from_secs(2))
        );
        assert_eq!(
            step(r#"{"delay_ms":5,"then":"drop_after"}"#),
            Step::drop_after().delayed(Duration::from_millis(5))
        );
        assert_eq!(
            step(r#"{"delay_ms":5,"http":500}"#),
            Step::http(500).delayed(Duration::from_millis(5))
        );
        assert!(serde_json::from_str::<Step>(r#"{"code":"1","http":500}"#).is_err());
        assert!(serde_json::from_str::<Step>(r#"{}"#).is_err());
        assert!(serde_json::from_str::<Step>(r#"{"colour":"red"}"#).is_err());
    }

    #[test]
    fn steps_round_trip() {
        let steps = [
            Step::ok(),
            Step::ok().delayed(Duration::from_millis(7)),
            Step::code_message("503", "服务暂不可用").with_hint("h"),
            Step::http_retry_after(429, 3).delayed(Duration::from_millis(1)),
            Step::drop_before(),
            Step::drop_after().delayed(Duration::from_millis(2)),
            Step::garbage(),
        ];
        for original in steps {
            let json = serde_json::to_string(&original).unwrap();
            assert_eq!(step(&json), original, "{json}");
        }
    }

    #[test]
    fn lbb_script_defaults_and_order_forms() {
        let script: LbbScript = serde_json::from_str("{}").unwrap();
        assert_eq!(script, LbbScript::default());
        let script: LbbScript = serde_json::from_str(r#"{"order":null}"#).unwrap();
        assert_eq!(script.order, LbbOrder::Absent);
        let script: LbbScript =
            serde_json::from_str(r#"{"order":3,"start":"drop_after","result":62}"#).unwrap();
        assert_eq!(script.order, LbbOrder::Status(3));
        assert_eq!(script.start, Step::drop_after());
        assert_eq!(script.result, 62);
        assert!(serde_json::from_str::<LbbScript>(r#"{"order":9}"#).is_err());
    }

    #[test]
    fn sim_script_parses_the_documented_example() {
        let script: SimScript = serde_json::from_str(
            r#"{
              "pyun": {"ORDER-1": ["drop_after", {"http": 503, "retry_after": 1}, "ok"]},
              "epeis": {"SA00000000000001": [{"code": 2001, "message": "结算户不存在"}]},
              "lbbtech": {"865933034812509": {"result_after_polls": 2, "result": 1},
                          "865933034812510": [{"start": "drop_after"}, {}]},
              "random": {"p_503": 0.1, "p_drop_before": 0.05, "p_drop_after": 0.05,
                         "delay_ms": [0, 300], "seed": 42},
              "clock_offset_ms": 0
            }"#,
        )
        .unwrap();
        assert_eq!(script.pyun["ORDER-1"].len(), 3);
        assert_eq!(script.lbbtech["865933034812509"].len(), 1);
        assert_eq!(script.lbbtech["865933034812510"].len(), 2);
        assert_eq!(script.random.unwrap().seed, Some(42));
        assert!(serde_json::from_str::<SimScript>(r#"{"lbbtech":{"x":{"bogus":1}}}"#).is_err());
    }

    #[test]
    fn queues_are_consumed_in_order() {
        let mut scripts = Scripts::default();
        scripts.push_pyun("A", vec![Step::http(503), Step::ok()]);
        assert_eq!(scripts.next_pyun("A"), Some(Step::http(503)));
        assert_eq!(scripts.next_pyun("A"), Some(Step::ok()));
        assert_eq!(scripts.next_pyun("A"), None);
        assert_eq!(scripts.next_pyun("B"), None);
    }
}
