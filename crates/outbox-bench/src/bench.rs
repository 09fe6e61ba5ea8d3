//! The benchmark scenarios. Each prints a Markdown table; every outboxd figure comes from the
//! real `outboxd` binary delivering to the real `platform-sim` on loopback, and the drain
//! tables start with the bare loop: the same HTTP workload (a validated payload, a fresh
//! signature, a POST, the reply classified) sent by plain tokio + reqwest with no queue, to
//! the same simulator endpoint. That is the upper bound on this machine; every outboxd rate
//! is also printed as a fraction of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_core::outcome::Verdict;
use outbox_core::secret::Secret;
use outbox_core::sinks::pyun::{self, PyunCodes};
use outbox_core::sinks::send::Sender;
use outbox_core::sinks::SinkSettings;
use outbox_core::store::{Engine, OpenOptions, Store};

use crate::env::{
    fail, now_ms, pyun_payload, pyun_sink, quantile, self_cpu_secs, status_kb, thousands, Bulk,
    Config, Daemon, Db, Pg, PgCpu, Pool, Result, Sim, Table, Work,
};

/// What every scenario runs with.
pub struct Ctx {
    pub work: Work,
    pub pg: Option<Pg>,
    pub quick: bool,
}

// ---------------------------------------------------------------------------------------
// The machine

pub async fn machine(ctx: &Ctx) -> Result<Table> {
    let mut t = Table::new("Machine", &["what", "value"]);
    let sh = |c: &str| -> String {
        std::process::Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    t.row(vec!["cores (nproc)".into(), sh("nproc")]);
    t.row(vec![
        "CPU".into(),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'"),
    ]);
    t.row(vec![
        "memory".into(),
        sh("free -m | awk '/^Mem:/ {print $2 \" MiB\"}'"),
    ]);
    t.row(vec!["kernel".into(), sh("uname -r")]);
    let dd = ctx.work.dir.join("dd.test");
    let fsync = sh(&format!(
        "dd if=/dev/zero of={} bs=4k count=500 oflag=dsync 2>&1 | tail -1; rm -f {}",
        dd.display(),
        dd.display()
    ));
    // "2048000 bytes (2.0 MB, 2.0 MiB) copied, 1.86 s, 1.1 MB/s": 500 synchronous writes.
    let per_write = fsync
        .split(", ")
        .find(|p| p.ends_with(" s"))
        .and_then(|p| p.trim_end_matches(" s").parse::<f64>().ok())
        .map(|s| format!("{:.2} ms per 4 KiB write", s * 1000.0 / 500.0))
        .unwrap_or_default();
    t.row(vec![
        format!(
            "fsync latency (dd bs=4k count=500 oflag=dsync, in {})",
            ctx.work.dir.display()
        ),
        format!("{per_write} ({fsync})"),
    ]);
    t.row(vec![
        "SQLite (linked into outboxd)".into(),
        sqlite_version().await,
    ]);
    if let Some(pg) = &ctx.pg {
        let v = match sqlx::PgPool::connect(&pg.url).await {
            Ok(p) => {
                let v: String = sqlx::query_scalar("SHOW server_version")
                    .fetch_one(&p)
                    .await
                    .unwrap_or_default();
                let fsync: String = sqlx::query_scalar(
                    "SELECT current_setting('fsync') || ', synchronous_commit=' || current_setting('synchronous_commit') || ', shared_buffers=' || current_setting('shared_buffers')",
                )
                .fetch_one(&p)
                .await
                .unwrap_or_default();
                p.close().await;
                format!("{v} (fsync={fsync})")
            }
            Err(e) => format!("unreachable: {e}"),
        };
        t.row(vec!["PostgreSQL".into(), v]);
    }
    Ok(t)
}

async fn sqlite_version() -> String {
    match sqlx::SqlitePool::connect("sqlite::memory:").await {
        Ok(p) => sqlx::query_scalar::<_, String>("SELECT sqlite_version()")
            .fetch_one(&p)
            .await
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

// ---------------------------------------------------------------------------------------
// The bare loop

pub struct Bare {
    pub requests: u64,
    pub delivered: u64,
    pub secs: f64,
    pub client_cpu: f64,
    pub sim_cpu: f64,
}

impl Bare {
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
}

/// `n` charge_end deliveries to the simulator's 4pyun endpoint by `concurrency` tasks of a
/// plain loop: each builds the request exactly as the pyun sink does (validate the payload,
/// sign with a fresh timestamp) with outboxd's own HTTP client settings, and classifies the
/// reply; no database, no queue.
pub async fn bare_loop(sim: &Sim, n: u64, concurrency: usize, prefix: &str) -> Result<Bare> {
    let settings: SinkSettings = serde_json::from_value(serde_json::json!({
        "url": sim.pyun_url(),
        "concurrency": concurrency,
        "timeout": "10s",
        "connect_timeout": "5s",
    }))?;
    let secret = Secret::new(platform_sim::config::DEMO_PYUN_APP_SECRET);
    let client = Sender::new(&settings, secret.clone())?;
    let secret = Arc::new(secret);
    let url = Arc::new(sim.pyun_url());
    let next = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let (sim0, cpu0, t0) = (sim.cpu_secs(), self_cpu_secs(), Instant::now());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, secret, url, next, delivered) = (
            client.clone(),
            secret.clone(),
            url.clone(),
            next.clone(),
            delivered.clone(),
        );
        let prefix = prefix.to_string();
        tasks.spawn(async move {
            let codes = PyunCodes::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let key = format!("{prefix}{i}");
                let payload = pyun_payload(&key);
                let Ok(fields) = pyun::validate(&payload, &key) else {
                    continue;
                };
                let body = pyun::form_body(
                    &fields,
                    platform_sim::config::DEMO_PYUN_APP_ID,
                    &secret,
                    now_ms(),
                );
                let sent = client
                    .post(
                        url.as_str(),
                        "application/x-www-form-urlencoded; charset=UTF-8",
                        body,
                    )
                    .await;
                if let Ok(reply) = sent.result {
                    let c = pyun::classify(reply.status, reply.retry_after, &reply.body, &codes);
                    if matches!(c.verdict, Verdict::Delivered { .. }) {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(Bare {
        requests: n,
        delivered: delivered.load(Ordering::Relaxed),
        secs: t0.elapsed().as_secs_f64(),
        client_cpu: self_cpu_secs() - cpu0,
        sim_cpu: sim.cpu_secs() - sim0,
    })
}

// ---------------------------------------------------------------------------------------
// Drains

/// One drain by `workers` outboxd processes, each `run --until-idle`.
pub struct Drain {
    pub rows: u64,
    pub wall: f64,
    /// First claim to last verdict of this run's rows, from the database.
    pub span: f64,
    pub cpu: f64,
    pub sim_cpu: f64,
    /// Postgres server CPU during the drain (None on SQLite: it runs inside outboxd).
    pub db_cpu: Option<f64>,
    pub rss_mib: f64,
    pub sim_rss_mib: f64,
    pub delivered: i64,
    pub applied: usize,
    pub resent: usize,
}

impl Drain {
    pub fn rate(&self) -> f64 {
        self.rows as f64 / self.wall
    }
    pub fn span_rate(&self) -> f64 {
        self.rows as f64 / self.span
    }
}

/// The drain's config: the sink's defaults when `concurrency` is 0, else that ceiling.
pub fn drain_config(work: &Work, sim: &Sim, concurrency: usize) -> Config {
    let line = format!("concurrency = {concurrency}");
    let extra: &[&str] = if concurrency == 0 { &[] } else { &[&line] };
    Config {
        log_level: Some("warn".into()),
        sinks: vec![pyun_sink(work, "pyun", sim, extra)],
        ..Config::default()
    }
}

/// Tasks of the bare loop beside a drain at `concurrency` (0: the defaults): as many, or
/// [`BARE_TASKS`] beside the defaults.
pub fn bare_tasks(concurrency: usize) -> usize {
    if concurrency == 0 {
        BARE_TASKS
    } else {
        concurrency
    }
}

/// The bare loop's tasks beside a drain with the default configuration: past its knee on
/// this kind of machine (`outbox-bench baseline --concurrency N`), so the ratio is against
/// the loop at its best.
pub const BARE_TASKS: usize = 128;

/// A simulator that counts requests and keeps none (the bench's sink must not be the limit).
pub async fn counting_sim(work: &Work, name: &str) -> Result<Sim> {
    Sim::start(work, name, Some(serde_json::json!({ "count_only": true }))).await
}

/// Drains the `rows` pending rows of `db` (already inserted) with a fresh simulator.
pub async fn drain_once(
    ctx: &Ctx,
    db: &Db,
    rows: u64,
    concurrency: usize,
    workers: usize,
    name: &str,
) -> Result<Drain> {
    let sim = counting_sim(&ctx.work, &format!("{name}-sim")).await?;
    let config = drain_config(&ctx.work, &sim, concurrency);
    let pg = matches!(db.pool, Pool::Pg(_));
    let db_cpu = pg.then(PgCpu::start);
    let start_ms = now_ms();
    let t0 = Instant::now();
    let mut daemons = Vec::new();
    for w in 0..workers {
        daemons.push(Daemon::spawn(
            &ctx.work,
            &format!("{name}-outboxd{w}"),
            &db.url,
            &config,
            true,
        )?);
    }
    let limit = Duration::from_secs(60 + rows / 500);
    let mut exits = Vec::new();
    for d in &mut daemons {
        let e = d.wait(limit).await?;
        if !e.success() {
            return fail(format!(
                "{} failed ({e:?}):\n{}",
                d.name,
                crate::env::tail(&d.log_text(), 20)
            ));
        }
        exits.push(e);
    }
    let wall = t0.elapsed().as_secs_f64();
    let db_cpu = match db_cpu {
        Some(c) => Some(c.finish().await),
        None => None,
    };
    let sim_cpu = sim.cpu_secs();
    let stats = sim.stats().await?;
    let span_ms = db
        .int(&format!(
            "SELECT max(finished_at) - min(last_attempt_at) FROM outbox \
             WHERE status = 'delivered' AND last_attempt_at >= {start_ms}"
        ))
        .await?;
    let delivered = db
        .int(&format!(
            "SELECT count(*) FROM outbox WHERE status = 'delivered' AND last_attempt_at >= {start_ms}"
        ))
        .await?;
    Ok(Drain {
        rows,
        wall,
        span: (span_ms.max(1) as f64) / 1000.0,
        cpu: exits.iter().map(|e| e.cpu_secs()).sum(),
        sim_cpu,
        db_cpu,
        rss_mib: exits.iter().map(|e| e.max_rss_kb).max().unwrap_or(0) as f64 / 1024.0,
        sim_rss_mib: sim.rss_mib(),
        delivered,
        applied: stats.pyun.applied,
        resent: stats.pyun.requests.saturating_sub(stats.pyun.applied),
    })
}

fn pct(cpu: f64, secs: f64) -> String {
    format!("{:.0}%", cpu / secs * 100.0)
}

/// Scenario 1 (and 5): drain `rows` rows on SQLite, and on Postgres with 1, 2 and 4
/// outboxd processes on one outbox, beside the bare loop.
pub async fn drain(
    ctx: &Ctx,
    rows: u64,
    concurrency: usize,
    pg_workers: &[usize],
    repeat: usize,
) -> Result<Table> {
    let runs = if repeat > 1 {
        format!(", median of {repeat} runs [min-max rows/s]")
    } else {
        String::new()
    };
    let setting = if concurrency == 0 {
        "default configuration".to_string()
    } else {
        format!("sink concurrency {concurrency} per outboxd")
    };
    let mut t = Table::new(
        &format!("Drain {} rows ({setting}){runs}", thousands(rows as f64)),
        &[
            "sender",
            "wall s",
            "rows/s",
            "× bare loop",
            "first claim → last verdict, rows/s",
            "sender CPU (of 1 core)",
            "Postgres CPU",
            "simulator CPU",
            "peak RSS (outboxd)",
            "delivered / applied / re-sent",
        ],
    );
    let spread = |rates: &[f64]| {
        if rates.len() > 1 {
            let (lo, hi) = rates
                .iter()
                .fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
            format!(" [{}-{}]", thousands(lo), thousands(hi))
        } else {
            String::new()
        }
    };
    let mut bares = Vec::new();
    for i in 0..repeat {
        let sim = counting_sim(&ctx.work, "bare-sim").await?;
        let tasks = bare_tasks(concurrency);
        bares.push(bare_loop(&sim, rows, tasks, &format!("L{i}-")).await?);
    }
    bares.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let rates: Vec<f64> = bares.iter().map(Bare::rate).collect();
    let bare = &bares[bares.len() / 2];
    t.row(vec![
        format!("bare tokio+reqwest loop, {} tasks", bare_tasks(concurrency)),
        format!("{:.2}", bare.secs),
        format!("{}{}", thousands(bare.rate()), spread(&rates)),
        "1.00".into(),
        "".into(),
        pct(bare.client_cpu, bare.secs),
        "".into(),
        pct(bare.sim_cpu, bare.secs),
        "".into(),
        format!("{} / {} / 0", bare.delivered, bare.requests),
    ]);
    let bare_rate = bare.rate();
    let mut row = |label: String, mut ds: Vec<Drain>| {
        ds.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        let rates: Vec<f64> = ds.iter().map(Drain::rate).collect();
        let d = &ds[ds.len() / 2];
        t.row(vec![
            label,
            format!("{:.2}", d.wall),
            format!("{}{}", thousands(d.rate()), spread(&rates)),
            format!("{:.2}", d.rate() / bare_rate),
            thousands(d.span_rate()),
            pct(d.cpu, d.wall),
            d.db_cpu.map(|c| pct(c, d.wall)).unwrap_or_default(),
            pct(d.sim_cpu, d.wall),
            format!("{:.1} MiB", d.rss_mib),
            format!("{} / {} / {}", d.delivered, d.applied, d.resent),
        ]);
    };
    let mut ds = Vec::new();
    for i in 0..repeat {
        let dir = ctx.work.sub("drain-sqlite")?;
        let db = Db::sqlite(&dir.join("outbox.db")).await?;
        db.insert_pending("pyun", "B", rows).await?;
        ds.push(drain_once(ctx, &db, rows, concurrency, 1, &format!("drain-sqlite{i}")).await?);
        db.close().await;
    }
    row("outboxd, SQLite (synchronous=FULL)".into(), ds);
    if let Some(pg) = &ctx.pg {
        for &w in pg_workers {
            let mut ds = Vec::new();
            for i in 0..repeat {
                let db = Db::postgres(pg, &format!("drain{w}_{i}")).await?;
                db.insert_pending("pyun", "B", rows).await?;
                ds.push(
                    drain_once(ctx, &db, rows, concurrency, w, &format!("drain-pg{w}-{i}")).await?,
                );
                db.close().await;
                pg.drop_database(&db.url).await;
            }
            row(
                format!(
                    "outboxd, Postgres, {w} process{}",
                    if w > 1 { "es" } else { "" }
                ),
                ds,
            );
        }
    }
    Ok(t)
}

// ---------------------------------------------------------------------------------------
// Latency

/// Scenario 2: rows inserted one by one at `rate` per second for `secs`, an idle daemon with
/// default settings; from the row's `created_at` (set by the database) to the simulator's
/// `received_at_ms`.
pub async fn latency(ctx: &Ctx, rate: f64, secs: f64) -> Result<Table> {
    let mut t = Table::new(
        &format!("Insert-to-delivery latency, {rate} rows/s for {secs} s, default settings"),
        &[
            "backend (wake-up)",
            "rows",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "p50 insert → claim",
            "p50 claim → platform",
        ],
    );
    let dir = ctx.work.sub("latency-sqlite")?;
    let db = Db::sqlite(&dir.join("outbox.db")).await?;
    t.row(latency_once(ctx, &db, rate, secs, "SQLite (inotify on the WAL)").await?);
    db.close().await;
    if let Some(pg) = &ctx.pg {
        let db = Db::postgres(pg, "latency").await?;
        t.row(latency_once(ctx, &db, rate, secs, "Postgres (LISTEN/NOTIFY)").await?);
        db.close().await;
    }
    Ok(t)
}

async fn latency_once(
    ctx: &Ctx,
    db: &Db,
    rate: f64,
    secs: f64,
    label: &str,
) -> Result<Vec<String>> {
    let name = format!("latency-{}", db.backend());
    let sim = Sim::start(&ctx.work, &format!("{name}-sim"), None).await?;
    // Default settings: only what a sink must have.
    let config = Config {
        sinks: vec![pyun_sink(&ctx.work, "pyun", &sim, &[])],
        ..Config::default()
    };
    let mut daemon = Daemon::start(&ctx.work, &format!("{name}-outboxd"), &db.url, &config).await?;
    // Let the daemon settle into idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = (rate * secs).round() as u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    for i in 0..n {
        tick.tick().await;
        let key = format!("T{i}");
        db.enqueue("pyun", "charge_end", &key, &pyun_payload(&key))
            .await?;
    }
    db.wait_drained(Duration::from_secs(30)).await?;
    let requests = sim.requests().await?;
    let mut received: HashMap<String, i64> = HashMap::new();
    for r in requests.iter().filter(|r| r.applied) {
        if let Some(k) = &r.key {
            received.entry(k.clone()).or_insert(r.received_at_ms);
        }
    }
    let rows = db
        .rows("SELECT idempotency_key, CAST(created_at AS TEXT), CAST(last_attempt_at AS TEXT) FROM outbox")
        .await?;
    let (mut total, mut wake, mut send) = (Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        let (Some(k), Some(c), Some(a)) = (&r[0], &r[1], &r[2]) else {
            continue;
        };
        let (c, a): (i64, i64) = (c.parse()?, a.parse()?);
        if let Some(rcv) = received.get(k) {
            total.push((rcv - c) as f64);
            wake.push((a - c) as f64);
            send.push((rcv - a) as f64);
        }
    }
    daemon.stop(Duration::from_secs(10)).await?;
    if total.len() as u64 != n {
        return fail(format!(
            "only {} of {n} rows reached the platform",
            total.len()
        ));
    }
    for v in [&mut total, &mut wake, &mut send] {
        v.sort_by(f64::total_cmp);
    }
    let ms = |v: f64| format!("{v:.0}");
    Ok(vec![
        label.into(),
        n.to_string(),
        ms(quantile(&total, 0.5)),
        ms(quantile(&total, 0.95)),
        ms(quantile(&total, 0.99)),
        ms(quantile(&total, 1.0)),
        ms(quantile(&wake, 0.5)),
        ms(quantile(&send, 0.5)),
    ])
}

// ---------------------------------------------------------------------------------------
// Backlog scaling

/// The claim statement of `store/sqlite.rs::claim_in`, copied so it can be timed inside a
/// transaction that is rolled back (keep it in step with the store).
const SQLITE_CLAIM: &str = "UPDATE outbox SET status = 'in_flight', lease_owner = ?1, lease_expires_at = ?2, \
        attempts = attempts + 1, last_attempt_at = ?3 \
     WHERE id IN ( \
        SELECT o.id FROM outbox o \
        WHERE o.sink = ?4 AND o.status = 'pending' AND o.next_attempt_at <= ?3 \
          AND (o.ordering_key IS NULL OR NOT EXISTS ( \
                SELECT 1 FROM outbox e \
                WHERE e.ordering_key = o.ordering_key AND e.id < o.id \
                  AND e.status IN ('pending', 'in_flight'))) \
        ORDER BY o.next_attempt_at, o.id LIMIT ?5) \
     RETURNING id, sink, event_type, idempotency_key, payload, ordering_key, created_at, attempts, flow_state, in_doubt";

pub struct Case {
    pub label: String,
    pub pending: u64,
    pub delivered: u64,
}

struct Claim {
    committed: Vec<f64>,
    statement: Vec<f64>,
    plan: String,
}

const CLAIMS: usize = 25;
const CLAIM_LIMIT: u32 = 256;

/// Times `Store::claim` (the daemon's own call: one statement, committed, so one fsync on
/// SQLite) and, on SQLite, the bare statement in a rolled-back transaction. Every claimed
/// row is put back after each timing.
async fn claim_cost(db: &Db) -> Result<Claim> {
    let store = Store::open(
        &db.url,
        &OpenOptions {
            max_connections: 2,
            ..OpenOptions::default()
        },
    )
    .await?;
    let reset =
        "UPDATE outbox SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
                 attempts = 0, last_attempt_at = NULL WHERE status = 'in_flight'";
    let mut committed = Vec::new();
    for _ in 0..CLAIMS {
        let now = now_ms();
        let t = Instant::now();
        let rows = store
            .claim("pyun", "bench-claim", CLAIM_LIMIT, now, now + 120_000)
            .await?;
        committed.push(t.elapsed().as_secs_f64() * 1000.0);
        if rows.len() as u32 != CLAIM_LIMIT {
            return fail(format!("claimed {} rows, not {CLAIM_LIMIT}", rows.len()));
        }
        db.exec(reset).await?;
    }
    let mut statement = Vec::new();
    let plan = match (store.engine(), &db.pool) {
        (Engine::Sqlite(_), Pool::Sqlite(pool)) => {
            let mut conn = pool.acquire().await?;
            for _ in 0..CLAIMS {
                let now = now_ms();
                sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
                let t = Instant::now();
                let rows = sqlx::query(SQLITE_CLAIM)
                    .bind("bench-claim")
                    .bind(now + 120_000)
                    .bind(now)
                    .bind("pyun")
                    .bind(i64::from(CLAIM_LIMIT))
                    .fetch_all(&mut *conn)
                    .await?;
                statement.push(t.elapsed().as_secs_f64() * 1000.0);
                sqlx::query("ROLLBACK").execute(&mut *conn).await?;
                if rows.len() as u32 != CLAIM_LIMIT {
                    return fail(format!("statement claimed {} rows", rows.len()));
                }
            }
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {SQLITE_CLAIM}"))
                    .bind("bench-claim")
                    .bind(0i64)
                    .bind(0i64)
                    .bind("pyun")
                    .bind(256i64)
                    .fetch_all(&mut *conn)
                    .await?;
            plan.into_iter().map(|p| p.3).collect::<Vec<_>>().join("; ")
        }
        (Engine::Postgres(pg), _) => pg
            .explain_claim("pyun", now_ms(), CLAIM_LIMIT)
            .await?
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::new(),
    };
    store.close().await;
    committed.sort_by(f64::total_cmp);
    statement.sort_by(f64::total_cmp);
    Ok(Claim {
        committed,
        statement,
        plan,
    })
}

/// Scenario 3 (and the peak RSS of scenario 4): claim cost and drain rate per backlog.
pub async fn backlog(ctx: &Ctx, cases: &[Case], concurrency: usize) -> Result<Vec<Table>> {
    let drains = if concurrency == 0 {
        "drains with the default configuration".to_string()
    } else {
        format!("drains at concurrency {concurrency}")
    };
    let mut t = Table::new(
        &format!("Backlog scaling (claims of {CLAIM_LIMIT} rows, {CLAIMS} each; {drains})"),
        &[
            "backend",
            "backlog",
            "claim p50 ms (committed)",
            "claim p95 ms",
            "claim × first",
            "statement p50 ms (rolled back)",
            "statement × first",
            "drain rows/s (first claim → last verdict)",
            "drain × first",
            "drain wall s",
            "peak RSS outboxd",
            "peak RSS simulator",
        ],
    );
    let mut plans = Table::new("Claim plans", &["backend", "backlog", "plan"]);
    let mut backends = vec!["sqlite"];
    if ctx.pg.is_some() {
        backends.push("postgres");
    }
    for backend in backends {
        let mut first: Option<(f64, f64, f64)> = None;
        for (i, case) in cases.iter().enumerate() {
            let db = match (backend, &ctx.pg) {
                ("postgres", Some(pg)) => Db::postgres(pg, &format!("backlog{i}")).await?,
                _ => {
                    let dir = ctx.work.sub(&format!("backlog-sqlite{i}"))?;
                    Db::sqlite(&dir.join("outbox.db")).await?
                }
            };
            let t0 = Instant::now();
            if case.delivered > 0 {
                db.insert_delivered("pyun", "D", case.delivered).await?;
            }
            db.insert_pending("pyun", "B", case.pending).await?;
            eprintln!(
                "  {backend} {}: inserted in {:.1} s",
                case.label,
                t0.elapsed().as_secs_f64()
            );
            let claim = claim_cost(&db).await?;
            let d = drain_once(
                ctx,
                &db,
                case.pending,
                concurrency,
                1,
                &format!("backlog-{backend}{i}"),
            )
            .await?;
            if d.delivered != case.pending as i64 {
                return fail(format!(
                    "{backend} {}: {} of {} delivered",
                    case.label, d.delivered, case.pending
                ));
            }
            let c50 = quantile(&claim.committed, 0.5);
            let s50 = quantile(&claim.statement, 0.5);
            let base = *first.get_or_insert((c50, s50, d.span_rate()));
            let ratio = |a: f64, b: f64| {
                if a.is_nan() || b.is_nan() {
                    String::new()
                } else {
                    format!("{:.2}", a / b)
                }
            };
            let ms = |v: f64| {
                if v.is_nan() {
                    String::new()
                } else {
                    format!("{v:.2}")
                }
            };
            t.row(vec![
                backend.into(),
                case.label.clone(),
                ms(c50),
                ms(quantile(&claim.committed, 0.95)),
                ratio(c50, base.0),
                ms(s50),
                ratio(s50, base.1),
                thousands(d.span_rate()),
                ratio(d.span_rate(), base.2),
                format!("{:.1}", d.wall),
                format!("{:.1} MiB", d.rss_mib),
                format!("{:.0} MiB", d.sim_rss_mib),
            ]);
            plans.row(vec![backend.into(), case.label.clone(), claim.plan]);
            db.close().await;
            if let (Pool::Pg(_), Some(pg)) = (&db.pool, &ctx.pg) {
                pg.drop_database(&db.url).await;
            }
            if backend == "sqlite" {
                let _ = std::fs::remove_dir_all(ctx.work.dir.join(format!("backlog-sqlite{i}")));
            }
        }
    }
    Ok(vec![t, plans])
}

// ---------------------------------------------------------------------------------------
// Idle CPU

/// Scenario 4: CPU of an idle daemon (default settings, empty outbox) over `secs`.
pub async fn idle(ctx: &Ctx, secs: u64) -> Result<Table> {
    let mut t = Table::new(
        &format!("Idle daemon, empty outbox, default settings, {secs} s"),
        &[
            "backend (wake-up)",
            "CPU, % of one core",
            "CPU seconds",
            "RSS",
        ],
    );
    let dir = ctx.work.sub("idle-sqlite")?;
    let mut dbs = vec![(
        "SQLite (inotify on the WAL, poll 1 s)",
        Db::sqlite(&dir.join("outbox.db")).await?,
    )];
    if let Some(pg) = &ctx.pg {
        dbs.push((
            "Postgres (LISTEN/NOTIFY, poll 1 s)",
            Db::postgres(pg, "idle").await?,
        ));
    }
    // Both daemons idle side by side, so the whole scenario takes `secs` once.
    let sim = Sim::start(&ctx.work, "idle-sim", None).await?;
    let config = Config {
        sinks: vec![pyun_sink(&ctx.work, "pyun", &sim, &[])],
        ..Config::default()
    };
    let mut daemons = Vec::new();
    for (label, db) in &dbs {
        let d = Daemon::start(
            &ctx.work,
            &format!("idle-{}", db.backend()),
            &db.url,
            &config,
        )
        .await?;
        daemons.push((label, d));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: Vec<f64> = daemons
        .iter()
        .map(|(_, d)| d.cpu_secs().unwrap_or(0.0))
        .collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    for ((label, d), b) in daemons.iter_mut().zip(before) {
        let used = d.cpu_secs().unwrap_or(0.0) - b;
        let rss = status_kb(d.pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
        t.row(vec![
            label.to_string(),
            format!("{:.2}%", used / elapsed * 100.0),
            format!("{used:.2}"),
            format!("{rss:.1} MiB"),
        ]);
        d.stop(Duration::from_secs(10)).await?;
    }
    for (_, db) in dbs {
        db.close().await;
    }
    Ok(t)
}
