//! Platform-wide trouble, as opposed to a script step for one key: a wrong secret for a
//! while, a streak of bare 5xx/429 replies, refused connections, and new credentials.
//!
//! JSON forms (fields of a [`crate::SimScript`]):
//!
//! | JSON | meaning |
//! |-|-|
//! | `"wrong_secret": true` | every credential check fails, until cleared |
//! | `"wrong_secret": {"for_ms": 5000, "platforms": ["pyun"]}` | for 5 s, on 4pyun only (`platforms` optional: all) |
//! | `"wrong_secret": false` | clears it |
//! | `"streak": {"count": 5, "status": 503, "retry_after": 2, "platforms": ["epeis"]}` | the next 5 requests (of those platforms) answer a bare 503 with `Retry-After: 2`; `status` defaults to 503, `retry_after` and `platforms` optional; `count: 0` clears |
//! | `"refuse_connections": {"for_ms": 3000}` | close the listening socket for 3 s: connects are refused |
//! | `"credentials": {"pyun_app_secret": "..", "epeis_channel_did": "..", "epeis_dynamic_key": "..", "lbbtech_token": ".."}` | the platform's credentials from now on (each optional): a rotated secret |
//!
//! A wrong secret fails the check the way the platform does: 4pyun `401` (or the success
//! code with the hint, see [`crate::BadSignMode`]), epeis `CODE 1001`, lbbtech
//! `{"code":"-1","error":"token无效"}`. It applies where a request is handled normally, not to
//! scripted steps. A streak comes before scripts and random faults (a gateway in front of the
//! platform) and consumes no script step.
//!
//! Refused connections over the control API need `for_ms`: the control API is on the same
//! port. [`crate::SimHandle::refuse_connections`] can also refuse until
//! [`crate::SimHandle::accept_connections`].

use std::time::{Duration, Instant};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::record::Platform;
use crate::script::Step;

/// A wrong secret: from the control API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrongSecret {
    /// `None`: until cleared.
    pub duration: Option<Duration>,
    /// Empty: every platform.
    pub platforms: Vec<Platform>,
    /// `false` clears a wrong secret in force.
    pub on: bool,
}

impl<'de> Deserialize<'de> for WrongSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Object {
            for_ms: Option<u64>,
            #[serde(default)]
            platforms: Vec<Platform>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Switch(bool),
            Object(Object),
        }
        match Repr::deserialize(deserializer).map_err(|_| {
            D::Error::custom(
                "wrong_secret: expected true, false or {\"for_ms\": N, \"platforms\": [..]}",
            )
        })? {
            Repr::Switch(on) => Ok(WrongSecret {
                duration: None,
                platforms: Vec::new(),
                on,
            }),
            Repr::Object(o) => Ok(WrongSecret {
                duration: o.for_ms.map(Duration::from_millis),
                platforms: o.platforms,
                on: true,
            }),
        }
    }
}

/// The next `count` requests answer a bare `status`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Streak {
    pub count: u32,
    #[serde(default = "default_status")]
    pub status: u16,
    /// `Retry-After` seconds on each reply.
    pub retry_after: Option<u64>,
    /// Empty: every platform.
    #[serde(default)]
    pub platforms: Vec<Platform>,
}

fn default_status() -> u16 {
    503
}

impl Streak {
    /// `count` bare `status` replies on every platform.
    pub fn new(count: u32, status: u16) -> Self {
        Streak {
            count,
            status,
            retry_after: None,
            platforms: Vec::new(),
        }
    }

    /// With `Retry-After: secs` on each reply.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Only on these platforms.
    pub fn on(mut self, platforms: &[Platform]) -> Self {
        self.platforms = platforms.to_vec();
        self
    }
}

/// Refuse connections for a while: over the control API only with a duration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    pub for_ms: u64,
}

/// New platform credentials, each optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Credentials {
    pub pyun_app_secret: Option<String>,
    pub epeis_channel_did: Option<String>,
    pub epeis_dynamic_key: Option<String>,
    pub lbbtech_token: Option<String>,
}

/// The outages in force.
#[derive(Debug, Default)]
pub(crate) struct Outages {
    /// Until when (`None`: until cleared) and on which platforms (empty: all).
    wrong_secret: Option<(Option<Instant>, Vec<Platform>)>,
    streak: Option<Streak>,
}

fn covers(platforms: &[Platform], platform: Platform) -> bool {
    platforms.is_empty() || platforms.contains(&platform)
}

impl Outages {
    pub(crate) fn set_wrong_secret(&mut self, wrong: WrongSecret, now: Instant) {
        self.wrong_secret = wrong
            .on
            .then(|| (wrong.duration.map(|d| now + d), wrong.platforms));
    }

    /// Whether `platform`'s credential check fails at `now`.
    pub(crate) fn wrong_secret(&mut self, platform: Platform, now: Instant) -> bool {
        match &self.wrong_secret {
            Some((Some(until), _)) if now >= *until => {
                self.wrong_secret = None;
                false
            }
            Some((_, platforms)) => covers(platforms, platform),
            None => false,
        }
    }

    pub(crate) fn set_streak(&mut self, streak: Streak) {
        self.streak = (streak.count > 0).then_some(streak);
    }

    /// The streak's step for this request, if the streak covers it; counts it down.
    pub(crate) fn next_streak(&mut self, platform: Platform) -> Option<Step> {
        let streak = self.streak.as_mut()?;
        if !covers(&streak.platforms, platform) {
            return None;
        }
        let step = match streak.retry_after {
            Some(secs) => Step::http_retry_after(streak.status, secs),
            None => Step::http(streak.status),
        };
        streak.count -= 1;
        if streak.count == 0 {
            self.streak = None;
        }
        Some(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_secret_forms_parse() {
        let on: WrongSecret = serde_json::from_str("true").unwrap();
        assert_eq!((on.on, on.duration), (true, None));
        let off: WrongSecret = serde_json::from_str("false").unwrap();
        assert!(!off.on);
        let timed: WrongSecret =
            serde_json::from_str(r#"{"for_ms": 1500, "platforms": ["pyun", "lbbtech"]}"#).unwrap();
        assert_eq!(timed.duration, Some(Duration::from_millis(1500)));
        assert_eq!(timed.platforms, [Platform::Pyun, Platform::Lbbtech]);
        assert!(serde_json::from_str::<WrongSecret>(r#"{"for": 1}"#).is_err());
    }

    #[test]
    fn wrong_secret_expires_and_covers_its_platforms() {
        let mut o = Outages::default();
        let t = Instant::now();
        o.set_wrong_secret(
            WrongSecret {
                duration: Some(Duration::from_secs(2)),
                platforms: vec![Platform::Epeis],
                on: true,
            },
            t,
        );
        assert!(o.wrong_secret(Platform::Epeis, t + Duration::from_secs(1)));
        assert!(!o.wrong_secret(Platform::Pyun, t + Duration::from_secs(1)));
        assert!(!o.wrong_secret(Platform::Epeis, t + Duration::from_secs(2)));
        o.set_wrong_secret(serde_json::from_str("true").unwrap(), t);
        assert!(o.wrong_secret(Platform::Pyun, t + Duration::from_secs(3600)));
        o.set_wrong_secret(serde_json::from_str("false").unwrap(), t);
        assert!(!o.wrong_secret(Platform::Pyun, t));
    }

    #[test]
    fn streak_counts_down_on_its_platforms() {
        let mut o = Outages::default();
        let streak: Streak =
            serde_json::from_str(r#"{"count": 2, "retry_after": 3, "platforms": ["pyun"]}"#)
                .unwrap();
        assert_eq!(
            streak,
            Streak::new(2, 503).retry_after(3).on(&[Platform::Pyun])
        );
        o.set_streak(streak);
        assert_eq!(o.next_streak(Platform::Epeis), None);
        assert_eq!(
            o.next_streak(Platform::Pyun),
            Some(Step::http_retry_after(503, 3))
        );
        assert!(o.next_streak(Platform::Pyun).is_some());
        assert_eq!(o.next_streak(Platform::Pyun), None);
        o.set_streak(Streak::new(5, 429));
        o.set_streak(Streak::new(0, 503));
        assert_eq!(o.next_streak(Platform::Pyun), None);
    }
}
