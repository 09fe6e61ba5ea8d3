//! Logs through tracing: readable text on a terminal, one JSON object per line otherwise
//! (systemd's journal keeps stdout; JSON keeps fields searchable). `RUST_LOG` wins over the
//! config's `log_level`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.with_target(false).init();
    } else {
        builder
            .json()
            .with_current_span(false)
            .flatten_event(true)
            .init();
    }
}
