//! epeis "RepairDosageBack" (dosage): one usage adjustment per row, a JSON post answered by
//! `{CODE, MESSAGE, DATA}`.
//!
//! Protocol rules, from the epeis "RepairDosageBack" interface document and what its
//! operators told us:
//! - `SYS_HEAD` carries the channel credential, `CHANNEL_DID` (16) and the secret
//!   `DYNAMIC_KEY` (64), which come from the sink's config only, plus `REGISTER_DID` and
//!   `ACCOUNT_DID` (16 each), from the config unless the payload overrides them.
//! - The enumerations (`NORMAL_RETRO_TYPE` 1/2, `ENERGY_FLOW_TYPE` 1/2, `READINGS_TYPE` 1..8)
//!   are typed String: producers may write them as integers, they are sent as strings.
//!   `ADDED_CONS` is Number(16,2): sent as a JSON number, exactly as validated.
//! - Only `CODE 0` (success) is documented. Other codes are permanent unless the sink lists
//!   them in `retryable_codes`.
//! - **The API has no idempotency key**: a request that may have reached epeis (a timeout, a
//!   connection closed after the body was written, a reply we cannot read) is an ambiguous
//!   outcome, parked for an operator unless `retry_ambiguous = true`. Only a failure that
//!   provably happened before sending (see [`crate::sinks::send::SendError::NotSent`]) is
//!   retried.
//! - The `DYNAMIC_KEY` has a validity window (`dynamic_key_valid_until`): the sink warns a
//!   week ahead and, once it has expired, holds its rows instead of burning their attempts.
//!
//! Files: [`config`] (the section's keys), [`payload`] (validation), [`request`] (the JSON
//! body), [`reply`] (what a reply or a failure means).

pub mod config;
pub mod payload;
pub mod reply;
pub mod request;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicI64, Ordering};

pub use config::{parse_valid_until, EpeisConfig};
pub use payload::{decimal_text, validate, Dosage, Meter};
pub use reply::{
    classify, outcome_unknown, transport_verdict, Classified, Rules, DEFAULT_CREDENTIAL_CODES,
};
pub use request::{request_body, Head};

use crate::clock;
use crate::event::{ClaimedRow, EventType};
use crate::outcome::{AttemptInfo, StepOutcome, Verdict};
use crate::secret::Secret;
use crate::sinks::send::{Reading, Sender};
use crate::sinks::{Ambiguity, Platform, SinkSettings};
use config::rfc3339;

const JSON: &str = "application/json; charset=utf-8";

/// Warn this long before the `DYNAMIC_KEY` expires, and again every `WARN_EVERY_MS`.
const WARN_AHEAD_MS: i64 = 7 * 24 * 3600 * 1000;
const WARN_EVERY_MS: i64 = 24 * 3600 * 1000;

pub struct Epeis {
    url: String,
    channel_did: String,
    register_did: String,
    account_did: String,
    rules: Rules,
    /// When the `DYNAMIC_KEY` stops being valid (epoch ms), if configured.
    valid_until_ms: Option<i64>,
    /// When the expiry warning was last logged (epoch ms), `i64::MIN` for never.
    last_warned: AtomicI64,
    http: Sender,
}

impl Platform for Epeis {
    const TYPE: &'static str = "epeis";
    /// No idempotency key: every row in flight at a crash may be applied twice.
    const DEFAULT_CONCURRENCY: usize = 8;
    const EVENT_TYPES: &'static [EventType] = &[EventType::Dosage];
    type Config = EpeisConfig;

    fn check_config(
        name: &str,
        _settings: &SinkSettings,
        config: &EpeisConfig,
        secret: Option<&Secret>,
    ) -> Vec<String> {
        config::validate_config(name, config, secret)
    }

    fn build(settings: &SinkSettings, cfg: &EpeisConfig, http: Sender) -> Result<Self, String> {
        let need = |v: &Option<String>, field: &str| {
            v.clone()
                .ok_or_else(|| format!("{field} is required for type = \"epeis\""))
        };
        let valid_until_ms = cfg
            .dynamic_key_valid_until
            .as_deref()
            .map(parse_valid_until)
            .transpose()
            .map_err(|e| format!("dynamic_key_valid_until {e}"))?;
        Ok(Epeis {
            url: settings.url.clone(),
            channel_did: need(&cfg.channel_did, "channel_did")?,
            register_did: need(&cfg.register_did, "register_did")?,
            account_did: need(&cfg.account_did, "account_did")?,
            rules: Rules {
                retryable_codes: cfg.retryable_codes.clone().unwrap_or_default(),
                retry_ambiguous: cfg.retry_ambiguous.unwrap_or(false),
                credential_codes: cfg
                    .credential_codes
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CREDENTIAL_CODES.to_vec()),
            },
            valid_until_ms,
            last_warned: AtomicI64::new(i64::MIN),
            http,
        })
    }

    /// Park by default: epeis has no idempotency key, so a retry after an ambiguous failure
    /// may book the adjustment twice.
    fn ambiguity(&self) -> Ambiguity {
        if self.rules.retry_ambiguous {
            Ambiguity::Retry
        } else {
            Ambiguity::Park
        }
    }

    /// Holds the sink's rows once the `DYNAMIC_KEY` has expired (every attempt would fail
    /// authentication); warns once a day during the week before.
    fn hold(&self, now_ms: i64) -> Option<String> {
        let until = self.valid_until_ms?;
        if now_ms >= until {
            return Some(format!(
                "DYNAMIC_KEY expired at {}: install a new key (secret_file/secret_env + dynamic_key_valid_until), then reload (SIGHUP) or restart outboxd",
                rfc3339(until)
            ));
        }
        if until - now_ms <= WARN_AHEAD_MS && self.warn_due(now_ms) {
            tracing::warn!(
                channel_did = %self.channel_did,
                expires_at = %rfc3339(until),
                expires_in = %clock::age(until - now_ms),
                "epeis DYNAMIC_KEY expires soon: install a new key (secret_file/secret_env + dynamic_key_valid_until) and reload (SIGHUP) or restart outboxd before then, or this sink's rows will be held"
            );
        }
        None
    }

    async fn deliver(&self, row: &ClaimedRow) -> StepOutcome {
        let local = |verdict: Verdict| {
            StepOutcome::local(
                self.scrub(verdict),
                AttemptInfo {
                    started_at: clock::now_ms(),
                    ..Default::default()
                },
            )
        };
        let dosage = match validate(&row.payload) {
            Ok(d) => d,
            Err(reason) => return local(Verdict::Permanent { reason }),
        };
        let aid = dosage.settlement_aid.as_str();
        // The previous attempt may have been booked: sending again could book it twice.
        if row.in_doubt && !self.rules.retry_ambiguous {
            return local(Verdict::Ambiguous {
                reason: outcome_unknown(
                    "a previous attempt was interrupted (its worker stopped or lost its lease mid-delivery) and may have reached epeis",
                    aid,
                    false,
                ),
            });
        }
        let body = request_body(
            &dosage,
            &Head {
                channel_did: &self.channel_did,
                dynamic_key: self.http.secret(),
                register_did: &self.register_did,
                account_did: &self.account_did,
            },
        );
        let sent = self.http.post(&self.url, JSON, body).await;
        let mut out = sent.outcome(|result| match result {
            Ok(reply) => {
                let c = classify(
                    reply.status,
                    reply.retry_after,
                    &reply.body,
                    &self.rules,
                    aid,
                );
                Reading {
                    verdict: c.verdict,
                    code: c.code,
                    hint: None,
                    blame: c.blame,
                }
            }
            Err(e) => Reading::verdict(transport_verdict(e, aid, self.rules.retry_ambiguous)),
        });
        out.verdict = self.scrub(out.verdict);
        out
    }
}

impl Epeis {
    /// True at most once per `WARN_EVERY_MS`.
    fn warn_due(&self, now_ms: i64) -> bool {
        let last = self.last_warned.load(Ordering::Relaxed);
        (last == i64::MIN || now_ms.saturating_sub(last) >= WARN_EVERY_MS)
            && self
                .last_warned
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Texts built from the payload could quote a misplaced key: scrub every reason.
    fn scrub(&self, verdict: Verdict) -> Verdict {
        match verdict {
            Verdict::Retry {
                reason,
                retry_after,
            } => Verdict::Retry {
                reason: self.http.scrub(&reason),
                retry_after,
            },
            Verdict::Permanent { reason } => Verdict::Permanent {
                reason: self.http.scrub(&reason),
            },
            Verdict::Ambiguous { reason } => Verdict::Ambiguous {
                reason: self.http.scrub(&reason),
            },
            other => other,
        }
    }
}
