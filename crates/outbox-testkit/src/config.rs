//! An outboxd config file, and `[sinks.NAME]` sections pointed at the platform simulator.
//!
//! ```
//! use outbox_testkit::{pyun_sink, Config, SecretRef};
//! let config = Config {
//!     worker: vec!["poll_interval = \"100ms\"".into()],
//!     sinks: vec![pyun_sink("pyun", "http://127.0.0.1:9/x", SecretRef::Env("PYUN_SECRET"), &["concurrency = 4"])],
//!     ..Config::default()
//! };
//! let text = config.render("sqlite:///tmp/outbox.db");
//! assert!(text.contains("[sinks.pyun]\ntype = \"pyun\""));
//! ```

use std::path::Path;

/// The sections of an outboxd config.
#[derive(Clone, Default)]
pub struct Config {
    pub log_level: Option<String>,
    /// `[admin] listen`; empty (the default) means no admin listener, so that several
    /// daemons can run side by side on one machine.
    pub admin_listen: String,
    /// Lines of the `[worker]` table.
    pub worker: Vec<String>,
    /// Lines of the `[retry]` table.
    pub retry: Vec<String>,
    /// Whole `[sinks.NAME]` sections (see [`pyun_sink`], [`epeis_sink`], [`lbbtech_sink`],
    /// [`tcec_sink`]),
    /// each followed by anything else the caller adds (more keys, `[sinks.NAME.retry]`).
    pub sinks: Vec<String>,
}

impl Config {
    /// The TOML text of the config, for the database at `db_url`.
    pub fn render(&self, db_url: &str) -> String {
        let mut s = format!("database_url = \"{db_url}\"\n");
        if let Some(l) = &self.log_level {
            s.push_str(&format!("log_level = \"{l}\"\n"));
        }
        s.push_str(&format!("\n[admin]\nlisten = \"{}\"\n", self.admin_listen));
        if !self.worker.is_empty() {
            s.push_str(&format!("\n[worker]\n{}\n", self.worker.join("\n")));
        }
        if !self.retry.is_empty() {
            s.push_str(&format!("\n[retry]\n{}\n", self.retry.join("\n")));
        }
        for sink in &self.sinks {
            s.push('\n');
            s.push_str(sink);
        }
        s
    }

    /// Writes the rendered config to `path`.
    pub fn write(&self, path: &Path, db_url: &str) -> std::io::Result<()> {
        std::fs::write(path, self.render(db_url))
    }
}

/// Where a sink reads its secret from.
#[derive(Clone, Copy)]
pub enum SecretRef<'a> {
    /// `secret_env = "VAR"`: the daemon's environment must hold it.
    Env(&'a str),
    /// `secret_file = "PATH"`.
    File(&'a Path),
}

impl SecretRef<'_> {
    fn line(&self) -> String {
        match self {
            SecretRef::Env(var) => format!("secret_env = \"{var}\""),
            SecretRef::File(p) => format!("secret_file = \"{}\"", p.display()),
        }
    }
}

fn section(name: &str, platform: &str, url: &str, keys: &[String], extra: &[&str]) -> String {
    let mut s = format!("[sinks.{name}]\ntype = \"{platform}\"\nurl = \"{url}\"\n");
    for line in keys.iter().map(String::as_str).chain(extra.iter().copied()) {
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// `[sinks.NAME]` of type pyun at `url` with the simulator's app id; `extra` lines appended.
pub fn pyun_sink(name: &str, url: &str, secret: SecretRef, extra: &[&str]) -> String {
    let app_id = format!("app_id = \"{}\"", platform_sim::config::DEMO_PYUN_APP_ID);
    section(name, "pyun", url, &[app_id, secret.line()], extra)
}

/// `[sinks.NAME]` of type epeis at `url` with the simulator's channel; `extra` lines appended.
pub fn epeis_sink(name: &str, url: &str, secret: SecretRef, extra: &[&str]) -> String {
    let keys = [
        format!(
            "channel_did = \"{}\"",
            platform_sim::config::DEMO_EPEIS_CHANNEL_DID
        ),
        "register_did = \"RG00000000000001\"".to_string(),
        "account_did = \"AC00000000000001\"".to_string(),
        secret.line(),
    ];
    section(name, "epeis", url, &keys, extra)
}

/// `[sinks.NAME]` of type lbbtech at `url` (the simulator's `/open` base); `extra` lines
/// appended.
pub fn lbbtech_sink(name: &str, url: &str, secret: SecretRef, extra: &[&str]) -> String {
    section(name, "lbbtech", url, &[secret.line()], extra)
}

/// `[sinks.NAME]` of type tcec at `url` (the simulator's `/evcs/v…` base) with the
/// simulator's operator id; `secret` is the OperatorSecret, `keys` the DataSecret,
/// DataSecretIV and SigSecret in that order; `extra` lines appended.
pub fn tcec_sink(
    name: &str,
    url: &str,
    secret: SecretRef,
    keys: [SecretRef; 3],
    extra: &[&str],
) -> String {
    let mut lines = vec![
        format!("operator_id = \"{}\"", platform_sim::tcec::DEMO_OPERATOR_ID),
        secret.line(),
    ];
    for (label, key) in ["data_secret", "data_secret_iv", "sig_secret"]
        .iter()
        .zip(keys)
    {
        lines.push(format!(
            "{label}_{}",
            key.line().trim_start_matches("secret_")
        ));
    }
    section(name, "tcec", url, &lines, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_config_is_toml_with_each_sink_section() {
        let secret = Path::new("/run/secrets/pyun");
        let config = Config {
            log_level: Some("warn".into()),
            admin_listen: "127.0.0.1:0".into(),
            worker: vec!["lease = \"5s\"".into()],
            retry: vec!["max_attempts = 5".into()],
            sinks: vec![
                pyun_sink(
                    "a",
                    "http://h/p",
                    SecretRef::File(secret),
                    &["concurrency = 4"],
                ),
                epeis_sink("b", "http://h/e", SecretRef::Env("KEY"), &[]),
                lbbtech_sink("c", "http://h/open", SecretRef::Env("TOKEN"), &[]),
                tcec_sink(
                    "d",
                    "http://h/evcs/v1",
                    SecretRef::Env("OP"),
                    [
                        SecretRef::Env("DATA"),
                        SecretRef::File(Path::new("/run/iv")),
                        SecretRef::Env("SIG"),
                    ],
                    &[],
                ),
            ],
        };
        let v: toml::Table = config.render("sqlite:///x.db").parse().unwrap();
        assert_eq!(v["database_url"].as_str(), Some("sqlite:///x.db"));
        assert_eq!(v["admin"]["listen"].as_str(), Some("127.0.0.1:0"));
        assert_eq!(v["worker"]["lease"].as_str(), Some("5s"));
        let sinks = v["sinks"].as_table().unwrap();
        assert_eq!(sinks["a"]["type"].as_str(), Some("pyun"));
        assert_eq!(
            sinks["a"]["secret_file"].as_str(),
            Some("/run/secrets/pyun")
        );
        assert_eq!(sinks["a"]["concurrency"].as_integer(), Some(4));
        assert_eq!(
            sinks["a"]["app_id"].as_str(),
            Some(platform_sim::config::DEMO_PYUN_APP_ID)
        );
        assert_eq!(sinks["b"]["type"].as_str(), Some("epeis"));
        assert_eq!(sinks["b"]["secret_env"].as_str(), Some("KEY"));
        assert_eq!(sinks["c"]["url"].as_str(), Some("http://h/open"));
        assert_eq!(sinks["d"]["type"].as_str(), Some("tcec"));
        assert_eq!(sinks["d"]["secret_env"].as_str(), Some("OP"));
        assert_eq!(sinks["d"]["data_secret_env"].as_str(), Some("DATA"));
        assert_eq!(sinks["d"]["data_secret_iv_file"].as_str(), Some("/run/iv"));
        assert_eq!(sinks["d"]["sig_secret_env"].as_str(), Some("SIG"));
        assert_eq!(
            sinks["d"]["operator_id"].as_str(),
            Some(platform_sim::tcec::DEMO_OPERATOR_ID)
        );
    }

    #[test]
    fn no_admin_listener_by_default() {
        let v: toml::Table = Config::default().render("sqlite:///x.db").parse().unwrap();
        assert_eq!(v["admin"]["listen"].as_str(), Some(""));
        assert!(v.get("sinks").is_none());
    }
}
