//! Bytes as base64 in JSON records (`#[serde(with = "crate::store::b64")]`):
//! the CRI configs are kept verbatim as protobuf.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serializer};

/// Serializes bytes as a base64 string.
pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
}

/// Deserializes a base64 string to bytes.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(serde::de::Error::custom)
}
