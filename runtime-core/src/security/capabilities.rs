//! Capability sets (bounding, effective, permitted, inheritable, ambient).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use caps::Capability;

use crate::sys;

/// A capability name that the runtime does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability {0:?}")]
pub struct UnknownCapability(pub String);

/// Why applying capabilities failed.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    /// Dropping from the bounding set failed.
    #[error("drop {cap} from the bounding set")]
    DropBounding {
        /// The capability.
        cap: String,
        /// The kernel's error.
        #[source]
        source: nix::Error,
    },
    /// `capset` failed.
    #[error("set effective/permitted/inheritable capabilities")]
    Capset(#[source] nix::Error),
    /// Raising an ambient capability failed.
    #[error("raise ambient capability {cap}")]
    Ambient {
        /// The capability.
        cap: String,
        /// The kernel's error.
        #[source]
        source: nix::Error,
    },
}

/// The five capability sets of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Bounding set: the limit of what the process and its children can ever gain.
    pub bounding: Vec<Capability>,
    /// Effective set.
    pub effective: Vec<Capability>,
    /// Permitted set.
    pub permitted: Vec<Capability>,
    /// Inheritable set.
    pub inheritable: Vec<Capability>,
    /// Ambient set (kept across exec of non-setuid programs by non-root users).
    pub ambient: Vec<Capability>,
}

/// The capabilities Docker, containerd and CRI-O grant by default.
pub(crate) const DEFAULT_CAPS: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

impl Capabilities {
    /// The default set of container runtimes in bounding, effective and
    /// permitted; nothing inheritable or ambient.
    pub fn default_set() -> Self {
        Self::uniform(DEFAULT_CAPS.to_vec())
    }

    /// No capabilities at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every capability known to the runtime in bounding, effective and
    /// permitted (a privileged container).
    pub fn all() -> Self {
        let mut all: Vec<Capability> = caps::all().into_iter().collect();
        all.sort_by_key(|c| c.index());
        Self::uniform(all)
    }

    /// Every capability this process holds (permitted and in its bounding
    /// set), in bounding, effective and permitted: what a privileged
    /// container gets, as containerd's `WithAllCurrentCapabilities` does.
    /// A capability the runtime lacks (say `CAP_SYS_RESOURCE` in a
    /// restricted VM or a user namespace) could not be granted anyway:
    /// asking for it would fail the container's `capset`.
    pub fn held() -> Self {
        let read = |set| caps::read(None, set).unwrap_or_default();
        let bounding = read(caps::CapSet::Bounding);
        let mut held: Vec<Capability> = read(caps::CapSet::Permitted)
            .into_iter()
            .filter(|c| bounding.contains(c))
            .collect();
        held.sort_by_key(|c| c.index());
        Self::uniform(held)
    }

    /// `set` in bounding, effective and permitted.
    pub fn uniform(set: Vec<Capability>) -> Self {
        Self {
            bounding: set.clone(),
            effective: set.clone(),
            permitted: set,
            inheritable: Vec::new(),
            ambient: Vec::new(),
        }
    }

    /// Parses capability names (`CAP_KILL` or `KILL`, any case).
    pub fn parse_names<S: AsRef<str>>(names: &[S]) -> Result<Vec<Capability>, UnknownCapability> {
        names.iter().map(|n| parse_name(n.as_ref())).collect()
    }
}

/// Parses one capability name (`CAP_KILL` or `KILL`, any case).
pub fn parse_name(name: &str) -> Result<Capability, UnknownCapability> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    Capability::from_str(&full).map_err(|_| UnknownCapability(name.to_string()))
}

pub(crate) fn mask(set: &[Capability]) -> u64 {
    set.iter().fold(0u64, |m, c| m | (1u64 << c.index()))
}

/// `mask(set)` limited to the capabilities the running kernel knows.
fn kernel_mask(set: &[Capability]) -> u64 {
    let last = sys::cap_last_cap();
    let known = if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    };
    mask(set) & known
}

/// Drops every capability not in `keep` from the bounding set (needs CAP_SETPCAP).
pub(crate) fn apply_bounding(keep: &[Capability]) -> Result<(), CapabilityError> {
    let keep = mask(keep);
    for index in 0..=sys::cap_last_cap() {
        if keep & (1u64 << index) == 0 {
            sys::capbset_drop(index).map_err(|source| CapabilityError::DropBounding {
                cap: format!("capability #{index}"),
                source,
            })?;
        }
    }
    Ok(())
}

/// Sets effective, permitted and inheritable in one `capset`, then the ambient set.
pub(crate) fn apply_process_sets(c: &Capabilities) -> Result<(), CapabilityError> {
    sys::capset(
        kernel_mask(&c.effective),
        kernel_mask(&c.permitted),
        kernel_mask(&c.inheritable),
    )
    .map_err(CapabilityError::Capset)?;
    sys::ambient_clear_all().map_err(|source| CapabilityError::Ambient {
        cap: "(clear all)".into(),
        source,
    })?;
    for cap in c
        .ambient
        .iter()
        .filter(|c| c.index() <= sys::cap_last_cap())
    {
        sys::ambient_raise(cap.index()).map_err(|source| CapabilityError::Ambient {
            cap: cap.to_string(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_in_any_form() {
        assert_eq!(parse_name("CAP_KILL").unwrap(), Capability::CAP_KILL);
        assert_eq!(parse_name("kill").unwrap(), Capability::CAP_KILL);
        assert_eq!(parse_name("Net_Admin").unwrap(), Capability::CAP_NET_ADMIN);
        assert!(parse_name("CAP_FLY").is_err());
    }

    #[test]
    fn masks() {
        assert_eq!(
            mask(&[Capability::CAP_CHOWN, Capability::CAP_KILL]),
            1 | (1 << 5)
        );
        assert_eq!(Capabilities::default_set().effective.len(), 14);
    }

    #[test]
    fn serializes_as_names() {
        let j = serde_json::to_string(&Capabilities::uniform(vec![Capability::CAP_KILL])).unwrap();
        assert!(j.contains("CAP_KILL"), "{j}");
        let back: Capabilities = serde_json::from_str(&j).unwrap();
        assert_eq!(back.bounding, vec![Capability::CAP_KILL]);
    }
}
