//! The form body of every call: the token plus the call's fields.

use crate::secret::Secret;

/// The form body of one call; it holds the token, never log it.
/// The form body of a call: `token` first, then the call's fields.
pub fn form_body(token: &Secret, fields: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    ser.append_pair("token", token.expose());
    for (k, v) in fields {
        ser.append_pair(k, v);
    }
    ser.finish()
}
