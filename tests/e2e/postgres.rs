//! Several `outboxd` processes draining one Postgres outbox.

use std::time::Duration;

use outbox_core::clock::now_ms;
use outboxd_e2e::{postgres_available, Env, PgCluster};
use platform_sim::Platform;

const ROWS: usize = 5000;
const WORKERS: usize = 3;

async fn fill(env: &Env, n: usize) {
    let pool = sqlx::PgPool::connect(&env.db_url).await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (sink, event_type, idempotency_key, payload) \
         SELECT 'pyun', 'charge_end', 'PG-' || g, json_build_object( \
             'station_uuid', '8f5fdb60-9374-4c11-bdc2-a32d8369258c', 'device_no', 'S1', 'port_no', '1', \
             'replenish_order', 'PG-' || g, 'start_time', '2026-11-24T08:20:00Z', \
             'end_time', '2026-11-24T09:20:00Z', 'quantity', 6556, 'energy_value', 207, \
             'fee_value', 975, 'total_value', 1182, 'energy_code', 'CN_AC')::text \
         FROM generate_series(1, $1) g",
    )
    .bind(n as i64)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

/// Waits (bounded) until no row is pending or in flight. The database is the only shared
/// state of the workers, so it is polled.
async fn drained(env: &Env, deadline: Duration) {
    let store = env.store().await;
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let stats = store.stats(now_ms()).await.unwrap();
        let open: i64 = stats.iter().map(|s| s.pending + s.in_flight).sum();
        if open == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "not drained in time: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
}

async fn stop_all(daemons: Vec<tokio::process::Child>) {
    for mut d in daemons {
        let pid = d.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(20), d.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "worker exited with {status}");
    }
}

fn config(env: &Env) {
    // Polling as a fallback only: the workers are woken by LISTEN/NOTIFY.
    env.write_config("");
}

#[tokio::test]
async fn three_workers_drain_one_outbox_each_key_exactly_once() {
    if !postgres_available() {
        return;
    }
    let env = Env::postgres().await.unwrap();
    config(&env);
    fill(&env, ROWS).await;
    let daemons: Vec<_> = (0..WORKERS).map(|_| env.spawn_daemon_logged().0).collect();
    assert!(
        env.sim
            .wait_for_requests(ROWS, Duration::from_secs(120))
            .await,
        "the workers made too little progress"
    );
    drained(&env, Duration::from_secs(60)).await;
    stop_all(daemons).await;
    let requests = env.sim.requests();
    assert_eq!(
        requests.len(),
        ROWS,
        "a key was sent twice: no fault happened, so no duplicate is excusable"
    );
    assert_eq!(env.sim.applied_keys(Platform::Pyun).len(), ROWS);
    // The work was shared: every worker delivered some.
    let store = env.store().await;
    let stats = store.stats(now_ms()).await.unwrap();
    assert_eq!(stats[0].delivered, ROWS as i64);
}

#[tokio::test]
async fn a_postgres_restart_mid_drain_loses_nothing() {
    if !postgres_available() {
        return;
    }
    let cluster = PgCluster::start();
    let env = Env::postgres_on(&cluster.url).await;
    config(&env);
    fill(&env, ROWS).await;
    let daemons: Vec<_> = (0..WORKERS).map(|_| env.spawn_daemon_logged().0).collect();
    assert!(
        env.sim
            .wait_for_requests(ROWS / 4, Duration::from_secs(60))
            .await,
        "no progress before the restart"
    );
    cluster.restart();
    assert!(
        env.sim
            .wait_for_requests(ROWS, Duration::from_secs(120))
            .await,
        "no progress after the restart"
    );
    drained(&env, Duration::from_secs(90)).await;
    stop_all(daemons).await;
    for i in 1..=ROWS {
        assert_eq!(
            env.sim.applied_count(Platform::Pyun, &format!("PG-{i}")),
            1,
            "PG-{i} lost"
        );
    }
    // Duplicates only for rows in flight at the restart: at most every worker's slots.
    let duplicates = env.sim.requests().len() - ROWS;
    assert!(
        duplicates <= WORKERS * 16,
        "{duplicates} duplicate requests"
    );
    eprintln!("duplicates after the restart: {duplicates}");
}
