//! The producer's payload, validated before anything is sent.
//!
//! **Producer format**: the payload is the platform's own `Data` object, as JSON text, exactly
//! as T/CEC 102 names its fields:
//!
//! - `charge_order` (`notification_charge_order_info`):
//!   `{"StartChargeSeq": "...", "ConnectorID": "...", "StartTime": "2024-05-01 10:00:00",
//!   "EndTime": "...", "TotalPower": 12.5, "TotalElecMoney": 10.0, "TotalSeviceMoney": 5.5,
//!   "TotalMoney": 15.5, "StopReason": 0, "SumPeriod": 1, "ChargeDetails": [{"DetailStartTime",
//!   "DetailEndTime", "ElecPrice", "SevicePrice", "DetailPower", "DetailElecMoney",
//!   "DetailSeviceMoney"}]}`. Money is a JSON number in yuan with at most 2 decimals; times are
//!   local `yyyy-MM-dd HH:mm:ss`.
//! - `connector_status` (`notification_stationStatus`):
//!   `{"ConnectorStatusInfo": {"ConnectorID": "...", "Status": 0|1|2|3|4|255}}`.
//!
//! The producer may spell the service-money fields either way (`Sevice`, as the standard
//! does, or `Service`); the sink's [`MoneySpelling`] decides which spelling is sent. Fields
//! this module does not know are passed through untouched.

use serde::Deserialize;
use serde_json::{Map, Value};

/// How a platform spells the service-money fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoneySpelling {
    /// `TotalSeviceMoney`, `SevicePrice`, `DetailSeviceMoney`: the standard's own spelling.
    #[default]
    Sevice,
    /// `TotalServiceMoney`, `ServicePrice`, `DetailServiceMoney`.
    Service,
}

/// The (standard, corrected) names of the fields whose spelling varies.
const SPELLINGS: [(&str, &str); 3] = [
    ("TotalSeviceMoney", "TotalServiceMoney"),
    ("SevicePrice", "ServicePrice"),
    ("DetailSeviceMoney", "DetailServiceMoney"),
];

/// A payload ready for the envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The `Data` JSON text to encrypt, in the sink's spelling.
    pub data_json: String,
    /// `StartChargeSeq` (charge order) or `ConnectorID` (status).
    pub key: String,
}

/// Money in fen (hundredths of a yuan), read exactly from the JSON number's text.
fn cents(value: Option<&Value>, field: &str) -> Result<i64, String> {
    let number = match value {
        Some(Value::Number(n)) => n,
        Some(_) => return Err(format!("{field} must be a number (yuan)")),
        None => return Err(format!("{field} is missing")),
    };
    let text = number.to_string();
    decimal_hundredths(&text).ok_or_else(|| {
        format!("{field} = {text}: must be a non-negative amount with at most 2 decimals")
    })
}

/// `"12.3"` -> 1230; `None` for negatives, exponents, more than 2 decimals or overflow.
fn decimal_hundredths(text: &str) -> Option<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    // serde_json writes whole floats as "12.0"; that is 2 decimals or fewer too.
    let fraction = fraction.trim_end_matches('0');
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 2
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = format!("{fraction:0<2}").parse().ok()?;
    whole.checked_mul(100)?.checked_add(fraction)
}

fn text<'a>(object: &'a Map<String, Value>, field: &str, max: usize) -> Result<&'a str, String> {
    match object.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= max => Ok(s),
        Some(Value::String(_)) => Err(format!("{field} must be 1 to {max} characters")),
        Some(_) => Err(format!("{field} must be a string")),
        None => Err(format!("{field} is missing")),
    }
}

fn non_negative(object: &Map<String, Value>, field: &str) -> Result<f64, String> {
    match object.get(field).and_then(Value::as_f64) {
        Some(v) if v >= 0.0 && v.is_finite() => Ok(v),
        Some(_) => Err(format!("{field} must not be negative")),
        None => Err(format!("{field} must be a number")),
    }
}

fn integer(object: &Map<String, Value>, field: &str) -> Result<i64, String> {
    object
        .get(field)
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("{field} must be an integer"))
}

/// `yyyy-MM-dd HH:mm:ss` with a real calendar date.
fn time<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    let value = text(object, field, 19)?;
    let bytes = value.as_bytes();
    let shape = bytes.len() == 19
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b' ',
            13 | 16 => *b == b':',
            _ => b.is_ascii_digit(),
        });
    let field_of = |range: std::ops::Range<usize>| value[range].parse::<u32>().unwrap_or(99);
    let valid = shape && {
        let (year, month, day) = (field_of(0..4), field_of(5..7), field_of(8..10));
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => 0,
        };
        (1..=days).contains(&day)
            && field_of(11..13) < 24
            && field_of(14..16) < 60
            && field_of(17..19) < 60
    };
    if valid {
        Ok(value)
    } else {
        Err(format!(
            "{field} = {value:?}: expected \"yyyy-MM-dd HH:mm:ss\""
        ))
    }
}

/// Renames the spelling-variant fields of `object` to `spelling`; both spellings at once is
/// an error (which one is meant?).
fn respell(
    object: &mut Map<String, Value>,
    spelling: MoneySpelling,
    path: &str,
) -> Result<(), String> {
    for (standard, corrected) in SPELLINGS {
        let (from, to) = match spelling {
            MoneySpelling::Sevice => (corrected, standard),
            MoneySpelling::Service => (standard, corrected),
        };
        if object.contains_key(from) {
            if object.contains_key(to) {
                return Err(format!(
                    "{path}{standard} and {path}{corrected} are both present: give one"
                ));
            }
            let value = object.remove(from).expect("checked above");
            object.insert(to.to_owned(), value);
        }
    }
    Ok(())
}

fn service_field(spelling: MoneySpelling, index: usize) -> &'static str {
    match spelling {
        MoneySpelling::Sevice => SPELLINGS[index].0,
        MoneySpelling::Service => SPELLINGS[index].1,
    }
}

fn parse_object(payload: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(payload) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("payload must be a JSON object".into()),
        Err(e) => Err(format!("payload is not JSON: {e}")),
    }
}

/// Validates a `charge_order` payload and returns it in the sink's spelling.
pub fn charge_order(payload: &str, spelling: MoneySpelling) -> Result<Validated, String> {
    let mut order = parse_object(payload)?;
    respell(&mut order, spelling, "")?;
    let key = text(&order, "StartChargeSeq", 64)?.to_owned();
    text(&order, "ConnectorID", 64)?;
    let start = time(&order, "StartTime")?;
    let end = time(&order, "EndTime")?;
    if start > end {
        return Err(format!("StartTime {start} is after EndTime {end}"));
    }
    cents(order.get("TotalPower"), "TotalPower")?;
    let elec = cents(order.get("TotalElecMoney"), "TotalElecMoney")?;
    let service_name = service_field(spelling, 0);
    let service = cents(order.get(service_name), service_name)?;
    let total = cents(order.get("TotalMoney"), "TotalMoney")?;
    if elec.checked_add(service) != Some(total) {
        return Err(format!(
            "TotalMoney must equal TotalElecMoney + {service_name} ({} + {} != {})",
            yuan(elec),
            yuan(service),
            yuan(total)
        ));
    }
    integer(&order, "StopReason")?;
    let sum_period = integer(&order, "SumPeriod")?;
    let details = match order.get_mut("ChargeDetails") {
        Some(Value::Array(details)) => details,
        _ => return Err("ChargeDetails must be an array".into()),
    };
    if usize::try_from(sum_period).ok() != Some(details.len()) {
        return Err(format!(
            "SumPeriod is {sum_period} but ChargeDetails has {} entries",
            details.len()
        ));
    }
    for (i, detail) in details.iter_mut().enumerate() {
        let path = format!("ChargeDetails[{i}].");
        let Value::Object(detail) = detail else {
            return Err(format!("ChargeDetails[{i}] must be an object"));
        };
        respell(detail, spelling, &path)?;
        let at = |e: String| format!("{path}{e}");
        time(detail, "DetailStartTime").map_err(at)?;
        time(detail, "DetailEndTime").map_err(at)?;
        non_negative(detail, "ElecPrice").map_err(at)?;
        non_negative(detail, service_field(spelling, 1)).map_err(at)?;
        non_negative(detail, "DetailPower").map_err(at)?;
        cents(detail.get("DetailElecMoney"), "DetailElecMoney").map_err(at)?;
        let name = service_field(spelling, 2);
        cents(detail.get(name), name).map_err(at)?;
    }
    Ok(Validated {
        data_json: Value::Object(order).to_string(),
        key,
    })
}

fn yuan(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Validates a `connector_status` payload.
pub fn connector_status(payload: &str) -> Result<Validated, String> {
    let status = parse_object(payload)?;
    let Some(Value::Object(info)) = status.get("ConnectorStatusInfo") else {
        return Err("ConnectorStatusInfo must be an object".into());
    };
    let key = text(info, "ConnectorID", 64).map_err(|e| format!("ConnectorStatusInfo.{e}"))?;
    match info.get("Status").and_then(Value::as_i64) {
        Some(0..=4 | 255) => {}
        _ => return Err("ConnectorStatusInfo.Status must be 0, 1, 2, 3, 4 or 255".into()),
    }
    Ok(Validated {
        key: key.to_owned(),
        data_json: Value::Object(status.clone()).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn order() -> Value {
        json!({
            "StartChargeSeq": "123456789202405010000001",
            "ConnectorID": "3702120244102_1",
            "StartTime": "2024-05-01 10:00:00",
            "EndTime": "2024-05-01 11:00:00",
            "TotalPower": 12.5,
            "TotalElecMoney": 10.1,
            "TotalSeviceMoney": 5.2,
            "TotalMoney": 15.3,
            "StopReason": 0,
            "SumPeriod": 1,
            "ChargeDetails": [{
                "DetailStartTime": "2024-05-01 10:00:00",
                "DetailEndTime": "2024-05-01 11:00:00",
                "ElecPrice": 0.808,
                "SevicePrice": 0.416,
                "DetailPower": 12.5,
                "DetailElecMoney": 10.1,
                "DetailSeviceMoney": 5.2
            }]
        })
    }

    fn check(value: &Value) -> Result<Validated, String> {
        charge_order(&value.to_string(), MoneySpelling::Sevice)
    }

    #[test]
    fn a_valid_order_passes_with_its_key() {
        let validated = check(&order()).unwrap();
        assert_eq!(validated.key, "123456789202405010000001");
        let sent: Value = serde_json::from_str(&validated.data_json).unwrap();
        assert_eq!(sent, order());
    }

    #[test]
    fn money_sums_exactly_not_in_floats() {
        // 0.1 + 0.2 != 0.3 in floats; in fen it is exact.
        let mut o = order();
        o["TotalElecMoney"] = json!(0.1);
        o["TotalSeviceMoney"] = json!(0.2);
        o["TotalMoney"] = json!(0.3);
        assert!(check(&o).is_ok());
        o["TotalMoney"] = json!(0.31);
        let err = check(&o).unwrap_err();
        assert!(err.contains("0.10 + 0.20 != 0.31"), "{err}");
    }

    #[test]
    fn money_with_three_decimals_or_negative_or_text_is_refused() {
        for bad in [json!(10.123), json!(-1), json!("10.1"), json!(1e30)] {
            let mut o = order();
            o["TotalElecMoney"] = bad.clone();
            let err = check(&o).unwrap_err();
            assert!(err.contains("TotalElecMoney"), "{bad}: {err}");
        }
        assert_eq!(decimal_hundredths("12.30"), Some(1230));
        assert_eq!(decimal_hundredths("12.0"), Some(1200));
        assert_eq!(decimal_hundredths("7"), Some(700));
        assert_eq!(decimal_hundredths("1e3"), None);
    }

    #[test]
    fn required_fields_and_times() {
        for field in [
            "StartChargeSeq",
            "ConnectorID",
            "StartTime",
            "TotalMoney",
            "StopReason",
            "ChargeDetails",
        ] {
            let mut o = order();
            o.as_object_mut().unwrap().remove(field);
            let err = check(&o).unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
        for bad in [
            "2024-05-01T10:00:00",
            "2024-02-30 10:00:00",
            "2024-05-01 24:00:00",
            "2024-5-1 10:00:00",
        ] {
            let mut o = order();
            o["StartTime"] = json!(bad);
            assert!(check(&o).unwrap_err().contains("StartTime"), "{bad}");
        }
        let mut o = order();
        o["StartTime"] = json!("2024-05-01 12:00:00");
        assert!(check(&o).unwrap_err().contains("after EndTime"));
        let mut o = order();
        o["ChargeDetails"][0]["DetailEndTime"] = json!("soon");
        assert!(check(&o)
            .unwrap_err()
            .contains("ChargeDetails[0].DetailEndTime"));
    }

    #[test]
    fn sum_period_counts_the_details() {
        let mut o = order();
        o["SumPeriod"] = json!(2);
        assert!(check(&o).unwrap_err().contains("SumPeriod is 2"));
    }

    #[test]
    fn spelling_follows_the_sink_setting() {
        let service = charge_order(&order().to_string(), MoneySpelling::Service).unwrap();
        let sent: Value = serde_json::from_str(&service.data_json).unwrap();
        assert_eq!(sent["TotalServiceMoney"], json!(5.2));
        assert_eq!(sent["ChargeDetails"][0]["ServicePrice"], json!(0.416));
        assert_eq!(sent["ChargeDetails"][0]["DetailServiceMoney"], json!(5.2));
        assert!(sent.get("TotalSeviceMoney").is_none());
        // A producer writing the corrected spelling to a standard-spelling sink.
        let back = charge_order(&service.data_json, MoneySpelling::Sevice).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&back.data_json).unwrap(),
            order()
        );
        let mut both = order();
        both["TotalServiceMoney"] = json!(5.2);
        assert!(check(&both).unwrap_err().contains("both present"));
    }

    #[test]
    fn connector_status_is_checked() {
        let ok = connector_status(r#"{"ConnectorStatusInfo":{"ConnectorID":"C1","Status":255}}"#)
            .unwrap();
        assert_eq!(ok.key, "C1");
        for bad in [
            r#"{"ConnectorStatusInfo":{"ConnectorID":"C1","Status":5}}"#,
            r#"{"ConnectorStatusInfo":{"Status":1}}"#,
            r#"{"ConnectorID":"C1","Status":1}"#,
            "[]",
        ] {
            assert!(connector_status(bad).is_err(), "{bad}");
        }
    }
}
