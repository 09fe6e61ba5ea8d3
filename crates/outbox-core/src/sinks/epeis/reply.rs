//! What an epeis reply, or a failure without one, means. Pure: no I/O, no clock.

use std::time::Duration;

use serde_json::Value;

use crate::health::SinkCause;
use crate::outcome::{truncate, Blame, Verdict};
use crate::sinks::send::SendError;

/// How replies and ambiguous failures are treated (from the sink's config).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub retryable_codes: Vec<i64>,
    pub retry_ambiguous: bool,
    /// Non-zero `CODE`s that reject the channel credential: the sink's fault.
    pub credential_codes: Vec<i64>,
}

/// The credential-rejection `CODE`s when the sink lists none (the simulator's channel-check
/// failure; the real platform documents only `0`).
pub const DEFAULT_CREDENTIAL_CODES: &[i64] = &[1001];

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
    /// Whose fault a failure is.
    pub blame: Blame,
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
            blame: Blame::Sink(SinkCause::Unavailable),
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
            blame: Blame::of_status(status).unwrap_or(Blame::Row),
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
            blame: Blame::Sink(SinkCause::Unavailable),
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
    let blame = match number {
        Some(n) if rules.credential_codes.contains(&n) => Blame::Sink(SinkCause::Auth),
        Some(n) if rules.retryable_codes.contains(&n) => Blame::Sink(SinkCause::Unavailable),
        _ => Blame::Row,
    };
    Classified {
        verdict,
        code: Some(text),
        blame,
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
