//! The `tcec` sink's own config section.
//!
//! ```toml
//! [sinks.city_platform]
//! type = "tcec"
//! url = "https://platform.example/evcs/v20160701"   # base + version; `/{interface}` is appended
//! operator_id = "MA01H3BQ2"                          # our 9-character organisation code
//! secret_file = "/run/credentials/outboxd/tcec_operator"     # OperatorSecret
//! data_secret_env = "TCEC_DATA_SECRET"               # 16 bytes
//! data_secret_iv_file = "/run/credentials/outboxd/tcec_iv"   # 16 bytes
//! sig_secret_file = "/run/credentials/outboxd/tcec_sig"
//! money_spelling = "sevice"                          # or "service" (TotalServiceMoney)
//! token_refresh_margin = "60s"
//! ```
//!
//! `url` and the OperatorSecret (`secret_file` / `secret_env`) are the settings every sink
//! has; the other three secrets are this section's own. Each comes from a file (`*_file`,
//! e.g. a systemd credential) or an environment variable (`*_env`), never from the config
//! text itself.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::envelope::Keys;
use super::payload::MoneySpelling;
use super::token::DEFAULT_REFRESH_MARGIN;
use super::Interface;
use crate::secret::Secret;

/// Length of an OperatorID (the organisation code).
pub const OPERATOR_ID_LEN: usize = 9;
/// Length in bytes of DataSecret and DataSecretIV (AES-128).
pub const DATA_SECRET_LEN: usize = 16;

fn default_margin() -> Duration {
    DEFAULT_REFRESH_MARGIN
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcecConfig {
    pub operator_id: String,
    pub data_secret_file: Option<PathBuf>,
    pub data_secret_env: Option<String>,
    pub data_secret_iv_file: Option<PathBuf>,
    pub data_secret_iv_env: Option<String>,
    pub sig_secret_file: Option<PathBuf>,
    pub sig_secret_env: Option<String>,
    #[serde(default)]
    pub money_spelling: MoneySpelling,
    /// A token is replaced this long before it expires (at most half its lifetime).
    #[serde(default = "default_margin", with = "humantime_serde")]
    pub token_refresh_margin: Duration,
}

/// The four secrets, loaded (the OperatorSecret is the sink's common `secret`).
#[derive(Debug, Clone)]
pub struct TcecSecrets {
    pub operator_secret: Secret,
    pub keys: Keys,
}

/// `{base}/{interface}`, whether or not `base` (the sink's `url`: the platform's prefix with
/// its version segment) ends with a slash.
pub fn interface_url(base: &str, interface: Interface) -> Result<Url, String> {
    let mut url = Url::parse(base).map_err(|e| format!("url {base:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(format!("url {base:?} must be http(s)://host/path"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.join(interface.name())
        .map_err(|e| format!("url {base:?}: {e}"))
}

impl TcecConfig {
    fn sources(&self) -> [(&'static str, &Option<PathBuf>, &Option<String>); 3] {
        [
            ("data_secret", &self.data_secret_file, &self.data_secret_env),
            (
                "data_secret_iv",
                &self.data_secret_iv_file,
                &self.data_secret_iv_env,
            ),
            ("sig_secret", &self.sig_secret_file, &self.sig_secret_env),
        ]
    }

    /// Config problems, each a full sentence naming `sinks.{name}`; empty when fine. Loads
    /// the secrets to check their lengths, and reports only lengths, never values. `url` is
    /// the sink's.
    pub fn check(&self, name: &str, url: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let id_len = self.operator_id.chars().count();
        if id_len != OPERATOR_ID_LEN || !self.operator_id.chars().all(|c| c.is_ascii_alphanumeric())
        {
            problems.push(format!(
                "sinks.{name}: operator_id must be the {OPERATOR_ID_LEN}-character organisation code (letters and digits), got {id_len} characters"
            ));
        }
        if let Err(e) = interface_url(url, Interface::QueryToken) {
            problems.push(format!("sinks.{name}: {e}"));
        }
        if let Err(errors) = self.load_secrets(Secret::new("")) {
            problems.extend(errors.into_iter().map(|e| format!("sinks.{name}: {e}")));
        }
        problems
    }

    /// Loads the three secrets of this section and pairs them with the OperatorSecret (the
    /// sink's common secret); every problem is reported (without the `sinks.NAME:` prefix),
    /// none shows a value.
    pub fn load_secrets(&self, operator_secret: Secret) -> Result<TcecSecrets, Vec<String>> {
        let mut problems = Vec::new();
        let mut loaded = Vec::new();
        for (label, file, env) in self.sources() {
            match load(label, file, env) {
                Ok(secret) => loaded.push(Some(secret)),
                Err(e) => {
                    problems.push(e);
                    loaded.push(None);
                }
            }
        }
        for (label, secret) in [("data_secret", &loaded[0]), ("data_secret_iv", &loaded[1])] {
            if let Some(secret) = secret {
                let n = secret.expose().len();
                if n != DATA_SECRET_LEN {
                    problems.push(format!(
                        "{label} must be {DATA_SECRET_LEN} bytes (AES-128), got {n}: check for a truncated copy or stray whitespace"
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut loaded = loaded
            .into_iter()
            .map(|s| s.expect("no problems, so all loaded"));
        let mut next = || loaded.next().expect("three secrets");
        Ok(TcecSecrets {
            operator_secret,
            keys: Keys {
                data_secret: next(),
                data_secret_iv: next(),
                sig_secret: next(),
            },
        })
    }
}

fn load(label: &str, file: &Option<PathBuf>, env: &Option<String>) -> Result<Secret, String> {
    match (file, env) {
        (Some(path), None) => {
            let raw = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {label}_file {}: {e}", path.display()))?;
            let value = raw.trim_end_matches(['\r', '\n']);
            if value.trim().is_empty() {
                return Err(format!("{label}_file {} is empty", path.display()));
            }
            Ok(Secret::new(value))
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => Ok(Secret::new(value)),
            Ok(_) => Err(format!("environment variable {var} ({label}_env) is empty")),
            Err(_) => Err(format!(
                "environment variable {var} ({label}_env) is not set"
            )),
        },
        (Some(_), Some(_)) => Err(format!("set either {label}_file or {label}_env, not both")),
        (None, None) => Err(format!(
            "no {label} configured: set {label}_file = \"/path\" or {label}_env = \"VAR\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const URL: &str = "http://127.0.0.1:9/evcs/v20160701";

    fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> PathBuf {
        let path = dir.path().join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        writeln!(file, "{value}").unwrap();
        path
    }

    fn config(dir: &tempfile::TempDir, toml_extra: &str) -> Result<TcecConfig, toml::de::Error> {
        let files: Vec<String> = [
            ("data_secret", "1234567890abcdef"),
            ("data_secret_iv", "fedcba0987654321"),
            ("sig_secret", "sig-secret-value"),
        ]
        .iter()
        .filter(|(label, _)| !toml_extra.contains(label))
        .map(|(label, value)| format!("{label}_file = {:?}", secret_file(dir, label, value)))
        .collect();
        toml::from_str(&format!(
            "operator_id = \"123456789\"\n{}\n{toml_extra}",
            files.join("\n")
        ))
    }

    #[test]
    fn a_full_section_loads_its_four_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir, "money_spelling = \"service\"").unwrap();
        assert!(
            cfg.check("city", URL).is_empty(),
            "{:?}",
            cfg.check("city", URL)
        );
        assert_eq!(cfg.money_spelling, MoneySpelling::Service);
        assert_eq!(cfg.token_refresh_margin, Duration::from_secs(60));
        let secrets = cfg.load_secrets(Secret::new("op-secret-value")).unwrap();
        assert_eq!(secrets.keys.data_secret.expose(), "1234567890abcdef");
        assert_eq!(secrets.operator_secret.expose(), "op-secret-value");
        assert!(!format!("{secrets:?}").contains("op-secret-value"));
        assert_eq!(
            interface_url(URL, Interface::ChargeOrder).unwrap().as_str(),
            "http://127.0.0.1:9/evcs/v20160701/notification_charge_order_info"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(config(&dir, "data_secret = \"inline\"").is_err());
    }

    #[test]
    fn checks_name_lengths_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let short = secret_file(&dir, "short", "abc");
        let mut cfg = config(&dir, "").unwrap();
        cfg.operator_id = "12345678".into();
        cfg.data_secret_iv_file = Some(short);
        cfg.sig_secret_env = Some("OUTBOXD_TCEC_TEST_UNSET_VAR".into());
        let problems = cfg.check("city", "ftp://host/x").join("\n");
        assert!(
            problems.contains("operator_id must be the 9-character"),
            "{problems}"
        );
        assert!(
            problems.contains("data_secret_iv must be 16 bytes"),
            "{problems}"
        );
        assert!(
            problems.contains("either sig_secret_file or sig_secret_env"),
            "{problems}"
        );
        assert!(problems.contains("must be http(s)"), "{problems}");
        assert!(!problems.contains("abc"));
        assert!(!problems.contains("1234567890abcdef"));
    }
}
