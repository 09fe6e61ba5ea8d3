//! How an idle worker learns that something changed without hammering the database.
//!
//! SQLite: any commit, by any process, writes the WAL file. An inotify watch on the
//! database's directory wakes the worker the moment a producer commits, and costs nothing
//! while nothing happens. Where inotify is unavailable (some network filesystems, an
//! exhausted watch limit), a `stat` of the WAL file every `wake_interval` (a syscall, no
//! query) does the same job at a small idle cost. Polling every `poll_interval` stays as the
//! fallback for everything else (due retries, expired leases).
//!
//! Postgres: an insert into `outbox` notifies channel `outbox_new` (a trigger), and the
//! worker `LISTEN`s on it. Notifications sent while the listener is disconnected are lost,
//! so a (re)connected listener wakes the worker once to look, and polling stays the
//! fallback: a broken listener only makes wake-ups as slow as `poll_interval`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::postgres::PgStore;
use super::Store;

/// How long to wait before re-creating a listener that failed.
const LISTEN_RETRY: Duration = Duration::from_secs(5);

pub struct Wake {
    store: Store,
    last: Option<(SystemTime, u64)>,
    wake_interval: Duration,
    /// Set by the listener task (Postgres `LISTEN`, SQLite inotify), started on first use.
    notified: Arc<Notify>,
    listener: Option<JoinHandle<()>>,
    /// SQLite: inotify could not be set up; poll the WAL file's metadata instead.
    stat_polling: bool,
}

impl Wake {
    pub fn new(store: Store, wake_interval: Duration) -> Self {
        let mut w = Wake {
            store,
            last: None,
            wake_interval,
            notified: Arc::new(Notify::new()),
            listener: None,
            stat_polling: false,
        };
        w.last = w.signature();
        w
    }

    fn signature(&self) -> Option<(SystemTime, u64)> {
        self.store.sqlite().and_then(|s| s.wal_signature())
    }

    /// Resolves at `deadline`, or earlier when another writer changed the database.
    pub async fn changed_or(&mut self, deadline: Instant) {
        if let Some(pg) = self.store.postgres() {
            if self.listener.is_none() {
                self.listener = Some(tokio::spawn(listen(pg.clone(), self.notified.clone())));
            }
            // A notification that came while the worker was busy left a permit: this
            // returns at once, and the worker looks.
            tokio::select! {
                _ = self.notified.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            return;
        }
        if let (Some(sq), false) = (self.store.sqlite(), self.stat_polling) {
            if self.listener.is_none() {
                match sq.path().map(|p| watch_wal(p, self.notified.clone())) {
                    Some(Ok(task)) => self.listener = Some(task),
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "inotify unavailable; watching the WAL file by polling its metadata");
                        self.stat_polling = true;
                    }
                    None => self.stat_polling = true,
                }
            }
            if !self.stat_polling {
                tokio::select! {
                    _ = self.notified.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
                return;
            }
        }
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

impl Drop for Wake {
    fn drop(&mut self) {
        if let Some(task) = &self.listener {
            task.abort();
        }
    }
}

/// SQLite: watches the database's directory for writes to its WAL file (or the database
/// file itself, for a producer not in WAL mode) and wakes the worker. The directory is
/// watched rather than the file, since the WAL is created and removed as connections come
/// and go.
fn watch_wal(db: &std::path::Path, notified: Arc<Notify>) -> std::io::Result<JoinHandle<()>> {
    use inotify::{Inotify, WatchMask};
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    let mut wal = name.clone();
    wal.push("-wal");
    let inotify = Inotify::init()?;
    inotify
        .watches()
        .add(&dir, WatchMask::MODIFY | WatchMask::CREATE)?;
    let mut events = inotify.into_event_stream([0u8; 4096])?;
    Ok(tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(event) = events.next().await {
            match event {
                Ok(e)
                    if e.name
                        .as_deref()
                        .is_some_and(|n| n == wal.as_os_str() || n == name.as_os_str()) =>
                {
                    notified.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "inotify watch failed; new rows are seen at the next poll");
                    return;
                }
            }
        }
    }))
}

/// Postgres: `LISTEN`s for new rows and wakes the worker, for as long as the `Wake` lives.
/// Runs as a task of its own, so the worker's `select!` never cancels a read halfway.
async fn listen(pg: PgStore, notified: Arc<Notify>) {
    // Logged once when listening stops working and once when it works again.
    let mut failing = false;
    loop {
        match pg.listener().await {
            Ok(mut listener) => {
                if failing {
                    tracing::info!("listening for new outbox rows again");
                    failing = false;
                }
                // Freshly listening: rows may have arrived unannounced before; look now.
                notified.notify_one();
                let e = loop {
                    match listener.try_recv().await {
                        // A burst of inserts is one wake-up: the claim that follows sees
                        // them all.
                        Ok(Some(_)) => {
                            while listener.next_buffered().is_some() {}
                            notified.notify_one();
                        }
                        // The connection dropped and was re-established; anything sent in
                        // between is lost, so look now.
                        Ok(None) => notified.notify_one(),
                        Err(e) => break e,
                    }
                };
                if !failing {
                    tracing::warn!(error = %e, "lost the listener for new outbox rows; polling until it is back");
                    failing = true;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot listen for new outbox rows; polling until it works");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}
