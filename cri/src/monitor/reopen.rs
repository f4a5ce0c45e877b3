//! Daemon side: find a running monitor again and ask it to reopen its log.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use berth_core::process::start_ticks;

use super::{spec_path, MonitorError, MonitorSpec, DETACHED_ARG, ID_FILE, MONITOR_ARG};

/// How long [`reopen_log`] waits for the monitor to have the new file open.
const REOPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `monitor_pid` is the monitor of `dir`, still running. Use it to
/// re-attach after a daemon restart; a pid reused by another process, or
/// the zombie of an exited monitor, is not it.
///
/// The monitor records its pid and start time (in clock ticks since boot,
/// `/proc/<pid>/stat` field 22) in `<dir>/monitor.id` before it reports;
/// the pair names one process for the whole uptime. Monitors forked by the
/// [zygote](super::Zygote) share the zygote's command line, so that is the
/// check. Monitors started by a berth without the file are recognised by
/// their command line, `<exe> __berth_monitor <dir>/monitor.json detached`.
pub fn is_running(monitor_pid: i32, dir: &Path) -> bool {
    if monitor_pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(dir.join(ID_FILE)) {
        Ok(id) => parse_id(&id)
            .is_some_and(|(pid, start)| pid == monitor_pid && start_ticks(pid) == Some(start)),
        Err(_) => spec_path(dir).is_ok_and(|spec| is_monitor_of(monitor_pid, &spec)),
    }
}

/// `"<pid> <start ticks>"`.
fn parse_id(text: &str) -> Option<(i32, u64)> {
    let mut f = text.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// The identity line of this process (written by the monitor).
pub(super) fn own_id() -> Option<String> {
    let pid = std::process::id() as i32;
    Some(format!("{pid} {}\n", start_ticks(pid)?))
}

fn is_monitor_of(pid: i32, spec: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.len() >= 4
        && args[1] == MONITOR_ARG.as_bytes()
        && args[2] == spec.as_os_str().as_encoded_bytes()
        && args[3] == DETACHED_ARG.as_bytes()
}

/// Asks the monitor to reopen the container's log file (CRI
/// `ReopenContainerLog`, after kubelet renamed the file): sends it `SIGUSR1`
/// once it is checked to be the monitor of `dir`, and returns when the
/// monitor has the file now at the spec's `log_path` open — at once if the
/// file was not renamed.
///
/// Errors: [`MonitorError::NotRunning`] when the monitor has exited (the
/// container has), [`MonitorError::ReopenTimeout`] when it could not open the
/// file (its `monitor.log` says why; it keeps writing to the old one).
pub fn reopen_log(monitor_pid: i32, dir: &Path) -> Result<(), MonitorError> {
    let spec_file = spec_path(dir).map_err(|source| MonitorError::ReadSpec {
        path: dir.to_path_buf(),
        source,
    })?;
    let not_running = || MonitorError::NotRunning {
        pid: monitor_pid,
        dir: dir.to_path_buf(),
    };
    if !is_running(monitor_pid, dir) {
        return Err(not_running());
    }
    let log_path = read_log_path(&spec_file)?;
    // The identity check and the signal are not atomic; a pid reused in
    // between is not a concern: pids are not reused that fast.
    match kill(Pid::from_raw(monitor_pid), Signal::SIGUSR1) {
        Ok(()) => {}
        Err(nix::Error::ESRCH) => return Err(not_running()),
        Err(source) => {
            return Err(MonitorError::Sys {
                step: "signal the monitor",
                source,
            })
        }
    }
    let Some(log_path) = log_path else {
        return Ok(()); // Output is discarded: nothing to wait for.
    };
    let start = Instant::now();
    loop {
        if holds_file(monitor_pid, &log_path) {
            return Ok(());
        }
        if !is_running(monitor_pid, dir) {
            return Err(not_running());
        }
        if start.elapsed() > REOPEN_TIMEOUT {
            return Err(MonitorError::ReopenTimeout {
                pid: monitor_pid,
                path: log_path,
                waited: REOPEN_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_log_path(spec_file: &Path) -> Result<Option<PathBuf>, MonitorError> {
    let bytes = std::fs::read(spec_file).map_err(|source| MonitorError::ReadSpec {
        path: spec_file.to_path_buf(),
        source,
    })?;
    let spec: MonitorSpec = serde_json::from_slice(&bytes).map_err(|e| MonitorError::BadSpec {
        path: spec_file.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(spec.log_path)
}

/// Whether one of `pid`'s open files is the file now at `path` (same device
/// and inode): the reopen has happened.
fn holds_file(pid: i32, path: &Path) -> bool {
    let Ok(target) = std::fs::metadata(path) else {
        return false;
    };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        // metadata() follows the magic link to the open file itself.
        std::fs::metadata(fd.path())
            .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_not_a_monitor() {
        let d = tempfile::tempdir().unwrap();
        assert!(!is_running(std::process::id() as i32, d.path()));
        assert!(!is_running(0, d.path()));
        assert!(!is_running(-1, d.path()));
        assert!(matches!(
            reopen_log(std::process::id() as i32, d.path()),
            Err(MonitorError::NotRunning { .. })
        ));
    }

    #[test]
    fn holds_file_sees_our_open_files() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        let f = std::fs::File::create(&path).unwrap();
        let me = std::process::id() as i32;
        assert!(holds_file(me, &path));
        drop(f);
        assert!(!holds_file(me, &path));
        assert!(!holds_file(me, &d.path().join("missing")));
    }

    #[test]
    fn the_identity_file_names_one_live_process() {
        let d = tempfile::tempdir().unwrap();
        let me = std::process::id() as i32;
        std::fs::write(d.path().join(ID_FILE), own_id().unwrap()).unwrap();
        assert!(is_running(me, d.path()));
        assert!(!is_running(me + 1, d.path()), "another pid");
        let start = start_ticks(me).unwrap();
        std::fs::write(d.path().join(ID_FILE), format!("{me} {}\n", start + 1)).unwrap();
        assert!(!is_running(me, d.path()), "same pid, another start: reused");
        assert_eq!(parse_id("12 34\n"), Some((12, 34)));
        assert_eq!(parse_id("12"), None);
    }
}
