//! The bearer token (`query_token`) and one push with it.
//!
//! A sink holds one [`Session`]: its secrets, its `Seq` counter and a [`TokenCache`]. The
//! token is fetched on first use, reused by every request of the sink until shortly before
//! `TokenAvailableTime` runs out, and fetched by one caller at a time (the others wait for
//! that fetch and reuse its token). `Ret 4002` drops the token, and the push is retried once
//! with a fresh one. A `FailReason` of 1 or 2 is a credential failure: the sink is held, the
//! row is never dead-lettered for it.
//!
//! The HTTP post is behind [`Transport`], so the whole flow runs in tests without a network.

use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::envelope::{open_reply, seal_request, EnvelopeError, Keys, SeqCounter};
use super::reply::{classify_http, classify_transport, Classified, Scope};
use super::Interface;
use crate::outcome::Verdict;
use crate::secret::Secret;

/// How long before its expiry a token is replaced (at most half its lifetime).
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `SuccStat 1` with `FailReason` 1 (unknown operator) or 2 (wrong secret): the
    /// configuration is wrong; hold the sink until an operator fixes it.
    #[error("query_token refused the credentials: {0}")]
    Credentials(String),
    /// No reply, HTTP 5xx, `Ret -1`/`500`: try again later.
    #[error("query_token failed: {0}")]
    Transient(String),
    /// A reply that makes no sense or fails its signature: the sink's setup is wrong.
    #[error("query_token reply unusable: {0}")]
    Protocol(String),
}

/// The plaintext `Data` of a `query_token` request.
pub fn token_request_data(operator_id: &str, operator_secret: &Secret) -> String {
    json!({"OperatorID": operator_id, "OperatorSecret": operator_secret.expose()}).to_string()
}

/// Reads the decrypted `Data` of a `Ret 0` `query_token` reply.
pub fn parse_token_data(data: &str) -> Result<(Secret, Duration), TokenError> {
    let data: Value =
        serde_json::from_str(data).map_err(|_| TokenError::Protocol("Data is not JSON".into()))?;
    match data.get("SuccStat").and_then(Value::as_i64) {
        Some(0) => {}
        Some(_) => {
            let reason = match data.get("FailReason").and_then(Value::as_i64) {
                Some(1) => "FailReason 1: the platform does not know this OperatorID".to_string(),
                Some(2) => "FailReason 2: OperatorSecret is wrong".to_string(),
                other => format!(
                    "FailReason {}",
                    other.map_or("missing".into(), |c| c.to_string())
                ),
            };
            return Err(TokenError::Credentials(reason));
        }
        None => return Err(TokenError::Protocol("no SuccStat".into())),
    }
    let token = data
        .get("AccessToken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Protocol("SuccStat 0 without an AccessToken".into()))?;
    let seconds = data
        .get("TokenAvailableTime")
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .ok_or_else(|| TokenError::Protocol("no positive TokenAvailableTime".into()))?;
    Ok((Secret::new(token), Duration::from_secs(seconds)))
}

#[derive(Debug)]
struct Cached {
    token: Secret,
    refresh_at: Instant,
}

/// The token of one sink, shared by all of its requests.
#[derive(Debug)]
pub struct TokenCache {
    margin: Duration,
    // Held across a fetch: concurrent callers queue behind it and reuse its token.
    state: Mutex<Option<Cached>>,
}

impl TokenCache {
    pub fn new(margin: Duration) -> Self {
        TokenCache {
            margin,
            state: Mutex::new(None),
        }
    }

    /// The cached token, or a fresh one from `fetch` (token and its lifetime) when there is
    /// none or it is about to expire.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Secret, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Secret, Duration), TokenError>>,
    {
        let mut state = self.state.lock().await;
        if let Some(cached) = state.as_ref() {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        *state = None;
        let (token, lifetime) = fetch().await?;
        let margin = self.margin.min(lifetime / 2);
        *state = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + lifetime - margin,
        });
        Ok(token)
    }

    /// Forgets `stale` after the platform refused it (`Ret 4002`). A token fetched meanwhile
    /// by another request is kept, so a burst of 4002s costs one fetch.
    pub async fn invalidate(&self, stale: &Secret) {
        let mut state = self.state.lock().await;
        if state.as_ref().is_some_and(|c| &c.token == stale) {
            *state = None;
        }
    }
}

/// What one HTTP post came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostResult {
    Reply {
        status: u16,
        body: String,
    },
    /// No reply: timeout, refused or broken connection (the text names which).
    Failed(String),
}

/// The I/O a [`Session`] needs: `POST {url}/{interface}` with a JSON body and, except for
/// `query_token`, `Authorization: Bearer <token>`. Redirects must not be followed.
pub trait Transport {
    fn post(
        &self,
        interface: Interface,
        bearer: Option<&Secret>,
        body: String,
    ) -> impl Future<Output = PostResult> + Send;
}

/// One sink's protocol state.
#[derive(Debug)]
pub struct Session {
    operator_id: String,
    operator_secret: Secret,
    keys: Keys,
    seq: SeqCounter,
    tokens: TokenCache,
}

/// The outcome of [`Session::deliver`]: the classification, plus a credential failure that
/// should hold the sink (`Some(reason)`), and whether a 4002 refresh happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub classified: Classified,
    /// A token could not be had because the credentials are wrong: hold the sink with this
    /// reason (no secret in it); the row keeps its attempts.
    pub hold: Option<String>,
    /// How many HTTP posts of the push were made (1, or 2 after a 4002).
    pub posts: u32,
}

impl Session {
    pub fn new(
        operator_id: String,
        operator_secret: Secret,
        keys: Keys,
        utc_offset_secs: i64,
        refresh_margin: Duration,
    ) -> Self {
        Session {
            operator_id,
            operator_secret,
            keys,
            seq: SeqCounter::new(utc_offset_secs),
            tokens: TokenCache::new(refresh_margin),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Text with every secret of this session removed, for stored replies and errors.
    pub fn scrub(&self, text: &str) -> String {
        [
            &self.operator_secret,
            &self.keys.data_secret,
            &self.keys.data_secret_iv,
            &self.keys.sig_secret,
        ]
        .iter()
        .fold(text.to_owned(), |text, secret| secret.scrub(&text))
    }

    /// A platform's `Msg` or `Data` could echo a secret or the token: scrub every text.
    fn scrub_classified(&self, mut classified: Classified, token: &Secret) -> Classified {
        let scrub = |text: &mut String| *text = token.scrub(&self.scrub(text));
        match &mut classified.verdict {
            Verdict::Delivered { hint, result } => {
                hint.iter_mut().chain(result.iter_mut()).for_each(scrub)
            }
            Verdict::Completed { note, result } => {
                scrub(note);
                result.iter_mut().for_each(scrub);
            }
            Verdict::Retry { reason, .. }
            | Verdict::Permanent { reason }
            | Verdict::Ambiguous { reason } => scrub(reason),
            Verdict::Continue { note, .. } => scrub(note),
        }
        classified
    }

    fn seal(&self, data_json: &str, now_ms: i64) -> Result<String, EnvelopeError> {
        let stamp = self.seq.next(now_ms);
        let envelope = seal_request(&self.keys, &self.operator_id, data_json, &stamp)?;
        Ok(serde_json::to_string(&envelope).expect("an envelope serialises"))
    }

    async fn fetch_token<T: Transport>(
        &self,
        transport: &T,
    ) -> Result<(Secret, Duration), TokenError> {
        let data = token_request_data(&self.operator_id, &self.operator_secret);
        let body = self
            .seal(&data, crate::clock::now_ms())
            .map_err(|e| TokenError::Protocol(e.to_string()))?;
        let (status, body) = match transport.post(Interface::QueryToken, None, body).await {
            PostResult::Reply { status, body } => (status, body),
            PostResult::Failed(error) => return Err(TokenError::Transient(self.scrub(&error))),
        };
        if !(200..300).contains(&status) {
            return Err(TokenError::Transient(format!("HTTP {status}")));
        }
        let opened = open_reply(&self.keys, &body).map_err(|e| match e {
            EnvelopeError::Shape(_) => {
                TokenError::Transient("reply is not a T/CEC envelope".into())
            }
            other => TokenError::Protocol(other.to_string()),
        })?;
        match opened.ret {
            0 => parse_token_data(opened.data.as_deref().unwrap_or_default()),
            -1 | 500 => Err(TokenError::Transient(format!("Ret {}", opened.ret))),
            4001 => Err(TokenError::Protocol(
                "Ret 4001 signature wrong: check SigSecret, DataSecret and DataSecretIV".into(),
            )),
            ret => Err(TokenError::Protocol(format!(
                "Ret {ret}: {}",
                crate::outcome::truncate(&self.scrub(&opened.msg), 200)
            ))),
        }
    }

    /// Pushes `data_json` (a validated payload) to `interface`, with the cached token; on
    /// `Ret 4002` fetches a new token and pushes once more. `expected_seq` is the payload's
    /// `StartChargeSeq`, checked against the platform's confirmation.
    pub async fn deliver<T: Transport>(
        &self,
        transport: &T,
        interface: Interface,
        data_json: &str,
        expected_seq: Option<&str>,
    ) -> Delivery {
        let mut posts = 0;
        loop {
            let token = match self.tokens.get(|| self.fetch_token(transport)).await {
                Ok(token) => token,
                Err(error) => return token_failure(error, posts),
            };
            let body = match self.seal(data_json, crate::clock::now_ms()) {
                Ok(body) => body,
                Err(e) => {
                    return Delivery {
                        classified: sink_retry(format!("cannot build the envelope: {e}")),
                        hold: None,
                        posts,
                    }
                }
            };
            posts += 1;
            let classified = match transport.post(interface, Some(&token), body).await {
                PostResult::Reply { status, body } => {
                    classify_http(interface, status, &body, &self.keys, expected_seq)
                }
                PostResult::Failed(error) => classify_transport(&self.scrub(&error)),
            };
            if classified.token_invalid && posts == 1 {
                self.tokens.invalidate(&token).await;
                continue;
            }
            return Delivery {
                classified: self.scrub_classified(classified, &token),
                hold: None,
                posts,
            };
        }
    }
}

fn sink_retry(reason: String) -> Classified {
    Classified {
        verdict: Verdict::Retry {
            reason,
            retry_after: None,
        },
        scope: Scope::Sink,
        disputed: false,
        token_invalid: false,
        reply_code: None,
    }
}

fn token_failure(error: TokenError, posts: u32) -> Delivery {
    let hold = matches!(error, TokenError::Credentials(_)).then(|| error.to_string());
    let scope_reason = error.to_string();
    let classified = match error {
        // The platform did not answer: nothing about this row or the sink is known wrong.
        TokenError::Transient(_) => Classified {
            scope: Scope::Row,
            ..sink_retry(scope_reason)
        },
        TokenError::Credentials(_) | TokenError::Protocol(_) => sink_retry(scope_reason),
    };
    Delivery {
        classified,
        hold,
        posts,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::sinks::tcec::envelope::{open_request, seal_reply, RequestEnvelope};
    use crate::sinks::tcec::tests::vector_keys;

    #[test]
    fn token_reply_data_is_read() {
        let (token, lifetime) = parse_token_data(
            r#"{"OperatorID":"123456789","SuccStat":0,"AccessToken":"T1","TokenAvailableTime":7200,"FailReason":0}"#,
        )
        .unwrap();
        assert_eq!(
            (token.expose(), lifetime),
            ("T1", Duration::from_secs(7200))
        );
        for (reason, text) in [(1, "OperatorID"), (2, "OperatorSecret")] {
            let err = parse_token_data(&format!(r#"{{"SuccStat":1,"FailReason":{reason}}}"#))
                .unwrap_err();
            assert!(
                matches!(&err, TokenError::Credentials(r) if r.contains(text)),
                "{err}"
            );
        }
        assert!(matches!(
            parse_token_data(r#"{"SuccStat":0,"TokenAvailableTime":1}"#),
            Err(TokenError::Protocol(_))
        ));
    }

    /// A fetch that counts its calls and hands out `T1`, `T2`, ... living `lifetime`.
    fn counting_fetch(
        calls: &Arc<AtomicU32>,
        lifetime: Duration,
    ) -> impl Future<Output = Result<(Secret, Duration), TokenError>> {
        let calls = calls.clone();
        async move {
            // Yield so concurrent callers really overlap with the fetch.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            Ok((Secret::new(format!("T{n}")), lifetime))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn token_is_cached_until_shortly_before_expiry() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let calls = Arc::new(AtomicU32::new(0));
        let hour = Duration::from_secs(3600);
        assert_eq!(
            cache
                .get(|| counting_fetch(&calls, hour))
                .await
                .unwrap()
                .expose(),
            "T1"
        );
        tokio::time::advance(Duration::from_secs(3600 - 61)).await;
        assert_eq!(
            cache
                .get(|| counting_fetch(&calls, hour))
                .await
                .unwrap()
                .expose(),
            "T1"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            cache
                .get(|| counting_fetch(&calls, hour))
                .await
                .unwrap()
                .expose(),
            "T2"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A short-lived token is refreshed at half its life, not immediately.
        let short = TokenCache::new(Duration::from_secs(60));
        let ten = Duration::from_secs(10);
        short.get(|| counting_fetch(&calls, ten)).await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        short.get(|| counting_fetch(&calls, ten)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch() {
        let cache = Arc::new(TokenCache::new(DEFAULT_REFRESH_MARGIN));
        let calls = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get(|| counting_fetch(&calls, Duration::from_secs(3600)))
                        .await
                        .unwrap()
                        .expose()
                        .to_owned()
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), "T1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_forgets_only_the_stale_token() {
        let cache = TokenCache::new(DEFAULT_REFRESH_MARGIN);
        let calls = Arc::new(AtomicU32::new(0));
        let hour = Duration::from_secs(3600);
        let t1 = cache.get(|| counting_fetch(&calls, hour)).await.unwrap();
        cache.invalidate(&t1).await;
        let t2 = cache.get(|| counting_fetch(&calls, hour)).await.unwrap();
        // A second request that also saw T1 refused does not throw away T2.
        cache.invalidate(&t1).await;
        assert_eq!(
            cache.get(|| counting_fetch(&calls, hour)).await.unwrap(),
            t2
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// A platform in a box: issues tokens, answers pushes with scripted `Ret`s.
    struct FakePlatform {
        keys: Keys,
        token_replies: std::sync::Mutex<Vec<String>>,
        push_rets: std::sync::Mutex<Vec<i64>>,
        log: std::sync::Mutex<Vec<(Interface, Option<String>, String)>>,
    }

    impl FakePlatform {
        fn new(push_rets: Vec<i64>) -> Self {
            FakePlatform {
                keys: vector_keys(),
                token_replies: std::sync::Mutex::new(Vec::new()),
                push_rets: std::sync::Mutex::new(push_rets),
                log: std::sync::Mutex::new(Vec::new()),
            }
        }
    }

    impl Transport for FakePlatform {
        fn post(
            &self,
            interface: Interface,
            bearer: Option<&Secret>,
            body: String,
        ) -> impl Future<Output = PostResult> + Send {
            let envelope: RequestEnvelope = serde_json::from_str(&body).unwrap();
            let data = open_request(&self.keys, &envelope).unwrap();
            self.log
                .lock()
                .unwrap()
                .push((interface, bearer.map(|b| b.expose().to_owned()), data));
            let reply = match interface {
                Interface::QueryToken => {
                    let scripted = self.token_replies.lock().unwrap().pop();
                    let n = self.log.lock().unwrap().len();
                    let data = scripted.unwrap_or_else(|| {
                        format!(r#"{{"SuccStat":0,"AccessToken":"T{n}","TokenAvailableTime":7200,"FailReason":0}}"#)
                    });
                    seal_reply(&self.keys, 0, "", &data).unwrap()
                }
                _ => {
                    let mut rets = self.push_rets.lock().unwrap();
                    let ret = if rets.is_empty() { 0 } else { rets.remove(0) };
                    let msg = if ret == 4004 {
                        format!(
                            "bad token {}",
                            bearer.map(|b| b.expose()).unwrap_or_default()
                        )
                    } else {
                        String::new()
                    };
                    let data = if ret == 0 {
                        r#"{"StartChargeSeq":"O1","ConnectorID":"C1","ConfirmResult":0}"#
                    } else {
                        ""
                    };
                    seal_reply(&self.keys, ret, &msg, data).unwrap()
                }
            };
            let body = serde_json::to_string(&reply).unwrap();
            async move { PostResult::Reply { status: 200, body } }
        }
    }

    fn session() -> Session {
        Session::new(
            "123456789".into(),
            Secret::new("operator-secret-xyz"),
            vector_keys(),
            8 * 3600,
            DEFAULT_REFRESH_MARGIN,
        )
    }

    #[tokio::test]
    async fn push_uses_the_token_and_4002_refreshes_once() {
        let platform = FakePlatform::new(vec![0, 4002, 0]);
        let session = session();
        let first = session
            .deliver(&platform, Interface::ChargeOrder, "{}", Some("O1"))
            .await;
        assert!(matches!(
            first.classified.verdict,
            Verdict::Delivered { .. }
        ));
        let second = session
            .deliver(&platform, Interface::ChargeOrder, "{}", Some("O1"))
            .await;
        assert!(matches!(
            second.classified.verdict,
            Verdict::Delivered { .. }
        ));
        assert_eq!(second.posts, 2);
        let log = platform.log.lock().unwrap();
        let calls: Vec<_> = log.iter().map(|(i, b, _)| (*i, b.clone())).collect();
        assert_eq!(
            calls,
            [
                (Interface::QueryToken, None),
                (Interface::ChargeOrder, Some("T1".into())),
                (Interface::ChargeOrder, Some("T1".into())),
                (Interface::QueryToken, None),
                (Interface::ChargeOrder, Some("T4".into())),
            ]
        );
        assert!(log[0].2.contains("operator-secret-xyz"));
    }

    #[tokio::test]
    async fn an_echoed_token_is_scrubbed_from_the_reason() {
        let platform = FakePlatform::new(vec![4004]);
        let outcome = session()
            .deliver(&platform, Interface::ChargeOrder, "{}", None)
            .await;
        let Verdict::Permanent { reason } = outcome.classified.verdict else {
            panic!("4004 is permanent");
        };
        assert!(reason.contains("bad token [redacted]"), "{reason}");
    }

    #[tokio::test]
    async fn a_second_4002_is_not_retried_again() {
        let platform = FakePlatform::new(vec![4002, 4002]);
        let outcome = session()
            .deliver(&platform, Interface::ChargeOrder, "{}", None)
            .await;
        assert_eq!(outcome.posts, 2);
        assert!(outcome.classified.token_invalid);
        assert_eq!(outcome.classified.scope, Scope::Sink);
    }

    #[tokio::test]
    async fn refused_credentials_hold_the_sink_without_pushing() {
        let platform = FakePlatform::new(vec![]);
        platform
            .token_replies
            .lock()
            .unwrap()
            .push(r#"{"SuccStat":1,"FailReason":2}"#.into());
        let session = session();
        let outcome = session
            .deliver(&platform, Interface::ChargeOrder, "{}", None)
            .await;
        assert_eq!(outcome.posts, 0);
        assert_eq!(outcome.classified.scope, Scope::Sink);
        let hold = outcome.hold.unwrap();
        assert!(hold.contains("OperatorSecret is wrong"), "{hold}");
        assert!(!hold.contains("operator-secret-xyz"));
        assert!(!matches!(
            outcome.classified.verdict,
            Verdict::Permanent { .. }
        ));
        assert!(!session
            .scrub("x operator-secret-xyz 1234567890abcdef")
            .contains("secret-xyz"));
    }
}
