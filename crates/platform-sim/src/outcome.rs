//! What a platform's protocol logic decided about one request, before any fault is applied.

use serde_json::Value;

/// The reply a platform would send and what the request did to its state.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The JSON reply body (always sent with HTTP 200).
    pub reply: Value,
    /// The platform code in the reply, as text (see [`crate::RecordedRequest::reply_code`]).
    pub code: String,
    /// The request changed platform state.
    pub applied: bool,
    /// The key had already been applied before this request.
    pub duplicate: bool,
}

impl Outcome {
    /// A reply that changed nothing.
    pub fn rejected(code: impl Into<String>, reply: Value) -> Self {
        Outcome {
            reply,
            code: code.into(),
            applied: false,
            duplicate: false,
        }
    }
}
