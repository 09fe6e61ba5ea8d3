//! The command line of `outboxd`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "outboxd",
    version,
    about = "Delivers EV-charging events from the outbox table to the charging platforms"
)]
pub struct Cli {
    /// Config file (TOML). See deploy/outboxd.toml for every option.
    #[arg(
        long,
        short,
        env = "OUTBOXD_CONFIG",
        default_value = "/etc/outboxd/outboxd.toml",
        global = true
    )]
    pub config: PathBuf,
    /// Overrides the config's database_url.
    #[arg(long, env = "OUTBOXD_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the delivery daemon.
    Run {
        /// Exit once no row of a configured sink is pending or in flight.
        #[arg(long)]
        until_idle: bool,
    },
    /// Validate the config file and explain every problem.
    CheckConfig,
    /// Put an event into the outbox (what producers do in SQL).
    Enqueue(EnqueueArgs),
    /// Per-sink queue figures.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Show one outbox row (its status, attempts, result) by sink and key.
    Show {
        #[arg(long)]
        sink: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Inspect and requeue dead-lettered rows.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Hold a sink's rows (no attempts burned) until `resume`.
    Pause {
        sink: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Resume a paused sink.
    Resume { sink: String },
}

#[derive(Args)]
pub struct EnqueueArgs {
    #[arg(long)]
    pub sink: String,
    /// charge_end, dosage or charge_start
    #[arg(long = "type")]
    pub event_type: String,
    /// Idempotency key (unique per sink); a second enqueue with the same key is ignored.
    #[arg(long)]
    pub key: String,
    /// JSON text, or @FILE to read it from a file, or @- for standard input.
    #[arg(long)]
    pub payload: String,
    #[arg(long)]
    pub ordering_key: Option<String>,
    /// Do not deliver before this time (RFC 3339, e.g. 2026-11-24T10:00:00Z).
    #[arg(long)]
    pub not_before: Option<String>,
}

#[derive(Subcommand)]
pub enum DeadCommand {
    /// List dead-lettered rows.
    List {
        #[arg(long)]
        sink: Option<String>,
        /// Only rows dead-lettered within this long (e.g. 2h, 7d).
        #[arg(long)]
        since: Option<humantime::Duration>,
        /// Only rows whose reason contains this text.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show one dead-lettered row with every attempt and its reply.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Move rows back to pending, attempts reset, history kept.
    Requeue {
        ids: Vec<i64>,
        #[arg(long)]
        sink: Option<String>,
        /// With --sink: every dead row of that sink.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete dead rows older than this (e.g. 30d).
    Purge {
        #[arg(long)]
        older_than: humantime::Duration,
        #[arg(long)]
        json: bool,
    },
}
