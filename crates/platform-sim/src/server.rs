//! The HTTP side: one hyper HTTP/1.1 server for all three platforms and the `/_sim/` control
//! API. Each request is decided under one lock (script or random step, protocol logic,
//! record), then delayed and answered — or its connection dropped — outside it.
//!
//! Dropping works by failing the hyper service: hyper then closes the connection without
//! writing a response, which a client sees as a connection closed before the reply.
//!
//! Refusing connections closes the listening socket (connects are refused) and closes every
//! open connection once its request in progress is answered; accepting again binds the same
//! address anew. Every reply carries a `Date` header by the platforms' (skewed) clock.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, DATE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::{http_date, system_now_ms};
use crate::config::SimConfig;
use crate::epeis;
use crate::faults::RandomFaults;
use crate::form::Form;
use crate::lbbtech::{self, Call, Lbb};
use crate::outage::{Credentials, Outages};
use crate::outcome::Outcome;
use crate::pyun;
use crate::record::{Platform, RecordedRequest, Records};
use crate::script::{Action, Scripts, SimScript};

/// Bodies larger than this are not something any of the platforms accepts.
const MAX_BODY_BYTES: usize = 1 << 20;

/// What the garbage step sends: what an overloaded gateway in front of a platform answers.
const GARBAGE: &str = "<html><head><title>502 Bad Gateway</title></head>\
                       <body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>";

/// Why the service failed a request, which makes hyper close the connection unanswered.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("connection dropped by a fault step")]
    Dropped,
    #[error("reading the request body")]
    Body(#[source] Box<dyn StdError + Send + Sync>),
}

type Reply = Response<Full<Bytes>>;

/// Mutable simulator state, behind one lock.
pub(crate) struct State {
    pub(crate) config: SimConfig,
    pub(crate) scripts: Scripts,
    fault_rng: StdRng,
    pyun: pyun::Ledger,
    epeis: epeis::Ledger,
    lbb: Lbb,
    pub(crate) tcec: crate::tcec::TcecSim,
    pub(crate) records: Records,
    pub(crate) outages: Outages,
}

impl State {
    pub(crate) fn new(config: SimConfig) -> Self {
        let fault_rng = fault_rng(&config.random);
        let mut records = Records::default();
        records.set_count_only(config.count_only);
        State {
            config,
            scripts: Scripts::default(),
            fault_rng,
            pyun: pyun::Ledger::default(),
            epeis: epeis::Ledger::default(),
            lbb: Lbb::default(),
            tcec: crate::tcec::TcecSim::default(),
            records,
            outages: Outages::default(),
        }
    }

    pub(crate) fn set_random_faults(&mut self, faults: RandomFaults) {
        self.fault_rng = fault_rng(&faults);
        self.config.random = faults;
    }

    pub(crate) fn apply_script(&mut self, script: SimScript) {
        for (key, steps) in script.pyun {
            self.scripts.push_pyun(&key, steps);
        }
        for (key, steps) in script.epeis {
            self.scripts.push_epeis(&key, steps);
        }
        for (sim_id, scripts) in script.lbbtech {
            self.scripts.push_lbbtech(&sim_id, scripts);
        }
        self.tcec.apply_script(script.tcec);
        if let Some(random) = script.random {
            self.set_random_faults(random);
        }
        if let Some(offset) = script.clock_offset_ms {
            self.config.clock_offset_ms = offset;
        }
        if let Some(wrong) = script.wrong_secret {
            self.outages.set_wrong_secret(wrong, Instant::now());
        }
        if let Some(streak) = script.streak {
            self.outages.set_streak(streak);
        }
        if let Some(credentials) = script.credentials {
            self.set_credentials(credentials);
        }
        if let Some(count_only) = script.count_only {
            self.set_count_only(count_only);
        }
    }

    pub(crate) fn set_credentials(&mut self, credentials: Credentials) {
        let Credentials {
            pyun_app_secret,
            epeis_channel_did,
            epeis_dynamic_key,
            lbbtech_token,
        } = credentials;
        let config = &mut self.config;
        for (new, old) in [
            (pyun_app_secret, &mut config.pyun_app_secret),
            (epeis_channel_did, &mut config.epeis_channel_did),
            (epeis_dynamic_key, &mut config.epeis_dynamic_key),
            (lbbtech_token, &mut config.lbbtech_token),
        ] {
            if let Some(new) = new {
                *old = new;
            }
        }
    }

    pub(crate) fn set_count_only(&mut self, count_only: bool) {
        self.config.count_only = count_only;
        self.records.set_count_only(count_only);
    }

    /// The platforms' clock: system time plus the configured skew.
    pub(crate) fn now_ms(&self) -> i64 {
        system_now_ms().saturating_add(self.config.clock_offset_ms)
    }
}

fn fault_rng(faults: &RandomFaults) -> StdRng {
    match faults.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_os_rng(),
    }
}

/// Whether the server should accept connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listen {
    Accept,
    /// Refuse until then (`None`: until told).
    Refuse(Option<tokio::time::Instant>),
}

/// State shared by the handle and every connection.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// How many requests are recorded; watched by `wait_for_requests`.
    pub(crate) recorded: watch::Sender<usize>,
    pub(crate) base_url: String,
    /// What is asked: accept or refuse connections.
    pub(crate) listen: watch::Sender<Listen>,
    /// What is done: the listening socket is open.
    pub(crate) listening: watch::Sender<bool>,
    /// How many times the listening socket was closed.
    pub(crate) closed: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(config: SimConfig, base_url: String) -> Self {
        Shared {
            state: Mutex::new(State::new(config)),
            recorded: watch::Sender::new(0),
            base_url,
            listen: watch::Sender::new(Listen::Accept),
            listening: watch::Sender::new(true),
            closed: watch::Sender::new(0),
        }
    }

    /// Applies a script document; a refusal in it starts after the rest is applied.
    pub(crate) fn apply_script(&self, mut script: SimScript) {
        let refusal = script.refuse_connections.take();
        self.lock().apply_script(script);
        if let Some(refusal) = refusal {
            let until = tokio::time::Instant::now() + Duration::from_millis(refusal.for_ms);
            self.listen.send_replace(Listen::Refuse(Some(until)));
        }
    }

    /// The state lock. A panic while holding it leaves plain data behind, still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Accepts connections until `shutdown` turns true, then drops them all; closes and reopens
/// the listening socket as [`Shared::listen`] asks.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let mut listen = shared.listen.subscribe();
    // Connections started before a refusal close when this changes.
    let (generation, _) = watch::channel(0u64);
    let mut listener = listener;
    loop {
        if !accept(&listener, &shared, &mut shutdown, &mut listen, &generation).await {
            break;
        }
        drop(listener);
        shared.listening.send_replace(false);
        shared.closed.send_modify(|n| *n += 1);
        generation.send_modify(|g| *g += 1);
        if !refusal_ends(&shared, &mut shutdown, &mut listen).await {
            break;
        }
        let Some(rebound) = rebind(addr, &mut shutdown).await else {
            break;
        };
        listener = rebound;
        shared.listening.send_replace(true);
    }
}

/// Accepts until shutdown (false) or a refusal (true).
async fn accept(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    shutdown: &mut watch::Receiver<bool>,
    listen: &mut watch::Receiver<Listen>,
    generation: &watch::Sender<u64>,
) -> bool {
    loop {
        let stream = tokio::select! {
            _ = stopped(shutdown) => return false,
            _ = refused(listen) => return true,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(_) => {
                    // Out of descriptors or similar: back off rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        let mut generation = generation.subscribe();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(shared.clone(), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                // The error is the fault step's own drop, or the client going away.
                _ = connection.as_mut() => return,
                _ = stopped(&mut shutdown) => return,
                _ = generation.changed() => {}
            }
            // Refusing: answer the request in progress, if any, then close.
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                _ = connection => {}
                _ = stopped(&mut shutdown) => {}
            }
        });
    }
}

/// Resolves once connections are to be refused.
async fn refused(listen: &mut watch::Receiver<Listen>) {
    let _ = listen.wait_for(|l| *l != Listen::Accept).await;
}

/// Waits until the refusal ends (true) or shutdown (false).
async fn refusal_ends(
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
    listen: &mut watch::Receiver<Listen>,
) -> bool {
    loop {
        let current = *listen.borrow_and_update();
        let Listen::Refuse(until) = current else {
            return true;
        };
        let deadline = async {
            match until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopped(shutdown) => return false,
            changed = listen.changed() => if changed.is_err() { return false },
            _ = deadline => {
                shared.listen.send_if_modified(|l| {
                    let expired = *l == current;
                    if expired {
                        *l = Listen::Accept;
                    }
                    expired
                });
            }
        }
    }
}

/// Binds `addr` again (the port may take a moment to be free), or gives up on shutdown.
async fn rebind(addr: SocketAddr, shutdown: &mut watch::Receiver<bool>) -> Option<TcpListener> {
    loop {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return Some(listener);
        }
        tokio::select! {
            _ = stopped(shutdown) => return None,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
}

/// Resolves once shutdown is requested (or the handle is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The borrow guard is dropped here so the future stays `Send`.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Which platform call a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Pyun,
    Epeis,
    Lbbtech(Call),
}

fn route(path: &str) -> Option<Route> {
    if path == pyun::PATH {
        return Some(Route::Pyun);
    }
    // Servers commonly treat the trailing slash as optional; the documented path has one.
    if path == epeis::PATH || Some(path) == epeis::PATH.strip_suffix('/') {
        return Some(Route::Epeis);
    }
    Call::from_path(path).map(Route::Lbbtech)
}

impl Route {
    fn platform(self) -> Platform {
        match self {
            Route::Pyun => Platform::Pyun,
            Route::Epeis => Platform::Epeis,
            Route::Lbbtech(_) => Platform::Lbbtech,
        }
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Reply, ServeError> {
    let mut reply = respond(&shared, request).await?;
    // By the platforms' clock, so a client can see how far off its own is.
    if let Ok(date) = HeaderValue::from_str(&http_date(shared.lock().now_ms())) {
        reply.headers_mut().insert(DATE, date);
    }
    Ok(reply)
}

async fn respond(shared: &Arc<Shared>, request: Request<Incoming>) -> Result<Reply, ServeError> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(ServeError::Body)?
        .to_bytes();
    let path = parts.uri.path();
    if let Some(control) = path.strip_prefix("/_sim/") {
        return Ok(control_api(shared, &parts.method, control, &body));
    }
    if let Some(interface) = path
        .strip_prefix(crate::tcec::BASE_PATH)
        .and_then(|p| p.strip_prefix('/'))
    {
        return crate::tcec::handle(
            shared,
            &parts.method,
            &parts.headers,
            path,
            interface,
            &body,
        )
        .await;
    }
    let Some(route) = route(path) else {
        return Ok(text(StatusCode::NOT_FOUND, "no such platform endpoint"));
    };
    if parts.method != Method::POST {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "POST only"));
    }
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let request = PlatformRequest {
        route,
        method: parts.method.as_str(),
        path,
        query: parts.uri.query(),
        content_type,
        body: &body,
    };
    let (delay, delivery) = decide(shared, &request);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    delivery.ok_or(ServeError::Dropped)
}

/// A platform request, fully read.
struct PlatformRequest<'a> {
    route: Route,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    content_type: Option<&'a str>,
    body: &'a [u8],
}

/// Decides, applies and records one request under the lock. Returns the delay and the reply
/// to send, `None` meaning drop the connection.
fn decide(shared: &Shared, request: &PlatformRequest<'_>) -> (Option<Duration>, Option<Reply>) {
    let mut state = shared.lock();
    let state = &mut *state;
    // epeis reads a JSON body, the others form fields; `params` is what gets recorded.
    let (form, body_json) = match request.route {
        Route::Epeis => (
            Form::default(),
            serde_json::from_slice(request.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(request.body).into())),
        ),
        _ => (
            Form::parse(request.query, request.content_type, request.body),
            Value::Null,
        ),
    };
    let params = match request.route {
        Route::Epeis => body_json.clone(),
        _ => form.to_json(),
    };

    // A streak (a gateway in front of the platform) comes first and consumes no script.
    let platform = request.route.platform();
    let streak_step = state.outages.next_streak(platform);
    let scripted = streak_step.is_none();
    // The key, the scripted step and, for an lbbtech start, its script.
    let mut lbb_script = None;
    let (key, scripted_step, covered) = match request.route {
        Route::Pyun => {
            let key = form.get("replenish_order").map(str::to_owned);
            let step = key
                .as_deref()
                .filter(|_| scripted)
                .and_then(|k| state.scripts.next_pyun(k));
            (key, step, false)
        }
        Route::Epeis => {
            let key = epeis::key(&body_json);
            let step = key
                .as_deref()
                .filter(|_| scripted)
                .and_then(|k| state.scripts.next_epeis(k));
            (key, step, false)
        }
        Route::Lbbtech(Call::Start) => {
            let key = form.get("simId").map(str::to_owned);
            let script = key
                .as_deref()
                .filter(|_| scripted)
                .and_then(|k| state.scripts.next_lbbtech(k));
            let step = script.as_ref().map(|s| s.start.clone());
            lbb_script = script;
            (key, step, false)
        }
        Route::Lbbtech(call) => {
            let (key, covered) = state.lbb.context(call, &form);
            (key, None, covered)
        }
    };
    let from_script = scripted_step.is_some() || streak_step.is_some();
    let step = match (streak_step, scripted_step) {
        (Some(step), _) | (None, Some(step)) => Some(step),
        (None, None) if covered => None,
        (None, None) => state.config.random.draw(&mut state.fault_rng),
    };
    let action = step.as_ref().map_or(&Action::Ok, |s| &s.action);

    let seqno = format!("{:016x}", rand::rng().random::<u64>());
    let normal = |state: &mut State| -> Outcome {
        let now_ms = state.now_ms();
        // A wrong secret: the platform checks against credentials the sender does not have.
        let rotated;
        let config = if state.outages.wrong_secret(platform, Instant::now()) {
            rotated = wrong_credentials(&state.config);
            &rotated
        } else {
            &state.config
        };
        match request.route {
            Route::Pyun => state.pyun.handle(config, &form, now_ms, &seqno),
            Route::Epeis => state
                .epeis
                .handle(config, request.content_type, request.body),
            Route::Lbbtech(Call::Start) => state.lbb.start(
                config,
                &form,
                lbb_script.as_ref(),
                &shared.base_url,
                Instant::now(),
                now_ms,
            ),
            Route::Lbbtech(Call::Result) => state.lbb.poll(config, &form, Instant::now()),
            Route::Lbbtech(Call::Order) => state.lbb.order_detail(config, &form),
        }
    };

    let (outcome, delivery): (Option<Outcome>, Option<Reply>) = match action {
        Action::Ok => {
            let outcome = normal(state);
            let reply = json(&outcome.reply);
            (Some(outcome), Some(reply))
        }
        Action::DropAfter => (Some(normal(state)), None),
        Action::DropBefore => (None, None),
        Action::Reply {
            code,
            message,
            hint,
        } => {
            let body = scripted_reply(request.route, code, message, hint, &seqno);
            let reply = json(&body);
            (Some(Outcome::rejected(code.clone(), body)), Some(reply))
        }
        Action::Http {
            status,
            retry_after,
        } => (None, Some(bare(*status, *retry_after))),
        Action::Garbage => (
            None,
            Some(with_type(StatusCode::OK, "text/html", GARBAGE.into())),
        ),
    };

    let record = RecordedRequest {
        seq: 0,
        received_at_ms: system_now_ms(),
        platform: request.route.platform(),
        method: request.method.to_owned(),
        path: request.path.to_owned(),
        key,
        params,
        http_status: delivery.as_ref().map(|r| r.status().as_u16()),
        reply_code: outcome.as_ref().map(|o| o.code.clone()),
        reply: outcome.as_ref().map(|o| o.reply.clone()),
        applied: outcome.as_ref().is_some_and(|o| o.applied),
        duplicate: outcome.as_ref().is_some_and(|o| o.duplicate),
        fault_random: step.is_some() && !from_script,
        fault: step.clone(),
    };
    let count = state.records.push(record);
    // Sent under the lock so the watched count never goes backwards.
    shared.recorded.send_replace(count);
    (step.and_then(|s| s.delay), delivery)
}

/// The configuration with every credential changed, so every credential check fails.
fn wrong_credentials(config: &SimConfig) -> SimConfig {
    let mut wrong = config.clone();
    for secret in [
        &mut wrong.pyun_app_secret,
        &mut wrong.epeis_dynamic_key,
        &mut wrong.lbbtech_token,
    ] {
        secret.push_str("-rotated");
    }
    wrong
}

/// A scripted error reply in the platform's own shape.
fn scripted_reply(
    route: Route,
    code: &str,
    message: &Option<String>,
    hint: &Option<String>,
    seqno: &str,
) -> Value {
    match route {
        Route::Pyun => pyun::scripted_reply(code, message.as_deref(), hint.as_deref(), seqno),
        Route::Epeis => epeis::reply(code, message.as_deref().unwrap_or_default()),
        Route::Lbbtech(_) => lbbtech::error(code, message.as_deref().unwrap_or("操作失败")),
    }
}

fn control_api(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Reply {
    match (method, path) {
        (&Method::POST, "script") => match serde_json::from_slice::<SimScript>(body) {
            Ok(script) => {
                shared.apply_script(script);
                json(&serde_json::json!({"ok": true}))
            }
            Err(e) => with_type(
                StatusCode::BAD_REQUEST,
                "application/json",
                serde_json::json!({"ok": false, "error": e.to_string()}).to_string(),
            ),
        },
        (&Method::GET, "requests") => json(&serde_json::json!(shared.lock().records.all())),
        (&Method::GET, "stats") => json(&serde_json::json!(shared.lock().records.stats())),
        _ => text(
            StatusCode::NOT_FOUND,
            "control API: POST /_sim/script, GET /_sim/requests, GET /_sim/stats",
        ),
    }
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

fn json(body: &Value) -> Reply {
    with_type(
        StatusCode::OK,
        "application/json;charset=UTF-8",
        body.to_string(),
    )
}

fn text(status: StatusCode, body: &str) -> Reply {
    with_type(status, "text/plain; charset=utf-8", body.to_owned())
}

fn bare(status: u16, retry_after: Option<u64>) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    if let Some(secs) = retry_after {
        reply
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    reply
}
