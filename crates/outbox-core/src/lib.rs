//! outbox-core: the domain, store, retry policy and platform sinks of outboxd.
//!
//! Producers write events into the `outbox` table in the same transaction as their own
//! rows; the worker ([`worker::run`]) claims due rows, hands each to its [`sinks::Sink`],
//! and records the verdict: delivered, retried later with backoff, or dead-lettered.

pub mod admin;
pub mod clock;
pub mod config;
pub mod event;
pub mod health;
pub mod metrics;
pub mod outcome;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod sinks;
pub mod store;
pub mod window;
pub mod worker;
