//! 4pyun "replenish" (charge_end): a signed form post, one per finished charge.
//!
//! Protocol rules, from `shared/seeds/README.md`:
//! - `sign` = uppercase hex MD5 of the sorted `k=v` pairs (raw values, empty ones dropped)
//!   followed by `&app_secret=SECRET`; `timestamp` (ms) and `sign` are computed for each
//!   attempt because the platform accepts a timestamp only within 10 minutes of its clock.
//! - A success code is final even when it carries a `hint`; the hint is kept for operators.
//! - `replenish_order` is unique per charge and the platform deduplicates on it, so a
//!   re-sent request is harmless: this sink is idempotent.

use std::time::Duration;

use md5::{Digest, Md5};
use serde_json::Value;

use crate::clock;
use crate::config::{PyunCodes, SinkConfig};
use crate::event::ClaimedRow;
use crate::http::{self, SendError};
use crate::outcome::{truncate, AttemptInfo, StepOutcome, Verdict};
use crate::secret::Secret;

/// Business fields a producer puts in a charge_end payload, in the order we validate them.
const STRING_FIELDS: [&str; 7] = [
    "station_uuid",
    "device_no",
    "port_no",
    "replenish_order",
    "start_time",
    "end_time",
    "energy_code",
];
const INTEGER_FIELDS: [&str; 4] = ["quantity", "energy_value", "fee_value", "total_value"];
const OPTIONAL_FIELDS: [&str; 1] = ["vin"];
/// Longest value accepted in any field.
const MAX_FIELD_CHARS: usize = 128;

/// Checks a charge_end payload and returns the form fields to send (without `app_id`,
/// `timestamp` and `sign`). Every problem is named by its field.
pub fn validate(
    payload: &str,
    idempotency_key: &str,
) -> Result<Vec<(&'static str, String)>, String> {
    let value: Value =
        serde_json::from_str(payload).map_err(|e| format!("payload is not valid JSON: {e}"))?;
    let obj = value.as_object().ok_or("payload must be a JSON object")?;
    let mut problems = Vec::new();
    let mut fields = Vec::new();

    for key in obj.keys() {
        let k = key.as_str();
        if !STRING_FIELDS.contains(&k)
            && !INTEGER_FIELDS.contains(&k)
            && !OPTIONAL_FIELDS.contains(&k)
        {
            if matches!(
                k,
                "app_id" | "timestamp" | "sign" | "sign_type" | "app_secret"
            ) {
                problems.push(format!("field `{k}` must not be in the payload: outboxd adds it from the sink's config"));
            } else {
                problems.push(format!("unknown field `{k}`"));
            }
        }
    }
    for name in STRING_FIELDS {
        match obj.get(name) {
            None | Some(Value::Null) => problems.push(format!("field `{name}` is required")),
            Some(Value::String(s)) if s.trim().is_empty() => {
                problems.push(format!("field `{name}` must not be empty"))
            }
            Some(Value::String(s)) => fields.push((name, s.clone())),
            // Numbers are accepted for identifiers a producer may keep as integers.
            Some(Value::Number(n)) if matches!(name, "port_no" | "device_no") => {
                fields.push((name, n.to_string()))
            }
            Some(other) => problems.push(format!("field `{name}` must be a string, got {other}")),
        }
    }
    for name in INTEGER_FIELDS {
        match obj.get(name) {
            None | Some(Value::Null) => problems.push(format!("field `{name}` is required")),
            Some(Value::Number(n)) if n.as_u64().is_some() => fields.push((name, n.to_string())),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) => {
                fields.push((name, s.clone()))
            }
            Some(other) => problems.push(format!(
                "field `{name}` must be a non-negative whole number (a JSON number or a string of digits), got {other}"
            )),
        }
    }
    match obj.get("vin") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.trim().is_empty() => {}
        Some(Value::String(s)) => fields.push(("vin", s.clone())),
        Some(other) => problems.push(format!("field `vin` must be a string, got {other}")),
    }

    // No documented limit; a runaway value (or a NUL from a broken producer) is a producer
    // bug to surface, not something to send to a payment platform.
    for (name, value) in &fields {
        let len = value.chars().count();
        if len > MAX_FIELD_CHARS {
            problems.push(format!(
                "field `{name}` is {len} characters long; at most {MAX_FIELD_CHARS}"
            ));
        }
        if value.chars().any(char::is_control) {
            problems.push(format!("field `{name}` contains a control character"));
        }
    }
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    };
    for name in ["start_time", "end_time"] {
        if let Some(t) = get(name) {
            if !is_utc_second(t) {
                problems.push(format!(
                    "field `{name}` must be UTC time yyyy-MM-ddTHH:mm:ssZ, got {t:?}"
                ));
            }
        }
    }
    if let (Some(s), Some(e)) = (get("start_time"), get("end_time")) {
        // Same fixed-width format, so text order is time order.
        if is_utc_second(s) && is_utc_second(e) && e < s {
            problems.push(format!(
                "field `end_time` ({e}) is before `start_time` ({s})"
            ));
        }
    }
    if let Some(code) = get("energy_code") {
        if code != "CN_AC" && code != "CN_DC" {
            problems.push(format!(
                "field `energy_code` must be CN_AC or CN_DC, got {code:?}"
            ));
        }
    }
    if let Some(order) = get("replenish_order") {
        if order != idempotency_key {
            problems.push(format!(
                "field `replenish_order` ({order:?}) must equal the row's idempotency_key ({idempotency_key:?})"
            ));
        }
    }
    if problems.is_empty() {
        Ok(fields)
    } else {
        Err(format!(
            "invalid charge_end payload: {}",
            problems.join("; ")
        ))
    }
}

/// `yyyy-MM-ddTHH:mm:ssZ` with a real calendar date.
fn is_utc_second(t: &str) -> bool {
    let b = t.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = &t[r];
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(s)) = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    ) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d) && h < 24 && mi < 60 && s < 60
}

/// The 4pyun signature over every parameter sent except `sign`.
pub fn sign<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)], secret: &str) -> String {
    let mut kept: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .filter(|(k, v)| *k != "sign" && !v.trim().is_empty())
        .collect();
    kept.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut s = kept
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    s.push_str("&app_secret=");
    s.push_str(secret);
    let digest = Md5::digest(s.as_bytes());
    digest.iter().map(|b| format!("{b:02X}")).collect()
}

/// The form body for one attempt: business fields plus `app_id`, `timestamp` and `sign`.
pub fn form_body(
    fields: &[(&'static str, String)],
    app_id: &str,
    secret: &Secret,
    timestamp_ms: i64,
) -> String {
    let mut params: Vec<(&str, String)> = fields.iter().map(|(k, v)| (*k, v.clone())).collect();
    params.push(("app_id", app_id.to_string()));
    params.push(("timestamp", timestamp_ms.to_string()));
    let signature = sign(&params, secret.expose());
    params.push(("sign", signature));
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &params {
        ser.append_pair(k, v);
    }
    ser.finish()
}

/// What a reply means, per the sink's code table.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub verdict: Verdict,
    pub code: Option<String>,
    pub hint: Option<String>,
}

pub fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
    codes: &PyunCodes,
) -> Classified {
    let transient_http = status == 408 || status == 425 || status == 429 || status >= 500;
    if transient_http {
        return Classified {
            verdict: Verdict::Retry {
                reason: format!("HTTP {status} from 4pyun"),
                retry_after,
            },
            code: None,
            hint: None,
        };
    }
    if !(200..300).contains(&status) {
        return Classified {
            verdict: Verdict::Permanent {
                reason: format!(
                    "HTTP {status} from 4pyun: check the sink's url ({})",
                    truncate(body, 200)
                ),
            },
            code: None,
            hint: None,
        };
    }
    let Ok(Value::Object(reply)) = serde_json::from_str::<Value>(body) else {
        return Classified {
            verdict: Verdict::Retry {
                reason: format!("4pyun reply is not a JSON object: {}", truncate(body, 200)),
                retry_after,
            },
            code: None,
            hint: None,
        };
    };
    let text = |k: &str| match reply.get(k) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let (code, message, hint, seqno) = (text("code"), text("message"), text("hint"), text("seqno"));
    let Some(code) = code else {
        return Classified {
            verdict: Verdict::Retry {
                reason: format!("4pyun reply has no code: {}", truncate(body, 200)),
                retry_after,
            },
            code: None,
            hint,
        };
    };
    let describe = || {
        let mut d = format!("4pyun code {code}");
        if let Some(m) = &message {
            d.push_str(&format!(" {m}"));
        }
        if let Some(h) = &hint {
            d.push_str(&format!(" (hint: {h})"));
        }
        if let Some(s) = &seqno {
            d.push_str(&format!(" [seqno {s}]"));
        }
        d
    };
    let has = |list: &[String]| list.contains(&code);
    let verdict = if has(&codes.success) {
        Verdict::Delivered {
            hint: hint.clone(),
            result: None,
        }
    } else if has(&codes.done) {
        Verdict::Completed {
            note: describe(),
            result: None,
        }
    } else if has(&codes.permanent) {
        Verdict::Permanent { reason: describe() }
    } else if has(&codes.retry) {
        Verdict::Retry {
            reason: describe(),
            retry_after,
        }
    } else {
        Verdict::Retry {
            reason: format!(
                "{} is not in the sink's code table; retrying (add it to [sinks.NAME.codes])",
                describe()
            ),
            retry_after,
        }
    };
    Classified {
        verdict,
        code: Some(code),
        hint,
    }
}

pub fn validate_config(name: &str, cfg: &SinkConfig) -> Vec<String> {
    let mut p = Vec::new();
    match &cfg.app_id {
        Some(a) if !a.trim().is_empty() => {}
        _ => p.push(format!(
            "sinks.{name}: app_id is required for type = \"pyun\""
        )),
    }
    if let Some(c) = &cfg.codes {
        if c.success.is_empty() {
            p.push(format!(
                "sinks.{name}.codes.success must list at least one code"
            ));
        }
    }
    p
}

pub struct PyunSink {
    url: String,
    app_id: String,
    secret: Secret,
    codes: PyunCodes,
    timeout: Duration,
    client: reqwest::Client,
}

impl PyunSink {
    pub fn new(cfg: &SinkConfig, secret: Secret, client: reqwest::Client) -> Result<Self, String> {
        Ok(PyunSink {
            url: cfg.url.clone(),
            app_id: cfg
                .app_id
                .clone()
                .ok_or("app_id is required for type = \"pyun\"")?,
            secret,
            codes: cfg.codes.clone().unwrap_or_default(),
            timeout: cfg.timeout,
            client,
        })
    }

    pub async fn deliver(&self, row: &ClaimedRow) -> StepOutcome {
        let fields = match validate(&row.payload, &row.idempotency_key) {
            Ok(f) => f,
            Err(reason) => {
                return StepOutcome {
                    verdict: Verdict::Permanent { reason },
                    info: AttemptInfo {
                        started_at: clock::now_ms(),
                        ..Default::default()
                    },
                }
            }
        };
        // Fresh timestamp and signature for every attempt: the platform rejects stale ones.
        let body = form_body(&fields, &self.app_id, &self.secret, clock::now_ms());
        let request = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=UTF-8",
            )
            .body(body);
        let sent = http::send(request).await;
        let mut info = sent.attempt_info();
        let verdict = match sent.result {
            Ok(reply) => {
                let c = classify(reply.status, reply.retry_after, &reply.body, &self.codes);
                info.http_status = Some(reply.status);
                info.reply_code = c.code;
                info.hint = c.hint;
                info.reply = Some(self.secret.scrub(&truncate(&reply.body, 2000)));
                c.verdict
            }
            // Idempotent platform: whether or not the request got there, sending it again
            // is safe.
            Err(e @ (SendError::NotSent(_) | SendError::MaybeSent(_))) => {
                let reason = self.secret.scrub(&e.to_string());
                info.error = Some(reason.clone());
                Verdict::Retry {
                    reason,
                    retry_after: None,
                }
            }
        };
        StepOutcome { verdict, info }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "6409292d66625a2a0912acfc61ed956c";

    /// The request example of the seed contract (003) and its `sign`.
    fn vector() -> Vec<(&'static str, &'static str)> {
        vec![
            ("fee_value", "561"),
            ("total_value", "1156"),
            ("quantity", "5682"),
            ("replenish_order", "20230410183256K7fh6t"),
            ("end_time", "2023-04-10T18:32:56Z"),
            ("device_no", "S1"),
            ("energy_code", "CN_AC"),
            ("start_time", "2023-04-10T17:32:56Z"),
            ("energy_value", "595"),
            ("vin", "川A660N2"),
            ("station_uuid", "8f5fdb60-9374-4c11-bdc2-a32d8369258c"),
            ("app_id", "op00961963581daa7"),
            ("timestamp", "1681122776000"),
            ("port_no", "1"),
        ]
    }

    #[test]
    fn seed_request_example() {
        assert_eq!(sign(&vector(), SECRET), "4EC351C604ECB191964EB67565AA8E87");
    }

    /// The public test vector quoted in shared/seeds/README.md.
    #[test]
    fn public_test_vector() {
        let params = [
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
        ];
        assert_eq!(sign(&params, SECRET), "90A80901298B87DC9E15DE9F236FD164");
    }

    #[test]
    fn signature_ignores_order_sign_and_empty_values() {
        let mut v = vector();
        v.reverse();
        v.push(("sign", "WHATEVER"));
        v.push(("note", "  "));
        assert_eq!(sign(&v, SECRET), "4EC351C604ECB191964EB67565AA8E87");
        v.push(("extra", "x"));
        assert_ne!(sign(&v, SECRET), "4EC351C604ECB191964EB67565AA8E87");
    }

    fn payload() -> serde_json::Value {
        serde_json::json!({
            "fee_value": 561, "total_value": 1156, "quantity": "5682",
            "replenish_order": "20230410183256K7fh6t", "end_time": "2023-04-10T18:32:56Z",
            "device_no": "S1", "energy_code": "CN_AC", "start_time": "2023-04-10T17:32:56Z",
            "energy_value": 595, "vin": "川A660N2", "station_uuid": "8f5fdb60-9374-4c11-bdc2-a32d8369258c",
            "port_no": "1"
        })
    }

    #[test]
    fn form_body_signs_what_it_sends() {
        let fields = validate(&payload().to_string(), "20230410183256K7fh6t").unwrap();
        let body = form_body(
            &fields,
            "op00961963581daa7",
            &Secret::new(SECRET),
            1681122776000,
        );
        let sent: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let sign_sent = sent.iter().find(|(k, _)| k == "sign").unwrap().1.clone();
        assert_eq!(sign_sent, "4EC351C604ECB191964EB67565AA8E87");
        assert!(!body.contains(SECRET));
    }

    #[test]
    fn invalid_payloads_name_the_field() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                serde_json::json!({"start_time": null}),
                "`start_time` is required",
            ),
            (
                serde_json::json!({"start_time": "2023-04-11 08:20:00"}),
                "`start_time` must be UTC",
            ),
            (
                serde_json::json!({"end_time": "2023-02-30T09:20:00Z"}),
                "`end_time` must be UTC",
            ),
            (
                serde_json::json!({"end_time": "2023-04-10T17:32:55Z"}),
                "`end_time` (2023-04-10T17:32:55Z) is before",
            ),
            (
                serde_json::json!({"energy_code": "CN_XX"}),
                "`energy_code` must be CN_AC or CN_DC",
            ),
            (
                serde_json::json!({"quantity": -1}),
                "`quantity` must be a non-negative whole number",
            ),
            (
                serde_json::json!({"fee_value": 9.75}),
                "`fee_value` must be",
            ),
            (
                serde_json::json!({"total_value": "12a"}),
                "`total_value` must be",
            ),
            (
                serde_json::json!({"replenish_order": "OTHER"}),
                "must equal the row's idempotency_key",
            ),
            (
                serde_json::json!({"sign": "X"}),
                "`sign` must not be in the payload",
            ),
            (
                serde_json::json!({"colour": "red"}),
                "unknown field `colour`",
            ),
            (serde_json::json!({"vin": 5}), "`vin` must be a string"),
            (
                serde_json::json!({"device_no": ""}),
                "`device_no` must not be empty",
            ),
            (
                serde_json::json!({"device_no": "S\u{0}1"}),
                "`device_no` contains a control character",
            ),
            (
                serde_json::json!({"station_uuid": "x".repeat(129)}),
                "`station_uuid` is 129 characters long",
            ),
        ];
        for (patch, needle) in cases {
            let mut p = payload();
            for (k, v) in patch.as_object().unwrap() {
                p[k] = v.clone();
            }
            let err = validate(&p.to_string(), "20230410183256K7fh6t").unwrap_err();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
        assert!(validate("[1]", "k").unwrap_err().contains("JSON object"));
        assert!(validate("{not json", "k")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(validate(&payload().to_string(), "20230410183256K7fh6t").is_ok());
    }

    #[test]
    fn utc_seconds() {
        assert!(is_utc_second("2024-02-29T23:59:59Z"));
        assert!(!is_utc_second("2023-02-29T00:00:00Z"));
        assert!(!is_utc_second("2023-04-11T24:00:00Z"));
        assert!(!is_utc_second("2023-04-11T08:20:00.000Z"));
        assert!(!is_utc_second("2023-04-11T08:20:00+08"));
        assert!(!is_utc_second("2023-04-1１T08:20:00Z"));
    }

    fn verdict(status: u16, body: &str) -> Verdict {
        classify(status, None, body, &PyunCodes::default()).verdict
    }

    #[test]
    fn classifies_the_documented_replies() {
        // Seed examples.
        assert_eq!(
            verdict(
                200,
                r#"{"code":"200","message":"OK","seqno":"abc6c253b93cc940"}"#
            ),
            Verdict::Delivered {
                hint: None,
                result: None
            }
        );
        let hinted = classify(
            200,
            None,
            r#"{"code":"200","message":"已忽略当前请求","hint":"签名验证不通过","seqno":"e820972bdf2eaf19"}"#,
            &PyunCodes::default(),
        );
        assert_eq!(
            hinted.verdict,
            Verdict::Delivered {
                hint: Some("签名验证不通过".into()),
                result: None
            }
        );
        assert_eq!(hinted.hint.as_deref(), Some("签名验证不通过"));
        assert!(matches!(
            verdict(200, r#"{"code":"400","message":"请求参数错误","hint":"`start_time` required~","seqno":"48bf"}"#),
            Verdict::Permanent { reason } if reason.contains("`start_time` required~") && reason.contains("48bf")
        ));
        assert!(matches!(
            verdict(200, r#"{"code":"500","message":"服务器内部错误"}"#),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            verdict(200, r#"{"code":"503","message":"服务暂不可用"}"#),
            Verdict::Retry { .. }
        ));
        // Current docs.
        assert!(matches!(
            verdict(200, r#"{"code":"1001","message":"ok"}"#),
            Verdict::Delivered { .. }
        ));
        assert!(matches!(
            verdict(200, r#"{"code":"1002","message":"无停车记录"}"#),
            Verdict::Completed { .. }
        ));
        assert!(matches!(
            verdict(200, r#"{"code":"401","message":"sign"}"#),
            Verdict::Permanent { .. }
        ));
        assert!(matches!(
            verdict(200, r#"{"code":1503}"#),
            Verdict::Retry { .. }
        ));
        // Transport-level.
        assert!(matches!(verdict(503, ""), Verdict::Retry { .. }));
        assert!(matches!(verdict(429, ""), Verdict::Retry { .. }));
        assert!(matches!(
            verdict(200, "<html>bad gateway</html>"),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            verdict(200, r#"{"message":"no code"}"#),
            Verdict::Retry { .. }
        ));
        assert!(
            matches!(verdict(404, "not found"), Verdict::Permanent { reason } if reason.contains("url"))
        );
        assert!(
            matches!(verdict(200, r#"{"code":"777"}"#), Verdict::Retry { reason, .. } if reason.contains("code table"))
        );
        let ra = classify(503, Some(Duration::from_secs(7)), "", &PyunCodes::default());
        assert_eq!(
            ra.verdict,
            Verdict::Retry {
                reason: "HTTP 503 from 4pyun".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn code_table_is_configurable() {
        let codes = PyunCodes {
            success: vec!["OK".into()],
            ..PyunCodes::default()
        };
        assert!(matches!(
            classify(200, None, r#"{"code":"OK"}"#, &codes).verdict,
            Verdict::Delivered { .. }
        ));
        assert!(matches!(
            classify(200, None, r#"{"code":"200"}"#, &codes).verdict,
            Verdict::Retry { .. }
        ));
    }
}
