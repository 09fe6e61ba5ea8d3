//! Sinks: one per platform contract. Each sink module keeps its protocol pure (validate a
//! payload, build a request, classify a reply) and does its I/O through [`crate::http`].

pub mod epeis;
pub mod lbbtech;
pub mod pyun;
pub mod tcec;

use std::fmt;

use serde::Deserialize;

use crate::config::SinkConfig;
use crate::event::{ClaimedRow, EventType};
use crate::outcome::StepOutcome;

/// The `type` of a `[sinks.NAME]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    Pyun,
    Epeis,
    Lbbtech,
}

impl SinkType {
    pub fn event_type(self) -> EventType {
        match self {
            SinkType::Pyun => EventType::ChargeEnd,
            SinkType::Epeis => EventType::Dosage,
            SinkType::Lbbtech => EventType::ChargeStart,
        }
    }
}

impl fmt::Display for SinkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SinkType::Pyun => "pyun",
            SinkType::Epeis => "epeis",
            SinkType::Lbbtech => "lbbtech",
        })
    }
}

/// A configured sink, ready to deliver.
pub enum Sink {
    Pyun(pyun::PyunSink),
    Epeis(epeis::EpeisSink),
    Lbbtech(lbbtech::LbbtechSink),
}

impl Sink {
    /// Builds a sink from its (already validated) config, loading its secret.
    pub fn build(name: &str, cfg: &SinkConfig, client: reqwest::Client) -> Result<Sink, String> {
        let secret = cfg.load_secret(name)?;
        match cfg.kind {
            SinkType::Pyun => Ok(Sink::Pyun(pyun::PyunSink::new(cfg, secret, client)?)),
            SinkType::Epeis => Ok(Sink::Epeis(epeis::EpeisSink::new(cfg, secret, client)?)),
            SinkType::Lbbtech => Ok(Sink::Lbbtech(lbbtech::LbbtechSink::new(
                cfg, secret, client,
            )?)),
        }
    }

    pub fn kind(&self) -> SinkType {
        match self {
            Sink::Pyun(_) => SinkType::Pyun,
            Sink::Epeis(_) => SinkType::Epeis,
            Sink::Lbbtech(_) => SinkType::Lbbtech,
        }
    }

    /// Whether an ambiguous outcome (the request may have been applied) is retried (true)
    /// or parked for an operator. Only safe where the platform deduplicates.
    pub fn retry_ambiguous(&self) -> bool {
        match self {
            Sink::Pyun(_) => true,
            Sink::Epeis(s) => s.retry_ambiguous(),
            Sink::Lbbtech(s) => s.retry_ambiguous(),
        }
    }

    /// Why this sink's rows must be held right now without using attempts (e.g. an expired
    /// credential); `None` when it can deliver. Checked by the worker before each claim.
    pub fn hold(&self, now_ms: i64) -> Option<String> {
        match self {
            Sink::Pyun(_) => None,
            Sink::Epeis(s) => s.hold(now_ms),
            Sink::Lbbtech(s) => s.hold(now_ms),
        }
    }

    /// Runs one delivery step for a claimed row. Never panics on bad input: a payload that
    /// cannot be delivered comes back as a permanent verdict naming the problem.
    pub async fn deliver(&self, row: &ClaimedRow) -> StepOutcome {
        match self {
            Sink::Pyun(s) => s.deliver(row).await,
            Sink::Epeis(s) => s.deliver(row).await,
            Sink::Lbbtech(s) => s.deliver(row).await,
        }
    }
}

/// Platform-specific config checks (required fields and their formats).
pub fn validate_config(name: &str, cfg: &SinkConfig) -> Vec<String> {
    match cfg.kind {
        SinkType::Pyun => pyun::validate_config(name, cfg),
        SinkType::Epeis => epeis::validate_config(name, cfg),
        SinkType::Lbbtech => lbbtech::validate_config(name, cfg),
    }
}
