//! What is written to disk for a container: versioned, written atomically
//! (write to a temporary file, fsync, rename, fsync the directory).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cgroups::Cgroup;
use crate::config::{Config, NamespaceKind};
use crate::id::ContainerId;

/// The current on-disk format version.
pub const STATE_VERSION: u32 = 1;
/// File name of the state in the container's directory.
pub const STATE_FILE: &str = "state.json";
/// File name of the start socket (present while the container is `Created`).
pub const START_SOCKET: &str = "start.sock";

/// The persisted state of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Container id.
    pub id: ContainerId,
    /// The config it was created with.
    pub config: Config,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_nanos: u64,
    /// The init process, once started.
    #[serde(default)]
    pub init: Option<InitState>,
    /// The cgroup, once created.
    #[serde(default)]
    pub cgroup: Option<Cgroup>,
}

/// The container's init process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitState {
    /// Host pid.
    pub pid: i32,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22), to
    /// tell the process apart from a later one with the same pid.
    pub start_ticks: u64,
    /// When the user process was released to run, nanoseconds since the epoch.
    #[serde(default)]
    pub started_unix_nanos: Option<u64>,
    /// Restored from a checkpoint and held stopped (`SIGSTOP`) until
    /// [`crate::Container::release`] continues it.
    #[serde(default)]
    pub restored_stopped: bool,
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl State {
    /// Paths of the container's namespaces, by kind: `/proc/PID/ns/...` of the
    /// init for every namespace the container has (new or joined).
    pub fn namespace_paths(&self) -> BTreeMap<NamespaceKind, PathBuf> {
        let Some(init) = &self.init else {
            return BTreeMap::new();
        };
        self.config
            .namespaces
            .iter()
            .map(|ns| {
                (
                    ns.kind,
                    PathBuf::from(format!("/proc/{}/ns/{}", init.pid, ns.kind.proc_name())),
                )
            })
            .collect()
    }

    /// Writes the state atomically into `dir`.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(".state.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dir.join(STATE_FILE))?;
        File::open(dir)?.sync_all()
    }

    /// Reads the state from `dir`.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join(STATE_FILE);
        let bytes = fs::read(&path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        let state: State = serde_json::from_slice(&bytes).map_err(|e| LoadError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if state.version != STATE_VERSION {
            return Err(LoadError::Corrupt {
                path,
                reason: format!("unsupported state version {}", state.version),
            });
        }
        Ok(state)
    }
}

/// Reading a state failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("read {path}")]
    Io {
        /// File.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("state file {path} is corrupt: {reason}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let d = tempfile::tempdir().unwrap();
        let s = State {
            version: STATE_VERSION,
            id: ContainerId::new("c1").unwrap(),
            config: Config::new("/rootfs"),
            created_unix_nanos: 5,
            init: Some(InitState {
                pid: 42,
                start_ticks: 7,
                started_unix_nanos: None,
                restored_stopped: false,
            }),
            cgroup: None,
        };
        s.save(d.path()).unwrap();
        assert_eq!(State::load(d.path()).unwrap(), s);
        assert_eq!(
            s.namespace_paths()[&NamespaceKind::Network],
            PathBuf::from("/proc/42/ns/net")
        );
        let mut v = serde_json::to_value(&s).unwrap();
        v["version"] = 99.into();
        fs::write(d.path().join(STATE_FILE), v.to_string()).unwrap();
        assert!(matches!(
            State::load(d.path()),
            Err(LoadError::Corrupt { .. })
        ));
        fs::write(d.path().join(STATE_FILE), "{").unwrap();
        assert!(matches!(
            State::load(d.path()),
            Err(LoadError::Corrupt { .. })
        ));
    }
}
