//! End-to-end tests of the real `berth` binary. Helpers live here; the tests
//! are in `tests/`.

use std::path::{Path, PathBuf};

pub mod containerd;
pub mod cri;
pub mod crictl;
pub mod daemon;
pub mod gateway;
pub mod images;
pub mod kube_api;
pub mod pki;
pub mod proxy;
pub mod raw_grpc;
pub mod registry;

/// The `berth` binary built by this workspace, in the same profile directory
/// as this test binary. `scripts/test.sh` builds it first (`cargo build
/// --workspace --bins`); `None`, after printing `skipped: ...`, when it is
/// missing.
pub fn berth_binary(test: &str) -> Option<PathBuf> {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop(); // deps/
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("berth");
    if bin.exists() {
        Some(bin)
    } else {
        println!(
            "skipped: {test}: {} is not built (cargo build -p berth)",
            bin.display()
        );
        None
    }
}

/// `None`, after printing `skipped: <test>: why`, unless this runs as root
/// with a static busybox: what the privileged container tests need.
pub fn privileged(test: &str) -> Option<()> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        println!("skipped: {test}: needs root");
        return None;
    }
    if busybox().is_none() {
        println!("skipped: {test}: needs a static busybox (Debian's busybox-static)");
        return None;
    }
    Some(())
}

/// Debian's static busybox, if installed.
pub fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Builds a busybox rootfs in `dir`: the applets hard-linked into /bin
/// (hard links, not symlinks, so a path is what it looks like), the usual
/// empty directories, a 1777 /tmp, and /etc/passwd and /etc/group with root.
/// Errors (`NotFound` when no static busybox is installed) are clear.
pub fn busybox_rootfs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let busybox = busybox().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no static busybox: install Debian's busybox-static",
        )
    })?;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    // The applet list comes from the host's busybox; the copy is never
    // executed: exec'ing a file just written fails with ETXTBSY when another
    // thread forked while the write fd was open (golang/go#22315).
    let list = std::process::Command::new(&busybox)
        .arg("--list")
        .output()?;
    if !list.status.success() {
        return Err(std::io::Error::other("busybox --list failed"));
    }
    let copy = bin.join("busybox");
    std::fs::copy(&busybox, &copy)?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = bin.join(applet);
        if !link.exists() {
            std::fs::hard_link(&copy, &link)?;
        }
    }
    for d in ["etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n")
}
