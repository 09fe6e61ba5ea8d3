//! Sinks: one per platform contract, each a [`Platform`] in its own folder. A platform keeps
//! its protocol pure (validate a payload, build a request, read a reply into a verdict) and
//! does its I/O through the one send path, [`send`].
//!
//! The registry at the bottom of this file is the one place that lists the platforms: adding
//! one is a folder under `sinks/` and a line there (see `docs/ADDING-A-PLATFORM.md`).

pub mod epeis;
pub mod lbbtech;
pub mod pyun;
pub mod send;
mod settings;
pub mod tcec;

use std::future::Future;

use serde::de::DeserializeOwned;

pub use settings::{deserialize_sinks, SinkConfig, SinkSettings};

use crate::event::{ClaimedRow, EventType};
use crate::outcome::StepOutcome;
use crate::secret::Secret;
use send::Sender;

/// What to do with an ambiguous outcome ([`crate::outcome::Verdict::Ambiguous`]: the request
/// may or may not have been applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    /// Dead-letter it for an operator: re-sending could apply it twice.
    Park,
    /// Retry it: the platform deduplicates (or the operator accepted duplicates).
    Retry,
}

/// One platform: its event type, its config section, and how it delivers a row.
pub trait Platform: Sized + Send + Sync + 'static {
    /// The `type = "..."` of its `[sinks.NAME]` sections.
    const TYPE: &'static str;
    /// The event types its rows may carry (most platforms take one; T/CEC takes two).
    const EVENT_TYPES: &'static [EventType];
    /// The sink's `concurrency` when its section sets none: the ceiling of the adaptive
    /// in-flight window ([`crate::window`]). High where the platform deduplicates re-sent
    /// keys (a crash re-sends at most what was in flight, harmlessly); low where a re-send
    /// could apply an event twice or start a charger twice.
    const DEFAULT_CONCURRENCY: usize;
    /// Its own keys of a `[sinks.NAME]` section (a struct with `deny_unknown_fields`).
    type Config: DeserializeOwned + Clone + std::fmt::Debug + Send + Sync;

    /// Checks beyond what parsing enforces, each problem phrased as what to change.
    /// `secret` is given when it could be loaded (its absence is reported elsewhere).
    fn check_config(
        name: &str,
        settings: &SinkSettings,
        config: &Self::Config,
        secret: Option<&Secret>,
    ) -> Vec<String>;

    /// A sink ready to deliver; `http` is its own client, holding its secret.
    fn build(settings: &SinkSettings, config: &Self::Config, http: Sender) -> Result<Self, String>;

    /// Runs one delivery step for a claimed row. Never panics on bad input: a payload that
    /// cannot be delivered comes back as a permanent verdict naming the problem.
    fn deliver(&self, row: &ClaimedRow) -> impl Future<Output = StepOutcome> + Send;

    /// Why this sink's rows must be held right now without using attempts (e.g. an expired
    /// credential); `None` when it can deliver. Checked by the worker before each claim.
    fn hold(&self, _now_ms: i64) -> Option<String> {
        None
    }

    /// What an ambiguous outcome leads to.
    fn ambiguity(&self) -> Ambiguity;
}

/// A configured sink, ready to deliver.
pub struct Sink {
    inner: Built,
    skew: send::ClockSkew,
}

impl Sink {
    /// Builds a sink from its (already validated) config: loads its secret and builds its
    /// own HTTP client from its own timeouts.
    pub fn build(name: &str, cfg: &SinkConfig) -> Result<Sink, String> {
        let secret = cfg.settings.load_secret(name)?;
        let http = Sender::new(&cfg.settings, secret).map_err(|e| format!("sinks.{name}: {e}"))?;
        let skew = http.clock_skew();
        let inner = cfg
            .platform
            .build(&cfg.settings, http)
            .map_err(|e| format!("sinks.{name}: {e}"))?;
        Ok(Sink { inner, skew })
    }

    /// The platform's clock minus ours, in ms, from its latest reply's `Date` header.
    pub fn clock_skew_ms(&self) -> Option<i64> {
        self.skew.get()
    }

    /// The sink's `type`.
    pub fn type_name(&self) -> &'static str {
        self.inner.type_name()
    }

    /// The event types this sink's rows may carry.
    pub fn event_types(&self) -> &'static [EventType] {
        self.inner.event_types()
    }

    /// Whether a row of `event_type` (as the producer wrote it) belongs on this sink.
    pub fn accepts(&self, event_type: &str) -> bool {
        self.event_types().iter().any(|t| t.as_str() == event_type)
    }

    /// The accepted event types for a message: `charge_end`, `charge_order or connector_status`.
    pub fn event_types_text(&self) -> String {
        let names: Vec<&str> = self.event_types().iter().map(|t| t.as_str()).collect();
        names.join(" or ")
    }

    /// Whether an ambiguous outcome is retried (true) or parked for an operator.
    pub fn retry_ambiguous(&self) -> bool {
        self.inner.ambiguity() == Ambiguity::Retry
    }

    /// See [`Platform::hold`].
    pub fn hold(&self, now_ms: i64) -> Option<String> {
        self.inner.hold(now_ms)
    }

    /// See [`Platform::deliver`].
    pub async fn deliver(&self, row: &ClaimedRow) -> StepOutcome {
        self.inner.deliver(row).await
    }
}

/// Generates [`PlatformConfig`] and the dispatch over the built platforms from one list.
macro_rules! registry {
    ($($variant:ident => $platform:ty),+ $(,)?) => {
        /// The platform part of a `[sinks.NAME]` section, chosen by its `type`.
        #[derive(Debug, Clone)]
        pub enum PlatformConfig {
            $($variant(<$platform as Platform>::Config)),+
        }

        enum Built {
            $($variant($platform)),+
        }

        impl PlatformConfig {
            /// Every platform's `type`.
            pub fn type_names() -> &'static [&'static str] {
                &[$(<$platform as Platform>::TYPE),+]
            }

            pub fn type_name(&self) -> &'static str {
                match self { $(PlatformConfig::$variant(_) => <$platform as Platform>::TYPE),+ }
            }

            pub fn event_types(&self) -> &'static [EventType] {
                match self { $(PlatformConfig::$variant(_) => <$platform as Platform>::EVENT_TYPES),+ }
            }

            /// The keys of platform `type_name`, `None` for an unknown type.
            fn keys(type_name: &str) -> Option<&'static [&'static str]> {
                $(if type_name == <$platform as Platform>::TYPE {
                    return Some(settings::field_names::<<$platform as Platform>::Config>());
                })+
                None
            }

            /// The default `concurrency` of platform `type_name`.
            fn default_concurrency(type_name: &str) -> Option<usize> {
                $(if type_name == <$platform as Platform>::TYPE {
                    return Some(<$platform as Platform>::DEFAULT_CONCURRENCY);
                })+
                None
            }

            /// Whether `key` belongs to any platform.
            fn any_keys(key: &str) -> bool {
                Self::type_names()
                    .iter()
                    .any(|t| Self::keys(t).is_some_and(|k| k.contains(&key)))
            }

            fn parse(type_name: &str, table: toml::Table) -> Result<Self, String> {
                $(if type_name == <$platform as Platform>::TYPE {
                    return settings::parse_platform(table).map(PlatformConfig::$variant);
                })+
                Err(format!("unknown type {type_name:?}"))
            }

            fn check(&self, name: &str, s: &SinkSettings, secret: Option<&Secret>) -> Vec<String> {
                match self {
                    $(PlatformConfig::$variant(c) => <$platform>::check_config(name, s, c, secret)),+
                }
            }

            fn build(&self, s: &SinkSettings, http: Sender) -> Result<Built, String> {
                match self {
                    $(PlatformConfig::$variant(c) => <$platform>::build(s, c, http).map(Built::$variant)),+
                }
            }
        }

        impl Built {
            fn type_name(&self) -> &'static str {
                match self { $(Built::$variant(_) => <$platform as Platform>::TYPE),+ }
            }

            fn event_types(&self) -> &'static [EventType] {
                match self { $(Built::$variant(_) => <$platform as Platform>::EVENT_TYPES),+ }
            }

            fn ambiguity(&self) -> Ambiguity {
                match self { $(Built::$variant(p) => p.ambiguity()),+ }
            }

            fn hold(&self, now_ms: i64) -> Option<String> {
                match self { $(Built::$variant(p) => p.hold(now_ms)),+ }
            }

            async fn deliver(&self, row: &ClaimedRow) -> StepOutcome {
                match self { $(Built::$variant(p) => p.deliver(row).await),+ }
            }
        }
    };
}

// The registry: every platform outboxd can deliver to, one line each.
registry! {
    Pyun => pyun::Pyun,
    Epeis => epeis::Epeis,
    Lbbtech => lbbtech::Lbbtech,
    Tcec => tcec::Tcec,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(section: &str) -> Sink {
        std::env::set_var("OUTBOXD_TEST_REGISTRY_SECRET", "K".repeat(64));
        let cfg: SinkConfig = toml::from_str(&format!(
            "{section}\nsecret_env = \"OUTBOXD_TEST_REGISTRY_SECRET\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.check("s"), Vec::<String>::new());
        Sink::build("s", &cfg).unwrap()
    }

    #[test]
    fn the_registry_builds_every_platform_with_its_type_event_and_policy() {
        let pyun = sink("type = \"pyun\"\nurl = \"https://x/\"\napp_id = \"a\"");
        assert_eq!(
            (pyun.type_name(), pyun.event_types(), pyun.retry_ambiguous()),
            ("pyun", &[EventType::ChargeEnd][..], true)
        );
        let ids = "channel_did = \"CH00000000000001\"\nregister_did = \"RG00000000000001\"\naccount_did = \"AC00000000000001\"";
        let epeis = sink(&format!("type = \"epeis\"\nurl = \"https://x/\"\n{ids}"));
        assert_eq!(
            (
                epeis.type_name(),
                epeis.event_types(),
                epeis.retry_ambiguous()
            ),
            ("epeis", &[EventType::Dosage][..], false)
        );
        let opted_in = sink(&format!(
            "type = \"epeis\"\nurl = \"https://x/\"\n{ids}\nretry_ambiguous = true"
        ));
        assert!(opted_in.retry_ambiguous());
        let lbb = sink("type = \"lbbtech\"\nurl = \"https://x/open\"");
        assert_eq!(
            (lbb.type_name(), lbb.event_types(), lbb.retry_ambiguous()),
            ("lbbtech", &[EventType::ChargeStart][..], false)
        );
        std::env::set_var("OUTBOXD_TEST_REGISTRY_16", "0123456789abcdef");
        let tcec = sink(
            "type = \"tcec\"\nurl = \"https://x/evcs/v1\"\noperator_id = \"123456789\"\n\
             data_secret_env = \"OUTBOXD_TEST_REGISTRY_16\"\n\
             data_secret_iv_env = \"OUTBOXD_TEST_REGISTRY_16\"\n\
             sig_secret_env = \"OUTBOXD_TEST_REGISTRY_16\"",
        );
        assert_eq!(
            (tcec.type_name(), tcec.event_types(), tcec.retry_ambiguous()),
            (
                "tcec",
                &[EventType::ChargeOrder, EventType::ConnectorStatus][..],
                true
            )
        );
        assert!(tcec.accepts("charge_order") && tcec.accepts("connector_status"));
        assert!(!tcec.accepts("charge_end") && !pyun.accepts("charge_order"));
        assert_eq!(tcec.event_types_text(), "charge_order or connector_status");
        assert_eq!(tcec.hold(0), None);
        assert_eq!(
            PlatformConfig::type_names(),
            ["pyun", "epeis", "lbbtech", "tcec"]
        );
    }

    #[test]
    fn concurrency_defaults_to_the_platforms_ceiling_unless_set() {
        let parse = |section: &str| -> usize {
            let cfg: SinkConfig = toml::from_str(section).unwrap();
            cfg.settings.concurrency
        };
        let ids = "channel_did = \"CH00000000000001\"\nregister_did = \"RG00000000000001\"\naccount_did = \"AC00000000000001\"";
        // Where a re-send is harmless the ceiling is high; where it is not, low.
        assert_eq!(
            parse("type = \"pyun\"\nurl = \"https://x/\"\napp_id = \"a\""),
            512
        );
        assert_eq!(
            parse(&format!("type = \"epeis\"\nurl = \"https://x/\"\n{ids}")),
            8
        );
        assert_eq!(parse("type = \"lbbtech\"\nurl = \"https://x/open\""), 32);
        // An operator's value wins, lower or higher.
        assert_eq!(
            parse("type = \"pyun\"\nurl = \"https://x/\"\napp_id = \"a\"\nconcurrency = 4"),
            4
        );
        assert_eq!(
            parse(&format!(
                "type = \"epeis\"\nurl = \"https://x/\"\n{ids}\nconcurrency = 64"
            )),
            64
        );
    }

    #[test]
    fn a_key_of_another_platform_does_not_apply() {
        let cfg: SinkConfig = toml::from_str(
            "type = \"pyun\"\nurl = \"https://x/\"\napp_id = \"a\"\nsecret_env = \"X\"\npoll_window = \"1s\"",
        )
        .unwrap();
        let problems = cfg.check("s").join("\n");
        assert!(
            problems.contains("sinks.s: poll_window does not apply to type = \"pyun\""),
            "{problems}"
        );
    }
}
