//! The T/CEC 102 envelope every request and reply travels in.
//!
//! `Data` is `Base64(AES-128-CBC(json, DataSecret, DataSecretIV))` with PKCS#7 padding; `Sig`
//! is the uppercase hex HMAC-MD5 (key SigSecret) of `OperatorID + Data + TimeStamp + Seq` on a
//! request and of `Ret + Msg + Data` on a reply. A reply's `Sig` is checked before its `Data`
//! is decrypted: an unsigned body is never trusted, not even to be parsed.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;
type HmacMd5 = Hmac<Md5>;

/// The three envelope secrets of one platform (OperatorSecret lives with the token).
#[derive(Clone, Debug)]
pub struct Keys {
    /// 16 bytes.
    pub data_secret: Secret,
    /// 16 bytes.
    pub data_secret_iv: Secret,
    pub sig_secret: Secret,
}

/// Why an envelope could not be built or opened. Never carries a secret or the plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("DataSecret and DataSecretIV must be 16 bytes each")]
    KeyLength,
    #[error("reply signature does not match (check SigSecret)")]
    BadSignature,
    #[error("reply Data is not valid Base64")]
    Base64,
    #[error("reply Data does not decrypt (check DataSecret and DataSecretIV)")]
    Decrypt,
    #[error("reply Data is not UTF-8 JSON text")]
    NotText,
    #[error("reply envelope is not the T/CEC shape: {0}")]
    Shape(String),
}

/// A request envelope, serialised as the POST body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    #[serde(rename = "OperatorID")]
    pub operator_id: String,
    #[serde(rename = "Data")]
    pub data: String,
    #[serde(rename = "TimeStamp")]
    pub timestamp: String,
    #[serde(rename = "Seq")]
    pub seq: String,
    #[serde(rename = "Sig")]
    pub sig: String,
}

/// A reply envelope as received. `Msg` and `Data` may be absent or empty on errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyEnvelope {
    #[serde(rename = "Ret")]
    pub ret: i64,
    #[serde(rename = "Msg", default)]
    pub msg: String,
    #[serde(rename = "Data", default)]
    pub data: String,
    #[serde(rename = "Sig", default)]
    pub sig: String,
}

fn cipher_keys(keys: &Keys) -> Result<([u8; 16], [u8; 16]), EnvelopeError> {
    let key: [u8; 16] = keys
        .data_secret
        .expose()
        .as_bytes()
        .try_into()
        .map_err(|_| EnvelopeError::KeyLength)?;
    let iv: [u8; 16] = keys
        .data_secret_iv
        .expose()
        .as_bytes()
        .try_into()
        .map_err(|_| EnvelopeError::KeyLength)?;
    Ok((key, iv))
}

/// `Base64(AES-128-CBC(plaintext))`.
pub fn encrypt_data(keys: &Keys, plaintext: &str) -> Result<String, EnvelopeError> {
    let (key, iv) = cipher_keys(keys)?;
    let sealed = Aes128CbcEnc::new(&key.into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(plaintext.as_bytes());
    Ok(BASE64.encode(sealed))
}

/// The inverse of [`encrypt_data`]: the JSON text inside `Data`.
pub fn decrypt_data(keys: &Keys, data: &str) -> Result<String, EnvelopeError> {
    let (key, iv) = cipher_keys(keys)?;
    let sealed = BASE64
        .decode(data.trim())
        .map_err(|_| EnvelopeError::Base64)?;
    let plain = Aes128CbcDec::new(&key.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(&sealed)
        .map_err(|_| EnvelopeError::Decrypt)?;
    String::from_utf8(plain).map_err(|_| EnvelopeError::NotText)
}

/// Uppercase hex HMAC-MD5 of the concatenated `parts`.
pub fn sign(sig_secret: &Secret, parts: &[&str]) -> String {
    // HMAC takes keys of any length, so this never fails.
    let mut mac = HmacMd5::new_from_slice(sig_secret.expose().as_bytes())
        .expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part.as_bytes());
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// Checks `sig` (case-insensitive hex) against the parts in constant time.
pub fn verify(sig_secret: &Secret, parts: &[&str], sig: &str) -> bool {
    let Some(given) = decode_hex(sig) else {
        return false;
    };
    let mut mac = HmacMd5::new_from_slice(sig_secret.expose().as_bytes())
        .expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part.as_bytes());
    }
    mac.verify_slice(&given).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// Builds a signed request envelope around the JSON text `data_json`.
pub fn seal_request(
    keys: &Keys,
    operator_id: &str,
    data_json: &str,
    stamp: &Stamp,
) -> Result<RequestEnvelope, EnvelopeError> {
    let data = encrypt_data(keys, data_json)?;
    let sig = sign(
        &keys.sig_secret,
        &[operator_id, &data, &stamp.timestamp, &stamp.seq],
    );
    Ok(RequestEnvelope {
        operator_id: operator_id.to_owned(),
        data,
        timestamp: stamp.timestamp.clone(),
        seq: stamp.seq.clone(),
        sig,
    })
}

/// Checks a request envelope's signature and decrypts its `Data` (the simulator's side).
pub fn open_request(keys: &Keys, envelope: &RequestEnvelope) -> Result<String, EnvelopeError> {
    let parts = [
        envelope.operator_id.as_str(),
        &envelope.data,
        &envelope.timestamp,
        &envelope.seq,
    ];
    if !verify(&keys.sig_secret, &parts, &envelope.sig) {
        return Err(EnvelopeError::BadSignature);
    }
    decrypt_data(keys, &envelope.data)
}

/// Builds a signed reply envelope (the simulator's side). An empty `data_json` sends an
/// empty `Data`, as platforms do on errors.
pub fn seal_reply(
    keys: &Keys,
    ret: i64,
    msg: &str,
    data_json: &str,
) -> Result<ReplyEnvelope, EnvelopeError> {
    let data = if data_json.is_empty() {
        String::new()
    } else {
        encrypt_data(keys, data_json)?
    };
    let sig = sign(&keys.sig_secret, &[&ret.to_string(), msg, &data]);
    Ok(ReplyEnvelope {
        ret,
        msg: msg.to_owned(),
        data,
        sig,
    })
}

/// A reply whose signature checked out: `Ret`, `Msg` and the decrypted `Data` (`None` when
/// the reply carried no `Data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedReply {
    pub ret: i64,
    pub msg: String,
    pub data: Option<String>,
}

/// Parses a reply body, checks its `Sig` over `Ret + Msg + Data`, and only then decrypts.
pub fn open_reply(keys: &Keys, body: &str) -> Result<OpenedReply, EnvelopeError> {
    let envelope: ReplyEnvelope =
        serde_json::from_str(body).map_err(|e| EnvelopeError::Shape(e.to_string()))?;
    let ret = envelope.ret.to_string();
    if !verify(
        &keys.sig_secret,
        &[&ret, &envelope.msg, &envelope.data],
        &envelope.sig,
    ) {
        return Err(EnvelopeError::BadSignature);
    }
    let data = if envelope.data.is_empty() {
        None
    } else {
        Some(decrypt_data(keys, &envelope.data)?)
    };
    Ok(OpenedReply {
        ret: envelope.ret,
        msg: envelope.msg,
        data,
    })
}

/// The `TimeStamp` and `Seq` of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// `yyyyMMddHHmmss`, in the platform's local time.
    pub timestamp: String,
    /// 4 digits, counting up within one second.
    pub seq: String,
}

/// Hands out `TimeStamp` + `Seq` pairs: `Seq` restarts at `0001` each new second and counts
/// up within it (wrapping after `9999`). One per sink, shared by its requests.
#[derive(Debug)]
pub struct SeqCounter {
    /// Offset of the platform's local time from UTC, in seconds (China: +8 h).
    utc_offset_secs: i64,
    state: std::sync::Mutex<(i64, u32)>,
}

/// China Standard Time, the zone every T/CEC platform runs in.
pub const CHINA_UTC_OFFSET_SECS: i64 = 8 * 3600;

impl SeqCounter {
    pub fn new(utc_offset_secs: i64) -> Self {
        SeqCounter {
            utc_offset_secs,
            state: std::sync::Mutex::new((i64::MIN, 0)),
        }
    }

    /// The stamp for a request sent at `now_ms` (epoch milliseconds).
    pub fn next(&self, now_ms: i64) -> Stamp {
        let second = now_ms.div_euclid(1000);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last, count) = &mut *state;
        if *last == second {
            *count = *count % 9999 + 1;
        } else {
            *last = second;
            *count = 1;
        }
        Stamp {
            timestamp: compact_timestamp(second + self.utc_offset_secs),
            seq: format!("{count:04}"),
        }
    }
}

/// Formats epoch seconds (already shifted to local time) as `yyyyMMddHHmmss`: humantime's
/// RFC 3339 text (`2016-07-29T14:24:00Z`) without its separators.
pub fn compact_timestamp(local_secs: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(local_secs.max(0) as u64);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}
