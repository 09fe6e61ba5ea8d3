//! T/CEC 102 part 4: the interconnection protocol of Chinese charging supervision platforms.
//!
//! The pieces are pure and separate from I/O, ready to be wired into the platform registry:
//! - [`envelope`]: AES-128-CBC + Base64 `Data`, HMAC-MD5 `Sig`, `TimeStamp` and `Seq`;
//! - [`token`]: `query_token`, the cached bearer token shared by a sink's requests, and
//!   [`token::deliver`], one push with a single refresh-and-retry on `Ret 4002`;
//! - [`payload`]: validation of the producer's payload (the platform's own `Data` object);
//! - [`reply`]: classification of `Ret` and `ConfirmResult` into a verdict and its scope;
//! - [`config`]: the sink's own config section.

pub mod config;
pub mod envelope;
pub mod payload;
pub mod reply;
pub mod token;

#[cfg(test)]
mod tests;

/// The platform interfaces this sink calls: `POST {url}/{Interface::name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interface {
    /// `query_token`: trade OperatorID + OperatorSecret for a bearer token.
    QueryToken,
    /// `notification_charge_order_info`: a finished charge with its money (event `charge_order`).
    ChargeOrder,
    /// `notification_stationStatus`: one connector's status (event `connector_status`).
    StationStatus,
}

impl Interface {
    pub fn name(self) -> &'static str {
        match self {
            Interface::QueryToken => "query_token",
            Interface::ChargeOrder => "notification_charge_order_info",
            Interface::StationStatus => "notification_stationStatus",
        }
    }
}
