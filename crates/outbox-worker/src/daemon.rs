//! `outboxd run`: open the store, check the schema, start the admin listener, tell systemd
//! we are ready, and hand over to the worker.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use outbox_core::admin::{self, Admin};
use outbox_core::config::{redact_url, Config};
use outbox_core::metrics::Metrics;
use outbox_core::shutdown::Shutdown;
use outbox_core::store::{OpenOptions, Store};
use outbox_core::worker::{self, RunMode, RunOptions};
use sd_notify::NotifyState;

use crate::{logging, signals};

pub async fn run(
    config_path: &Path,
    url_override: Option<String>,
    until_idle: bool,
    log_format: Option<logging::LogFormat>,
) -> Result<(), String> {
    let mut config = Config::load(config_path).map_err(|e| e.to_string())?;
    if let Some(url) = &url_override {
        config.database_url = url.clone();
    }
    let log = logging::init(config.log_level.as_deref(), log_format);
    let opts = OpenOptions {
        max_connections: if config.database_url.starts_with("sqlite:") {
            1
        } else {
            8
        },
        ..OpenOptions::default()
    };
    let worker_opts = OpenOptions {
        cache_kib: OpenOptions::WORKER_CACHE_KIB,
        ..opts.clone()
    };
    let store = Store::open(&config.database_url, &worker_opts)
        .await
        .map_err(|e| {
            format!(
                "cannot open the outbox database {}: {e}",
                redact_url(&config.database_url)
            )
        })?;
    store
        .require_current_schema(&config.database_url)
        .await
        .map_err(|e| e.to_string())?;

    let metrics = Arc::new(Metrics::default());
    if !config.admin.listen.is_empty() {
        let addr = config
            .admin
            .listen
            .parse()
            .map_err(|e| format!("admin.listen: {e}"))?;
        // A connection of its own: a scrape never waits for, nor holds up, the worker's.
        let admin_store = Store::open(&config.database_url, &opts)
            .await
            .map_err(|e| {
                format!(
                    "cannot open the outbox database {} for the admin listener: {e}",
                    redact_url(&config.database_url)
                )
            })?;
        let admin = Admin::new(admin_store, metrics.clone(), config.admin.stall_after);
        match admin::serve(addr, admin).await {
            Ok(bound) => {
                tracing::info!(%bound, "admin listener: / (the page), /metrics and /healthz")
            }
            // Monitoring is not worth stopping deliveries for.
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot bind the admin listener; running without the page, /metrics and /healthz")
            }
        }
    }

    let mut run_opts = RunOptions::new(if until_idle {
        RunMode::UntilIdle
    } else {
        RunMode::Forever
    });
    run_opts.metrics = metrics;
    run_opts.reload = Some(signals::reload_on_sighup(
        config_path.to_path_buf(),
        url_override,
        log,
    ));
    if let Some(interval) = sd_notify::watchdog_enabled() {
        // Fed from the worker loop itself, so a stuck loop stops the pings; a quarter of
        // the interval leaves room for one slow round.
        let every = interval / 4;
        let last = std::sync::Mutex::new(Instant::now() - every);
        run_opts.heartbeat = Some(Box::new(move || {
            let mut l = last.lock().expect("watchdog lock");
            if l.elapsed() >= every {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                *l = Instant::now();
            }
        }));
    }
    // Handlers first, then READY: systemd may send SIGTERM the moment it sees READY.
    let shutdown = Shutdown::new(signals::shutdown_signal());
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("delivering")]);

    let summary = worker::run(&config, store.clone(), shutdown, run_opts)
        .await
        .map_err(|e| e.to_string())?;
    store.close().await;
    if until_idle {
        println!(
            "run finished: {} delivered ({} with a hint), {} final without delivery, {} retried, {} dead-lettered",
            summary.delivered, summary.hints, summary.done, summary.retried, summary.dead
        );
    }
    Ok(())
}
