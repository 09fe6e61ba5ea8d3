//! lbbtech (驴充充) open API: starting a charge, polling its result, querying the order.
//! A pure state machine; the caller passes the clock in.
//!
//! A start that is applied creates a pending result under its `resultKey` and, depending on
//! its [`LbbScript`], an order. The result is "not yet returned" for the scripted number of
//! polls, then known, and expires `lbbtech_result_ttl` after the start.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{json, Value};

use crate::clock::compact_utc;
use crate::config::SimConfig;
use crate::form::Form;
use crate::outcome::Outcome;
use crate::script::{LbbOrder, LbbScript};

pub const BASE_PATH: &str = "/open";
pub const START_PATH: &str = "/open/newPriceStandardCharge";
pub const RESULT_PATH: &str = "/open/query/result";
pub const ORDER_PATH: &str = "/open/queryChargeOrderDetail";

pub const PENDING: &str = "结果未返回";
pub const EXPIRED: &str = "resultKey已过期";
pub const NO_ORDER: &str = "订单不存在";
pub const BAD_TOKEN: &str = "token无效";

/// Required start fields, in the order of the interface document.
const START_REQUIRED: [&str; 8] = [
    "simId",
    "portNum",
    "param",
    "payMoney",
    "selectPriceType",
    "infoPriceId",
    "chargeBefore",
    "isAdvanceReceive",
];

/// Start fields that must be integers; `payMoney` is a decimal.
const START_INTEGERS: [&str; 6] = [
    "portNum",
    "param",
    "selectPriceType",
    "infoPriceId",
    "chargeBefore",
    "isAdvanceReceive",
];

/// The platform's error shape.
pub fn error(code: &str, message: &str) -> Value {
    json!({"code": code, "error": message, "success": false})
}

fn refused(message: &str) -> Outcome {
    Outcome::rejected("-1", error("-1", message))
}

/// The code recorded for a start that succeeded: its reply carries no `code`.
pub const START_OK_CODE: &str = "success";

/// The three calls of the open API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Start,
    Result,
    Order,
}

impl Call {
    pub fn from_path(path: &str) -> Option<Call> {
        match path {
            START_PATH => Some(Call::Start),
            RESULT_PATH => Some(Call::Result),
            ORDER_PATH => Some(Call::Order),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Pending {
    sim_id: String,
    port_num: i64,
    started_at: Instant,
    polls: u32,
    script: LbbScript,
    scripted: bool,
}

#[derive(Debug)]
struct Order {
    sim_id: String,
    status: Option<u8>,
    as_list: bool,
    scripted: bool,
}

/// The platform's memory of starts, results and orders.
#[derive(Debug, Default)]
pub struct Lbb {
    issued: u64,
    starts: HashMap<String, usize>,
    results: HashMap<String, Pending>,
    orders: HashMap<String, Order>,
}

impl Lbb {
    /// The `simId` a request concerns and whether its start was scripted (a scripted start's
    /// polls and order queries get no random faults).
    pub fn context(&self, call: Call, form: &Form) -> (Option<String>, bool) {
        match call {
            Call::Start => (form.get("simId").map(str::to_owned), false),
            Call::Result => {
                let key = form.get("resultKey").unwrap_or_default();
                match self.results.get(key) {
                    Some(pending) => (Some(pending.sim_id.clone()), pending.scripted),
                    None => (sim_id_of_result_key(key), false),
                }
            }
            Call::Order => {
                let order = form.get("orderNum").unwrap_or_default();
                match self.orders.get(order) {
                    Some(order) => (Some(order.sim_id.clone()), order.scripted),
                    None => (None, false),
                }
            }
        }
    }

    /// Starts a charge: validates, then creates the pending result and, per the script, the
    /// order. `script` is `None` for a start nobody scripted (default behaviour).
    pub fn start(
        &mut self,
        config: &SimConfig,
        form: &Form,
        script: Option<&LbbScript>,
        domain: &str,
        now: Instant,
        now_ms: i64,
    ) -> Outcome {
        if form.get("token") != Some(config.lbbtech_token.as_str()) {
            return refused(BAD_TOKEN);
        }
        if let Some(missing) = START_REQUIRED
            .iter()
            .find(|name| form.present(name).is_none())
        {
            return refused(&format!("参数{missing}不能为空"));
        }
        let integers = START_INTEGERS.into_iter().chain(
            // userId is optional but typed when sent.
            form.present("userId").map(|_| "userId"),
        );
        for name in integers {
            if form
                .get(name)
                .unwrap_or_default()
                .trim()
                .parse::<i64>()
                .is_err()
            {
                return refused(&format!("参数{name}格式错误"));
            }
        }
        if form
            .get("payMoney")
            .unwrap_or_default()
            .trim()
            .parse::<f64>()
            .is_err()
        {
            return refused("参数payMoney格式错误");
        }
        let scripted = script.is_some();
        let script = script.cloned().unwrap_or_default();
        let sim_id = form.get("simId").unwrap_or_default().to_owned();
        let port_num = form
            .get("portNum")
            .and_then(|p| p.trim().parse::<i64>().ok())
            .unwrap_or_default();

        // Sequence numbers start high only so keys look like the documented sample.
        self.issued += 1;
        let n = 15_965 + self.issued;
        let result_key = format!("charge_{sim_id}_{port_num}_{n}_");
        let order_num = format!("{}{:06}", compact_utc(now_ms), n % 1_000_000);
        let status = match script.order {
            LbbOrder::Auto => (!script.never_result && script.result == 1).then_some(2),
            LbbOrder::Absent => None,
            LbbOrder::Status(status) => Some(status),
        };
        self.orders.insert(
            order_num.clone(),
            Order {
                sim_id: sim_id.clone(),
                status,
                as_list: script.order_as_list,
                scripted,
            },
        );
        self.results.insert(
            result_key.clone(),
            Pending {
                sim_id: sim_id.clone(),
                port_num,
                started_at: now,
                polls: 0,
                script,
                scripted,
            },
        );
        let starts = self.starts.entry(sim_id.clone()).or_default();
        *starts += 1;
        Outcome {
            reply: json!({
                "success": true,
                "data": {
                    "portNum": port_num,
                    "domain": domain,
                    "simId": sim_id,
                    "resultKey": result_key,
                    "orderNum": order_num,
                }
            }),
            code: START_OK_CODE.into(),
            applied: true,
            duplicate: *starts > 1,
        }
    }

    /// `query/result`: pending, known or expired. Counts the polls that see "pending".
    pub fn poll(&mut self, config: &SimConfig, form: &Form, now: Instant) -> Outcome {
        if form.get("token") != Some(config.lbbtech_token.as_str()) {
            return refused(BAD_TOKEN);
        }
        let Some(key) = form.present("resultKey") else {
            return refused("参数resultKey不能为空");
        };
        let live = self
            .results
            .get_mut(key)
            .filter(|p| now.duration_since(p.started_at) < config.lbbtech_result_ttl);
        let Some(pending) = live else {
            return refused(EXPIRED);
        };
        if pending.script.never_result || pending.polls < pending.script.result_after_polls {
            pending.polls += 1;
            return Outcome::rejected(
                "-1",
                json!({"success": false, "code": "-1", "error": PENDING}),
            );
        }
        Outcome::rejected(
            "0",
            json!({
                "success": true,
                "code": "0",
                "error": "",
                "data": {
                    "result": pending.script.result,
                    "deviceId": pending.sim_id,
                    "portNum": pending.port_num,
                }
            }),
        )
    }

    /// `queryChargeOrderDetail`.
    pub fn order_detail(&self, config: &SimConfig, form: &Form) -> Outcome {
        if form.get("token") != Some(config.lbbtech_token.as_str()) {
            return refused(BAD_TOKEN);
        }
        let Some(order_num) = form.present("orderNum") else {
            return refused("参数orderNum不能为空");
        };
        let found = self
            .orders
            .get(order_num)
            .and_then(|order| Some((order.status?, order.as_list)));
        let Some((status, as_list)) = found else {
            return refused(NO_ORDER);
        };
        let detail = json!({"orderNum": order_num, "status": status});
        let data = if as_list { json!([detail]) } else { detail };
        Outcome::rejected("0", json!({"success": true, "code": "0", "data": data}))
    }

    /// Starts applied for a `simId`.
    pub fn start_count(&self, sim_id: &str) -> usize {
        self.starts.get(sim_id).copied().unwrap_or_default()
    }
}

/// The `simId` inside a `charge_<simId>_<port>_<n>_` key, for keys the platform never issued.
fn sim_id_of_result_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix("charge_")?.strip_suffix('_')?;
    let mut parts = rest.rsplitn(3, '_');
    let (_n, _port, sim_id) = (parts.next()?, parts.next()?, parts.next()?);
    Some(sim_id.to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const NOW_MS: i64 = 1_681_176_000_816;

    fn start_form(sim_id: &str) -> Form {
        Form::from_pairs([
            ("token", "demo-token"),
            ("simId", sim_id),
            ("portNum", "5"),
            ("param", "1"),
            ("payMoney", "10.5"),
            ("selectPriceType", "0"),
            ("infoPriceId", "42"),
            ("chargeBefore", "0"),
            ("isAdvanceReceive", "0"),
        ])
    }

    fn token_and(name: &'static str, value: &str) -> Form {
        Form::from_pairs([("token", "demo-token".to_owned()), (name, value.to_owned())])
    }

    fn start(lbb: &mut Lbb, script: &LbbScript, now: Instant) -> Value {
        let outcome = lbb.start(
            &SimConfig::default(),
            &start_form("865933034812509"),
            Some(script),
            "http://127.0.0.1:1",
            now,
            NOW_MS,
        );
        assert!(outcome.applied, "{}", outcome.reply);
        outcome.reply
    }

    #[test]
    fn start_reply_has_the_documented_shape() {
        let mut lbb = Lbb::default();
        let reply = start(&mut lbb, &LbbScript::default(), Instant::now());
        let data = &reply["data"];
        assert_eq!(reply["success"], true);
        assert_eq!(data["portNum"], 5);
        assert_eq!(data["simId"], "865933034812509");
        assert_eq!(data["domain"], "http://127.0.0.1:1");
        assert_eq!(data["resultKey"], "charge_865933034812509_5_15966_");
        let order = data["orderNum"].as_str().unwrap();
        assert_eq!(order.len(), 20);
        assert!(order.starts_with("20230411012000"));
        assert_eq!(lbb.start_count("865933034812509"), 1);
    }

    #[test]
    fn start_checks_token_and_fields() {
        let mut lbb = Lbb::default();
        let config = SimConfig::default();
        let script = LbbScript::default();
        let now = Instant::now();
        let mut form = start_form("1");
        form = Form::from_pairs(form.distinct().map(|(k, v)| {
            (
                k.to_owned(),
                if k == "token" {
                    "nope".to_owned()
                } else {
                    v.to_owned()
                },
            )
        }));
        let outcome = lbb.start(&config, &form, Some(&script), "d", now, NOW_MS);
        assert_eq!(
            outcome.reply,
            json!({"code": "-1", "error": "token无效", "success": false})
        );
        let form = Form::from_pairs(
            start_form("1")
                .distinct()
                .filter(|(k, _)| *k != "infoPriceId")
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let outcome = lbb.start(&config, &form, Some(&script), "d", now, NOW_MS);
        assert_eq!(outcome.reply["error"], "参数infoPriceId不能为空");
        assert!(!outcome.applied);
        assert_eq!(lbb.start_count("1"), 0);
    }

    #[test]
    fn result_is_pending_for_the_scripted_polls_then_known_then_expired() {
        let mut lbb = Lbb::default();
        let config = SimConfig::default();
        let t0 = Instant::now();
        let script = LbbScript {
            result_after_polls: 2,
            result: 62,
            ..LbbScript::default()
        };
        let key = start(&mut lbb, &script, t0)["data"]["resultKey"]
            .as_str()
            .unwrap()
            .to_owned();
        let poll = token_and("resultKey", &key);
        for _ in 0..2 {
            let outcome = lbb.poll(&config, &poll, t0);
            assert_eq!(
                outcome.reply,
                json!({"success": false, "code": "-1", "error": "结果未返回"})
            );
        }
        let known = lbb.poll(&config, &poll, t0 + Duration::from_secs(59));
        assert_eq!(known.reply["success"], true);
        assert_eq!(known.reply["code"], "0");
        assert_eq!(known.reply["data"]["result"], 62);
        assert_eq!(known.reply["data"]["deviceId"], "865933034812509");
        assert_eq!(known.reply["data"]["portNum"], 5);
        let expired = lbb.poll(&config, &poll, t0 + Duration::from_secs(60));
        assert_eq!(expired.reply["error"], "resultKey已过期");
        let unknown = lbb.poll(&config, &token_and("resultKey", "charge_x_1_2_"), t0);
        assert_eq!(unknown.reply["error"], "resultKey已过期");
        let (sim, _) = lbb.context(Call::Result, &token_and("resultKey", "charge_x_1_2_"));
        assert_eq!(sim.as_deref(), Some("x"));
    }

    #[test]
    fn never_result_stays_pending() {
        let mut lbb = Lbb::default();
        let t0 = Instant::now();
        let script = LbbScript {
            never_result: true,
            ..LbbScript::default()
        };
        let key = start(&mut lbb, &script, t0)["data"]["resultKey"]
            .as_str()
            .unwrap()
            .to_owned();
        for _ in 0..20 {
            let outcome = lbb.poll(&SimConfig::default(), &token_and("resultKey", &key), t0);
            assert_eq!(outcome.reply["error"], PENDING);
        }
    }

    #[test]
    fn orders_follow_the_script() {
        let config = SimConfig::default();
        let cases = [
            (LbbScript::default(), Some(json!({"status": 2}))),
            (
                LbbScript {
                    result: 3,
                    ..LbbScript::default()
                },
                None,
            ),
            (
                LbbScript {
                    never_result: true,
                    order: LbbOrder::Status(3),
                    ..LbbScript::default()
                },
                Some(json!({"status": 3})),
            ),
            (
                LbbScript {
                    order: LbbOrder::Absent,
                    ..LbbScript::default()
                },
                None,
            ),
            (
                LbbScript {
                    order_as_list: true,
                    ..LbbScript::default()
                },
                Some(json!([{"status": 2}])),
            ),
        ];
        for (script, expected) in cases {
            let mut lbb = Lbb::default();
            let order = start(&mut lbb, &script, Instant::now())["data"]["orderNum"]
                .as_str()
                .unwrap()
                .to_owned();
            let outcome = lbb.order_detail(&config, &token_and("orderNum", &order));
            match expected {
                None => assert_eq!(
                    outcome.reply,
                    json!({"success": false, "code": "-1", "error": "订单不存在"})
                ),
                Some(mut data) => {
                    let detail = if data.is_array() {
                        &mut data[0]
                    } else {
                        &mut data
                    };
                    detail["orderNum"] = json!(order);
                    assert_eq!(
                        outcome.reply,
                        json!({"success": true, "code": "0", "data": data})
                    );
                }
            }
        }
    }
}
