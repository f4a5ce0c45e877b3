//! Daemon side: start a monitor and wait for its readiness report.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;

use berth_core::ipc::{Channel, ChannelError};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{spec_path, MonitorError, MonitorSpec, Spawned, LOG_FILE, MONITOR_ARG};

/// What the monitor sends on its stdout (a [`report_channel`], over
/// [`berth_core::ipc`]) once the container is `Created`, or when it gave up.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Report {
    /// `{"created":{"init":PID,"monitor":PID}}`: the init waits for release.
    Created {
        /// The init's pid.
        init: i32,
        /// The detached monitor's pid.
        monitor: i32,
    },
    /// `{"error":"..."}`: nothing is left of the container.
    Error(String),
    /// `{"pod_init":PID}`: a pod's pid namespace init runs (zygote only).
    PodInit(i32),
    /// `{"holder":PID}`: a process holds a pod's new user, network, IPC and
    /// UTS namespaces for the daemon to map and pin (zygote only).
    Holder(i32),
}

/// How much of `monitor.log` goes into [`MonitorError::NoReport`].
const LOG_TAIL: u64 = 2048;

/// Starts the monitor of one container: writes `spec` atomically to
/// `<dir>/monitor.json` (creating `dir`), runs
/// `exe __berth_monitor <dir>/monitor.json` with stdin on `/dev/null`,
/// stderr appended to `<dir>/monitor.log` and an empty environment, and
/// waits for its report.
///
/// Returns once the container is `Created` (its init waits for
/// [`Container::release`](berth_core::Container::release)), or with the
/// monitor's error ([`MonitorError::Create`]); in that case the monitor has
/// already destroyed whatever it had created and exited.
///
/// The monitor detaches (its first stage exits at once and is reaped here;
/// the real monitor runs in its own session, reparented away from the
/// caller), so the caller never waits for it later. Blocking: call it from a
/// thread that may block for as long as creating a container takes.
///
/// `exe` is a binary whose `main` calls [`berth_core::init::run_if_requested`]
/// and then [`run_from_args`](super::run_from_args): it also becomes the
/// container's init binary.
pub fn spawn(exe: &Path, dir: &Path, spec: &MonitorSpec) -> Result<Spawned, MonitorError> {
    let files = prepare(dir, spec)?;
    let spawn_err = |source| MonitorError::Spawn {
        exe: exe.to_path_buf(),
        source,
    };
    // The report comes on the monitor's stdout: one end of our channel.
    let (ours, theirs) = report_channel()?;
    let mut child = Command::new(exe)
        .arg(MONITOR_ARG)
        .arg(&files.spec)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(theirs))
        .stderr(files.log)
        .spawn()
        .map_err(spawn_err)?;
    // The first stage only starts the detached monitor and exits.
    let status = child.wait().map_err(spawn_err)?;
    read_report(&ours, &status.to_string(), &files.log_path)
}

/// What [`prepare`] made for a monitor.
pub(super) struct Files {
    /// `<dir>/monitor.json`, absolute.
    pub spec: PathBuf,
    /// `<dir>/monitor.log`, open for appending: the monitor's stderr.
    pub log: std::fs::File,
    /// Its path.
    pub log_path: PathBuf,
}

/// Creates `dir`, writes the spec atomically and opens the monitor's log.
pub(super) fn prepare(dir: &Path, spec: &MonitorSpec) -> Result<Files, MonitorError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MonitorError::WriteSpec { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let spec_file = spec_path(dir).map_err(write_err(dir))?;
    let json = serde_json::to_vec_pretty(spec).map_err(|e| write_err(&spec_file)(e.into()))?;
    super::write_private(&spec_file, &json).map_err(write_err(&spec_file))?;
    let log_path = dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log_path)
        .map_err(write_err(&log_path))?;
    Ok(Files {
        spec: spec_file,
        log,
        log_path,
    })
}

/// Reads the monitor's one-line report from `out` (EOF without one: the
/// monitor died; `how` says how its starter ended, the log says why).
pub(super) fn read_report(
    out: &Channel,
    how: &str,
    log_path: &Path,
) -> Result<Spawned, MonitorError> {
    match parse_report(out, how, log_path)? {
        Report::Created { init, monitor } if init > 0 && monitor > 0 => Ok(Spawned {
            monitor_pid: monitor,
            init_pid: init,
        }),
        Report::Error(message) => Err(MonitorError::Create(message)),
        other => Err(MonitorError::BadReport(format!("{other:?}"))),
    }
}

/// Reads the one report (see [`read_report`]); the other end closed
/// without one: the monitor died.
pub(super) fn parse_report(
    out: &Channel,
    how: &str,
    log_path: &Path,
) -> Result<Report, MonitorError> {
    match out.recv::<Report>() {
        Ok((r, _)) => Ok(r),
        Err(ChannelError::Decode(e)) => Err(MonitorError::BadReport(e)),
        Err(_) => Err(MonitorError::NoReport {
            status: how.to_string(),
            log: log_tail(log_path),
        }),
    }
}

/// The channel a report comes on: ours, and the end for the reporting
/// process (its stdout, or a descriptor passed to the zygote).
pub(super) fn report_channel() -> Result<(Channel, OwnedFd), MonitorError> {
    Channel::pair().map_err(MonitorError::ReportChannel)
}

/// Sends `report` on `fd`, one end of a [`report_channel`].
pub(super) fn send_report(fd: OwnedFd, report: &Report) -> std::io::Result<()> {
    Channel::from_fd(fd)
        .send(report, &[])
        .map_err(std::io::Error::other)
}

/// The last lines of the monitor's log, for an error message.
fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).trim().to_string())
    };
    match read() {
        Ok(s) if s.is_empty() => "(empty)".into(),
        Ok(s) => s,
        Err(e) => format!("({}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_wire_format() {
        let created = Report::Created {
            init: 12,
            monitor: 34,
        };
        assert_eq!(
            serde_json::to_string(&created).unwrap(),
            r#"{"created":{"init":12,"monitor":34}}"#
        );
        assert_eq!(
            serde_json::to_string(&Report::Error("boom".into())).unwrap(),
            r#"{"error":"boom"}"#
        );
    }

    #[test]
    fn a_binary_that_does_not_report_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let spec = MonitorSpec {
            version: super::super::VERSION,
            container_id: "c".into(),
            state_root: d.path().join("state"),
            cgroup_root: None,
            config: berth_core::Config::new("/nonexistent"),
            process: berth_core::Process::new(["true"]).spec,
            log_path: None,
            max_log_line: None,
            exit_file: d.path().join("exit.json"),
            sealed_init: None,
            stdin: false,
            stdin_once: false,
            restore: None,
            oci: None,
            shim: None,
        };
        let dir = d.path().join("m");
        // `true` ignores its arguments and prints nothing.
        let err = spawn(Path::new("/bin/true"), &dir, &spec).unwrap_err();
        assert!(matches!(err, MonitorError::NoReport { .. }), "{err:?}");
        assert!(dir.join("monitor.json").exists());
        let err = spawn(&d.path().join("missing"), &dir, &spec).unwrap_err();
        assert!(matches!(err, MonitorError::Spawn { .. }), "{err:?}");
    }
}
