//! The admin listener: `GET /metrics` (Prometheus text) and `GET /healthz` (200 when the
//! database answers and the worker loop is going round, 503 otherwise, with the reason).
//! Bound to loopback by default: the figures name sinks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
pub struct Admin {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub stall_after: Duration,
}

/// Binds the listener and serves it in the background. Returns the bound address.
pub async fn serve(addr: SocketAddr, admin: Admin) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

impl Admin {
    async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        match (req.method().as_str(), req.uri().path()) {
            ("GET", "/metrics") => match self.store.stats(now_ms()).await {
                Ok(stats) => text(StatusCode::OK, self.metrics.render(&stats)),
                Err(e) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("database unavailable: {e}\n"),
                ),
            },
            ("GET", "/healthz") => {
                if let Err(e) = self.store.ping().await {
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("database unavailable: {e}\n"),
                    );
                }
                match self.metrics.since_tick_ms() {
                    Some(ms) if ms <= self.stall_after.as_millis() as i64 => {
                        text(StatusCode::OK, "ok\n".into())
                    }
                    Some(ms) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("worker loop stalled: last went round {ms} ms ago\n"),
                    ),
                    None => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "worker loop not started\n".into(),
                    ),
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics or /healthz\n".into(),
            ),
        }
    }
}
