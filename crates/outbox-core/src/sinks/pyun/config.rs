//! The keys of a `type = "pyun"` section.

use serde::Deserialize;

/// A 4pyun sink's own settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PyunConfig {
    /// The `app_id` the platform issued (required).
    pub app_id: Option<String>,
    /// The reply-code table; the documented defaults when absent.
    #[serde(default)]
    pub codes: Option<PyunCodes>,
}

/// Reply-code table of a 4pyun sink. Codes not listed are retried (bounded by the retry
/// policy), so an unexpected transient code never drops an event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PyunCodes {
    pub success: Vec<String>,
    /// Final business outcomes that are not errors (no retry, no dead letter).
    pub done: Vec<String>,
    pub permanent: Vec<String>,
    pub retry: Vec<String>,
}

impl Default for PyunCodes {
    fn default() -> Self {
        let v = |s: &[&str]| s.iter().map(|c| c.to_string()).collect();
        PyunCodes {
            success: v(&["200", "1001"]),
            done: v(&["1002"]),
            permanent: v(&["400", "401", "403", "1400", "1401"]),
            retry: v(&["500", "503", "1500", "1503"]),
        }
    }
}

pub fn validate_config(name: &str, cfg: &PyunConfig) -> Vec<String> {
    let mut p = Vec::new();
    match &cfg.app_id {
        Some(a) if !a.trim().is_empty() => {}
        _ => p.push(format!(
            "sinks.{name}: app_id is required for type = \"pyun\""
        )),
    }
    if let Some(c) = &cfg.codes {
        if c.success.is_empty() {
            p.push(format!(
                "sinks.{name}.codes.success must list at least one code"
            ));
        }
    }
    p
}
