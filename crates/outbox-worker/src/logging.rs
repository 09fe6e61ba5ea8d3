//! Logs through tracing: readable text on a terminal, one JSON object per line otherwise
//! (systemd's journal keeps stdout/stderr; JSON keeps fields searchable). `RUST_LOG` wins
//! over the config's `log_level`; the level can change on reload.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log filter of the running process.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

impl LogLevel {
    /// Applies a new `log_level` from a reloaded config, unless `RUST_LOG` pins it.
    pub fn set(&self, level: Option<&str>) {
        if self.from_env {
            return;
        }
        match EnvFilter::try_new(level.unwrap_or("info")) {
            Ok(f) => {
                let _ = self.handle.reload(f);
            }
            Err(e) => {
                tracing::error!(error = %e, "invalid log_level in the reloaded config; keeping the old one")
            }
        }
    }
}

pub fn init(level: Option<&str>) -> LogLevel {
    let env = EnvFilter::try_from_default_env().ok();
    let from_env = env.is_some();
    let filter = env
        .or_else(|| EnvFilter::try_new(level.unwrap_or("info")).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    if std::io::stderr().is_terminal() {
        registry.with(fmt.with_target(false)).init();
    } else {
        registry
            .with(fmt.json().with_current_span(false).flatten_event(true))
            .init();
    }
    LogLevel { handle, from_env }
}
