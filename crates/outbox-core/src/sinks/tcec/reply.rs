//! Reading a T/CEC reply into a verdict, purely.
//!
//! Every outcome also says who is at fault ([`Scope`]): a row-scoped verdict is about this
//! event; a sink-scoped one (wrong secrets, a forged or unreadable reply signature, a token
//! the platform refuses) says the sink cannot deliver anything right now, so the integrator
//! holds the sink instead of spending the row's attempts. Ambiguous failures (timeouts,
//! `Ret -1`/`500`, HTTP 5xx) are plain retries: the platform deduplicates by `StartChargeSeq`.

use serde_json::Value;

use super::envelope::{open_reply, EnvelopeError, Keys, OpenedReply};
use super::Interface;
use crate::outcome::{truncate, Verdict};

/// Longest platform `Msg` quoted in a reason.
const MAX_MSG: usize = 200;

/// Who a verdict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This event: count the attempt against the row.
    Row,
    /// The sink's configuration or credentials: hold the sink, keep the row as it is.
    Sink,
}

/// A classified reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub verdict: Verdict,
    pub scope: Scope,
    /// `ConfirmResult` other than 0: final, but to be counted and shown to operators.
    pub disputed: bool,
    /// `Ret 4002`: the token is no longer valid; refresh it and retry once.
    pub token_invalid: bool,
    /// The platform code for the attempt history: `Ret` (and `ConfirmResult`), or `None`.
    pub reply_code: Option<String>,
}

impl Classified {
    fn row(verdict: Verdict) -> Self {
        Classified {
            verdict,
            scope: Scope::Row,
            disputed: false,
            token_invalid: false,
            reply_code: None,
        }
    }

    fn sink(reason: String) -> Self {
        Classified {
            scope: Scope::Sink,
            ..Classified::row(retry(reason))
        }
    }

    fn code(mut self, code: String) -> Self {
        self.reply_code = Some(code);
        self
    }
}

fn retry(reason: String) -> Verdict {
    Verdict::Retry {
        reason,
        retry_after: None,
    }
}

/// No reply: a timeout or a broken connection. The call may have taken effect, which the
/// platform's idempotency by order number covers, so it is retried.
pub fn classify_transport(error: &str) -> Classified {
    Classified::row(retry(format!(
        "no reply (retried, the platform deduplicates): {error}"
    )))
}

/// Classifies an HTTP reply to a push (`ChargeOrder` or `StationStatus`). `expected_seq` is
/// the `StartChargeSeq` sent, checked against the one the platform confirms.
pub fn classify_http(
    interface: Interface,
    status: u16,
    body: &str,
    keys: &Keys,
    expected_seq: Option<&str>,
) -> Classified {
    match status {
        200..=299 => {}
        408 | 429 | 500..=599 => {
            return Classified::row(retry(format!("HTTP {status}"))).code(status.to_string())
        }
        _ => {
            return Classified::sink(format!(
                "HTTP {status} from the platform (check the sink url and interface version)"
            ))
            .code(status.to_string())
        }
    }
    match open_reply(keys, body) {
        Ok(opened) => classify_opened(interface, &opened, expected_seq),
        // A gateway's error page in front of the platform: transient.
        Err(EnvelopeError::Shape(_)) => {
            Classified::row(retry("reply is not a T/CEC envelope".into()))
        }
        Err(e) => Classified::sink(format!("unreadable reply: {e}")),
    }
}

/// Classifies a reply whose signature checked out.
pub fn classify_opened(
    interface: Interface,
    reply: &OpenedReply,
    expected_seq: Option<&str>,
) -> Classified {
    let msg = truncate(&reply.msg, MAX_MSG);
    let ret = reply.ret;
    let classified = match ret {
        0 => return classify_data(interface, reply.data.as_deref(), expected_seq),
        -1 => Classified::row(retry(format!("Ret -1 system busy: {msg}"))),
        500 => Classified::row(retry(format!("Ret 500 system error: {msg}"))),
        4001 => Classified::sink(format!(
            "Ret 4001 signature wrong: check SigSecret, DataSecret and DataSecretIV ({msg})"
        )),
        4002 => Classified {
            token_invalid: true,
            ..Classified::sink(format!("Ret 4002 token wrong or expired: {msg}"))
        },
        4003 => Classified::row(Verdict::Permanent {
            reason: format!("Ret 4003 POST parameters wrong: {msg}"),
        }),
        4004 => Classified::row(Verdict::Permanent {
            reason: format!("Ret 4004 business parameters wrong: {msg}"),
        }),
        other => Classified::row(retry(format!(
            "Ret {other} not in the T/CEC code table: {msg}"
        ))),
    };
    classified.code(ret.to_string())
}

/// `Ret 0`: what the decrypted `Data` says.
fn classify_data(
    interface: Interface,
    data: Option<&str>,
    expected_seq: Option<&str>,
) -> Classified {
    let parsed: Option<Value> = data.and_then(|d| serde_json::from_str(d).ok());
    let Some(data) = parsed.filter(Value::is_object) else {
        return Classified::row(retry("Ret 0 without a readable Data object".into()))
            .code("0".into());
    };
    let result = Some(truncate(&data.to_string(), 500));
    match interface {
        Interface::ChargeOrder => {
            if let (Some(sent), Some(confirmed)) = (
                expected_seq,
                data.get("StartChargeSeq").and_then(Value::as_str),
            ) {
                if sent != confirmed {
                    return Classified::row(retry(format!(
                        "Ret 0 confirms another order ({confirmed}, sent {sent})"
                    )))
                    .code("0".into());
                }
            }
            match data.get("ConfirmResult").and_then(Value::as_i64) {
                Some(0) => {
                    Classified::row(Verdict::Delivered { hint: None, result }).code("0/0".into())
                }
                Some(code @ 1..=99) => {
                    let hint = if code == 1 {
                        "disputed: the platform does not agree with this order (ConfirmResult 1)"
                            .to_string()
                    } else {
                        format!("not confirmed: ConfirmResult {code} (platform-defined)")
                    };
                    Classified {
                        disputed: true,
                        ..Classified::row(Verdict::Delivered {
                            hint: Some(hint),
                            result,
                        })
                    }
                    .code(format!("0/{code}"))
                }
                _ => Classified::row(retry("Ret 0 without a ConfirmResult 0..99".into()))
                    .code("0".into()),
            }
        }
        Interface::StationStatus => match data.get("Status").and_then(Value::as_i64) {
            Some(0) => {
                Classified::row(Verdict::Delivered { hint: None, result }).code("0/0".into())
            }
            Some(1) => Classified::row(Verdict::Completed {
                note: "the platform ignored this status (Status 1)".into(),
                result,
            })
            .code("0/1".into()),
            _ => Classified::row(retry("Ret 0 without a Status 0 or 1".into())).code("0".into()),
        },
        Interface::QueryToken => {
            // Token replies are read by `token::parse_token_reply`; reaching here is a bug.
            Classified::sink("query_token reply classified as a push".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::tcec::envelope::seal_reply;
    use crate::sinks::tcec::tests::vector_keys;

    fn opened(ret: i64, msg: &str, data: Option<&str>) -> OpenedReply {
        OpenedReply {
            ret,
            msg: msg.into(),
            data: data.map(str::to_owned),
        }
    }

    fn order(ret: i64, data: Option<&str>) -> Classified {
        classify_opened(
            Interface::ChargeOrder,
            &opened(ret, "msg", data),
            Some("O1"),
        )
    }

    #[test]
    fn confirm_result_zero_is_delivered() {
        let c = order(
            0,
            Some(r#"{"StartChargeSeq":"O1","ConnectorID":"C1","ConfirmResult":0}"#),
        );
        assert!(matches!(c.verdict, Verdict::Delivered { hint: None, .. }));
        assert_eq!(
            (c.scope, c.disputed, c.token_invalid),
            (Scope::Row, false, false)
        );
        assert_eq!(c.reply_code.as_deref(), Some("0/0"));
    }

    #[test]
    fn disputed_is_final_and_surfaced() {
        let c = order(0, Some(r#"{"StartChargeSeq":"O1","ConfirmResult":1}"#));
        assert!(c.disputed);
        assert!(
            matches!(&c.verdict, Verdict::Delivered { hint: Some(h), .. } if h.contains("disputed"))
        );
        let c = order(0, Some(r#"{"ConfirmResult":7}"#));
        assert!(c.disputed);
        assert!(
            matches!(&c.verdict, Verdict::Delivered { hint: Some(h), .. } if h.contains("ConfirmResult 7"))
        );
    }

    #[test]
    fn ret_zero_without_a_usable_result_is_retried() {
        for data in [
            None,
            Some("[]"),
            Some(r#"{"ConfirmResult":"x"}"#),
            Some(r#"{"ConfirmResult":100}"#),
        ] {
            let c = order(0, data);
            assert!(matches!(c.verdict, Verdict::Retry { .. }), "{data:?}");
            assert_eq!(c.scope, Scope::Row);
        }
        let other = order(0, Some(r#"{"StartChargeSeq":"O2","ConfirmResult":0}"#));
        assert!(
            matches!(&other.verdict, Verdict::Retry { reason, .. } if reason.contains("another order"))
        );
    }

    #[test]
    fn every_ret_code_is_classified() {
        let busy = order(-1, None);
        assert!(matches!(busy.verdict, Verdict::Retry { .. }) && busy.scope == Scope::Row);
        let error = order(500, None);
        assert!(matches!(error.verdict, Verdict::Retry { .. }) && error.scope == Scope::Row);
        let sig = order(4001, None);
        assert!(matches!(sig.verdict, Verdict::Retry { .. }) && sig.scope == Scope::Sink);
        assert!(!sig.token_invalid);
        let token = order(4002, None);
        assert!(token.token_invalid && token.scope == Scope::Sink);
        for code in [4003, 4004] {
            let c = classify_opened(
                Interface::ChargeOrder,
                &opened(code, "StartTime格式错误", None),
                None,
            );
            assert!(
                matches!(&c.verdict, Verdict::Permanent { reason } if reason.contains("StartTime格式错误") && reason.contains(&code.to_string()))
            );
            assert_eq!(c.scope, Scope::Row);
            assert_eq!(c.reply_code, Some(code.to_string()));
        }
        let unknown = order(4010, None);
        assert!(matches!(unknown.verdict, Verdict::Retry { .. }) && unknown.scope == Scope::Row);
    }

    #[test]
    fn station_status_replies() {
        let ok = classify_opened(
            Interface::StationStatus,
            &opened(0, "", Some(r#"{"Status":0}"#)),
            None,
        );
        assert!(matches!(ok.verdict, Verdict::Delivered { .. }));
        let ignored = classify_opened(
            Interface::StationStatus,
            &opened(0, "", Some(r#"{"Status":1}"#)),
            None,
        );
        assert!(matches!(ignored.verdict, Verdict::Completed { .. }));
    }

    #[test]
    fn http_level_outcomes() {
        let keys = vector_keys();
        for status in [500, 502, 503, 429, 408] {
            let c = classify_http(Interface::ChargeOrder, status, "", &keys, None);
            assert!(
                matches!(c.verdict, Verdict::Retry { .. }) && c.scope == Scope::Row,
                "{status}"
            );
        }
        let not_found = classify_http(Interface::ChargeOrder, 404, "", &keys, None);
        assert_eq!(not_found.scope, Scope::Sink);
        let garbage = classify_http(Interface::ChargeOrder, 200, "<html>502</html>", &keys, None);
        assert!(matches!(garbage.verdict, Verdict::Retry { .. }) && garbage.scope == Scope::Row);
        let timeout = classify_transport("operation timed out");
        assert!(matches!(timeout.verdict, Verdict::Retry { .. }) && timeout.scope == Scope::Row);

        let good =
            seal_reply(&keys, 0, "", r#"{"StartChargeSeq":"O1","ConfirmResult":0}"#).unwrap();
        let body = serde_json::to_string(&good).unwrap();
        let c = classify_http(Interface::ChargeOrder, 200, &body, &keys, Some("O1"));
        assert!(matches!(c.verdict, Verdict::Delivered { .. }));
    }

    #[test]
    fn bad_reply_signature_is_a_sink_failure_not_success() {
        let keys = vector_keys();
        let mut forged =
            seal_reply(&keys, 0, "", r#"{"StartChargeSeq":"O1","ConfirmResult":0}"#).unwrap();
        forged.sig = "00000000000000000000000000000000".into();
        let body = serde_json::to_string(&forged).unwrap();
        let c = classify_http(Interface::ChargeOrder, 200, &body, &keys, Some("O1"));
        assert_eq!(c.scope, Scope::Sink);
        assert!(
            matches!(&c.verdict, Verdict::Retry { reason, .. } if reason.contains("signature"))
        );
    }
}
