//! The store's contract, one set of test bodies run against both backends.
//!
//! `store_tests!` turns each `async fn name(db: &Db)` below into `sqlite::name` (a fresh
//! SQLite file in a temp dir) and `postgres::name` (a fresh database on the cluster named by
//! `OUTBOX_TEST_PG_URL`, e.g. from `scripts/pg-cluster.sh start DIR`). Without that variable
//! the Postgres tests print a note and pass, except in CI (`CI` set), where they fail:
//! there they must never be skipped silently. Tests that only make sense on one backend
//! are named `sqlite_*` / `postgres_*`.
//!
//! ```text
//! url=$(scripts/pg-cluster.sh start /tmp/outbox-pg)
//! OUTBOX_TEST_PG_URL=$url cargo test -p outbox-core --test store
//! scripts/pg-cluster.sh stop /tmp/outbox-pg
//! ```

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_core::clock::now_ms;
use outbox_core::event::{ClaimedRow, EventType, NewEvent};
use outbox_core::outcome::AttemptInfo;
use outbox_core::store::filter::{RowFilter, RowState, TimeField};
use outbox_core::store::ops::Place;
use outbox_core::store::postgres::{self as pg_store, PgStore};
use outbox_core::store::sqlite as sqlite_store;
use outbox_core::store::wake::Wake;
use outbox_core::store::{
    Action, Completion, DeadKind, Engine, OpenOptions, SchemaState, SinkStats, Store, StoreError,
};
use sqlx::Connection;
use tokio::time::Instant;

const LEASE: i64 = 60_000;

type BoxFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A fresh, empty database for one test.
struct Db {
    store: Store,
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl Db {
    async fn sqlite(migrated: bool) -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
        let store = Store::open(
            &url,
            &OpenOptions {
                create: true,
                ..OpenOptions::default()
            },
        )
        .await
        .expect("opening a fresh SQLite database");
        let db = Db {
            store,
            url,
            cleanup: Cleanup::Sqlite(dir),
        };
        if migrated {
            db.store.migrate().await.expect("migrating");
        }
        db
    }

    /// `None` (with a note) when no cluster is configured, outside CI.
    async fn postgres(migrated: bool) -> Option<Db> {
        let admin_url = match std::env::var("OUTBOX_TEST_PG_URL") {
            Ok(u) => u,
            Err(_) if std::env::var_os("CI").is_some() => panic!(
                "OUTBOX_TEST_PG_URL is not set: in CI the Postgres store tests must run \
                 (start a cluster with scripts/pg-cluster.sh start DIR)"
            ),
            Err(_) => {
                eprintln!(
                    "note: skipping a Postgres store test: OUTBOX_TEST_PG_URL is not set \
                     (url=$(scripts/pg-cluster.sh start /tmp/outbox-pg))"
                );
                return None;
            }
        };
        let name = format!("t_{}_{:08x}", std::process::id(), rand::random::<u32>());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connecting to OUTBOX_TEST_PG_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("creating a test database");
        admin.close().await.ok();
        let mut url = url::Url::parse(&admin_url).expect("OUTBOX_TEST_PG_URL is a URL");
        url.set_path(&format!("/{name}"));
        let url = url.to_string();
        let store = Store::open(&url, &OpenOptions::default())
            .await
            .expect("opening the test database");
        let db = Db {
            store,
            url,
            cleanup: Cleanup::Postgres { admin_url, name },
        };
        if migrated {
            db.store.migrate().await.expect("migrating");
        }
        Some(db)
    }

    fn pg(&self) -> &PgStore {
        self.store.postgres().expect("a Postgres store")
    }

    fn sqlite_path(&self) -> PathBuf {
        match &self.cleanup {
            Cleanup::Sqlite(dir) => dir.path().join("outbox.db"),
            Cleanup::Postgres { .. } => panic!("not a SQLite store"),
        }
    }

    /// Runs a test body, then cleans up, also when the body panics (the panic is passed on).
    async fn run(self, body: for<'a> fn(&'a Db) -> BoxFuture<'a>) {
        let db = Arc::new(self);
        let handle = db.clone();
        let outcome = tokio::spawn(async move { body(&handle).await }).await;
        match Arc::try_unwrap(db) {
            Ok(db) => db.finish().await,
            Err(_) => panic!("the test body kept its Db alive"),
        }
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    /// Closes the store and drops a Postgres test database.
    async fn finish(self) {
        self.store.close().await;
        if let Cleanup::Postgres { admin_url, name } = &self.cleanup {
            let mut admin = sqlx::PgConnection::connect(admin_url)
                .await
                .expect("connecting to OUTBOX_TEST_PG_URL");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await
                .expect("dropping the test database");
        }
    }
}

/// Runs a Postgres-only test body on a fresh, migrated database (or skips, see `Db::postgres`).
async fn on_postgres(body: for<'a> fn(&'a Db) -> BoxFuture<'a>) {
    if let Some(db) = Db::postgres(true).await {
        db.run(body).await;
    }
}

/// Generates `sqlite::NAME` and `postgres::NAME` for each `async fn NAME(db: &Db)`; a name
/// followed by `(unmigrated)` gets a database without the schema.
macro_rules! store_tests {
    ($($name:ident $(($unmigrated:ident))?),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::Db::sqlite(store_tests!(@migrated $($unmigrated)?)).await;
                    db.run(|db| Box::pin(super::$name(db))).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(db) = super::Db::postgres(store_tests!(@migrated $($unmigrated)?)).await else {
                        return;
                    };
                    db.run(|db| Box::pin(super::$name(db))).await;
                }
            )*
        }
    };
    (@migrated) => { true };
    (@migrated unmigrated) => { false };
}

store_tests!(
    enqueue_ignores_a_duplicate_key,
    enqueue_in_a_producer_transaction,
    claim_returns_due_rows_only_and_counts_attempts,
    not_before_is_the_first_due_time,
    claim_respects_the_batch_limit_and_due_order,
    expired_lease_is_reclaimed_in_doubt,
    complete_applies_each_action,
    completion_with_a_wrong_owner_is_not_applied,
    ordering_key_one_in_flight_in_insertion_order,
    unknown_sinks_are_dead_lettered,
    requeue_keeps_history_and_refuses_a_duplicate_key,
    requeued_row_waits_for_the_in_flight_row_of_its_key,
    requeue_resumes_a_flow_from_its_last_state,
    purge_dead_and_prune_finished,
    paused_sinks,
    a_claim_skips_a_paused_sink,
    schema_state_empty_then_current(unmigrated),
    stats_figures,
    concurrent_claimers_claim_each_row_once,
    ordering_keys_hold_under_concurrent_claimers,
    wake_on_new_rows,
    cycle_records_verdicts_then_claims,
    a_live_workers_rows_are_renewed_and_never_reclaimed_from_it,
    release_unsent_gives_back_rows_claimed_but_not_sent,
    dead_kind_is_backfilled_and_written(unmigrated),
    known_keys_are_never_accepted_twice,
    an_oversized_payload_is_not_loaded,
    unconfigured_sinks_are_held_until_max_age,
    a_requeued_row_gets_a_fresh_age_clock,
    older_rows_of_a_supersede_key_are_superseded,
    dead_latest_lists_the_newest_dead_rows_first,
    operators_filters_find_rows_in_the_outbox_and_the_dead_letters,
    cancel_finishes_pending_rows_only_keeping_history_and_key,
    make_due_ends_a_backoff_and_probe_requests_reach_the_daemon,
    delete_dead_removes_chosen_rows_and_their_history,
    a_row_due_behind_the_claim_cursor_is_still_claimed,
    open_rows_count_pending_and_in_flight_only,
);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn ev(sink: &str, key: &str) -> NewEvent {
    NewEvent {
        sink: sink.into(),
        event_type: EventType::ChargeEnd,
        idempotency_key: key.into(),
        payload: format!(r#"{{"order":"{key}"}}"#),
        ordering_key: None,
        not_before: None,
        supersede_key: None,
    }
}

fn keyed(sink: &str, key: &str, ordering_key: &str) -> NewEvent {
    NewEvent {
        ordering_key: Some(ordering_key.into()),
        ..ev(sink, key)
    }
}

fn later(sink: &str, key: &str, not_before: i64) -> NewEvent {
    NewEvent {
        not_before: Some(not_before),
        ..ev(sink, key)
    }
}

/// A completion as the worker writes it: with an attempt history entry, except a release.
fn completion(row: &ClaimedRow, action: Action) -> Completion {
    let (label, info) = match &action {
        Action::Release { .. } => ("released", None),
        a => {
            let label = match a {
                Action::Delivered { .. } => "delivered",
                Action::Done { .. } => "completed",
                Action::Retry { .. } => "retry",
                Action::Continue { .. } => "continue",
                _ => "permanent",
            };
            let info = AttemptInfo {
                started_at: now_ms(),
                duration_ms: 12,
                duration_us: 12_000,
                http_status: Some(200),
                reply_code: Some("0".into()),
                hint: None,
                reply: Some(r#"{"code":0}"#.into()),
                error: None,
            };
            (label, Some(info))
        }
    };
    Completion {
        id: row.id,
        sink: row.sink.clone(),
        attempt: row.attempts,
        action,
        info,
        outcome_label: label,
    }
}

fn delivered() -> Action {
    Action::Delivered {
        hint: None,
        result: None,
    }
}

fn dead(reason: &str) -> Action {
    Action::Dead {
        kind: DeadKind::Permanent,
        reason: reason.into(),
        last_reply: Some("HTTP 400".into()),
    }
}

fn keys(rows: &[ClaimedRow]) -> Vec<&str> {
    rows.iter().map(|r| r.idempotency_key.as_str()).collect()
}

async fn claim(s: &Store, sink: &str, owner: &str, limit: u32, now: i64) -> Vec<ClaimedRow> {
    s.claim(sink, owner, limit, now, now + LEASE)
        .await
        .expect("claim")
}

async fn complete(s: &Store, owner: &str, batch: Vec<Completion>, now: i64) -> u64 {
    s.cycle(owner, &batch, &[], &[], now, now + LEASE)
        .await
        .expect("complete")
        .0
}

async fn status(s: &Store, sink: &str, key: &str) -> String {
    s.row(sink, key)
        .await
        .expect("row")
        .map(|r| r.status)
        .unwrap_or_else(|| "gone".into())
}

async fn sink_stats(s: &Store, sink: &str, now: i64) -> SinkStats {
    s.stats(now)
        .await
        .expect("stats")
        .into_iter()
        .find(|st| st.sink == sink)
        .unwrap_or_default()
}

/// Enqueues many rows in one producer transaction, through the backend's `enqueue_in`.
async fn enqueue_all(s: &Store, events: &[NewEvent]) {
    match s.engine() {
        Engine::Sqlite(st) => {
            let mut tx = st
                .pool()
                .begin_with("BEGIN IMMEDIATE")
                .await
                .expect("begin");
            for e in events {
                sqlite_store::enqueue_in(&mut *tx, e)
                    .await
                    .expect("enqueue_in");
            }
            tx.commit().await.expect("commit");
        }
        Engine::Postgres(st) => {
            let mut tx = st.pool().begin().await.expect("begin");
            for e in events {
                pg_store::enqueue_in(&mut *tx, e).await.expect("enqueue_in");
            }
            tx.commit().await.expect("commit");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Both backends
// ---------------------------------------------------------------------------------------

async fn enqueue_ignores_a_duplicate_key(db: &Db) {
    let s = &db.store;
    assert!(s.enqueue(&ev("pyun", "k1")).await.unwrap());
    let changed = NewEvent {
        payload: r#"{"changed":true}"#.into(),
        ..ev("pyun", "k1")
    };
    assert!(
        !s.enqueue(&changed).await.unwrap(),
        "same sink and key: ignored"
    );
    assert!(
        s.enqueue(&ev("epeis", "k1")).await.unwrap(),
        "keys are per sink"
    );
    let r = s.row("pyun", "k1").await.unwrap().expect("the row");
    assert_eq!(
        (r.status.as_str(), r.attempts, r.event_type.as_str()),
        ("pending", 0, "charge_end")
    );
    let rows = claim(s, "pyun", "w", 10, now_ms()).await;
    assert_eq!(
        rows.len(),
        1,
        "one row for pyun, the duplicate was not added"
    );
    assert_eq!(
        rows[0].payload,
        ev("pyun", "k1").payload,
        "the first payload wins"
    );
}

async fn enqueue_in_a_producer_transaction(db: &Db) {
    let s = &db.store;
    // Rolled back: the event goes with the producer's business rows.
    match s.engine() {
        Engine::Sqlite(st) => {
            let mut tx = st.pool().begin().await.unwrap();
            assert!(
                sqlite_store::enqueue_in(&mut *tx, &ev("pyun", "rolled-back"))
                    .await
                    .unwrap()
            );
            tx.rollback().await.unwrap();
        }
        Engine::Postgres(st) => {
            let mut tx = st.pool().begin().await.unwrap();
            assert!(pg_store::enqueue_in(&mut *tx, &ev("pyun", "rolled-back"))
                .await
                .unwrap());
            tx.rollback().await.unwrap();
        }
    }
    assert_eq!(s.row("pyun", "rolled-back").await.unwrap(), None);
    enqueue_all(s, &[ev("pyun", "a"), ev("pyun", "b"), ev("pyun", "a")]).await;
    assert_eq!(sink_stats(s, "pyun", now_ms()).await.pending, 2);
}

async fn claim_returns_due_rows_only_and_counts_attempts(db: &Db) {
    let s = &db.store;
    let before = now_ms();
    s.enqueue(&ev("pyun", "due")).await.unwrap();
    s.enqueue(&later("pyun", "later", before + 60_000))
        .await
        .unwrap();
    s.enqueue(&ev("epeis", "other-sink")).await.unwrap();
    let now = now_ms();

    let rows = claim(s, "pyun", "w1", 10, now).await;
    assert_eq!(keys(&rows), ["due"]);
    let r = &rows[0];
    assert_eq!(r.attempts, 1, "the claim counts the attempt");
    assert!(!r.in_doubt);
    assert_eq!(r.flow_state, None);
    assert_eq!(r.sink, "pyun");
    assert_eq!(r.event_type, "charge_end");
    assert!(
        (before - 5_000..=now + 5_000).contains(&r.created_at),
        "created_at defaults to now (epoch ms), got {}",
        r.created_at
    );
    let view = s.row("pyun", "due").await.unwrap().unwrap();
    assert_eq!((view.status.as_str(), view.attempts), ("in_flight", 1));

    assert!(
        claim(s, "pyun", "w2", 10, now).await.is_empty(),
        "a row in flight is not claimed again"
    );
    assert_eq!(
        keys(&claim(s, "pyun", "w1", 10, before + 60_000).await),
        ["later"]
    );
    assert_eq!(
        keys(&claim(s, "epeis", "w1", 10, now).await),
        ["other-sink"]
    );
}

async fn not_before_is_the_first_due_time(db: &Db) {
    let s = &db.store;
    let t = now_ms() + 5_000;
    s.enqueue(&later("pyun", "future", t)).await.unwrap();
    s.enqueue(&later("pyun", "past", t - 3_600_000))
        .await
        .unwrap();
    assert_eq!(
        s.row("pyun", "future")
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at,
        t
    );
    assert_eq!(
        s.row("pyun", "past")
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at,
        t - 3_600_000
    );
    assert_eq!(keys(&claim(s, "pyun", "w", 10, t - 1).await), ["past"]);
    assert_eq!(keys(&claim(s, "pyun", "w", 10, t).await), ["future"]);
}

async fn claim_respects_the_batch_limit_and_due_order(db: &Db) {
    let s = &db.store;
    let now = now_ms();
    // Inserted first (smallest id), but due later than the rest, which are due since 0.
    let mut events = vec![later("pyun", "due-at-1000", 1_000)];
    events.extend((0..10).map(|i| ev("pyun", &format!("r{i}"))));
    enqueue_all(s, &events).await;

    assert_eq!(
        keys(&claim(s, "pyun", "w", 3, now).await),
        ["r0", "r1", "r2"],
        "the 3 most overdue"
    );
    assert_eq!(
        keys(&claim(s, "pyun", "w", 3, now).await),
        ["r3", "r4", "r5"]
    );
    assert_eq!(
        keys(&claim(s, "pyun", "w", 100, now).await),
        ["due-at-1000", "r6", "r7", "r8", "r9"],
        "returned in id order"
    );
    assert!(claim(s, "pyun", "w", 100, now).await.is_empty());
}

async fn expired_lease_is_reclaimed_in_doubt(db: &Db) {
    let s = &db.store;
    s.enqueue(&ev("pyun", "k")).await.unwrap();
    let now = now_ms();
    let rows = s.claim("pyun", "w1", 10, now, now + 1_000).await.unwrap();
    assert_eq!(rows.len(), 1);

    assert_eq!(
        s.reclaim_expired(now + 999, "", &[]).await.unwrap(),
        0,
        "lease still valid"
    );
    assert_eq!(s.reclaim_expired(now + 1_001, "", &[]).await.unwrap(), 1);
    let view = s.row("pyun", "k").await.unwrap().unwrap();
    assert_eq!(view.status, "pending");
    assert_eq!(view.next_attempt_at, now + 1_001);
    let err = view.last_error.unwrap();
    assert!(
        err.contains("lease of worker w1 expired"),
        "last_error: {err}"
    );

    let again = claim(s, "pyun", "w2", 10, now + 1_001).await;
    assert_eq!(keys(&again), ["k"]);
    assert!(
        again[0].in_doubt,
        "the previous attempt may have reached the platform"
    );
    assert_eq!(again[0].attempts, 2);

    // The first worker comes back with its verdict: too late, the row is w2's now.
    assert_eq!(
        complete(
            s,
            "w1",
            vec![completion(&rows[0], delivered())],
            now + 1_002
        )
        .await,
        1
    );
    assert_eq!(status(s, "pyun", "k").await, "in_flight");
    assert_eq!(
        complete(
            s,
            "w2",
            vec![completion(&again[0], delivered())],
            now + 1_003
        )
        .await,
        0
    );
    assert_eq!(status(s, "pyun", "k").await, "delivered");
}

async fn complete_applies_each_action(db: &Db) {
    let s = &db.store;
    let names = [
        "delivered",
        "done",
        "retry",
        "continue",
        "dead",
        "release",
        "release-in-doubt",
    ];
    for n in names {
        s.enqueue(&ev("pyun", n)).await.unwrap();
    }
    let now = now_ms();
    let rows = claim(s, "pyun", "w", 10, now).await;
    assert_eq!(keys(&rows), names);
    let by_key: HashMap<&str, &ClaimedRow> = rows
        .iter()
        .map(|r| (r.idempotency_key.as_str(), r))
        .collect();
    let batch = vec![
        completion(
            by_key["delivered"],
            Action::Delivered {
                hint: Some("check the plate".into()),
                result: Some("r-1".into()),
            },
        ),
        completion(
            by_key["done"],
            Action::Done {
                note: "no parking record".into(),
                result: Some("r-2".into()),
            },
        ),
        completion(
            by_key["retry"],
            Action::Retry {
                next_at: now + 10_000,
                error: "HTTP 503".into(),
            },
        ),
        completion(
            by_key["continue"],
            Action::Continue {
                state: r#"{"step":2}"#.into(),
                next_at: now + 5_000,
                note: "step 1 done".into(),
            },
        ),
        completion(
            by_key["dead"],
            Action::Dead {
                kind: DeadKind::Permanent,
                reason: "rejected: bad plate".into(),
                last_reply: Some(r#"{"code":400}"#.into()),
            },
        ),
        completion(by_key["release"], Action::Release { in_doubt: false }),
        completion(
            by_key["release-in-doubt"],
            Action::Release { in_doubt: true },
        ),
    ];
    assert_eq!(complete(s, "w", batch, now).await, 0, "no lease was lost");

    let v = s.row("pyun", "delivered").await.unwrap().unwrap();
    assert_eq!(v.status, "delivered");
    assert_eq!(v.hint.as_deref(), Some("check the plate"));
    assert_eq!(v.result.as_deref(), Some("r-1"));
    assert_eq!(v.last_error, None);

    let v = s.row("pyun", "done").await.unwrap().unwrap();
    assert_eq!(v.status, "done");
    assert_eq!(v.last_error.as_deref(), Some("no parking record"));
    assert_eq!(v.result.as_deref(), Some("r-2"));

    let v = s.row("pyun", "retry").await.unwrap().unwrap();
    assert_eq!(
        (
            v.status.as_str(),
            v.attempts,
            v.next_attempt_at,
            v.last_error.as_deref()
        ),
        ("pending", 1, now + 10_000, Some("HTTP 503"))
    );

    let v = s.row("pyun", "continue").await.unwrap().unwrap();
    assert_eq!(
        (
            v.status.as_str(),
            v.attempts,
            v.next_attempt_at,
            v.last_error.as_deref()
        ),
        ("pending", 0, now + 5_000, Some("step 1 done")),
        "a new step starts its attempts again"
    );

    assert_eq!(s.row("pyun", "dead").await.unwrap(), None, "moved out");
    let dead_rows = s
        .dead_list(Some("pyun"), None, Some("BAD PLATE"), 10)
        .await
        .unwrap();
    assert_eq!(
        dead_rows.len(),
        1,
        "dead_list matches the reason case-insensitively"
    );
    let d = &dead_rows[0];
    assert_eq!(d.outbox_id, by_key["dead"].id);
    assert_eq!(
        (
            d.idempotency_key.as_str(),
            d.attempts,
            d.reason.as_str(),
            d.last_reply.as_deref(),
            d.dead_at
        ),
        (
            "dead",
            1,
            "rejected: bad plate",
            Some(r#"{"code":400}"#),
            now
        )
    );
    assert_eq!(d.payload, by_key["dead"].payload);
    assert_eq!(s.dead_get(d.id).await.unwrap().as_ref(), Some(d));
    assert!(s
        .dead_list(None, Some(now + 1), None, 10)
        .await
        .unwrap()
        .is_empty());

    let v = s.row("pyun", "release").await.unwrap().unwrap();
    assert_eq!(
        (v.status.as_str(), v.attempts),
        ("pending", 0),
        "not started: the attempt does not count"
    );
    let v = s.row("pyun", "release-in-doubt").await.unwrap().unwrap();
    assert_eq!((v.status.as_str(), v.attempts), ("pending", 1));

    // History: one entry per attempted step, kept after dead-lettering; none for releases.
    for (k, outcome) in [
        ("delivered", "delivered"),
        ("done", "completed"),
        ("retry", "retry"),
        ("continue", "continue"),
        ("dead", "permanent"),
    ] {
        let h = s.attempts(by_key[k].id).await.unwrap();
        assert_eq!(h.len(), 1, "{k}");
        assert_eq!(
            (
                h[0].attempt,
                h[0].outcome.as_str(),
                h[0].http_status,
                h[0].duration_ms
            ),
            (1, outcome, Some(200), 12),
            "{k}"
        );
        assert_eq!(h[0].reply.as_deref(), Some(r#"{"code":0}"#));
    }
    assert!(s.attempts(by_key["release"].id).await.unwrap().is_empty());

    // The next step of the flow gets its state; the in-doubt release is marked so.
    let next = claim(s, "pyun", "w", 10, now + 5_000).await;
    assert_eq!(keys(&next), ["continue", "release", "release-in-doubt"]);
    assert_eq!(next[0].flow_state.as_deref(), Some(r#"{"step":2}"#));
    assert_eq!((next[0].attempts, next[0].in_doubt), (1, false));
    assert_eq!((next[1].attempts, next[1].in_doubt), (1, false));
    assert_eq!((next[2].attempts, next[2].in_doubt), (2, true));
}

async fn completion_with_a_wrong_owner_is_not_applied(db: &Db) {
    let s = &db.store;
    s.enqueue(&ev("pyun", "k")).await.unwrap();
    let now = now_ms();
    let rows = claim(s, "pyun", "w1", 10, now).await;
    let lost = complete(
        s,
        "w2",
        vec![
            completion(&rows[0], delivered()),
            completion(&rows[0], dead("nope")),
        ],
        now,
    )
    .await;
    assert_eq!(lost, 2);
    let v = s.row("pyun", "k").await.unwrap().unwrap();
    assert_eq!((v.status.as_str(), v.attempts), ("in_flight", 1));
    assert!(s.dead_ids("pyun").await.unwrap().is_empty());
    assert_eq!(
        complete(s, "w1", vec![completion(&rows[0], delivered())], now).await,
        0
    );
    assert_eq!(status(s, "pyun", "k").await, "delivered");
}

async fn ordering_key_one_in_flight_in_insertion_order(db: &Db) {
    let s = &db.store;
    enqueue_all(
        s,
        &[
            keyed("pyun", "a1", "session-a"),
            keyed("pyun", "a2", "session-a"),
            keyed("pyun", "b1", "session-b"),
            keyed("pyun", "a3", "session-a"),
            ev("pyun", "free"),
        ],
    )
    .await;
    let now = now_ms();
    let first = claim(s, "pyun", "w", 10, now).await;
    assert_eq!(
        keys(&first),
        ["a1", "b1", "free"],
        "one row per ordering key, the earliest"
    );
    assert!(claim(s, "pyun", "w", 10, now).await.is_empty());

    let a1 = &first[0];
    complete(s, "w", vec![completion(a1, delivered())], now).await;
    let second = claim(s, "pyun", "w", 10, now).await;
    assert_eq!(keys(&second), ["a2"]);

    // A retry keeps its place: a3 waits for it.
    complete(
        s,
        "w",
        vec![completion(
            &second[0],
            Action::Retry {
                next_at: now + 1_000,
                error: "HTTP 503".into(),
            },
        )],
        now,
    )
    .await;
    assert!(claim(s, "pyun", "w", 10, now + 500).await.is_empty());
    let retried = claim(s, "pyun", "w", 10, now + 1_000).await;
    assert_eq!(keys(&retried), ["a2"]);

    // A dead-lettered row unblocks the next one.
    complete(s, "w", vec![completion(&retried[0], dead("rejected"))], now).await;
    assert_eq!(keys(&claim(s, "pyun", "w", 10, now + 1_000).await), ["a3"]);
}

async fn unknown_sinks_are_dead_lettered(db: &Db) {
    let s = &db.store;
    let now = now_ms();
    s.enqueue(&ev("pyun", "ok")).await.unwrap();
    s.enqueue(&ev("ghost", "lost")).await.unwrap();
    s.enqueue(&later("ghost", "not-yet", now + 60_000))
        .await
        .unwrap();
    let now = now_ms();
    let known = vec!["pyun".to_string(), "epeis".to_string()];
    assert_eq!(
        s.dead_letter_unknown_sinks(&known, Duration::ZERO, now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.dead_letter_unknown_sinks(&known, Duration::ZERO, now)
            .await
            .unwrap(),
        0
    );
    let d = s.dead_list(Some("ghost"), None, None, 10).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].idempotency_key, "lost");
    assert!(
        d[0].reason
            .starts_with("sink 'ghost' is not configured: add [sinks.ghost]"),
        "{}",
        d[0].reason
    );
    assert_eq!(d[0].dead_at, now);
    assert_eq!(
        status(s, "ghost", "not-yet").await,
        "pending",
        "only due rows"
    );
    assert_eq!(status(s, "pyun", "ok").await, "pending");
}

async fn requeue_keeps_history_and_refuses_a_duplicate_key(db: &Db) {
    let s = &db.store;
    s.enqueue(&keyed("pyun", "k", "session")).await.unwrap();
    let now = now_ms();
    let rows = claim(s, "pyun", "w", 10, now).await;
    let id = rows[0].id;
    complete(s, "w", vec![completion(&rows[0], dead("HTTP 400"))], now).await;
    let dead_id = s.dead_ids("pyun").await.unwrap()[0];

    let later_now = now + 1_000;
    s.requeue(dead_id, later_now, false).await.unwrap();
    assert_eq!(s.dead_get(dead_id).await.unwrap(), None);
    let v = s.row("pyun", "k").await.unwrap().unwrap();
    assert_eq!(v.id, id, "the same id, so its history stays attached");
    assert_eq!(
        (
            v.status.as_str(),
            v.attempts,
            v.next_attempt_at,
            v.last_error.as_deref()
        ),
        ("pending", 0, later_now, Some("requeued by an operator"))
    );
    assert_eq!(s.attempts(id).await.unwrap().len(), 1);
    let again = claim(s, "pyun", "w", 10, later_now).await;
    assert_eq!(again[0].id, id);
    assert_eq!(again[0].ordering_key.as_deref(), Some("session"));
    assert_eq!(
        again[0].created_at, later_now,
        "max age counts from the requeue"
    );
    complete(
        s,
        "w",
        vec![completion(&again[0], dead("HTTP 400 again"))],
        later_now,
    )
    .await;
    assert_eq!(s.attempts(id).await.unwrap().len(), 2);

    // The producer sends the event again meanwhile: ignored, the key is known.
    let dead_id = s.dead_ids("pyun").await.unwrap()[0];
    assert!(!s.enqueue(&ev("pyun", "k")).await.unwrap());
    // A row of the key in the outbox all the same (inserted before keys were remembered, or
    // after key_retention): the requeue must not make two.
    exec(
        s,
        "DELETE FROM outbox_keys WHERE sink = 'pyun' AND idempotency_key = 'k'",
    )
    .await;
    s.enqueue(&ev("pyun", "k")).await.unwrap();
    match s.requeue(dead_id, later_now, false).await {
        Err(StoreError::Conflict(msg)) => assert!(msg.contains("already has a row"), "{msg}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(
        s.dead_get(dead_id).await.unwrap().is_some(),
        "the dead row stays"
    );
    assert!(matches!(
        s.requeue(dead_id + 1000, later_now, false).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn purge_dead_and_prune_finished(db: &Db) {
    let s = &db.store;
    let now = now_ms();
    let old = now - 10_000;
    let events: Vec<NewEvent> = (0..10).map(|i| ev("pyun", &format!("r{i}"))).collect();
    enqueue_all(s, &events).await;
    let rows = claim(s, "pyun", "w", 10, old).await;
    // r0..r4 delivered long ago, r5 done long ago, r6 delivered now, r7 dead long ago,
    // r8 dead now, r9 still in flight.
    let mut batch_old: Vec<Completion> = rows[0..5]
        .iter()
        .map(|r| completion(r, delivered()))
        .collect();
    batch_old.push(completion(
        &rows[5],
        Action::Done {
            note: "nothing to do".into(),
            result: None,
        },
    ));
    batch_old.push(completion(&rows[7], dead("old")));
    complete(s, "w", batch_old, old).await;
    complete(
        s,
        "w",
        vec![
            completion(&rows[6], delivered()),
            completion(&rows[8], dead("new")),
        ],
        now,
    )
    .await;

    let cutoff = now - 5_000;
    assert_eq!(s.prune_finished(cutoff, 4).await.unwrap(), 4, "batch size");
    assert_eq!(s.prune_finished(cutoff, 4).await.unwrap(), 2);
    assert_eq!(s.prune_finished(cutoff, 4).await.unwrap(), 0);
    for r in &rows[0..6] {
        assert_eq!(status(s, "pyun", &r.idempotency_key).await, "gone");
        assert!(
            s.attempts(r.id).await.unwrap().is_empty(),
            "history pruned with the row"
        );
    }
    assert_eq!(status(s, "pyun", "r6").await, "delivered");
    assert_eq!(s.attempts(rows[6].id).await.unwrap().len(), 1);
    assert_eq!(status(s, "pyun", "r9").await, "in_flight");

    assert_eq!(s.purge_dead(cutoff).await.unwrap(), 1);
    assert_eq!(s.purge_dead(cutoff).await.unwrap(), 0);
    let left = s.dead_list(None, None, None, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].idempotency_key, "r8");
    assert!(s.attempts(rows[7].id).await.unwrap().is_empty());
    assert_eq!(s.attempts(rows[8].id).await.unwrap().len(), 1);
}

async fn paused_sinks(db: &Db) {
    let s = &db.store;
    assert!(s.paused_sinks().await.unwrap().is_empty());
    s.set_paused("pyun", true, Some("maintenance until 14:00"))
        .await
        .unwrap();
    s.set_paused("epeis", true, None).await.unwrap();
    assert_eq!(s.paused_sinks().await.unwrap(), ["epeis", "pyun"]);
    let st = sink_stats(s, "pyun", now_ms()).await;
    assert!(
        st.paused,
        "a paused sink shows up in stats even without rows"
    );
    assert_eq!(st.pending, 0);
    s.set_paused("pyun", false, None).await.unwrap();
    assert_eq!(s.paused_sinks().await.unwrap(), ["epeis"]);
    assert!(!sink_stats(s, "pyun", now_ms()).await.paused);
}

/// The claim itself reads the pause (issue 13): a worker whose list of paused sinks is
/// stale (re-read only at housekeeping) still claims nothing of a sink paused since, through
/// `claim` and through `cycle`; other sinks are unaffected; a resume makes the rows claimable.
async fn a_claim_skips_a_paused_sink(db: &Db) {
    let s = &db.store;
    s.set_paused("pyun", true, Some("maintenance"))
        .await
        .unwrap();
    enqueue_all(s, &[ev("pyun", "p1"), ev("pyun", "p2"), ev("epeis", "e1")]).await;
    let now = now_ms();
    assert!(
        claim(s, "pyun", "w", 10, now).await.is_empty(),
        "claimed rows of a paused sink"
    );
    let (_, claimed) = s
        .cycle(
            "w",
            &[],
            &[("pyun".to_string(), 10), ("epeis".to_string(), 10)],
            &[],
            now,
            now + LEASE,
        )
        .await
        .unwrap();
    assert!(claimed[0].is_empty(), "cycle claimed rows of a paused sink");
    assert_eq!(keys(&claimed[1]), ["e1"], "another sink is not paused");
    let st = sink_stats(s, "pyun", now).await;
    assert_eq!((st.pending, st.in_flight), (2, 0));

    s.set_paused("pyun", false, None).await.unwrap();
    assert_eq!(keys(&claim(s, "pyun", "w", 10, now).await), ["p1", "p2"]);
}

async fn schema_state_empty_then_current(db: &Db) {
    let s = &db.store;
    assert_eq!(s.schema_state().await.unwrap(), SchemaState::Empty);
    assert!(matches!(
        s.require_current_schema(&db.url).await,
        Err(StoreError::Schema(_))
    ));
    let embedded: Vec<i64> = match s.engine() {
        Engine::Sqlite(_) => sqlite_store::MIGRATOR.iter().map(|m| m.version).collect(),
        Engine::Postgres(_) => pg_store::MIGRATOR.iter().map(|m| m.version).collect(),
    };
    assert_eq!(embedded[0], 1);
    assert_eq!(
        s.migrate().await.unwrap(),
        embedded,
        "every embedded migration applied"
    );
    assert_eq!(s.schema_state().await.unwrap(), SchemaState::Current);
    assert_eq!(
        s.migrate().await.unwrap(),
        Vec::<i64>::new(),
        "migrating again does nothing"
    );
    s.require_current_schema(&db.url).await.unwrap();
}

async fn stats_figures(db: &Db) {
    let s = &db.store;
    let t0 = now_ms();
    let mut events: Vec<NewEvent> = [
        "pending",
        "in-flight",
        "delivered",
        "done",
        "retrying",
        "dead",
    ]
    .iter()
    .map(|k| ev("pyun", k))
    .collect();
    events.push(later("pyun", "not-due", t0 + 60_000));
    events.push(ev("epeis", "e1"));
    enqueue_all(s, &events).await;
    s.set_paused("lbbtech", true, None).await.unwrap();
    let now = now_ms();

    let rows = claim(s, "pyun", "w", 10, now).await;
    assert_eq!(rows.len(), 6);
    let by_key: HashMap<&str, &ClaimedRow> = rows
        .iter()
        .map(|r| (r.idempotency_key.as_str(), r))
        .collect();
    complete(
        s,
        "w",
        vec![
            completion(by_key["pending"], Action::Release { in_doubt: false }),
            completion(
                by_key["delivered"],
                Action::Delivered {
                    hint: Some("plate unknown".into()),
                    result: None,
                },
            ),
            completion(
                by_key["done"],
                Action::Done {
                    note: "no record".into(),
                    result: None,
                },
            ),
            completion(
                by_key["retrying"],
                Action::Retry {
                    next_at: now + 30_000,
                    error: "HTTP 502".into(),
                },
            ),
            completion(by_key["dead"], dead("rejected")),
        ],
        now,
    )
    .await;

    let all = s.stats(now).await.unwrap();
    let names: Vec<&str> = all.iter().map(|st| st.sink.as_str()).collect();
    assert_eq!(names, ["epeis", "lbbtech", "pyun"]);
    let st = &all[2];
    assert_eq!(st.pending, 3, "pending, retrying, not-due");
    assert_eq!(st.in_flight, 1);
    assert_eq!(st.due_now, 1, "only the released row is due");
    let oldest = st.oldest_pending_ms.expect("oldest pending age");
    assert!(
        (0..=now - t0 + 1_000).contains(&oldest),
        "oldest pending age {oldest} ms"
    );
    assert_eq!(st.delivered, 1);
    assert_eq!(st.delivered_last_hour, 1);
    assert_eq!(st.done, 1);
    assert_eq!(st.retrying, 1);
    assert_eq!(st.dead, 1);
    assert_eq!(st.hints, 1);
    assert!(!st.paused);
    assert_eq!(st.last_error.as_deref(), Some("HTTP 502"));
    assert_eq!(
        s.stats(now + 3_600_001).await.unwrap()[2].delivered_last_hour,
        0
    );

    let e = &all[0];
    assert_eq!((e.pending, e.due_now, e.delivered, e.dead), (1, 1, 0, 0));
    let l = &all[1];
    assert!(l.paused);
    assert_eq!((l.pending, l.oldest_pending_ms), (0, None));
}

async fn concurrent_claimers_claim_each_row_once(db: &Db) {
    let s = &db.store;
    let events: Vec<NewEvent> = (0..2000).map(|i| ev("pyun", &format!("r{i}"))).collect();
    enqueue_all(s, &events).await;
    let claimed = Arc::new(Mutex::new(Vec::<i64>::new()));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        let claimed = claimed.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            loop {
                let now = now_ms();
                let rows = claim(&s, "pyun", &owner, 25, now).await;
                if rows.is_empty() {
                    let st = sink_stats(&s, "pyun", now).await;
                    if st.pending + st.in_flight == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                claimed.lock().unwrap().extend(rows.iter().map(|r| r.id));
                let batch = rows.iter().map(|r| completion(r, delivered())).collect();
                assert_eq!(complete(&s, &owner, batch, now_ms()).await, 0);
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        for t in tasks {
            t.await.expect("claimer task");
        }
    })
    .await
    .expect("draining 2000 rows with 4 claimers took too long");
    let claimed = std::mem::take(&mut *claimed.lock().unwrap());
    let unique: HashSet<i64> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), 2000, "each row claimed exactly once");
    assert_eq!(unique.len(), 2000);
    assert_eq!(sink_stats(s, "pyun", now_ms()).await.delivered, 2000);
}

/// Many rows sharing a few ordering keys, four workers claiming at once: a key never has
/// two rows in flight, and each key's rows are delivered in insertion order.
async fn ordering_keys_hold_under_concurrent_claimers(db: &Db) {
    #[derive(Default)]
    struct Seen {
        in_flight: HashMap<String, i64>,
        delivered: HashMap<String, Vec<i64>>,
        violations: Vec<String>,
    }
    let s = &db.store;
    let events: Vec<NewEvent> = (0..300)
        .map(|i| {
            if i % 7 == 0 {
                ev("pyun", &format!("r{i}"))
            } else {
                keyed("pyun", &format!("r{i}"), &format!("k{}", i % 5))
            }
        })
        .collect();
    enqueue_all(s, &events).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            loop {
                let rows = claim(&s, "pyun", &owner, 8, now_ms()).await;
                if rows.is_empty() {
                    let st = sink_stats(&s, "pyun", now_ms()).await;
                    if st.pending + st.in_flight == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                {
                    let mut seen = seen.lock().unwrap();
                    for r in &rows {
                        if let Some(k) = &r.ordering_key {
                            if let Some(other) = seen.in_flight.insert(k.clone(), r.id) {
                                let msg = format!(
                                    "{owner} claimed row {} of key {k} while row {other} was in flight",
                                    r.id
                                );
                                seen.violations.push(msg);
                            }
                        }
                    }
                }
                let pause = rand::random::<u64>() % 1500;
                tokio::time::sleep(Duration::from_micros(pause)).await;
                let mut batch = Vec::new();
                {
                    // Forgotten before the verdict commits: from then on the next row of
                    // the key may legitimately be claimed.
                    let mut seen = seen.lock().unwrap();
                    for r in &rows {
                        let retry = rand::random::<u32>() % 6 == 0;
                        if let Some(k) = &r.ordering_key {
                            seen.in_flight.remove(k);
                            if !retry {
                                seen.delivered.entry(k.clone()).or_default().push(r.id);
                            }
                        }
                        batch.push(completion(
                            r,
                            if retry {
                                Action::Retry {
                                    next_at: now_ms(),
                                    error: "HTTP 503".into(),
                                }
                            } else {
                                delivered()
                            },
                        ));
                    }
                }
                assert_eq!(complete(&s, &owner, batch, now_ms()).await, 0);
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        for t in tasks {
            t.await.expect("claimer task");
        }
    })
    .await
    .expect("draining took too long");

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.violations.is_empty(),
        "two rows of one key in flight: {:#?}",
        seen.violations
    );
    let mut ids_by_key: HashMap<String, Vec<i64>> = HashMap::new();
    for e in &events {
        if let Some(k) = &e.ordering_key {
            let id = s.row("pyun", &e.idempotency_key).await.unwrap().unwrap().id;
            ids_by_key.entry(k.clone()).or_default().push(id);
        }
    }
    assert_eq!(ids_by_key.len(), 5);
    for (k, ids) in &ids_by_key {
        assert_eq!(
            seen.delivered.get(k),
            Some(ids),
            "key {k}: delivered in insertion order, each once"
        );
    }
}

async fn cycle_records_verdicts_then_claims(db: &Db) {
    let s = &db.store;
    enqueue_all(
        s,
        &[
            ev("pyun", "a"),
            ev("pyun", "b"),
            ev("pyun", "c"),
            ev("epeis", "x"),
        ],
    )
    .await;
    let now = now_ms();
    let a = claim(s, "pyun", "w", 1, now).await;
    let claims = [("pyun".to_string(), 5), ("epeis".to_string(), 5)];
    let (lost, claimed) = s
        .cycle(
            "w",
            &[completion(&a[0], delivered())],
            &claims,
            &[],
            now,
            now + LEASE,
        )
        .await
        .unwrap();
    assert_eq!(lost, 0);
    assert_eq!(claimed.len(), 2, "one entry per claim");
    assert_eq!(keys(&claimed[0]), ["b", "c"]);
    assert_eq!(keys(&claimed[1]), ["x"]);
    assert_eq!(status(s, "pyun", "a").await, "delivered");

    // A verdict for a lease held by someone else is counted, not applied.
    let b = &claimed[0][0];
    let (lost, claimed) = s
        .cycle(
            "other",
            &[completion(b, delivered())],
            &claims,
            &[],
            now,
            now + LEASE,
        )
        .await
        .unwrap();
    assert_eq!(lost, 1);
    assert!(claimed.iter().all(|c| c.is_empty()));
    assert_eq!(status(s, "pyun", "b").await, "in_flight");
}

async fn wake_on_new_rows(db: &Db) {
    let s = &db.store;
    let mut wake = Wake::new(s.clone(), Duration::from_millis(5));
    if s.postgres().is_some() {
        // The listener starts on first use and wakes the worker once (rows may have
        // arrived before it listened).
        let t = Instant::now();
        wake.changed_or(t + Duration::from_secs(10)).await;
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the listener did not start"
        );
    }
    // Nothing happens: resolves at the deadline.
    let t = Instant::now();
    wake.changed_or(t + Duration::from_millis(300)).await;
    assert!(
        t.elapsed() >= Duration::from_millis(290),
        "woke without a change"
    );

    // A producer inserts: resolves long before the deadline.
    let producer = {
        let s = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            s.enqueue(&ev("pyun", "new")).await.unwrap();
        })
    };
    let t = Instant::now();
    wake.changed_or(t + Duration::from_secs(20)).await;
    let waited = t.elapsed();
    producer.await.unwrap();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(5),
        "woke after {waited:?}"
    );
}

// ---------------------------------------------------------------------------------------
// SQLite only
// ---------------------------------------------------------------------------------------

/// A producer in another process (Python's sqlite3, the system's SQLite 3.40) inserts
/// while the worker claims and completes: nobody sees "database is locked", every row
/// arrives with its defaults set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_external_producer_writes_while_the_worker_drains() {
    Db::sqlite(true)
        .await
        .run(|db| Box::pin(external_producer_writes_while_the_worker_drains(db)))
        .await;
}

async fn external_producer_writes_while_the_worker_drains(db: &Db) {
    const PRODUCER: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
db.execute("PRAGMA busy_timeout=5000")
i = 0
while i < 500:
    n = 1 if i % 3 else 7  # mostly one row per transaction, sometimes a few
    db.execute("BEGIN IMMEDIATE")
    for j in range(i, min(i + n, 500)):
        db.execute(
            "INSERT INTO outbox (sink, event_type, idempotency_key, payload) VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            ("ext", "charge_end", "py-%d" % j, '{"n": %d}' % j),
        )
    db.execute("COMMIT")
    i += n
print(sqlite3.sqlite_version)
"#;
    let s = &db.store;
    let start = now_ms();
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(PRODUCER)
        .arg(db.sqlite_path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running python3");

    let mut seen = HashSet::new();
    let mut producer_done = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while producer_done.is_none() || seen.len() < 500 {
        assert!(
            Instant::now() < deadline,
            "draining took too long ({} rows seen)",
            seen.len()
        );
        let now = now_ms();
        let rows = s
            .claim("ext", "w", 50, now, now + LEASE)
            .await
            .expect("claim while another process writes");
        for r in &rows {
            assert!(
                (start - 1_000..=now_ms() + 1_000).contains(&r.created_at),
                "created_at default: {} (start {start})",
                r.created_at
            );
            assert_eq!(r.attempts, 1);
            assert!(
                seen.insert(r.idempotency_key.clone()),
                "claimed twice: {}",
                r.idempotency_key
            );
        }
        if !rows.is_empty() {
            let batch: Vec<Completion> = rows.iter().map(|r| completion(r, delivered())).collect();
            s.cycle("w", &batch, &[], &[], now_ms(), now_ms() + LEASE)
                .await
                .expect("complete while another process writes");
        } else if producer_done.is_none() {
            if let Some(status) = child.try_wait().unwrap() {
                producer_done = Some(status);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        } else {
            break;
        }
    }
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the producer failed: {stderr}");
    assert!(!stderr.contains("locked"), "{stderr}");
    assert_eq!(seen.len(), 500, "every row arrived and was claimed once");
    let st = sink_stats(s, "ext", now_ms()).await;
    assert_eq!((st.delivered, st.pending, st.in_flight), (500, 0, 0));
}

// ---------------------------------------------------------------------------------------
// Postgres only
// ---------------------------------------------------------------------------------------

/// The claim's candidate scan goes through the partial index on pending rows, not through
/// the whole table of delivered rows.
#[tokio::test]
async fn postgres_claim_scan_uses_the_partial_due_index() {
    on_postgres(|db| Box::pin(claim_scan_uses_the_partial_due_index(db))).await;
}

async fn claim_scan_uses_the_partial_due_index(db: &Db) {
    let pool = db.pg().pool();
    sqlx::query(
        "INSERT INTO outbox (sink, event_type, idempotency_key, payload, status, finished_at) \
         SELECT 'pyun', 'charge_end', 'done-' || g, '{}', 'delivered', 0 FROM generate_series(1, 50000) g",
    )
    .execute(pool)
    .await
    .unwrap();
    let pending: Vec<NewEvent> = (0..100)
        .flat_map(|i| [ev("pyun", &format!("p{i}")), ev("epeis", &format!("e{i}"))])
        .collect();
    enqueue_all(&db.store, &pending).await;
    sqlx::query("ANALYZE outbox").execute(pool).await.unwrap();

    let now = now_ms();
    let plan = db.pg().explain_claim("pyun", now, 32).await.unwrap();
    assert!(
        plan.contains("outbox_due"),
        "the claim does not use outbox_due:\n{plan}"
    );
    assert!(plan.contains("LockRows"), "{plan}");
    assert_eq!(claim(&db.store, "pyun", "w", 32, now).await.len(), 32);
}

/// A requeued row gets its old id back; if a later row of its key is in flight by then, it
/// waits for it instead of joining it.
async fn requeued_row_waits_for_the_in_flight_row_of_its_key(db: &Db) {
    let s = &db.store;
    enqueue_all(
        s,
        &[
            keyed("pyun", "a1", "session"),
            keyed("pyun", "a2", "session"),
        ],
    )
    .await;
    let now = now_ms();
    let a1 = claim(s, "pyun", "w", 10, now).await;
    complete(s, "w", vec![completion(&a1[0], dead("rejected"))], now).await;
    let a2 = claim(s, "pyun", "w", 10, now).await;
    assert_eq!(keys(&a2), ["a2"]);
    s.requeue(s.dead_ids("pyun").await.unwrap()[0], now, false)
        .await
        .unwrap();
    assert!(
        claim(s, "pyun", "w", 10, now).await.is_empty(),
        "a2 is in flight"
    );
    complete(s, "w", vec![completion(&a2[0], delivered())], now).await;
    assert_eq!(keys(&claim(s, "pyun", "w", 10, now).await), ["a1"]);
}

/// outboxd's queries are short: JIT compilation would only add 50-700 ms at random.
#[tokio::test]
async fn postgres_connections_run_without_jit() {
    on_postgres(|db| Box::pin(connections_run_without_jit(db))).await;
}

async fn connections_run_without_jit(db: &Db) {
    let jit: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(db.pg().pool())
        .await
        .unwrap();
    assert_eq!(jit, "off");
}

/// A producer's transaction got the smaller id but committed after a later row of the same
/// key was claimed: the earlier row waits until the later one is finished.
#[tokio::test]
async fn postgres_late_committed_earlier_row_waits_for_the_in_flight_row_of_its_key() {
    on_postgres(|db| {
        Box::pin(late_committed_earlier_row_waits_for_the_in_flight_row_of_its_key(db))
    })
    .await;
}

async fn late_committed_earlier_row_waits_for_the_in_flight_row_of_its_key(db: &Db) {
    let s = &db.store;
    let mut producer = db.pg().pool().begin().await.unwrap();
    pg_store::enqueue_in(&mut *producer, &keyed("pyun", "x", "session"))
        .await
        .unwrap();
    s.enqueue(&keyed("pyun", "y", "session")).await.unwrap();
    let now = now_ms();
    let y = claim(s, "pyun", "wA", 10, now).await;
    assert_eq!(keys(&y), ["y"], "x is not committed yet");
    producer.commit().await.unwrap();
    assert!(
        claim(s, "pyun", "wB", 10, now).await.is_empty(),
        "y of the same key is in flight"
    );
    complete(s, "wA", vec![completion(&y[0], delivered())], now).await;
    assert_eq!(keys(&claim(s, "pyun", "wB", 10, now).await), ["x"]);
}

/// Two claims at once, each unable to see the other's uncommitted work, must not take one
/// row each of the same key. Worker A is frozen mid-claim (row y marked in flight, the
/// key's advisory lock held, not committed); meanwhile a producer commits x, which has a
/// smaller id than y: in worker B's snapshot x looks free, but the key is being claimed.
#[tokio::test]
async fn postgres_concurrent_claims_of_one_key_are_serialised() {
    on_postgres(|db| Box::pin(concurrent_claims_of_one_key_are_serialised(db))).await;
}

async fn concurrent_claims_of_one_key_are_serialised(db: &Db) {
    let s = &db.store;
    let pool = db.pg().pool();
    let mut producer = pool.begin().await.unwrap();
    pg_store::enqueue_in(&mut *producer, &keyed("pyun", "x", "session"))
        .await
        .unwrap();
    s.enqueue(&keyed("pyun", "y", "session")).await.unwrap();
    s.enqueue(&ev("pyun", "free")).await.unwrap();
    let now = now_ms();

    let mut worker_a = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext('session'))")
        .bind(pg_store::ORDERING_LOCK_SPACE)
        .execute(&mut *worker_a)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE outbox SET status = 'in_flight', lease_owner = 'wA', lease_expires_at = $1,          attempts = attempts + 1 WHERE idempotency_key = 'y'",
    )
    .bind(now + LEASE)
    .execute(&mut *worker_a)
    .await
    .unwrap();
    producer.commit().await.unwrap();

    assert_eq!(
        keys(&claim(s, "pyun", "wB", 10, now).await),
        ["free"],
        "x must wait: its key is being claimed by worker A"
    );
    worker_a.commit().await.unwrap();
    assert!(
        claim(s, "pyun", "wB", 10, now).await.is_empty(),
        "y is in flight"
    );
}

/// What a producer writes in plain SQL: JSON into `payload`, `not_before`, the defaults.
#[tokio::test]
async fn postgres_producer_sql_contract() {
    on_postgres(|db| Box::pin(producer_sql_contract(db))).await;
}

async fn producer_sql_contract(db: &Db) {
    let pool = db.pg().pool();
    let t = now_ms() + 60_000;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (sink, event_type, idempotency_key, payload, ordering_key, not_before) \
         VALUES ('pyun', 'charge_end', 'json', '{\"a\": 1}'::json, NULL, NULL), \
                ('pyun', 'charge_end', 'jsonb', '{\"b\": 2}'::jsonb, 'k', $1)",
    )
    .bind(t)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let row: (i64, i64, String, i32, bool) = sqlx::query_as(
        "SELECT created_at, next_attempt_at, status, attempts, in_doubt FROM outbox WHERE idempotency_key = 'json'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(
        (now_ms() - 5_000..=now_ms()).contains(&row.0),
        "created_at {}",
        row.0
    );
    assert_eq!(
        (row.1, row.2.as_str(), row.3, row.4),
        (0, "pending", 0, false)
    );
    assert_eq!(
        db.store
            .row("pyun", "jsonb")
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at,
        t
    );
    let rows = claim(&db.store, "pyun", "w", 10, now_ms()).await;
    assert_eq!(keys(&rows), ["json"]);
    assert_eq!(rows[0].payload, r#"{"a": 1}"#);
}

/// Postgres restarts mid-drain: the store's next calls work again by themselves, and the
/// listener comes back. Restarts the cluster, so it is not run with the others:
/// `OUTBOX_TEST_PG_DIR=DIR cargo test -p outbox-core --test store -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the test cluster; run alone with OUTBOX_TEST_PG_DIR set"]
async fn postgres_store_recovers_after_a_restart() {
    let Some(dir) = std::env::var_os("OUTBOX_TEST_PG_DIR") else {
        panic!("set OUTBOX_TEST_PG_DIR to the directory given to scripts/pg-cluster.sh start");
    };
    let Some(db) = Db::postgres(true).await else {
        return;
    };
    let s = &db.store;
    let mut wake = Wake::new(s.clone(), Duration::from_millis(5));
    wake.changed_or(Instant::now() + Duration::from_secs(10))
        .await;
    s.enqueue(&ev("pyun", "before")).await.unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg-cluster.sh");
    let out = std::process::Command::new(script)
        .arg("restart")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The pool tests connections before use: the first call after the restart works.
    s.enqueue(&ev("pyun", "after"))
        .await
        .expect("the first call after a restart");
    let rows = claim(s, "pyun", "w", 10, now_ms()).await;
    assert_eq!(keys(&rows), ["before", "after"]);

    // The listener noticed and came back: it wakes once on its own, then on new rows.
    let t = Instant::now();
    wake.changed_or(t + Duration::from_secs(20)).await;
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "no wake-up after the restart"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    wake.changed_or(t + Duration::from_millis(300)).await;
    s.enqueue(&ev("pyun", "later")).await.unwrap();
    let t = Instant::now();
    wake.changed_or(t + Duration::from_secs(20)).await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the listener is not back: woke after {:?}",
        t.elapsed()
    );

    // Down for a while: calls fail with a database error (the worker logs it and retries),
    // an idle worker still wakes at its poll deadline, and everything comes back.
    let cluster = |cmd: &str| {
        let out = std::process::Command::new(script)
            .arg(cmd)
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg-cluster.sh {cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cluster("down");
    let t = Instant::now();
    assert!(matches!(
        s.enqueue(&ev("pyun", "during")).await,
        Err(StoreError::Database(_))
    ));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "failing took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    wake.changed_or(t + Duration::from_secs(1)).await;
    assert!(t.elapsed() < Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster("start");
    s.enqueue(&ev("pyun", "back"))
        .await
        .expect("the first call after the outage");
    let t = Instant::now();
    loop {
        // Wakes: the listener reconnecting (once), then the notification of a new row.
        wake.changed_or(t + Duration::from_secs(30)).await;
        if t.elapsed() > Duration::from_secs(20) {
            panic!("the listener did not come back");
        }
        let probe = format!("probe-{}", rand::random::<u32>());
        s.enqueue(&ev("pyun", &probe)).await.unwrap();
        let t2 = Instant::now();
        wake.changed_or(t2 + Duration::from_secs(2)).await;
        if t2.elapsed() < Duration::from_secs(1) {
            break;
        }
    }
    db.finish().await;
}

/// A multi-step flow that died mid-way (e.g. lbbtech while verifying) resumes from its
/// state when requeued: it must not start the charge again.
async fn requeue_resumes_a_flow_from_its_last_state(db: &Db) {
    let s = &db.store;
    enqueue_all(s, &[keyed("lbb", "start-1", "charger-1")]).await;
    let now = now_ms();
    let rows = claim(s, "lbb", "w", 10, now).await;
    let state = r#"{"step":"verify","order_num":"2019"}"#;
    complete(
        s,
        "w",
        vec![completion(
            &rows[0],
            Action::Continue {
                state: state.into(),
                next_at: now,
                note: "verify later".into(),
            },
        )],
        now,
    )
    .await;
    let rows = claim(s, "lbb", "w", 10, now).await;
    assert_eq!(rows[0].flow_state.as_deref(), Some(state));
    complete(
        s,
        "w",
        vec![completion(
            &rows[0],
            dead("outcome unknown: verify failed 10 times"),
        )],
        now,
    )
    .await;
    s.requeue(s.dead_ids("lbb").await.unwrap()[0], now, false)
        .await
        .unwrap();
    let again = claim(s, "lbb", "w", 10, now).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].flow_state.as_deref(),
        Some(state),
        "the flow state came back with the row"
    );
}

// ---------------------------------------------------------------------------------------
// Delivery guarantees of the worker loop (issue 12)
// ---------------------------------------------------------------------------------------

async fn a_live_workers_rows_are_renewed_and_never_reclaimed_from_it(db: &Db) {
    let s = &db.store;
    for k in ["held", "renewed", "other"] {
        s.enqueue(&ev("pyun", k)).await.unwrap();
    }
    let now = now_ms();
    let mine = s.claim("pyun", "w1", 2, now, now + 1_000).await.unwrap();
    assert_eq!(keys(&mine), ["held", "renewed"]);
    let theirs = s.claim("pyun", "w2", 1, now, now + 1_000).await.unwrap();
    assert_eq!(keys(&theirs), ["other"]);

    // w1 renews "renewed" (in the same transaction as a round's verdicts and claims);
    // a renewal never shortens a lease, nor touches another worker's row.
    let (lost, claimed) = s
        .cycle(
            "w1",
            &[],
            &[],
            &[mine[1].id, theirs[0].id],
            now,
            now + 5_000,
        )
        .await
        .unwrap();
    assert_eq!((lost, claimed.len()), (0, 0));
    // A renewal never shortens a lease.
    s.cycle("w1", &[], &[], &[mine[1].id], now, now + 10)
        .await
        .unwrap();

    // Past the original leases: w1's housekeeping reclaims w2's expired row, not the row
    // it still holds; the renewed one is not expired at all.
    let later = now + 2_000;
    assert_eq!(
        s.reclaim_expired(later, "w1", &[mine[0].id, mine[1].id])
            .await
            .unwrap(),
        1
    );
    assert_eq!(status(s, "pyun", "other").await, "pending");
    assert_eq!(status(s, "pyun", "held").await, "in_flight");
    assert_eq!(status(s, "pyun", "renewed").await, "in_flight");
    // Its verdicts still apply.
    let batch = vec![
        completion(&mine[0], delivered()),
        completion(&mine[1], delivered()),
    ];
    assert_eq!(complete(s, "w1", batch, later).await, 0);
    assert_eq!(status(s, "pyun", "held").await, "delivered");
    assert_eq!(status(s, "pyun", "renewed").await, "delivered");

    // Another worker (or a restart under the same id, holding nothing) reclaims as before.
    s.enqueue(&ev("pyun", "orphan")).await.unwrap();
    let orphans = s
        .claim("pyun", "w1", 10, later, later + 1_000)
        .await
        .unwrap();
    assert_eq!(keys(&orphans), ["other", "orphan"]);
    let expired = later + 2_000;
    assert_eq!(s.reclaim_expired(expired, "w1", &[]).await.unwrap(), 2);
    let again = claim(s, "pyun", "w3", 10, expired).await;
    assert_eq!(keys(&again), ["other", "orphan"]);
    assert!(again.iter().all(|r| r.in_doubt));
}

async fn release_unsent_gives_back_rows_claimed_but_not_sent(db: &Db) {
    let s = &db.store;
    for k in ["sent", "unsent-1", "unsent-2", "other"] {
        s.enqueue(&ev("pyun", k)).await.unwrap();
    }
    let now = now_ms();
    let mine = claim(s, "pyun", "w1", 3, now).await;
    let theirs = claim(s, "pyun", "w2", 1, now).await;
    assert_eq!(keys(&mine), ["sent", "unsent-1", "unsent-2"]);

    // w1 only knows it is delivering "sent" (the claim's reply was lost with the commit).
    assert_eq!(
        s.release_unsent("w1", &[mine[0].id], now + 5)
            .await
            .unwrap(),
        2
    );
    assert_eq!(status(s, "pyun", "sent").await, "in_flight");
    assert_eq!(status(s, "pyun", "other").await, "in_flight", "{theirs:?}");
    for k in ["unsent-1", "unsent-2"] {
        let v = s.row("pyun", k).await.unwrap().unwrap();
        assert_eq!(v.status, "pending");
        assert_eq!(v.attempts, 0, "the attempt is not counted");
    }
    // Not in doubt: claimed again as a first attempt.
    let again = claim(s, "pyun", "w1", 10, now + 5).await;
    assert_eq!(keys(&again), ["unsent-1", "unsent-2"]);
    assert!(again.iter().all(|r| !r.in_doubt && r.attempts == 1));
}

// ---------------------------------------------------------------------------------------
// Round 2: delivery guarantees (store)
// ---------------------------------------------------------------------------------------

/// Runs a SQLite-only test body on a fresh, migrated database.
async fn on_sqlite(body: for<'a> fn(&'a Db) -> BoxFuture<'a>) {
    Db::sqlite(true).await.run(body).await;
}

/// Runs a statement a producer or an operator would run by hand (no parameters).
async fn exec(s: &Store, statement: &str) -> u64 {
    let done = match s.engine() {
        Engine::Sqlite(st) => sqlx::query(statement)
            .execute(st.pool())
            .await
            .map(|d| d.rows_affected()),
        Engine::Postgres(st) => sqlx::query(statement)
            .execute(st.pool())
            .await
            .map(|d| d.rows_affected()),
    };
    done.unwrap_or_else(|e| panic!("{statement}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_non_text_row_comes_back_with_a_defect() {
    on_sqlite(|db| Box::pin(non_text_row_comes_back_with_a_defect(db))).await;
}

async fn non_text_row_comes_back_with_a_defect(db: &Db) {
    let s = &db.store;
    enqueue_all(s, &[ev("pyun", "good")]).await;
    exec(
        s,
        "INSERT INTO outbox (sink, event_type, idempotency_key, payload) \
         VALUES ('pyun', 'charge_end', 'bad', CAST(x'7b22ff7d' AS BLOB))",
    )
    .await;
    let rows = claim(s, "pyun", "w", 10, now_ms()).await;
    assert_eq!(keys(&rows), ["good", "bad"]);
    assert_eq!(rows[0].defect, None);
    let defect = rows[1].defect.as_deref().expect("a defect");
    assert!(defect.contains("`payload` is not valid UTF-8"), "{defect}");
    assert!(
        !rows[1].payload.starts_with('\0'),
        "no sentinel in the payload"
    );
}

/// Applies this backend's migrations up to `version` only (an older outboxd's schema), with
/// the same files, so a later `migrate()` continues from there.
async fn migrate_up_to(s: &Store, version: i64) {
    let backend = s.backend();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../migrations/{backend}"));
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(&src).expect("migrations dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let v: i64 = name.split('_').next().unwrap().parse().expect("numbered");
        if v <= version {
            std::fs::copy(&path, dir.path().join(&name)).expect("copy");
        }
    }
    let migrator = sqlx::migrate::Migrator::new(dir.path())
        .await
        .expect("migrator");
    match s.engine() {
        Engine::Sqlite(st) => migrator.run(st.pool()).await,
        Engine::Postgres(st) => migrator.run(st.pool()).await,
    }
    .expect("migrating to an older schema");
}

async fn dead_kind_is_backfilled_and_written(db: &Db) {
    let s = &db.store;
    migrate_up_to(s, 2).await;
    let reasons = [
        ("k-unknown", "outcome unknown: epeis answered HTTP 200 without a CODE"),
        ("k-expired", "gave up after 8 attempts (max_attempts = 8); last error: HTTP 503"),
        ("k-internal", "internal error while delivering (panic: boom); please report it with this row"),
        ("k-sink", "sink 'gone' is not configured: add [sinks.gone] to the config, or fix the producer, then requeue"),
        ("k-text", "the row cannot be read as text: `payload` is not valid UTF-8 text (3 bytes); fix the producer"),
        ("k-size", "payload is 2000000 bytes, above the 1048576 byte limit: no platform accepts it"),
        ("k-type", "sink pyun (type 4pyun) delivers charge_end events, not \"dosage\": fix the producer's event_type or sink"),
        ("k-perm", "rejected: bad plate (code 400)"),
    ];
    for (i, (key, reason)) in reasons.iter().enumerate() {
        exec(
            s,
            &format!(
                "INSERT INTO outbox_dead (outbox_id, sink, event_type, idempotency_key, payload, created_at, \
                                          attempts, reason, dead_at) \
                 VALUES ({}, 'pyun', 'charge_end', '{key}', '{{}}', 1, 1, '{}', 2)",
                i + 1,
                reason.replace('\'', "''")
            ),
        )
        .await;
    }
    s.migrate().await.expect("migrating the rest");
    let kinds: HashMap<String, DeadKind> = s
        .dead_list(None, None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.idempotency_key, d.kind))
        .collect();
    let expected = [
        ("k-unknown", DeadKind::Unknown),
        ("k-expired", DeadKind::Expired),
        ("k-internal", DeadKind::Internal),
        ("k-sink", DeadKind::UnknownSink),
        ("k-text", DeadKind::Invalid),
        ("k-size", DeadKind::Invalid),
        ("k-type", DeadKind::Invalid),
        ("k-perm", DeadKind::Permanent),
    ];
    for (key, kind) in expected {
        assert_eq!(kinds[key], kind, "{key}");
    }
    let unknown = s
        .dead_list(None, None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.idempotency_key == "k-unknown")
        .unwrap();
    assert!(unknown.requeue_may_duplicate());

    // New rows: the worker's kind is written as given, whatever the reason says.
    let now = now_ms();
    enqueue_all(
        s,
        &[
            ev("pyun", "n-unknown"),
            ev("pyun", "n-invalid"),
            ev("gone", "n-sink"),
        ],
    )
    .await;
    let rows = claim(s, "pyun", "w", 10, now).await;
    let by_key: HashMap<&str, &ClaimedRow> = rows
        .iter()
        .map(|r| (r.idempotency_key.as_str(), r))
        .collect();
    let batch = vec![
        completion(
            by_key["n-unknown"],
            Action::Dead {
                kind: DeadKind::Unknown,
                reason: "the platform may have applied it".into(),
                last_reply: None,
            },
        ),
        completion(
            by_key["n-invalid"],
            Action::Dead {
                kind: DeadKind::Invalid,
                reason: "outcome unknown (text that says otherwise)".into(),
                last_reply: None,
            },
        ),
    ];
    assert_eq!(complete(s, "w", batch, now).await, 0);
    s.dead_letter_unknown_sinks(&["pyun".to_string()], Duration::ZERO, now_ms())
        .await
        .unwrap();
    let kinds: HashMap<String, DeadKind> = s
        .dead_list(None, None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.idempotency_key, d.kind))
        .collect();
    assert_eq!(kinds["n-unknown"], DeadKind::Unknown);
    assert_eq!(kinds["n-invalid"], DeadKind::Invalid);
    assert_eq!(kinds["n-sink"], DeadKind::UnknownSink);
    // The producers' view reads the kind too.
    let outcome = |key: &'static str| async move {
        let sql = format!(
            "SELECT outcome FROM outbox_outcomes WHERE sink = 'pyun' AND idempotency_key = '{key}'"
        );
        match s.engine() {
            Engine::Sqlite(st) => {
                sqlx::query_scalar::<_, String>(&sql)
                    .fetch_one(st.pool())
                    .await
            }
            Engine::Postgres(st) => {
                sqlx::query_scalar::<_, String>(&sql)
                    .fetch_one(st.pool())
                    .await
            }
        }
        .unwrap()
    };
    assert_eq!(outcome("n-unknown").await, "unknown");
    assert_eq!(outcome("n-invalid").await, "dead");
    assert_eq!(outcome("k-unknown").await, "unknown");
}

async fn dead_row_of(s: &Store, key: &str) -> outbox_core::store::DeadRow {
    s.dead_list(None, None, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .find(|d| d.idempotency_key == key)
        .unwrap_or_else(|| panic!("{key} is not dead-lettered"))
}

/// Issue 12 item 1: a key once accepted is never accepted again (until `key_retention`),
/// whatever became of its row; only an operator's requeue sends it again.
async fn known_keys_are_never_accepted_twice(db: &Db) {
    let s = &db.store;
    let now = now_ms();
    enqueue_all(s, &[ev("pyun", "delivered"), ev("pyun", "dead")]).await;
    let rows = claim(s, "pyun", "w", 10, now).await;
    let by_key: HashMap<&str, &ClaimedRow> = rows
        .iter()
        .map(|r| (r.idempotency_key.as_str(), r))
        .collect();
    let parked = Action::Dead {
        kind: DeadKind::Unknown,
        reason: "outcome unknown: no CODE".into(),
        last_reply: None,
    };
    let batch = vec![
        completion(by_key["delivered"], delivered()),
        completion(by_key["dead"], parked),
    ];
    assert_eq!(complete(s, "w", batch, now).await, 0);

    // Re-inserted after delivery and after dead-lettering, same payload: ignored.
    assert!(!s.enqueue(&ev("pyun", "delivered")).await.unwrap());
    assert!(!s.enqueue(&ev("pyun", "dead")).await.unwrap());
    assert_eq!(dead_row_of(s, "dead").await.correction_payload, None);
    // A plain INSERT and an INSERT .. ON CONFLICT DO NOTHING: no error, no row.
    let changed = r#"{"order":"dead","amount":2}"#;
    exec(
        s,
        &format!(
            "INSERT INTO outbox (sink, event_type, idempotency_key, payload) \
             VALUES ('pyun', 'charge_end', 'dead', '{changed}')"
        ),
    )
    .await;
    exec(
        s,
        "INSERT INTO outbox (sink, event_type, idempotency_key, payload) \
         VALUES ('pyun', 'charge_end', 'delivered', '{}') ON CONFLICT DO NOTHING",
    )
    .await;
    assert!(
        claim(s, "pyun", "w", 10, now + 1).await.is_empty(),
        "nothing to send"
    );
    assert_eq!(status(s, "pyun", "delivered").await, "delivered");
    // The different payload is kept beside the dead row: the producer's correction.
    let d = dead_row_of(s, "dead").await;
    assert_eq!(d.correction_payload.as_deref(), Some(changed));
    assert!(d.correction_at.is_some());
    assert_eq!(sink_stats(s, "pyun", now).await.ignored_reinserts, 4);

    // Retention pruned the delivered row: its key is still known.
    assert_eq!(s.prune_finished(now_ms() + 1, 100).await.unwrap(), 1);
    assert!(s.row("pyun", "delivered").await.unwrap().is_none());
    assert!(!s.enqueue(&ev("pyun", "delivered")).await.unwrap());
    assert_eq!(sink_stats(s, "pyun", now).await.ignored_reinserts, 5);
    // Only after key_retention is it a new event again (the dead row's key stays known).
    let year = Duration::from_secs(365 * 24 * 3600);
    assert_eq!(s.prune_keys(now_ms(), year, 100).await.unwrap(), 0);
    assert_eq!(
        s.prune_keys(now_ms() + 2 * 365 * 24 * 3_600_000, year, 100)
            .await
            .unwrap(),
        1
    );
    assert!(s.enqueue(&ev("pyun", "delivered")).await.unwrap());

    // The operator's requeue sends the key again, with the correction on request.
    let d = dead_row_of(s, "dead").await;
    s.requeue(d.id, now_ms(), true).await.unwrap();
    let rows = claim(s, "pyun", "w", 10, now_ms()).await;
    let again = rows
        .iter()
        .find(|r| r.idempotency_key == "dead")
        .expect("requeued");
    assert_eq!(again.payload, changed);
    assert_eq!(again.id, d.outbox_id, "under its old id");
}

/// Issue 12 item 7: a producer row with a REAL time (Python's `time.time() * 1000`) is
/// claimed with a defect naming the column; the other rows are claimed as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_real_time_column_marks_only_its_row() {
    on_sqlite(|db| Box::pin(a_real_time_column_marks_only_its_row(db))).await;
}

async fn a_real_time_column_marks_only_its_row(db: &Db) {
    let s = &db.store;
    enqueue_all(s, &[ev("pyun", "before")]).await;
    exec(
        s,
        "INSERT INTO outbox (sink, event_type, idempotency_key, payload, created_at) \
         VALUES ('pyun', 'charge_end', 'real-created', '{}', 1700000000123.456)",
    )
    .await;
    exec(
        s,
        "INSERT INTO outbox (sink, event_type, idempotency_key, payload, not_before) \
         VALUES ('pyun', 'charge_end', 'real-due', '{}', 1000.5)",
    )
    .await;
    exec(
        s,
        "INSERT INTO outbox (sink, event_type, idempotency_key, payload, created_at) \
         VALUES ('pyun', 'charge_end', 'text-created', '{}', 'yesterday')",
    )
    .await;
    enqueue_all(s, &[ev("pyun", "after")]).await;
    let now = now_ms();
    let rows = claim(s, "pyun", "w", 10, now).await;
    let by_key: HashMap<&str, &ClaimedRow> = rows
        .iter()
        .map(|r| (r.idempotency_key.as_str(), r))
        .collect();
    assert_eq!(rows.len(), 5, "{:?}", keys(&rows));
    assert_eq!(by_key["before"].defect, None);
    assert_eq!(by_key["after"].defect, None);
    for (key, col) in [
        ("real-created", "created_at"),
        ("real-due", "next_attempt_at"),
        ("text-created", "created_at"),
    ] {
        let defect = by_key[key].defect.as_deref().unwrap_or_default();
        assert!(defect.contains(&format!("`{col}`")), "{key}: {defect:?}");
    }
    // Status still works, and dead-lettering the odd rows moves them.
    let batch: Vec<Completion> = ["real-created", "real-due", "text-created"]
        .iter()
        .map(|k| {
            completion(
                by_key[k],
                Action::Dead {
                    kind: DeadKind::Invalid,
                    reason: by_key[k].defect.clone().unwrap(),
                    last_reply: None,
                },
            )
        })
        .collect();
    assert_eq!(complete(s, "w", batch, now).await, 0);
    assert_eq!(sink_stats(s, "pyun", now).await.dead, 3);
    assert_eq!(s.dead_list(None, None, None, 10).await.unwrap().len(), 3);
}

/// Issue 12 item 8: an oversized payload is measured in SQL and never loaded; the row comes
/// back with a defect and an empty payload.
async fn an_oversized_payload_is_not_loaded(db: &Db) {
    let s = &db.store;
    let limit = outbox_core::event::MAX_PAYLOAD_BYTES;
    let big = NewEvent {
        payload: format!(r#"{{"pad":"{}"}}"#, "x".repeat(limit)),
        ..ev("pyun", "big")
    };
    let at_limit = NewEvent {
        payload: format!(r#"{{"pad":"{}"}}"#, "y".repeat(limit - 10)),
        ..ev("pyun", "at-limit")
    };
    enqueue_all(s, &[ev("pyun", "small"), big.clone(), at_limit.clone()]).await;
    let rows = claim(s, "pyun", "w", 10, now_ms()).await;
    let by_key: HashMap<&str, &ClaimedRow> = rows
        .iter()
        .map(|r| (r.idempotency_key.as_str(), r))
        .collect();
    assert_eq!(by_key["small"].defect, None);
    assert_eq!(by_key["at-limit"].defect, None);
    assert!(by_key["at-limit"].payload == at_limit.payload);
    let b = by_key["big"];
    assert!(b.payload.is_empty(), "loaded {} bytes", b.payload.len());
    let defect = b.defect.as_deref().unwrap_or_default();
    assert!(
        defect.contains(&format!("payload is {} bytes", big.payload.len())),
        "{defect:?}"
    );
}

/// Issue 12 item 10: rows of a sink missing from this worker's config are held and counted,
/// and dead-lettered only once older than max_age.
async fn unconfigured_sinks_are_held_until_max_age(db: &Db) {
    let s = &db.store;
    enqueue_all(
        s,
        &[ev("pyun", "ok"), ev("ghost", "old"), ev("ghost", "new")],
    )
    .await;
    let now = now_ms();
    exec(
        s,
        &format!(
            "UPDATE outbox SET created_at = {} WHERE idempotency_key = 'old'",
            now - 7_200_000
        ),
    )
    .await;
    let known = vec!["pyun".to_string()];
    let hour = Duration::from_secs(3600);
    assert_eq!(
        s.dead_letter_unknown_sinks(&known, hour, now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(status(s, "ghost", "new").await, "pending", "held");
    let d = s.dead_list(Some("ghost"), None, None, 10).await.unwrap();
    assert_eq!(keys_of(&d), ["old"]);
    assert_eq!(d[0].kind, DeadKind::UnknownSink);
    let ghost = sink_stats(s, "ghost", now).await;
    assert_eq!((ghost.pending, ghost.unconfigured_since), (1, Some(now)));
    assert_eq!(sink_stats(s, "pyun", now).await.unconfigured_since, None);
    // Still held a round later, marked since the first round.
    assert_eq!(
        s.dead_letter_unknown_sinks(&known, hour, now + 1)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        sink_stats(s, "ghost", now).await.unconfigured_since,
        Some(now)
    );
    // A worker that has the sink clears the mark.
    let both = vec!["pyun".to_string(), "ghost".to_string()];
    assert_eq!(
        s.dead_letter_unknown_sinks(&both, hour, now + 2)
            .await
            .unwrap(),
        0
    );
    assert_eq!(sink_stats(s, "ghost", now).await.unconfigured_since, None);
}

fn keys_of(d: &[outbox_core::store::DeadRow]) -> Vec<&str> {
    d.iter().map(|d| d.idempotency_key.as_str()).collect()
}

/// Issue 12 item 11: a requeued row's max_age counts from the requeue (the claim's age
/// base), while the row keeps its producer's created_at.
async fn a_requeued_row_gets_a_fresh_age_clock(db: &Db) {
    let s = &db.store;
    s.enqueue(&ev("pyun", "old")).await.unwrap();
    let now = now_ms();
    let three_days = 3 * 24 * 3_600_000;
    exec(
        s,
        &format!(
            "UPDATE outbox SET created_at = {} WHERE idempotency_key = 'old'",
            now - three_days
        ),
    )
    .await;
    let rows = claim(s, "pyun", "w", 10, now).await;
    complete(s, "w", vec![completion(&rows[0], dead("HTTP 400"))], now).await;
    let d = dead_row_of(s, "old").await;
    assert_eq!(d.created_at, now - three_days);
    s.requeue(d.id, now, false).await.unwrap();
    let again = claim(s, "pyun", "w", 10, now).await;
    assert_eq!(again[0].created_at, now, "the age base is the requeue");
    // Its first transient failure is retried, not dead-lettered on max_age (48 h).
    let policy = outbox_core::retry::RetryPolicy::default();
    let age = Duration::from_millis((now_ms() - again[0].created_at) as u64);
    assert!(matches!(
        policy.decide(again[0].attempts, age, None, 0.5),
        outbox_core::retry::Decision::RetryAfter(_)
    ));
    // The producer's time is kept: dead-lettered again, the row still says when it came.
    complete(
        s,
        "w",
        vec![completion(&again[0], dead("HTTP 400 again"))],
        now,
    )
    .await;
    assert_eq!(dead_row_of(s, "old").await.created_at, now - three_days);
}

/// Issue 15: among rows of one (sink, supersede_key) only the newest is sent; the older
/// pending ones finish as `superseded` (final, counted as done, pruned by retention), and a
/// row already in flight is never touched by a newer one.
async fn older_rows_of_a_supersede_key_are_superseded(db: &Db) {
    let s = &db.store;
    let now = now_ms();
    let keyed = |key: &str, sk: &str| NewEvent {
        supersede_key: Some(sk.into()),
        ..ev("tcec", key)
    };
    // 10 rows for 3 keys, interleaved, plus one without a key; the same key on another
    // sink is independent.
    let mut events: Vec<NewEvent> = (0..10)
        .map(|i| keyed(&format!("s{i}"), ["A", "B", "C"][i % 3]))
        .collect();
    events.push(ev("tcec", "plain"));
    events.push(NewEvent {
        supersede_key: Some("A".into()),
        ..ev("pyun", "other-sink")
    });
    enqueue_all(s, &events).await;

    let rows = claim(s, "tcec", "w", 100, now).await;
    // Newest per key: A = s9, B = s7, C = s8.
    assert_eq!(keys(&rows), vec!["s7", "s8", "s9", "plain"]);
    for i in 0..7 {
        assert_eq!(
            status(s, "tcec", &format!("s{i}")).await,
            "superseded",
            "s{i}"
        );
    }
    assert_eq!(status(s, "pyun", "other-sink").await, "pending");
    let st = sink_stats(s, "tcec", now).await;
    assert_eq!((st.pending, st.in_flight, st.done), (0, 4, 7));

    // A newer row of key A while s9 is in flight: s9 stays in flight, the new row waits
    // for its own claim and is sent too.
    enqueue_all(s, &[keyed("s10", "A")]).await;
    let rows2 = claim(s, "tcec", "w", 100, now).await;
    assert_eq!(keys(&rows2), vec!["s10"]);
    assert_eq!(status(s, "tcec", "s9").await, "in_flight");

    // Superseded rows are final with finished_at set: retention prunes exactly them.
    assert_eq!(s.prune_finished(now + 1, 100).await.unwrap(), 7);
    assert_eq!(status(s, "tcec", "s0").await, "gone");
    assert_eq!(status(s, "tcec", "s9").await, "in_flight");
}

/// The admin page lists the latest dead letters: newest first, at most `limit`, whatever
/// the sink.
async fn dead_latest_lists_the_newest_dead_rows_first(db: &Db) {
    let s = &db.store;
    assert!(s
        .ops()
        .find_dead(&RowFilter::default(), 5, true)
        .await
        .unwrap()
        .is_empty());
    let known = vec!["pyun".to_string()];
    for i in 0..7 {
        s.enqueue(&ev(
            if i % 2 == 0 { "ghost" } else { "phantom" },
            &format!("L-{i}"),
        ))
        .await
        .unwrap();
        // One at a time, so the dead-letter order is the key order. A second ahead: the
        // row's creation time may come from the database's clock.
        let moved = s
            .dead_letter_unknown_sinks(&known, Duration::ZERO, now_ms() + 1_000)
            .await
            .unwrap();
        assert_eq!(moved, 1);
    }
    let latest = s
        .ops()
        .find_dead(&RowFilter::default(), 3, true)
        .await
        .unwrap();
    let keys: Vec<&str> = latest.iter().map(|d| d.idempotency_key.as_str()).collect();
    assert_eq!(keys, ["L-6", "L-5", "L-4"]);
    assert_eq!(
        s.ops()
            .find_dead(&RowFilter::default(), 100, true)
            .await
            .unwrap()
            .len(),
        7
    );
    assert_eq!(latest[0], s.dead_get(latest[0].id).await.unwrap().unwrap());
}

// ---------------------------------------------------------------------------------------
// Operators' filters and bulk actions (issue 16)
// ---------------------------------------------------------------------------------------

/// One text value from a query (no parameters).
async fn text_of(s: &Store, query: &str) -> Option<String> {
    let v = match s.engine() {
        Engine::Sqlite(st) => {
            sqlx::query_scalar::<_, Option<String>>(query)
                .fetch_one(st.pool())
                .await
        }
        Engine::Postgres(st) => {
            sqlx::query_scalar::<_, Option<String>>(query)
                .fetch_one(st.pool())
                .await
        }
    };
    v.unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// Every filter narrows, on both tables; nothing is matched as a pattern (`_` and `%` in
/// a prefix or a reason are plain characters); a filter that matches nothing says so
/// with empty results, not an error.
async fn operators_filters_find_rows_in_the_outbox_and_the_dead_letters(db: &Db) {
    let s = &db.store;
    let ops = s.ops();
    let now = now_ms();
    enqueue_all(
        s,
        &[
            ev("pyun", "CE-1"),
            ev("pyun", "CE-2"),
            ev("pyun", "C_E-3"),
            ev("pyun", "CXE-4"),
            ev("epeis", "DS-1"),
        ],
    )
    .await;
    let rows = claim(s, "pyun", "w", 10, now).await;
    let by_key = |k: &str| {
        rows.iter()
            .find(|r| r.idempotency_key == k)
            .unwrap()
            .clone()
    };
    complete(
        s,
        "w",
        vec![
            completion(&by_key("CE-1"), delivered()),
            completion(&by_key("CE-2"), dead("Gateway TIMEOUT at 50% load")),
            completion(
                &by_key("C_E-3"),
                Action::Retry {
                    next_at: now + 3_600_000,
                    error: "HTTP 503 timeout".into(),
                },
            ),
        ],
        now,
    )
    .await;
    // CXE-4 stays in flight.

    let f = |edit: fn(&mut RowFilter)| {
        let mut f = RowFilter::default();
        edit(&mut f);
        f
    };
    let keys_found = |rows: Vec<outbox_core::store::ops::ListedRow>| {
        rows.into_iter()
            .map(|r| r.idempotency_key)
            .collect::<Vec<_>>()
    };

    // Everything, newest first.
    let all = ops.find_rows(&RowFilter::default(), 100).await.unwrap();
    assert_eq!(
        keys_found(all),
        ["DS-1", "CXE-4", "C_E-3", "CE-1"],
        "the dead row has left the outbox"
    );
    assert_eq!(ops.count_rows(&RowFilter::default()).await.unwrap(), 4);
    assert_eq!(ops.count_dead(&RowFilter::default()).await.unwrap(), 1);

    let pyun = f(|f| f.sink = Some("pyun".into()));
    assert_eq!(ops.count_rows(&pyun).await.unwrap(), 3);
    let prefix = f(|f| f.key_prefix = Some("C_".into()));
    assert_eq!(
        keys_found(ops.find_rows(&prefix, 10).await.unwrap()),
        ["C_E-3"],
        "_ is not a wildcard"
    );
    let exact = f(|f| f.key = Some("CE-2".into()));
    assert!(ops.find_rows(&exact, 10).await.unwrap().is_empty());
    let dead = ops.find_dead(&exact, 10, false).await.unwrap();
    assert_eq!(keys_of(&dead), ["CE-2"]);

    // The reason, ignoring case, in the last error or the dead reason; % is plain text.
    let reason = f(|f| f.reason = Some("timeout".into()));
    assert_eq!(
        keys_found(ops.find_rows(&reason, 10).await.unwrap()),
        ["C_E-3"]
    );
    assert_eq!(
        keys_of(&ops.find_dead(&reason, 10, false).await.unwrap()),
        ["CE-2"]
    );
    let percent = f(|f| f.reason = Some("50% LOAD".into()));
    assert_eq!(ops.count_dead(&percent).await.unwrap(), 1);
    let not_percent = f(|f| f.reason = Some("5% load".into()));
    assert_eq!(ops.count_dead(&not_percent).await.unwrap(), 0);

    // States and kinds.
    let states = f(|f| f.states = vec![RowState::Pending, RowState::InFlight]);
    assert_eq!(
        keys_found(ops.find_rows(&states, 10).await.unwrap()),
        ["DS-1", "CXE-4", "C_E-3"]
    );
    assert!(!states.wants_dead());
    let unknown = f(|f| f.kinds = vec![DeadKind::Unknown]);
    assert!(!unknown.wants_outbox());
    assert_eq!(ops.count_dead(&unknown).await.unwrap(), 0);
    let permanent = f(|f| f.kinds = vec![DeadKind::Permanent]);
    assert_eq!(ops.count_dead(&permanent).await.unwrap(), 1);

    // Time windows: created_at for outbox rows; dead_at or created_at for dead rows.
    let future = f(|f| f.since = Some(now_ms() + 60_000));
    assert_eq!(ops.count_rows(&future).await.unwrap(), 0);
    assert_eq!(ops.count_dead(&future).await.unwrap(), 0);
    let past = RowFilter {
        until: Some(now_ms() + 60_000),
        since: Some(now - 60_000),
        time: TimeField::DeadAt,
        ..RowFilter::default()
    };
    assert_eq!(ops.count_rows(&past).await.unwrap(), 4);
    assert_eq!(ops.count_dead(&past).await.unwrap(), 1);

    // Ids, and ids of bulk selections, ascending.
    let ids = ops.row_ids(&pyun).await.unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let one = RowFilter {
        ids: vec![ids[0]],
        ..RowFilter::default()
    };
    assert_eq!(ops.count_rows(&one).await.unwrap(), 1);
    assert_eq!(ops.dead_ids_matching(&exact).await.unwrap(), [dead[0].id]);
    let listed: outbox_core::store::ops::ListedRow = dead[0].clone().into();
    assert_eq!((listed.place, listed.state.as_str()), (Place::Dead, "dead"));

    // Nothing matches: empty, not an error.
    let nothing = f(|f| f.key_prefix = Some("ZZ".into()));
    assert!(ops.find_rows(&nothing, 10).await.unwrap().is_empty());
    assert!(ops.row_ids(&nothing).await.unwrap().is_empty());
    assert!(ops.dead_ids_matching(&nothing).await.unwrap().is_empty());
    assert_eq!(
        ops.sinks_seen().await.unwrap(),
        ["epeis".to_string(), "pyun".to_string()]
    );
}

/// `cancel`: pending rows become final `cancelled` with the note; a row claimed between
/// the operator's listing and the cancel (in flight) is left alone; the history and the key
/// stay; a cancelled row is never claimed, is counted, shown by `outbox_outcomes`, and
/// pruned by retention.
async fn cancel_finishes_pending_rows_only_keeping_history_and_key(db: &Db) {
    let s = &db.store;
    let now = now_ms();
    enqueue_all(
        s,
        &[ev("pyun", "K-1"), ev("pyun", "K-2"), ev("pyun", "K-3")],
    )
    .await;
    let rows = claim(s, "pyun", "w", 1, now).await;
    assert_eq!(keys(&rows), ["K-1"]);
    complete(
        s,
        "w",
        vec![completion(
            &rows[0],
            Action::Retry {
                next_at: now,
                error: "HTTP 503".into(),
            },
        )],
        now,
    )
    .await;
    // The operator lists the pending rows ...
    let listed = s
        .ops()
        .row_ids(&RowFilter {
            states: vec![RowState::Pending],
            ..RowFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    // ... and a worker claims one of them (K-2: fresh rows are due first) before the cancel.
    let moved = claim(s, "pyun", "w", 1, now).await;
    assert_eq!(keys(&moved), ["K-2"]);

    let done = s
        .ops()
        .cancel_rows(&listed, now, "cancelled by ops: charger retired")
        .await
        .unwrap();
    let expected: Vec<i64> = listed
        .iter()
        .copied()
        .filter(|id| *id != moved[0].id)
        .collect();
    assert_eq!(done, expected, "the claimed row is not cancelled");
    assert_eq!(status(s, "pyun", "K-2").await, "in_flight");
    assert_eq!(status(s, "pyun", "K-1").await, "cancelled");
    assert_eq!(
        s.attempts(rows[0].id).await.unwrap().len(),
        1,
        "history kept"
    );
    let shown = s
        .ops()
        .find_rows(
            &RowFilter {
                states: vec![RowState::Cancelled],
                ..RowFilter::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(shown.len(), 2);
    assert_eq!(
        shown[0].reason.as_deref(),
        Some("cancelled by ops: charger retired")
    );
    assert_eq!(shown[0].finished_at, Some(now));
    // Cancelling again changes nothing.
    assert!(s
        .ops()
        .cancel_rows(&listed, now, "x")
        .await
        .unwrap()
        .is_empty());

    // K-2's attempt fails: pending again, with history; now it can be cancelled.
    complete(
        s,
        "w",
        vec![completion(
            &moved[0],
            Action::Retry {
                next_at: now,
                error: "HTTP 503".into(),
            },
        )],
        now,
    )
    .await;
    assert_eq!(
        s.ops().cancel_rows(&[moved[0].id], now, "x").await.unwrap(),
        [moved[0].id]
    );
    assert_eq!(s.attempts(moved[0].id).await.unwrap().len(), 1);

    // Never claimed, the key remembered, counted, shown to producers.
    assert!(claim(s, "pyun", "w", 10, now + 10_000).await.is_empty());
    assert!(!s.enqueue(&ev("pyun", "K-2")).await.unwrap(), "key known");
    assert_eq!(sink_stats(s, "pyun", now).await.cancelled, 3);
    assert_eq!(sink_stats(s, "pyun", now).await.done, 0);
    assert_eq!(
        text_of(
            s,
            "SELECT outcome FROM outbox_outcomes WHERE sink = 'pyun' AND idempotency_key = 'K-3'"
        )
        .await
        .as_deref(),
        Some("cancelled")
    );
    // Pruned by retention like other final rows, history with them.
    assert_eq!(s.prune_finished(now + 1, 10).await.unwrap(), 3);
    assert_eq!(status(s, "pyun", "K-2").await, "gone");
    assert!(s.attempts(moved[0].id).await.unwrap().is_empty());
    assert!(!s.enqueue(&ev("pyun", "K-1")).await.unwrap(), "still known");
}

/// `retry-now`: a row waiting on backoff becomes due now (not a due row, not an in-flight
/// one); a probe request is stored per sink, the latest wins, and pauses are untouched.
async fn make_due_ends_a_backoff_and_probe_requests_reach_the_daemon(db: &Db) {
    let s = &db.store;
    let now = now_ms();
    enqueue_all(
        s,
        &[ev("pyun", "B-1"), ev("pyun", "B-2"), ev("pyun", "B-3")],
    )
    .await;
    let rows = claim(s, "pyun", "w", 2, now).await;
    let hour = now + 3_600_000;
    complete(
        s,
        "w",
        vec![completion(
            &rows[0],
            Action::Retry {
                next_at: hour,
                error: "HTTP 503".into(),
            },
        )],
        now,
    )
    .await;
    assert!(claim(s, "pyun", "w", 10, now)
        .await
        .iter()
        .all(|r| r.id != rows[0].id));
    let all: Vec<i64> = s.ops().row_ids(&RowFilter::default()).await.unwrap();
    // B-1 waits an hour, B-2 is in flight, B-3 was claimed just now too (in flight).
    let changed = s.ops().make_due(&all, now + 1).await.unwrap();
    assert_eq!(changed, [rows[0].id]);
    assert!(s.ops().make_due(&all, now + 1).await.unwrap().is_empty());
    let again = claim(s, "pyun", "w", 10, now + 1).await;
    assert_eq!(keys(&again), ["B-1"]);
    assert_eq!(again[0].attempts, 2, "attempts are not reset");

    assert!(s.ops().probe_requests().await.unwrap().is_empty());
    s.ops().request_probe("pyun", 5).await.unwrap();
    s.ops().request_probe("epeis", 6).await.unwrap();
    s.ops().request_probe("pyun", 7).await.unwrap();
    assert_eq!(
        s.ops().probe_requests().await.unwrap(),
        [("epeis".to_string(), 6), ("pyun".to_string(), 7)]
    );
    assert!(s.paused_sinks().await.unwrap().is_empty());
    s.set_paused("pyun", true, None).await.unwrap();
    assert_eq!(s.ops().probe_requests().await.unwrap().len(), 2);
}

/// `dead purge` by chosen ids: those rows and their history go; other dead rows and a
/// history a requeued row owns again stay.
async fn delete_dead_removes_chosen_rows_and_their_history(db: &Db) {
    let s = &db.store;
    let now = now_ms();
    let events: Vec<NewEvent> = (0..3).map(|i| ev("pyun", &format!("D-{i}"))).collect();
    enqueue_all(s, &events).await;
    let rows = claim(s, "pyun", "w", 10, now).await;
    complete(
        s,
        "w",
        rows.iter()
            .map(|r| completion(r, dead("HTTP 400")))
            .collect(),
        now,
    )
    .await;
    let dead_rows = s.dead_list(None, None, None, 10).await.unwrap();
    assert_eq!(dead_rows.len(), 3);
    assert!(s.ops().delete_dead(&[]).await.unwrap() == 0);
    let chosen = [dead_rows[0].id, dead_rows[1].id];
    assert_eq!(s.ops().delete_dead(&chosen).await.unwrap(), 2);
    assert_eq!(s.ops().delete_dead(&chosen).await.unwrap(), 0);
    assert!(s.attempts(dead_rows[0].outbox_id).await.unwrap().is_empty());
    assert!(s.attempts(dead_rows[1].outbox_id).await.unwrap().is_empty());
    assert_eq!(s.attempts(dead_rows[2].outbox_id).await.unwrap().len(), 1);
    assert_eq!(
        keys_of(&s.dead_list(None, None, None, 10).await.unwrap()),
        ["D-2"]
    );
}

/// Issue 14: Postgres claims from where its last full claim ended, so a long drain does not
/// step over the dead index entries of every row claimed so far. A row that becomes due
/// behind that point (here: put back with an old due time) is still claimed, once a claim
/// comes up short, and no row is claimed twice. (SQLite scans from the head every time: the
/// same sequence holds there.)
async fn a_row_due_behind_the_claim_cursor_is_still_claimed(db: &Db) {
    let s = &db.store;
    for i in 0..10 {
        s.enqueue(&ev("pyun", &format!("C-{i}"))).await.unwrap();
    }
    let now = now_ms() + 1_000;
    let lease = now + 60_000;
    let first = s.claim("pyun", "w1", 4, now, lease).await.unwrap();
    assert_eq!(keys_of_claimed(&first), ["C-0", "C-1", "C-2", "C-3"]);
    // C-0 is given back, due as early as any row: behind where the full claim ended.
    let put_back = format!(
        "UPDATE outbox SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
                next_attempt_at = (SELECT min(o.next_attempt_at) FROM outbox o) WHERE id = {}",
        first[0].id
    );
    assert_eq!(exec(s, &put_back).await, 1);
    let mut claimed: Vec<String> = keys_of_claimed(&first);
    let mut rounds = 0;
    loop {
        let rows = s.claim("pyun", "w1", 4, now, lease).await.unwrap();
        rounds += 1;
        if rows.is_empty() {
            break;
        }
        claimed.extend(keys_of_claimed(&rows));
        assert!(rounds < 10, "claims never end: {claimed:?}");
    }
    let mut keys = claimed.clone();
    keys.sort();
    let expected: Vec<String> = std::iter::once("C-0".to_string())
        .chain((0..10).map(|i| format!("C-{i}")))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .flat_map(|k| {
            // C-0 was claimed twice: before it was put back, and after.
            if k == "C-0" {
                vec![k.clone(), k]
            } else {
                vec![k]
            }
        })
        .collect();
    assert_eq!(
        keys, expected,
        "every row claimed, C-0 again after it was put back"
    );
}

fn keys_of_claimed(rows: &[outbox_core::event::ClaimedRow]) -> Vec<String> {
    rows.iter().map(|r| r.idempotency_key.clone()).collect()
}

/// What `run --until-idle` reads to know it is done: pending and in-flight rows per sink,
/// never final ones (issue 14: without the full pass of `stats`).
async fn open_rows_count_pending_and_in_flight_only(db: &Db) {
    let s = &db.store;
    assert!(s.open_rows().await.unwrap().is_empty());
    for i in 0..3 {
        s.enqueue(&ev("pyun", &format!("O-{i}"))).await.unwrap();
    }
    s.enqueue(&ev("epeis", "O-e")).await.unwrap();
    let now = now_ms() + 1_000;
    let claimed = s.claim("pyun", "w1", 2, now, now + 60_000).await.unwrap();
    assert_eq!(claimed.len(), 2);
    // One claimed row finishes: it is no longer open.
    let done = Completion {
        id: claimed[0].id,
        sink: "pyun".into(),
        attempt: 1,
        action: Action::Delivered {
            hint: None,
            result: None,
        },
        info: None,
        outcome_label: "delivered",
    };
    let (lost, _) = s
        .cycle("w1", &[done], &[], &[], now, now + 60_000)
        .await
        .unwrap();
    assert_eq!(lost, 0);
    let mut open = s.open_rows().await.unwrap();
    open.sort();
    assert_eq!(open, [("epeis".to_string(), 1), ("pyun".to_string(), 2)]);
}
