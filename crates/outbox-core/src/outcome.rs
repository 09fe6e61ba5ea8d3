//! What one delivery step ended in, as the sinks classify it and the store records it.

use std::time::Duration;

use crate::health::{FailureScope, SinkCause};

/// The verdict of one delivery step. Sinks produce it from a reply (pure code); the worker
/// turns it into a row update.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Final: the platform accepted the event. A `hint` on a success reply is recorded and
    /// shown to operators, but the row is never retried.
    Delivered {
        hint: Option<String>,
        result: Option<String>,
    },
    /// Final business outcome that is not an error (e.g. 4pyun `1002` "no parking record").
    Completed {
        note: String,
        result: Option<String>,
    },
    /// Try again later (at least `retry_after` if the server said so).
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Will never succeed as it is: dead-letter it for an operator.
    Permanent { reason: String },
    /// The request may or may not have been applied, and re-sending it is not safe: park it
    /// for an operator (or retry, where the sink is configured to accept duplicates).
    Ambiguous { reason: String },
    /// A multi-step flow moved on: store `state` and run the next step at `next_at` (epoch ms).
    Continue {
        state: String,
        next_at: i64,
        note: String,
    },
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Delivered { .. } => "delivered",
            Verdict::Completed { .. } => "completed",
            Verdict::Retry { .. } => "retry",
            Verdict::Permanent { .. } => "permanent",
            Verdict::Ambiguous { .. } => "ambiguous",
            Verdict::Continue { .. } => "continue",
        }
    }
}

/// What the attempt history keeps of one step: enough to explain the verdict, never a
/// secret (the send path scrubs replies and error texts before they get here).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptInfo {
    pub started_at: i64,
    pub duration_ms: i64,
    /// For the latency histogram (not stored): sub-millisecond precision.
    pub duration_us: i64,
    pub http_status: Option<u16>,
    pub reply_code: Option<String>,
    pub hint: Option<String>,
    /// The reply body, scrubbed of the sink's secret and then truncated (both done once, in
    /// `sinks/send.rs`).
    pub reply: Option<String>,
    pub error: Option<String>,
}

/// Whose fault a failed step is, as the platform's classifier reads it (ignored for a
/// success). The worker feeds it into the sink's health ([`crate::health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Blame {
    /// This row's content (a 400 naming a field), or nothing to say about the sink.
    #[default]
    Row,
    /// The platform or this sink's settings.
    Sink(SinkCause),
    /// Nothing was sent: connect, DNS or TLS failed.
    Link,
}

impl Blame {
    pub fn scope(self) -> FailureScope {
        match self {
            Blame::Row => FailureScope::Row,
            Blame::Sink(_) => FailureScope::Sink,
            Blame::Link => FailureScope::Link,
        }
    }

    /// The blame an HTTP status carries whatever the platform: 401/403 credentials, 404/405/410
    /// and 3xx the URL, 408/425/429/5xx an unwell platform; `None` for the rest (the body
    /// decides).
    pub fn of_status(status: u16) -> Option<Blame> {
        match status {
            300..=399 | 404 | 405 | 410 => Some(Blame::Sink(SinkCause::Config)),
            401 | 403 => Some(Blame::Sink(SinkCause::Auth)),
            408 | 425 | 429 | 500..=599 => Some(Blame::Sink(SinkCause::Unavailable)),
            _ => None,
        }
    }
}

/// One finished step: the verdict plus what was observed.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub verdict: Verdict,
    pub info: AttemptInfo,
    /// Whose fault it is when the verdict is not a success.
    pub blame: Blame,
}

impl StepOutcome {
    /// A step decided without a request (a payload that fails validation, a precheck): the
    /// row's own business.
    pub fn local(verdict: Verdict, info: AttemptInfo) -> StepOutcome {
        StepOutcome {
            verdict,
            info,
            blame: Blame::Row,
        }
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes cut]", &s[..end], s.len() - end)
}
