//! Loopback simulators of the three platforms `outboxd` delivers to: 4pyun (charge record
//! push), epeis (`RepairDosageBack`) and lbbtech (start a charge, poll the result, query the
//! order). One HTTP/1.1 server on one port serves all three, checks requests the way the real
//! platforms do (4pyun signature and timestamp window, epeis channel credentials, lbbtech
//! token) and can be scripted to fail in every way a real platform fails.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use platform_sim::{Platform, SimConfig, Step};
//!
//! let sim = platform_sim::start("127.0.0.1:0".parse().unwrap(), SimConfig::default()).await?;
//! // The first push of this order is answered 503, the second is applied but unanswered.
//! sim.script_pyun("202304110920004SfjdX", vec![Step::http(503), Step::drop_after()]);
//! // ... point the product at sim.pyun_url() and let it deliver ...
//! assert!(sim.wait_for_requests(3, Duration::from_secs(5)).await);
//! assert_eq!(sim.applied_count(Platform::Pyun, "202304110920004SfjdX"), 1);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Endpoints
//!
//! - `POST /gate/1.0/energy/internal/replenish` — 4pyun, see [`pyun`].
//! - `POST /Service/v1/RepairDosageBack/` — epeis, see [`epeis`].
//! - `POST /open/newPriceStandardCharge`, `/open/query/result`,
//!   `/open/queryChargeOrderDetail` — lbbtech, see [`lbbtech`].
//! - Control: `POST /_sim/script` (a [`SimScript`], merged into the current one),
//!   `GET /_sim/requests` (JSON array of [`RecordedRequest`]), `GET /_sim/stats` ([`Stats`]).
//!   Control requests are not recorded, nor are requests to unknown paths (404) or with a
//!   method other than POST (405).
//!
//! # Scripts and faults
//!
//! Each request for a key consumes the next [`Step`] of that key's script (4pyun:
//! `replenish_order`; epeis: `COM_METERAGE.SETTLEMENT_AID`); when the script is exhausted the
//! platform behaves normally. An lbbtech start consumes the next [`LbbScript`] of its `simId`,
//! which also decides how that start's polls and order queries go. Requests no script covers
//! get [`RandomFaults`] when configured (a scripted lbbtech start covers its polls and order
//! queries too).
//!
//! What each step does to the platform state:
//!
//! | step | reply | applied |
//! |-|-|-|
//! | `ok` | normal | as normal (first valid 4pyun order; every valid epeis request; every valid lbbtech start) |
//! | `drop_after` | none, connection closed | as normal |
//! | `drop_before` | none, connection closed | no |
//! | `code` | HTTP 200 with that platform code | no |
//! | `http` | bare status, optional `Retry-After` | no |
//! | `garbage` | HTTP 200, HTML body | no |
//!
//! A step's delay is waited after deciding and applying, before replying or dropping.
//!
//! The JSON form of a whole script (the binary's `--script` file, `POST /_sim/script`):
//!
//! ```json
//! {
//!   "pyun":    {"ORDER-1": ["drop_after", {"http": 503, "retry_after": 1}, "ok",
//!                          {"code": "200", "hint": "签名验证不通过"},
//!                          {"delay_ms": 2000, "then": "ok"}, "garbage", "drop_before"]},
//!   "epeis":   {"SA00000000000001": [{"code": 2001, "message": "结算户不存在"}, "ok"]},
//!   "lbbtech": {"865933034812509": {"start": "ok", "result_after_polls": 2, "result": 1,
//!                                   "never_result": false, "order": "auto",
//!                                   "order_as_list": false},
//!               "865933034812510": [{"start": "drop_after"}, {"result": 62, "order": 3}]},
//!   "random":  {"p_503": 0.1, "p_drop_before": 0.05, "p_drop_after": 0.05,
//!               "delay_ms": [0, 300], "seed": 42},
//!   "clock_offset_ms": -660000,
//!   "wrong_secret": {"for_ms": 5000, "platforms": ["pyun"]},
//!   "streak": {"count": 5, "status": 503, "retry_after": 2},
//!   "refuse_connections": {"for_ms": 3000},
//!   "credentials": {"pyun_app_secret": "rotated-secret"},
//!   "count_only": false
//! }
//! ```
//!
//! Platform-wide trouble (a wrong secret for a while, 5xx streaks with `Retry-After`,
//! refused connections, rotated credentials) is described in [`outage`]. Every reply carries
//! a `Date` header by the platforms' clock (`clock_offset_ms` included).

pub mod clock;
pub mod config;
pub mod epeis;
pub mod faults;
pub mod form;
pub mod lbbtech;
pub mod outage;
pub mod outcome;
pub mod pyun;
pub mod record;
pub mod script;
mod server;
pub mod tcec;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{BadSignMode, SimConfig};
pub use faults::RandomFaults;
pub use outage::{Credentials, Streak, WrongSecret};
pub use record::{Platform, PlatformStats, RecordedRequest, Stats};
pub use script::{Action, LbbOrder, LbbScript, SimScript, Step};
pub use server::ServeError;

use server::{Listen, Shared};

/// Binds `addr` and serves the three platforms in background tasks until
/// [`SimHandle::shutdown`] or the handle is dropped.
pub async fn start(addr: SocketAddr, config: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    // A wildcard bind is reachable on loopback; a URL naming 0.0.0.0 is not portable.
    let host = if addr.ip().is_unspecified() {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let shared = Arc::new(Shared::new(config, format!("http://{host}")));
    let (shutdown, stop) = watch::channel(false);
    let task = tokio::spawn(server::serve(listener, shared.clone(), stop));
    Ok(SimHandle {
        addr,
        shared,
        shutdown,
        task: Some(task),
    })
}

/// A running simulator. Dropping it stops the server too.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, also the lbbtech `domain` in start replies.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The full 4pyun replenish URL.
    pub fn pyun_url(&self) -> String {
        format!("{}{}", self.shared.base_url, pyun::PATH)
    }

    /// The full epeis `RepairDosageBack` URL (with its trailing slash).
    pub fn epeis_url(&self) -> String {
        format!("{}{}", self.shared.base_url, epeis::PATH)
    }

    /// `http://127.0.0.1:PORT/open`; the calls are `<this>/newPriceStandardCharge`,
    /// `<this>/query/result`, `<this>/queryChargeOrderDetail`.
    pub fn lbbtech_base_url(&self) -> String {
        format!("{}{}", self.shared.base_url, lbbtech::BASE_PATH)
    }

    /// `http://127.0.0.1:PORT/evcs/v20160701`, the T/CEC base; calls are `<this>/<interface>`.
    pub fn tcec_url(&self) -> String {
        format!("{}{}", self.shared.base_url, tcec::BASE_PATH)
    }

    /// Appends steps for the next requests with this `replenish_order`.
    pub fn script_pyun(&self, key: &str, steps: Vec<Step>) {
        self.shared.lock().scripts.push_pyun(key, steps);
    }

    /// Appends steps for the next requests with this `COM_METERAGE.SETTLEMENT_AID`.
    pub fn script_epeis(&self, key: &str, steps: Vec<Step>) {
        self.shared.lock().scripts.push_epeis(key, steps);
    }

    /// Appends a script for the next start on this `simId` (one script per start).
    pub fn script_lbbtech(&self, sim_id: &str, script: LbbScript) {
        self.shared
            .lock()
            .scripts
            .push_lbbtech(sim_id, vec![script]);
    }

    /// Merges a whole script document, as `POST /_sim/script` does.
    pub fn apply_script(&self, script: SimScript) {
        self.shared.apply_script(script);
    }

    /// Every credential check fails (as if the platform's secrets had been rotated) on these
    /// platforms (empty: all), for `duration` or (`None`) until [`SimHandle::clear_wrong_secret`].
    pub fn set_wrong_secret(&self, duration: Option<Duration>, platforms: &[Platform]) {
        self.apply_script(SimScript {
            wrong_secret: Some(WrongSecret {
                duration,
                platforms: platforms.to_vec(),
                on: true,
            }),
            ..SimScript::default()
        });
    }

    /// Credential checks pass again.
    pub fn clear_wrong_secret(&self) {
        self.apply_script(SimScript {
            wrong_secret: Some(WrongSecret {
                duration: None,
                platforms: Vec::new(),
                on: false,
            }),
            ..SimScript::default()
        });
    }

    /// New platform credentials from now on (a rotation the sender must follow).
    pub fn set_credentials(&self, credentials: Credentials) {
        self.shared.lock().set_credentials(credentials);
    }

    /// The next `streak.count` requests (on its platforms) answer a bare status.
    pub fn set_streak(&self, streak: Streak) {
        self.shared.lock().outages.set_streak(streak);
    }

    /// Keep only request counts ([`SimHandle::stats`]), not each request: constant memory
    /// for benchmarks. The per-key queries see only requests kept before.
    pub fn set_count_only(&self, count_only: bool) {
        self.shared.lock().set_count_only(count_only);
    }

    /// Closes the listening socket, so connects are refused, for `duration` or (`None`)
    /// until [`SimHandle::accept_connections`]; open connections close once their request in
    /// progress is answered. Returns once the socket is closed.
    pub async fn refuse_connections(&self, duration: Option<Duration>) {
        let closed_before = *self.shared.closed.borrow();
        let until = duration.map(|d| tokio::time::Instant::now() + d);
        self.shared.listen.send_replace(Listen::Refuse(until));
        let mut closed = self.shared.closed.subscribe();
        let done = closed.wait_for(|n| *n > closed_before);
        let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
    }

    /// Accepts connections again (same address). Returns once listening.
    pub async fn accept_connections(&self) {
        self.shared.listen.send_replace(Listen::Accept);
        self.wait_accepting(Duration::from_secs(5)).await;
    }

    /// Whether the listening socket is open.
    pub fn accepting(&self) -> bool {
        *self.shared.listening.borrow() && *self.shared.listen.borrow() == Listen::Accept
    }

    /// Waits until the listening socket is open (a timed refusal ended). False on timeout.
    pub async fn wait_accepting(&self, timeout: Duration) -> bool {
        let mut listen = self.shared.listen.subscribe();
        let mut listening = self.shared.listening.subscribe();
        let both = async {
            let _ = listen.wait_for(|l| *l == Listen::Accept).await;
            let _ = listening.wait_for(|open| *open).await;
        };
        tokio::time::timeout(timeout, both).await.is_ok()
    }

    /// Replaces the random faults and reseeds their RNG.
    pub fn set_random_faults(&self, faults: RandomFaults) {
        self.shared.lock().set_random_faults(faults);
    }

    /// Skews the platforms' clock (4pyun's timestamp window is checked against it).
    pub fn set_clock_offset_ms(&self, offset_ms: i64) {
        self.shared.lock().config.clock_offset_ms = offset_ms;
    }

    /// The platforms' clock: ms since the epoch, skew included.
    pub fn now_ms(&self) -> i64 {
        self.shared.lock().now_ms()
    }

    /// A copy of the configuration in force (clock offset and random faults included).
    pub fn config(&self) -> SimConfig {
        self.shared.lock().config.clone()
    }

    /// Every recorded request, in recording order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().records.all().to_vec()
    }

    /// Requests recorded for this platform and key (lbbtech: starts, polls and order
    /// queries of the `simId`).
    pub fn request_count(&self, platform: Platform, key: &str) -> usize {
        self.shared.lock().records.request_count(platform, key)
    }

    /// Requests that changed platform state for this key: 4pyun at most 1 per order; epeis
    /// every booking; lbbtech every start.
    pub fn applied_count(&self, platform: Platform, key: &str) -> usize {
        self.shared.lock().records.applied_count(platform, key)
    }

    /// Distinct keys applied at least once, sorted.
    pub fn applied_keys(&self, platform: Platform) -> Vec<String> {
        self.shared.lock().records.applied_keys(platform)
    }

    /// Counts per platform, as `GET /_sim/stats` serves them.
    pub fn stats(&self) -> Stats {
        self.shared.lock().records.stats()
    }

    /// Waits until at least `n` requests are recorded (in total, all platforms). A request is
    /// recorded once decided, before any scripted delay. False on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let mut recorded = self.shared.recorded.subscribe();
        let reached = recorded.wait_for(|count| *count >= n);
        let outcome = tokio::time::timeout(timeout, reached).await;
        matches!(outcome, Ok(Ok(_)))
    }

    /// Stops accepting, closes every connection and waits for the server task.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}
