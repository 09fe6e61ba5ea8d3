//! `outboxd`: thin entry point. Parses the command line, loads the config, opens the store
//! and hands over to outbox-core.

mod assets;
mod cli;
mod daemon;
mod logging;
mod ops;
mod signals;
mod table;

use std::process::ExitCode;

use clap::Parser;
use outbox_core::config::{redact_url, Config};
use outbox_core::store::{OpenOptions, Store};

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
        .map_err(|e| format!("cannot open the outbox database {}: {e}", redact_url(url)))
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
                    .map(|(n, s)| format!("{n} ({})", s.platform.type_name()))
                    .collect::<Vec<_>>()
                    .join(", "),
                redact_url(cli.database_url.as_deref().unwrap_or(&config.database_url))
            );
            Ok(())
        }
        Command::Run { until_idle } => {
            daemon::run(&cli.config, cli.database_url, until_idle, cli.log_format).await
        }
        Command::Completions { shell } => assets::completions(shell),
        Command::Man { dir } => assets::man_pages(&dir),
        cmd => {
            // Database-only commands: the config's sinks and secrets need not be complete.
            let config = Config::load_unchecked(&cli.config);
            let admin_listen = config.as_ref().ok().map(|c| c.admin.listen.clone());
            // The sinks `pause` / `resume` check names against: none without a config.
            let configured: Option<Vec<String>> = config
                .as_ref()
                .ok()
                .map(|c| c.sinks.keys().cloned().collect());
            let url = match cli.database_url {
                Some(u) => u,
                None => config.map_err(|e| e.to_string())?.database_url,
            };
            let store = open(&url).await?;
            store
                .require_current_schema(&url)
                .await
                .map_err(|e| e.to_string())?;
            let r = match cmd {
                Command::Enqueue(a) => ops::enqueue(&store, a).await,
                Command::Status { json } => {
                    ops::status(&store, json, admin_listen.as_deref()).await
                }
                Command::List(a) => ops::list(&store, a).await,
                Command::Show { sink, key, json } => ops::show(&store, &sink, &key, json).await,
                Command::Dead(d) => ops::dead(&store, d).await,
                Command::RetryNow(a) => ops::retry_now(&store, a).await,
                Command::Cancel(a) => ops::cancel(&store, a).await,
                Command::Pause { sink, note } => {
                    ops::pause(&store, &sink, true, note.as_deref(), configured.as_deref()).await
                }
                Command::Resume { sink } => {
                    ops::pause(&store, &sink, false, None, configured.as_deref()).await
                }
                _ => unreachable!("handled above"),
            };
            store.close().await;
            r
        }
    }
}
