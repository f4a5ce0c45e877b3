//! The real `berth serve` daemon, started on directories of a test's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `berth serve` with its socket, root and state under one
/// directory; killed (by its PID) on drop.
pub struct Daemon {
    pub child: Child,
    pub sock: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `berth serve` with `--listen DIR/berth.sock --root DIR/root
    /// --state DIR/state`, JSON debug logs to DIR/berth.log, plus `extra`.
    pub fn start(berth: &Path, dir: &Path, extra: &[&str]) -> Daemon {
        let sock = dir.join("berth.sock");
        let log = dir.join("berth.log");
        let child = Command::new(berth)
            .arg("serve")
            .arg("--listen")
            .arg(&sock)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .args(["--log-format", "json", "--log-level", "debug"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("daemon log file"),
            )
            .spawn()
            .expect("starting berth serve");
        Daemon { child, sock, log }
    }

    /// A channel to the daemon, once it accepts (20 s at most).
    pub async fn channel(&self) -> tonic::transport::Channel {
        crate::cri::wait_and_connect(&self.sock, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", self.log()))
    }

    /// What the daemon logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // Only our own daemon, by its PID.
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(15);
        self.child.wait().expect("waiting for berth serve")
    }

    /// SIGKILL (a crash), then wait.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
