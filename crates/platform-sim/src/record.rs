//! The record of every request the simulator received and what it did with it, and the
//! counts tests and the demo read from it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::script::Step;

/// The simulated platforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// 4pyun charge record push (`replenish`).
    Pyun,
    /// epeis `RepairDosageBack`.
    Epeis,
    /// lbbtech start / poll / order detail.
    Lbbtech,
    /// T/CEC 102 `query_token` and pushes (key: `StartChargeSeq` or `ConnectorID`).
    Tcec,
}

impl Platform {
    pub const ALL: [Platform; 4] = [
        Platform::Pyun,
        Platform::Epeis,
        Platform::Lbbtech,
        Platform::Tcec,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Pyun => "pyun",
            Platform::Epeis => "epeis",
            Platform::Lbbtech => "lbbtech",
            Platform::Tcec => "tcec",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request as the simulator saw and answered it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordedRequest {
    /// Position in the record, from 0.
    pub seq: u64,
    /// When the request was fully read, ms since the epoch by the system clock (no skew).
    pub received_at_ms: i64,
    pub platform: Platform,
    pub method: String,
    pub path: String,
    /// The script key: 4pyun `replenish_order`, epeis `SETTLEMENT_AID`, lbbtech `simId` (for
    /// polls and order queries, the `simId` of the start they refer to). `None` when absent.
    pub key: Option<String>,
    /// Decoded form fields as a JSON object of strings (4pyun, lbbtech), or the JSON body
    /// (epeis; a string when the body is not JSON).
    pub params: serde_json::Value,
    /// The HTTP status sent; `None` when the connection was dropped without a reply.
    pub http_status: Option<u16>,
    /// The platform code of the JSON reply (4pyun `code`, epeis `CODE`, lbbtech `code`, or
    /// `"success"` for an lbbtech start, whose reply has no code). For `drop_after` this is
    /// the reply that would have been sent.
    pub reply_code: Option<String>,
    /// The JSON reply body (or, for `drop_after`, the one that would have been sent).
    pub reply: Option<serde_json::Value>,
    /// The request changed platform state: a 4pyun order accepted, an epeis adjustment
    /// booked, an lbbtech charge started.
    pub applied: bool,
    /// The request's key had already been applied before: for 4pyun a duplicate that was
    /// ignored, for epeis and lbbtech a second application.
    pub duplicate: bool,
    /// The scripted or random step that overrode plain normal behaviour, if any.
    pub fault: Option<Step>,
    /// The `fault` came from [`crate::RandomFaults`] rather than a script.
    pub fault_random: bool,
}

impl RecordedRequest {
    /// A short label of the outcome for statistics: the reply code, `"dropped"`, `"garbage"`
    /// or `"http <status>"`.
    pub fn outcome_label(&self) -> String {
        match (self.http_status, &self.reply_code) {
            (None, _) => "dropped".into(),
            (Some(_), Some(code)) => code.clone(),
            (Some(200), None) => "garbage".into(),
            (Some(status), None) => format!("http {status}"),
        }
    }
}

/// Counts for one platform.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformStats {
    pub requests: usize,
    pub applied: usize,
    /// Requests flagged [`RecordedRequest::duplicate`].
    pub duplicates: usize,
    /// Connections closed without a reply.
    pub dropped: usize,
    /// Requests per [`RecordedRequest::outcome_label`].
    pub replies: BTreeMap<String, usize>,
}

/// Counts for all platforms, as served by `GET /_sim/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub pyun: PlatformStats,
    pub epeis: PlatformStats,
    pub lbbtech: PlatformStats,
    #[serde(default)]
    pub tcec: PlatformStats,
}

impl Stats {
    pub fn platform(&self, platform: Platform) -> &PlatformStats {
        match platform {
            Platform::Pyun => &self.pyun,
            Platform::Epeis => &self.epeis,
            Platform::Lbbtech => &self.lbbtech,
            Platform::Tcec => &self.tcec,
        }
    }

    fn platform_mut(&mut self, platform: Platform) -> &mut PlatformStats {
        match platform {
            Platform::Pyun => &mut self.pyun,
            Platform::Epeis => &mut self.epeis,
            Platform::Lbbtech => &mut self.lbbtech,
            Platform::Tcec => &mut self.tcec,
        }
    }
}

/// The request log with the queries tests need, and running counts. In counting-only mode
/// requests are counted, not kept: the per-key queries then see only what was kept before.
#[derive(Debug, Default)]
pub(crate) struct Records {
    all: Vec<RecordedRequest>,
    stats: Stats,
    total: usize,
    count_only: bool,
}

impl Records {
    /// Appends a request, numbering it; returns how many are recorded (or counted) now.
    pub(crate) fn push(&mut self, mut request: RecordedRequest) -> usize {
        request.seq = self.total as u64;
        self.total += 1;
        let counts = self.stats.platform_mut(request.platform);
        counts.requests += 1;
        counts.applied += usize::from(request.applied);
        counts.duplicates += usize::from(request.duplicate);
        counts.dropped += usize::from(request.http_status.is_none());
        *counts.replies.entry(request.outcome_label()).or_default() += 1;
        if !self.count_only {
            self.all.push(request);
        }
        self.total
    }

    /// Stop (or resume) keeping each request.
    pub(crate) fn set_count_only(&mut self, count_only: bool) {
        self.count_only = count_only;
    }

    pub(crate) fn all(&self) -> &[RecordedRequest] {
        &self.all
    }

    fn for_key<'a>(
        &'a self,
        platform: Platform,
        key: &'a str,
    ) -> impl Iterator<Item = &'a RecordedRequest> + 'a {
        self.all
            .iter()
            .filter(move |r| r.platform == platform && r.key.as_deref() == Some(key))
    }

    pub(crate) fn request_count(&self, platform: Platform, key: &str) -> usize {
        self.for_key(platform, key).count()
    }

    pub(crate) fn applied_count(&self, platform: Platform, key: &str) -> usize {
        self.for_key(platform, key).filter(|r| r.applied).count()
    }

    /// Distinct applied keys, sorted.
    pub(crate) fn applied_keys(&self, platform: Platform) -> Vec<String> {
        let keys: BTreeSet<&str> = self
            .all
            .iter()
            .filter(|r| r.platform == platform && r.applied)
            .filter_map(|r| r.key.as_deref())
            .collect();
        keys.into_iter().map(str::to_owned).collect()
    }

    pub(crate) fn stats(&self) -> Stats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        platform: Platform,
        key: &str,
        applied: bool,
        status: Option<u16>,
    ) -> RecordedRequest {
        RecordedRequest {
            seq: 0,
            received_at_ms: 0,
            platform,
            method: "POST".into(),
            path: "/".into(),
            key: Some(key.into()),
            params: serde_json::Value::Null,
            http_status: status,
            reply_code: status.map(|_| "200".into()),
            reply: None,
            applied,
            duplicate: false,
            fault: None,
            fault_random: false,
        }
    }

    #[test]
    fn counts_per_key_and_platform() {
        let mut records = Records::default();
        records.push(request(Platform::Pyun, "B", false, Some(503)));
        records.push(request(Platform::Pyun, "B", true, Some(200)));
        records.push(request(Platform::Pyun, "A", true, None));
        records.push(request(Platform::Epeis, "A", true, Some(200)));
        assert_eq!(records.request_count(Platform::Pyun, "B"), 2);
        assert_eq!(records.applied_count(Platform::Pyun, "B"), 1);
        assert_eq!(records.applied_keys(Platform::Pyun), ["A", "B"]);
        assert_eq!(records.all()[3].seq, 3);
        let stats = records.stats();
        assert_eq!(stats.pyun.requests, 3);
        assert_eq!(stats.pyun.applied, 2);
        assert_eq!(stats.pyun.dropped, 1);
        assert_eq!(stats.pyun.replies["dropped"], 1);
        assert_eq!(stats.pyun.replies["200"], 2);
        assert_eq!(stats.epeis.requests, 1);
    }

    #[test]
    fn counting_only_keeps_counts_not_requests() {
        let mut records = Records::default();
        records.push(request(Platform::Pyun, "A", true, Some(200)));
        records.set_count_only(true);
        for i in 0..1000 {
            let n = records.push(request(Platform::Pyun, &format!("K{i}"), true, Some(200)));
            assert_eq!(n, i + 2);
        }
        records.push(request(Platform::Epeis, "B", false, None));
        assert_eq!(records.all().len(), 1);
        let stats = records.stats();
        assert_eq!(stats.pyun.requests, 1001);
        assert_eq!(stats.pyun.applied, 1001);
        assert_eq!(stats.pyun.replies["200"], 1001);
        assert_eq!(stats.epeis.dropped, 1);
        records.set_count_only(false);
        records.push(request(Platform::Pyun, "C", true, Some(200)));
        assert_eq!(records.all().last().unwrap().seq, 1002);
    }
}
