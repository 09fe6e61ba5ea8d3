//! What a 4pyun reply means, per the sink's code table. Pure: no I/O, no clock.

use std::time::Duration;

use serde_json::Value;

use super::config::PyunCodes;
use crate::health::SinkCause;
use crate::outcome::{truncate, Blame, Verdict};

/// What a reply means, per the sink's code table.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub verdict: Verdict,
    pub code: Option<String>,
    pub hint: Option<String>,
    /// Whose fault a failure is.
    pub blame: Blame,
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
            blame: Blame::Sink(SinkCause::Unavailable),
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
            blame: Blame::of_status(status).unwrap_or(Blame::Row),
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
            blame: Blame::Sink(SinkCause::Unavailable),
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
            blame: Blame::Sink(SinkCause::Unavailable),
        };
    };
    let verdict = by_code(&code, message, hint.as_deref(), seqno, codes, retry_after);
    let blame = blame_of_code(&code, hint.as_deref());
    Classified {
        verdict,
        code: Some(code),
        hint,
        blame,
    }
}

/// Whose fault a reply code is: `401`/`1401` (signature) and `403` (app_id, or the timestamp
/// window: the clock) are the sink's, as are the platform's own errors (`500`, `503`, `1500`,
/// `1503`); `400`/`1400` (a missing or bad parameter, named in the hint) and every other code
/// are the row's.
pub fn blame_of_code(code: &str, hint: Option<&str>) -> Blame {
    match code {
        "401" | "1401" => Blame::Sink(SinkCause::Auth),
        "403" if hint.is_some_and(|h| h.contains("timestamp")) => Blame::Sink(SinkCause::Clock),
        "403" => Blame::Sink(SinkCause::Auth),
        "500" | "503" | "1500" | "1503" => Blame::Sink(SinkCause::Unavailable),
        _ => Blame::Row,
    }
}

/// The verdict for a reply's `code`, per the code table.
fn by_code(
    code: &str,
    message: Option<String>,
    hint: Option<&str>,
    seqno: Option<String>,
    codes: &PyunCodes,
    retry_after: Option<Duration>,
) -> Verdict {
    let describe = || {
        let mut d = format!("4pyun code {code}");
        if let Some(m) = &message {
            d.push_str(&format!(" {m}"));
        }
        if let Some(h) = hint {
            d.push_str(&format!(" (hint: {h})"));
        }
        if let Some(s) = &seqno {
            d.push_str(&format!(" [seqno {s}]"));
        }
        d
    };
    let has = |list: &[String]| list.iter().any(|c| c == code);
    if has(&codes.success) {
        Verdict::Delivered {
            hint: hint.map(str::to_string),
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
    }
}
