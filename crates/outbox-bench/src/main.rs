//! `outbox-bench`: benchmarks and fault drills of outboxd, with figures anyone can
//! reproduce. It starts the real binaries (`platform-sim`, `outbox-migrate`, `outboxd`) as
//! separate processes, on SQLite files and on a throwaway Postgres cluster
//! (scripts/pg-cluster.sh), and prints Markdown tables. See docs/BENCHMARKS.md and
//! docs/RELIABILITY.md; scripts/bench.sh and scripts/drill-*.sh build and run it.

mod bench;
mod drill;
mod env;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use bench::{Case, Ctx};
use env::{Pg, Result, Work};

#[derive(Parser)]
#[command(
    name = "outbox-bench",
    about = "Benchmarks and fault drills of outboxd"
)]
struct Cli {
    /// Work directory (default: a new one under /tmp), removed at the end unless --keep.
    #[arg(long, global = true)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory (databases, configs, logs).
    #[arg(long, global = true)]
    keep: bool,
    /// Use this Postgres server (a database URL; scenarios create databases next to it)
    /// instead of starting a throwaway cluster.
    #[arg(long, global = true, env = "OUTBOX_BENCH_PG_URL")]
    pg_url: Option<String>,
    /// Skip everything Postgres.
    #[arg(long, global = true)]
    no_pg: bool,
    /// Small sizes (CI).
    #[arg(long, global = true)]
    quick: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every scenario, in order (the figures of docs/BENCHMARKS.md).
    All,
    /// The machine: cores, CPU, fsync latency, database versions.
    Machine,
    /// The bare tokio+reqwest loop alone.
    Baseline {
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
    },
    /// Scenario 1: drain N rows (SQLite; Postgres with 1, 2, 4 processes) beside the bare loop.
    Drain {
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        /// Sink concurrency per outboxd (and bare-loop tasks); several values make several
        /// tables. 0: the default configuration (no concurrency set; the bare loop runs 128
        /// tasks).
        #[arg(long, value_delimiter = ',', default_value = "0")]
        concurrency: Vec<usize>,
        /// outboxd processes on the Postgres outbox.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        pg_workers: Vec<usize>,
        /// Runs per figure; the median is shown, with the range.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Scenario 2: insert-to-delivery latency at a low steady rate.
    Latency {
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        #[arg(long, default_value_t = 20.0)]
        secs: f64,
    },
    /// Scenario 3: claim cost and drain rate against the backlog (and peak RSS of the
    /// largest drain, scenario 4).
    Backlog {
        /// Pending rows per case.
        #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
        pending: Vec<u64>,
        /// A last case: the first pending count with this many delivered rows in the table.
        #[arg(long, default_value_t = 5_000_000)]
        delivered: u64,
        /// Sink concurrency of the drains (0: the default configuration).
        #[arg(long, default_value_t = 0)]
        concurrency: usize,
    },
    /// Scenario 4: idle CPU with an empty outbox.
    Idle {
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
    /// Fault drills.
    Drill {
        #[arg(value_enum)]
        which: Vec<Drill>,
        /// Seed of the kill -9 drill's timings.
        #[arg(long, default_value_t = 20)]
        seed: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Drill {
    All,
    Kill9,
    Faults,
    DiskFull,
    PgRestart,
    Clock,
    Malformed,
}

fn needs_pg(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Baseline { .. } => false,
        Cmd::Drill { which, .. } => which
            .iter()
            .any(|d| matches!(d, Drill::All | Drill::PgRestart)),
        _ => true,
    }
}

fn parse_size(n: u64) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn backlog_cases(pending: &[u64], delivered: u64) -> Vec<Case> {
    let mut cases: Vec<Case> = pending
        .iter()
        .map(|&p| Case {
            label: format!("{} pending", parse_size(p)),
            pending: p,
            delivered: 0,
        })
        .collect();
    if delivered > 0 {
        if let Some(&p) = pending.first() {
            cases.push(Case {
                label: format!(
                    "{} pending + {} delivered",
                    parse_size(p),
                    parse_size(delivered)
                ),
                pending: p,
                delivered,
            });
        }
    }
    cases
}

async fn run(cli: Cli) -> Result<bool> {
    let work = Work::new(cli.work_dir.clone(), cli.keep)?;
    let pg = if cli.no_pg || !needs_pg(&cli.command) {
        None
    } else if let Some(url) = &cli.pg_url {
        Some(Pg::external(url, "bench"))
    } else {
        eprintln!(
            "starting a throwaway Postgres cluster in {}/pg",
            work.dir.display()
        );
        Some(Pg::start(&work.dir.join("pg"), "bench")?)
    };
    let ctx = Ctx {
        work,
        pg,
        quick: cli.quick,
    };
    let q = cli.quick;
    let ok = match cli.command {
        Cmd::All => {
            let t0 = std::time::Instant::now();
            bench::machine(&ctx).await?.print();
            let (rows, conc, workers) = if q {
                (10_000, 64, vec![1, 2])
            } else {
                (100_000, 128, vec![1, 2, 4])
            };
            bench::drain(&ctx, rows, conc, &workers, if q { 1 } else { 3 })
                .await?
                .print();
            let (rate, secs) = if q { (50.0, 4.0) } else { (50.0, 20.0) };
            bench::latency(&ctx, rate, secs).await?.print();
            let cases = if q {
                backlog_cases(&[2_000, 100_000], 200_000)
            } else {
                backlog_cases(&[10_000, 1_000_000], 5_000_000)
            };
            for t in bench::backlog(&ctx, &cases, conc).await? {
                t.print();
            }
            bench::idle(&ctx, if q { 10 } else { 60 }).await?.print();
            eprintln!("all scenarios in {:.0} s", t0.elapsed().as_secs_f64());
            true
        }
        Cmd::Machine => {
            bench::machine(&ctx).await?.print();
            true
        }
        Cmd::Baseline { rows, concurrency } => {
            let sim = env::Sim::start(&ctx.work, "bare-sim", None).await?;
            let b = bench::bare_loop(&sim, rows, concurrency, "L").await?;
            println!(
                "bare loop: {} of {} delivered in {:.2} s = {} rows/s; client CPU {:.0}%, simulator CPU {:.0}%",
                b.delivered,
                b.requests,
                b.secs,
                env::thousands(b.rate()),
                b.client_cpu / b.secs * 100.0,
                b.sim_cpu / b.secs * 100.0
            );
            true
        }
        Cmd::Drain {
            rows,
            concurrency,
            pg_workers,
            repeat,
        } => {
            for c in concurrency {
                bench::drain(&ctx, rows, c, &pg_workers, repeat.max(1))
                    .await?
                    .print();
            }
            true
        }
        Cmd::Latency { rate, secs } => {
            bench::latency(&ctx, rate, secs).await?.print();
            true
        }
        Cmd::Backlog {
            pending,
            delivered,
            concurrency,
        } => {
            for t in bench::backlog(&ctx, &backlog_cases(&pending, delivered), concurrency).await? {
                t.print();
            }
            true
        }
        Cmd::Idle { secs } => {
            bench::idle(&ctx, secs).await?.print();
            true
        }
        Cmd::Drill { which, seed } => run_drills(&ctx, &which, seed).await?,
    };
    if let Some(pg) = &ctx.pg {
        pg.cleanup().await;
    }
    Ok(ok)
}

async fn run_drills(ctx: &Ctx, which: &[Drill], seed: u64) -> Result<bool> {
    let q = ctx.quick;
    let all = which.is_empty() || which.contains(&Drill::All);
    let want = |d: Drill| all || which.contains(&d);
    let mut summary = drill::drills_table();
    let mut ok = true;
    let mut record = |o: drill::Outcome| {
        o.print();
        ok &= o.passed();
        o.add_to(&mut summary);
    };
    if want(Drill::Kill9) {
        let (rows, kills) = if q { (2_000, 5) } else { (20_000, 20) };
        record(drill::kill9(ctx, rows, kills, seed).await?);
    }
    if want(Drill::Faults) {
        record(drill::faults(ctx, if q { 2_000 } else { 20_000 }).await?);
    }
    if want(Drill::DiskFull) {
        record(drill::disk_full(ctx, if q { 1_000 } else { 2_000 }).await?);
    }
    if want(Drill::PgRestart) {
        if ctx.pg.is_some() {
            record(drill::pg_restart(ctx, if q { 3_000 } else { 20_000 }).await?);
        } else {
            eprintln!("pg-restart skipped: no Postgres (--no-pg)");
        }
    }
    if want(Drill::Clock) {
        record(drill::clock(ctx, if q { 1_000 } else { 4_000 }).await?);
    }
    if want(Drill::Malformed) {
        record(drill::malformed(ctx, if q { 200 } else { 1_000 }).await?);
    }
    if summary.rows.len() > 1 {
        summary.title = "Fault drills: summary".into();
        summary.print();
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("outbox-bench: a drill failed (see FAIL above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("outbox-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
