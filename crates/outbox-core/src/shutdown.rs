//! Graceful shutdown as a small explicit type (after mini-redis): `run` takes a future that
//! resolves when the daemon should stop, so tests pass their own and binaries pass signals.

use std::future::Future;
use std::pin::Pin;

/// Resolves once, when shutdown was requested.
pub struct Shutdown {
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Shutdown {
    pub fn new(signal: impl Future<Output = ()> + Send + 'static) -> Self {
        Shutdown {
            signal: Some(Box::pin(signal)),
        }
    }

    /// A shutdown that never comes (for `--until-idle` runs and tests that end otherwise).
    pub fn never() -> Self {
        Shutdown::new(std::future::pending())
    }

    pub fn requested(&self) -> bool {
        self.signal.is_none()
    }

    /// Waits for the signal; after it fired once, stays pending forever, so it can sit in a
    /// `select!` loop without firing twice.
    pub async fn recv(&mut self) {
        match self.signal.as_mut() {
            Some(s) => {
                s.await;
                self.signal = None;
            }
            None => std::future::pending().await,
        }
    }
}
