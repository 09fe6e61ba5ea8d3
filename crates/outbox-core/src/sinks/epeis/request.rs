//! The JSON request body.

use serde_json::Value;

use super::payload::Dosage;
use crate::secret::Secret;

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
