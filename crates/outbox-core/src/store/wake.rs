//! How an idle worker learns that something changed without hammering the database.
//!
//! SQLite: any commit, by any process, writes the WAL file, so a `stat` of it every
//! `wake_interval` (a few ms; a syscall, no query) tells when to claim. Polling every
//! `poll_interval` stays as the fallback for everything else (due retries, expired leases).

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::Store;

pub struct Wake {
    store: Store,
    last: Option<(SystemTime, u64)>,
    wake_interval: Duration,
}

impl Wake {
    pub fn new(store: Store, wake_interval: Duration) -> Self {
        let mut w = Wake {
            store,
            last: None,
            wake_interval,
        };
        w.last = w.signature();
        w
    }

    fn signature(&self) -> Option<(SystemTime, u64)> {
        match &self.store {
            Store::Sqlite(s) => s.wal_signature(),
        }
    }

    /// Resolves at `deadline`, or earlier when another writer changed the database.
    pub async fn changed_or(&mut self, deadline: Instant) {
        loop {
            let next = (Instant::now() + self.wake_interval).min(deadline);
            tokio::time::sleep_until(next).await;
            let sig = self.signature();
            if sig != self.last {
                self.last = sig;
                return;
            }
            if Instant::now() >= deadline {
                return;
            }
        }
    }

    /// Records the current state as seen, after the worker's own writes.
    pub fn mark_seen(&mut self) {
        self.last = self.signature();
    }
}
