//! The exit record: built by the monitor when the init has exited, written
//! atomically, read by the daemon (now or after a restart).

use std::path::Path;

use berth_core::ExitStatus;

use super::{now_nanos, ExitRecord, MonitorError, VERSION};

/// Reads the [`ExitRecord`] at `exit_file`: `None` while the container has
/// not exited (no file yet), or if the file is not a record of this version.
///
/// The monitor writes the file atomically, so a present file is complete.
pub fn read_exit(exit_file: &Path) -> Option<ExitRecord> {
    let bytes = std::fs::read(exit_file).ok()?;
    let record: ExitRecord = serde_json::from_slice(&bytes).ok()?;
    (record.version == VERSION).then_some(record)
}

/// The record for an init that ended with `status`.
///
/// `started_at` is what `release` recorded (the monitor released it, so it
/// knows first-hand); `oom_killed` comes from the container cgroup's memory
/// events, which last until the daemon removes the container.
pub(super) fn record(
    owner: &super::owner::Owner,
    status: ExitStatus,
    message: String,
) -> ExitRecord {
    let finished_at = now_nanos();
    let started_at = owner
        .started_at()
        .map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX))
        // `release` stamps the time after the exec, so a process that exits
        // at once can seem to end before it started.
        .min(finished_at);
    let oom_killed = owner.oom_killed();
    let signal = match status {
        ExitStatus::Signaled(sig) => Some(sig),
        ExitStatus::Exited(_) => None,
    };
    ExitRecord {
        version: VERSION,
        exit_code: status.code(),
        signal,
        started_at,
        finished_at,
        oom_killed,
        reason: reason(status, oom_killed).to_string(),
        message,
    }
}

/// CRI's reasons, as containerd sets them.
fn reason(status: ExitStatus, oom_killed: bool) -> &'static str {
    if oom_killed {
        "OOMKilled"
    } else if status.success() {
        "Completed"
    } else {
        "Error"
    }
}

/// Whether a process of the cgroup whose directories are `dirs` was
/// OOM-killed: the `oom_kill` counter of `memory.events` (v2) or
/// `memory.oom_control` (v1, kernel ≥ 4.13).
pub(super) fn oom_killed_in(dirs: &[std::path::PathBuf]) -> bool {
    dirs.iter().any(|dir| {
        ["memory.events", "memory.oom_control"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .any(|text| oom_kill_count(&text) > 0)
    })
}

/// The `oom_kill N` line of a memory events file; 0 when absent.
fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes `record` to `path` atomically (0600), not fsynced: the record is
/// for a daemon that restarts while the node runs (the page cache has it);
/// it lives in the volatile state directory, and a power loss ends every
/// container anyway (a record it cut short reads as none: the container is
/// reported lost). That keeps two disk flushes off StopContainer's path
/// where the state directory is not a tmpfs.
pub(super) fn write(path: &Path, record: &ExitRecord) -> Result<(), MonitorError> {
    let err = |source| MonitorError::WriteExit {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| err(e.into()))?;
    crate::store::write_with(path, &bytes, 0o600, crate::store::Durability::Atomic).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(reason(ExitStatus::Exited(0), false), "Completed");
        assert_eq!(reason(ExitStatus::Exited(3), false), "Error");
        assert_eq!(reason(ExitStatus::Signaled(9), false), "Error");
        assert_eq!(reason(ExitStatus::Signaled(9), true), "OOMKilled");
        assert_eq!(reason(ExitStatus::Exited(0), true), "OOMKilled");
    }

    #[test]
    fn oom_kill_counter() {
        let v2 = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kill_count(v2), 1);
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n";
        assert_eq!(oom_kill_count(v1), 0);
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }

    #[test]
    fn write_then_read() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("exit.json");
        assert_eq!(read_exit(&path), None);
        let r = ExitRecord {
            version: VERSION,
            exit_code: 137,
            signal: Some(9),
            started_at: 1,
            finished_at: 2,
            oom_killed: false,
            reason: "Error".into(),
            message: String::new(),
        };
        write(&path, &r).unwrap();
        assert_eq!(read_exit(&path), Some(r.clone()));
        let mut other = serde_json::to_value(&r).unwrap();
        other["version"] = 2.into();
        std::fs::write(&path, other.to_string()).unwrap();
        assert_eq!(read_exit(&path), None, "another version is not ours");
    }
}
