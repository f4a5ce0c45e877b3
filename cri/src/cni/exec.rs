//! Running one CNI plugin: the protocol's environment, the config on
//! stdin, the result or error JSON on stdout, and a deadline.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// What the plugin is asked, besides its config.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// `ADD`, `DEL`, `CHECK`, `STATUS`, `GC` or `VERSION`.
    pub command: &'a str,
    /// `CNI_CONTAINERID` (empty for STATUS and GC).
    pub container_id: &'a str,
    /// `CNI_NETNS` (the pod's pinned netns; empty for STATUS and GC).
    pub netns: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS` pairs.
    pub args: &'a [(String, String)],
    /// Directories searched for plugins (`CNI_PATH`).
    pub path: &'a [PathBuf],
    /// How long the plugin may take.
    pub timeout: Duration,
}

/// A plugin that did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// No such executable in the plugin directories.
    #[error("plugin {plugin:?} not found in {dirs}")]
    NotFound {
        /// The plugin's type.
        plugin: String,
        /// The directories searched.
        dirs: String,
    },
    /// It could not be run, or its output could not be read.
    #[error("plugin {plugin:?} ({command}): {reason}")]
    Exec {
        /// The plugin's type.
        plugin: String,
        /// The CNI command.
        command: String,
        /// What happened.
        reason: String,
    },
    /// It reported an error (the CNI error JSON, quoted as it was sent).
    #[error("plugin {plugin:?} ({command}) failed: {msg} (code {code}; plugin said: {raw})")]
    Failed {
        /// The plugin's type.
        plugin: String,
        /// The CNI command.
        command: String,
        /// The error code (CNI spec: 1-99 well-known, 100+ the plugin's).
        code: u64,
        /// `msg` (and `details` when given).
        msg: String,
        /// The plugin's stdout (or stderr when stdout was empty), trimmed.
        raw: String,
    },
    /// It did not finish in time (it was killed).
    #[error("plugin {plugin:?} ({command}) did not finish within {secs} s")]
    Timeout {
        /// The plugin's type.
        plugin: String,
        /// The CNI command.
        command: String,
        /// The limit.
        secs: u64,
    },
}

/// Finds the executable for `plugin` in `dirs` (first match).
pub fn find(plugin: &str, dirs: &[PathBuf]) -> Result<PathBuf, PluginError> {
    super::config::valid_type(plugin)
        .then(|| crate::util::find_executable(plugin, dirs.iter().cloned()))
        .flatten()
        .ok_or_else(|| PluginError::NotFound {
            plugin: plugin.to_string(),
            dirs: join_paths(dirs),
        })
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Most of a plugin's stdout we read (results are small; this bounds a
/// misbehaving plugin).
const MAX_OUTPUT: u64 = 4 << 20;

/// Runs `plugin` with `config` on stdin. Returns the parsed stdout when
/// there is any (ADD and CHECK-less commands may print nothing).
pub fn run(plugin: &str, config: &Value, inv: &Invocation) -> Result<Option<Value>, PluginError> {
    let exe = find(plugin, inv.path)?;
    let err_exec = |reason: String| PluginError::Exec {
        plugin: plugin.to_string(),
        command: inv.command.to_string(),
        reason,
    };
    let args = inv
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    // The daemon's environment plus the protocol's variables, as libcni
    // does (plugins run iptables and the like through PATH).
    let mut cmd = Command::new(&exe);
    cmd.env("CNI_COMMAND", inv.command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", join_paths(inv.path))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/");
    if std::env::var_os("PATH").is_none() {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| err_exec(format!("cannot run {}: {e}", exe.display())))?;
    let input = serde_json::to_vec(config).map_err(|e| err_exec(e.to_string()))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    // Stdin written and both outputs read on their own threads, so a
    // plugin that reads late or writes a lot cannot deadlock us; the
    // deadline is on stdout closing (the plugin ending, normally).
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = (&mut stdout).take(MAX_OUTPUT).read_to_end(&mut out);
        let _ = tx.send(r.map(|_| out));
    });
    let err_thread = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut out);
        out
    });
    let out = match rx.recv_timeout(inv.timeout) {
        Ok(r) => r,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(PluginError::Timeout {
                plugin: plugin.to_string(),
                command: inv.command.to_string(),
                secs: inv.timeout.as_secs(),
            });
        }
    };
    let status = child.wait().map_err(|e| err_exec(e.to_string()))?;
    let out = out.map_err(|e| err_exec(format!("reading its output: {e}")))?;
    let err_out = err_thread.join().unwrap_or_default();
    if status.success() {
        if out.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        return serde_json::from_slice(&out)
            .map(Some)
            .map_err(|e| err_exec(format!("its result is not JSON ({e})")));
    }
    let raw_bytes = if out.iter().all(u8::is_ascii_whitespace) {
        &err_out
    } else {
        &out
    };
    let raw = String::from_utf8_lossy(raw_bytes).trim().to_string();
    let (code, msg) = match serde_json::from_slice::<Value>(raw_bytes) {
        Ok(v) => {
            let code = v.get("code").and_then(Value::as_u64).unwrap_or(0);
            let mut msg = v
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_string();
            if let Some(d) = v.get("details").and_then(Value::as_str) {
                if !d.is_empty() {
                    msg = format!("{msg}: {d}");
                }
            }
            (code, msg)
        }
        Err(_) => (0, format!("exited with {status}")),
    };
    Err(PluginError::Failed {
        plugin: plugin.to_string(),
        command: inv.command.to_string(),
        code,
        msg,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn inv<'a>(dirs: &'a [PathBuf], args: &'a [(String, String)]) -> Invocation<'a> {
        Invocation {
            command: "ADD",
            container_id: "c1",
            netns: "/run/netns/x",
            ifname: "eth0",
            args,
            path: dirs,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn environment_stdin_and_result() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "echoenv",
            r#"cfg=$(cat); printf '{"cniVersion":"1.0.0","env":"%s|%s|%s|%s|%s","cfg":%s}' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$cfg""#,
        );
        let dirs = vec![PathBuf::from("/nonexistent"), d.path().to_path_buf()];
        let args = vec![("K8S_POD_NAME".into(), "web".into())];
        let v = run("echoenv", &serde_json::json!({"a": 1}), &inv(&dirs, &args))
            .unwrap()
            .unwrap();
        assert_eq!(v["env"], "ADD|c1|/run/netns/x|eth0|K8S_POD_NAME=web");
        assert_eq!(v["cfg"]["a"], 1);
        assert_eq!(find("echoenv", &dirs).unwrap(), d.path().join("echoenv"));
    }

    #[test]
    fn errors_quote_the_plugin() {
        let d = tempfile::tempdir().unwrap();
        script(
            d.path(),
            "fail",
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":11,"msg":"no luck","details":"on demand"}'; exit 1"#,
        );
        script(d.path(), "crash", "echo oops >&2; exit 3");
        script(d.path(), "slow", "exec sleep 10");
        let dirs = vec![d.path().to_path_buf()];
        let e = run("fail", &Value::Null, &inv(&dirs, &[])).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("no luck: on demand") && s.contains("code 11"),
            "{s}"
        );
        assert!(s.contains(r#""msg":"no luck""#), "{s}");
        let s = run("crash", &Value::Null, &inv(&dirs, &[]))
            .unwrap_err()
            .to_string();
        assert!(s.contains("oops") && s.contains("exit status: 3"), "{s}");
        let mut i = inv(&dirs, &[]);
        i.timeout = Duration::from_millis(200);
        let t = std::time::Instant::now();
        assert!(matches!(
            run("slow", &Value::Null, &i),
            Err(PluginError::Timeout { .. })
        ));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            run("../fail", &Value::Null, &inv(&dirs, &[])),
            Err(PluginError::NotFound { .. })
        ));
        assert!(matches!(
            run("missing", &Value::Null, &inv(&dirs, &[])),
            Err(PluginError::NotFound { .. })
        ));
    }
}
