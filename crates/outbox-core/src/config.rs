//! outboxd's configuration: one TOML file (`--config FILE` or `OUTBOXD_CONFIG`), every value
//! with a default except what only the operator can know (URLs, credentials).
//! `deploy/outboxd.toml` is the commented reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::retry::RetryPolicy;
pub use crate::sinks::{SinkConfig, SinkSettings};

pub const DEFAULT_DATABASE_URL: &str = "sqlite:///var/lib/outboxd/outbox.db";

/// A database URL fit for a log line or an error: a password in it is replaced, so a
/// Postgres credential never reaches the journal.
pub fn redact_url(database_url: &str) -> String {
    match url::Url::parse(database_url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        Ok(_) => database_url.to_string(),
        // Unparseable: show only the scheme, in case the rest holds a secret.
        Err(_) => match database_url.split_once(':') {
            Some((scheme, _)) => format!("{scheme}:…"),
            None => "(unparseable database_url)".into(),
        },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (give another with --config FILE or OUTBOXD_CONFIG; status and dead commands also take --database-url alone)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} has {} problem(s):\n  - {}", .problems.len(), .problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `sqlite:///abs/path.db`, `sqlite://relative.db` or `postgres://...`.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// tracing filter, e.g. "info" or "outbox_core=debug"; `RUST_LOG` wins when set.
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub worker: WorkerConfig,
    /// Default retry policy; a sink may override it with its own `[sinks.NAME.retry]`.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// One `[sinks.NAME]` section per sink: common settings plus its platform's own keys.
    #[serde(default, deserialize_with = "crate::sinks::deserialize_sinks")]
    pub sinks: BTreeMap<String, SinkConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
}

/// The admin HTTP listener: `/metrics` (Prometheus) and `/healthz`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to listen on; loopback by default, since the figures name sinks and keys.
    /// An empty string disables the listener.
    pub listen: String,
    /// `/healthz` fails when the worker loop has not gone round for this long.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9464".into(),
            stall_after: Duration::from_secs(60),
        }
    }
}

fn default_database_url() -> String {
    DEFAULT_DATABASE_URL.to_string()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// How often an idle worker looks for due rows when nothing woke it.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Where inotify is unavailable, how often an idle SQLite worker checks whether another
    /// process wrote to the database (a `stat` of the WAL file). With inotify (the normal
    /// case on Linux) a commit wakes the worker at once and this is not used.
    #[serde(with = "humantime_serde")]
    pub wake_interval: Duration,
    /// Rows claimed per sink in one statement.
    pub batch_size: u32,
    /// How long a claimed row is reserved for this worker. Must exceed the sinks' timeouts:
    /// a row whose lease expires is taken by another worker.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// On SIGTERM, how long in-flight deliveries may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Identifies this worker in leases; defaults to hostname:pid.
    pub worker_id: Option<String>,
    /// Delivered and final rows (and their attempt history) are deleted this long after
    /// they finished, in small batches.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Every idempotency key ever accepted is remembered this long, far longer than the
    /// rows: a producer's re-insert of a known key is ignored, never sent again.
    #[serde(with = "humantime_serde")]
    pub key_retention: Duration,
    /// Longest wait for one database call of the worker loop: a hung query fails the round
    /// (retried with backoff) instead of stalling the loop until the watchdog kills it.
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            poll_interval: Duration::from_secs(1),
            wake_interval: Duration::from_millis(10),
            batch_size: 256,
            lease: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(10),
            worker_id: None,
            retention: Duration::from_secs(7 * 24 * 3600),
            key_retention: crate::store::DEFAULT_KEY_RETENTION,
            store_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file, collecting every problem at once.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses without the semantic checks, for commands that only need the database
    /// (`status`, `dead`, `enqueue`): they must work even while a secret is missing.
    pub fn load_unchecked(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// Every problem, each phrased as what to change.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            p.push(format!(
                "database_url {:?} must start with sqlite: or postgres://",
                redact_url(&self.database_url)
            ));
        }
        let w = &self.worker;
        if w.batch_size == 0 {
            p.push("worker.batch_size must be at least 1".into());
        }
        if w.poll_interval.is_zero() || w.wake_interval.is_zero() {
            p.push("worker.poll_interval and worker.wake_interval must be above 0".into());
        }
        if w.key_retention < w.retention {
            // A pruned row's key must still be known, or its re-insert is sent again.
            p.push(format!(
                "worker.key_retention ({}) must be at least worker.retention ({}): keys outlive their rows",
                humantime::format_duration(w.key_retention),
                humantime::format_duration(w.retention)
            ));
        }
        check_retry("retry", &self.retry, &mut p);
        if !self.admin.listen.is_empty()
            && self.admin.listen.parse::<std::net::SocketAddr>().is_err()
        {
            p.push(format!(
                "admin.listen {:?} must be an address like 127.0.0.1:9464 (or \"\" to disable)",
                self.admin.listen
            ));
        }
        if self.sinks.is_empty() {
            p.push("no [sinks.NAME] section: configure at least one sink".into());
        }
        for (name, sink) in &self.sinks {
            let s = &sink.settings;
            // A lease shorter than a request would let a second worker take a row that is
            // still being delivered.
            if w.lease <= s.timeout + s.connect_timeout {
                p.push(format!(
                    "sinks.{name}: timeout + connect_timeout ({}) must be shorter than worker.lease ({})",
                    humantime::format_duration(s.timeout + s.connect_timeout),
                    humantime::format_duration(w.lease)
                ));
            }
            if let Some(r) = &s.retry {
                check_retry(&format!("sinks.{name}.retry"), r, &mut p);
            }
            p.extend(sink.check(name));
        }
        p
    }
}

fn check_retry(at: &str, r: &RetryPolicy, p: &mut Vec<String>) {
    if r.max_attempts == 0 {
        p.push(format!("{at}.max_attempts must be at least 1"));
    }
    if r.cap < r.floor {
        p.push(format!("{at}.cap must not be below {at}.floor"));
    }
    if r.base.is_zero() {
        p.push(format!("{at}.base must be above 0"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://outboxd:s3cret@db:5432/outbox"),
            "postgres://outboxd:redacted@db:5432/outbox"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/outboxd/outbox.db"),
            "sqlite:///var/lib/outboxd/outbox.db"
        );
        assert!(!redact_url("mysql//u:s3cret@x").contains("s3cret"));
    }

    #[test]
    fn minimal_pyun_config_gets_defaults() {
        std::env::set_var("OUTBOXD_TEST_SECRET_A", "s3cret");
        let c = parse(
            r#"
            [sinks.pyun]
            type = "pyun"
            url = "http://127.0.0.1:1/gate/1.0/energy/internal/replenish"
            app_id = "op1"
            secret_env = "OUTBOXD_TEST_SECRET_A"
            "#,
        )
        .unwrap();
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.worker, WorkerConfig::default());
        let s = &c.sinks["pyun"];
        // The platform's own default ceiling (4pyun deduplicates re-sent orders).
        assert_eq!(s.settings.concurrency, 512);
        assert_eq!(s.settings.load_secret("pyun").unwrap().expose(), "s3cret");
    }

    #[test]
    fn every_problem_is_reported_and_secrets_are_not() {
        std::env::set_var("OUTBOXD_TEST_SECRET_B", "topsecretvalue");
        let err = parse(
            r#"
            database_url = "mysql://x"
            [worker]
            lease = "5s"
            [sinks.a]
            type = "pyun"
            url = "not a url"
            secret_env = "OUTBOXD_TEST_SECRET_B"
            channel_did = "x"
            [sinks.b]
            type = "pyun"
            url = "http://x/"
            app_id = "a"
            secret_env = "OUTBOXD_TEST_UNSET_VAR"
            "#,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "database_url",
            "sinks.a: channel_did does not apply",
            "sinks.a: url",
            "sinks.a: app_id is required",
            "worker.lease",
            "OUTBOXD_TEST_UNSET_VAR",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
        assert!(!err.contains("topsecretvalue"));
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_named() {
        let err = parse("[worker]\npoll_intervall = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_intervall"), "{err}");
        let err = parse("[worker]\npoll_interval = \"1 fortnight\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("poll_interval") || err.contains("fortnight"),
            "{err}"
        );
    }

    #[test]
    fn the_reference_config_parses_and_only_lacks_its_secrets() {
        let text = include_str!("../../../deploy/outboxd.toml");
        let c: Config = toml::from_str(text).unwrap();
        assert_eq!(c.sinks.len(), 3);
        for problem in c.validate() {
            assert!(problem.contains("cannot read secret_file"), "{problem}");
        }
    }

    /// The commented T/CEC example, uncommented, is a valid section.
    #[test]
    fn the_reference_tcec_example_parses_once_uncommented() {
        let text = include_str!("../../../deploy/outboxd.toml");
        let example = &text[text.find("#[sinks.supervision]").unwrap()..];
        let section: String = example
            .lines()
            .filter(|l| !l.starts_with("# ") && l.starts_with('#'))
            .map(|l| format!("{}\n", &l[1..]))
            .collect();
        let c: Config =
            toml::from_str(&format!("database_url = \"sqlite:///x.db\"\n{section}")).unwrap();
        assert_eq!(c.sinks["supervision"].platform.type_name(), "tcec");
        for problem in c.validate() {
            assert!(problem.contains("cannot read"), "{problem}");
        }
    }

    #[test]
    fn sink_keys_are_split_per_platform_and_unknown_ones_named() {
        std::env::set_var("OUTBOXD_TEST_SECRET_C", "s3cret");
        let err = parse(
            "[sinks.a]\ntype = \"pyun\"\nurl = \"https://x/\"\napp_id = \"a\"\nsecret_env = \"OUTBOXD_TEST_SECRET_C\"\napp_idd = \"typo\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sinks.a") && err.contains("app_idd"), "{err}");
        let err = parse("[sinks.a]\ntype = \"fax\"\nurl = \"https://x/\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fax") && err.contains("lbbtech"), "{err}");
        let c = parse(
            "[sinks.a]\ntype = \"pyun\"\nurl = \"https://x/\"\napp_id = \"a\"\nsecret_env = \"OUTBOXD_TEST_SECRET_C\"\ntimeout = \"3s\"\ncodes = { success = [\"OK\"] }\n",
        )
        .unwrap();
        let a = &c.sinks["a"];
        assert_eq!(a.settings.timeout, Duration::from_secs(3));
        assert_eq!(a.platform.type_name(), "pyun");
        assert_eq!(
            a.platform.event_types(),
            [crate::event::EventType::ChargeEnd]
        );
    }

    /// Issue 12 item 5: plain http only to loopback, unless the sink allows it; a proxy only
    /// when named, and then a usable one.
    #[test]
    fn plain_http_is_refused_except_to_loopback_or_when_allowed() {
        std::env::set_var("OUTBOXD_TEST_SECRET_D", "s3cret");
        let sink = |url: &str, extra: &str| {
            format!(
                "[sinks.a]\ntype = \"pyun\"\nurl = \"{url}\"\napp_id = \"a\"\nsecret_env = \"OUTBOXD_TEST_SECRET_D\"\n{extra}"
            )
        };
        for ok in [
            sink("https://api.4pyun.com/x", ""),
            sink("http://127.0.0.1:8080/x", ""),
            sink("http://localhost/x", ""),
            sink("http://[::1]:80/x", ""),
            sink("http://10.0.0.5/x", "allow_plain_http = true"),
            sink("https://x/", "proxy = \"http://10.0.0.1:3128\""),
        ] {
            assert!(parse(&ok).is_ok(), "{ok}: {:?}", parse(&ok).err());
        }
        let err = parse(&sink("http://api.4pyun.com/x", ""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sinks.a: url") && err.contains("allow_plain_http"),
            "{err}"
        );
        let err = parse(&sink("https://x/", "proxy = \"::nonsense\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.a: proxy"), "{err}");
    }

    #[test]
    fn key_retention_defaults_to_400_days_and_may_not_be_shorter_than_retention() {
        let w = WorkerConfig::default();
        assert_eq!(w.key_retention, Duration::from_secs(400 * 24 * 3600));
        let mut c: Config = toml::from_str(
            "[worker]\nretention = \"30days\"\nkey_retention = \"7days\"\n[sinks.p]\ntype = \"pyun\"\nurl = \"https://x/\"\napp_id = \"a\"\nsecret_env = \"X\"\n",
        )
        .unwrap();
        assert!(c
            .validate()
            .iter()
            .any(|m| m.contains("worker.key_retention (7days) must be at least")));
        c.worker.key_retention = Duration::from_secs(31 * 24 * 3600);
        assert!(!c.validate().iter().any(|m| m.contains("key_retention")));
    }
}
