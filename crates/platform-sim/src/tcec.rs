//! T/CEC 102 part 4 (supervision platforms): `query_token`, `notification_charge_order_info`
//! and `notification_stationStatus` under [`BASE_PATH`].
//!
//! Every request is checked as a platform does: the envelope parses (`Ret 4003` if not), its
//! `Sig` matches (`4001`), its `Data` decrypts (`4001`: wrong DataSecret/IV is a secrets
//! problem too), and every call but `query_token` carries a live `Authorization: Bearer`
//! token (`4002`). Replies are encrypted and signed with the same secrets. Tokens live
//! [`TcecSim::token_available_time`] seconds (short in tests, settable by script).
//!
//! Orders are idempotent by `StartChargeSeq`: the first valid push is `applied`, later ones
//! are `duplicate` and answered `ConfirmResult 0` again. Every valid status push is applied.
//!
//! # Script (`"tcec"` in a [`crate::SimScript`])
//!
//! ```json
//! {"tcec": {
//!   "pushes": {"ORDER-1": [{"ret": 500}, {"confirm_result": 1}, {"expire_token": true},
//!                          {"bad_sig": true}, {"http": 503}, {"drop": "after"}, {}],
//!              "CONNECTOR-1": [{"ret": 4004, "msg": "枪编号不存在"}]},
//!   "token": [{"fail_reason": 2}, {"ret": 500}],
//!   "token_available_time": 2
//! }}
//! ```
//!
//! A push's key is its `StartChargeSeq` (orders) or `ConnectorID` (statuses); each push with
//! that key and a live token consumes one step, after the envelope checks. `ret` replies that code with no
//! `Data` and applies nothing; `confirm_result` applies and answers that `ConfirmResult`
//! (orders) or `Status` (statuses); `expire_token` revokes the token the request carries
//! first, so it is answered `4002`; `bad_sig` processes normally and signs the reply with a
//! wrong key; `http` is a bare status; `drop` `"before"` / `"after"` closes the connection
//! without a reply, after applying for `"after"`; `delay_ms` waits before replying; `{}` is
//! normal. `token` steps apply to the next `query_token` calls (`fail_reason` 1 or 2 answers
//! `SuccStat 1`). Random faults do not apply to T/CEC.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::system_now_ms;
use crate::record::{Platform, RecordedRequest};
use crate::server::{ServeError, Shared};

/// The base path; calls are `{BASE_PATH}/{interface}`.
pub const BASE_PATH: &str = "/evcs/v20160701";
pub const QUERY_TOKEN: &str = "query_token";
pub const CHARGE_ORDER: &str = "notification_charge_order_info";
pub const STATION_STATUS: &str = "notification_stationStatus";

/// Demo credentials (the standard's sample operator, made-up secrets). Loopback only.
pub const DEMO_OPERATOR_ID: &str = "123456789";
pub const DEMO_OPERATOR_SECRET: &str = "demo-operator-secret";
pub const DEMO_DATA_SECRET: &str = "1234567890abcdef";
pub const DEMO_DATA_SECRET_IV: &str = "abcdef1234567890";
pub const DEMO_SIG_SECRET: &str = "demo-sig-secret";

/// Default token lifetime in seconds: the common platform value.
pub const DEFAULT_TOKEN_AVAILABLE_TIME: u64 = 7200;

type HmacMd5 = Hmac<md5::Md5>;
type Reply = Response<Full<Bytes>>;

/// One scripted decision for a push or a token request; every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcecStep {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_result: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub expire_token: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bad_sig: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop: Option<DropWhen>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_reason: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DropWhen {
    Before,
    After,
}

/// The `"tcec"` part of a script document, see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcecScript {
    pub pushes: HashMap<String, Vec<TcecStep>>,
    pub token: Vec<TcecStep>,
    pub token_available_time: Option<u64>,
}

/// The simulated platform's credentials and state.
#[derive(Debug)]
pub struct TcecSim {
    pub operator_id: String,
    pub operator_secret: String,
    pub data_secret: String,
    pub data_secret_iv: String,
    pub sig_secret: String,
    /// Seconds a new token lives.
    pub token_available_time: u64,
    tokens: HashMap<String, Instant>,
    orders: HashSet<String>,
    pushes: HashMap<String, VecDeque<TcecStep>>,
    token_steps: VecDeque<TcecStep>,
}

impl Default for TcecSim {
    fn default() -> Self {
        TcecSim {
            operator_id: DEMO_OPERATOR_ID.into(),
            operator_secret: DEMO_OPERATOR_SECRET.into(),
            data_secret: DEMO_DATA_SECRET.into(),
            data_secret_iv: DEMO_DATA_SECRET_IV.into(),
            sig_secret: DEMO_SIG_SECRET.into(),
            token_available_time: DEFAULT_TOKEN_AVAILABLE_TIME,
            tokens: HashMap::new(),
            orders: HashSet::new(),
            pushes: HashMap::new(),
            token_steps: VecDeque::new(),
        }
    }
}

impl TcecSim {
    pub(crate) fn apply_script(&mut self, script: TcecScript) {
        for (key, steps) in script.pushes {
            self.pushes.entry(key).or_default().extend(steps);
        }
        self.token_steps.extend(script.token);
        if let Some(seconds) = script.token_available_time {
            self.token_available_time = seconds;
        }
    }

    fn keys(&self) -> ([u8; 16], [u8; 16]) {
        let key = self.data_secret.as_bytes().try_into().unwrap_or([0; 16]);
        let iv = self.data_secret_iv.as_bytes().try_into().unwrap_or([0; 16]);
        (key, iv)
    }

    /// `Base64(AES-128-CBC(plaintext))` with this platform's DataSecret and IV.
    pub fn encrypt(&self, plaintext: &str) -> String {
        let (key, iv) = self.keys();
        BASE64.encode(
            cbc::Encryptor::<aes::Aes128>::new(&key.into(), &iv.into())
                .encrypt_padded_vec_mut::<Pkcs7>(plaintext.as_bytes()),
        )
    }

    pub fn decrypt(&self, data: &str) -> Option<String> {
        let (key, iv) = self.keys();
        let sealed = BASE64.decode(data).ok()?;
        let plain = cbc::Decryptor::<aes::Aes128>::new(&key.into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(&sealed)
            .ok()?;
        String::from_utf8(plain).ok()
    }

    /// Uppercase hex HMAC-MD5 of the concatenated parts, with `key`.
    pub fn sign_with(key: &str, parts: &[&str]) -> String {
        let mut mac = HmacMd5::new_from_slice(key.as_bytes()).expect("any key length");
        for part in parts {
            mac.update(part.as_bytes());
        }
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    }

    /// A request body as a well-behaved operator would send it (for tests and the demo).
    pub fn seal_request(&self, data: &Value, timestamp: &str, seq: &str) -> Value {
        let data = self.encrypt(&data.to_string());
        let sig = Self::sign_with(
            &self.sig_secret,
            &[&self.operator_id, &data, timestamp, seq],
        );
        json!({"OperatorID": self.operator_id, "Data": data, "TimeStamp": timestamp,
               "Seq": seq, "Sig": sig})
    }

    /// Checks a reply's Sig and decrypts its Data (for tests): `(Ret, Msg, Data)`.
    pub fn open_reply(&self, reply: &Value) -> Option<(i64, String, Option<Value>)> {
        let ret = reply["Ret"].as_i64()?;
        let msg = reply["Msg"].as_str().unwrap_or_default();
        let data = reply["Data"].as_str().unwrap_or_default();
        let sig = Self::sign_with(&self.sig_secret, &[&ret.to_string(), msg, data]);
        if reply["Sig"].as_str() != Some(sig.as_str()) {
            return None;
        }
        let data = if data.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&self.decrypt(data)?).ok()?)
        };
        Some((ret, msg.to_owned(), data))
    }

    fn seal_reply(&self, ret: i64, msg: &str, data: Option<&Value>, bad_sig: bool) -> Value {
        let data = data.map_or(String::new(), |d| self.encrypt(&d.to_string()));
        let key = if bad_sig {
            "not-the-sig-secret"
        } else {
            self.sig_secret.as_str()
        };
        let sig = Self::sign_with(key, &[&ret.to_string(), msg, &data]);
        json!({"Ret": ret, "Msg": msg, "Data": data, "Sig": sig})
    }
}

/// What the protocol logic decided about one request.
struct Decision {
    key: Option<String>,
    params: Value,
    ret: i64,
    msg: String,
    data: Option<Value>,
    applied: bool,
    duplicate: bool,
    step: Option<TcecStep>,
}

impl Decision {
    fn error(ret: i64, msg: &str, params: Value) -> Self {
        Decision {
            key: None,
            params,
            ret,
            msg: msg.into(),
            data: None,
            applied: false,
            duplicate: false,
            step: None,
        }
    }
}

fn bearer(headers: &hyper::HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Serves one request to `{BASE_PATH}/{interface}`.
pub(crate) async fn handle(
    shared: &Shared,
    method: &Method,
    headers: &hyper::HeaderMap,
    path: &str,
    interface: &str,
    body: &[u8],
) -> Result<Reply, ServeError> {
    if ![QUERY_TOKEN, CHARGE_ORDER, STATION_STATUS].contains(&interface) {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "no such T/CEC interface".into(),
        ));
    }
    if method != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "POST only".into()));
    }
    let (step, delivery) = {
        let mut state = shared.lock();
        let state = &mut *state;
        let tcec = &mut state.tcec;
        let decision = decide(tcec, interface, bearer(headers), body);
        let step = decision.step.clone().unwrap_or_default();
        let reply_body = tcec.seal_reply(
            decision.ret,
            &decision.msg,
            decision.data.as_ref(),
            step.bad_sig,
        );
        let delivery = match (step.http, step.drop) {
            (Some(status), _) => Some(plain(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                String::new(),
            )),
            (None, Some(_)) => None,
            (None, None) => Some(json_reply(&reply_body)),
        };
        let replied = step.http.is_none() && step.drop != Some(DropWhen::Before);
        let code = match (&decision.data, interface) {
            (Some(data), CHARGE_ORDER) if decision.ret == 0 => {
                format!("0/{}", data["ConfirmResult"])
            }
            _ => decision.ret.to_string(),
        };
        let record = RecordedRequest {
            seq: 0,
            received_at_ms: system_now_ms(),
            platform: Platform::Tcec,
            method: method.as_str().to_owned(),
            path: path.to_owned(),
            key: decision.key,
            params: decision.params,
            http_status: delivery.as_ref().map(|r| r.status().as_u16()),
            reply_code: replied.then_some(code),
            reply: replied.then(|| {
                json!({"Ret": decision.ret, "Msg": decision.msg, "Data": decision.data,
                       "bad_sig": step.bad_sig})
            }),
            applied: decision.applied,
            duplicate: decision.duplicate,
            fault: None,
            fault_random: false,
        };
        let count = state.records.push(record);
        shared.recorded.send_replace(count);
        (step, delivery)
    };
    if let Some(ms) = step.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    delivery.ok_or(ServeError::Dropped)
}

fn reject(ret: i64, msg: &str, params: Value) -> Box<Decision> {
    Box::new(Decision::error(ret, msg, params))
}

/// Parses the envelope, checks its Sig and decrypts its Data: `(OperatorID, Data)`, or the
/// error reply.
fn open_envelope(tcec: &TcecSim, body: &[u8]) -> Result<(String, Value), Box<Decision>> {
    let Ok(envelope) = serde_json::from_slice::<Value>(body) else {
        return Err(reject(4003, "POST参数错误: not JSON", Value::Null));
    };
    let field = |name: &str| envelope[name].as_str().map(str::to_owned);
    let (Some(operator_id), Some(data), Some(timestamp), Some(seq), Some(sig)) = (
        field("OperatorID"),
        field("Data"),
        field("TimeStamp"),
        field("Seq"),
        field("Sig"),
    ) else {
        return Err(reject(
            4003,
            "POST参数错误: envelope fields missing",
            envelope,
        ));
    };
    if timestamp.len() != 14 || seq.len() != 4 {
        return Err(reject(4003, "POST参数错误: TimeStamp/Seq", envelope));
    }
    let expected = TcecSim::sign_with(&tcec.sig_secret, &[&operator_id, &data, &timestamp, &seq]);
    if !sig.eq_ignore_ascii_case(&expected) {
        return Err(reject(4001, "签名错误", envelope));
    }
    let Some(params) = tcec
        .decrypt(&data)
        .and_then(|d| serde_json::from_str::<Value>(&d).ok())
    else {
        return Err(reject(4001, "Data解密失败", envelope));
    };
    Ok((operator_id, params))
}

fn decide(tcec: &mut TcecSim, interface: &str, bearer: Option<&str>, body: &[u8]) -> Decision {
    let (operator_id, params) = match open_envelope(tcec, body) {
        Ok(opened) => opened,
        Err(decision) => return *decision,
    };
    if interface == QUERY_TOKEN {
        return query_token(tcec, &operator_id, params);
    }
    let key = match interface {
        CHARGE_ORDER => params["StartChargeSeq"].as_str(),
        _ => params["ConnectorStatusInfo"]["ConnectorID"].as_str(),
    }
    .map(str::to_owned);
    let queue = key.as_ref().and_then(|k| tcec.pushes.get_mut(k));
    // An `expire_token` step revokes the carried token before the check (and is used up by
    // it); any other step waits for a request whose token is live.
    let mut step = None;
    if let Some(queue) = queue {
        if queue.front().is_some_and(|s| s.expire_token) {
            step = queue.pop_front();
            if let Some(token) = bearer {
                tcec.tokens.remove(token);
            }
        }
    }
    let mut decision = Decision {
        key,
        step: step.clone(),
        ..Decision::error(0, "", params)
    };
    let live = bearer
        .and_then(|t| tcec.tokens.get(t))
        .is_some_and(|expiry| Instant::now() < *expiry);
    if !live {
        decision.ret = 4002;
        decision.msg = "token错误或已过期".into();
        return decision;
    }
    if step.is_none() {
        step = decision
            .key
            .as_ref()
            .and_then(|k| tcec.pushes.get_mut(k)?.pop_front());
        decision.step = step.clone();
    }
    let step = step.unwrap_or_default();
    if step.drop == Some(DropWhen::Before) || step.http.is_some() {
        return decision;
    }
    if let Some(ret) = step.ret {
        decision.ret = ret;
        decision.msg = step.msg.clone().unwrap_or_else(|| default_msg(ret).into());
        return decision;
    }
    let problem = match interface {
        CHARGE_ORDER => check_order(&decision.params),
        _ => check_status(&decision.params),
    };
    if let Some(problem) = problem {
        decision.ret = 4004;
        decision.msg = format!("业务参数错误: {problem}");
        return decision;
    }
    let result = step.confirm_result.unwrap_or(0);
    let key = decision.key.clone().unwrap_or_default();
    if interface == CHARGE_ORDER {
        let first = tcec.orders.insert(key.clone());
        decision.applied = first;
        decision.duplicate = !first;
        decision.data = Some(json!({"StartChargeSeq": key,
            "ConnectorID": decision.params["ConnectorID"], "ConfirmResult": result}));
    } else {
        decision.applied = true;
        decision.data = Some(json!({"Status": result}));
    }
    decision
}

fn query_token(tcec: &mut TcecSim, operator_id: &str, params: Value) -> Decision {
    let step = tcec.token_steps.pop_front();
    let mut decision = Decision {
        key: Some(operator_id.to_owned()),
        step: step.clone(),
        ..Decision::error(0, "", params)
    };
    let step = step.unwrap_or_default();
    if step.drop == Some(DropWhen::Before) || step.http.is_some() {
        return decision;
    }
    if let Some(ret) = step.ret {
        decision.ret = ret;
        decision.msg = step.msg.unwrap_or_else(|| default_msg(ret).into());
        return decision;
    }
    let fail_reason = step.fail_reason.unwrap_or_else(|| {
        if decision.params["OperatorID"].as_str() != Some(tcec.operator_id.as_str()) {
            1
        } else if decision.params["OperatorSecret"].as_str() != Some(tcec.operator_secret.as_str())
        {
            2
        } else {
            0
        }
    });
    // The secret is not kept in the record.
    if let Some(params) = decision.params.as_object_mut() {
        params.insert("OperatorSecret".into(), json!("[redacted]"));
    }
    decision.data = Some(if fail_reason != 0 {
        json!({"OperatorID": operator_id, "SuccStat": 1, "AccessToken": "",
               "TokenAvailableTime": 0, "FailReason": fail_reason})
    } else {
        let token = format!("tok-{:016x}", rand::rng().random::<u64>());
        let lifetime = Duration::from_secs(tcec.token_available_time);
        tcec.tokens.insert(token.clone(), Instant::now() + lifetime);
        decision.applied = true;
        json!({"OperatorID": operator_id, "SuccStat": 0, "AccessToken": token,
               "TokenAvailableTime": tcec.token_available_time, "FailReason": 0})
    });
    decision
}

fn default_msg(ret: i64) -> &'static str {
    match ret {
        -1 => "系统繁忙",
        4001 => "签名错误",
        4002 => "token错误或已过期",
        4003 => "POST参数错误",
        4004 => "业务参数错误",
        500 => "系统错误",
        _ => "",
    }
}

/// The platform's own business checks: required fields and `SumPeriod`.
fn check_order(order: &Value) -> Option<String> {
    for field in ["StartChargeSeq", "ConnectorID", "StartTime", "EndTime"] {
        if order[field].as_str().is_none_or(str::is_empty) {
            return Some(format!("{field} missing"));
        }
    }
    for field in [
        "TotalPower",
        "TotalElecMoney",
        "TotalMoney",
        "StopReason",
        "SumPeriod",
    ] {
        if !order[field].is_number() {
            return Some(format!("{field} missing"));
        }
    }
    if !order["TotalSeviceMoney"].is_number() && !order["TotalServiceMoney"].is_number() {
        return Some("TotalSeviceMoney missing".into());
    }
    let details = order["ChargeDetails"].as_array()?;
    if order["SumPeriod"].as_u64() != Some(details.len() as u64) {
        return Some("SumPeriod does not match ChargeDetails".into());
    }
    None
}

fn check_status(status: &Value) -> Option<String> {
    let info = &status["ConnectorStatusInfo"];
    if info["ConnectorID"].as_str().is_none_or(str::is_empty) {
        return Some("ConnectorStatusInfo.ConnectorID missing".into());
    }
    match info["Status"].as_u64() {
        Some(0..=4 | 255) => None,
        _ => Some("ConnectorStatusInfo.Status invalid".into()),
    }
}

fn plain(status: StatusCode, body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply
}

fn json_reply(body: &Value) -> Reply {
    let mut reply = plain(StatusCode::OK, body.to_string());
    reply.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published T/CEC vector, with the simulator's own crypto.
    #[test]
    fn published_vector() {
        let sim = TcecSim {
            data_secret: "1234567890abcdef".into(),
            data_secret_iv: "1234567890abcdef".into(),
            sig_secret: "1234567890abcdef".into(),
            ..TcecSim::default()
        };
        let plain = r#"{"total":1,"stationStatusInfo":{"operationID":"123456789","stationID":"111111111111111","connectorStatusInfos":{"connectorID":1,"equipmentID":"10000000000000000000001","status":4,"currentA":0,"currentB":0,"currentC":0,"voltageA":0,"voltageB":0,"voltageC":0,"soc":10,}}}"#;
        let data = sim.encrypt(plain);
        assert!(data.starts_with("il7B0BSEjFdzpyKzfOFpvg/Se1CP802R"));
        assert_eq!(sim.decrypt(&data).as_deref(), Some(plain));
        assert_eq!(
            TcecSim::sign_with(
                "1234567890abcdef",
                &["123456789", &data, "20160729142400", "0001"]
            ),
            "745166E8C43C84D37FFEC0F529C4136F"
        );
    }

    #[test]
    fn script_parses() {
        let script: TcecScript = serde_json::from_str(
            r#"{"pushes": {"O1": [{"ret": 500}, {"confirm_result": 1}, {"expire_token": true},
                                 {"bad_sig": true}, {"http": 503}, {"drop": "after"}, {}]},
                "token": [{"fail_reason": 2}], "token_available_time": 2}"#,
        )
        .unwrap();
        assert_eq!(script.pushes["O1"].len(), 7);
        assert_eq!(script.pushes["O1"][5].drop, Some(DropWhen::After));
        assert!(serde_json::from_str::<TcecScript>(r#"{"pushes":{"O1":[{"colour":1}]}}"#).is_err());
    }
}
