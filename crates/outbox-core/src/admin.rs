//! The admin listener: `GET /metrics` (Prometheus text), `GET /healthz` (200 when the
//! database answers and the worker loop is going round and its store rounds succeed, 503
//! otherwise, with the reason; a failure counts once it lasted `stall_after`; a held sink
//! keeps it 200 and is listed in the body) and `GET /status.json` (each sink's health, for
//! `outboxd status`).
//! `GET /` is a page for people: each sink's state and figures, charts of the last hour and
//! day, the latest dead letters, each linking to `GET /dead/{id}` (see [`page`]).
//! Bound to loopback by default: the figures name sinks, the pages show payloads.
//!
//! Scrapes must never stall deliveries: the listener reads through a store of its own (its
//! own connection, never the worker's), and the statistics scan, which reads every kept row,
//! is cached ([`StatsCache`]) and run by one scrape at a time.

mod chart;
pub mod history;
pub mod html;
pub mod page;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use tokio::time::Instant;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::filter::RowFilter;
use crate::store::{SinkStats, Store, StoreError};
use history::History;

#[derive(Clone)]
pub struct Admin {
    /// A store for the listener alone: not the worker's connection.
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub stall_after: Duration,
    pub stats: Arc<StatsCache>,
    /// The page's charts, sampled every [`SAMPLE_EVERY`] and on each view of `/`.
    pub history: Arc<Mutex<History>>,
}

impl Admin {
    /// `store` should be opened for the listener alone (see the module doc).
    pub fn new(store: Store, metrics: Arc<Metrics>, stall_after: Duration) -> Admin {
        Admin {
            stats: Arc::new(StatsCache::new(store.clone())),
            store,
            metrics,
            stall_after,
            history: Arc::default(),
        }
    }

    /// Reads the counters and the backlog into the page's history. The backlog (pending plus
    /// in flight) is read through the partial indexes that hold only those rows
    /// ([`crate::store::Backend::open_rows`]), not the full status pass: the sampler runs
    /// every 30 s whether anyone looks or not, and on an outbox with a million kept rows
    /// that pass would cost about 1% of a core.
    pub async fn sample(&self) {
        let backlog = self
            .store
            .open_rows()
            .await
            .ok()
            .map(|rows| rows.iter().map(|(_, n)| n).sum());
        let (delivered, failed) = self.metrics.progress_totals();
        self.history
            .lock()
            .expect("history lock")
            .sample(now_ms(), delivered, failed, backlog);
    }
}

/// How often the page's history is sampled: at least one reading in every one-minute slot.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(30);

/// Longest time cached statistics are served.
const MAX_STALE: Duration = Duration::from_secs(5);

/// A scan quicker than this is not cached: it costs the database next to nothing, and the
/// figures stay exact.
const WORTH_CACHING: Duration = Duration::from_millis(100);

/// The queue statistics of `/metrics`, cached. A scan that took `t` (at least
/// [`WORTH_CACHING`]) is served for `10 t`, at most [`MAX_STALE`], so the scan never keeps
/// the database busy more than a tenth of the time, however many scrapers there are: on a
/// small outbox the figures are exact, at a million kept rows they are refreshed every few
/// seconds. Concurrent scrapes wait for the one scan in progress instead of starting
/// their own.
pub struct StatsCache {
    store: Store,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

struct Cached {
    at: Instant,
    took: Duration,
    stats: Arc<Vec<SinkStats>>,
}

impl StatsCache {
    pub fn new(store: Store) -> StatsCache {
        StatsCache {
            store,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn get(&self) -> Result<Arc<Vec<SinkStats>>, StoreError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.at.elapsed() < fresh_for(c.took) {
                return Ok(c.stats.clone());
            }
        }
        let started = Instant::now();
        let stats = Arc::new(self.store.stats(now_ms()).await?);
        *cached = Some(Cached {
            at: Instant::now(),
            took: started.elapsed(),
            stats: stats.clone(),
        });
        Ok(stats)
    }
}

/// How long statistics whose scan took `took` are served from the cache.
fn fresh_for(took: Duration) -> Duration {
    if took < WORTH_CACHING {
        return Duration::ZERO;
    }
    (took * 10).min(MAX_STALE)
}

/// Binds the listener and serves it in the background. Returns the bound address.
pub async fn serve(addr: SocketAddr, admin: Admin) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let sampler = admin.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            sampler.sample().await;
        }
    });
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

fn html(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        // Defence in depth behind the escaping: no script runs, nothing is loaded.
        .header(
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
        )
        .header("x-content-type-options", "nosniff")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

fn unavailable(e: &StoreError) -> Response<Full<Bytes>> {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        page::error_page(
            "Database unavailable",
            &format!("The admin listener cannot read the outbox database: {e}"),
        ),
    )
}

impl Admin {
    /// `GET /`.
    async fn overview(&self) -> Response<Full<Bytes>> {
        let stats = match self.stats.get().await {
            Ok(stats) => stats,
            Err(e) => return unavailable(&e),
        };
        // The latest dead letters: the operators' `dead list` query, newest first.
        let every = RowFilter::default();
        let latest = self.store.ops().find_dead(&every, page::DEAD_SHOWN, true);
        let dead = match latest.await {
            Ok(dead) => dead,
            Err(e) => return unavailable(&e),
        };
        self.sample().await;
        let history = self.history.lock().expect("history lock").clone();
        let health = self.metrics.health();
        let body = page::overview(&page::Overview {
            now: now_ms(),
            stats: &stats,
            health: &health,
            dead: &dead,
            history: &history,
        });
        html(StatusCode::OK, body)
    }

    /// `GET /dead/{id}`.
    async fn dead_page(&self, id: &str) -> Response<Full<Bytes>> {
        let not_found = || {
            html(
                StatusCode::NOT_FOUND,
                page::error_page(
                    "Not found",
                    &format!("No dead letter {id:?}: it may have been requeued or purged."),
                ),
            )
        };
        let Ok(id) = id.parse::<i64>() else {
            return not_found();
        };
        let row = match self.store.dead_get(id).await {
            Ok(Some(row)) => row,
            Ok(None) => return not_found(),
            Err(e) => return unavailable(&e),
        };
        match self.store.attempts(row.outbox_id).await {
            Ok(attempts) => html(StatusCode::OK, page::dead_row(&row, &attempts)),
            Err(e) => unavailable(&e),
        }
    }

    async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if req.method() == hyper::Method::GET {
            if path == "/" {
                return self.overview().await;
            }
            if let Some(id) = path.strip_prefix("/dead/") {
                return self.dead_page(id).await;
            }
        }
        match (req.method().as_str(), path) {
            ("GET", "/metrics") => match self.stats.get().await {
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
                let stall_after = self.stall_after.as_millis() as i64;
                if let Some((ms, why)) = self.metrics.failing_for_ms() {
                    if ms > stall_after {
                        return text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("database unavailable to the worker: its rounds have failed for {ms} ms: {why}\n"),
                        );
                    }
                }
                match self.metrics.since_tick_ms() {
                    // A held sink is not a sick daemon: 200, with the holds in the body.
                    Some(ms) if ms <= stall_after => {
                        let mut body = "ok\n".to_string();
                        for line in self.metrics.health().held_lines(now_ms()) {
                            body.push_str(&line);
                            body.push('\n');
                        }
                        text(StatusCode::OK, body)
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
            ("GET", "/status.json") => {
                let body = serde_json::to_string(&self.metrics.health())
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response parts")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /, /metrics, /healthz or /status.json\n".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_scan_is_cached_longer_but_never_beyond_max_stale() {
        assert_eq!(fresh_for(Duration::from_micros(300)), Duration::ZERO);
        assert_eq!(fresh_for(Duration::from_millis(99)), Duration::ZERO);
        assert_eq!(
            fresh_for(Duration::from_millis(200)),
            Duration::from_secs(2)
        );
        assert_eq!(fresh_for(Duration::from_secs(3)), MAX_STALE);
    }

    async fn sqlite_admin() -> (tempfile::TempDir, Admin) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
        let opts = crate::store::OpenOptions {
            create: true,
            ..Default::default()
        };
        let store = Store::open(&url, &opts).await.unwrap();
        store.migrate().await.unwrap();
        let admin = Admin::new(store, Arc::default(), Duration::from_secs(30));
        (dir, admin)
    }

    async fn get(admin: &Admin, path: &str) -> (StatusCode, String, String) {
        use http_body_util::BodyExt;
        let req = Request::get(path).body(()).unwrap();
        let resp = admin.handle(req).await;
        let status = resp.status();
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn pages_answer_404_for_an_unknown_row_and_503_when_the_store_fails() {
        let (_dir, admin) = sqlite_admin().await;
        let (status, ctype, body) = get(&admin, "/").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(ctype, "text/html; charset=utf-8");
        assert!(body.contains("No sinks yet."), "{body}");
        let (status, _, body) = get(&admin, "/dead/42").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("No dead letter &quot;42&quot;"), "{body}");
        let (status, _, body) = get(&admin, "/dead/%3Cscript%3E").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(!body.contains("<script"), "{body}");

        admin.store.close().await;
        for path in ["/", "/dead/42"] {
            let (status, ctype, body) = get(&admin, path).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
            assert_eq!(ctype, "text/html; charset=utf-8");
            assert!(body.contains("<h1>Database unavailable</h1>"), "{body}");
            assert!(body.contains("cannot read the outbox database"), "{body}");
        }
    }
}
