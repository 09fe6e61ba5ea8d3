//! The keys of a `type = "epeis"` section, and their checks.

use std::time::{Duration, UNIX_EPOCH};

use serde::Deserialize;

use super::payload::DID_LEN;
use crate::clock;
use crate::secret::Secret;

/// Length of the `DYNAMIC_KEY`.
const DYNAMIC_KEY_LEN: usize = 64;

/// An epeis sink's own settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpeisConfig {
    pub channel_did: Option<String>,
    pub register_did: Option<String>,
    pub account_did: Option<String>,
    /// Non-zero `CODE`s that are retried instead of dead-lettered.
    #[serde(default)]
    pub retryable_codes: Option<Vec<i64>>,
    /// Non-zero `CODE`s that reject the channel credential (`CHANNEL_DID`/`DYNAMIC_KEY`):
    /// the sink's problem, not the row's, so the sink is held instead of dead-lettering its
    /// rows. Default `[1001]`.
    #[serde(default)]
    pub credential_codes: Option<Vec<i64>>,
    /// Retry ambiguous failures (the adjustment may then be applied twice).
    #[serde(default)]
    pub retry_ambiguous: Option<bool>,
    /// RFC 3339 time after which the DYNAMIC_KEY is no longer valid.
    pub dynamic_key_valid_until: Option<String>,
}

/// Parses `dynamic_key_valid_until` into epoch ms: RFC 3339 with an explicit zone, `Z` or an
/// offset such as `+08:00` (the platform's operators work in Beijing time; a time without a
/// zone would be read as UTC and the key held 8 hours late).
pub fn parse_valid_until(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let b = t.as_bytes();
    let (base, offset_secs) = if t.ends_with(['Z', 'z']) {
        (&t[..t.len() - 1], 0i64)
    } else if b.len() > 6
        && matches!(b[b.len() - 6], b'+' | b'-')
        && b[b.len() - 3] == b':'
        && t.is_char_boundary(b.len() - 6)
    {
        let (base, off) = t.split_at(t.len() - 6);
        let hh = off[1..3].parse::<i64>().ok().filter(|h| *h < 24);
        let mm = off[4..6].parse::<i64>().ok().filter(|m| *m < 60);
        let (Some(hh), Some(mm)) = (hh, mm) else {
            return Err(format!("{s:?} has an invalid UTC offset {off:?}"));
        };
        let sign = if off.starts_with('-') { -1 } else { 1 };
        (base, sign * (hh * 3600 + mm * 60))
    } else {
        return Err(format!(
            "{s:?} has no time zone: end it with Z (UTC) or an offset, e.g. 2027-01-31T00:00:00+08:00"
        ));
    };
    let at = humantime::parse_rfc3339_weak(base)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e}), e.g. 2027-01-31T00:00:00Z"))?;
    let ms = at.duration_since(UNIX_EPOCH).map(clock::ms).unwrap_or(0);
    Ok(ms - offset_secs * 1000)
}

pub(super) fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

pub fn validate_config(name: &str, cfg: &EpeisConfig, secret: Option<&Secret>) -> Vec<String> {
    let mut p = Vec::new();
    for (field, value) in [
        ("channel_did", &cfg.channel_did),
        ("register_did", &cfg.register_did),
        ("account_did", &cfg.account_did),
    ] {
        match value {
            None => p.push(format!(
                "sinks.{name}: {field} is required for type = \"epeis\""
            )),
            Some(v) if v.chars().count() != DID_LEN => p.push(format!(
                "sinks.{name}: {field} must be exactly {DID_LEN} characters, got {} ({v:?})",
                v.chars().count()
            )),
            Some(_) => {}
        }
    }
    // A missing secret is already reported by the common checks. Only its length is
    // shown, never the value.
    if let Some(key) = secret {
        let n = key.expose().chars().count();
        if n != DYNAMIC_KEY_LEN {
            p.push(format!(
                "sinks.{name}: the DYNAMIC_KEY (secret_file/secret_env) must be {DYNAMIC_KEY_LEN} characters, got {n}: check for a truncated copy or stray whitespace"
            ));
        }
    }
    if let Some(codes) = &cfg.retryable_codes {
        if codes.contains(&0) {
            p.push(format!(
                "sinks.{name}: retryable_codes must not contain 0, which is epeis's success code"
            ));
        }
    }
    if let Some(v) = &cfg.dynamic_key_valid_until {
        if let Err(e) = parse_valid_until(v) {
            p.push(format!("sinks.{name}: dynamic_key_valid_until {e}"));
        }
    }
    p
}
