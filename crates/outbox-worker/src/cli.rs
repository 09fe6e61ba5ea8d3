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
    /// List rows wherever they are (outbox and dead letters), newest first, with filters.
    ///
    /// Every filter narrows: e.g. `outboxd list --sink pyun --state pending --since 2h`,
    /// `outboxd list --key-prefix CE- --reason timeout`. At most --limit rows; standard
    /// error says how many more matched.
    List(ListArgs),
    /// Show one row (its status, attempts, result) by sink and key, in the outbox or in the
    /// dead letters (it says which).
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
    /// Make pending rows waiting on backoff due now; ask a running daemon that holds a
    /// sink to probe it at once.
    ///
    /// By ids or filters (`--sink S` alone: every waiting row of S). Attempts are not reset.
    /// The daemon reads probe requests at housekeeping (every poll_interval).
    RetryNow(RetryNowArgs),
    /// Cancel pending rows: they become final `cancelled` and are never sent.
    ///
    /// The row is kept with its attempt history until retention, its key stays known (a
    /// producer's re-insert is ignored). A row in flight (being delivered right now) is
    /// refused. By ids or filters; `--sink S` alone needs `--all`.
    Cancel(CancelArgs),
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
    /// Act even on a sink the config does not have (e.g. one only another worker's config
    /// has) or, without a config, one the database has never seen.
    #[arg(long)]
    pub force: bool,
    /// Print one JSON document instead (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Which rows: the filters shared by `list`, the `dead` commands, `retry-now` and `cancel`.
#[derive(Args, Clone, Default, Debug)]
pub struct FilterArgs {
    /// Only this sink's rows (its name, as in `[sinks.NAME]`).
    #[arg(long)]
    pub sink: Option<String>,
    /// Only the row(s) with exactly this idempotency key.
    #[arg(long)]
    pub key: Option<String>,
    /// Only rows whose idempotency key starts with this text (case-sensitive).
    #[arg(long, value_name = "PREFIX")]
    pub key_prefix: Option<String>,
    /// Only rows from this time on: RFC 3339 (2026-11-24T10:00:00Z) or an age (2h, 7d).
    /// `list`, `cancel`, `retry-now`: the row's creation; `dead` commands: when it died.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only rows before this time: RFC 3339 or an age (2h: older than two hours).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only rows whose last error (or dead-letter reason) contains this text, ignoring case.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only rows in these states (repeat or comma-separate): pending, in_flight, delivered,
    /// done, superseded, cancelled, dead.
    #[arg(long, value_name = "STATE", value_delimiter = ',')]
    pub state: Vec<String>,
    /// Only dead rows of these kinds (repeat or comma-separate): permanent, unknown,
    /// expired, invalid, internal, unknown_sink.
    #[arg(long, value_name = "KIND", value_delimiter = ',')]
    pub kind: Vec<String>,
    /// At most this many rows (the newest).
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Print one JSON document instead (for scripts): {"matched": N, "rows": [...]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RetryNowArgs {
    /// Outbox row ids (as `list` shows them).
    #[arg(value_name = "ID")]
    pub ids: Vec<i64>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Every waiting row (of --sink, if given).
    #[arg(long)]
    pub all: bool,
    /// Print what would be made due; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON document instead (for scripts).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CancelArgs {
    /// Outbox row ids (as `list` shows them).
    #[arg(value_name = "ID")]
    pub ids: Vec<i64>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Every pending row (of --sink, if given).
    #[arg(long)]
    pub all: bool,
    /// Why (kept on the row with who cancelled it), e.g. "charger decommissioned".
    #[arg(long)]
    pub note: Option<String>,
    /// Print what would be cancelled and what would be refused; change nothing.
    #[arg(long)]
    pub dry_run: bool,
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
        #[command(flatten)]
        filter: FilterArgs,
        /// Only rows of these kinds (repeat or comma-separate): permanent, unknown,
        /// expired, invalid, internal, unknown_sink.
        #[arg(long, value_name = "KIND", value_delimiter = ',')]
        kind: Vec<String>,
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
    /// producer sent it again) is left dead, so nothing is delivered twice. By ids, by
    /// filters (as `dead list` takes them), or `--sink S --all`.
    Requeue {
        /// Dead row ids, as `dead list` shows them.
        #[arg(value_name = "ID")]
        ids: Vec<i64>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only rows of these kinds (repeat or comma-separate), e.g. expired.
        #[arg(long, value_name = "KIND", value_delimiter = ',')]
        kind: Vec<String>,
        /// With --sink: every dead row of that sink.
        #[arg(long)]
        all: bool,
        /// Print what would be requeued and what would be refused, and why; change nothing.
        #[arg(long)]
        dry_run: bool,
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
    /// Delete dead rows and their attempt history.
    ///
    /// By age (--older-than), filters, or --all. Rows whose outcome is unknown (the
    /// platform may have applied them) are refused without --force. Asks for confirmation
    /// when standard input is a terminal (--yes skips it).
    Purge {
        /// Only rows dead-lettered longer ago than this, e.g. 30d, 12h.
        #[arg(long, value_name = "DURATION")]
        older_than: Option<humantime::Duration>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only rows of these kinds (repeat or comma-separate), e.g. invalid.
        #[arg(long, value_name = "KIND", value_delimiter = ',')]
        kind: Vec<String>,
        /// Every dead row (of --sink, if given).
        #[arg(long)]
        all: bool,
        /// Also delete rows whose outcome is unknown (check on the platform side first).
        #[arg(long)]
        force: bool,
        /// Print what would be deleted and what would be refused; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Print one JSON document instead (for scripts).
        #[arg(long)]
        json: bool,
    },
}
