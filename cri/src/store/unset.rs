//! An optional time in a JSON record (`#[serde(with = "crate::store::unset")]`):
//! `None` is written as 0, the "not yet" records have always used, so a
//! record stays readable by the daemon that wrote it before and after an
//! upgrade; 0 (or a negative number) reads as `None`.

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `None` as 0.
pub fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(v.unwrap_or(0))
}

/// Reads 0 (or less) as `None`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Some(i64::deserialize(d)?).filter(|t| *t > 0))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "super")]
        at: Option<i64>,
    }

    #[test]
    fn none_is_zero_both_ways() {
        assert_eq!(
            serde_json::to_string(&T { at: None }).unwrap(),
            r#"{"at":0}"#
        );
        assert_eq!(
            serde_json::to_string(&T { at: Some(5) }).unwrap(),
            r#"{"at":5}"#
        );
        let t: T = serde_json::from_str(r#"{"at":0}"#).unwrap();
        assert_eq!(t.at, None);
        let t: T = serde_json::from_str(r#"{"at":7}"#).unwrap();
        assert_eq!(t.at, Some(7));
    }
}
