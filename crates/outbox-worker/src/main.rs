//! `outboxd`: thin entry point. Parses the command line, loads the config, opens the store
//! and hands over to outbox-core.

mod cli;
mod logging;
mod ops;
mod signals;
mod table;

use std::process::ExitCode;

use clap::Parser;
use outbox_core::config::Config;
use outbox_core::shutdown::Shutdown;
use outbox_core::store::{OpenOptions, Store};
use outbox_core::worker::{self, RunMode};

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("outboxd: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn open(url: &str) -> Result<Store, String> {
    Store::open(url, &OpenOptions::default())
        .await
        .map_err(|e| format!("cannot open the outbox database {url}: {e}"))
}

async fn dispatch(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::CheckConfig => {
            let config = Config::load(&cli.config).map_err(|e| e.to_string())?;
            println!(
                "{}: OK ({} sink(s): {}; database {})",
                cli.config.display(),
                config.sinks.len(),
                config
                    .sinks
                    .iter()
                    .map(|(n, s)| format!("{n} ({})", s.kind))
                    .collect::<Vec<_>>()
                    .join(", "),
                cli.database_url.as_deref().unwrap_or(&config.database_url)
            );
            Ok(())
        }
        Command::Run { until_idle } => {
            let mut config = Config::load(&cli.config).map_err(|e| e.to_string())?;
            if let Some(url) = cli.database_url {
                config.database_url = url;
            }
            logging::init(config.log_level.as_deref());
            let store = open(&config.database_url).await?;
            store
                .require_current_schema(&config.database_url)
                .await
                .map_err(|e| e.to_string())?;
            let mode = if until_idle {
                RunMode::UntilIdle
            } else {
                RunMode::Forever
            };
            let summary = worker::run(
                &config,
                store.clone(),
                Shutdown::new(signals::shutdown_signal()),
                mode,
            )
            .await
            .map_err(|e| e.to_string())?;
            store.close().await;
            if until_idle {
                println!(
                    "run finished: {} delivered ({} with a hint), {} final without delivery, {} retried, {} dead-lettered",
                    summary.delivered, summary.hints, summary.done, summary.retried, summary.dead
                );
            }
            Ok(())
        }
        cmd => {
            // Database-only commands: the config's sinks and secrets need not be complete.
            let url = match cli.database_url {
                Some(u) => u,
                None => {
                    Config::load_unchecked(&cli.config)
                        .map_err(|e| e.to_string())?
                        .database_url
                }
            };
            let store = open(&url).await?;
            store
                .require_current_schema(&url)
                .await
                .map_err(|e| e.to_string())?;
            let r = match cmd {
                Command::Enqueue(a) => ops::enqueue(&store, a).await,
                Command::Status { json } => ops::status(&store, json).await,
                Command::Show { sink, key, json } => ops::show(&store, &sink, &key, json).await,
                Command::Dead(d) => ops::dead(&store, d).await,
                Command::Pause { sink, note } => {
                    ops::pause(&store, &sink, true, note.as_deref()).await
                }
                Command::Resume { sink } => ops::pause(&store, &sink, false, None).await,
                Command::Run { .. } | Command::CheckConfig => unreachable!("handled above"),
            };
            store.close().await;
            r
        }
    }
}
