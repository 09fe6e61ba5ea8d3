//! epeis `RepairDosageBack`: channel authentication, body validation and the booking of
//! usage adjustments. Pure.
//!
//! Only `CODE 0` is documented; the simulator uses 1001 for a failed channel check, 2000 for
//! a body that is not the documented JSON and 2001 for a missing or invalid field (the
//! `MESSAGE` names the field). The API has no idempotency key, so every valid request is
//! booked again: the ledger counts bookings per `SETTLEMENT_AID` so tests see double
//! application.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::config::SimConfig;
use crate::outcome::Outcome;

pub const PATH: &str = "/Service/v1/RepairDosageBack/";

pub const CODE_AUTH: i64 = 1001;
pub const CODE_MALFORMED: i64 = 2000;
pub const CODE_INVALID_FIELD: i64 = 2001;

/// `{CODE, MESSAGE, DATA}` with a numeric `CODE` (a code that is not a number is sent as text,
/// so scripts can exercise a misbehaving platform).
pub fn reply(code: &str, message: &str) -> Value {
    let code = code
        .parse::<i64>()
        .map_or_else(|_| json!(code), |number| json!(number));
    json!({"CODE": code, "MESSAGE": message, "DATA": {}})
}

/// The script key: `COM_METERAGE.SETTLEMENT_AID`, when the body has one.
pub fn key(body: &Value) -> Option<String> {
    body.get("COM_METERAGE")?
        .get("SETTLEMENT_AID")?
        .as_str()
        .map(str::to_owned)
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: i64,
    pub message: String,
}

fn invalid(message: String) -> Refusal {
    Refusal {
        code: CODE_INVALID_FIELD,
        message,
    }
}

fn object<'a>(value: Option<&'a Value>, path: &str) -> Result<&'a Map<String, Value>, Refusal> {
    match value {
        None | Some(Value::Null) => Err(invalid(format!("参数错误: {path} 不能为空"))),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(invalid(format!("参数错误: {path} 应为对象"))),
    }
}

/// A required `String` field of at most `max_len` characters.
fn text<'a>(
    parent: &'a Map<String, Value>,
    name: &str,
    path: &str,
    max_len: usize,
) -> Result<&'a str, Refusal> {
    let path = format!("{path}.{name}");
    match parent.get(name) {
        None | Some(Value::Null) => Err(invalid(format!("参数错误: {path} 不能为空"))),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(invalid(format!("参数错误: {path} 不能为空")))
        }
        Some(Value::String(s)) if s.chars().count() > max_len => {
            Err(invalid(format!("参数错误: {path} 长度不能超过{max_len}")))
        }
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(format!("参数错误: {path} 应为字符串"))),
    }
}

/// A required `String` enumeration field.
fn one_of(
    parent: &Map<String, Value>,
    name: &str,
    path: &str,
    allowed: &[&str],
) -> Result<(), Refusal> {
    let value = text(parent, name, path, 2)?;
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(invalid(format!(
            "参数错误: {path}.{name} 取值无效 ({})",
            allowed.join("/")
        )))
    }
}

/// `ADDED_CONS`: a JSON number within Number(16,2).
fn added_cons(parent: &Map<String, Value>, path: &str) -> Result<(), Refusal> {
    let path = format!("{path}.ADDED_CONS");
    let number = match parent.get("ADDED_CONS") {
        None | Some(Value::Null) => return Err(invalid(format!("参数错误: {path} 不能为空"))),
        Some(Value::Number(number)) => number,
        Some(_) => return Err(invalid(format!("参数错误: {path} 应为数字"))),
    };
    let text = number.to_string();
    let digits = text.trim_start_matches('-');
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let fits = !digits.contains(['e', 'E'])
        && fraction.len() <= 2
        && whole.trim_start_matches('0').len() <= 14;
    if fits {
        Ok(())
    } else {
        Err(invalid(format!(
            "参数错误: {path} 超出精度 Number(16,2): {text}"
        )))
    }
}

/// Checks the credentials and the documented body shape.
pub fn validate(body: &Value, channel_did: &str, dynamic_key: &str) -> Result<(), Refusal> {
    let Value::Object(root) = body else {
        return Err(Refusal {
            code: CODE_MALFORMED,
            message: "请求报文格式错误".into(),
        });
    };
    let head = root.get("SYS_HEAD").and_then(Value::as_object);
    let field = |name| head.and_then(|h| h.get(name)).and_then(Value::as_str);
    if field("CHANNEL_DID") != Some(channel_did) || field("DYNAMIC_KEY") != Some(dynamic_key) {
        return Err(Refusal {
            code: CODE_AUTH,
            message: "渠道认证失败".into(),
        });
    }
    let head = object(root.get("SYS_HEAD"), "SYS_HEAD")?;
    text(head, "REGISTER_DID", "SYS_HEAD", 16)?;
    text(head, "ACCOUNT_DID", "SYS_HEAD", 16)?;

    let meterage = object(root.get("COM_METERAGE"), "COM_METERAGE")?;
    text(meterage, "SETTLEMENT_AID", "COM_METERAGE", 16)?;
    one_of(meterage, "NORMAL_RETRO_TYPE", "COM_METERAGE", &["1", "2"])?;

    let rows = match root.get("COM_METER_INFO_TMP") {
        Some(Value::Array(rows)) if !rows.is_empty() => rows,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(invalid("参数错误: COM_METER_INFO_TMP 不能为空".into()))
        }
        Some(_) => return Err(invalid("参数错误: COM_METER_INFO_TMP 应为数组".into())),
    };
    for (i, row) in rows.iter().enumerate() {
        let path = format!("COM_METER_INFO_TMP[{i}]");
        let row = object(Some(row), &path)?;
        text(row, "DEVICE_DID", &path, 16)?;
        one_of(row, "NORMAL_RETRO_TYPE", &path, &["1", "2"])?;
        one_of(row, "ENERGY_FLOW_TYPE", &path, &["1", "2"])?;
        one_of(
            row,
            "READINGS_TYPE",
            &path,
            &["1", "2", "3", "4", "5", "6", "7", "8"],
        )?;
        added_cons(row, &path)?;
    }
    Ok(())
}

/// The platform's memory: how many adjustments were booked per settlement account.
#[derive(Debug, Default)]
pub struct Ledger {
    booked: HashMap<String, usize>,
}

impl Ledger {
    /// Decides one request from its raw body. A body not declared as JSON is malformed, as
    /// a JSON-binding server would find it.
    pub fn handle(
        &mut self,
        config: &SimConfig,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Outcome {
        let declared_json = content_type.is_some_and(|ct| {
            ct.split(';').next().is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
            })
        });
        let parsed = if declared_json {
            serde_json::from_slice::<Value>(body).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        if let Err(refusal) = validate(
            &parsed,
            &config.epeis_channel_did,
            &config.epeis_dynamic_key,
        ) {
            return Outcome::rejected(
                refusal.code.to_string(),
                reply(&refusal.code.to_string(), &refusal.message),
            );
        }
        let aid = key(&parsed).unwrap_or_default();
        let count = self.booked.entry(aid).or_default();
        *count += 1;
        Outcome {
            reply: reply("0", ""),
            code: "0".into(),
            applied: true,
            duplicate: *count > 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Value {
        let config = SimConfig::default();
        json!({
            "SYS_HEAD": {
                "CHANNEL_DID": config.epeis_channel_did,
                "DYNAMIC_KEY": config.epeis_dynamic_key,
                "REGISTER_DID": "RG00000000000001",
                "ACCOUNT_DID": "AC00000000000001"
            },
            "COM_METERAGE": {"SETTLEMENT_AID": "SA00000000000001", "NORMAL_RETRO_TYPE": "2"},
            "COM_METER_INFO_TMP": [{
                "DEVICE_DID": "DV00000000000001",
                "NORMAL_RETRO_TYPE": "2",
                "ENERGY_FLOW_TYPE": "1",
                "READINGS_TYPE": "1",
                "ADDED_CONS": 12.5
            }]
        })
    }

    fn handle(ledger: &mut Ledger, body: &Value) -> Outcome {
        ledger.handle(
            &SimConfig::default(),
            Some("application/json; charset=utf-8"),
            body.to_string().as_bytes(),
        )
    }

    #[test]
    fn valid_requests_are_all_booked() {
        let mut ledger = Ledger::default();
        let first = handle(&mut ledger, &valid());
        assert_eq!(first.reply, json!({"CODE": 0, "MESSAGE": "", "DATA": {}}));
        assert!(first.applied && !first.duplicate);
        let second = handle(&mut ledger, &valid());
        assert!(second.applied && second.duplicate);
        assert_eq!(key(&valid()).as_deref(), Some("SA00000000000001"));
    }

    #[test]
    fn bad_credentials_fail_authentication() {
        for field in ["CHANNEL_DID", "DYNAMIC_KEY"] {
            let mut body = valid();
            body["SYS_HEAD"][field] = json!("wrong");
            let outcome = handle(&mut Ledger::default(), &body);
            assert_eq!(
                outcome.reply,
                json!({"CODE": 1001, "MESSAGE": "渠道认证失败", "DATA": {}})
            );
            assert!(!outcome.applied);
        }
    }

    #[test]
    fn invalid_fields_are_named() {
        type Spoil = fn(&mut Value);
        let cases: [(&str, Spoil); 8] = [
            ("SYS_HEAD.REGISTER_DID", |b| {
                b["SYS_HEAD"]["REGISTER_DID"] = json!("")
            }),
            ("SYS_HEAD.ACCOUNT_DID", |b| {
                b["SYS_HEAD"]["ACCOUNT_DID"] = json!("AC000000000000012345")
            }),
            ("COM_METERAGE.SETTLEMENT_AID", |b| {
                b["COM_METERAGE"]
                    .as_object_mut()
                    .unwrap()
                    .remove("SETTLEMENT_AID");
            }),
            ("COM_METERAGE.NORMAL_RETRO_TYPE", |b| {
                b["COM_METERAGE"]["NORMAL_RETRO_TYPE"] = json!("3")
            }),
            ("COM_METER_INFO_TMP", |b| {
                b["COM_METER_INFO_TMP"] = json!([])
            }),
            ("COM_METER_INFO_TMP[0].READINGS_TYPE", |b| {
                b["COM_METER_INFO_TMP"][0]["READINGS_TYPE"] = json!(1)
            }),
            ("COM_METER_INFO_TMP[0].ADDED_CONS", |b| {
                b["COM_METER_INFO_TMP"][0]["ADDED_CONS"] = json!("12.5")
            }),
            ("COM_METER_INFO_TMP[0].ADDED_CONS", |b| {
                b["COM_METER_INFO_TMP"][0]["ADDED_CONS"] = json!(0.125)
            }),
        ];
        for (field, spoil) in cases {
            let mut body = valid();
            spoil(&mut body);
            let outcome = handle(&mut Ledger::default(), &body);
            assert_eq!(outcome.reply["CODE"], json!(2001), "{field}");
            let message = outcome.reply["MESSAGE"].as_str().unwrap();
            assert!(message.contains(field), "{field}: {message}");
            assert!(!outcome.applied);
        }
    }

    #[test]
    fn not_json_is_malformed_and_auth_comes_first() {
        let mut ledger = Ledger::default();
        let config = SimConfig::default();
        let outcome = ledger.handle(&config, Some("application/json"), b"CODE=0");
        assert_eq!(outcome.reply["CODE"], json!(2000));
        let form = ledger.handle(&config, Some("text/plain"), valid().to_string().as_bytes());
        assert_eq!(form.reply["CODE"], json!(2000));
        let mut body = valid();
        body["SYS_HEAD"]["CHANNEL_DID"] = json!("x");
        body["COM_METER_INFO_TMP"] = json!([]);
        assert_eq!(handle(&mut ledger, &body).code, "1001");
    }

    #[test]
    fn negative_and_whole_added_cons_are_fine() {
        for value in [json!(-3.25), json!(0), json!(12345678901234_i64)] {
            let mut body = valid();
            body["COM_METER_INFO_TMP"][0]["ADDED_CONS"] = value.clone();
            assert_eq!(handle(&mut Ledger::default(), &body).code, "0", "{value}");
        }
    }
}
