//! outbox-migrate: creates or upgrades the outbox schema (SQLite or Postgres) with the
//! migrations embedded in this binary. Safe to run repeatedly and before every start.

use std::process::ExitCode;

use clap::Parser;
use outbox_core::store::{OpenOptions, SchemaState, Store};

#[derive(Parser)]
#[command(version, about = "Apply outboxd's schema migrations")]
struct Args {
    /// sqlite:///path/to/outbox.db or postgres://user@host/db
    #[arg(long, env = "OUTBOXD_DATABASE_URL")]
    database_url: String,
    /// Only report whether the schema is current (exit 1 if not).
    #[arg(long)]
    check: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let opts = OpenOptions {
        create: !args.check,
        ..OpenOptions::default()
    };
    let store = match Store::open(&args.database_url, &opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "outbox-migrate: cannot open {}: {e}",
                outbox_core::config::redact_url(&args.database_url)
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
