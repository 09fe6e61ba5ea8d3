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
        global = true,
        help_heading = "Global options"
    )]
    pub config: PathBuf,
    /// Overrides the config's database_url.
    #[arg(
        long,
        env = "OUTBOXD_DATABASE_URL",
        global = true,
        help_heading = "Global options"
    )]
    pub database_url: Option<String>,
    /// Log format of `run` on stderr [default: text on a terminal, json otherwise].
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        global = true,
        help_heading = "Global options"
    )]
    pub log_format: Option<crate::logging::LogFormat>,
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
    ///
    /// Pending, due, in flight, oldest unfinished row, retrying, delivered (last hour and
    /// kept), done, dead-lettered, hints, paused, and the latest error.
    Status {
        /// Print JSON instead (for scripts): an array, one object per sink.
        #[arg(long)]
        json: bool,
    },
    /// Show one outbox row (its status, attempts, result) by sink and key.
    Show {
        /// The sink's name, as in `[sinks.NAME]`.
        #[arg(long)]
        sink: String,
        /// The row's idempotency key.
        #[arg(long)]
        key: String,
        /// Print one JSON document instead (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Inspect, requeue and purge dead-lettered rows.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Hold a sink's rows (no attempts burned) until `resume`.
    ///
    /// The running daemon stops claiming the sink's rows within one poll interval; rows
    /// already in flight finish.
    Pause {
        #[command(flatten)]
        sink: SinkArg,
        /// Why (shown to other operators), e.g. "credentials being rotated".
        #[arg(long)]
        note: Option<String>,
    },
    /// Resume a paused sink.
    Resume {
        #[command(flatten)]
        sink: SinkArg,
    },
    /// Print a shell completion script (packaging; e.g. `outboxd completions bash`).
    #[command(hide = true)]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (outboxd.1 and one per subcommand) into a directory (packaging).
    #[command(hide = true)]
    Man {
        /// Where to write them (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The sink a `pause` / `resume` acts on.
#[derive(Args)]
pub struct SinkArg {
    /// The sink's name, as in `[sinks.NAME]`.
    #[arg(value_name = "SINK")]
    pub name: String,
    /// Print one JSON document instead (for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EnqueueArgs {
    /// The sink's name, as in `[sinks.NAME]`.
    #[arg(long)]
    pub sink: String,
    /// charge_end, dosage, charge_start, charge_order or connector_status
    #[arg(long = "type")]
    pub event_type: String,
    /// Idempotency key (unique per sink); a second enqueue with the same key is ignored.
    #[arg(long)]
    pub key: String,
    /// JSON text, or @FILE to read it from a file, or @- for standard input.
    #[arg(long)]
    pub payload: String,
    /// Rows with the same ordering key are delivered one at a time, in order.
    #[arg(long)]
    pub ordering_key: Option<String>,
    /// Of the rows with the same sink and supersede key only the newest is sent; older
    /// waiting ones finish as `superseded` (e.g. a connector's id on its status rows).
    #[arg(long)]
    pub supersede_key: Option<String>,
    /// Do not deliver before this time (RFC 3339, e.g. 2026-11-24T10:00:00Z).
    #[arg(long)]
    pub not_before: Option<String>,
    /// Print one JSON document instead (for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum DeadCommand {
    /// List dead-lettered rows, oldest first.
    List {
        /// Only this sink's rows.
        #[arg(long)]
        sink: Option<String>,
        /// Only rows dead-lettered within this long (e.g. 2h, 7d).
        #[arg(long, value_name = "DURATION")]
        since: Option<humantime::Duration>,
        /// Only rows whose reason contains this text (case-insensitive).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print one JSON document instead (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Show one dead-lettered row with every attempt and its reply.
    Show {
        /// The dead row's id, as `dead list` shows it.
        id: i64,
        /// Print one JSON document instead (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Move rows back to pending, attempts reset, history kept.
    ///
    /// Safe while the daemon runs. A row whose key is already back in the outbox (the
    /// producer sent it again) is left dead, so nothing is delivered twice.
    Requeue {
        /// Dead row ids, as `dead list` shows them.
        #[arg(value_name = "ID")]
        ids: Vec<i64>,
        /// With --all: every dead row of this sink.
        #[arg(long)]
        sink: Option<String>,
        /// With --sink: every dead row of that sink.
        #[arg(long)]
        all: bool,
        /// Also requeue rows whose outcome is unknown (the platform may already have applied
        /// them: an epeis adjustment, an lbbtech start). Check on the platform side first.
        #[arg(long)]
        force: bool,
        /// Send the producer's correction (a payload it inserted again under the same key
        /// after the row died; `dead show` displays it) instead of the original payload.
        #[arg(long)]
        latest: bool,
        /// Print one JSON document instead (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Delete old dead rows and their attempt history.
    Purge {
        /// e.g. 30d, 12h.
        #[arg(long, value_name = "DURATION")]
        older_than: humantime::Duration,
        /// Print one JSON document instead (for scripts).
        #[arg(long)]
        json: bool,
    },
}
