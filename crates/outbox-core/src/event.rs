//! What producers put in the outbox and what the worker claims from it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kinds of event outboxd knows how to deliver. Stored as text in `event_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A finished charge, for 4pyun "replenish".
    ChargeEnd,
    /// A usage adjustment, for epeis "RepairDosageBack".
    Dosage,
    /// A charge start command, for lbbtech "newPriceStandardCharge".
    ChargeStart,
    /// A finished charge with its money, for T/CEC "notification_charge_order_info".
    ChargeOrder,
    /// A connector's status, for T/CEC "notification_stationStatus".
    ConnectorStatus,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::ChargeEnd,
        EventType::Dosage,
        EventType::ChargeStart,
        EventType::ChargeOrder,
        EventType::ConnectorStatus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ChargeEnd => "charge_end",
            EventType::Dosage => "dosage",
            EventType::ChargeStart => "charge_start",
            EventType::ChargeOrder => "charge_order",
            EventType::ConnectorStatus => "connector_status",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "unknown event type {s:?} (expected one of {})",
                    known.join(", ")
                )
            })
    }
}

/// An event as a producer enqueues it. Everything else in the row has a default.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub sink: String,
    pub event_type: EventType,
    pub idempotency_key: String,
    /// JSON text.
    pub payload: String,
    pub ordering_key: Option<String>,
    /// Epoch ms before which the row is not delivered.
    pub not_before: Option<i64>,
    /// Rows of the same sink and supersede key: only the newest (highest id) is sent, older
    /// pending ones finish as `superseded` (for example a connector's status updates).
    pub supersede_key: Option<String>,
}

/// The largest payload outboxd loads (1 MiB): no platform accepts more. The claim measures
/// payloads in SQL and does not load a larger one; its row is dead-lettered unread.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// A row the worker has claimed (leased) for one delivery step.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedRow {
    pub id: i64,
    pub sink: String,
    /// Kept as text: a producer may have written anything here, and an unknown type must be
    /// dead-lettered with a reason, not fail the whole claim.
    pub event_type: String,
    pub idempotency_key: String,
    pub payload: String,
    pub ordering_key: Option<String>,
    pub created_at: i64,
    /// Attempts including this one (incremented by the claim, so a row that crashes the
    /// daemon still runs out of attempts).
    pub attempts: u32,
    /// State of a multi-step flow between steps (JSON), `None` before the first step.
    pub flow_state: Option<String>,
    /// Set when a previous lease expired while the row was in flight: the previous attempt
    /// may or may not have reached the platform.
    pub in_doubt: bool,
    /// Why the row cannot be delivered as read (a column that is not text), found by the
    /// claim; the worker dead-letters such a row with this reason instead of sending it.
    pub defect: Option<String>,
}
