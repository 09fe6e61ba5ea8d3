//! outbox-migrate: creates or upgrades the outbox schema (SQLite or Postgres) with the
//! migrations embedded in this binary. Safe to run repeatedly and before every start; a
//! SQLite file that does not exist is created only with `--create`.

use std::process::ExitCode;

use clap::Parser;
use outbox_core::store::{OpenOptions, SchemaState, Store};

#[derive(Parser)]
#[command(version, about = "Apply outboxd's schema migrations")]
struct Args {
    /// sqlite:///path/to/outbox.db or postgres://user@host/db; without it, the
    /// `database_url` of the config file.
    #[arg(long, env = "OUTBOXD_DATABASE_URL")]
    database_url: Option<String>,
    /// outboxd's config file, read for `database_url` when --database-url is not given.
    #[arg(
        long,
        short,
        env = "OUTBOXD_CONFIG",
        default_value = "/etc/outboxd/outboxd.toml"
    )]
    config: std::path::PathBuf,
    /// Only report whether the schema is current (exit 1 if not).
    #[arg(long)]
    check: bool,
    /// Create the SQLite database file if it does not exist. Without it a missing file is
    /// an error: a volume that is not mounted must not get a fresh, empty outbox that
    /// producers never see. (A missing Postgres database is created when the user may.)
    #[arg(long, conflicts_with = "check")]
    create: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let database_url = match args.database_url {
        Some(u) => u,
        None => match outbox_core::config::Config::load_unchecked(&args.config) {
            Ok(c) => c.database_url,
            Err(e) => {
                eprintln!("outbox-migrate: no --database-url, and {e}");
                return ExitCode::from(2);
            }
        },
    };
    let sqlite = database_url.starts_with("sqlite:");
    let opts = OpenOptions {
        create: !args.check && (args.create || !sqlite),
        ..OpenOptions::default()
    };
    let store = match Store::open(&database_url, &opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "outbox-migrate: cannot open {}: {e}",
                outbox_core::config::redact_url(&database_url)
            );
            return ExitCode::from(2);
        }
    };
    if args.check {
        return match store.schema_state().await {
            Ok(SchemaState::Current) => {
                println!("schema is current");
                ExitCode::SUCCESS
            }
            Ok(other) => {
                println!("schema is not current: {other:?}");
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("outbox-migrate: {e}");
                ExitCode::from(2)
            }
        };
    }
    match store.migrate().await {
        Ok(applied) if applied.is_empty() => {
            println!(
                "schema is current ({} backend); nothing to apply",
                store.backend()
            );
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            println!(
                "applied migrations {applied:?} ({} backend)",
                store.backend()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("outbox-migrate: {e}");
            ExitCode::from(1)
        }
    }
}
