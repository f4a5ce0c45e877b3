//! A pod's network namespace closed to outgoing packets while its
//! containers are restored one CRIU run at a time.
//!
//! CRIU takes each restored TCP socket out of repair mode at the end of its
//! run, and the kernel then sends a window probe. When the peer is another
//! container of the pod that is not restored yet, the probe finds no socket
//! and is answered with a reset: the connection is gone before the second
//! container exists. With every packet leaving the namespace dropped until
//! the last container is restored, the probe is lost instead, and TCP
//! retransmits once the fence is lowered, when both ends exist.
//!
//! The fence is a chain of its own (`BERTH-RESTORE`, one DROP rule) jumped
//! to first from `OUTPUT`, made with `iptables` and `ip6tables` — the tools
//! CRIU itself runs for its connection locks — inside the namespace (they
//! run with it joined, so nothing outside it changes). IPv4 must work;
//! IPv6 is fenced where the namespace has it.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::ContainerError;

/// The chain that drops everything.
const CHAIN: &str = "BERTH-RESTORE";

/// The commands that raise the fence, in order.
const RAISE: [&[&str]; 3] = [
    &["-w", "-N", CHAIN],
    &["-w", "-A", CHAIN, "-j", "DROP"],
    &["-w", "-I", "OUTPUT", "1", "-j", CHAIN],
];

/// The commands that lower it, in order.
const LOWER: [&[&str]; 3] = [
    &["-w", "-D", "OUTPUT", "-j", CHAIN],
    &["-w", "-F", CHAIN],
    &["-w", "-X", CHAIN],
];

/// A raised fence; lowered by [`RestoreFence::lower`], or when dropped.
pub struct RestoreFence {
    netns: OwnedFd,
    raised: Vec<&'static str>,
    /// Why IPv6 is not fenced, when it is not.
    pub ipv6_skipped: Option<String>,
}

impl RestoreFence {
    /// Drops every packet leaving the network namespace at `path` (a
    /// pinned namespace file) until lowered.
    pub fn raise(path: &Path) -> Result<Self, ContainerError> {
        let mut fence = Self::open(path)?;
        for tool in ["iptables", "ip6tables"] {
            match fence.run_all(tool, &RAISE) {
                Ok(()) => fence.raised.push(tool),
                Err(e) => {
                    // Whatever part of it was made goes.
                    fence.undo_each(tool);
                    if tool == "iptables" {
                        return Err(e);
                    }
                    fence.ipv6_skipped = Some(e.to_string());
                }
            }
        }
        Ok(fence)
    }

    /// Lets packets leave again.
    pub fn lower(mut self) -> Result<(), ContainerError> {
        self.lower_all()
    }

    /// Lowers a fence a process that died left raised in the network
    /// namespace at `path`, best effort: each step is tried on its own (the
    /// fence may be half made, or not there at all).
    pub fn clear(path: &Path) -> Result<(), ContainerError> {
        let fence = Self::open(path)?;
        for tool in ["iptables", "ip6tables"] {
            fence.undo_each(tool);
        }
        Ok(())
    }

    /// Each lowering step of `tool` tried on its own, failures ignored: a
    /// half-made fence goes too.
    fn undo_each(&self, tool: &str) {
        for step in LOWER {
            let _ = self.run_all(tool, &[step]);
        }
    }

    fn open(path: &Path) -> Result<Self, ContainerError> {
        let f = File::open(path).map_err(|source| ContainerError::StateIo {
            path: path.to_path_buf(),
            source,
        })?;
        let netns = OwnedFd::from(f);
        let kind = crate::sys::ns_type(netns.as_fd()).map_err(|source| ContainerError::Sys {
            step: "read a namespace's type",
            source,
        })?;
        if kind != libc::CLONE_NEWNET {
            return Err(ContainerError::Checkpoint(format!(
                "{} is not a network namespace",
                path.display()
            )));
        }
        Ok(Self {
            netns,
            raised: Vec::new(),
            ipv6_skipped: None,
        })
    }

    fn lower_all(&mut self) -> Result<(), ContainerError> {
        let mut first = Ok(());
        for tool in std::mem::take(&mut self.raised) {
            if let Err(e) = self.run_all(tool, &LOWER) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Runs `tool` with each argument list in turn, in the namespace.
    fn run_all(&self, tool: &str, steps: &[&[&str]]) -> Result<(), ContainerError> {
        for args in steps {
            let mut cmd = Command::new(tool);
            cmd.args(*args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let ns = self.netns.as_raw_fd();
            // SAFETY: runs in the forked child before exec; one raw setns
            // on an fd opened before the fork (no allocation, no locks).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let out = cmd.output().map_err(|e| {
                ContainerError::Checkpoint(format!(
                    "run {tool} in the pod's network namespace: {e}"
                ))
            })?;
            if !out.status.success() {
                return Err(ContainerError::Checkpoint(format!(
                    "{tool} {}: {} ({})",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim(),
                    out.status
                )));
            }
        }
        Ok(())
    }
}

impl Drop for RestoreFence {
    fn drop(&mut self) {
        if let Err(e) = self.lower_all() {
            tracing::warn!(error = %e, "lowering a restore fence failed");
        }
    }
}
