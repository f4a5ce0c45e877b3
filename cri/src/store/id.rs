//! Pod sandbox and container ids: 64 lower-case hex digits, as kubelet sees
//! from containerd and CRI-O. Only berth makes them, so one that could name
//! a path outside berth's directories never exists.

use std::fmt;
use std::io::Read;

use serde::{Deserialize, Serialize};

/// Why a string is not an id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a berth id (64 lower-case hex digits)")]
pub struct ObjectIdError(pub String);

/// A validated id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectId(String);

impl ObjectId {
    /// A fresh random id (256 bits from the kernel's CSPRNG).
    pub fn random() -> std::io::Result<ObjectId> {
        let mut b = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        Ok(ObjectId(hex::encode(b)))
    }

    /// Validates a full id.
    pub fn parse(s: &str) -> Result<ObjectId, ObjectIdError> {
        if is_hex_prefix(s) && s.len() == 64 {
            Ok(ObjectId(s.to_string()))
        } else {
            Err(ObjectIdError(s.to_string()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `s` could be the start of an id (what `crictl` and kubelet may
/// pass: a full id or a unique prefix).
pub fn is_hex_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.0[..12.min(self.0.len())])
    }
}

impl TryFrom<String> for ObjectId {
    type Error = ObjectIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ObjectId::parse(&s)
    }
}

impl From<ObjectId> for String {
    fn from(id: ObjectId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let a = ObjectId::random().unwrap();
        assert_eq!(a.as_str().len(), 64);
        assert_ne!(a, ObjectId::random().unwrap());
        assert_eq!(ObjectId::parse(a.as_str()).unwrap(), a);
        for bad in [
            "",
            "../x",
            &"A".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
        ] {
            assert!(ObjectId::parse(bad).is_err(), "{bad}");
        }
        assert!(is_hex_prefix("abc") && !is_hex_prefix("ab/c") && !is_hex_prefix(""));
    }
}
