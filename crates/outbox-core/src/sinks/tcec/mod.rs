//! T/CEC 102 part 4: the interconnection protocol of Chinese charging supervision platforms
//! (`charge_order` → `notification_charge_order_info`, `connector_status` →
//! `notification_stationStatus`).
//!
//! Protocol rules, from the standard and its public implementations:
//! - every request and reply is an envelope: AES-128-CBC + Base64 `Data`, HMAC-MD5 `Sig`,
//!   `TimeStamp` and `Seq` per attempt; a reply's `Sig` is checked before its `Data` is read
//!   (a bad one is a sink failure, retried, never success);
//! - a bearer token from `query_token`, shared by the sink's requests, refreshed once on
//!   `Ret 4002`; refused credentials (`FailReason` 1/2) hold the sink until it is reloaded,
//!   they never dead-letter rows;
//! - the platform deduplicates orders by `StartChargeSeq`, so an ambiguous failure is retried;
//!   `ConfirmResult 1` (disputed) is final, delivered with a hint for operators.
//!
//! The pieces are pure and separate from I/O; [`Tcec`] wires them to the one send path:
//! - [`envelope`]: AES-128-CBC + Base64 `Data`, HMAC-MD5 `Sig`, `TimeStamp` and `Seq`;
//! - [`token`]: `query_token`, the cached bearer token shared by a sink's requests, and
//!   [`token::deliver`], one push with a single refresh-and-retry on `Ret 4002`;
//! - [`payload`]: validation of the producer's payload (the platform's own `Data` object);
//! - [`reply`]: classification of `Ret` and `ConfirmResult` into a verdict and its scope;
//! - [`config`]: the sink's own config section.

pub mod config;
pub mod envelope;
pub mod payload;
pub mod reply;
pub mod token;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Mutex;

use crate::clock;
use crate::event::{ClaimedRow, EventType};
use crate::health::SinkCause;
use crate::outcome::{AttemptInfo, Blame, StepOutcome, Verdict};
use crate::secret::Secret;
use crate::sinks::send::{redirect_verdict, Sender};
use crate::sinks::{Ambiguity, Platform, SinkSettings};
use config::{interface_url, TcecConfig};
use envelope::CHINA_UTC_OFFSET_SECS;
use payload::MoneySpelling;
use token::{PostResult, Session, Transport};

const JSON: &str = "application/json;charset=UTF-8";

/// A `tcec` sink: one supervision platform.
pub struct Tcec {
    /// `{url}/{interface}` of the three interfaces.
    token_url: String,
    order_url: String,
    status_url: String,
    spelling: MoneySpelling,
    /// Boxed: the protocol state is most of the sink, and the registry's enum of built
    /// platforms is as large as its largest member.
    session: Box<Session>,
    http: Sender,
    /// Why the platform refused the credentials (`FailReason` 1/2): the sink is held until it
    /// is rebuilt from a reloaded config (SIGHUP), which starts with this empty.
    refused: Mutex<Option<String>>,
}

impl Platform for Tcec {
    const TYPE: &'static str = "tcec";
    /// T/CEC platforms deduplicate on the order and status keys: a re-send is harmless.
    const DEFAULT_CONCURRENCY: usize = 512;
    const EVENT_TYPES: &'static [EventType] = &[EventType::ChargeOrder, EventType::ConnectorStatus];
    type Config = TcecConfig;

    fn check_config(
        name: &str,
        settings: &SinkSettings,
        config: &TcecConfig,
        _secret: Option<&Secret>,
    ) -> Vec<String> {
        config.check(name, &settings.url)
    }

    fn build(settings: &SinkSettings, config: &TcecConfig, http: Sender) -> Result<Self, String> {
        let secrets = config
            .load_secrets(http.secret().clone())
            .map_err(|problems| problems.join("; "))?;
        let url = |i| interface_url(&settings.url, i).map(String::from);
        let keys = secrets.keys;
        let http = http.scrubbing([
            keys.data_secret.clone(),
            keys.data_secret_iv.clone(),
            keys.sig_secret.clone(),
        ]);
        Ok(Tcec {
            token_url: url(Interface::QueryToken)?,
            order_url: url(Interface::ChargeOrder)?,
            status_url: url(Interface::StationStatus)?,
            spelling: config.money_spelling,
            session: Box::new(Session::new(
                config.operator_id.clone(),
                secrets.operator_secret,
                keys,
                CHINA_UTC_OFFSET_SECS,
                config.token_refresh_margin,
            )),
            http,
            refused: Mutex::new(None),
        })
    }

    /// The platform deduplicates by `StartChargeSeq`, and only a connector's newest status
    /// matters: sending again is safe.
    fn ambiguity(&self) -> Ambiguity {
        Ambiguity::Retry
    }

    fn hold(&self, _now_ms: i64) -> Option<String> {
        self.refused.lock().expect("not poisoned").clone()
    }

    async fn deliver(&self, row: &ClaimedRow) -> StepOutcome {
        let (interface, validated) = match row.event_type.parse() {
            Ok(EventType::ChargeOrder) => (
                Interface::ChargeOrder,
                payload::charge_order(&row.payload, self.spelling).and_then(|v| {
                    if v.key == row.idempotency_key {
                        Ok(v)
                    } else {
                        Err(format!(
                            "idempotency_key {:?} must equal StartChargeSeq {:?} (the platform deduplicates by it)",
                            row.idempotency_key, v.key
                        ))
                    }
                }),
            ),
            Ok(EventType::ConnectorStatus) => (
                Interface::StationStatus,
                payload::connector_status(&row.payload),
            ),
            _ => (
                Interface::ChargeOrder,
                Err(format!("event type {:?} is not a T/CEC event", row.event_type)),
            ),
        };
        let validated = match validated {
            Ok(v) => v,
            Err(reason) => return permanent(reason),
        };
        let expected_seq = (interface == Interface::ChargeOrder).then_some(validated.key.as_str());
        let transport = SendTransport {
            sink: self,
            last: Mutex::new(None),
        };
        let delivery = self
            .session
            .deliver(&transport, interface, &validated.data_json, expected_seq)
            .await;
        let last = transport.last.into_inner().expect("not poisoned");
        let (mut info, redirect) = last.unwrap_or_else(|| {
            let info = AttemptInfo {
                started_at: clock::now_ms(),
                ..Default::default()
            };
            (info, None)
        });
        let classified = delivery.classified;
        // Whose fault: refused credentials, a wrong signature (4001), a reply signed with
        // another key and a token refused again are the sink's secrets; a redirect its URL;
        // an HTTP status says what it says for every platform; the rest is the row's.
        let blame = if delivery.hold.is_some() {
            Blame::Sink(SinkCause::Auth)
        } else if redirect.is_some() {
            Blame::Sink(SinkCause::Config)
        } else if let Some(b) = info.http_status.and_then(Blame::of_status) {
            b
        } else if classified.scope == reply::Scope::Sink {
            Blame::Sink(SinkCause::Auth)
        } else {
            Blame::Row
        };
        let verdict = if let Some(reason) = delivery.hold {
            // Credentials: hold the sink, and give the row back to be tried after the fix.
            let reason = format!(
                "{reason}: fix operator_id or the OperatorSecret and reload (SIGHUP); rows are kept"
            );
            *self.refused.lock().expect("not poisoned") = Some(reason.clone());
            Verdict::Retry {
                reason,
                retry_after: None,
            }
        } else if let Some(redirect) = redirect {
            redirect
        } else {
            classified.verdict
        };
        info.reply_code = classified.reply_code;
        if let Verdict::Delivered { hint, .. } = &verdict {
            info.hint = hint.clone();
        }
        StepOutcome {
            verdict,
            info,
            blame,
        }
    }
}

fn permanent(reason: String) -> StepOutcome {
    StepOutcome::local(
        Verdict::Permanent { reason },
        AttemptInfo {
            started_at: clock::now_ms(),
            ..Default::default()
        },
    )
}

/// The [`Transport`] of one delivery over the sink's [`Sender`]: no redirects, the sink's
/// timeout, the reply capped and scrubbed of the four secrets and the token. Keeps the
/// attempt info of its last post (the push, or the `query_token` that failed before it).
struct SendTransport<'a> {
    sink: &'a Tcec,
    last: Mutex<Option<(AttemptInfo, Option<Verdict>)>>,
}

impl Transport for SendTransport<'_> {
    fn post(
        &self,
        interface: Interface,
        bearer: Option<&Secret>,
        body: String,
    ) -> impl Future<Output = PostResult> + Send {
        let url = match interface {
            Interface::QueryToken => &self.sink.token_url,
            Interface::ChargeOrder => &self.sink.order_url,
            Interface::StationStatus => &self.sink.status_url,
        };
        async move {
            let sent = self
                .sink
                .http
                .post_with_bearer(url, JSON, body, bearer)
                .await;
            let info = sent.attempt_info();
            let (result, redirect) = match &sent.result {
                Ok(reply) => (
                    PostResult::Reply {
                        status: reply.status,
                        body: reply.body.clone(),
                    },
                    (300..400)
                        .contains(&reply.status)
                        .then(|| redirect_verdict(reply)),
                ),
                Err(e) => (PostResult::Failed(e.to_string()), None),
            };
            *self.last.lock().expect("not poisoned") = Some((info, redirect));
            result
        }
    }
}

/// The platform interfaces this sink calls: `POST {url}/{Interface::name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interface {
    /// `query_token`: trade OperatorID + OperatorSecret for a bearer token.
    QueryToken,
    /// `notification_charge_order_info`: a finished charge with its money (event `charge_order`).
    ChargeOrder,
    /// `notification_stationStatus`: one connector's status (event `connector_status`).
    StationStatus,
}

impl Interface {
    pub fn name(self) -> &'static str {
        match self {
            Interface::QueryToken => "query_token",
            Interface::ChargeOrder => "notification_charge_order_info",
            Interface::StationStatus => "notification_stationStatus",
        }
    }
}
