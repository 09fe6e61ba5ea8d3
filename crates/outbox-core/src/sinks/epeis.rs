//! epeis "RepairDosageBack" (dosage): one usage adjustment per row, a JSON post answered by
//! `{CODE, MESSAGE, DATA}`.
//!
//! Protocol rules, from the seed contract (`shared/seeds/000_4483cffa09643fc1.txt`) and
//! `shared/seeds/README.md`:
//! - `SYS_HEAD` carries the channel credential, `CHANNEL_DID` (16) and the secret
//!   `DYNAMIC_KEY` (64), which come from the sink's config only, plus `REGISTER_DID` and
//!   `ACCOUNT_DID` (16 each), from the config unless the payload overrides them.
//! - The enumerations (`NORMAL_RETRO_TYPE` 1/2, `ENERGY_FLOW_TYPE` 1/2, `READINGS_TYPE` 1..8)
//!   are typed String: producers may write them as integers, they are sent as strings.
//!   `ADDED_CONS` is Number(16,2): sent as a JSON number, exactly as validated.
//! - Only `CODE 0` (success) is documented. Other codes are permanent unless the sink lists
//!   them in `retryable_codes`.
//! - **The API has no idempotency key**: a request that may have reached epeis (a timeout, a
//!   connection closed after the body was written, a reply we cannot read) is an ambiguous
//!   outcome, parked for an operator unless `retry_ambiguous = true`. Only a failure that
//!   provably happened before sending (see [`crate::http::SendError::NotSent`]) is retried.
//! - The `DYNAMIC_KEY` has a validity window (`dynamic_key_valid_until`): the sink warns a
//!   week ahead and, once it has expired, holds its rows instead of burning their attempts.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::clock;
use crate::config::SinkConfig;
use crate::event::ClaimedRow;
use crate::http::{self, SendError};
use crate::outcome::{truncate, AttemptInfo, StepOutcome, Verdict};
use crate::secret::Secret;

/// Length of `CHANNEL_DID`, `REGISTER_DID` and `ACCOUNT_DID`.
const DID_LEN: usize = 16;
/// Length of the `DYNAMIC_KEY`.
const DYNAMIC_KEY_LEN: usize = 64;
/// Maximum length of `SETTLEMENT_AID` and `DEVICE_DID`.
const ID_MAX_LEN: usize = 16;
/// Number(16,2): 14 digits before the decimal point, 2 after.
const WHOLE_DIGITS: usize = 14;
const DECIMALS: usize = 2;
/// From 2^46 on, an f64 is spaced more than 0.01 apart, so a JSON number (parsed as an f64)
/// may already have lost its cents; below it, the shortest form of the f64 is exactly the
/// decimal the producer wrote.
const F64_EXACT_CENTS: f64 = 70_368_744_177_664.0;

/// Top-level payload fields.
const TOP_FIELDS: [&str; 5] = [
    "COM_METERAGE",
    "COM_METER_INFO_TMP",
    "REGISTER_DID",
    "ACCOUNT_DID",
    "SYS_HEAD",
];
/// The `SYS_HEAD` fields a payload may set.
const OVERRIDES: [&str; 2] = ["REGISTER_DID", "ACCOUNT_DID"];
const METERAGE_FIELDS: [&str; 2] = ["SETTLEMENT_AID", "NORMAL_RETRO_TYPE"];
const METER_FIELDS: [&str; 5] = [
    "DEVICE_DID",
    "NORMAL_RETRO_TYPE",
    "ENERGY_FLOW_TYPE",
    "READINGS_TYPE",
    "ADDED_CONS",
];
/// Credentials: only ever from the sink's config.
const CREDENTIALS: [&str; 2] = ["DYNAMIC_KEY", "CHANNEL_DID"];

/// Warn this long before the `DYNAMIC_KEY` expires, and again every `WARN_EVERY_MS`.
const WARN_AHEAD_MS: i64 = 7 * 24 * 3600 * 1000;
const WARN_EVERY_MS: i64 = 24 * 3600 * 1000;

/// A validated dosage payload: everything of the request except the credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct Dosage {
    pub settlement_aid: String,
    /// "1" or "2".
    pub normal_retro_type: String,
    pub meters: Vec<Meter>,
    /// Overrides of the sink's `register_did` / `account_did`.
    pub register_did: Option<String>,
    pub account_did: Option<String>,
}

/// One entry of `COM_METER_INFO_TMP`.
#[derive(Debug, Clone, PartialEq)]
pub struct Meter {
    pub device_did: String,
    pub normal_retro_type: String,
    pub energy_flow_type: String,
    pub readings_type: String,
    /// The exact JSON number text to send (at most 14 + 2 digits, no exponent).
    pub added_cons: String,
}

/// How a text field's length is constrained.
#[derive(Clone, Copy)]
enum Len {
    AtMost(usize),
    Exactly(usize),
}

/// Problems found in a payload, each naming its field path.
#[derive(Default)]
struct Problems(Vec<String>);

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A value for an error text. Long values are described, not quoted: a runaway payload must
/// not flood the log, and a truncated quote of a misplaced secret would escape `scrub`.
fn shown(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= 24 {
        return text;
    }
    match v {
        Value::String(s) => format!("a string of {} characters", s.chars().count()),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".into(),
        _ => "a long number".into(),
    }
}

fn is_credential(key: &str) -> bool {
    CREDENTIALS.iter().any(|c| c.eq_ignore_ascii_case(key))
}

impl Problems {
    fn push(&mut self, problem: String) {
        self.0.push(problem);
    }

    /// Every `DYNAMIC_KEY` / `CHANNEL_DID` key, at any depth.
    fn credentials(&mut self, v: &Value, path: &str) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let p = join(path, k);
                    if is_credential(k) {
                        self.push(format!(
                            "field `{p}` must not be in the payload: secrets don't belong in the outbox (outboxd adds CHANNEL_DID and DYNAMIC_KEY from the sink's config)"
                        ));
                    }
                    self.credentials(child, &p);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    self.credentials(child, &format!("{path}[{i}]"));
                }
            }
            _ => {}
        }
    }

    fn unknown(&mut self, obj: &Map<String, Value>, allowed: &[&str], path: &str) {
        for k in obj.keys() {
            if !allowed.contains(&k.as_str()) && !is_credential(k) {
                self.push(format!("unknown field `{}`", join(path, k)));
            }
        }
    }

    fn object<'a>(&mut self, v: Option<&'a Value>, path: &str) -> Option<&'a Map<String, Value>> {
        match v {
            Some(Value::Object(m)) => Some(m),
            None | Some(Value::Null) => {
                self.push(format!("field `{path}` is required"));
                None
            }
            Some(other) => {
                self.push(format!(
                    "field `{path}` must be a JSON object, got {}",
                    shown(other)
                ));
                None
            }
        }
    }

    fn text(
        &mut self,
        obj: &Map<String, Value>,
        name: &str,
        prefix: &str,
        len: Len,
    ) -> Option<String> {
        let path = join(prefix, name);
        let s = match obj.get(name) {
            Some(Value::String(s)) => s,
            None | Some(Value::Null) => {
                self.push(format!("field `{path}` is required"));
                return None;
            }
            Some(other) => {
                self.push(format!(
                    "field `{path}` must be a string, got {}",
                    shown(other)
                ));
                return None;
            }
        };
        // Lengths in characters, as the platform counts them; the value itself is not
        // quoted back (it could be anything a producer put there).
        let n = s.chars().count();
        if s.trim().is_empty() {
            self.push(format!("field `{path}` must not be empty"));
            return None;
        }
        match len {
            Len::AtMost(max) if n > max => {
                self.push(format!(
                    "field `{path}` must be at most {max} characters, got {n}"
                ));
                None
            }
            Len::Exactly(want) if n != want => {
                self.push(format!(
                    "field `{path}` must be exactly {want} characters, got {n}"
                ));
                None
            }
            _ => Some(s.clone()),
        }
    }

    /// An enumeration `1..=max`, given as a string or an integer; returned as the string
    /// the platform expects.
    fn enumeration(
        &mut self,
        obj: &Map<String, Value>,
        name: &str,
        prefix: &str,
        max: u64,
    ) -> Option<String> {
        let path = join(prefix, name);
        let value = match obj.get(name) {
            Some(Value::String(s)) => s.parse::<u64>().ok().filter(|_| {
                // "1", not "01" or "+1": what we send must be what was written.
                s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0')
            }),
            Some(Value::Number(n)) => n.as_u64(),
            None | Some(Value::Null) => {
                self.push(format!("field `{path}` is required"));
                return None;
            }
            Some(_) => None,
        };
        match value {
            Some(v) if (1..=max).contains(&v) => Some(v.to_string()),
            _ => {
                let allowed = if max == 2 {
                    "1 or 2".to_string()
                } else {
                    format!("1 to {max}")
                };
                self.push(format!(
                    "field `{path}` must be {allowed} (a string or an integer), got {}",
                    shown(&obj[name])
                ));
                None
            }
        }
    }

    fn added_cons(&mut self, obj: &Map<String, Value>, prefix: &str) -> Option<String> {
        let path = join(prefix, "ADDED_CONS");
        match obj.get("ADDED_CONS") {
            None | Some(Value::Null) => {
                self.push(format!("field `{path}` is required"));
                None
            }
            Some(v) => match decimal_text(v) {
                Ok(text) => Some(text),
                Err(why) => {
                    self.push(format!("field `{path}` {why}"));
                    None
                }
            },
        }
    }
}

/// `ADDED_CONS` as the exact JSON number text to send: a JSON number, or a decimal string
/// such as `"12.50"`, with at most 2 decimals and 14 digits before the point
/// (Number(16,2)). Checked on the decimal text, never on an f64 rounding of it.
pub fn decimal_text(v: &Value) -> Result<String, String> {
    let text = match v {
        Value::Number(n) => {
            if n.as_i64().is_none() && n.as_u64().is_none() {
                let f = n.as_f64().unwrap_or(f64::INFINITY);
                if f.abs() >= F64_EXACT_CENTS {
                    return Err(format!(
                        "is too large for a JSON number to carry its cents exactly ({n}): send it as a decimal string, e.g. \"70368744177664.01\""
                    ));
                }
            }
            // serde_json prints an f64 in its shortest round-trip form, which below the
            // limit above is the decimal the producer wrote (trailing zeros aside).
            n.to_string()
        }
        Value::String(s) => s.clone(),
        other => {
            return Err(format!(
                "must be a number (or a decimal string like \"12.50\"), got {}",
                shown(other)
            ))
        }
    };
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (digits, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !fraction.is_none_or(all_digits) {
        // A tiny f64 prints with an exponent (1e-7): that is too many decimals.
        if matches!(v, Value::Number(_)) && text.contains(['e', 'E']) {
            return Err(format!(
                "has more than {DECIMALS} decimals ({text}); Number(16,2) allows {DECIMALS}"
            ));
        }
        return Err(format!(
            "must be a decimal number like 12.50, got {}",
            shown(v)
        ));
    }
    let decimals = fraction.map_or(0, str::len);
    if decimals > DECIMALS {
        return Err(format!(
            "has {decimals} decimals ({text}); Number(16,2) allows {DECIMALS}"
        ));
    }
    let whole = whole.trim_start_matches('0');
    if whole.len() > WHOLE_DIGITS {
        return Err(format!(
            "has {} digits before the decimal point; Number(16,2) allows {WHOLE_DIGITS}",
            whole.len()
        ));
    }
    // A JSON number has no leading zeros ("007.5" is not JSON).
    let mut out = String::with_capacity(text.len());
    if negative {
        out.push('-');
    }
    out.push_str(if whole.is_empty() { "0" } else { whole });
    if let Some(f) = fraction {
        out.push('.');
        out.push_str(f);
    }
    Ok(out)
}

/// Checks a dosage payload and returns what to send. Every problem names its field path
/// (`COM_METER_INFO_TMP[1].READINGS_TYPE`).
pub fn validate(payload: &str) -> Result<Dosage, String> {
    let value: Value = serde_json::from_str(payload)
        .map_err(|e| format!("invalid dosage payload: not valid JSON: {e}"))?;
    let Value::Object(root) = &value else {
        return Err("invalid dosage payload: must be a JSON object".into());
    };
    let mut p = Problems::default();
    p.credentials(&value, "");
    p.unknown(root, &TOP_FIELDS, "");

    // REGISTER_DID / ACCOUNT_DID overrides: at the top level or in a SYS_HEAD object.
    let head = match root.get("SYS_HEAD") {
        None | Some(Value::Null) => None,
        Some(Value::Object(h)) => {
            for k in h.keys() {
                if !OVERRIDES.contains(&k.as_str()) && !is_credential(k) {
                    p.push(format!(
                        "unknown field `SYS_HEAD.{k}` (a payload's SYS_HEAD may only hold REGISTER_DID and ACCOUNT_DID)"
                    ));
                }
            }
            Some(h)
        }
        Some(other) => {
            p.push(format!(
                "field `SYS_HEAD` must be a JSON object, got {}",
                shown(other)
            ));
            None
        }
    };
    let mut overrides: [Option<String>; 2] = [None, None];
    for (slot, name) in overrides.iter_mut().zip(OVERRIDES) {
        let given = |m: &Map<String, Value>| m.get(name).is_some_and(|v| !v.is_null());
        match (given(root), head.is_some_and(given)) {
            (true, true) => p.push(format!(
                "field `{name}` is given both at the top level and in `SYS_HEAD`: give it once"
            )),
            (true, false) => *slot = p.text(root, name, "", Len::Exactly(DID_LEN)),
            (false, true) => {
                if let Some(h) = head {
                    *slot = p.text(h, name, "SYS_HEAD", Len::Exactly(DID_LEN));
                }
            }
            (false, false) => {}
        }
    }

    let (aid, retro) = match p.object(root.get("COM_METERAGE"), "COM_METERAGE") {
        Some(m) => {
            p.unknown(m, &METERAGE_FIELDS, "COM_METERAGE");
            (
                p.text(m, "SETTLEMENT_AID", "COM_METERAGE", Len::AtMost(ID_MAX_LEN)),
                p.enumeration(m, "NORMAL_RETRO_TYPE", "COM_METERAGE", 2),
            )
        }
        None => (None, None),
    };

    let mut meters = Vec::new();
    match root.get("COM_METER_INFO_TMP") {
        Some(Value::Array(rows)) if !rows.is_empty() => {
            for (i, row) in rows.iter().enumerate() {
                let path = format!("COM_METER_INFO_TMP[{i}]");
                let Some(m) = p.object(Some(row), &path) else {
                    continue;
                };
                p.unknown(m, &METER_FIELDS, &path);
                let fields = (
                    p.text(m, "DEVICE_DID", &path, Len::AtMost(ID_MAX_LEN)),
                    p.enumeration(m, "NORMAL_RETRO_TYPE", &path, 2),
                    p.enumeration(m, "ENERGY_FLOW_TYPE", &path, 2),
                    p.enumeration(m, "READINGS_TYPE", &path, 8),
                    p.added_cons(m, &path),
                );
                if let (Some(device), Some(retro), Some(flow), Some(readings), Some(cons)) = fields
                {
                    meters.push(Meter {
                        device_did: device,
                        normal_retro_type: retro,
                        energy_flow_type: flow,
                        readings_type: readings,
                        added_cons: cons,
                    });
                }
            }
        }
        Some(Value::Array(_)) => {
            p.push("field `COM_METER_INFO_TMP` must not be empty: list at least one meter".into())
        }
        None | Some(Value::Null) => {
            p.push("field `COM_METER_INFO_TMP` is required (a non-empty array of meters)".into())
        }
        Some(other) => p.push(format!(
            "field `COM_METER_INFO_TMP` must be an array of meters, got {}",
            shown(other)
        )),
    }

    match (p.0.is_empty(), aid, retro) {
        (true, Some(settlement_aid), Some(normal_retro_type)) => {
            let [register_did, account_did] = overrides;
            Ok(Dosage {
                settlement_aid,
                normal_retro_type,
                meters,
                register_did,
                account_did,
            })
        }
        _ => Err(format!("invalid dosage payload: {}", p.0.join("; "))),
    }
}

/// The `SYS_HEAD` credentials and default ids of a sink.
pub struct Head<'a> {
    pub channel_did: &'a str,
    pub dynamic_key: &'a Secret,
    pub register_did: &'a str,
    pub account_did: &'a str,
}

/// The JSON request body. Written out by hand rather than through `serde_json::Value` so
/// that `ADDED_CONS` goes out as the exact decimal validated, which an f64 could round.
/// It holds the `DYNAMIC_KEY`: never log it or keep it in the attempt history.
pub fn request_body(d: &Dosage, head: &Head<'_>) -> String {
    let s = |v: &str| Value::from(v).to_string();
    let meters: Vec<String> = d
        .meters
        .iter()
        .map(|m| {
            format!(
                r#"{{"DEVICE_DID":{},"NORMAL_RETRO_TYPE":{},"ENERGY_FLOW_TYPE":{},"READINGS_TYPE":{},"ADDED_CONS":{}}}"#,
                s(&m.device_did),
                s(&m.normal_retro_type),
                s(&m.energy_flow_type),
                s(&m.readings_type),
                m.added_cons
            )
        })
        .collect();
    format!(
        r#"{{"SYS_HEAD":{{"CHANNEL_DID":{},"DYNAMIC_KEY":{},"REGISTER_DID":{},"ACCOUNT_DID":{}}},"COM_METERAGE":{{"SETTLEMENT_AID":{},"NORMAL_RETRO_TYPE":{}}},"COM_METER_INFO_TMP":[{}]}}"#,
        s(head.channel_did),
        s(head.dynamic_key.expose()),
        s(d.register_did.as_deref().unwrap_or(head.register_did)),
        s(d.account_did.as_deref().unwrap_or(head.account_did)),
        s(&d.settlement_aid),
        s(&d.normal_retro_type),
        meters.join(",")
    )
}

/// How replies and ambiguous failures are treated (from the sink's config).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub retryable_codes: Vec<i64>,
    pub retry_ambiguous: bool,
}

/// The reason of an ambiguous outcome: what happened, and what the operator should check.
pub fn outcome_unknown(what: &str, settlement_aid: &str, retry_ambiguous: bool) -> String {
    if retry_ambiguous {
        format!(
            "outcome unknown: {what}. Retrying because retry_ambiguous = true: the adjustment for SETTLEMENT_AID {settlement_aid} may be applied twice"
        )
    } else {
        format!(
            "outcome unknown: {what}. The adjustment may have been applied: check SETTLEMENT_AID {settlement_aid} on the epeis side before requeueing; requeueing sends it again"
        )
    }
}

/// What a reply means.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub verdict: Verdict,
    /// `CODE` as text, when the reply had one.
    pub code: Option<String>,
}

pub fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
    rules: &Rules,
    settlement_aid: &str,
) -> Classified {
    let reply = match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    };
    let code_value = reply.as_ref().and_then(|m| match m.get("CODE") {
        Some(Value::Number(n)) => Some((n.to_string(), n.as_i64())),
        Some(Value::String(s)) if !s.trim().is_empty() => {
            Some((s.trim().to_string(), s.trim().parse::<i64>().ok()))
        }
        _ => None,
    });
    let code = code_value.as_ref().map(|(text, _)| text.clone());
    let message = reply
        .as_ref()
        .and_then(|m| m.get("MESSAGE"))
        .and_then(Value::as_str)
        .map(|m| truncate(m, 500))
        .unwrap_or_default();

    // The platform did not take it, or asks us to come back later: nothing was applied.
    if status == 408 || status == 429 || status >= 500 {
        return Classified {
            verdict: Verdict::Retry {
                reason: format!("HTTP {status} from epeis"),
                retry_after,
            },
            code,
        };
    }
    if !(200..300).contains(&status) {
        return Classified {
            verdict: Verdict::Permanent {
                reason: format!(
                    "HTTP {status} from epeis: check the sink's url ({})",
                    truncate(body, 200)
                ),
            },
            code,
        };
    }
    let Some((text, number)) = code_value else {
        // A 2xx means the request reached the platform; without a CODE we cannot tell
        // whether it was booked.
        let what = format!(
            "epeis answered HTTP {status} without a CODE ({})",
            truncate(body, 200)
        );
        return Classified {
            verdict: Verdict::Ambiguous {
                reason: outcome_unknown(&what, settlement_aid, rules.retry_ambiguous),
            },
            code: None,
        };
    };
    let describe = || {
        if message.is_empty() {
            format!("epeis CODE {text}")
        } else {
            format!("epeis CODE {text}: {message}")
        }
    };
    let verdict = match number {
        Some(0) => Verdict::Delivered {
            hint: None,
            result: None,
        },
        Some(n) if rules.retryable_codes.contains(&n) => Verdict::Retry {
            reason: format!("{} (listed in retryable_codes)", describe()),
            retry_after,
        },
        _ => Verdict::Permanent { reason: describe() },
    };
    Classified {
        verdict,
        code: Some(text),
    }
}

/// A failure without a reply: retried only when the request provably never left.
pub fn transport_verdict(e: &SendError, settlement_aid: &str, retry_ambiguous: bool) -> Verdict {
    match e {
        SendError::NotSent(_) => Verdict::Retry {
            reason: e.to_string(),
            retry_after: None,
        },
        SendError::MaybeSent(what) => Verdict::Ambiguous {
            reason: outcome_unknown(what, settlement_aid, retry_ambiguous),
        },
    }
}

/// Parses `dynamic_key_valid_until` into epoch ms: RFC 3339 with an explicit zone, `Z` or an
/// offset such as `+08:00` (the platform's operators work in Beijing time; a time without a
/// zone would be read as UTC and the key held 8 hours late).
pub fn parse_valid_until(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let b = t.as_bytes();
    let (base, offset_secs) = if t.ends_with(['Z', 'z']) {
        (&t[..t.len() - 1], 0i64)
    } else if b.len() > 6
        && matches!(b[b.len() - 6], b'+' | b'-')
        && b[b.len() - 3] == b':'
        && t.is_char_boundary(b.len() - 6)
    {
        let (base, off) = t.split_at(t.len() - 6);
        let hh = off[1..3].parse::<i64>().ok().filter(|h| *h < 24);
        let mm = off[4..6].parse::<i64>().ok().filter(|m| *m < 60);
        let (Some(hh), Some(mm)) = (hh, mm) else {
            return Err(format!("{s:?} has an invalid UTC offset {off:?}"));
        };
        let sign = if off.starts_with('-') { -1 } else { 1 };
        (base, sign * (hh * 3600 + mm * 60))
    } else {
        return Err(format!(
            "{s:?} has no time zone: end it with Z (UTC) or an offset, e.g. 2027-01-31T00:00:00+08:00"
        ));
    };
    let at = humantime::parse_rfc3339_weak(base)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e}), e.g. 2027-01-31T00:00:00Z"))?;
    let ms = at.duration_since(UNIX_EPOCH).map(clock::ms).unwrap_or(0);
    Ok(ms - offset_secs * 1000)
}

fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

pub fn validate_config(name: &str, cfg: &SinkConfig) -> Vec<String> {
    let mut p = Vec::new();
    for (field, value) in [
        ("channel_did", &cfg.channel_did),
        ("register_did", &cfg.register_did),
        ("account_did", &cfg.account_did),
    ] {
        match value {
            None => p.push(format!(
                "sinks.{name}: {field} is required for type = \"epeis\""
            )),
            Some(v) if v.chars().count() != DID_LEN => p.push(format!(
                "sinks.{name}: {field} must be exactly {DID_LEN} characters, got {} ({v:?})",
                v.chars().count()
            )),
            Some(_) => {}
        }
    }
    // A missing secret is already reported by the common checks. Only its length is
    // shown, never the value.
    if let Ok(key) = cfg.load_secret(name) {
        let n = key.expose().chars().count();
        if n != DYNAMIC_KEY_LEN {
            p.push(format!(
                "sinks.{name}: the DYNAMIC_KEY (secret_file/secret_env) must be {DYNAMIC_KEY_LEN} characters, got {n}: check for a truncated copy or stray whitespace"
            ));
        }
    }
    if let Some(codes) = &cfg.retryable_codes {
        if codes.contains(&0) {
            p.push(format!(
                "sinks.{name}: retryable_codes must not contain 0, which is epeis's success code"
            ));
        }
    }
    if let Some(v) = &cfg.dynamic_key_valid_until {
        if let Err(e) = parse_valid_until(v) {
            p.push(format!("sinks.{name}: dynamic_key_valid_until {e}"));
        }
    }
    p
}

pub struct EpeisSink {
    url: String,
    channel_did: String,
    register_did: String,
    account_did: String,
    secret: Secret,
    rules: Rules,
    /// When the `DYNAMIC_KEY` stops being valid (epoch ms), if configured.
    valid_until_ms: Option<i64>,
    /// When the expiry warning was last logged (epoch ms), `i64::MIN` for never.
    last_warned: AtomicI64,
    timeout: Duration,
    client: reqwest::Client,
}

impl EpeisSink {
    pub fn new(cfg: &SinkConfig, secret: Secret, client: reqwest::Client) -> Result<Self, String> {
        let need = |v: &Option<String>, field: &str| {
            v.clone()
                .ok_or_else(|| format!("{field} is required for type = \"epeis\""))
        };
        let valid_until_ms = cfg
            .dynamic_key_valid_until
            .as_deref()
            .map(parse_valid_until)
            .transpose()
            .map_err(|e| format!("dynamic_key_valid_until {e}"))?;
        Ok(EpeisSink {
            url: cfg.url.clone(),
            channel_did: need(&cfg.channel_did, "channel_did")?,
            register_did: need(&cfg.register_did, "register_did")?,
            account_did: need(&cfg.account_did, "account_did")?,
            secret,
            rules: Rules {
                retryable_codes: cfg.retryable_codes.clone().unwrap_or_default(),
                retry_ambiguous: cfg.retry_ambiguous.unwrap_or(false),
            },
            valid_until_ms,
            last_warned: AtomicI64::new(i64::MIN),
            timeout: cfg.timeout,
            client,
        })
    }

    /// Off by default: epeis has no idempotency key, so a retry after an ambiguous failure
    /// may book the adjustment twice.
    pub fn retry_ambiguous(&self) -> bool {
        self.rules.retry_ambiguous
    }

    /// Holds the sink's rows once the `DYNAMIC_KEY` has expired (every attempt would fail
    /// authentication); warns once a day during the week before.
    pub fn hold(&self, now_ms: i64) -> Option<String> {
        let until = self.valid_until_ms?;
        if now_ms >= until {
            return Some(format!(
                "DYNAMIC_KEY expired at {}: install a new key (secret_file/secret_env + dynamic_key_valid_until), then reload (SIGHUP) or restart outboxd",
                rfc3339(until)
            ));
        }
        if until - now_ms <= WARN_AHEAD_MS && self.warn_due(now_ms) {
            tracing::warn!(
                channel_did = %self.channel_did,
                expires_at = %rfc3339(until),
                expires_in = %clock::age(until - now_ms),
                "epeis DYNAMIC_KEY expires soon: install a new key (secret_file/secret_env + dynamic_key_valid_until) and reload (SIGHUP) or restart outboxd before then, or this sink's rows will be held"
            );
        }
        None
    }

    /// True at most once per `WARN_EVERY_MS`.
    fn warn_due(&self, now_ms: i64) -> bool {
        let last = self.last_warned.load(Ordering::Relaxed);
        (last == i64::MIN || now_ms.saturating_sub(last) >= WARN_EVERY_MS)
            && self
                .last_warned
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn scrub(&self, verdict: Verdict) -> Verdict {
        match verdict {
            Verdict::Retry {
                reason,
                retry_after,
            } => Verdict::Retry {
                reason: self.secret.scrub(&reason),
                retry_after,
            },
            Verdict::Permanent { reason } => Verdict::Permanent {
                reason: self.secret.scrub(&reason),
            },
            Verdict::Ambiguous { reason } => Verdict::Ambiguous {
                reason: self.secret.scrub(&reason),
            },
            other => other,
        }
    }

    pub async fn deliver(&self, row: &ClaimedRow) -> StepOutcome {
        let local = |verdict: Verdict| StepOutcome {
            verdict: self.scrub(verdict),
            info: AttemptInfo {
                started_at: clock::now_ms(),
                ..Default::default()
            },
        };
        let dosage = match validate(&row.payload) {
            Ok(d) => d,
            Err(reason) => return local(Verdict::Permanent { reason }),
        };
        let aid = dosage.settlement_aid.as_str();
        // The previous attempt may have been booked: sending again could book it twice.
        if row.in_doubt && !self.rules.retry_ambiguous {
            return local(Verdict::Ambiguous {
                reason: outcome_unknown(
                    "a previous attempt was interrupted (its worker stopped or lost its lease mid-delivery) and may have reached epeis",
                    aid,
                    false,
                ),
            });
        }
        let body = request_body(
            &dosage,
            &Head {
                channel_did: &self.channel_did,
                dynamic_key: &self.secret,
                register_did: &self.register_did,
                account_did: &self.account_did,
            },
        );
        let request = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            )
            .body(body);
        let sent = http::send(request).await;
        let mut info = sent.attempt_info();
        let verdict = match sent.result {
            Ok(reply) => {
                let c = classify(
                    reply.status,
                    reply.retry_after,
                    &reply.body,
                    &self.rules,
                    aid,
                );
                info.http_status = Some(reply.status);
                info.reply_code = c.code;
                info.reply = Some(self.secret.scrub(&truncate(&reply.body, 2000)));
                c.verdict
            }
            Err(e) => {
                info.error = Some(self.secret.scrub(&e.to_string()));
                transport_verdict(&e, aid, self.rules.retry_ambiguous)
            }
        };
        StepOutcome {
            verdict: self.scrub(verdict),
            info,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "DK00000000000000000000000000000000000000000000000000000000000001";

    fn payload() -> Value {
        json!({
            "COM_METERAGE": {"SETTLEMENT_AID": "SA00000000000001", "NORMAL_RETRO_TYPE": "2"},
            "COM_METER_INFO_TMP": [
                {"DEVICE_DID": "DV00000000000001", "NORMAL_RETRO_TYPE": "2",
                 "ENERGY_FLOW_TYPE": "1", "READINGS_TYPE": "1", "ADDED_CONS": 12.5},
                {"DEVICE_DID": "DV00000000000002", "NORMAL_RETRO_TYPE": 1,
                 "ENERGY_FLOW_TYPE": 2, "READINGS_TYPE": 8, "ADDED_CONS": "-3.05"}
            ]
        })
    }

    fn head(secret: &Secret) -> Head<'_> {
        Head {
            channel_did: "CH00000000000001",
            dynamic_key: secret,
            register_did: "RG00000000000001",
            account_did: "AC00000000000001",
        }
    }

    /// Applies `patch` (a JSON pointer → value; `null` removes) to a valid payload.
    fn invalid(pointer: &str, value: Value) -> String {
        let mut p = payload();
        let (parent, last) = pointer.rsplit_once('/').unwrap();
        let target = p.pointer_mut(parent).unwrap();
        match (target, value) {
            (Value::Object(m), Value::Null) => {
                m.remove(last);
            }
            (Value::Object(m), v) => {
                m.insert(last.to_string(), v);
            }
            (Value::Array(a), v) => a[last.parse::<usize>().unwrap()] = v,
            _ => panic!("bad pointer {pointer}"),
        }
        validate(&p.to_string()).unwrap_err()
    }

    #[test]
    fn a_valid_payload_is_normalised() {
        let d = validate(&payload().to_string()).unwrap();
        assert_eq!(d.settlement_aid, "SA00000000000001");
        assert_eq!(d.normal_retro_type, "2");
        assert_eq!(
            (d.register_did.as_deref(), d.account_did.as_deref()),
            (None, None)
        );
        assert_eq!(
            d.meters[1],
            Meter {
                device_did: "DV00000000000002".into(),
                normal_retro_type: "1".into(),
                energy_flow_type: "2".into(),
                readings_type: "8".into(),
                added_cons: "-3.05".into(),
            }
        );
        assert_eq!(d.meters[0].added_cons, "12.5");
    }

    #[test]
    fn every_field_rule_names_the_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("/COM_METERAGE", Value::Null, "`COM_METERAGE` is required"),
            (
                "/COM_METERAGE",
                json!([1]),
                "`COM_METERAGE` must be a JSON object",
            ),
            (
                "/COM_METERAGE/SETTLEMENT_AID",
                Value::Null,
                "`COM_METERAGE.SETTLEMENT_AID` is required",
            ),
            (
                "/COM_METERAGE/SETTLEMENT_AID",
                json!(""),
                "`COM_METERAGE.SETTLEMENT_AID` must not be empty",
            ),
            (
                "/COM_METERAGE/SETTLEMENT_AID",
                json!(12),
                "`COM_METERAGE.SETTLEMENT_AID` must be a string",
            ),
            (
                "/COM_METERAGE/SETTLEMENT_AID",
                json!("SA000000000000017"),
                "`COM_METERAGE.SETTLEMENT_AID` must be at most 16 characters, got 17",
            ),
            (
                "/COM_METERAGE/NORMAL_RETRO_TYPE",
                json!("3"),
                "`COM_METERAGE.NORMAL_RETRO_TYPE` must be 1 or 2",
            ),
            (
                "/COM_METERAGE/NORMAL_RETRO_TYPE",
                json!("01"),
                "`COM_METERAGE.NORMAL_RETRO_TYPE` must be 1 or 2",
            ),
            (
                "/COM_METERAGE/NORMAL_RETRO_TYPE",
                json!(1.0),
                "`COM_METERAGE.NORMAL_RETRO_TYPE` must be 1 or 2",
            ),
            (
                "/COM_METERAGE/NORMAL_RETRO_TYPE",
                Value::Null,
                "`COM_METERAGE.NORMAL_RETRO_TYPE` is required",
            ),
            (
                "/COM_METERAGE/EXTRA",
                json!(1),
                "unknown field `COM_METERAGE.EXTRA`",
            ),
            (
                "/COM_METER_INFO_TMP",
                json!([]),
                "`COM_METER_INFO_TMP` must not be empty",
            ),
            (
                "/COM_METER_INFO_TMP",
                Value::Null,
                "`COM_METER_INFO_TMP` is required",
            ),
            (
                "/COM_METER_INFO_TMP",
                json!({"a": 1}),
                "`COM_METER_INFO_TMP` must be an array",
            ),
            (
                "/COM_METER_INFO_TMP/1",
                json!("meter"),
                "`COM_METER_INFO_TMP[1]` must be a JSON object",
            ),
            (
                "/COM_METER_INFO_TMP/0/DEVICE_DID",
                Value::Null,
                "`COM_METER_INFO_TMP[0].DEVICE_DID` is required",
            ),
            (
                "/COM_METER_INFO_TMP/0/DEVICE_DID",
                json!("设备000000000000001"),
                "`COM_METER_INFO_TMP[0].DEVICE_DID` must be at most 16 characters, got 17",
            ),
            (
                "/COM_METER_INFO_TMP/1/NORMAL_RETRO_TYPE",
                json!(0),
                "`COM_METER_INFO_TMP[1].NORMAL_RETRO_TYPE` must be 1 or 2",
            ),
            (
                "/COM_METER_INFO_TMP/1/ENERGY_FLOW_TYPE",
                json!("3"),
                "`COM_METER_INFO_TMP[1].ENERGY_FLOW_TYPE` must be 1 or 2",
            ),
            (
                "/COM_METER_INFO_TMP/1/READINGS_TYPE",
                json!(9),
                "`COM_METER_INFO_TMP[1].READINGS_TYPE` must be 1 to 8",
            ),
            (
                "/COM_METER_INFO_TMP/1/READINGS_TYPE",
                json!(-1),
                "`COM_METER_INFO_TMP[1].READINGS_TYPE` must be 1 to 8",
            ),
            (
                "/COM_METER_INFO_TMP/1/READINGS_TYPE",
                json!(true),
                "`COM_METER_INFO_TMP[1].READINGS_TYPE` must be 1 to 8",
            ),
            (
                "/COM_METER_INFO_TMP/0/ADDED_CONS",
                Value::Null,
                "`COM_METER_INFO_TMP[0].ADDED_CONS` is required",
            ),
            (
                "/COM_METER_INFO_TMP/0/ADDED_CONS",
                json!(1.234),
                "`COM_METER_INFO_TMP[0].ADDED_CONS` has 3 decimals",
            ),
            (
                "/COM_METER_INFO_TMP/0/ADDED_CONS",
                json!("12.345"),
                "`COM_METER_INFO_TMP[0].ADDED_CONS` has 3 decimals",
            ),
            (
                "/COM_METER_INFO_TMP/0/ADDED_CONS",
                json!(123456789012345_i64),
                "`COM_METER_INFO_TMP[0].ADDED_CONS` has 15 digits before the decimal point",
            ),
            (
                "/COM_METER_INFO_TMP/0/ADDED_CONS",
                json!("12,5"),
                "`COM_METER_INFO_TMP[0].ADDED_CONS` must be a decimal number",
            ),
            (
                "/COM_METER_INFO_TMP/0/ADDED_CONS",
                json!([1]),
                "`COM_METER_INFO_TMP[0].ADDED_CONS` must be a number",
            ),
            (
                "/COM_METER_INFO_TMP/0/COLOUR",
                json!("red"),
                "unknown field `COM_METER_INFO_TMP[0].COLOUR`",
            ),
            (
                "/REGISTER_DID",
                json!("RG0000000000001"),
                "`REGISTER_DID` must be exactly 16 characters, got 15",
            ),
            ("/ACCOUNT_DID", json!(5), "`ACCOUNT_DID` must be a string"),
            (
                "/SYS_HEAD",
                json!({"ACCOUNT_DID": "AC000000000000001"}),
                "`SYS_HEAD.ACCOUNT_DID` must be exactly 16 characters, got 17",
            ),
            (
                "/SYS_HEAD",
                json!({"NOTE": "x"}),
                "unknown field `SYS_HEAD.NOTE`",
            ),
            (
                "/SYS_HEAD",
                json!("head"),
                "`SYS_HEAD` must be a JSON object",
            ),
            ("/colour", json!("red"), "unknown field `colour`"),
        ];
        for (pointer, value, needle) in cases {
            let err = invalid(pointer, value.clone());
            assert!(err.starts_with("invalid dosage payload: "), "{err}");
            assert!(
                err.contains(needle),
                "{pointer} = {value}: {needle:?} not in {err:?}"
            );
        }
        assert!(validate("[1]").unwrap_err().contains("JSON object"));
        assert!(validate("{not json")
            .unwrap_err()
            .contains("not valid JSON"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut p = payload();
        p["COM_METERAGE"]["NORMAL_RETRO_TYPE"] = json!(7);
        p["COM_METER_INFO_TMP"][1]["READINGS_TYPE"] = json!("9");
        let err = validate(&p.to_string()).unwrap_err();
        assert!(err.contains("COM_METERAGE.NORMAL_RETRO_TYPE"), "{err}");
        assert!(err.contains("COM_METER_INFO_TMP[1].READINGS_TYPE"), "{err}");
    }

    #[test]
    fn credentials_are_refused_anywhere_in_the_payload() {
        for (patch, path) in [
            (json!({"DYNAMIC_KEY": "x"}), "`DYNAMIC_KEY`"),
            (
                json!({"SYS_HEAD": {"DYNAMIC_KEY": "x"}}),
                "`SYS_HEAD.DYNAMIC_KEY`",
            ),
            (
                json!({"SYS_HEAD": {"CHANNEL_DID": "CH00000000000001"}}),
                "`SYS_HEAD.CHANNEL_DID`",
            ),
            (json!({"channel_did": "x"}), "`channel_did`"),
        ] {
            let mut p = payload();
            for (k, v) in patch.as_object().unwrap() {
                p[k] = v.clone();
            }
            let err = validate(&p.to_string()).unwrap_err();
            assert!(
                err.contains(path) && err.contains("secrets don't belong in the outbox"),
                "{err}"
            );
            assert!(!err.contains("unknown field"), "reported once: {err}");
        }
        let mut p = payload();
        p["COM_METER_INFO_TMP"][1]["DYNAMIC_KEY"] = json!("x");
        let err = validate(&p.to_string()).unwrap_err();
        assert!(
            err.contains("`COM_METER_INFO_TMP[1].DYNAMIC_KEY` must not be in the payload"),
            "{err}"
        );
    }

    #[test]
    fn overrides_at_the_top_or_in_sys_head_but_not_both() {
        let mut p = payload();
        p["REGISTER_DID"] = json!("RG00000000000009");
        p["SYS_HEAD"] = json!({"ACCOUNT_DID": "AC00000000000009"});
        let d = validate(&p.to_string()).unwrap();
        assert_eq!(d.register_did.as_deref(), Some("RG00000000000009"));
        assert_eq!(d.account_did.as_deref(), Some("AC00000000000009"));
        p["SYS_HEAD"]["REGISTER_DID"] = json!("RG00000000000009");
        let err = validate(&p.to_string()).unwrap_err();
        assert!(err.contains("`REGISTER_DID` is given both"), "{err}");
        // null means "not given".
        let mut q = payload();
        q["REGISTER_DID"] = Value::Null;
        assert_eq!(validate(&q.to_string()).unwrap().register_did, None);
    }

    #[test]
    fn added_cons_is_checked_on_its_decimal_text() {
        let ok = |v: Value, want: &str| assert_eq!(decimal_text(&v).as_deref(), Ok(want), "{v}");
        ok(json!(0), "0");
        ok(json!(12), "12");
        ok(json!(12.5), "12.5");
        ok(json!(-3.25), "-3.25");
        ok(json!(0.1), "0.1");
        ok(json!(12345678901234_i64), "12345678901234");
        ok(json!(12345678901234.56), "12345678901234.56");
        ok(json!("12.50"), "12.50");
        ok(json!("007.10"), "7.10");
        ok(json!("-0.00"), "-0.00");
        // Beyond f64's cents, a string still carries the exact value.
        ok(json!("99999999999999.99"), "99999999999999.99");
        ok(json!("70368744177664.09"), "70368744177664.09");

        let err = |v: Value, needle: &str| {
            let e = decimal_text(&v).unwrap_err();
            assert!(e.contains(needle), "{v}: {needle:?} not in {e:?}");
        };
        // 0.1 + 0.2 as a producer's f64 arithmetic leaves it.
        err(json!(0.1 + 0.2), "has 17 decimals");
        err(json!(1.005), "has 3 decimals");
        err(json!(1e-7), "more than 2 decimals");
        err(json!(1e20), "too large for a JSON number");
        // As a producer's JSON text has it: an f64 cannot hold these cents.
        let parsed: Value = serde_json::from_str("70368744177664.09").unwrap();
        err(parsed, "send it as a decimal string");
        err(json!(123456789012345_u64), "15 digits before");
        err(json!("123456789012345"), "15 digits before");
        for bad in ["", "-", "1.", ".5", "+1", "1e3", " 1", "1.2.3", "NaN", "１"] {
            err(json!(bad), "must be a decimal number");
        }
        err(json!(true), "must be a number");
    }

    #[test]
    fn request_body_has_the_seed_shape_with_strings_and_numbers() {
        let secret = Secret::new(KEY);
        let d = validate(&payload().to_string()).unwrap();
        let body = request_body(&d, &head(&secret));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!({
                "SYS_HEAD": {
                    "CHANNEL_DID": "CH00000000000001",
                    "DYNAMIC_KEY": KEY,
                    "REGISTER_DID": "RG00000000000001",
                    "ACCOUNT_DID": "AC00000000000001"
                },
                "COM_METERAGE": {"SETTLEMENT_AID": "SA00000000000001", "NORMAL_RETRO_TYPE": "2"},
                "COM_METER_INFO_TMP": [
                    {"DEVICE_DID": "DV00000000000001", "NORMAL_RETRO_TYPE": "2",
                     "ENERGY_FLOW_TYPE": "1", "READINGS_TYPE": "1", "ADDED_CONS": 12.5},
                    {"DEVICE_DID": "DV00000000000002", "NORMAL_RETRO_TYPE": "1",
                     "ENERGY_FLOW_TYPE": "2", "READINGS_TYPE": "8", "ADDED_CONS": -3.05}
                ]
            })
        );
        // Same top-level and SYS_HEAD keys as the seed's request example.
        let seed: Value = serde_json::from_str(
            r#"{"SYS_HEAD":{"CHANNEL_DID":"","DYNAMIC_KEY":"","REGISTER_DID":"","ACCOUNT_DID":""},
                "COM_METERAGE":{"SETTLEMENT_AID":"","NORMAL_RETRO_TYPE":""},
                "COM_METER_INFO_TMP":[{"DEVICE_DID":"","NORMAL_RETRO_TYPE":"","ENERGY_FLOW_TYPE":"","READINGS_TYPE":"","ADDED_CONS":0}]}"#,
        )
        .unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        for ptr in ["", "/SYS_HEAD", "/COM_METERAGE", "/COM_METER_INFO_TMP/0"] {
            assert_eq!(
                keys(v.pointer(ptr).unwrap()),
                keys(seed.pointer(ptr).unwrap()),
                "{ptr}"
            );
            for (k, field) in seed.pointer(ptr).unwrap().as_object().unwrap() {
                let sent = &v.pointer(ptr).unwrap()[k];
                assert_eq!(field.is_string(), sent.is_string(), "{ptr}/{k}");
                assert_eq!(field.is_number(), sent.is_number(), "{ptr}/{k}");
            }
        }
    }

    #[test]
    fn request_body_keeps_exact_decimals_escapes_text_and_applies_overrides() {
        let secret = Secret::new(KEY);
        let mut p = payload();
        p["COM_METER_INFO_TMP"][0]["ADDED_CONS"] = json!("70368744177664.09");
        p["COM_METER_INFO_TMP"][0]["DEVICE_DID"] = json!("DV\"0\\1");
        p["SYS_HEAD"] = json!({"REGISTER_DID": "RG00000000000009"});
        let body = request_body(&validate(&p.to_string()).unwrap(), &head(&secret));
        assert!(
            body.contains(r#""ADDED_CONS":70368744177664.09}"#),
            "{body}"
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["COM_METER_INFO_TMP"][0]["DEVICE_DID"], "DV\"0\\1");
        assert_eq!(v["SYS_HEAD"]["REGISTER_DID"], "RG00000000000009");
        assert_eq!(v["SYS_HEAD"]["ACCOUNT_DID"], "AC00000000000001");
    }

    fn rules() -> Rules {
        Rules {
            retryable_codes: vec![9],
            retry_ambiguous: false,
        }
    }

    fn verdict(status: u16, body: &str) -> Verdict {
        classify(status, None, body, &rules(), "SA1").verdict
    }

    #[test]
    fn the_seed_reply_example_is_a_delivery() {
        let c = classify(
            200,
            None,
            "{\n\t\"CODE\":\t0,\n\t\"MESSAGE\":\t\"\",\n\t\"DATA\":\t{\n\t}\n}",
            &rules(),
            "SA1",
        );
        assert_eq!(
            c,
            Classified {
                verdict: Verdict::Delivered {
                    hint: None,
                    result: None
                },
                code: Some("0".into())
            }
        );
        assert!(matches!(
            verdict(200, r#"{"CODE":"0","MESSAGE":"成功"}"#),
            Verdict::Delivered { .. }
        ));
    }

    #[test]
    fn codes_are_permanent_unless_listed() {
        let c = classify(
            200,
            None,
            r#"{"CODE":2001,"MESSAGE":"参数错误: X","DATA":{}}"#,
            &rules(),
            "SA1",
        );
        assert_eq!(c.code.as_deref(), Some("2001"));
        assert_eq!(
            c.verdict,
            Verdict::Permanent {
                reason: "epeis CODE 2001: 参数错误: X".into()
            }
        );
        assert_eq!(
            verdict(200, r#"{"CODE":1001}"#),
            Verdict::Permanent {
                reason: "epeis CODE 1001".into()
            }
        );
        assert!(
            matches!(verdict(200, r#"{"CODE":"E42","MESSAGE":"?"}"#), Verdict::Permanent { reason } if reason == "epeis CODE E42: ?")
        );
        let retry = classify(
            200,
            Some(Duration::from_secs(3)),
            r#"{"CODE":9,"MESSAGE":"busy"}"#,
            &rules(),
            "SA1",
        );
        assert_eq!(
            retry.verdict,
            Verdict::Retry {
                reason: "epeis CODE 9: busy (listed in retryable_codes)".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(
            verdict(200, r#"{"CODE":"9"}"#),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn http_status_classes() {
        for status in [500, 502, 503, 504, 429, 408] {
            assert!(
                matches!(verdict(status, ""), Verdict::Retry { .. }),
                "{status}"
            );
        }
        let ra = classify(503, Some(Duration::from_secs(7)), "", &rules(), "SA1");
        assert_eq!(
            ra.verdict,
            Verdict::Retry {
                reason: "HTTP 503 from epeis".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        for status in [400, 401, 404, 405] {
            assert!(
                matches!(verdict(status, "nope"), Verdict::Permanent { reason } if reason.contains("url")),
                "{status}"
            );
        }
    }

    #[test]
    fn a_2xx_without_a_code_is_ambiguous() {
        for body in [
            "<html><body>502 Bad Gateway</body></html>",
            "",
            r#"{"MESSAGE":"ok"}"#,
            r#"{"CODE":null}"#,
            "[0]",
        ] {
            match verdict(200, body) {
                Verdict::Ambiguous { reason } => {
                    assert!(
                        reason
                            .starts_with("outcome unknown: epeis answered HTTP 200 without a CODE"),
                        "{reason}"
                    );
                    assert!(reason.contains("check SETTLEMENT_AID SA1"), "{reason}");
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn not_sent_is_retried_maybe_sent_is_ambiguous() {
        let not_sent = SendError::NotSent("tcp connect error: Connection refused".into());
        assert!(matches!(
            transport_verdict(&not_sent, "SA1", false),
            Verdict::Retry { reason, retry_after: None } if reason.contains("Connection refused")
        ));
        let maybe = SendError::MaybeSent("no reply within the timeout".into());
        assert_eq!(
            transport_verdict(&maybe, "SA1", false),
            Verdict::Ambiguous {
                reason: "outcome unknown: no reply within the timeout. The adjustment may have been applied: check SETTLEMENT_AID SA1 on the epeis side before requeueing; requeueing sends it again".into()
            }
        );
        assert!(matches!(
            transport_verdict(&maybe, "SA1", true),
            Verdict::Ambiguous { reason } if reason.contains("retry_ambiguous = true") && reason.contains("applied twice")
        ));
    }

    #[test]
    fn valid_until_needs_a_zone_and_honours_offsets() {
        assert_eq!(parse_valid_until("1970-01-01T00:00:01Z"), Ok(1000));
        assert_eq!(
            parse_valid_until("2027-01-31T00:00:00Z"),
            Ok(1_801_353_600_000)
        );
        assert_eq!(
            parse_valid_until("2027-01-31T08:00:00+08:00"),
            Ok(1_801_353_600_000)
        );
        assert_eq!(
            parse_valid_until("2027-01-30T19:00:00-05:00"),
            Ok(1_801_353_600_000)
        );
        assert_eq!(
            parse_valid_until("2027-01-31 00:00:00.5z"),
            Ok(1_801_353_600_500)
        );
        for (bad, needle) in [
            ("2027-01-31T00:00:00", "no time zone"),
            ("2027-01-31", "no time zone"),
            ("2027-02-30T00:00:00Z", "not an RFC 3339 time"),
            ("next tuesday Z", "not an RFC 3339 time"),
            ("2027-01-31T00:00:00+25:00", "invalid UTC offset"),
        ] {
            let e = parse_valid_until(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    fn sink_config(extra: &str, key: &str) -> (SinkConfig, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, format!("{key}\n")).unwrap();
        let cfg: SinkConfig = toml::from_str(&format!(
            "type = \"epeis\"\nurl = \"http://127.0.0.1:9/Service/v1/RepairDosageBack/\"\nsecret_file = {:?}\n{extra}",
            key_file.display().to_string()
        ))
        .unwrap();
        (cfg, dir)
    }

    const IDS: &str = "channel_did = \"CH00000000000001\"\nregister_did = \"RG00000000000001\"\naccount_did = \"AC00000000000001\"\n";

    #[test]
    fn config_checks() {
        let (good, _d) = sink_config(&format!("{IDS}retryable_codes = [9]\ndynamic_key_valid_until = \"2027-01-31T00:00:00+08:00\""), KEY);
        assert_eq!(validate_config("e", &good), Vec::<String>::new());

        let short_key = "K".repeat(63);
        let (bad, _d) = sink_config(
            "channel_did = \"CH1\"\naccount_did = \"AC00000000000001\"\nretryable_codes = [0]\ndynamic_key_valid_until = \"2027-01-31\"",
            &short_key,
        );
        let problems = validate_config("e", &bad).join("\n");
        for needle in [
            "sinks.e: channel_did must be exactly 16 characters, got 3",
            "sinks.e: register_did is required",
            "must be 64 characters, got 63",
            "retryable_codes must not contain 0",
            "sinks.e: dynamic_key_valid_until \"2027-01-31\" has no time zone",
        ] {
            assert!(problems.contains(needle), "{needle:?} not in\n{problems}");
        }
        assert!(!problems.contains(&short_key), "the key is never shown");
        assert!(!problems.contains("account_did"), "{problems}");
    }

    fn sink(extra: &str) -> (EpeisSink, tempfile::TempDir) {
        let (cfg, dir) = sink_config(&format!("{IDS}{extra}"), KEY);
        let secret = cfg.load_secret("e").unwrap();
        let client = http::client(Duration::from_secs(1), 1);
        (EpeisSink::new(&cfg, secret, client).unwrap(), dir)
    }

    #[test]
    fn hold_once_the_key_has_expired_and_warn_ahead() {
        let (no_expiry, _d) = sink("");
        assert_eq!(no_expiry.hold(i64::MAX), None);

        let (s, _d) = sink("dynamic_key_valid_until = \"2027-01-31T00:00:00Z\"");
        let until = 1_801_353_600_000;
        assert_eq!(s.hold(until - 1), None);
        let held = s.hold(until).unwrap();
        assert_eq!(
            held,
            "DYNAMIC_KEY expired at 2027-01-31T00:00:00Z: install a new key (secret_file/secret_env + dynamic_key_valid_until), then reload (SIGHUP) or restart outboxd"
        );
        assert_eq!(s.hold(until + 1).as_deref(), Some(held.as_str()));
        assert!(!held.contains(KEY));
    }

    #[test]
    fn the_expiry_warning_is_due_once_a_day() {
        let (s, _d) = sink("dynamic_key_valid_until = \"2027-01-31T00:00:00Z\"");
        let day = WARN_EVERY_MS;
        let t0 = 1_801_353_600_000 - 3 * day;
        assert!(s.warn_due(t0));
        assert!(!s.warn_due(t0 + 1));
        assert!(!s.warn_due(t0 + day - 1));
        assert!(s.warn_due(t0 + day));
        assert!(!s.warn_due(t0 + day + 1000));
        // hold() only asks within the last week.
        let (far, _d) = sink("dynamic_key_valid_until = \"2027-01-31T00:00:00Z\"");
        assert_eq!(far.hold(1_801_353_600_000 - 8 * day), None);
        assert_eq!(far.last_warned.load(Ordering::Relaxed), i64::MIN);
        assert_eq!(far.hold(t0), None);
        assert_eq!(far.last_warned.load(Ordering::Relaxed), t0);
    }

    fn row(payload: &Value, in_doubt: bool) -> ClaimedRow {
        ClaimedRow {
            id: 1,
            sink: "epeis".into(),
            event_type: "dosage".into(),
            idempotency_key: "SA00000000000001".into(),
            payload: payload.to_string(),
            ordering_key: None,
            created_at: 0,
            attempts: 2,
            flow_state: None,
            in_doubt,
            defect: None,
        }
    }

    #[tokio::test]
    async fn an_in_doubt_row_is_parked_without_a_request() {
        // Nobody listens on port 9 of the sink's url: had it sent, the verdict would be a
        // not-sent retry.
        let (s, _d) = sink("");
        let out = s.deliver(&row(&payload(), true)).await;
        match &out.verdict {
            Verdict::Ambiguous { reason } => {
                assert!(
                    reason.starts_with("outcome unknown: a previous attempt was interrupted"),
                    "{reason}"
                );
                assert!(
                    reason.contains("SETTLEMENT_AID SA00000000000001"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out.info.http_status, None);
        assert_eq!(out.info.error, None);

        let (retrying, _d) = sink("retry_ambiguous = true");
        let out = retrying.deliver(&row(&payload(), true)).await;
        assert!(
            matches!(&out.verdict, Verdict::Retry { reason, .. } if reason.starts_with("not sent")),
            "{:?}",
            out.verdict
        );
    }

    #[tokio::test]
    async fn invalid_payloads_are_permanent_and_scrubbed() {
        let (s, _d) = sink("");
        let mut p = payload();
        p["COM_METERAGE"]["NORMAL_RETRO_TYPE"] = json!(KEY);
        let out = s.deliver(&row(&p, false)).await;
        match &out.verdict {
            Verdict::Permanent { reason } => {
                assert!(
                    reason.contains("COM_METERAGE.NORMAL_RETRO_TYPE"),
                    "{reason}"
                );
                assert!(reason.contains("a string of 64 characters"), "{reason}");
                assert!(!reason.contains(&KEY[..12]), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
