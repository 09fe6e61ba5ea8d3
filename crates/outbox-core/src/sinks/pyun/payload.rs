//! What a charge_end payload must hold, checked before anything is sent.

use serde_json::{Map, Value};

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
    let mut problems = unknown_keys(obj);
    let fields = read_fields(obj, &mut problems);
    check_values(&fields, idempotency_key, &mut problems);
    if problems.is_empty() {
        Ok(fields)
    } else {
        Err(format!(
            "invalid charge_end payload: {}",
            problems.join("; ")
        ))
    }
}

/// Keys that are not business fields, and those outboxd adds itself.
fn unknown_keys(obj: &Map<String, Value>) -> Vec<String> {
    let mut problems = Vec::new();
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
    problems
}

/// The fields to send, each as text, with a problem for each missing or mistyped one.
fn read_fields(
    obj: &Map<String, Value>,
    problems: &mut Vec<String>,
) -> Vec<(&'static str, String)> {
    let mut fields = Vec::new();
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

    fields
}

/// Length, characters, times, energy code and the order number of the fields read.
fn check_values(
    fields: &[(&'static str, String)],
    idempotency_key: &str,
    problems: &mut Vec<String>,
) {
    // No documented limit; a runaway value (or a NUL from a broken producer) is a producer
    // bug to surface, not something to send to a payment platform.
    for (name, value) in fields {
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
}

/// `yyyy-MM-ddTHH:mm:ssZ` with a real calendar date.
pub(super) fn is_utc_second(t: &str) -> bool {
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
