//! End-to-end tests of the real `berth` binary. Helpers live here; the tests
//! are in `tests/`.

use std::path::{Path, PathBuf};

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

/// Builds a busybox rootfs (hard-linked applets) in `dir`; `None` when no
/// static busybox is installed.
pub fn busybox_rootfs(dir: &Path) -> Option<()> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).ok()?;
    std::fs::copy(busybox, bin.join("busybox")).ok()?;
    let ok = std::process::Command::new(bin.join("busybox"))
        .arg("--install")
        .arg(&bin)
        .status()
        .ok()?
        .success();
    for d in ["etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).ok()?;
    }
    ok.then_some(())
}
