//! Placeholder: the lbbtech sink is being written (see its issue). It builds but refuses to
//! deliver, so a config naming it fails at `check-config` rather than at delivery.

use crate::config::SinkConfig;
use crate::event::ClaimedRow;
use crate::outcome::{StepOutcome, Verdict};
use crate::secret::Secret;

pub struct LbbtechSink {
    _secret: Secret,
}

impl LbbtechSink {
    pub fn new(
        _cfg: &SinkConfig,
        secret: Secret,
        _client: reqwest::Client,
    ) -> Result<Self, String> {
        Ok(LbbtechSink { _secret: secret })
    }

    pub fn retry_ambiguous(&self) -> bool {
        false
    }

    /// Why the sink's rows must be held right now (e.g. an expired credential), if so.
    pub fn hold(&self, _now_ms: i64) -> Option<String> {
        None
    }

    pub async fn deliver(&self, _row: &ClaimedRow) -> StepOutcome {
        StepOutcome {
            verdict: Verdict::Permanent {
                reason: "lbbtech sink not implemented".into(),
            },
            info: Default::default(),
        }
    }
}

pub fn validate_config(name: &str, _cfg: &SinkConfig) -> Vec<String> {
    vec![format!(
        "sinks.{name}: sink type lbbtech is not available in this build yet"
    )]
}
