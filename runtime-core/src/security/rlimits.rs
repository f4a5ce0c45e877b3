//! Resource limits (`setrlimit`).

use serde::{Deserialize, Serialize};

/// Which resource.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RlimitKind {
    RlimitAs,
    RlimitCore,
    RlimitCpu,
    RlimitData,
    RlimitFsize,
    RlimitLocks,
    RlimitMemlock,
    RlimitMsgqueue,
    RlimitNice,
    RlimitNofile,
    RlimitNproc,
    RlimitRss,
    RlimitRtprio,
    RlimitRttime,
    RlimitSigpending,
    RlimitStack,
}

impl RlimitKind {
    /// The `RLIMIT_*` resource number.
    pub fn resource(self) -> libc::__rlimit_resource_t {
        use RlimitKind::*;
        match self {
            RlimitAs => libc::RLIMIT_AS,
            RlimitCore => libc::RLIMIT_CORE,
            RlimitCpu => libc::RLIMIT_CPU,
            RlimitData => libc::RLIMIT_DATA,
            RlimitFsize => libc::RLIMIT_FSIZE,
            RlimitLocks => libc::RLIMIT_LOCKS,
            RlimitMemlock => libc::RLIMIT_MEMLOCK,
            RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
            RlimitNice => libc::RLIMIT_NICE,
            RlimitNofile => libc::RLIMIT_NOFILE,
            RlimitNproc => libc::RLIMIT_NPROC,
            RlimitRss => libc::RLIMIT_RSS,
            RlimitRtprio => libc::RLIMIT_RTPRIO,
            RlimitRttime => libc::RLIMIT_RTTIME,
            RlimitSigpending => libc::RLIMIT_SIGPENDING,
            RlimitStack => libc::RLIMIT_STACK,
        }
    }

    /// Parses `RLIMIT_NOFILE` or `nofile`.
    pub fn parse(name: &str) -> Option<Self> {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("RLIMIT_") {
            upper
        } else {
            format!("RLIMIT_{upper}")
        };
        serde_json::from_value(serde_json::Value::String(full)).ok()
    }
}

/// One resource limit. `u64::MAX` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Resource.
    #[serde(rename = "type")]
    pub kind: RlimitKind,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Applying a limit failed.
#[derive(Debug, thiserror::Error)]
#[error("set {kind:?} to soft {soft} hard {hard}{hint}")]
pub struct RlimitError {
    /// Resource.
    pub kind: RlimitKind,
    /// Requested soft limit.
    pub soft: u64,
    /// Requested hard limit.
    pub hard: u64,
    /// Extra explanation.
    pub hint: &'static str,
    /// The kernel's error.
    #[source]
    pub source: nix::Error,
}

/// Applies `limits` to the calling process.
pub(crate) fn apply(limits: &[Rlimit]) -> Result<(), RlimitError> {
    for l in limits {
        crate::sys::setrlimit(l.kind.resource(), l.soft, l.hard).map_err(|source| RlimitError {
            kind: l.kind,
            soft: l.soft,
            hard: l.hard,
            hint: if source == nix::Error::EPERM {
                ": raising a hard limit needs CAP_SYS_RESOURCE, which this process lacks"
            } else {
                ""
            },
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names() {
        assert_eq!(
            RlimitKind::parse("RLIMIT_NOFILE"),
            Some(RlimitKind::RlimitNofile)
        );
        assert_eq!(RlimitKind::parse("nofile"), Some(RlimitKind::RlimitNofile));
        assert_eq!(RlimitKind::parse("bogus"), None);
        let r: Rlimit =
            serde_json::from_str(r#"{"type":"RLIMIT_NOFILE","soft":1025,"hard":1025}"#).unwrap();
        assert_eq!(r.kind, RlimitKind::RlimitNofile);
    }
}
