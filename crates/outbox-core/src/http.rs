//! The one place that sends an HTTP request for a sink, and the distinction every sink needs:
//! did the request provably never leave (safe to retry, even for a non-idempotent API), or
//! may it have reached the platform (a retry could apply it twice)?

use std::time::{Duration, Instant};

use crate::clock;

/// A reply that came back, whatever its status.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: String,
}

/// Why no reply came back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// Failed before the request was written: DNS, connection refused, TLS handshake.
    #[error("not sent: {0}")]
    NotSent(String),
    /// Failed after the request may have been written: timeout, reset, truncated reply.
    #[error("outcome unknown: {0}")]
    MaybeSent(String),
}

/// The result of [`send`] plus its timing, for the attempt history.
pub struct Sent {
    pub started_at: i64,
    pub duration_ms: i64,
    /// The same, in microseconds: loopback and LAN requests take well under a millisecond.
    pub duration_us: i64,
    pub result: Result<HttpReply, SendError>,
}

impl Sent {
    /// The attempt history entry for this send, to be completed with what the reply meant.
    pub fn attempt_info(&self) -> crate::outcome::AttemptInfo {
        crate::outcome::AttemptInfo {
            started_at: self.started_at,
            duration_ms: self.duration_ms,
            duration_us: self.duration_us,
            ..Default::default()
        }
    }
}

/// Sends `request` and reads the whole reply body.
pub async fn send(request: reqwest::RequestBuilder) -> Sent {
    let started_at = clock::now_ms();
    let t0 = Instant::now();
    let result = send_inner(request).await;
    Sent {
        started_at,
        duration_ms: t0.elapsed().as_millis() as i64,
        duration_us: t0.elapsed().as_micros() as i64,
        result,
    }
}

async fn send_inner(request: reqwest::RequestBuilder) -> Result<HttpReply, SendError> {
    let response = request.send().await.map_err(classify_error)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    // The platform answered, so the request reached it: a broken body is ambiguous.
    let bytes = response.bytes().await.map_err(|e| {
        SendError::MaybeSent(format!("reading the reply failed: {}", error_chain(&e)))
    })?;
    Ok(HttpReply {
        status,
        retry_after,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
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

/// Builds the shared HTTP client: keep-alive pool, rustls, per-request timeout set by sinks.
pub fn client(connect_timeout: Duration, pool_per_host: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(pool_per_host)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .user_agent(concat!("outboxd/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client has a static, valid configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[tokio::test]
    async fn refused_connection_is_not_sent() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = client(Duration::from_secs(2), 4);
        let sent = send(c.post(format!("http://127.0.0.1:{port}/x")).body("a")).await;
        assert!(
            matches!(sent.result, Err(SendError::NotSent(_))),
            "{:?}",
            sent.result.err()
        );
    }

    #[tokio::test]
    async fn reset_after_request_is_maybe_sent() {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s); // read the request, answer nothing
        });
        let c = client(Duration::from_secs(2), 4);
        let sent = send(c.post(format!("http://{addr}/x")).body("a")).await;
        assert!(
            matches!(sent.result, Err(SendError::MaybeSent(_))),
            "{:?}",
            sent.result.err()
        );
    }

    #[tokio::test]
    async fn timeout_after_connect_is_maybe_sent() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            let _ = rx.await; // hold the connection open, never answer
        });
        let c = client(Duration::from_secs(2), 4);
        let sent = send(
            c.post(format!("http://{addr}/x"))
                .timeout(Duration::from_millis(200))
                .body("a"),
        )
        .await;
        drop(tx);
        assert!(
            matches!(sent.result, Err(SendError::MaybeSent(ref m)) if m.contains("timeout")),
            "{:?}",
            sent.result.err()
        );
    }
}
