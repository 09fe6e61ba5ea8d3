//! Fault drills: the real daemon, the real simulator, one fault each. Every drill ends with
//! the same accounting of what the producer put in (accepted) against what the platform and
//! the database say happened:
//!
//! - **delivered** / **done**: final in `outbox`; a delivered row must have been applied by
//!   the platform at least once, or it counts as lost;
//! - **dead-lettered**, with its reasons (digits and quoted values folded, so reasons group);
//! - **lost**: accepted but nowhere (neither in `outbox` nor in `outbox_dead`), or marked
//!   delivered without the platform having applied it. Must be 0;
//! - **re-sent**: keys sent more than once (retries after 503s and resets included);
//!   **sent again after applied**: requests for a key the platform had already applied (the
//!   duplicates at-least-once allows: 4pyun ignores them, they are bounded by what was in
//!   flight); **applied twice**: keys the platform booked twice (epeis, lbbtech starts: must be
//!   0, since those sinks park ambiguous outcomes instead of re-sending);
//! - **dead but applied**: parked as "outcome unknown" although the platform did apply it:
//!   what an operator checks before requeueing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::bench::Ctx;
use crate::env::{
    epeis_sink, fail, lbbtech_sink, now_ms, pyun_payload, pyun_sink, tail, thousands, Bulk, Config,
    Daemon, Db, Pool, Result, Sim, Table,
};

/// An event the producer got into the outbox: (sink, platform key). Keys equal the platform
/// key here (4pyun replenish_order, epeis SETTLEMENT_AID, lbbtech simId).
#[derive(Clone, Debug)]
pub struct Accepted {
    pub sink: String,
    pub key: String,
}

fn accepted(sink: &str, keys: impl IntoIterator<Item = String>) -> Vec<Accepted> {
    keys.into_iter()
        .map(|key| Accepted {
            sink: sink.to_string(),
            key,
        })
        .collect()
}

#[derive(Debug, Default)]
pub struct Tally {
    pub accepted: usize,
    pub delivered: usize,
    pub hints: usize,
    pub done: usize,
    pub dead: usize,
    pub open: usize,
    pub missing: usize,
    pub delivered_not_applied: usize,
    pub resent_keys: usize,
    pub sent_after_applied: usize,
    pub applied_twice: usize,
    pub dead_applied: usize,
    pub requests: usize,
    pub reasons: BTreeMap<String, usize>,
    /// Dead rows per `outbox_dead.kind`.
    pub kinds: BTreeMap<String, usize>,
}

impl Tally {
    pub fn lost(&self) -> usize {
        self.missing + self.delivered_not_applied
    }
}

/// The platform of a sink name used in the drills.
fn platform_of(sink: &str) -> &'static str {
    if sink.starts_with("epeis") {
        "epeis"
    } else if sink.starts_with("lbb") {
        "lbbtech"
    } else {
        "pyun"
    }
}

/// Folds what differs between rows out of a reason, so reasons group: quoted values, long
/// hex runs (seqnos), digits.
pub fn reason_class(reason: &str) -> String {
    let mut r = reason.to_string();
    if let Some(i) = r.find(" [seqno") {
        if let Some(j) = r[i..].find(']') {
            r.replace_range(i..i + j + 1, "");
        }
    }
    let mut out = String::new();
    let mut in_quote = false;
    let mut digits = String::new();
    // A run of digits becomes N, unless it is part of a word ("4pyun").
    let flush = |digits: &mut String, out: &mut String, next: Option<char>| {
        if !digits.is_empty() {
            if next.is_some_and(|c| c.is_alphabetic()) {
                out.push_str(digits);
            } else {
                out.push('N');
            }
            digits.clear();
        }
    };
    for c in r.chars() {
        if c.is_ascii_digit() && !in_quote {
            digits.push(c);
            continue;
        }
        flush(&mut digits, &mut out, Some(c));
        if c == '"' {
            if !in_quote {
                out.push_str("\"…\"");
            }
            in_quote = !in_quote;
            continue;
        }
        if !in_quote {
            out.push(c);
        }
    }
    flush(&mut digits, &mut out, None);
    let out: String = out.chars().take(150).collect();
    out.replace('|', "/")
}

pub async fn tally(db: &Db, sim: &Sim, accepted: &[Accepted]) -> Result<Tally> {
    let mut status: HashMap<(String, String), (String, bool)> = HashMap::new();
    for r in db
        .rows("SELECT sink, idempotency_key, status, hint FROM outbox")
        .await?
    {
        if let (Some(s), Some(k), Some(st)) = (&r[0], &r[1], &r[2]) {
            status.insert((s.clone(), k.clone()), (st.clone(), r[3].is_some()));
        }
    }
    let mut dead: HashMap<(String, String), (String, String)> = HashMap::new();
    for r in db
        .rows("SELECT sink, idempotency_key, reason, kind FROM outbox_dead ORDER BY id")
        .await?
    {
        if let (Some(s), Some(k), Some(reason), Some(kind)) = (&r[0], &r[1], &r[2], &r[3]) {
            dead.insert((s.clone(), k.clone()), (reason.clone(), kind.clone()));
        }
    }
    // (platform, key) -> (requests, applied, sent after applied)
    let mut seen: HashMap<(String, String), (usize, usize, usize)> = HashMap::new();
    let requests = sim.requests().await?;
    for r in &requests {
        // lbbtech polls and order queries carry the simId too; only starts are sends.
        if r.platform == "lbbtech" && !r.path.ends_with("newPriceStandardCharge") {
            continue;
        }
        if let Some(k) = &r.key {
            let e = seen.entry((r.platform.clone(), k.clone())).or_default();
            e.0 += 1;
            e.1 += usize::from(r.applied);
            e.2 += usize::from(r.duplicate);
        }
    }
    let mut t = Tally {
        accepted: accepted.len(),
        requests: requests.len(),
        ..Tally::default()
    };
    for a in accepted {
        let id = (a.sink.clone(), a.key.clone());
        let (sent, applied, again) = seen
            .get(&(platform_of(&a.sink).to_string(), a.key.clone()))
            .copied()
            .unwrap_or_default();
        t.resent_keys += usize::from(sent > 1);
        t.sent_after_applied += again;
        // 4pyun flags a re-send of an applied order and ignores it: never applied twice.
        t.applied_twice += usize::from(applied > 1);
        match (status.get(&id), dead.get(&id)) {
            (Some((st, hint)), _) if st == "delivered" => {
                t.delivered += 1;
                t.hints += usize::from(*hint);
                t.delivered_not_applied += usize::from(applied == 0);
            }
            (Some((st, _)), _) if st == "done" => t.done += 1,
            (Some(_), _) => t.open += 1,
            (None, Some((reason, kind))) => {
                t.dead += 1;
                t.dead_applied += usize::from(applied > 0);
                *t.reasons.entry(reason_class(reason)).or_default() += 1;
                *t.kinds.entry(kind.clone()).or_default() += 1;
            }
            (None, None) => t.missing += 1,
        }
    }
    Ok(t)
}

/// One line per drill.
pub fn drills_table() -> Table {
    Table::new(
        "Fault drills",
        &[
            "drill",
            "accepted",
            "delivered (with hint)",
            "done",
            "dead-lettered",
            "open",
            "lost",
            "re-sent keys",
            "sent again after applied",
            "applied twice",
            "dead but applied",
            "result",
        ],
    )
}

pub struct Outcome {
    pub name: String,
    pub tally: Tally,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}

impl Outcome {
    fn new(name: &str, tally: Tally) -> Outcome {
        let mut o = Outcome {
            name: name.to_string(),
            tally,
            notes: Vec::new(),
            failures: Vec::new(),
        };
        if o.tally.lost() > 0 {
            o.failures.push(format!(
                "{} lost ({} missing, {} marked delivered but never applied)",
                o.tally.lost(),
                o.tally.missing,
                o.tally.delivered_not_applied
            ));
        }
        if o.tally.open > 0 {
            o.failures
                .push(format!("{} rows still open at the end", o.tally.open));
        }
        o
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn add_to(&self, table: &mut Table) {
        let t = &self.tally;
        table.row(vec![
            self.name.clone(),
            thousands(t.accepted as f64),
            format!("{} ({})", thousands(t.delivered as f64), t.hints),
            t.done.to_string(),
            t.dead.to_string(),
            t.open.to_string(),
            t.lost().to_string(),
            t.resent_keys.to_string(),
            t.sent_after_applied.to_string(),
            t.applied_twice.to_string(),
            t.dead_applied.to_string(),
            if self.passed() {
                "pass".into()
            } else {
                format!("FAIL: {}", self.failures.join("; "))
            },
        ]);
    }

    pub fn print(&self) {
        let mut t = drills_table();
        self.add_to(&mut t);
        t.print();
        if !self.tally.reasons.is_empty() {
            let mut r = Table::new(
                &format!("{}: dead-letter reasons", self.name),
                &["rows", "reason"],
            );
            for (reason, n) in &self.tally.reasons {
                r.row(vec![n.to_string(), reason.clone()]);
            }
            r.print();
        }
        for n in &self.notes {
            println!("- {n}");
        }
        println!();
    }
}

fn pyun_keys(prefix: &str, n: u64) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

async fn delivered(db: &Db) -> Result<i64> {
    db.int("SELECT count(*) FROM outbox WHERE status IN ('delivered', 'done')")
        .await
}

async fn wait_delivered(db: &Db, at_least: i64, timeout: Duration) -> Result<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = delivered(db).await?;
        if n >= at_least || Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

// ---------------------------------------------------------------------------------------
// kill -9

pub async fn kill9(ctx: &Ctx, rows: u64, kills: usize, seed: u64) -> Result<Outcome> {
    let concurrency = 16;
    let dir = ctx.work.sub("drill-kill9")?;
    let db = Db::sqlite(&dir.join("outbox.db")).await?;
    db.insert_pending("pyun", "K", rows).await?;
    // Replies take 5-40 ms, so the drain lasts long enough to be killed many times.
    let sim = Sim::start(
        &ctx.work,
        "kill9-sim",
        Some(json!({"random": {"delay_ms": [5, 40], "seed": seed}})),
    )
    .await?;
    let config = Config {
        worker: vec!["lease = \"3s\"".into(), "poll_interval = \"200ms\"".into()],
        sinks: vec![pyun_sink(
            &ctx.work,
            "pyun",
            &sim,
            &[
                &format!("concurrency = {concurrency}"),
                "timeout = \"1s\"",
                "connect_timeout = \"1s\"",
            ],
        )],
        ..Config::default()
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let (lo, hi) = if ctx.quick { (100, 600) } else { (300, 2000) };
    let mut at_kill = Vec::new();
    for k in 0..kills {
        let mut d = Daemon::spawn(
            &ctx.work,
            &format!("kill9-outboxd{k}"),
            &db.url,
            &config,
            false,
        )?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(lo..=hi))).await;
        if !d.alive() {
            return fail(format!(
                "outboxd exited before kill {k}: {}",
                tail(&d.log_text(), 10)
            ));
        }
        let e = d.kill().await?;
        if e.signal != Some(libc::SIGKILL) {
            return fail(format!("kill {k} did not kill outboxd: {e:?}"));
        }
        at_kill.push(delivered(&db).await?);
    }
    let mut last = Daemon::spawn(&ctx.work, "kill9-outboxd-final", &db.url, &config, true)?;
    let exit = last.wait(Duration::from_secs(300)).await?;
    let t = tally(&db, &sim, &accepted("pyun", pyun_keys("K", rows))).await?;
    let mut o = Outcome::new(
        &format!(
            "kill -9 × {kills} during a {} row drain",
            thousands(rows as f64)
        ),
        t,
    );
    if !exit.success() {
        o.failures.push(format!("final run failed: {exit:?}"));
    }
    let bound = kills * concurrency;
    if o.tally.sent_after_applied > bound {
        o.failures.push(format!(
            "{} re-sends after applied, above the bound of {bound} (kills × concurrency)",
            o.tally.sent_after_applied
        ));
    }
    let reclaimed = count(&last.log_text(), "reclaimed rows whose lease expired");
    o.notes.push(format!(
        "delivered at each kill: {:?} of {rows}; re-sends after applied bounded by kills × concurrency = {bound}; the final run logged {reclaimed} reclaim(s) of expired leases (seed {seed})",
        at_kill
    ));
    db.close().await;
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// A flaky platform

fn epeis_payload(aid: &str) -> String {
    json!({
        "COM_METERAGE": {"SETTLEMENT_AID": aid, "NORMAL_RETRO_TYPE": "2"},
        "COM_METER_INFO_TMP": [{"DEVICE_DID": "DV00000000000001", "NORMAL_RETRO_TYPE": "2",
                                 "ENERGY_FLOW_TYPE": "1", "READINGS_TYPE": "1", "ADDED_CONS": 12.5}]
    })
    .to_string()
}

pub async fn faults(ctx: &Ctx, rows: u64) -> Result<Outcome> {
    let dir = ctx.work.sub("drill-faults")?;
    let db = Db::sqlite(&dir.join("outbox.db")).await?;
    let epeis_rows = rows / 10;
    let pyun_rows = rows - epeis_rows;
    db.insert_pending("pyun", "F", pyun_rows).await?;
    let aids: Vec<String> = (1..=epeis_rows).map(|i| format!("E{i:015}")).collect();
    let events: Vec<_> = aids
        .iter()
        .map(|a| {
            (
                "epeis".to_string(),
                "dosage".to_string(),
                a.clone(),
                epeis_payload(a),
            )
        })
        .collect();
    db.enqueue_many(&events).await?;
    let random = json!({"p_503": 0.3, "p_drop_before": 0.05, "p_drop_after": 0.05,
                        "delay_ms": [0, 300], "seed": 1});
    let sim = Sim::start(&ctx.work, "faults-sim", Some(json!({ "random": random }))).await?;
    let config = Config {
        log_level: Some("warn".into()),
        worker: vec!["lease = \"10s\"".into(), "poll_interval = \"200ms\"".into()],
        retry: vec![
            "base = \"20ms\"".into(),
            "cap = \"1s\"".into(),
            "floor = \"10ms\"".into(),
            "max_attempts = 30".into(),
            "max_age = \"1h\"".into(),
        ],
        sinks: vec![
            pyun_sink(
                &ctx.work,
                "pyun",
                &sim,
                &[
                    "concurrency = 128",
                    "timeout = \"250ms\"",
                    "connect_timeout = \"1s\"",
                ],
            ),
            epeis_sink(
                &ctx.work,
                "epeis",
                &sim,
                &[
                    "concurrency = 16",
                    "timeout = \"250ms\"",
                    "connect_timeout = \"1s\"",
                ],
            ),
        ],
        ..Config::default()
    };
    let t0 = Instant::now();
    let mut d = Daemon::spawn(&ctx.work, "faults-outboxd", &db.url, &config, true)?;
    let exit = d.wait(Duration::from_secs(900)).await?;
    let mut acc = accepted("pyun", pyun_keys("F", pyun_rows));
    acc.extend(accepted("epeis", aids));
    let t = tally(&db, &sim, &acc).await?;
    let stats = sim.stats().await?;
    let mut o = Outcome::new(
        &format!(
            "platform: 30% 503, 5% reset before, 5% reset after, 0-300 ms replies, 250 ms timeout ({} pyun + {} epeis rows)",
            thousands(pyun_rows as f64),
            thousands(epeis_rows as f64)
        ),
        t,
    );
    if !exit.success() {
        o.failures.push(format!("outboxd failed: {exit:?}"));
    }
    if o.tally.applied_twice > 0 {
        o.failures
            .push(format!("{} keys applied twice", o.tally.applied_twice));
    }
    let epeis_dead = o.tally.kinds.get("unknown").copied().unwrap_or_default();
    o.notes.push(format!(
        "{} requests in {:.0} s: 4pyun {:?}, epeis {:?}; {epeis_dead} epeis rows parked as outcome unknown (non-idempotent: never re-sent after a reset or a timeout)",
        o.tally.requests,
        t0.elapsed().as_secs_f64(),
        stats.pyun.replies,
        stats.epeis.replies
    ));
    db.close().await;
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// A full disk

/// A tmpfs mounted for the drill, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount> {
        std::fs::create_dir_all(dir)?;
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .status()?;
        if !st.success() {
            return fail("mount -t tmpfs failed (the disk-full drill needs root)");
        }
        Ok(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the filesystem is full; the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let Ok(mut f) = std::fs::File::create(path) else {
        return 0;
    };
    let block = vec![0u8; 16 * 1024];
    let mut written = 0;
    while let Ok(n) = f.write(&block) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    // Whatever is left (less than a block).
    while let Ok(n) = f.write(&block[..512]) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    let _ = f.sync_all();
    written
}

pub async fn disk_full(ctx: &Ctx, rows: u64) -> Result<Outcome> {
    let mnt = ctx.work.dir.join("fullfs");
    let mount = Mount::tmpfs(&mnt, "16m")?;
    let db = Db::sqlite(&mnt.join("outbox.db")).await?;
    db.insert_pending("pyun", "S", rows).await?;
    let sim = Sim::start(
        &ctx.work,
        "diskfull-sim",
        Some(json!({"random": {"delay_ms": [10, 30], "seed": 5}})),
    )
    .await?;
    let config = Config {
        worker: vec!["lease = \"30s\"".into(), "poll_interval = \"200ms\"".into()],
        sinks: vec![pyun_sink(&ctx.work, "pyun", &sim, &["concurrency = 4"])],
        ..Config::default()
    };
    let mut d = Daemon::start(&ctx.work, "diskfull-outboxd", &db.url, &config).await?;
    let before = wait_delivered(&db, rows as i64 / 5, Duration::from_secs(60)).await?;
    let filler = mnt.join("filler");
    let filled = fill(&filler);
    let t_full = Instant::now();
    // Watch it while the disk stays full.
    let mut samples = Vec::new();
    let mut alive = true;
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(delivered(&db).await.unwrap_or(-1));
        alive &= d.alive();
    }
    let full_secs = t_full.elapsed().as_secs_f64();
    let log_full = d.log_text();
    std::fs::remove_file(&filler)?;
    // Space is back: it should resume by itself.
    let stalled_at = delivered(&db).await?;
    let resumed = wait_delivered(&db, stalled_at + 1, Duration::from_secs(30)).await? > stalled_at;
    alive &= d.alive();
    let mut restarted = false;
    if !resumed {
        // It did not: a restart, as systemd's watchdog or an operator would do.
        d.stop(Duration::from_secs(10)).await?;
        d = Daemon::spawn(
            &ctx.work,
            "diskfull-outboxd-restarted",
            &db.url,
            &config,
            false,
        )?;
        restarted = true;
    }
    let drained = db.wait_drained(Duration::from_secs(120)).await;
    alive &= d.alive();
    let exit = d.stop(Duration::from_secs(10)).await?;
    let log = format!("{log_full}{}", d.log_text());
    let t = tally(&db, &sim, &accepted("pyun", pyun_keys("S", rows))).await?;
    db.close().await;
    drop(mount);
    let mut o = Outcome::new(
        &format!(
            "SQLite on a full filesystem (tmpfs 16 MiB), {} rows",
            thousands(rows as f64)
        ),
        t,
    );
    if let Err(e) = drained {
        o.failures
            .push(format!("not drained after space was freed: {e}"));
    }
    if !alive {
        o.failures
            .push("outboxd exited while the disk was full".into());
    }
    if !exit.success() {
        o.failures
            .push(format!("outboxd did not stop cleanly: {exit:?}"));
    }
    if restarted {
        o.failures.push(
            "no progress within 30 s after space was freed; drained only after a restart".into(),
        );
    }
    let errors = count(&log, "database unavailable");
    let recovered = count(&log, "database reachable again");
    if errors == 0 {
        o.notes
            .push("no write failed while the disk was full: the WAL had room to reuse".into());
    }
    o.notes.push(format!(
        "filled {} KiB after {before} rows; delivered every 0.5 s while full ({full_secs:.0} s): {samples:?}; log lines: \"database unavailable\" × {errors} ({} while full), \"database reachable again\" × {recovered}",
        filled / 1024,
        count(&log_full, "database unavailable"),
    ));
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// Postgres restarted mid-drain

pub async fn pg_restart(ctx: &Ctx, rows: u64) -> Result<Outcome> {
    let Some(pg) = &ctx.pg else {
        return fail("the pg-restart drill needs Postgres (drop --no-pg)");
    };
    let db = Db::postgres(pg, "restart").await?;
    db.insert_pending("pyun", "P", rows).await?;
    let sim = Sim::start(
        &ctx.work,
        "pgrestart-sim",
        Some(json!({"random": {"delay_ms": [1, 10], "seed": 9}})),
    )
    .await?;
    let mut daemons = Vec::new();
    for w in 1..=3 {
        let config = Config {
            worker: vec![
                format!("worker_id = \"drill-w{w}\""),
                "lease = \"30s\"".into(),
                "poll_interval = \"200ms\"".into(),
            ],
            sinks: vec![pyun_sink(&ctx.work, "pyun", &sim, &["concurrency = 32"])],
            ..Config::default()
        };
        let d = Daemon::start(
            &ctx.work,
            &format!("pgrestart-outboxd{w}"),
            &db.url,
            &config,
        )
        .await?;
        daemons.push(d);
    }
    let mut restarts = Vec::new();
    for third in 1..=2 {
        let at = wait_delivered(&db, rows as i64 * third / 3, Duration::from_secs(120)).await?;
        let took = pg.restart()?;
        restarts.push(format!(
            "at {at} delivered, down {:.1} s",
            took.as_secs_f64()
        ));
    }
    // The harness's own pool reconnects on its next query.
    let drained = db.wait_drained(Duration::from_secs(180)).await;
    let mut alive = true;
    let mut errors = Vec::new();
    for d in &mut daemons {
        alive &= d.alive();
        d.stop(Duration::from_secs(15)).await?;
        let log = d.log_text();
        errors.push((
            count(&log, "database unavailable"),
            count(&log, "database reachable again"),
        ));
    }
    let t = tally(&db, &sim, &accepted("pyun", pyun_keys("P", rows))).await?;
    db.close().await;
    let mut o = Outcome::new(
        &format!(
            "Postgres restarted twice mid-drain, 3 outboxd, {} rows",
            thousands(rows as f64)
        ),
        t,
    );
    if let Err(e) = drained {
        o.failures.push(format!("not drained: {e}"));
    }
    if !alive {
        o.failures.push("an outboxd exited".into());
    }
    o.notes.push(format!(
        "restarts: {}; per worker (\"database unavailable\", \"reachable again\") log lines: {errors:?}",
        restarts.join(", ")
    ));
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// The clock stepped

fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

pub async fn clock(ctx: &Ctx, rows: u64) -> Result<Outcome> {
    let Some(lib) = libfaketime() else {
        return fail("libfaketime not found: apt-get install -y faketime");
    };
    let dir = ctx.work.sub("drill-clock")?;
    let db = Db::sqlite(&dir.join("outbox.db")).await?;
    db.insert_pending("pyun", "C", rows).await?;
    let sim = Sim::start(
        &ctx.work,
        "clock-sim",
        Some(json!({"random": {"p_503": 0.2, "delay_ms": [5, 15], "seed": 3}})),
    )
    .await?;
    let config = Config {
        worker: vec!["lease = \"30s\"".into(), "poll_interval = \"200ms\"".into()],
        retry: vec![
            "base = \"200ms\"".into(),
            "cap = \"2s\"".into(),
            "floor = \"100ms\"".into(),
            // max_age stays at its default (48 h).
            "max_attempts = 20".into(),
        ],
        sinks: vec![pyun_sink(
            &ctx.work,
            "pyun",
            &sim,
            &["concurrency = 8", "timeout = \"1s\""],
        )],
        ..Config::default()
    };
    // The daemon's wall clock (CLOCK_REALTIME: SystemTime, SQLite's 'now') is offset by the
    // content of this file, re-read at every call; its monotonic clock (tokio's timers) is
    // left alone, as an NTP step would.
    let step_file = dir.join("faketime.rc");
    std::fs::write(&step_file, "+0\n")?;
    let path = ctx.work.dir.join("clock-outboxd.toml");
    std::fs::write(&path, config.render(&db.url))?;
    let mut cmd = Daemon::command(&path, false)?;
    cmd.env("LD_PRELOAD", &lib)
        .env("FAKETIME_TIMESTAMP_FILE", &step_file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let mut d = crate::env::Proc::spawn(
        cmd,
        "clock-outboxd",
        &ctx.work.dir.join("clock-outboxd.log"),
    )?;
    let phase = Duration::from_millis(if ctx.quick { 1000 } else { 2000 });
    tokio::time::sleep(phase).await;
    let before_step = delivered(&db).await?;
    std::fs::write(&step_file, "+2h\n")?;
    tokio::time::sleep(phase).await;
    let during_step = delivered(&db).await?;
    std::fs::write(&step_file, "+0\n")?;
    // Let it run until nothing more moves: what is left waits on a time two hours away.
    let mut last = (-1, -1);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = (delivered(&db).await?, db.open_rows().await?);
        if now == last || now.1 == 0 {
            break;
        }
        last = now;
    }
    let now = now_ms();
    let stuck = db
        .int(&format!(
            "SELECT count(*) FROM outbox WHERE status = 'pending' AND next_attempt_at > {}",
            now + 600_000
        ))
        .await?;
    let leased_far = db
        .int(&format!(
            "SELECT count(*) FROM outbox WHERE status = 'in_flight' AND lease_expires_at > {}",
            now + 600_000
        ))
        .await?;
    let before_fix = tally(&db, &sim, &accepted("pyun", pyun_keys("C", rows))).await?;
    let window = before_fix
        .reasons
        .iter()
        .filter(|(r, _)| r.contains("timestamp out of window"))
        .map(|(_, n)| *n)
        .sum::<usize>();
    // The operator's fixes, once the clock is right again: requeue what was dead-lettered,
    // and make the retries scheduled in the future clock due now.
    let requeued = Daemon::cli(
        &ctx.work,
        &db.url,
        &config,
        &["dead", "requeue", "--sink", "pyun", "--all"],
    )?;
    let unstuck = db
        .exec(&format!(
            "UPDATE outbox SET next_attempt_at = 0 WHERE status = 'pending' AND next_attempt_at > {}",
            now + 600_000
        ))
        .await?;
    let drained = db.wait_drained(Duration::from_secs(120)).await;
    let alive = d.alive();
    d.stop(Duration::from_secs(10)).await?;
    let log = d.log_text();
    let t = tally(&db, &sim, &accepted("pyun", pyun_keys("C", rows))).await?;
    db.close().await;
    let mut o = Outcome::new(
        &format!(
            "daemon clock +2h then back, {} rows (after the operator's fixes)",
            thousands(rows as f64)
        ),
        t,
    );
    if let Err(e) = drained {
        o.failures.push(format!("not drained after the fixes: {e}"));
    }
    if !alive {
        o.failures.push("outboxd exited".into());
    }
    o.notes.push(format!(
        "delivered {before_step} before the step, {during_step} by its end; during the +2h step 4pyun refused {window} rows with 403 \"timestamp out of window\", dead-lettered as permanent; after stepping back, {stuck} rows waited on retries scheduled ~2h ahead and {leased_far} on leases ~2h ahead; lease-expiry reclaims logged: {}",
        count(&log, "reclaimed rows whose lease expired")
    ));
    o.notes.push(format!(
        "before the fixes: delivered {}, dead {}, open {}, lost {}; fixes: `outboxd dead requeue --sink pyun --all` ({}), and {unstuck} rows made due with SQL",
        before_fix.delivered,
        before_fix.dead,
        before_fix.open,
        before_fix.lost(),
        requeued
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .split(" (")
            .next()
            .unwrap_or("")
    ));
    for (reason, n) in &before_fix.reasons {
        o.notes
            .push(format!("dead-lettered before the fixes: {n} × {reason}"));
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// Malformed rows

pub async fn malformed(ctx: &Ctx, good: u64) -> Result<Outcome> {
    let dir = ctx.work.sub("drill-malformed")?;
    let db = Db::sqlite(&dir.join("outbox.db")).await?;
    let sim = Sim::start(&ctx.work, "malformed-sim", None).await?;
    let config = Config {
        worker: vec!["poll_interval = \"200ms\"".into()],
        sinks: vec![
            pyun_sink(&ctx.work, "pyun", &sim, &["concurrency = 16"]),
            epeis_sink(&ctx.work, "epeis", &sim, &[]),
            lbbtech_sink(
                &ctx.work,
                "lbb",
                &sim,
                &[
                    "poll_interval = \"100ms\"",
                    "poll_window = \"1s\"",
                    "verify_after = \"1s\"",
                ],
            ),
        ],
        ..Config::default()
    };
    let ev = |sink: &str, ty: &str, key: &str, payload: String| {
        (sink.to_string(), ty.to_string(), key.to_string(), payload)
    };
    let good_pyun = |key: &str| ev("pyun", "charge_end", key, pyun_payload(key));
    let lbb = |sim_id: &str, charger: &str| {
        json!({"simId": sim_id, "portNum": 5, "param": 1, "payMoney": 20.5, "selectPriceType": 1,
               "infoPriceId": 42, "userId": 1001, "chargeBefore": 0, "isAdvanceReceive": 0,
               "charger": charger})
    };
    let with = |key: &str, field: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_str(&pyun_payload(key)).expect("json");
        if value.is_null() {
            v.as_object_mut().expect("object").remove(field);
        } else {
            v[field] = value;
        }
        ev("pyun", "charge_end", key, v.to_string())
    };
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(1_200_000));
    let mut bad = vec![
        ev("pyun", "charge_end", "bad-json", "{\"station_uuid\": ".into()),
        ev("pyun", "charge_end", "not-object", "[1,2,3]".into()),
        ev("pyun", "charge_end", "json-null", "null".into()),
        ev("pyun", "charge_end", "empty", String::new()),
        ev("pyun", "charge_end", "deep", format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))),
        ev("nosuch", "charge_end", "unknown-sink", pyun_payload("unknown-sink")),
        ev("pyun", "charge_middle", "unknown-type", pyun_payload("unknown-type")),
        ev("pyun", "dosage", "wrong-type", epeis_payload("wrong-type")),
        ev("pyun", "charge_end", "huge", huge.clone()),
        ev("epeis", "dosage", "huge-epeis", huge),
        with("no-quantity", "quantity", serde_json::Value::Null),
        with("bad-time", "start_time", json!("2026-13-40T25:61:00Z")),
        with("end-before-start", "end_time", json!("2020-01-01T00:00:00Z")),
        with("key-mismatch", "replenish_order", json!("another-order")),
        with("negative", "quantity", json!(-5)),
        with("float", "fee_value", json!(9.75)),
        with("signed", "sign", json!("ABCDEF")),
        with("energy-code", "energy_code", json!("CN_XX")),
        with("unknown-field", "colour", json!("blue")),
        with("nul-byte", "device_no", json!("S\u{0}1")),
        with("long-field", "station_uuid", json!("u".repeat(100_000))),
        ev("epeis", "dosage", "EP-CRED", json!({"COM_METERAGE": {"SETTLEMENT_AID": "EP-CRED", "NORMAL_RETRO_TYPE": "2"},
            "COM_METER_INFO_TMP": [{"DEVICE_DID": "D1", "NORMAL_RETRO_TYPE": "2", "ENERGY_FLOW_TYPE": "1",
            "READINGS_TYPE": "1", "ADDED_CONS": 1}], "SYS_HEAD": {"DYNAMIC_KEY": "stolen"}}).to_string()),
        ev("epeis", "dosage", "EP-CENTS", json!({"COM_METERAGE": {"SETTLEMENT_AID": "EP-CENTS", "NORMAL_RETRO_TYPE": "2"},
            "COM_METER_INFO_TMP": [{"DEVICE_DID": "D1", "NORMAL_RETRO_TYPE": "2", "ENERGY_FLOW_TYPE": "1",
            "READINGS_TYPE": "9", "ADDED_CONS": 1.234}]}).to_string()),
        ev("epeis", "dosage", "EP-EMPTY", json!({"COM_METERAGE": {"SETTLEMENT_AID": "EP-EMPTY", "NORMAL_RETRO_TYPE": 3},
            "COM_METER_INFO_TMP": []}).to_string()),
        ev("lbb", "charge_start", "865933000000901", {
            let mut v = lbb("865933000000901", "bus");
            v["token"] = json!("x");
            v.to_string()
        }),
        ev("lbb", "charge_start", "865933000000902", {
            let mut v = lbb("865933000000902", "car");
            v["payMoney"] = json!(-1);
            v.to_string()
        }),
        ev("lbb", "charge_start", "865933000000903", "{\"simId\": 865933000000903}".into()),
    ];
    let mut events: Vec<_> = (1..=good).map(|i| good_pyun(&format!("G{i}"))).collect();
    let good_epeis: Vec<String> = (1..=(good / 10).max(1))
        .map(|i| format!("GE{i:014}"))
        .collect();
    events.extend(
        good_epeis
            .iter()
            .map(|a| ev("epeis", "dosage", a, epeis_payload(a))),
    );
    let good_lbb: Vec<String> = (1..=(good / 50).max(1))
        .map(|i| format!("86593300000{i:04}"))
        .collect();
    events.extend(
        good_lbb
            .iter()
            .map(|s| ev("lbb", "charge_start", s, lbb(s, "two_wheeler").to_string())),
    );
    // Interleave the bad rows with the good ones.
    let stride = (events.len() / bad.len()).max(1);
    let mut all = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        if i % stride == 0 && !bad.is_empty() {
            all.push(bad.remove(0));
        }
        all.push(e);
    }
    all.append(&mut bad);
    db.enqueue_many(&all).await?;
    // Bytes no JSON parser sees: a payload that is not UTF-8, and one stored as a BLOB
    // (SQLite keeps whatever type a producer binds). Inserted last, with good rows after.
    let mut raw = Vec::new();
    if let Pool::Sqlite(p) = &db.pool {
        for (key, value) in [
            ("not-utf8", "CAST(x'7b22ff22fe7d' AS TEXT)"),
            ("blob", "x'7b7d'"),
        ] {
            sqlx::query(&format!(
                "INSERT INTO outbox (sink, event_type, idempotency_key, payload) VALUES ('pyun', 'charge_end', '{key}', {value})"
            ))
            .execute(p)
            .await?;
            raw.push(("pyun".to_string(), key.to_string()));
        }
    }
    let after: Vec<_> = (1..=20).map(|i| good_pyun(&format!("A{i}"))).collect();
    db.enqueue_many(&after).await?;
    // Rows for a sink missing from the config are held until max_age (issue 12 item 10):
    // this one is older than that, so it is dead-lettered at once, as before.
    db.exec("UPDATE outbox SET created_at = 0 WHERE idempotency_key = 'unknown-sink'")
        .await?;
    let mut acc: Vec<Accepted> = all
        .iter()
        .chain(after.iter())
        .map(|(s, _, k, _)| Accepted {
            sink: s.clone(),
            key: k.clone(),
        })
        .collect();
    acc.extend(raw.iter().map(|(s, k)| Accepted {
        sink: s.clone(),
        key: k.clone(),
    }));

    let mut d = Daemon::spawn(&ctx.work, "malformed-outboxd", &db.url, &config, false)?;
    let drained = db
        .wait_drained(Duration::from_secs(if ctx.quick { 30 } else { 60 }))
        .await;
    let alive = d.alive();
    let rss = crate::env::status_kb(d.pid, "VmHWM").unwrap_or(0);
    let exit = d.stop(Duration::from_secs(10)).await?;
    let log = d.log_text();
    let t = tally(&db, &sim, &acc).await?;
    // Which rows ended where they should.
    let good_keys: Vec<String> = (1..=good)
        .map(|i| format!("G{i}"))
        .chain((1..=20).map(|i| format!("A{i}")))
        .chain(good_epeis.iter().cloned())
        .chain(good_lbb.iter().cloned())
        .collect();
    let final_good = db
        .int(&format!(
            "SELECT count(*) FROM outbox WHERE status IN ('delivered', 'done') AND idempotency_key IN ({})",
            good_keys.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(",")
        ))
        .await?;
    let bad_delivered: Vec<String> = db
        .rows(&format!(
            "SELECT idempotency_key FROM outbox WHERE status IN ('delivered', 'done') AND idempotency_key NOT IN ({})",
            good_keys.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(",")
        ))
        .await?
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    let stuck: Vec<String> = db
        .rows("SELECT idempotency_key || ' (' || status || ', attempts ' || attempts || ')' FROM outbox WHERE status IN ('pending', 'in_flight') LIMIT 8")
        .await?
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    db.close().await;
    let bad_count = acc.len() - good_keys.len();
    let mut o = Outcome::new(
        &format!(
            "malformed rows: {bad_count} bad among {} good",
            good_keys.len()
        ),
        t,
    );
    if let Err(e) = drained {
        o.failures
            .push(format!("not drained: {e}; still open: {stuck:?}"));
    }
    if !alive {
        o.failures.push("outboxd exited".into());
    }
    if !exit.success() {
        o.failures
            .push(format!("outboxd did not stop cleanly: {exit:?}"));
    }
    if final_good as usize != good_keys.len() {
        o.failures.push(format!(
            "{final_good} of {} good rows final",
            good_keys.len()
        ));
    }
    if o.tally.dead != bad_count {
        o.failures.push(format!(
            "{} dead-lettered, {bad_count} bad rows",
            o.tally.dead
        ));
    }
    if !bad_delivered.is_empty() {
        o.failures.push(format!(
            "bad rows delivered instead of dead-lettered: {}",
            bad_delivered.join(", ")
        ));
    }
    let db_errors = count(&log, "database unavailable");
    o.notes.push(format!(
        "good rows final: {final_good} of {}; outboxd peak RSS {:.1} MiB; log: \"database unavailable\" × {db_errors}, panics × {}",
        good_keys.len(),
        rss as f64 / 1024.0,
        count(&log, "panicked")
    ));
    if db_errors > 0 {
        let line = log
            .lines()
            .find(|l| l.contains("database unavailable"))
            .unwrap_or("")
            .chars()
            .take(400)
            .collect::<String>();
        o.notes.push(format!("first database error: {line}"));
    }
    Ok(o)
}
