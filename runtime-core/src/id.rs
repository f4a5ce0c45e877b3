//! Validated container identifiers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest identifier accepted (runc and containerd accept up to 1024, but an id
/// becomes a directory name and part of socket paths, so keep it short).
pub const MAX_ID_LEN: usize = 128;

/// Why an identifier was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The identifier is empty.
    #[error("container id is empty")]
    Empty,
    /// The identifier is longer than [`MAX_ID_LEN`].
    #[error("container id is {len} bytes long, more than the {MAX_ID_LEN} allowed")]
    TooLong {
        /// Length of the refused id.
        len: usize,
    },
    /// The identifier contains a character outside `[A-Za-z0-9_.+-]`, or is `.`/`..`.
    #[error("container id {id:?} may only contain letters, digits, '_', '.', '+' and '-', and may not be '.' or '..'")]
    BadCharacter {
        /// The refused id.
        id: String,
    },
}

/// A container identifier that is safe to use as a single path component.
///
/// It can never contain `/`, be `.` or `..`, or be empty, so a state
/// directory built from it cannot escape the state root.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerId(String);

impl ContainerId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(IdError::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(IdError::TooLong { len: id.len() });
        }
        let ok_chars = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'));
        if !ok_chars || id == "." || id == ".." {
            return Err(IdError::BadCharacter { id });
        }
        Ok(Self(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ContainerId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl From<ContainerId> for String {
    fn from(id: ContainerId) -> String {
        id.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["a", "abc-123", "pod_1.x+y", &"a".repeat(MAX_ID_LEN)] {
            assert_eq!(ContainerId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn refuses_escaping_or_odd_ids() {
        assert_eq!(ContainerId::new(""), Err(IdError::Empty));
        for id in ["..", ".", "a/b", "/", "a b", "a\0b", "é", "../x"] {
            assert!(
                matches!(ContainerId::new(id), Err(IdError::BadCharacter { .. })),
                "{id:?}"
            );
        }
        assert_eq!(
            ContainerId::new("a".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong {
                len: MAX_ID_LEN + 1
            })
        );
    }

    #[test]
    fn deserialization_validates() {
        assert!(serde_json::from_str::<ContainerId>("\"../etc\"").is_err());
        assert!(serde_json::from_str::<ContainerId>("\"ok\"").is_ok());
    }
}
