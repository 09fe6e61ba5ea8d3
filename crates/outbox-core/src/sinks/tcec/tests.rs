//! Protocol tests with the platform's own published example.

use super::envelope::*;
use crate::secret::Secret;

/// The published vector: every secret `1234567890abcdef`, operator `123456789`.
pub(super) fn vector_keys() -> Keys {
    Keys {
        data_secret: Secret::new("1234567890abcdef"),
        data_secret_iv: Secret::new("1234567890abcdef"),
        sig_secret: Secret::new("1234567890abcdef"),
    }
}

const VECTOR_PLAIN: &str = r#"{"total":1,"stationStatusInfo":{"operationID":"123456789","stationID":"111111111111111","connectorStatusInfos":{"connectorID":1,"equipmentID":"10000000000000000000001","status":4,"currentA":0,"currentB":0,"currentC":0,"voltageA":0,"voltageB":0,"voltageC":0,"soc":10,}}}"#;
const VECTOR_DATA: &str = "il7B0BSEjFdzpyKzfOFpvg/Se1CP802RItKYFPfSLRxJ3jf0bVl9hvYOEktPAYW2nd7S8MBcyHYyacHKbISq5iTmDzG+ivnR+SZJv3USNTYVMz9rCQVSxd0cLlqsJauko79NnwQJbzDTyLooYoIwz75qBOH2/xOMirpeEqRJrF/EQjWekJmGk9RtboXePu2rka+Xm51syBPhiXJAq0GfbfaFu9tNqs/e2Vjja/ltE1M0lqvxfXQ6da6HrThsm5id4ClZFIi0acRfrsPLRixS/IQYtksxghvJwbqOsbIsITail9Ayy4tKcogeEZiOO+4Ed264NSKmk7l3wKwJLAFjCFogBx8GE3OBz4pqcAn/ydA=";
const VECTOR_SIG: &str = "745166E8C43C84D37FFEC0F529C4136F";

#[test]
fn vector_encrypts_and_signs_as_published() {
    let keys = vector_keys();
    let stamp = Stamp {
        timestamp: "20160729142400".into(),
        seq: "0001".into(),
    };
    let envelope = seal_request(&keys, "123456789", VECTOR_PLAIN, &stamp).unwrap();
    assert_eq!(envelope.data, VECTOR_DATA);
    assert_eq!(envelope.sig, VECTOR_SIG);
    let body = serde_json::to_value(&envelope).unwrap();
    assert_eq!(body["OperatorID"], "123456789");
    assert_eq!(body["TimeStamp"], "20160729142400");
    assert_eq!(body["Seq"], "0001");
}

#[test]
fn vector_decrypts_and_verifies_as_published() {
    let keys = vector_keys();
    let envelope = RequestEnvelope {
        operator_id: "123456789".into(),
        data: VECTOR_DATA.into(),
        timestamp: "20160729142400".into(),
        seq: "0001".into(),
        sig: VECTOR_SIG.into(),
    };
    assert_eq!(open_request(&keys, &envelope).unwrap(), VECTOR_PLAIN);
    // Lowercase hex is the same signature.
    let lower = RequestEnvelope {
        sig: VECTOR_SIG.to_lowercase(),
        ..envelope.clone()
    };
    assert!(open_request(&keys, &lower).is_ok());
    let tampered = RequestEnvelope {
        seq: "0002".into(),
        ..envelope
    };
    assert_eq!(
        open_request(&keys, &tampered),
        Err(EnvelopeError::BadSignature)
    );
}

#[test]
fn reply_signature_is_checked_before_decrypting() {
    let keys = vector_keys();
    let sealed = seal_reply(&keys, 0, "", r#"{"ConfirmResult":0}"#).unwrap();
    let body = serde_json::to_string(&sealed).unwrap();
    let opened = open_reply(&keys, &body).unwrap();
    assert_eq!(opened.ret, 0);
    assert_eq!(opened.data.as_deref(), Some(r#"{"ConfirmResult":0}"#));

    // A bad Sig over undecryptable Data reports the signature, so Data was never touched.
    let mut forged = sealed.clone();
    forged.data = "!!not base64!!".into();
    let body = serde_json::to_string(&forged).unwrap();
    assert_eq!(open_reply(&keys, &body), Err(EnvelopeError::BadSignature));

    // Signed by someone with another SigSecret.
    let other = Keys {
        sig_secret: Secret::new("fedcba0987654321"),
        ..vector_keys()
    };
    let body = serde_json::to_string(&seal_reply(&other, 0, "", "{}").unwrap()).unwrap();
    assert_eq!(open_reply(&keys, &body), Err(EnvelopeError::BadSignature));

    // An error reply without Data, signed over Ret + Msg.
    let body = serde_json::to_string(&seal_reply(&keys, 4002, "token无效", "").unwrap()).unwrap();
    let opened = open_reply(&keys, &body).unwrap();
    assert_eq!((opened.ret, opened.data), (4002, None));
    assert!(matches!(
        open_reply(&keys, "<html>"),
        Err(EnvelopeError::Shape(_))
    ));
}

#[test]
fn wrong_data_secret_fails_to_decrypt_without_echoing_it() {
    let keys = vector_keys();
    let other = Keys {
        data_secret: Secret::new("0000000000000000"),
        ..vector_keys()
    };
    let err = decrypt_data(&other, VECTOR_DATA).unwrap_err();
    assert!(matches!(
        err,
        EnvelopeError::Decrypt | EnvelopeError::NotText
    ));
    assert!(!err.to_string().contains("0000000000000000"));
    let short = Keys {
        data_secret: Secret::new("short"),
        ..vector_keys()
    };
    assert_eq!(encrypt_data(&short, "{}"), Err(EnvelopeError::KeyLength));
    assert!(!format!("{keys:?}").contains("1234567890abcdef"));
}

#[test]
fn seq_counts_within_a_second_and_restarts() {
    let counter = SeqCounter::new(CHINA_UTC_OFFSET_SECS);
    // 2016-07-29 06:24:00 UTC = 14:24:00 in China.
    let t = 1_469_773_440_000;
    let first = counter.next(t);
    assert_eq!(first.timestamp, "20160729142400");
    assert_eq!(first.seq, "0001");
    assert_eq!(counter.next(t + 999).seq, "0002");
    let next_second = counter.next(t + 1000);
    assert_eq!(
        (next_second.timestamp.as_str(), next_second.seq.as_str()),
        ("20160729142401", "0001")
    );
    assert_eq!(compact_timestamp(951_782_400), "20000229000000");
}

/// The session against the simulator's independent T/CEC implementation, over real HTTP.
mod against_simulator {
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    use platform_sim::tcec as sim_tcec;
    use platform_sim::{Platform, SimHandle, SimScript};
    use serde_json::json;

    use super::super::envelope::Keys;
    use super::super::payload::{charge_order, MoneySpelling};
    use super::super::reply::Scope;
    use super::super::token::{PostResult, Session, Transport, DEFAULT_REFRESH_MARGIN};
    use super::super::Interface;
    use crate::outcome::Verdict;
    use crate::secret::Secret;

    struct Http {
        base: String,
        client: reqwest::Client,
    }

    impl Transport for Http {
        fn post(
            &self,
            interface: Interface,
            bearer: Option<&Secret>,
            body: String,
        ) -> impl Future<Output = PostResult> + Send {
            let mut request = self
                .client
                .post(format!("{}/{}", self.base, interface.name()))
                .header("Content-Type", "application/json;charset=UTF-8")
                .timeout(Duration::from_secs(5))
                .body(body);
            if let Some(token) = bearer {
                request = request.bearer_auth(token.expose());
            }
            async move {
                match request.send().await {
                    Ok(reply) => PostResult::Reply {
                        status: reply.status().as_u16(),
                        body: reply.text().await.unwrap_or_default(),
                    },
                    Err(e) => PostResult::Failed(e.to_string()),
                }
            }
        }
    }

    async fn setup(operator_secret: &str) -> (SimHandle, Http, Session) {
        let sim = platform_sim::start("127.0.0.1:0".parse().unwrap(), Default::default())
            .await
            .unwrap();
        let http = Http {
            base: sim.tcec_url(),
            client: reqwest::Client::new(),
        };
        let session = Session::new(
            sim_tcec::DEMO_OPERATOR_ID.into(),
            Secret::new(operator_secret),
            Keys {
                data_secret: Secret::new(sim_tcec::DEMO_DATA_SECRET),
                data_secret_iv: Secret::new(sim_tcec::DEMO_DATA_SECRET_IV),
                sig_secret: Secret::new(sim_tcec::DEMO_SIG_SECRET),
            },
            8 * 3600,
            DEFAULT_REFRESH_MARGIN,
        );
        (sim, http, session)
    }

    fn order(seq: &str) -> String {
        let payload = json!({
            "StartChargeSeq": seq, "ConnectorID": "C1",
            "StartTime": "2024-05-01 10:00:00", "EndTime": "2024-05-01 11:00:00",
            "TotalPower": 12.5, "TotalElecMoney": 10.1, "TotalSeviceMoney": 5.2,
            "TotalMoney": 15.3, "StopReason": 0, "SumPeriod": 0, "ChargeDetails": []
        });
        charge_order(&payload.to_string(), MoneySpelling::Sevice)
            .unwrap()
            .data_json
    }

    fn token_requests(sim: &SimHandle) -> usize {
        sim.requests()
            .iter()
            .filter(|r| r.path.ends_with("/query_token"))
            .count()
    }

    fn script(value: serde_json::Value) -> SimScript {
        serde_json::from_value(json!({ "tcec": value })).unwrap()
    }

    #[tokio::test]
    async fn orders_are_confirmed_with_one_shared_token() {
        let (sim, http, session) = setup(sim_tcec::DEMO_OPERATOR_SECRET).await;
        let session = Arc::new(session);
        let http = Arc::new(http);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (session, http) = (session.clone(), http.clone());
                tokio::spawn(async move {
                    let seq = format!("O-{i}");
                    session
                        .deliver(&*http, Interface::ChargeOrder, &order(&seq), Some(&seq))
                        .await
                })
            })
            .collect();
        for task in tasks {
            let delivery = task.await.unwrap();
            assert!(
                matches!(
                    delivery.classified.verdict,
                    Verdict::Delivered { hint: None, .. }
                ),
                "{delivery:?}"
            );
        }
        assert_eq!(token_requests(&sim), 1);
        for i in 0..8 {
            assert_eq!(sim.applied_count(Platform::Tcec, &format!("O-{i}")), 1);
        }
        assert_eq!(sim.stats().tcec.duplicates, 0);
    }

    #[tokio::test]
    async fn an_expired_token_is_refreshed_once_and_the_order_lands_once() {
        let (sim, http, session) = setup(sim_tcec::DEMO_OPERATOR_SECRET).await;
        let first = session
            .deliver(&http, Interface::ChargeOrder, &order("A"), Some("A"))
            .await;
        assert!(matches!(
            first.classified.verdict,
            Verdict::Delivered { .. }
        ));
        sim.apply_script(script(json!({"pushes": {"B": [{"expire_token": true}]}})));
        let second = session
            .deliver(&http, Interface::ChargeOrder, &order("B"), Some("B"))
            .await;
        assert!(matches!(
            second.classified.verdict,
            Verdict::Delivered { .. }
        ));
        assert_eq!(second.posts, 2);
        assert_eq!(token_requests(&sim), 2);
        assert_eq!(sim.applied_count(Platform::Tcec, "B"), 1);
    }

    #[tokio::test]
    async fn a_forged_reply_and_a_dispute_are_not_plain_success() {
        let (sim, http, session) = setup(sim_tcec::DEMO_OPERATOR_SECRET).await;
        sim.apply_script(script(json!({"pushes": {
            "F": [{"bad_sig": true}], "D": [{"confirm_result": 1}], "R": [{"ret": 4004, "msg": "枪编号不存在"}]
        }})));
        let forged = session
            .deliver(&http, Interface::ChargeOrder, &order("F"), Some("F"))
            .await;
        assert_eq!(forged.classified.scope, Scope::Sink);
        assert!(matches!(forged.classified.verdict, Verdict::Retry { .. }));
        let disputed = session
            .deliver(&http, Interface::ChargeOrder, &order("D"), Some("D"))
            .await;
        assert!(disputed.classified.disputed);
        let rejected = session
            .deliver(&http, Interface::ChargeOrder, &order("R"), Some("R"))
            .await;
        assert!(
            matches!(&rejected.classified.verdict, Verdict::Permanent { reason } if reason.contains("枪编号不存在"))
        );
        let status = json!({"ConnectorStatusInfo": {"ConnectorID": "C1", "Status": 3}}).to_string();
        let status = session
            .deliver(&http, Interface::StationStatus, &status, None)
            .await;
        assert!(matches!(
            status.classified.verdict,
            Verdict::Delivered { .. }
        ));
    }

    #[tokio::test]
    async fn a_wrong_operator_secret_holds_the_sink() {
        let (sim, http, session) = setup("not-the-secret").await;
        let outcome = session
            .deliver(&http, Interface::ChargeOrder, &order("W"), Some("W"))
            .await;
        assert!(outcome.hold.unwrap().contains("FailReason 2"));
        assert_eq!(outcome.posts, 0);
        assert_eq!(sim.request_count(Platform::Tcec, "W"), 0);
    }
}

/// The wired sink ([`super::Tcec`] through the registry's [`crate::sinks::Sink`]) against
/// the simulator: the verdicts the worker sees, the hold, and what reaches the attempt info.
mod wired {
    use platform_sim::tcec as sim_tcec;
    use platform_sim::{Platform, SimHandle, SimScript};
    use serde_json::json;

    use crate::event::ClaimedRow;
    use crate::outcome::{StepOutcome, Verdict};
    use crate::sinks::{Sink, SinkConfig};

    /// A `tcec` section at `url`, its OperatorSecret `operator_secret`; all four secrets
    /// from files in `dir`, the other three the simulator's.
    fn section(url: &str, dir: &tempfile::TempDir, operator_secret: &str) -> String {
        let file = |name: &str, value: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, value).unwrap();
            path.display().to_string()
        };
        format!(
            "type = \"tcec\"\nurl = {url:?}\noperator_id = {:?}\nsecret_file = {:?}\n\
             data_secret_file = {:?}\ndata_secret_iv_file = {:?}\nsig_secret_file = {:?}\n\
             timeout = \"2s\"",
            sim_tcec::DEMO_OPERATOR_ID,
            file("operator", operator_secret),
            file("data", sim_tcec::DEMO_DATA_SECRET),
            file("iv", sim_tcec::DEMO_DATA_SECRET_IV),
            file("sig", sim_tcec::DEMO_SIG_SECRET),
        )
    }

    fn build(section: &str) -> Sink {
        let cfg: SinkConfig = toml::from_str(section).unwrap();
        assert_eq!(cfg.check("city"), Vec::<String>::new());
        Sink::build("city", &cfg).unwrap()
    }

    /// A `tcec` sink at the simulator.
    fn sink(sim: &SimHandle, dir: &tempfile::TempDir, operator_secret: &str) -> Sink {
        build(&section(&sim.tcec_url(), dir, operator_secret))
    }

    fn row(event_type: &str, key: &str, payload: serde_json::Value) -> ClaimedRow {
        ClaimedRow {
            id: 1,
            sink: "city".into(),
            event_type: event_type.into(),
            idempotency_key: key.into(),
            payload: payload.to_string(),
            ordering_key: None,
            created_at: 0,
            attempts: 1,
            flow_state: None,
            in_doubt: false,
            defect: None,
        }
    }

    fn order(seq: &str) -> ClaimedRow {
        row(
            "charge_order",
            seq,
            json!({
                "StartChargeSeq": seq, "ConnectorID": "C1",
                "StartTime": "2024-05-01 10:00:00", "EndTime": "2024-05-01 11:00:00",
                "TotalPower": 12.5, "TotalElecMoney": 10.1, "TotalSeviceMoney": 5.2,
                "TotalMoney": 15.3, "StopReason": 0, "SumPeriod": 0, "ChargeDetails": []
            }),
        )
    }

    async fn sim() -> SimHandle {
        platform_sim::start("127.0.0.1:0".parse().unwrap(), Default::default())
            .await
            .unwrap()
    }

    fn script(sim: &SimHandle, value: serde_json::Value) {
        let script: SimScript = serde_json::from_value(json!({ "tcec": value })).unwrap();
        sim.apply_script(script);
    }

    /// Neither a secret nor the token in anything the store would keep.
    fn assert_no_secret(outcome: &StepOutcome, sim: &SimHandle) {
        let text = format!("{outcome:?}");
        for secret in [
            sim_tcec::DEMO_OPERATOR_SECRET,
            sim_tcec::DEMO_DATA_SECRET,
            sim_tcec::DEMO_DATA_SECRET_IV,
            sim_tcec::DEMO_SIG_SECRET,
            "tok-",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(sim.requests().iter().all(|r| r.platform == Platform::Tcec));
    }

    #[tokio::test]
    async fn orders_and_statuses_are_delivered_with_their_reply_codes() {
        let (sim, dir) = (sim().await, tempfile::tempdir().unwrap());
        let sink = sink(&sim, &dir, sim_tcec::DEMO_OPERATOR_SECRET);
        let outcome = sink.deliver(&order("O-1")).await;
        assert!(
            matches!(outcome.verdict, Verdict::Delivered { hint: None, .. }),
            "{outcome:?}"
        );
        assert_eq!(outcome.info.reply_code.as_deref(), Some("0/0"));
        assert_eq!(outcome.info.http_status, Some(200));
        assert_no_secret(&outcome, &sim);
        let status = row(
            "connector_status",
            "S-1",
            json!({"ConnectorStatusInfo": {"ConnectorID": "C1", "Status": 3}}),
        );
        let outcome = sink.deliver(&status).await;
        assert!(
            matches!(outcome.verdict, Verdict::Delivered { .. }),
            "{outcome:?}"
        );
        assert_eq!(sim.applied_count(Platform::Tcec, "O-1"), 1);
        assert_eq!(sim.applied_count(Platform::Tcec, "C1"), 1);
    }

    #[tokio::test]
    async fn a_dispute_is_delivered_with_a_hint_and_a_bad_sig_is_retried() {
        let (sim, dir) = (sim().await, tempfile::tempdir().unwrap());
        let sink = sink(&sim, &dir, sim_tcec::DEMO_OPERATOR_SECRET);
        script(
            &sim,
            json!({"pushes": {"D": [{"confirm_result": 1}], "F": [{"bad_sig": true}]}}),
        );
        let disputed = sink.deliver(&order("D")).await;
        let Verdict::Delivered {
            hint: Some(hint), ..
        } = &disputed.verdict
        else {
            panic!("{disputed:?}");
        };
        assert!(hint.contains("ConfirmResult 1"), "{hint}");
        assert_eq!(disputed.info.hint.as_deref(), Some(hint.as_str()));
        assert_eq!(disputed.info.reply_code.as_deref(), Some("0/1"));
        let forged = sink.deliver(&order("F")).await;
        assert!(
            matches!(&forged.verdict, Verdict::Retry { reason, .. } if reason.contains("unreadable reply")),
            "{forged:?}"
        );
        assert_eq!(sink.hold(0), None, "a bad Sig is retried, not held");
        // Not the row's fault: a reply signed with another key says the secrets are wrong,
        // so a streak of them holds the sink instead of using up the backlog.
        assert_eq!(
            forged.blame,
            crate::outcome::Blame::Sink(crate::health::SinkCause::Auth)
        );
        assert_eq!(disputed.blame, crate::outcome::Blame::Row);
        assert!(matches!(
            sink.deliver(&order("F")).await.verdict,
            Verdict::Delivered { .. }
        ));
    }

    #[tokio::test]
    async fn refused_credentials_hold_the_sink_until_it_is_rebuilt() {
        let (sim, dir) = (sim().await, tempfile::tempdir().unwrap());
        let wrong = sink(&sim, &dir, "not-the-operator-secret");
        assert_eq!(wrong.hold(0), None);
        let outcome = wrong.deliver(&order("W")).await;
        let Verdict::Retry { reason, .. } = &outcome.verdict else {
            panic!("a credential failure never dead-letters: {outcome:?}");
        };
        assert!(reason.contains("FailReason 2"), "{reason}");
        let hold = wrong.hold(0).expect("held");
        assert!(
            hold.contains("OperatorSecret is wrong") && hold.contains("SIGHUP"),
            "{hold}"
        );
        assert!(!format!("{outcome:?}{hold}").contains("not-the-operator-secret"));
        assert_eq!(sim.request_count(Platform::Tcec, "W"), 0);
        // The reload builds the sink again: no hold, and the row goes through.
        let fixed = sink(&sim, &dir, sim_tcec::DEMO_OPERATOR_SECRET);
        assert_eq!(fixed.hold(0), None);
        assert!(matches!(
            fixed.deliver(&order("W")).await.verdict,
            Verdict::Delivered { .. }
        ));
    }

    /// Like every sink's: a 3xx is never followed (it would carry the envelope elsewhere) and
    /// is permanent, with the Location in the reason.
    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let reply = "HTTP/1.1 302 Found\r\nlocation: http://elsewhere.invalid/x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://{addr}/evcs/v1");
        let outcome = build(&section(&url, &dir, sim_tcec::DEMO_OPERATOR_SECRET))
            .deliver(&order("R"))
            .await;
        assert!(
            matches!(&outcome.verdict, Verdict::Permanent { reason } if reason.contains("redirect to http://elsewhere.invalid/x")),
            "{outcome:?}"
        );
        assert_eq!(outcome.info.http_status, Some(302));
    }

    #[tokio::test]
    async fn a_bad_payload_or_key_is_permanent_without_a_request() {
        let (sim, dir) = (sim().await, tempfile::tempdir().unwrap());
        let sink = sink(&sim, &dir, sim_tcec::DEMO_OPERATOR_SECRET);
        let mut other_key = order("O-2");
        other_key.idempotency_key = "SOMETHING-ELSE".into();
        let outcome = sink.deliver(&other_key).await;
        assert!(
            matches!(&outcome.verdict, Verdict::Permanent { reason } if reason.contains("must equal StartChargeSeq")),
            "{outcome:?}"
        );
        let mut bad_money = order("O-3");
        bad_money.payload = bad_money.payload.replace("15.3", "15.4");
        let outcome = sink.deliver(&bad_money).await;
        assert!(
            matches!(&outcome.verdict, Verdict::Permanent { reason } if reason.contains("TotalMoney")),
            "{outcome:?}"
        );
        assert!(sim.requests().is_empty());
    }
}
