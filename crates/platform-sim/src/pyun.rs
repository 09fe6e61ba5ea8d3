//! 4pyun "charge record push" (`replenish`): signature, validation and replies. Pure: the
//! clock and the reply's `seqno` come in as arguments.
//!
//! Checks run in this order, so a request missing a field gets the 400 naming it whatever its
//! signature: required fields (400), `app_id` (403), `timestamp` window (403), signature (401,
//! or the 2023 "ignored" 200), then de-duplication by `replenish_order`.

use std::collections::HashSet;

use md5::{Digest, Md5};
use serde_json::{json, Value};

use crate::config::{BadSignMode, SimConfig};
use crate::form::Form;
use crate::outcome::Outcome;

pub const PATH: &str = "/gate/1.0/energy/internal/replenish";

/// The server accepts `timestamp` only this close to its own clock.
pub const TIMESTAMP_WINDOW_MS: i64 = 10 * 60 * 1000;

/// Required parameters, in the order of the interface document.
pub const REQUIRED: [&str; 14] = [
    "app_id",
    "timestamp",
    "sign",
    "station_uuid",
    "device_no",
    "port_no",
    "replenish_order",
    "start_time",
    "end_time",
    "quantity",
    "energy_value",
    "fee_value",
    "total_value",
    "energy_code",
];

/// The `data_node` the real platform names in its replies.
const DATA_NODE: &str = "CN-South/HS3-1";

/// The string that is hashed: parameters except `sign`, blanks dropped, sorted by name
/// (byte order, so ASCII case-sensitive), joined `k=v&...` with raw values, then
/// `&app_secret=SECRET`.
pub fn signing_string<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    secret: &str,
) -> String {
    let mut kept: Vec<(&str, &str)> = params
        .into_iter()
        .filter(|(name, value)| *name != "sign" && !value.trim().is_empty())
        .collect();
    kept.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = kept
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&");
    out.push_str("&app_secret=");
    out.push_str(secret);
    out
}

/// The `sign` of a parameter set: MD5 of [`signing_string`], 32 uppercase hex characters.
pub fn sign<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>, secret: &str) -> String {
    let digest = Md5::digest(signing_string(params, secret).as_bytes());
    digest.iter().map(|byte| format!("{byte:02X}")).collect()
}

/// Whether the form's `sign` matches its other fields. Exact comparison: the documented form
/// is uppercase.
pub fn verify(form: &Form, secret: &str) -> bool {
    form.get("sign")
        .is_some_and(|given| given == sign(form.distinct(), secret))
}

/// The usual message for a code, used when a script gives only the code.
pub fn default_message(code: &str) -> &'static str {
    match code {
        "200" | "1001" => "OK",
        "400" | "1400" => "请求参数错误",
        "401" | "1401" => "签名验证不通过",
        "403" => "访问被拦截",
        "1002" => "无停车记录",
        "500" | "1500" => "服务器内部错误",
        "503" | "1503" => "服务暂不可用",
        _ => "",
    }
}

/// A reply in the platform's shape. Replies other than plain success also name the path.
pub fn reply(code: &str, message: &str, hint: Option<&str>, seqno: &str) -> Value {
    let mut body = json!({
        "code": code,
        "message": message,
        "seqno": seqno,
        "data_node": DATA_NODE,
    });
    if let Some(hint) = hint {
        body["hint"] = json!(hint);
    }
    if hint.is_some() || message != "OK" {
        body["path"] = json!(format!("POST {PATH}"));
    }
    body
}

/// The reply a script asks for. A success code with a hint and no message gets the
/// platform's "ignored" message, the shape the real platform uses for such replies.
pub fn scripted_reply(code: &str, message: Option<&str>, hint: Option<&str>, seqno: &str) -> Value {
    let message = match (message, hint) {
        (Some(message), _) => message,
        (None, Some(_)) if matches!(code, "200" | "1001") => "已忽略当前请求",
        (None, _) => default_message(code),
    };
    reply(code, message, hint, seqno)
}

fn rejected(code: &str, message: &str, hint: Option<&str>, seqno: &str) -> Outcome {
    Outcome::rejected(code, reply(code, message, hint, seqno))
}

/// The platform's memory: which `replenish_order`s were granted.
#[derive(Debug, Default)]
pub struct Ledger {
    applied: HashSet<String>,
}

impl Ledger {
    /// Decides one request. `now_ms` is the platform clock (skew included).
    pub fn handle(&mut self, config: &SimConfig, form: &Form, now_ms: i64, seqno: &str) -> Outcome {
        if let Some(missing) = REQUIRED.iter().find(|name| form.present(name).is_none()) {
            let hint = format!("`{missing}` required~");
            return rejected("400", "请求参数错误", Some(&hint), seqno);
        }
        if form.get("app_id") != Some(config.pyun_app_id.as_str()) {
            return rejected("403", "访问被拦截", Some("app_id not authorized"), seqno);
        }
        let Some(timestamp) = form
            .get("timestamp")
            .and_then(|t| t.trim().parse::<i64>().ok())
        else {
            return rejected(
                "400",
                "请求参数错误",
                Some("`timestamp` must be milliseconds~"),
                seqno,
            );
        };
        if (now_ms - timestamp).abs() > TIMESTAMP_WINDOW_MS {
            return rejected("403", "访问被拦截", Some("timestamp out of window"), seqno);
        }
        if !verify(form, &config.pyun_app_secret) {
            return match config.pyun_bad_sign {
                BadSignMode::Code401 => rejected("401", "签名验证不通过", None, seqno),
                BadSignMode::Ignore200 => {
                    rejected("200", "已忽略当前请求", Some("签名验证不通过"), seqno)
                }
            };
        }
        let order = form.get("replenish_order").unwrap_or_default();
        if !self.applied.insert(order.to_owned()) {
            return Outcome {
                duplicate: true,
                ..rejected("200", "已忽略当前请求", Some("重复的充电单号"), seqno)
            };
        }
        let code = config.pyun_success_code.as_str();
        Outcome {
            reply: reply(code, "OK", None, seqno),
            code: code.to_owned(),
            applied: true,
            duplicate: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "6409292d66625a2a0912acfc61ed956c";
    const NOW: i64 = 1_681_176_000_816;

    fn vector() -> Vec<(&'static str, &'static str)> {
        vec![
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
        ]
    }

    fn signed(mut params: Vec<(&'static str, &'static str)>) -> Form {
        let sign = sign(params.iter().copied(), SECRET);
        let mut form: Vec<(String, String)> = params
            .drain(..)
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        form.push(("sign".into(), sign));
        Form::from_pairs(form)
    }

    #[test]
    fn public_vector_signs() {
        assert_eq!(sign(vector(), SECRET), "90A80901298B87DC9E15DE9F236FD164");
    }

    #[test]
    fn order_blanks_and_sign_do_not_change_the_signature() {
        let mut shuffled = vector();
        shuffled.reverse();
        shuffled.push(("memo", "  "));
        shuffled.push(("extra", ""));
        shuffled.push(("sign", "WHATEVER"));
        assert_eq!(sign(shuffled, SECRET), "90A80901298B87DC9E15DE9F236FD164");
    }

    #[test]
    fn signing_string_uses_raw_values_and_case_sensitive_order() {
        let s = signing_string([("b", "x y"), ("a", "川"), ("B", "1")], "k");
        assert_eq!(s, "B=1&a=川&b=x y&app_secret=k");
    }

    #[test]
    fn valid_request_applies_once_then_is_ignored() {
        let mut ledger = Ledger::default();
        let config = SimConfig::default();
        let form = signed(vector());
        let first = ledger.handle(&config, &form, NOW, "s1");
        assert!(first.applied);
        assert_eq!(first.reply["code"], "200");
        assert_eq!(first.reply["message"], "OK");
        assert!(first.reply.get("hint").is_none());
        let again = ledger.handle(&config, &form, NOW, "s2");
        assert!(!again.applied && again.duplicate);
        assert_eq!(again.reply["code"], "200");
        assert_eq!(again.reply["hint"], "重复的充电单号");
    }

    #[test]
    fn success_code_is_configurable() {
        let config = SimConfig {
            pyun_success_code: "1001".into(),
            ..SimConfig::default()
        };
        let outcome = Ledger::default().handle(&config, &signed(vector()), NOW, "s");
        assert_eq!(outcome.code, "1001");
    }

    #[test]
    fn bad_signature_modes() {
        let mut params: Vec<(String, String)> = vector()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        params.push(("sign".into(), "90A80901298B87DC9E15DE9F236FD165".into()));
        let form = Form::from_pairs(params);
        let outcome = Ledger::default().handle(&SimConfig::default(), &form, NOW, "s");
        assert_eq!(outcome.reply["code"], "401");
        assert_eq!(outcome.reply["message"], "签名验证不通过");
        assert!(!outcome.applied);
        let config = SimConfig {
            pyun_bad_sign: BadSignMode::Ignore200,
            ..SimConfig::default()
        };
        let outcome = Ledger::default().handle(&config, &form, NOW, "s");
        assert_eq!(outcome.reply["code"], "200");
        assert_eq!(outcome.reply["hint"], "签名验证不通过");
        assert!(!outcome.applied);
    }

    #[test]
    fn lowercase_sign_is_rejected() {
        let mut params: Vec<(String, String)> = vector()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        params.push(("sign".into(), "90a80901298b87dc9e15de9f236fd164".into()));
        let outcome =
            Ledger::default().handle(&SimConfig::default(), &Form::from_pairs(params), NOW, "s");
        assert_eq!(outcome.code, "401");
    }

    #[test]
    fn timestamp_window_is_ten_minutes_either_way() {
        let config = SimConfig::default();
        let form = signed(vector());
        for (now, code) in [
            (NOW + TIMESTAMP_WINDOW_MS, "200"),
            (NOW - TIMESTAMP_WINDOW_MS, "200"),
            (NOW + 11 * 60 * 1000, "403"),
            (NOW - 11 * 60 * 1000, "403"),
        ] {
            let outcome = Ledger::default().handle(&config, &form, now, "s");
            assert_eq!(outcome.code, code, "now {now}");
        }
        let late = Ledger::default().handle(&config, &form, NOW + 11 * 60 * 1000, "s");
        assert_eq!(late.reply["message"], "访问被拦截");
        assert_eq!(late.reply["hint"], "timestamp out of window");
    }

    #[test]
    fn wrong_app_id_is_forbidden() {
        let config = SimConfig {
            pyun_app_id: "op-other".into(),
            ..SimConfig::default()
        };
        let outcome = Ledger::default().handle(&config, &signed(vector()), NOW, "s");
        assert_eq!(outcome.code, "403");
    }

    #[test]
    fn missing_or_blank_field_names_it() {
        let without: Vec<_> = vector()
            .into_iter()
            .filter(|(k, _)| *k != "start_time")
            .collect();
        let outcome = Ledger::default().handle(&SimConfig::default(), &signed(without), NOW, "s");
        assert_eq!(outcome.code, "400");
        assert_eq!(outcome.reply["message"], "请求参数错误");
        assert_eq!(outcome.reply["hint"], "`start_time` required~");

        let blank: Vec<_> = vector()
            .into_iter()
            .map(|(k, v)| if k == "quantity" { (k, " ") } else { (k, v) })
            .collect();
        let outcome = Ledger::default().handle(&SimConfig::default(), &signed(blank), NOW, "s");
        assert_eq!(outcome.reply["hint"], "`quantity` required~");
    }

    #[test]
    fn scripted_replies_get_default_messages() {
        let body = scripted_reply("503", None, None, "s");
        assert_eq!(body["message"], "服务暂不可用");
        assert_eq!(body["path"], format!("POST {PATH}"));
        let body = scripted_reply("200", None, Some("签名验证不通过"), "s");
        assert_eq!(body["message"], "已忽略当前请求");
    }
}
