//! Signals. SIGTERM or SIGINT: stop claiming and finish in-flight work within the grace
//! period; a second one exits at once (leases expire and the rows are delivered again; nothing
//! is lost). SIGHUP: reload the config.

use std::path::PathBuf;

use outbox_core::config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::logging::LogLevel;

/// Installs the SIGTERM and SIGINT handlers now (so a signal that arrives before the worker
/// first waits on it is not lost to the default action) and returns the future that
/// resolves on the first one.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal: exiting now; unfinished rows will be retried after their lease expires");
            std::process::exit(130);
        });
    }
}

/// On each SIGHUP, re-reads and validates the config file; a valid one is sent to the worker
/// (and its log level applied), an invalid one is logged and the old one kept.
pub fn reload_on_sighup(
    path: PathBuf,
    database_url_override: Option<String>,
    log: LogLevel,
) -> mpsc::UnboundedReceiver<Config> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match Config::load(&path) {
                Ok(mut c) => {
                    if let Some(u) = &database_url_override {
                        c.database_url = u.clone();
                    }
                    log.set(c.log_level.as_deref());
                    tracing::info!(path = %path.display(), "SIGHUP: configuration read and valid");
                    if tx.send(c).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: the new configuration is invalid; keeping the running one")
                }
            }
        }
    });
    rx
}
