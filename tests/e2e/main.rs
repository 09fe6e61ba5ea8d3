//! End-to-end tests: the real `outboxd` binary, a real database, the platform simulator on
//! loopback. One test binary (svix's layout) so the suite links once.

/// One test per backend for each `body => sqlite_name, postgres_name;` (the Postgres one
/// returns early when no server is configured). Before the modules, which use it.
macro_rules! on_both_backends {
    ($($body:ident => $sqlite:ident, $postgres:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $sqlite() {
            $body(Env::sqlite().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $postgres() {
            if let Some(env) = Env::postgres().await {
                $body(env).await;
            }
        }
    )*};
}

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
