//! The signed form body of one attempt.

use md5::{Digest, Md5};

use crate::secret::Secret;

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
