//! SIGTERM or SIGINT: stop claiming and finish in-flight work within the grace period.
//! A second signal: exit at once (leases expire and another worker, or the next start,
//! takes the rows; nothing is lost).

use tokio::signal::unix::{signal, SignalKind};

pub async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!(
            "second signal: exiting now; unfinished rows will be retried after their lease expires"
        );
        std::process::exit(130);
    });
}
