//! Running CRIU: its command line (the options every run shares, the
//! cgroup roots), one run to its end or its timeout — dying with its caller
//! — and the errors of its log.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::checkpoint::CriuOptions;
use super::ContainerError;

/// `--cgroup-root` for each hierarchy of the new cgroup: the dumped
/// container's cgroup maps onto it, so the tasks land there and their cgroup
/// namespace is rooted there. Only the controllers the container has: the
/// others (v1 named hierarchies) keep the dumped paths, which `soft` mode
/// finds existing rather than creating anything berth did not.
pub(super) fn cgroup_root_args(cgroup: Option<&crate::cgroups::Cgroup>) -> Vec<String> {
    let Some(cg) = cgroup else {
        return Vec::new();
    };
    let rel = format!("/{}", cg.path.display());
    match cg.version {
        crate::cgroups::Version::V2 => vec!["--cgroup-root".into(), rel],
        crate::cgroups::Version::V1 => cg
            .dirs
            .iter()
            .filter_map(|d| d.strip_prefix(&cg.root).ok()?.components().next())
            .flat_map(|ctrl| {
                [
                    "--cgroup-root".to_string(),
                    format!("{}:{rel}", ctrl.as_os_str().to_string_lossy()),
                ]
            })
            .collect(),
    }
}

/// Flags of both dump and restore.
pub(super) fn common_args(c: &CriuOptions) -> Vec<String> {
    let mut args = vec![
        "--images-dir".to_string(),
        c.images_dir.display().to_string(),
        "--work-dir".into(),
        c.work_dir.display().to_string(),
    ];
    if c.tcp_established {
        args.push("--tcp-established".into());
    }
    if c.file_locks {
        args.push("--file-locks".into());
    }
    if c.shell_job {
        args.push("--shell-job".into());
    }
    args
}

/// The search path CRIU gets when its caller has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(super) fn criu_command(c: &CriuOptions, args: &[String]) -> Command {
    let mut cmd = Command::new(&c.criu);
    // CRIU runs helpers by name (iptables-restore to lock the network for
    // established TCP connections): a caller started with an empty
    // environment (berth's monitors are) gives it the usual search path.
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs in the forked child before exec: prctl and getppid are
    // async-signal-safe system calls; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            // CRIU dies with its caller: a daemon killed mid-dump must not
            // leave a CRIU seizing (and writing about) the container while
            // the restarted daemon thaws it and removes the work directory.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd
}

/// Runs CRIU to the end or the timeout; a failure quotes the errors of its
/// log (`work_dir/log`).
pub(super) fn run_criu(
    mut cmd: Command,
    c: &CriuOptions,
    log: &str,
    step: &'static str,
) -> Result<(), ContainerError> {
    let log_path = c.work_dir.join(log);
    let mut child = cmd.spawn().map_err(|source| ContainerError::Criu {
        step,
        message: format!("run {}: {source}", c.criu.display()),
        log: log_path.clone(),
    })?;
    // A caller's timeout may be anything: one past what `Instant` holds is
    // no deadline (rather than an overflow panic).
    let deadline = c
        .timeout
        .and_then(|t| Instant::now().checked_add(t).map(|at| (at, t)));
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(source) => {
                return Err(ContainerError::Criu {
                    step,
                    message: format!("wait for criu: {source}"),
                    log: log_path,
                })
            }
        }
        if let Some((at, t)) = deadline {
            if Instant::now() >= at {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ContainerError::Timeout { step, after: t });
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let from_log = std::fs::read_to_string(&log_path)
        .map(|s| log_errors(&s))
        .unwrap_or_default();
    let message = if from_log.is_empty() {
        format!("criu {step} failed ({status}): {}", stderr.trim())
    } else {
        format!("criu {step} failed ({status}): {from_log}")
    };
    Err(ContainerError::Criu {
        step,
        message,
        log: log_path,
    })
}

/// Whether `c.criu` knows `feature` and finds it on this kernel (`criu
/// check --feature <feature>` exits 0). A criu that cannot be run has none.
pub(super) fn has_feature(c: &CriuOptions, feature: &str) -> bool {
    let mut cmd = Command::new(&c.criu);
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.args(["check", "--feature", feature])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The error lines of a CRIU log (`Error (file:line): ...`), the last few.
pub fn log_errors(log: &str) -> String {
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Error (") || l.contains("Error:"))
        .map(|l| l.split_once("Error").map_or(l, |(_, rest)| rest).trim())
        .collect();
    let tail = &errors[errors.len().saturating_sub(3)..];
    tail.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_errors_keeps_the_last_error_lines() {
        let log = "(00.001) Version: 4.1\n(00.002) Error (criu/mount.c:12): mnt: no such mount\n(00.003) ok\n(00.004) Error (criu/cr-restore.c:3): Restoring FAILED.\n";
        assert_eq!(
            log_errors(log),
            "(criu/mount.c:12): mnt: no such mount; (criu/cr-restore.c:3): Restoring FAILED."
        );
        assert_eq!(log_errors("all fine\n"), "");
    }

    #[test]
    fn a_feature_is_what_criu_check_says() {
        // Stand-ins for a criu whose check passes and one whose fails (the
        // arguments are the real criu's, tested end to end).
        let mut o = CriuOptions::new("/i", "/w");
        o.criu = "/bin/true".into();
        assert!(has_feature(&o, "join_userns"));
        o.criu = "/bin/false".into();
        assert!(!has_feature(&o, "join_userns"));
        o.criu = "/nonexistent/criu".into();
        assert!(!has_feature(&o, "join_userns"));
    }

    #[test]
    fn common_args_follow_the_options() {
        let mut o = CriuOptions::new("/i", "/w");
        let a = common_args(&o);
        assert_eq!(
            a,
            [
                "--images-dir",
                "/i",
                "--work-dir",
                "/w",
                "--tcp-established",
                "--file-locks"
            ]
        );
        o.tcp_established = false;
        o.file_locks = false;
        o.shell_job = true;
        assert_eq!(common_args(&o)[4..], ["--shell-job"]);
    }
}
