//! Sinks: one per platform contract. Each sink module keeps its protocol pure (validate a
//! payload, build a request, classify a reply) and does its I/O through [`crate::http`].

pub mod pyun;

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
}

impl Sink {
    /// Builds a sink from its (already validated) config, loading its secret.
    pub fn build(name: &str, cfg: &SinkConfig, client: reqwest::Client) -> Result<Sink, String> {
        let secret = cfg.load_secret(name)?;
        match cfg.kind {
            SinkType::Pyun => Ok(Sink::Pyun(pyun::PyunSink::new(cfg, secret, client)?)),
            other => Err(format!("sinks.{name}: sink type {other} is not available in this build")),
        }
    }

    pub fn kind(&self) -> SinkType {
        match self {
            Sink::Pyun(_) => SinkType::Pyun,
        }
    }

    /// Whether the platform tolerates a re-sent request (a duplicate is harmless).
    pub fn idempotent(&self) -> bool {
        match self {
            Sink::Pyun(_) => true,
        }
    }

    /// Whether an ambiguous outcome is retried (true) or parked for an operator.
    pub fn retry_ambiguous(&self) -> bool {
        match self {
            Sink::Pyun(_) => true,
        }
    }

    /// Runs one delivery step for a claimed row. Never panics on bad input: a payload that
    /// cannot be delivered comes back as a permanent verdict naming the problem.
    pub async fn deliver(&self, row: &ClaimedRow) -> StepOutcome {
        match self {
            Sink::Pyun(s) => s.deliver(row).await,
        }
    }
}

/// Platform-specific config checks (required fields and their formats).
pub fn validate_config(name: &str, cfg: &SinkConfig) -> Vec<String> {
    match cfg.kind {
        SinkType::Pyun => pyun::validate_config(name, cfg),
        SinkType::Epeis | SinkType::Lbbtech => {
            vec![format!("sinks.{name}: sink type {} is not available in this build", cfg.kind)]
        }
    }
}
