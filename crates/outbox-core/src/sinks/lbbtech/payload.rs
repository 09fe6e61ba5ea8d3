//! What a charge_start payload must hold, checked before anything is sent.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    let mut problems = unknown_keys(obj);
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

    let sim_id = sim_id(obj, &mut problems);
    let charger = charger(obj, &mut problems);
    let [port_num, param, info_price_id, is_advance_receive] =
        INTEGER_FIELDS.map(|name| integer(name, &mut problems));
    let pay_money = pay_money(obj, charger, &mut problems);
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

/// Keys that are not start fields, and the token outboxd adds itself.
fn unknown_keys(obj: &Map<String, Value>) -> Vec<String> {
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
    problems
}

fn sim_id(obj: &Map<String, Value>, problems: &mut Vec<String>) -> Option<String> {
    match obj.get("simId") {
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
    }
}

fn charger(obj: &Map<String, Value>, problems: &mut Vec<String>) -> Option<Charger> {
    match obj.get("charger") {
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
    }
}

fn pay_money(
    obj: &Map<String, Value>,
    charger: Option<Charger>,
    problems: &mut Vec<String>,
) -> Option<serde_json::Number> {
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
    pay_money
}
