//! 4pyun "replenish" (charge_end): a signed form post, one per finished charge.
//!
//! Protocol rules, from the 4pyun "charge record push" interface document and the public
//! 4pyun open-platform docs:
//! - `sign` = uppercase hex MD5 of the sorted `k=v` pairs (raw values, empty ones dropped)
//!   followed by `&app_secret=SECRET`; `timestamp` (ms) and `sign` are computed for each
//!   attempt because the platform accepts a timestamp only within 10 minutes of its clock.
//! - A success code is final even when it carries a `hint`; the hint is kept for operators.
//! - `replenish_order` is unique per charge and the platform deduplicates on it, so a
//!   re-sent request is harmless: this sink is idempotent.
//!
//! Files: [`config`] (the section's keys), [`payload`] (validation), [`request`] (signature
//! and form body), [`reply`] (what a reply means).

pub mod config;
pub mod payload;
pub mod reply;
pub mod request;
#[cfg(test)]
mod tests;

pub use config::{PyunCodes, PyunConfig};
pub use payload::validate;
pub use reply::{classify, Classified};
pub use request::{form_body, sign};

use crate::clock;
use crate::event::{ClaimedRow, EventType};
use crate::outcome::{AttemptInfo, StepOutcome, Verdict};
use crate::secret::Secret;
use crate::sinks::send::{Reading, Sender};
use crate::sinks::{Ambiguity, Platform, SinkSettings};

const FORM: &str = "application/x-www-form-urlencoded; charset=UTF-8";

pub struct Pyun {
    url: String,
    app_id: String,
    codes: PyunCodes,
    http: Sender,
}

impl Platform for Pyun {
    const TYPE: &'static str = "pyun";
    /// 4pyun deduplicates `replenish_order`: a re-send is harmless.
    const DEFAULT_CONCURRENCY: usize = 512;
    const EVENT_TYPES: &'static [EventType] = &[EventType::ChargeEnd];
    type Config = PyunConfig;

    fn check_config(
        name: &str,
        _settings: &SinkSettings,
        config: &PyunConfig,
        _secret: Option<&Secret>,
    ) -> Vec<String> {
        config::validate_config(name, config)
    }

    fn build(settings: &SinkSettings, config: &PyunConfig, http: Sender) -> Result<Self, String> {
        Ok(Pyun {
            url: settings.url.clone(),
            app_id: config
                .app_id
                .clone()
                .ok_or("app_id is required for type = \"pyun\"")?,
            codes: config.codes.clone().unwrap_or_default(),
            http,
        })
    }

    /// Idempotent platform: whether or not the request got there, sending it again is safe.
    fn ambiguity(&self) -> Ambiguity {
        Ambiguity::Retry
    }

    async fn deliver(&self, row: &ClaimedRow) -> StepOutcome {
        let fields = match validate(&row.payload, &row.idempotency_key) {
            Ok(f) => f,
            Err(reason) => {
                return StepOutcome::local(
                    Verdict::Permanent { reason },
                    AttemptInfo {
                        started_at: clock::now_ms(),
                        ..Default::default()
                    },
                )
            }
        };
        // Fresh timestamp and signature for every attempt: the platform rejects stale ones.
        let body = form_body(&fields, &self.app_id, self.http.secret(), clock::now_ms());
        let sent = self.http.post(&self.url, FORM, body).await;
        sent.outcome(|result| match result {
            Ok(reply) => {
                let c = classify(reply.status, reply.retry_after, &reply.body, &self.codes);
                Reading {
                    verdict: c.verdict,
                    code: c.code,
                    hint: c.hint,
                    blame: c.blame,
                }
            }
            Err(e) => Reading::verdict(Verdict::Retry {
                reason: e.to_string(),
                retry_after: None,
            }),
        })
    }
}
