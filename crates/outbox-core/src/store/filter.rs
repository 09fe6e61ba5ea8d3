//! Which rows an operator means: one filter type shared by `outboxd list`, `show`, the
//! `dead` commands and the bulk actions (`cancel`, `retry-now`, `dead requeue`,
//! `dead purge`), and the `WHERE` clause it becomes on either backend.
//!
//! The clause is built with [`sqlx::QueryBuilder`], so every value is a bound parameter
//! (`?` on SQLite, `$n` on Postgres); no operator text is ever spliced into SQL.

use serde::Serialize;
use sqlx::{Database, Encode, QueryBuilder, Type};

use super::DeadKind;

/// Where a row stands: an outbox status, or `dead` (in `outbox_dead`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowState {
    Pending,
    InFlight,
    Delivered,
    Done,
    Superseded,
    Cancelled,
    Dead,
}

impl RowState {
    pub const ALL: [RowState; 7] = [
        RowState::Pending,
        RowState::InFlight,
        RowState::Delivered,
        RowState::Done,
        RowState::Superseded,
        RowState::Cancelled,
        RowState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Pending => "pending",
            RowState::InFlight => "in_flight",
            RowState::Delivered => "delivered",
            RowState::Done => "done",
            RowState::Superseded => "superseded",
            RowState::Cancelled => "cancelled",
            RowState::Dead => "dead",
        }
    }

    /// Final rows are never claimed again; retention prunes them.
    pub fn is_final(self) -> bool {
        !matches!(self, RowState::Pending | RowState::InFlight)
    }
}

impl std::fmt::Display for RowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RowState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        RowState::ALL
            .into_iter()
            .find(|k| k.as_str() == wanted)
            .ok_or_else(|| {
                format!(
                    "unknown state {s:?}: use one of {}",
                    RowState::ALL.map(RowState::as_str).join(", ")
                )
            })
    }
}

/// Which time a filter's `since` / `until` bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeField {
    /// When the producer created the row (`created_at`, kept by dead rows too).
    #[default]
    Created,
    /// When the row was dead-lettered (`outbox_dead.dead_at`); outbox rows: `created_at`.
    DeadAt,
}

/// Rows an operator selects. Every field narrows; an empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowFilter {
    pub sink: Option<String>,
    /// Empty: every state.
    pub states: Vec<RowState>,
    /// Exactly this idempotency key.
    pub key: Option<String>,
    /// Keys starting with this text (case-sensitive).
    pub key_prefix: Option<String>,
    /// Epoch ms, inclusive.
    pub since: Option<i64>,
    /// Epoch ms, exclusive.
    pub until: Option<i64>,
    pub time: TimeField,
    /// Case-insensitive text in the last error (outbox) or the dead-letter reason.
    pub reason: Option<String>,
    /// Dead rows of these kinds only (a kind excludes outbox rows). Empty: any.
    pub kinds: Vec<DeadKind>,
    /// Only these ids (outbox ids for outbox rows, dead ids for dead rows). Empty: any.
    pub ids: Vec<i64>,
}

impl RowFilter {
    /// Whether any field narrows the selection (bulk actions refuse an empty filter).
    pub fn narrows(&self) -> bool {
        *self
            != RowFilter {
                time: self.time,
                ..RowFilter::default()
            }
    }

    /// Whether rows still in `outbox` can match.
    pub fn wants_outbox(&self) -> bool {
        self.kinds.is_empty() && (self.states.is_empty() || self.outbox_states().next().is_some())
    }

    /// Whether dead-lettered rows can match.
    pub fn wants_dead(&self) -> bool {
        self.states.is_empty() || self.states.contains(&RowState::Dead)
    }

    fn outbox_states(&self) -> impl Iterator<Item = RowState> + '_ {
        self.states.iter().copied().filter(|s| *s != RowState::Dead)
    }

    /// The same filter, restricted to these states.
    pub fn with_states(&self, states: &[RowState]) -> RowFilter {
        let states = if self.states.is_empty() {
            states.to_vec()
        } else {
            states
                .iter()
                .copied()
                .filter(|s| self.states.contains(s))
                .collect()
        };
        RowFilter {
            states,
            ..self.clone()
        }
    }

    /// The filter in words, for "nothing matched" messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.ids.is_empty() {
            parts.push(format!(
                "id {}",
                self.ids
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(s) = &self.sink {
            parts.push(format!("sink {s}"));
        }
        if !self.states.is_empty() {
            parts.push(format!(
                "state {}",
                self.states
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ));
        }
        if !self.kinds.is_empty() {
            parts.push(format!(
                "kind {}",
                self.kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ));
        }
        if let Some(k) = &self.key {
            parts.push(format!("key {k:?}"));
        }
        if let Some(k) = &self.key_prefix {
            parts.push(format!("key starting with {k:?}"));
        }
        let what = match self.time {
            TimeField::Created => "created",
            TimeField::DeadAt => "dead-lettered",
        };
        if let Some(t) = self.since {
            parts.push(format!("{what} at or after {}", rfc3339(t)));
        }
        if let Some(t) = self.until {
            parts.push(format!("{what} before {}", rfc3339(t)));
        }
        if let Some(r) = &self.reason {
            parts.push(format!("reason containing {r:?}"));
        }
        if parts.is_empty() {
            "no filter".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Epoch ms as RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The SQL spelling that differs between the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// `haystack` contains the bound needle, ignoring ASCII case; no LIKE, so `%` and `_`
    /// in the operator's text are plain characters.
    fn contains_fn(self) -> &'static str {
        match self {
            Dialect::Sqlite => "instr",
            Dialect::Postgres => "strpos",
        }
    }
}

/// Which table a clause reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Outbox,
    Dead,
}

impl Table {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Outbox => "outbox",
            Table::Dead => "outbox_dead",
        }
    }
}

/// Appends ` WHERE ...` (always: `WHERE 1 = 1` for an empty filter) for `f` on `table`.
/// The caller checks [`RowFilter::wants_outbox`] / [`RowFilter::wants_dead`] first.
pub(crate) fn push_where<'a, DB>(
    qb: &mut QueryBuilder<'a, DB>,
    f: &RowFilter,
    table: Table,
    dialect: Dialect,
) where
    DB: Database,
    String: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    qb.push(" WHERE 1 = 1");
    if let Some(s) = &f.sink {
        qb.push(" AND sink = ").push_bind(s.clone());
    }
    if let Some(k) = &f.key {
        qb.push(" AND idempotency_key = ").push_bind(k.clone());
    }
    if let Some(p) = &f.key_prefix {
        qb.push(" AND substr(idempotency_key, 1, length(")
            .push_bind(p.clone())
            .push(")) = ")
            .push_bind(p.clone());
    }
    let time_col = match (table, f.time) {
        (Table::Dead, TimeField::DeadAt) => "dead_at",
        _ => "created_at",
    };
    if let Some(t) = f.since {
        qb.push(format!(" AND {time_col} >= ")).push_bind(t);
    }
    if let Some(t) = f.until {
        qb.push(format!(" AND {time_col} < ")).push_bind(t);
    }
    if let Some(r) = &f.reason {
        let col = match table {
            Table::Outbox => "last_error",
            Table::Dead => "reason",
        };
        qb.push(format!(
            " AND {}(lower(coalesce({col}, '')), lower(",
            dialect.contains_fn()
        ))
        .push_bind(r.clone())
        .push(")) > 0");
    }
    if !f.ids.is_empty() {
        qb.push(" AND id IN (");
        let mut sep = qb.separated(", ");
        for id in &f.ids {
            sep.push_bind(*id);
        }
        qb.push(")");
    }
    match table {
        Table::Outbox => {
            let states: Vec<RowState> = f.outbox_states().collect();
            if !states.is_empty() {
                qb.push(" AND status IN (");
                let mut sep = qb.separated(", ");
                for s in states {
                    sep.push_bind(s.as_str().to_string());
                }
                qb.push(")");
            }
        }
        Table::Dead => {
            if !f.kinds.is_empty() {
                qb.push(" AND kind IN (");
                let mut sep = qb.separated(", ");
                for k in &f.kinds {
                    sep.push_bind(k.as_str().to_string());
                }
                qb.push(")");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_leniently_and_list_the_choices() {
        assert_eq!("in-flight".parse::<RowState>(), Ok(RowState::InFlight));
        assert_eq!("Cancelled".parse::<RowState>(), Ok(RowState::Cancelled));
        let e = "lost".parse::<RowState>().unwrap_err();
        assert!(e.contains("pending, in_flight, delivered"), "{e}");
    }

    #[test]
    fn where_clause_binds_every_value() {
        let f = RowFilter {
            sink: Some("pyun".into()),
            key_prefix: Some("CE-'; DROP".into()),
            reason: Some("50%".into()),
            states: vec![RowState::Pending, RowState::Dead],
            ids: vec![3, 4],
            ..Default::default()
        };
        let mut qb = QueryBuilder::<sqlx::Postgres>::new("SELECT id FROM outbox");
        push_where(&mut qb, &f, Table::Outbox, Dialect::Postgres);
        assert_eq!(
            qb.sql(),
            "SELECT id FROM outbox WHERE 1 = 1 AND sink = $1 AND substr(idempotency_key, 1, length($2)) = $3 \
             AND strpos(lower(coalesce(last_error, '')), lower($4)) > 0 AND id IN ($5, $6) AND status IN ($7)"
        );
        assert!(f.wants_outbox() && f.wants_dead() && f.narrows());
        let kinds = RowFilter {
            kinds: vec![DeadKind::Unknown],
            ..Default::default()
        };
        assert!(!kinds.wants_outbox() && kinds.wants_dead());
        assert!(!RowFilter::default().narrows());
        let dead_only = RowFilter {
            states: vec![RowState::Dead],
            ..Default::default()
        };
        assert!(!dead_only.wants_outbox());
    }
}
