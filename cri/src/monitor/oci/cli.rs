//! Running the external runtime's command line: `<runtime> --root=<root>
//! --log=<bundle>/runtime.log --log-format=json <command> ...`, with every
//! signal at its default (the monitor blocks some for its signalfd, and
//! the container would inherit them through the runtime), a bounded wait,
//! and the runtime's own error message when it fails.

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::OciRuntime;

/// How long one runtime command may take (its hooks' default timeout).
const TIMEOUT: Duration = Duration::from_secs(120);

/// The search path the runtime and its hooks get when the monitor has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The runtime failed.
#[derive(Debug, thiserror::Error)]
#[error("{runtime} {command}: {message}")]
pub struct RuntimeFailed {
    /// The runtime binary.
    pub runtime: String,
    /// The command (`create`, `exec`, ...).
    pub command: String,
    /// The runtime's error, or how it ended.
    pub message: String,
}

/// Runs the runtime with `args`; `stdio` are its stdin, stdout and stderr
/// (`None`: `/dev/null` for stdin, a pipe read for the error otherwise).
pub fn run(
    rt: &OciRuntime,
    bundle: &Path,
    systemd: bool,
    args: &[String],
    stdio: [Option<OwnedFd>; 3],
) -> Result<(), RuntimeFailed> {
    let command = args.first().cloned().unwrap_or_default();
    let fail = |message: String| RuntimeFailed {
        runtime: rt.path.display().to_string(),
        command: command.clone(),
        message,
    };
    let mut cmd = Command::new(&rt.path);
    cmd.arg(format!("--root={}", rt.root.display()));
    let log = bundle.join("runtime.log");
    let log_start = match bundle.is_dir() {
        true => {
            // Relative paths given to the runtime (a console socket) are
            // the bundle's.
            cmd.current_dir(bundle);
            cmd.arg(format!("--log={}", log.display()))
                .arg("--log-format=json");
            Some(std::fs::metadata(&log).map_or(0, |m| m.len()))
        }
        false => None,
    };
    if systemd {
        cmd.arg("--systemd-cgroup");
    }
    cmd.args(args);
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    let [stdin, stdout, stderr] = stdio;
    let piped_err = stderr.is_none();
    cmd.stdin(stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(stdout.map_or_else(Stdio::null, Stdio::from))
        .stderr(stderr.map_or_else(Stdio::piped, Stdio::from));
    berth_core::process::default_signals(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    // Dropped here: the runtime and the container hold their own copies.
    drop(cmd);
    let status = wait(&mut child).map_err(&fail)?;
    if status.success() {
        return Ok(());
    }
    let mut err_text = String::new();
    if piped_err {
        if let Some(mut e) = child.stderr.take() {
            let _ = e.by_ref().take(64 * 1024).read_to_string(&mut err_text);
        }
    }
    let message = log_start
        .and_then(|start| last_error(&log, start))
        .or_else(|| {
            let t = err_text.trim();
            (!t.is_empty()).then(|| t.lines().last().unwrap_or(t).to_string())
        })
        .unwrap_or_else(|| status.to_string());
    Err(fail(message))
}

/// Waits for `child`, at most [`TIMEOUT`] (then kills it), polling with a
/// short backoff: a runtime command takes milliseconds, and the monitor's
/// loop is single-threaded.
fn wait(child: &mut std::process::Child) -> Result<std::process::ExitStatus, String> {
    let start = Instant::now();
    let mut nap = Duration::from_micros(200);
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Ok(s),
            Ok(None) if start.elapsed() > TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer in {} s; killed", TIMEOUT.as_secs()));
            }
            Ok(None) => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// The message of the last error the runtime logged past `start` (runc and
/// crun both write `{"level":"error","msg":...}` lines).
fn last_error(log: &Path, start: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut text = String::new();
    f.take(1 << 20).read_to_string(&mut text).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_logged_error_is_the_message() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("runtime.log");
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"old\"}\n{\"level\":\"info\",\"msg\":\"x\"}\n",
        )
        .unwrap();
        let start = std::fs::metadata(&log).unwrap().len();
        assert_eq!(last_error(&log, 0).as_deref(), Some("old"));
        assert_eq!(last_error(&log, start), None);
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(
            &mut f,
            b"not json\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": not found\"}\n",
        )
        .unwrap();
        assert_eq!(
            last_error(&log, start).as_deref(),
            Some("exec: \"nope\": not found")
        );
    }

    #[test]
    fn a_failing_runtime_reports_what_it_said() {
        let d = tempfile::tempdir().unwrap();
        let rt = OciRuntime {
            path: "/bin/sh".into(),
            root: d.path().to_path_buf(),
        };
        // `sh --root=...` fails: its complaint is the message.
        let err = run(
            &rt,
            &d.path().join("none"),
            false,
            &["x".into()],
            [None, None, None],
        )
        .unwrap_err();
        assert_eq!(err.command, "x");
        assert!(!err.message.is_empty(), "{err}");
        let rt = OciRuntime {
            path: "/nonexistent/runc".into(),
            root: d.path().to_path_buf(),
        };
        let err = run(&rt, d.path(), false, &["state".into()], [None, None, None]).unwrap_err();
        assert!(err.message.contains("cannot run it"), "{err}");
    }
}
