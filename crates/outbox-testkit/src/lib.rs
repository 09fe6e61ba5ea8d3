//! The one harness that the end-to-end tests (`tests/support`) and the benchmarks and drills
//! (`outbox-bench`) run on:
//!
//! - [`config`]: an outboxd config file, with `[sinks.NAME]` sections pointed at the
//!   platform simulator;
//! - [`pg`]: a throwaway Postgres cluster (`scripts/pg-cluster.sh`), the shared test server
//!   of `OUTBOX_TEST_PG_URL`, and fresh databases on either;
//! - [`db`]: a migrated outbox database (SQLite or Postgres) poked with plain SQL, the way a
//!   producer writes it and an observer reads it;
//! - [`proc`]: the real binaries as child processes with their output in log files;
//! - [`wait_until`]: waiting for a condition by polling, with a deadline.
//!
//! It does not depend on `outbox-core`: it drives the product only from outside (files, SQL,
//! processes), so any crate's tests can use it.

pub mod config;
pub mod db;
pub mod pg;
pub mod proc;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use config::{epeis_sink, lbbtech_sink, pyun_sink, tcec_sink, Config, SecretRef};
pub use db::{migrate, Db, Pool};
pub use pg::{create_database, drop_database, test_pg_url, PgCluster, PgServer};
pub use proc::{cpu_secs, status_kb, tail, Exit, Proc};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// An error with a message.
pub fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(msg.into().into())
}

/// The simulator's demo credentials, which the sinks under test are configured with.
pub const PYUN_SECRET: &str = platform_sim::config::DEMO_PYUN_APP_SECRET;
pub const EPEIS_DYNAMIC_KEY: &str = platform_sim::config::DEMO_EPEIS_DYNAMIC_KEY;
pub const LBBTECH_TOKEN: &str = platform_sim::config::DEMO_LBBTECH_TOKEN;

/// The repository root (where `scripts/` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A script of the repository's `scripts/` folder.
pub fn script(name: &str) -> PathBuf {
    repo_root().join("scripts").join(name)
}

/// A binary of the workspace built into the same target directory as the running
/// executable (a test's lives one level deeper, in `deps/`). `cargo test` builds only the
/// test's own package, so the binaries must be built first.
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        return fail(format!(
            "{} is missing: build the binaries first (`cargo build --workspace --bins`; \
             scripts/test.sh and scripts/bench.sh do)",
            path.display()
        ));
    }
    Ok(path)
}

/// Files holding the simulator's demo credentials, for the sinks' `secret_file`.
pub struct SecretFiles {
    pub pyun: PathBuf,
    pub epeis: PathBuf,
    pub lbbtech: PathBuf,
}

impl SecretFiles {
    /// Writes the three files into `dir`.
    pub fn write(dir: &Path) -> Result<SecretFiles> {
        let write = |name: &str, value: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, value)?;
            Ok(p)
        };
        Ok(SecretFiles {
            pyun: write("pyun.secret", PYUN_SECRET)?,
            epeis: write("epeis.key", EPEIS_DYNAMIC_KEY)?,
            lbbtech: write("lbbtech.token", LBBTECH_TOKEN)?,
        })
    }
}

/// Polls `check` every `every` until it returns true; an error after `timeout`, naming
/// `what`. An error from `check` ends the wait at once.
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return fail(format!("{what}: not within {timeout:?}"));
        }
        tokio::time::sleep(every).await;
    }
}

/// A number unlikely to repeat across processes and runs, for names of throwaway things.
pub fn unique_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() % 1_000_000_000
}

/// Sets the mode bits of `p` (directories the `postgres` user must reach are 0755).
pub fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_returns_once_the_condition_holds() {
        let calls = std::cell::Cell::new(0);
        wait_until(
            "three calls",
            Duration::from_secs(5),
            Duration::ZERO,
            || async {
                calls.set(calls.get() + 1);
                Ok(calls.get() == 3)
            },
        )
        .await
        .unwrap();
        assert_eq!(calls.get(), 3);
    }

    #[tokio::test]
    async fn wait_until_names_what_it_waited_for_after_the_timeout() {
        let err = wait_until(
            "the moon",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || async { Ok(false) },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().starts_with("the moon: not within"), "{err}");
    }

    #[tokio::test]
    async fn wait_until_stops_at_the_first_error() {
        let err = wait_until("x", Duration::from_secs(5), Duration::ZERO, || async {
            fail::<bool>("broken")
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "broken");
    }

    #[test]
    fn a_missing_binary_names_the_build_command() {
        let err = bin("no-such-binary").unwrap_err().to_string();
        assert!(err.contains("cargo build --workspace --bins"), "{err}");
    }
}
