//! One `[sinks.NAME]` section: the settings every sink has ([`SinkSettings`]) and its
//! platform's own part ([`PlatformConfig`]), each checked for unknown keys on its own.
//!
//! serde's `flatten` and `deny_unknown_fields` do not work together, so the section is read
//! as a TOML table and split by key: the common keys go to [`SinkSettings`], the keys of the
//! sink's platform to that platform's config struct (which denies any other key, naming it),
//! and keys of another platform are remembered so validation can say they "do not apply".

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserialize, DeserializeOwned, Deserializer, Visitor};

use crate::health::HealthConfig;
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::sinks::PlatformConfig;

/// The settings every sink has, whatever its platform.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSettings {
    /// The platform endpoint; for lbbtech the API base including `/open`
    /// (e.g. `https://center.lbbtech.com/open`), which the start, poll and verify paths hang off.
    pub url: String,
    /// The most deliveries to this sink in flight at once: the ceiling of its adaptive
    /// window. Default: the platform's (`Platform::DEFAULT_CONCURRENCY`).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Per-request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Overrides `[retry]` for this sink (whole table).
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// The sink's secret (4pyun app_secret, epeis DYNAMIC_KEY, lbbtech token): a file
    /// (e.g. from systemd `LoadCredential=`) or an environment variable, never inline.
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    /// Allows a plain `http://` url to a host other than loopback (the request, secret
    /// included, then crosses the network unencrypted).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// A proxy for this sink's requests (`http://host:port`); none by default, whatever the
    /// environment's `HTTPS_PROXY` says.
    #[serde(default)]
    pub proxy: Option<String>,
    /// When a streak of the sink's own failures holds it, and how it is probed
    /// (`[sinks.NAME.health]`: `hold_after` 5, `probe_initial` 5 s, `probe_max` 5 min).
    /// `hold_after = 0` turns holds off: every failure is judged row by row, as classified
    /// (failures that never left then count as attempts too).
    #[serde(default)]
    pub health: HealthConfig,
    /// A platform `Date` header further than this from the local clock is logged (once per
    /// change) and shown in `status` and `/metrics`.
    #[serde(default = "default_clock_skew_warn", with = "humantime_serde")]
    pub clock_skew_warn: Duration,
}

fn default_concurrency() -> usize {
    32
}
fn default_clock_skew_warn() -> Duration {
    Duration::from_secs(120)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// One `[sinks.NAME]` section.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub settings: SinkSettings,
    pub platform: PlatformConfig,
    /// Keys of another platform found in this section, reported by [`SinkConfig::check`].
    misplaced: Vec<String>,
}

impl SinkConfig {
    /// Splits a section into its common and platform parts. Errors name the key.
    pub fn from_table(mut table: toml::Table) -> Result<SinkConfig, String> {
        let type_name = match table.remove("type") {
            Some(toml::Value::String(t)) => t,
            Some(other) => {
                return Err(format!("type must be a string, got a {}", other.type_str()))
            }
            None => return Err("missing field `type`".into()),
        };
        let own = PlatformConfig::keys(&type_name).ok_or_else(|| {
            format!(
                "unknown variant `{type_name}`, expected one of {}",
                PlatformConfig::type_names()
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let common = field_names::<SinkSettings>();
        let (mut settings, mut platform, mut misplaced) =
            (toml::Table::new(), toml::Table::new(), Vec::new());
        for (k, v) in table {
            if common.contains(&k.as_str()) {
                settings.insert(k, v);
            } else if !own.contains(&k.as_str()) && PlatformConfig::any_keys(&k) {
                misplaced.push(k);
            } else {
                // The platform's struct denies anything it does not know, naming it.
                platform.insert(k, v);
            }
        }
        let given_concurrency = settings.contains_key("concurrency");
        let mut settings: SinkSettings = toml::Value::Table(settings)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())?;
        if !given_concurrency {
            if let Some(c) = PlatformConfig::default_concurrency(&type_name) {
                settings.concurrency = c;
            }
        }
        Ok(SinkConfig {
            settings,
            platform: PlatformConfig::parse(&type_name, platform)?,
            misplaced,
        })
    }

    /// The section's own checks (not those that need the whole config, like the lease),
    /// each phrased as what to change; loads the secret to check it, never shows it.
    pub fn check(&self, name: &str) -> Vec<String> {
        let mut p: Vec<String> = self
            .misplaced
            .iter()
            .map(|f| {
                format!(
                    "sinks.{name}: {f} does not apply to type = \"{}\"",
                    self.platform.type_name()
                )
            })
            .collect();
        p.extend(self.settings.check(name));
        let secret = match self.settings.load_secret(name) {
            Ok(s) => Some(s),
            Err(e) => {
                p.push(e);
                None
            }
        };
        p.extend(self.platform.check(name, &self.settings, secret.as_ref()));
        p
    }

    pub fn retry_policy<'a>(&'a self, default: &'a RetryPolicy) -> &'a RetryPolicy {
        self.settings.retry.as_ref().unwrap_or(default)
    }
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SinkConfig::from_table(toml::Table::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// `[sinks]`: every section, errors prefixed with the sink's name.
pub fn deserialize_sinks<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, SinkConfig>, D::Error> {
    BTreeMap::<String, toml::Table>::deserialize(d)?
        .into_iter()
        .map(|(name, table)| {
            SinkConfig::from_table(table)
                .map(|c| (name.clone(), c))
                .map_err(|e| de::Error::custom(format!("sinks.{name}: {e}")))
        })
        .collect()
}

impl SinkSettings {
    fn check(&self, name: &str) -> Vec<String> {
        let mut p = Vec::new();
        match url::Url::parse(&self.url) {
            Err(e) => p.push(format!("sinks.{name}: url {:?} is not a URL: {e}", self.url)),
            Ok(u) if u.scheme() == "http" && !self.allow_plain_http && !is_loopback(&u) => {
                p.push(format!(
                    "sinks.{name}: url {:?} is plain http to another host: the request (credentials included) would cross the network unencrypted; use https, or set allow_plain_http = true if the network is trusted",
                    self.url
                ))
            }
            Ok(u) if !matches!(u.scheme(), "http" | "https") => p.push(format!(
                "sinks.{name}: url {:?} must be http(s)",
                self.url
            )),
            Ok(_) => {}
        }
        if let Some(proxy) = &self.proxy {
            if let Err(e) = reqwest::Proxy::all(proxy) {
                p.push(format!("sinks.{name}: proxy {proxy:?} is not usable: {e}"));
            }
        }
        if self.concurrency == 0 {
            p.push(format!("sinks.{name}: concurrency must be at least 1"));
        }
        if self.timeout.is_zero() {
            p.push(format!("sinks.{name}: timeout must be above 0"));
        }
        p
    }

    /// Reads the secret from its file or environment variable. The error names where it
    /// looked, never the value.
    pub fn load_secret(&self, sink: &str) -> Result<Secret, String> {
        match (&self.secret_file, &self.secret_env) {
            (Some(path), None) => {
                let raw = std::fs::read_to_string(path).map_err(|e| {
                    format!("sinks.{sink}: cannot read secret_file {}: {e}", path.display())
                })?;
                let v = raw.trim_end_matches(['\r', '\n']).to_string();
                if v.trim().is_empty() {
                    return Err(format!("sinks.{sink}: secret_file {} is empty", path.display()));
                }
                Ok(Secret::new(v))
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v)),
                Ok(_) => Err(format!("sinks.{sink}: environment variable {var} (secret_env) is empty")),
                Err(_) => Err(format!("sinks.{sink}: environment variable {var} (secret_env) is not set")),
            },
            (Some(_), Some(_)) => {
                Err(format!("sinks.{sink}: set either secret_file or secret_env, not both"))
            }
            (None, None) => Err(format!(
                "sinks.{sink}: no secret configured: set secret_file = \"/path\" (e.g. a systemd credential) or secret_env = \"VAR\""
            )),
        }
    }
}

/// `localhost`, `127.0.0.0/8` or `::1`.
fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Parses a platform's own part of a section.
pub fn parse_platform<T: DeserializeOwned>(table: toml::Table) -> Result<T, String> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())
}

/// The field names of a struct, as its `Deserialize` impl declares them, so the key lists
/// are never written twice.
pub fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut names));
    names
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field names taken"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}
