//! OCI lifecycle hooks (runtime spec, "POSIX-platform Hooks"): programs
//! run at fixed points of a container's life with the container's state
//! JSON on stdin.
//!
//! | point | run by, where | on failure |
//! |---|---|---|
//! | `prestart`, `createRuntime` | the runtime, in its namespaces, after the container's mounts, before `pivot_root` | create fails |
//! | `createContainer` | the init, in the container's namespaces, same moment (paths resolve on the host) | create fails |
//! | `startContainer` | the init, after start, before `execve` (paths resolve in the container) | start fails, the container stops |
//! | `poststart` | the runtime, after the process was started | logged |
//! | `poststop` | the runtime, when the container is destroyed | logged |
//!
//! Each hook runs with exactly its own `args` (the first is `argv[0]`) and
//! `env`, stdout and stderr captured (the last 4 KiB go into the error), and
//! a timeout: its own, or [`DEFAULT_TIMEOUT`] when it sets none (a hook that
//! never ends must not hold a container's creation forever). The hooks of a
//! point run one after another, in order; the first failure stops the rest.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

/// How long a hook without a `timeout` of its own may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// How much of a failed hook's output goes into the error.
const OUTPUT_KEPT: usize = 4096;

/// The OCI runtime spec version berth's state JSON follows.
pub const OCI_VERSION: &str = "1.2.0";

/// One hook: `config.json`'s `hooks.<point>[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// Absolute path of the program (on the host, or in the container for
    /// `startContainer`).
    pub path: PathBuf,
    /// Its arguments, `argv[0]` first (the path when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Its whole environment, `KEY=value` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Seconds before it is killed and counted as failed (more than 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
}

impl Hook {
    /// A hook running `path` with no arguments and an empty environment.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            args: Vec::new(),
            env: Vec::new(),
            timeout: None,
        }
    }
}

/// The hooks of a container, by point (the OCI names in JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    /// Deprecated by the spec, still used (e.g. by older GPU toolkits):
    /// run with `createRuntime`, before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prestart: Vec<Hook>,
    /// See the module table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_runtime: Vec<Hook>,
    /// See the module table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_container: Vec<Hook>,
    /// See the module table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_container: Vec<Hook>,
    /// See the module table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststart: Vec<Hook>,
    /// See the module table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poststop: Vec<Hook>,
}

impl Hooks {
    /// Whether there is no hook at all.
    pub fn is_empty(&self) -> bool {
        self.all().all(|(_, h)| h.is_empty())
    }

    /// Every point with its hooks.
    pub fn all(&self) -> impl Iterator<Item = (&'static str, &Vec<Hook>)> {
        [
            ("prestart", &self.prestart),
            ("createRuntime", &self.create_runtime),
            ("createContainer", &self.create_container),
            ("startContainer", &self.start_container),
            ("poststart", &self.poststart),
            ("poststop", &self.poststop),
        ]
        .into_iter()
    }

    /// The first hook that cannot be run as given: its point, path and
    /// what is wrong (a relative path, a zero timeout, an env entry that
    /// is not `KEY=value`).
    pub fn first_invalid(&self) -> Option<(&'static str, PathBuf, &'static str)> {
        self.all().find_map(|(point, hooks)| {
            hooks.iter().find_map(|h| {
                let reason = if !h.path.is_absolute() {
                    "must be an absolute path"
                } else if h.timeout == Some(0) {
                    "timeout must be more than 0 seconds"
                } else if h.env.iter().any(|e| !e.contains('=')) {
                    "env entries must be KEY=value"
                } else {
                    return None;
                };
                Some((point, h.path.clone(), reason))
            })
        })
    }

    /// The runtime-side hooks of the create step: `prestart` then
    /// `createRuntime`.
    pub(crate) fn runtime_create(&self) -> impl Iterator<Item = (&'static str, &Hook)> {
        let p = self.prestart.iter().map(|h| ("prestart", h));
        p.chain(self.create_runtime.iter().map(|h| ("createRuntime", h)))
    }
}

/// The container's state as hooks read it on stdin (the runtime spec's
/// "State").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookState {
    /// [`OCI_VERSION`].
    pub oci_version: String,
    /// The container id.
    pub id: String,
    /// `creating`, `created`, `running` or `stopped`.
    pub status: String,
    /// The container's process: as the runtime sees it for runtime-side
    /// hooks, as the container sees it for the init's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The container's state directory, with a `config.json` whose
    /// `root.path` is the rootfs (what GPU toolkits' hooks read).
    pub bundle: PathBuf,
    /// The container's annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl HookState {
    /// The state of container `id` with `bundle`, in `status`.
    pub fn new(id: &str, bundle: &Path, status: &str, pid: Option<i32>) -> Self {
        Self {
            oci_version: OCI_VERSION.into(),
            id: id.into(),
            status: status.into(),
            pid,
            bundle: bundle.into(),
            annotations: BTreeMap::new(),
        }
    }
}

/// A hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// It could not be started.
    #[error("{point} hook {}: cannot run it: {source}", path.display())]
    Spawn {
        /// The hook point.
        point: &'static str,
        /// The hook's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It ran past its timeout and was killed.
    #[error("{point} hook {}: still running after {after:?}, killed", path.display())]
    Timeout {
        /// The hook point.
        point: &'static str,
        /// The hook's path.
        path: PathBuf,
        /// Its timeout.
        after: Duration,
    },
    /// It exited unsuccessfully.
    #[error("{point} hook {}: {status}{}", path.display(), if output.is_empty() { String::new() } else { format!(": {output}") })]
    Failed {
        /// The hook point.
        point: &'static str,
        /// The hook's path.
        path: PathBuf,
        /// How it ended.
        status: String,
        /// The end of what it wrote to stdout and stderr.
        output: String,
    },
}

/// Runs `hooks` one after another with `state` on stdin; the first failure
/// ends the run.
pub fn run_all<'a>(
    hooks: impl IntoIterator<Item = (&'static str, &'a Hook)>,
    state: &HookState,
) -> Result<(), HookError> {
    let json = serde_json::to_vec(state).unwrap_or_default();
    for (point, hook) in hooks {
        run_one(point, hook, &json)?;
    }
    Ok(())
}

/// Runs every hook of `hooks` whatever happens, and returns the failures
/// (for `poststart` and `poststop`, whose failures are only reported).
pub fn run_reporting<'a>(
    hooks: impl IntoIterator<Item = (&'static str, &'a Hook)>,
    state: &HookState,
) -> Vec<HookError> {
    let json = serde_json::to_vec(state).unwrap_or_default();
    hooks
        .into_iter()
        .filter_map(|(point, hook)| run_one(point, hook, &json).err())
        .collect()
}

// Never inlined, and cold: its frame (a Command, the output handling) must
// not sit in the frames of the container's create path, which runs whether
// hooks do or not.
#[inline(never)]
#[cold]
fn run_one(point: &'static str, hook: &Hook, state: &[u8]) -> Result<(), HookError> {
    let spawn_err = |source| HookError::Spawn {
        point,
        path: hook.path.clone(),
        source,
    };
    // The state on stdin from an anonymous file: any size, and a hook that
    // never reads it cannot block us.
    let mut stdin = memfile("berth-hook-state").map_err(spawn_err)?;
    stdin.write_all(state).map_err(spawn_err)?;
    stdin.rewind().map_err(spawn_err)?;
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| spawn_err(std::io::Error::from(e)))?;
    let mut cmd = Command::new(&hook.path);
    cmd.arg0(
        hook.args
            .first()
            .map(String::as_str)
            .unwrap_or_else(|| hook.path.to_str().unwrap_or("hook")),
    );
    cmd.args(hook.args.iter().skip(1));
    cmd.env_clear();
    for e in &hook.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => cmd.env(k, v),
            _ => continue,
        };
    }
    cmd.stdin(Stdio::from(stdin));
    cmd.stdout(Stdio::from(out_w.try_clone().map_err(spawn_err)?));
    cmd.stderr(Stdio::from(out_w));
    let mut child = cmd.spawn().map_err(spawn_err)?;
    drop(cmd);
    let timeout = hook
        .timeout
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t.into()))
        .unwrap_or(DEFAULT_TIMEOUT);
    let output = match collect_until_exit(&mut child, out_r, timeout) {
        Some(o) => o,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HookError::Timeout {
                point,
                path: hook.path.clone(),
                after: timeout,
            });
        }
    };
    let status = child.wait().map_err(spawn_err)?;
    if status.success() {
        return Ok(());
    }
    let status = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    };
    Err(HookError::Failed {
        point,
        path: hook.path.clone(),
        status,
        output: String::from_utf8_lossy(&output).trim().to_string(),
    })
}

/// Reads the hook's output (keeping its last [`OUTPUT_KEPT`] bytes) until
/// it exits; `None` at the deadline. Once it exited, what it left behind
/// (a daemon holding the pipe) is not waited for.
fn collect_until_exit(
    child: &mut std::process::Child,
    out: OwnedFd,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let pidfd = crate::sys::pidfd_open(child.id() as i32).ok();
    let mut out = Some(std::fs::File::from(out));
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let exited = match &pidfd {
            Some(p) => {
                let mut fds = vec![PollFd::new(p.as_fd(), PollFlags::POLLIN)];
                if let Some(o) = &out {
                    fds.push(PollFd::new(o.as_fd(), PollFlags::POLLIN));
                }
                let ms = left.as_millis().min(60_000) as u16;
                match poll(&mut fds, PollTimeout::from(ms)) {
                    Ok(_) | Err(nix::Error::EINTR) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
                let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                let exited = ready(&fds[0]);
                let readable = fds.get(1).is_some_and(ready);
                drop(fds);
                if readable {
                    read_some(&mut out, &mut kept, &mut buf);
                }
                exited
            }
            // No pidfd (an old kernel): poll the exit.
            None => {
                std::thread::sleep(Duration::from_millis(5));
                matches!(child.try_wait(), Ok(Some(_)))
            }
        };
        if exited {
            // Whatever is already in the pipe, without waiting for more.
            if let Some(o) = &out {
                let _ = nix::fcntl::fcntl(
                    std::os::fd::AsRawFd::as_raw_fd(o),
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                );
                while out.is_some() && read_some(&mut out, &mut kept, &mut buf) {}
            }
            return Some(kept);
        }
    }
}

/// One read of the output pipe into `kept`; `false` (and the pipe dropped)
/// at its end or on an error.
fn read_some(out: &mut Option<std::fs::File>, kept: &mut Vec<u8>, buf: &mut [u8]) -> bool {
    let Some(o) = out else { return false };
    match o.read(buf) {
        Ok(0) | Err(_) => {
            *out = None;
            false
        }
        Ok(n) => {
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > OUTPUT_KEPT {
                kept.drain(..kept.len() - OUTPUT_KEPT);
            }
            true
        }
    }
}

/// An anonymous file (memfd), close-on-exec.
fn memfile(name: &str) -> std::io::Result<std::fs::File> {
    let name = std::ffi::CString::new(name).unwrap_or_default();
    let fd = nix::sys::memfd::memfd_create(&name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)?;
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Hook {
        Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["HOOKVAR=v1".into()],
            timeout: None,
        }
    }

    fn state() -> HookState {
        let mut s = HookState::new("c1", Path::new("/run/x/c1"), "creating", Some(42));
        s.annotations.insert("a".into(), "b".into());
        s
    }

    #[test]
    fn a_hook_reads_the_state_on_stdin_with_only_its_own_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let hook = sh(&format!(
            "cat > {0}.state; echo \"$HOOKVAR ${{HOME:-nohome}} $0\" > {0}",
            out.display()
        ));
        run_all([("createRuntime", &hook)], &state()).unwrap();
        let got: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.with_extension("state")).unwrap()).unwrap();
        assert_eq!(got["ociVersion"], OCI_VERSION);
        assert_eq!(got["id"], "c1");
        assert_eq!(got["status"], "creating");
        assert_eq!(got["pid"], 42);
        assert_eq!(got["bundle"], "/run/x/c1");
        assert_eq!(got["annotations"]["a"], "b");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "v1 nohome sh\n");
    }

    #[test]
    fn a_failing_hook_fails_with_its_status_and_output_and_stops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("second-ran");
        let bad = sh("echo 'no GPU here' >&2; exit 3");
        let second = sh(&format!("touch {}", marker.display()));
        let err = run_all([("prestart", &bad), ("createRuntime", &second)], &state()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("prestart hook /bin/sh: exited with status 3: no GPU here"),
            "{msg}"
        );
        assert!(!marker.exists());
        // Reporting runs all of them and returns each failure.
        let errs = run_reporting([("poststop", &bad), ("poststop", &second)], &state());
        assert_eq!(errs.len(), 1);
        assert!(marker.exists());
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed() {
        let mut h = sh("sleep 30");
        h.timeout = Some(1);
        let t0 = Instant::now();
        let err = run_all([("poststart", &h)], &state()).unwrap_err();
        assert!(matches!(err, HookError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_missing_program_is_a_spawn_error_and_a_leftover_daemon_is_not_waited_for() {
        let err = run_all([("prestart", &Hook::new("/nonexistent/hook"))], &state()).unwrap_err();
        assert!(matches!(err, HookError::Spawn { .. }), "{err}");
        // The hook exits at once but leaves a child holding its stdout.
        let t0 = Instant::now();
        run_all([("poststart", &sh("sleep 5 & echo started"))], &state()).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn hooks_round_trip_with_the_oci_names() {
        let json = r#"{"prestart":[{"path":"/a"}],"createRuntime":[{"path":"/b","args":["b","x"],"timeout":5}],
            "createContainer":[{"path":"/c","env":["K=V"]}],"startContainer":[{"path":"/d"}],
            "poststart":[{"path":"/e"}],"poststop":[{"path":"/f"}]}"#;
        let h: Hooks = serde_json::from_str(json).unwrap();
        assert_eq!(h.create_runtime[0].timeout, Some(5));
        assert_eq!(h.create_container[0].env, ["K=V"]);
        let names: Vec<_> = h
            .runtime_create()
            .map(|(p, h)| (p, h.path.clone()))
            .collect();
        assert_eq!(
            names,
            [("prestart", "/a".into()), ("createRuntime", "/b".into())]
        );
        assert!(!h.is_empty() && Hooks::default().is_empty());
        let back: Hooks = serde_json::from_value(serde_json::to_value(&h).unwrap()).unwrap();
        assert_eq!(back, h);
    }
}
