//! What a dosage payload must hold, checked before anything is sent; the result keeps
//! `ADDED_CONS` as the exact decimal text to send.

use serde_json::{Map, Value};

/// Length of `CHANNEL_DID`, `REGISTER_DID` and `ACCOUNT_DID`.
pub(super) const DID_LEN: usize = 16;
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

    let overrides = overrides(&mut p, root);

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

    let meters = meters(&mut p, root);

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

/// `REGISTER_DID` / `ACCOUNT_DID` overrides: at the top level or in a `SYS_HEAD` object.
fn overrides(p: &mut Problems, root: &Map<String, Value>) -> [Option<String>; 2] {
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

    overrides
}

/// The entries of `COM_METER_INFO_TMP`.
fn meters(p: &mut Problems, root: &Map<String, Value>) -> Vec<Meter> {
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

    meters
}
