//! Simulator configuration: the credentials each platform checks and the knobs drills turn.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::faults::RandomFaults;

/// How 4pyun answers a bad signature. Both behaviours have been seen from the real platform.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadSignMode {
    /// Current docs: `{"code":"401","message":"签名验证不通过"}`.
    #[default]
    Code401,
    /// The 2023 behaviour: `{"code":"200","message":"已忽略当前请求","hint":"签名验证不通过"}`,
    /// a success code that applies nothing.
    Ignore200,
}

/// Everything the simulator checks requests against.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// 4pyun `app_id` that requests must carry.
    pub pyun_app_id: String,
    /// 4pyun signing secret.
    pub pyun_app_secret: String,
    /// The code 4pyun replies on success: `"200"` (2023 docs) or `"1001"` (current docs).
    pub pyun_success_code: String,
    pub pyun_bad_sign: BadSignMode,
    /// epeis `SYS_HEAD.CHANNEL_DID` (16 characters).
    pub epeis_channel_did: String,
    /// epeis `SYS_HEAD.DYNAMIC_KEY` (64 characters).
    pub epeis_dynamic_key: String,
    /// lbbtech `token` form field.
    pub lbbtech_token: String,
    /// How long a start result stays queryable after the start.
    pub lbbtech_result_ttl: Duration,
    /// Added to the system clock, so drills can skew the platform's clock against the sender's.
    pub clock_offset_ms: i64,
    pub random: RandomFaults,
    /// Keep only the counts of requests, not each request (benchmarks: constant memory).
    pub count_only: bool,
}

/// Demo credentials: the public 4pyun test vector's app and secret, made-up epeis and lbbtech
/// ones. Only for loopback tests and the demo.
pub const DEMO_PYUN_APP_ID: &str = "op00961963581daa7";
pub const DEMO_PYUN_APP_SECRET: &str = "6409292d66625a2a0912acfc61ed956c";
pub const DEMO_EPEIS_CHANNEL_DID: &str = "CH00000000000001";
pub const DEMO_EPEIS_DYNAMIC_KEY: &str =
    "DK00000000000000000000000000000000000000000000000000000000000001";
pub const DEMO_LBBTECH_TOKEN: &str = "demo-token";

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            pyun_app_id: DEMO_PYUN_APP_ID.into(),
            pyun_app_secret: DEMO_PYUN_APP_SECRET.into(),
            pyun_success_code: "200".into(),
            pyun_bad_sign: BadSignMode::Code401,
            epeis_channel_did: DEMO_EPEIS_CHANNEL_DID.into(),
            epeis_dynamic_key: DEMO_EPEIS_DYNAMIC_KEY.into(),
            lbbtech_token: DEMO_LBBTECH_TOKEN.into(),
            lbbtech_result_ttl: Duration::from_secs(60),
            clock_offset_ms: 0,
            random: RandomFaults::none(),
            count_only: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_credentials_have_the_documented_lengths() {
        assert_eq!(DEMO_EPEIS_CHANNEL_DID.len(), 16);
        assert_eq!(DEMO_EPEIS_DYNAMIC_KEY.len(), 64);
    }
}
