use super::*;

fn settings(url: &str) -> SinkSettings {
    toml::from_str(&format!("url = {url:?}\nconnect_timeout = \"2s\"")).unwrap()
}

fn sender(secret: &str) -> Sender {
    Sender::new(&settings("http://127.0.0.1:1/"), Secret::new(secret)).unwrap()
}

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
    let sent = sender("test-secret-value")
        .post(
            &format!("http://127.0.0.1:{port}/x"),
            "text/plain",
            "a".into(),
        )
        .await;
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
    let sent = sender("test-secret-value")
        .post(&format!("http://{addr}/x"), "text/plain", "a".into())
        .await;
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
    let mut s = settings("http://127.0.0.1:1/");
    s.timeout = Duration::from_millis(200);
    let sent = Sender::new(&s, Secret::new("k"))
        .unwrap()
        .post(&format!("http://{addr}/x"), "text/plain", "a".into())
        .await;
    drop(tx);
    assert!(
        matches!(sent.result, Err(SendError::MaybeSent(ref m)) if m.contains("timeout")),
        "{:?}",
        sent.result.err()
    );
}

/// A one-shot loopback server answering `reply` (raw HTTP) to the first request.
async fn answer(reply: Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(&reply).await;
    });
    addr
}

/// Issue 12 item 6: a secret echoed across the stored reply's cut is scrubbed whole. The
/// old order (truncate to 2000 bytes, then scrub) kept the secret's first bytes.
#[test]
fn a_secret_straddling_the_truncation_boundary_never_survives() {
    let secret = Secret::new("S3CR3T-KEY-0123456789abcdef");
    let body = format!("{}{}", "x".repeat(STORED_REPLY - 10), secret.expose());
    let old = secret.scrub(&truncate(&body, STORED_REPLY));
    assert!(old.contains("S3CR3T-KEY"), "the old order leaked: {old}");
    let reply = HttpReply {
        status: 200,
        retry_after: None,
        location: None,
        body: secret.scrub(&body),
        cut: false,
    };
    for kept in [
        stored_reply(&reply),
        scrub_then_truncate(&secret, &body, STORED_REPLY),
    ] {
        assert!(!kept.contains("S3CR3T"), "{kept}");
        assert!(kept.len() <= STORED_REPLY + 40, "{}", kept.len());
    }
}

/// Issue 12 items 6 and 8: a reply echoing the secret at the read cap is scrubbed, and the
/// attempt history keeps a capped, scrubbed reply.
#[tokio::test]
async fn the_reply_is_scrubbed_as_it_is_read_even_across_the_cap() {
    let key = "ECHOED-S3CR3T-0123456789";
    let mut body = "y".repeat(REPLY_CAP - 8).into_bytes();
    body.extend_from_slice(key.as_bytes());
    body.extend_from_slice(&[b'z'; 1000]);
    let mut reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    reply.extend_from_slice(&body);
    let addr = answer(reply).await;
    let sent = sender(key)
        .post(&format!("http://{addr}/x"), "text/plain", "a".into())
        .await;
    let r = sent.result.as_ref().unwrap();
    assert!(r.cut);
    assert!(
        !r.body.contains("ECHOED"),
        "{}",
        &r.body[r.body.len() - 40..]
    );
    let info = sent.attempt_info();
    let stored = info.reply.unwrap();
    assert!(stored.len() <= STORED_REPLY + 80, "{}", stored.len());
    assert!(!stored.contains("ECHOED"));
}

/// Issue 12 item 8: a multi-MB reply is read only up to the cap (the old send read it
/// whole into memory).
#[tokio::test]
async fn a_huge_reply_is_read_up_to_the_cap_only() {
    const HUGE: usize = 8 * 1024 * 1024;
    let mut reply =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {HUGE}\r\nconnection: close\r\n\r\n")
            .into_bytes();
    reply.extend(std::iter::repeat_n(b'x', HUGE));
    let addr = answer(reply).await;
    let sent = sender("test-secret-value")
        .post(&format!("http://{addr}/x"), "text/plain", "a".into())
        .await;
    let r = sent.result.as_ref().unwrap();
    assert_eq!(r.body.len(), REPLY_CAP);
    assert!(r.cut);
    let stored = sent.attempt_info().reply.unwrap();
    assert!(stored.contains("the rest not read"), "{stored}");
}

/// Issue 12 item 5: a redirect is not followed; the outcome is permanent and names the
/// status and the Location.
#[tokio::test]
async fn a_redirect_is_a_permanent_failure_naming_status_and_location() {
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let location = format!("http://{}/elsewhere", target.local_addr().unwrap());
    let addr = answer(
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n"
        )
        .into_bytes(),
    )
    .await;
    let sent = sender("test-secret-value")
        .post(&format!("http://{addr}/x"), "text/plain", "a".into())
        .await;
    let out = sent.outcome(|_| panic!("a redirect never reaches the platform's reading"));
    match &out.verdict {
        Verdict::Permanent { reason } => {
            assert!(reason.contains("HTTP 307"), "{reason}");
            assert!(reason.contains(&location), "{reason}");
            assert!(reason.contains("check the sink url"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out.info.http_status, Some(307));
    // Nobody connected to the Location.
    let accepted = tokio::time::timeout(Duration::from_millis(1), target.accept()).await;
    assert!(accepted.is_err(), "the redirect was followed");
}

/// Issue 12 item 5: no proxy from the environment unless the sink names one.
#[tokio::test]
async fn the_environment_proxy_is_not_used() {
    // HTTP_PROXY pointing nowhere: were it used, the send would fail to connect.
    let addr = answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()).await;
    let dead_proxy = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::env::set_var("HTTP_PROXY", format!("http://{dead_proxy}"));
    std::env::set_var("http_proxy", format!("http://{dead_proxy}"));
    std::env::set_var("NO_PROXY", "");
    let s = sender("test-secret-value");
    std::env::remove_var("HTTP_PROXY");
    std::env::remove_var("http_proxy");
    std::env::remove_var("NO_PROXY");
    let sent = s
        .post(&format!("http://{addr}/x"), "text/plain", "a".into())
        .await;
    assert_eq!(sent.result.map(|r| r.body).unwrap(), "ok");
}

/// A sink's own `proxy` is used (its client is built from its own settings).
#[tokio::test]
async fn the_sinks_own_proxy_is_used() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut s, _) = proxy.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nproxied")
            .await
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let mut s = settings("http://platform.invalid/x");
    s.proxy = Some(format!("http://{proxy_addr}"));
    let sent = Sender::new(&s, Secret::new("test-secret-value"))
        .unwrap()
        .post("http://platform.invalid/x", "text/plain", "a".into())
        .await;
    assert_eq!(sent.result.map(|r| r.body).unwrap(), "proxied");
    let request = seen.await.unwrap();
    assert!(
        request.starts_with("POST http://platform.invalid/x"),
        "{request}"
    );
}

/// A platform with several secrets (T/CEC) and a bearer token: the token is sent in the
/// `Authorization` header, and the reply is scrubbed of every secret and of the token.
#[tokio::test]
async fn every_secret_and_the_bearer_token_are_scrubbed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        let body = "echo main-secret-1 more-secret-2 more-secret-3 token-abc-123";
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(reply.as_bytes()).await;
    });
    let sender = sender("main-secret-1")
        .scrubbing([Secret::new("more-secret-2"), Secret::new("more-secret-3")]);
    let token = Secret::new("token-abc-123");
    let sent = sender
        .post_with_bearer(
            &format!("http://{addr}/x"),
            "application/json",
            "{}".into(),
            Some(&token),
        )
        .await;
    let request = rx.await.unwrap().to_ascii_lowercase();
    assert!(
        request.contains("authorization: bearer token-abc-123"),
        "{request}"
    );
    let body = sent.result.unwrap().body;
    assert_eq!(body, "echo [redacted] [redacted] [redacted] [redacted]");
    assert_eq!(
        sender.scrub("more-secret-3 and main-secret-1"),
        "[redacted] and [redacted]"
    );
}
