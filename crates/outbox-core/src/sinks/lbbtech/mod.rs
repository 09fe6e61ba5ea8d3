//! lbbtech (驴充充) "newPriceStandardCharge" (charge_start): start a charge, then follow it to
//! a definite outcome the station software can act on: started, or failed (refund).
//!
//! Protocol rules, from the lbbtech (驴充充) open-API interface document (004) and its operators:
//! - Every call is a form POST to `{url}/<api>` with the `token` as a form field; errors look
//!   like `{"code":"-1","error":"...","success":false}`.
//! - Starting a charge is **not idempotent**. Only a start that provably never left
//!   ([`SendError::NotSent`]) is sent again; one that may have reached the platform (timeout,
//!   reset, HTTP 5xx, an unreadable reply) is dead-lettered as "outcome unknown" for a person
//!   to check at the charger. So is a row found in doubt before its start was recorded (a
//!   worker died mid-start).
//! - The start reply carries a `resultKey` and an `orderNum`. `query/result` is polled every
//!   `poll_interval` until `poll_window` after the start reply: started when `success` is true
//!   and `data.result` is 1; any other result is a failure reason (3 not plugged in, ...).
//! - Two-wheeler chargers: no confirmation within the window, or a failure result, means
//!   failed: refund. Car chargers: neither refunds at once (the seed: "超出30秒未查到结果或者
//!   查询出结果为失败(result为非1)建议不进行立即退款"); the order is looked up with
//!   `queryChargeOrderDetail` at *start reply + `poll_window` + `verify_after`* (the seed's
//!   5 minutes count from the end of the 30 s polling): an order whose status is in
//!   `started_statuses` (default 2 charging, 3 ended normally) means it did start; no order,
//!   or another status, means failed.
//!
//! # The flow, one claim per step
//!
//! Each step is one claim of the row and one HTTP call; [`deliver`](Platform::deliver)
//! reads the step from the row's `flow_state` and returns [`Verdict::Continue`] with the next
//! state and its due time. Between steps the row is `pending` and holds no lease and no
//! worker slot, and a daemon restarted at any moment resumes from the last recorded state.
//! Polls and order queries are read-only, so repeating one after a crash is harmless.
//!
//! ```text
//! (none) --start ok--> poll --result 1--------------------------------> delivered: started
//!   |                   |--result n, two_wheeler / window over, two_wheeler --> done: failed
//!   |                   `--result n, car / window over, car --> verify --status 2,3--> started
//!   |                                                             `--no order/other--> failed
//!   |--start refused (success false) --> done: failed, refund
//!   |--not sent --> retried
//!   `--may have been sent, no order number --> dead: "outcome unknown: check the charger..."
//! ```
//!
//! Final outcomes land in the row's `result` (JSON) and, for producers, in the
//! `outbox_outcomes` view (migration 0002): `{"outcome":"started","orderNum":..}` or
//! `{"outcome":"failed","refund":true,"reason":..,"code":..,"orderNum":..}`; a dead-lettered
//! row reads `unknown` when its reason starts with [`OUTCOME_UNKNOWN`].
//!
//! The optional `callback_url` is not implemented yet; a config that sets it is refused.

//! Files: [`config`] (the section's keys), [`payload`] (validation), [`request`] (the form
//! body), [`flow`] (the state between steps), [`reply`] (what each reply means).

pub mod config;
pub mod flow;
pub mod payload;
pub mod reply;
pub mod request;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use config::LbbtechConfig;
pub use flow::{FlowState, PollState, Settings, VerifyState};
pub use payload::{validate, Charger, StartCommand};
pub use reply::{
    after_poll, after_start, after_verify, before_start, blame, order_status_meaning, reply_code,
    result_meaning, Reply,
};
pub use request::form_body;

use crate::clock;
use crate::event::{ClaimedRow, EventType};
use crate::outcome::{AttemptInfo, StepOutcome, Verdict};
use crate::secret::Secret;
use crate::sinks::send::{Reading, SendError, Sender};
use crate::sinks::{Ambiguity, Platform, SinkSettings};
use reply::{after, unknown};

const FORM: &str = "application/x-www-form-urlencoded; charset=UTF-8";

pub const START_API: &str = "newPriceStandardCharge";
pub const RESULT_API: &str = "query/result";
pub const ORDER_API: &str = "queryChargeOrderDetail";

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(3);
pub const DEFAULT_POLL_WINDOW: Duration = Duration::from_secs(30);
pub const DEFAULT_VERIFY_AFTER: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_STARTED_STATUSES: [i64; 2] = [2, 3];

/// Order queries that may fail (network, 5xx, an unexpected reply) before the row is given
/// to a person as "outcome unknown".
pub const MAX_VERIFY_QUERIES: u32 = 10;
/// How every dead-letter reason of a charge that may have started begins; the
/// `outbox_outcomes` view reads such rows as `unknown`.
pub const OUTCOME_UNKNOWN: &str = "outcome unknown: check the charger before refunding";

pub struct Lbbtech {
    base: String,
    settings: Settings,
    http: Sender,
}

impl Platform for Lbbtech {
    const TYPE: &'static str = "lbbtech";
    /// Each row starts a charger: a re-sent start is parked for an operator, so keep few in flight.
    const DEFAULT_CONCURRENCY: usize = 32;
    const EVENT_TYPES: &'static [EventType] = &[EventType::ChargeStart];
    type Config = LbbtechConfig;

    fn check_config(
        name: &str,
        settings: &SinkSettings,
        config: &LbbtechConfig,
        _secret: Option<&Secret>,
    ) -> Vec<String> {
        config::validate_config(name, &settings.url, config)
    }

    fn build(
        settings: &SinkSettings,
        config: &LbbtechConfig,
        http: Sender,
    ) -> Result<Self, String> {
        Ok(Lbbtech {
            base: settings.url.trim_end_matches('/').to_string(),
            settings: Settings::from_config(config),
            http,
        })
    }

    /// Never retried: a start that may have been applied is not sent again, and the poll
    /// and verify steps handle their own failures.
    fn ambiguity(&self) -> Ambiguity {
        Ambiguity::Park
    }

    /// Runs the row's next step: start, poll or verify.
    async fn deliver(&self, row: &ClaimedRow) -> StepOutcome {
        let now = clock::now_ms();
        let decided = |verdict| {
            StepOutcome::local(
                verdict,
                AttemptInfo {
                    started_at: now,
                    ..Default::default()
                },
            )
        };
        let state = match FlowState::parse(row.flow_state.as_deref()) {
            Ok(s) => s,
            // A state was recorded, so a start was accepted: it may be charging.
            Err(e) => return decided(unknown(e)),
        };
        match state {
            None => {
                if let Some(v) = before_start(row) {
                    return decided(v);
                }
                let cmd = match validate(&row.payload) {
                    Ok(c) => c,
                    Err(reason) => return decided(Verdict::Permanent { reason }),
                };
                let fields: Vec<(&str, &str)> =
                    cmd.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
                self.call(START_API, &fields, |reply, at| {
                    after_start(cmd.charger, reply, at, &self.settings)
                })
                .await
            }
            Some(FlowState::Poll(p)) => {
                self.call(RESULT_API, &[("resultKey", &p.result_key)], |reply, at| {
                    after_poll(&p, reply, at, &self.settings)
                })
                .await
            }
            // Claimed early (a clock step, an operator): wait for the lookup time.
            Some(FlowState::Verify(v)) if now < v.verify_at => decided(Verdict::Continue {
                note: format!(
                    "order {} is looked up in {}",
                    v.order_num,
                    after(v.verify_at - now)
                ),
                next_at: v.verify_at,
                state: FlowState::Verify(v).to_json(),
            }),
            Some(FlowState::Verify(v)) => {
                self.call(ORDER_API, &[("orderNum", &v.order_num)], |reply, at| {
                    after_verify(&v, reply, at, &self.settings)
                })
                .await
            }
        }
    }
}

impl Lbbtech {
    /// Sends one call and classifies its reply with `classify(reply, now)`.
    async fn call(
        &self,
        api: &str,
        fields: &[(&str, &str)],
        classify: impl FnOnce(Reply<'_>, i64) -> Verdict,
    ) -> StepOutcome {
        let body = form_body(self.http.secret(), fields);
        let sent = self
            .http
            .post(&format!("{}/{api}", self.base), FORM, body)
            .await;
        let now = clock::now_ms();
        sent.outcome(|result| match result {
            Ok(r) => {
                let reply = Reply::Http {
                    status: r.status,
                    body: &r.body,
                };
                Reading {
                    verdict: classify(reply, now),
                    code: reply_code(&r.body),
                    hint: None,
                    blame: blame(reply),
                }
            }
            Err(e @ SendError::NotSent(_)) => {
                Reading::verdict(classify(Reply::NotSent(&e.to_string()), now))
            }
            Err(e @ SendError::MaybeSent(_)) => {
                Reading::verdict(classify(Reply::MaybeSent(&e.to_string()), now))
            }
        })
    }
}
