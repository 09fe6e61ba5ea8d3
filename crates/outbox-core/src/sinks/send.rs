//! The one HTTP send path of every sink: post a request with the sink's own client, read the
//! reply up to a size cap, scrub the sink's secret from everything kept, and turn the result
//! into a [`StepOutcome`] with its attempt history entry.
//!
//! The distinction every sink needs is kept here: did the request provably never leave (safe
//! to retry, even for a non-idempotent API), or may it have reached the platform (a retry
//! could apply it twice)? Redirects are never followed: a 3xx is a permanent failure, since
//! following it would send the body, credentials included, to wherever `Location` points.

use std::time::{Duration, Instant};

use crate::clock;
use crate::outcome::{truncate, AttemptInfo, StepOutcome, Verdict};
use crate::secret::Secret;
use crate::sinks::SinkSettings;

/// The most of a reply body that is read: enough for any platform's answer and the attempt
/// history; the rest is discarded unread (the connection is closed).
pub const REPLY_CAP: usize = 16 * 1024;
/// The most of a reply body kept in the attempt history.
pub const STORED_REPLY: usize = 2000;

/// A reply that came back, whatever its status. `body` is already scrubbed of the secret.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// The `Location` header of a redirect.
    pub location: Option<String>,
    /// At most [`REPLY_CAP`] bytes of the body, scrubbed.
    pub body: String,
    /// Whether the body was longer than [`REPLY_CAP`] (the rest was not read).
    pub cut: bool,
}

/// Why no reply came back. Texts are scrubbed of the secret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// Failed before the request was written: DNS, connection refused, TLS handshake.
    #[error("not sent: {0}")]
    NotSent(String),
    /// Failed after the request may have been written: timeout, reset, truncated reply.
    #[error("outcome unknown: {0}")]
    MaybeSent(String),
}

/// The result of a send plus its timing, for the attempt history.
pub struct Sent {
    pub started_at: i64,
    pub duration_ms: i64,
    /// The same, in microseconds: loopback and LAN requests take well under a millisecond.
    pub duration_us: i64,
    pub result: Result<HttpReply, SendError>,
}

/// What a platform read from a reply (or from a failure without one).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub verdict: Verdict,
    /// The platform's own reply code, for the attempt history.
    pub code: Option<String>,
    pub hint: Option<String>,
}

impl Reading {
    /// A verdict without a reply code or hint (a failure without a reply).
    pub fn verdict(verdict: Verdict) -> Reading {
        Reading {
            verdict,
            code: None,
            hint: None,
        }
    }
}

impl Sent {
    /// The attempt history entry for this send: timing, status, the (scrubbed, truncated)
    /// reply or error text.
    pub fn attempt_info(&self) -> AttemptInfo {
        let mut info = AttemptInfo {
            started_at: self.started_at,
            duration_ms: self.duration_ms,
            duration_us: self.duration_us,
            ..Default::default()
        };
        match &self.result {
            Ok(r) => {
                info.http_status = Some(r.status);
                info.reply = Some(stored_reply(r));
            }
            Err(e) => info.error = Some(e.to_string()),
        }
        info
    }

    /// The step's outcome: a redirect is permanent whatever the platform; any other reply,
    /// or the failure without one, is read by the platform's `read`.
    pub fn outcome(
        self,
        read: impl FnOnce(Result<&HttpReply, &SendError>) -> Reading,
    ) -> StepOutcome {
        let mut info = self.attempt_info();
        let verdict = match &self.result {
            Ok(r) if (300..400).contains(&r.status) => redirect_verdict(r),
            result => {
                let reading = read(result.as_ref());
                info.reply_code = reading.code;
                info.hint = reading.hint;
                reading.verdict
            }
        };
        StepOutcome { verdict, info }
    }
}

/// A 3xx: outboxd follows no redirects, so the sink's url is wrong (or the platform moved).
pub fn redirect_verdict(r: &HttpReply) -> Verdict {
    let to = r.location.as_deref().unwrap_or("(no Location header)");
    Verdict::Permanent {
        reason: format!(
            "HTTP {} redirect to {}: outboxd follows no redirects (they would carry the request, credentials included, elsewhere); check the sink url",
            r.status,
            truncate(to, 300)
        ),
    }
}

/// The reply text kept in the attempt history: the body is scrubbed as it is read, so
/// truncating it here can never cut a secret in two.
fn stored_reply(r: &HttpReply) -> String {
    let mut s = truncate(&r.body, STORED_REPLY);
    if r.cut {
        s.push_str(&format!(
            " [reply over {REPLY_CAP} bytes: the rest not read]"
        ));
    }
    s
}

/// Scrubs `text` of `secret`, then cuts it to `max` bytes: the only safe order (a secret cut
/// at the boundary would no longer match the scrubber).
pub fn scrub_then_truncate(secret: &Secret, text: &str, max: usize) -> String {
    truncate(&secret.scrub(text), max)
}

/// One sink's HTTP client and the secrets its texts are scrubbed of. Built from the sink's
/// own settings, and rebuilt with the sink on reload.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    timeout: Duration,
    secret: Secret,
    /// The platform's further secrets (T/CEC has four), scrubbed like `secret`.
    more_secrets: Vec<Secret>,
}

impl Sender {
    /// A client with the sink's timeouts, no redirects, and no proxy unless the sink names
    /// one (a proxy from the environment would see every request, credentials included).
    pub fn new(settings: &SinkSettings, secret: Secret) -> Result<Sender, String> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .pool_max_idle_per_host(settings.concurrency)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("outboxd/", env!("CARGO_PKG_VERSION")));
        if let Some(p) = &settings.proxy {
            let proxy = reqwest::Proxy::all(p).map_err(|e| format!("proxy {p:?}: {e}"))?;
            b = b.proxy(proxy);
        }
        let client = b
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", error_chain(&e)))?;
        Ok(Sender {
            client,
            timeout: settings.timeout,
            secret,
            more_secrets: Vec::new(),
        })
    }

    /// Also scrubs `more` from every reply and error text (a platform with several secrets
    /// gives its own here, in `build`).
    pub fn scrubbing(mut self, more: impl IntoIterator<Item = Secret>) -> Sender {
        self.more_secrets.extend(more);
        self
    }

    /// The secret, for building a request. Never format it.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// Removes the secrets from a text about to be stored or logged.
    pub fn scrub(&self, text: &str) -> String {
        Scrubber::new(self, None).scrub(text)
    }

    /// POSTs `body` to `url` and reads the reply (capped and scrubbed).
    pub async fn post(&self, url: &str, content_type: &str, body: String) -> Sent {
        self.post_with_bearer(url, content_type, body, None).await
    }

    /// [`Sender::post`] with `Authorization: Bearer <token>` when `bearer` is given; the
    /// token is scrubbed from the reply and error texts like the secrets.
    pub async fn post_with_bearer(
        &self,
        url: &str,
        content_type: &str,
        body: String,
        bearer: Option<&Secret>,
    ) -> Sent {
        let mut request = self
            .client
            .post(url)
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token.expose());
        }
        let started_at = clock::now_ms();
        let t0 = Instant::now();
        let result = send(request, &Scrubber::new(self, bearer)).await;
        Sent {
            started_at,
            duration_ms: t0.elapsed().as_millis() as i64,
            duration_us: t0.elapsed().as_micros() as i64,
            result,
        }
    }
}

/// Every secret of one request: the sink's, and the bearer token it carries.
struct Scrubber<'a>(Vec<&'a Secret>);

impl<'a> Scrubber<'a> {
    fn new(sender: &'a Sender, bearer: Option<&'a Secret>) -> Self {
        let all = std::iter::once(&sender.secret)
            .chain(&sender.more_secrets)
            .chain(bearer);
        Scrubber(all.collect())
    }

    fn scrub(&self, text: &str) -> String {
        self.0.iter().fold(text.to_owned(), |t, s| s.scrub(&t))
    }

    fn scrub_cut(&self, text: &str) -> String {
        self.0.iter().fold(text.to_owned(), |t, s| s.scrub_cut(&t))
    }
}

async fn send(
    request: reqwest::RequestBuilder,
    secret: &Scrubber<'_>,
) -> Result<HttpReply, SendError> {
    let scrub_error = |e: SendError| match e {
        SendError::NotSent(t) => SendError::NotSent(secret.scrub(&t)),
        SendError::MaybeSent(t) => SendError::MaybeSent(secret.scrub(&t)),
    };
    let mut response = request
        .send()
        .await
        .map_err(|e| scrub_error(classify_error(e)))?;
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let status = response.status().as_u16();
    let retry_after = header(reqwest::header::RETRY_AFTER).and_then(|v| parse_retry_after(&v));
    let location = header(reqwest::header::LOCATION).map(|l| secret.scrub(&l));
    // The platform answered, so the request reached it: a broken body is ambiguous.
    let (bytes, cut) = read_capped(&mut response, REPLY_CAP).await.map_err(|e| {
        scrub_error(SendError::MaybeSent(format!(
            "reading the reply failed: {}",
            error_chain(&e)
        )))
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let body = if cut {
        secret.scrub_cut(&text)
    } else {
        secret.scrub(&text)
    };
    Ok(HttpReply {
        status,
        retry_after,
        location,
        body,
        cut,
    })
}

/// Reads at most `cap` bytes of the body; `true` when there was more (left unread).
async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

fn classify_error(e: reqwest::Error) -> SendError {
    // `is_connect` covers DNS, TCP connect and the TLS handshake: nothing was written.
    // A timeout during connect is also a connect error; any other timeout is ambiguous.
    if e.is_connect() || e.is_builder() {
        SendError::NotSent(error_chain(&e))
    } else if e.is_timeout() {
        SendError::MaybeSent(format!("no reply within the timeout ({})", error_chain(&e)))
    } else {
        SendError::MaybeSent(error_chain(&e))
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// An error with its causes, "a: b: c", which is what an operator needs ("connection
/// refused", "dns error"); the URL is kept, it holds no secret.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests;
