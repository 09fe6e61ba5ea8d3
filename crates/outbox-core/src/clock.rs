//! Time as the outbox stores it: milliseconds since the Unix epoch, in an `i64`, the same in
//! SQLite and Postgres so producers on either can compute it with plain SQL.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in epoch milliseconds. Before 1970 (a broken clock) reads as 0 rather than panicking.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A short human form of an age in milliseconds ("3m", "2h 5m"), for operator output.
pub fn age(ms: i64) -> String {
    let secs = (ms.max(0) / 1000) as u64;
    let d = Duration::from_secs(secs);
    if secs == 0 {
        return format!("{}ms", ms.max(0));
    }
    let s = humantime::format_duration(d).to_string();
    // "2h 5m 3s" is plenty; keep the two largest units.
    s.split(' ').take(2).collect::<Vec<_>>().join(" ")
}
