//! End-to-end tests: the real `outboxd` binary, a real database, the platform simulator on
//! loopback. One test binary (svix's layout) so the suite links once.

mod cli;
mod demo;
mod epeis;
mod guarantees;
mod help;
mod hold;
mod keys;
mod lbbtech;
mod logs;
mod metrics;
mod operate;
mod ops;
mod page;
mod postgres;
mod pyun;
mod send;
mod service;
mod tcec;
