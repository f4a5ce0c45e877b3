//! `ExecSync`: run a command in a running container and return its exit
//! code and output, bounded in size and, with a timeout, in time.
//!
//! The command gets the container's own environment, working directory and
//! user (from its monitor spec); runtime-core's `exec` joins the init's
//! namespaces and cgroup. The exec'd process is this daemon's child (as
//! runtime-core documents): it is always reaped here, so the container's
//! pid namespace can end when its init does.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::container::{ContainerRecord, ContainerState, Containers};
use super::error::RuntimeError;
use crate::monitor::{MonitorSpec, SPEC_FILE};
use crate::proto;
use crate::task::{ExecProcess, ExecStdio};

/// Output kept per stream; the rest is read and dropped (kubelet probes
/// need little; an unbounded buffer would let a container fill the
/// daemon's memory). containerd caps exec output at 16 MiB too.
pub const MAX_OUTPUT: usize = 16 << 20;

/// Runs the exec (blocking). The caller holds the container's lock only
/// while reading the record, not while the command runs.
pub(super) fn exec_sync(
    containers: &Containers,
    rec: &ContainerRecord,
    cmd: Vec<String>,
    timeout: i64,
) -> Result<proto::ExecSyncResponse, RuntimeError> {
    let spec = process_spec(rec, cmd)?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let stdio = ExecStdio {
        stdin: None,
        stdout: Some(out_w),
        stderr: Some(err_w),
    };
    // The container's monitor runs it (and reaps it: it is the monitor's
    // child, so the container's pid namespace can end with its init).
    let handle = containers
        .task(rec)
        .exec(&spec, stdio)
        .map_err(RuntimeError::task(&rec.id))?;
    let deadline =
        (timeout > 0).then(|| crate::util::deadline_after(Duration::from_secs(timeout as u64)));
    let (stdout, stderr, timed_out) = collect(&*handle, out_r, err_r, deadline);
    if timed_out {
        let _ = handle.signal(nix::sys::signal::Signal::SIGKILL as i32);
    }
    let status = handle
        .wait(Some(Duration::from_secs(30)))
        .map_err(RuntimeError::task(&rec.id))?
        .ok_or_else(|| RuntimeError::Internal("the exec did not end after SIGKILL".into()))?;
    if timed_out {
        return Err(RuntimeError::DeadlineExceeded(format!(
            "command did not finish within the {timeout}s timeout"
        )));
    }
    Ok(proto::ExecSyncResponse {
        stdout,
        stderr,
        exit_code: status.exit_code,
    })
}

/// The longest argument `execve` takes (the kernel's `MAX_ARG_STRLEN`,
/// 32 pages, counts the terminating NUL).
const MAX_ARG_LEN: usize = 128 * 1024 - 1;

/// The most bytes of command line an Exec or ExecSync may carry: `execve`'s
/// limit for arguments and environment together (a quarter of the stack
/// limit) with the usual 8 MiB stack. A larger command could never run,
/// but an Exec would hold it until its URL expires.
const MAX_CMD_BYTES: usize = 2 << 20;

/// A command that `execve` could take: not empty, no argument longer than
/// the kernel allows, not larger than [`MAX_CMD_BYTES`] in all.
fn check_cmd(cmd: &[String]) -> Result<(), RuntimeError> {
    if cmd.is_empty() {
        return Err(RuntimeError::invalid("cmd", "must not be empty"));
    }
    if cmd[0].is_empty() {
        return Err(RuntimeError::invalid(
            "cmd[0]",
            "the program must not be empty",
        ));
    }
    if let Some(i) = cmd.iter().position(|a| a.contains('\0')) {
        return Err(RuntimeError::invalid(
            format!("cmd[{i}]"),
            "contains a NUL byte, which execve cannot pass",
        ));
    }
    if let Some((i, a)) = cmd.iter().enumerate().find(|(_, a)| a.len() > MAX_ARG_LEN) {
        return Err(RuntimeError::invalid(
            format!("cmd[{i}]"),
            format!(
                "{} bytes; the kernel takes arguments of at most {MAX_ARG_LEN}",
                a.len()
            ),
        ));
    }
    let total: usize = cmd.iter().map(|a| a.len() + 1).sum();
    if total > MAX_CMD_BYTES {
        return Err(RuntimeError::invalid(
            "cmd",
            format!("{total} bytes of arguments; at most {MAX_CMD_BYTES} are accepted"),
        ));
    }
    Ok(())
}

/// The spec of a process `cmd` joining running container `rec`: its
/// environment, working directory and user are the container's own (as
/// containerd and CRI-O exec).
pub(super) fn process_spec(
    rec: &ContainerRecord,
    cmd: Vec<String>,
) -> Result<berth_core::process::ProcessSpec, RuntimeError> {
    check_cmd(&cmd)?;
    RuntimeError::require(rec, ContainerState::Running, "exec needs it running")?;
    let spec_path = rec.dir.join(SPEC_FILE);
    let spec: MonitorSpec = std::fs::read(&spec_path)
        .map_err(|e| RuntimeError::io(&spec_path, e))
        .and_then(|b| {
            serde_json::from_slice(&b)
                .map_err(|e| RuntimeError::Internal(format!("{}: {e}", spec_path.display())))
        })?;
    let mut process = berth_core::Process::new(cmd);
    process.spec.env = spec.process.env;
    process.spec.cwd = spec.process.cwd;
    process.spec.user = spec.process.user;
    Ok(process.spec)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::Internal(format!("pipe: {e}")))
}

/// Reads both pipes until they close or the process is gone (a background
/// child may keep them open), or until the deadline.
fn collect(
    handle: &dyn ExecProcess,
    out: OwnedFd,
    err: OwnedFd,
    deadline: Option<Instant>,
) -> (Vec<u8>, Vec<u8>, bool) {
    let mut bufs = [Vec::new(), Vec::new()];
    let mut files = [
        Some(std::fs::File::from(out)),
        Some(std::fs::File::from(err)),
    ];
    let mut exited_at: Option<Instant> = None;
    loop {
        if files.iter().all(Option::is_none) {
            return (
                std::mem::take(&mut bufs[0]),
                std::mem::take(&mut bufs[1]),
                false,
            );
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return (
                std::mem::take(&mut bufs[0]),
                std::mem::take(&mut bufs[1]),
                true,
            );
        }
        // After the process exited, give grandchildren's output 100 ms.
        if exited_at.is_some_and(|t| now.duration_since(t) > Duration::from_millis(100)) {
            return (
                std::mem::take(&mut bufs[0]),
                std::mem::take(&mut bufs[1]),
                false,
            );
        }
        let wait_ms = deadline
            .map(|d| d.saturating_duration_since(now).as_millis().min(100) as u16)
            .unwrap_or(100);
        let mut fds: Vec<PollFd> = Vec::new();
        let mut which = Vec::new();
        for (i, f) in files.iter().enumerate() {
            if let Some(f) = f {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                which.push(i);
            }
        }
        fds.push(PollFd::new(handle.exit_fd(), PollFlags::POLLIN));
        if nix::poll::poll(&mut fds, PollTimeout::from(wait_ms)).is_err() {
            continue;
        }
        let pid_ready = fds
            .last()
            .and_then(|f| f.revents())
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        let ready: Vec<usize> = fds[..which.len()]
            .iter()
            .zip(&which)
            .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, i)| *i)
            .collect();
        drop(fds);
        if pid_ready && exited_at.is_none() {
            exited_at = Some(Instant::now());
        }
        for i in ready {
            let mut chunk = [0u8; 64 * 1024];
            let n = files[i]
                .as_mut()
                .map(|f| f.read(&mut chunk))
                .unwrap_or(Ok(0));
            match n {
                Ok(0) | Err(_) => files[i] = None,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(bufs[i].len());
                    bufs[i].extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_execve_could_not_take_are_refused() {
        let ok = |cmd: Vec<String>| check_cmd(&cmd).is_ok();
        assert!(!ok(vec![]));
        assert!(!ok(vec!["".into(), "x".into()]), "no program");
        let err = check_cmd(&["sh".into(), "a\0b".into()]).unwrap_err();
        assert!(err.to_string().starts_with("cmd[1]: "), "{err}");
        assert!(ok(vec!["sh".into(), "-c".into(), "true".into()]));
        assert!(ok(vec!["x".repeat(MAX_ARG_LEN)]));
        let err = check_cmd(&["a".into(), "x".repeat(MAX_ARG_LEN + 1)]).unwrap_err();
        assert!(err.to_string().starts_with("cmd[1]: "), "{err}");
        // 16 arguments of 127 KiB: each fine, 2 MiB in all is too much.
        let many = vec!["x".repeat(127 * 1024); 17];
        let err = check_cmd(&many).unwrap_err();
        assert!(err.to_string().contains("at most 2097152"), "{err}");
        assert!(ok(vec!["x".repeat(127 * 1024); 16]));
    }
}
