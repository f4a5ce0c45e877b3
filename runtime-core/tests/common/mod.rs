//! Shared helpers of the privileged integration tests: a busybox rootfs,
//! a base config, and running a container while capturing its output.
#![allow(dead_code)]

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use berth_core::config::{Rlimit, RlimitKind};
use berth_core::{Config, Container, ExitStatus, InitBinary, Process, Stdio};

/// The init binary built alongside the tests.
pub fn init_binary() -> InitBinary {
    InitBinary::Path(env!("CARGO_BIN_EXE_berth-core-init").into())
}

/// See [`berth_e2e::privileged`].
pub use berth_e2e::privileged;

/// Builds a busybox rootfs in `dir` with /etc/passwd and /etc/group listing
/// root, alice (1000, also in `users`) and nobody.
pub fn build_rootfs(dir: &Path) {
    berth_e2e::busybox_rootfs(dir).unwrap();
    std::fs::create_dir_all(dir.join("home/alice")).unwrap();
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\nusers:x:100:alice\nalice:x:1000:\nnogroup:x:65534:\n",
    )
    .unwrap();
}

/// A shared busybox rootfs (never written by the tests), built once per
/// machine under the temporary directory and reused: built in a private
/// directory, then renamed into place, so concurrent test binaries agree.
pub fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let fin = std::env::temp_dir().join("berth-test-busybox-rootfs-v1");
        if fin.join("bin/busybox").exists() {
            return fin;
        }
        let tmp =
            std::env::temp_dir().join(format!("berth-test-busybox-rootfs.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        // Reachable by ids mapped into user namespaces.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        build_rootfs(&tmp);
        if std::fs::rename(&tmp, &fin).is_err() {
            // Another test binary won the race; use its copy.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        fin
    })
}

/// A private busybox rootfs at `DIR/rootfs` in a fresh temporary `DIR`
/// (mode 0755, so ids mapped into a user namespace can reach it), for tests
/// that change the rootfs. Returns the directory (removed on drop) and the
/// rootfs path.
pub fn private_rootfs(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let rootfs = dir.path().join("rootfs");
    build_rootfs(&rootfs);
    (dir, rootfs)
}

/// A fresh state root.
pub fn state_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-state")
        .tempdir()
        .unwrap()
}

/// The libcontainer README config on `rootfs`.
pub fn base_config(rootfs: &Path) -> Config {
    let mut c = Config::new(rootfs);
    c.hostname = Some("testing".into());
    c.rlimits.push(Rlimit {
        kind: RlimitKind::RlimitNofile,
        soft: 1025,
        hard: 1025,
    });
    c
}

/// A pipe: (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

/// Output of a finished container process.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Sets stdout/stderr of `p` to pipes, and returns their read ends.
pub fn capture(p: &mut Process) -> (OwnedFd, OwnedFd) {
    let (or, ow) = pipe();
    let (er, ew) = pipe();
    p.stdout = Stdio::Fd(ow);
    p.stderr = Stdio::Fd(ew);
    (or, er)
}

/// Reads both pipes to the end (in two threads, so neither can block the other).
pub fn collect(out: OwnedFd, err: OwnedFd) -> (String, String) {
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        std::fs::File::from(err).read_to_string(&mut s).unwrap();
        s
    });
    let mut o = String::new();
    std::fs::File::from(out).read_to_string(&mut o).unwrap();
    (o, t.join().unwrap())
}

/// Creates a container from `config`, runs `args` as its init, waits,
/// destroys it, and returns what it printed.
pub fn run(config: Config, args: &[&str]) -> Output {
    let state = state_root();
    let id = unique_id("run");
    let mut c = Container::create(state.path(), &id, config)
        .unwrap()
        .with_init_binary(init_binary());
    let mut p = Process::new(args.iter().copied());
    let (out, err) = capture(&mut p);
    let h = c
        .run(p)
        .unwrap_or_else(|e| panic!("run {args:?}: {}", chain(&e)));
    let (stdout, stderr) = collect(out, err);
    let status = h.wait().unwrap();
    c.destroy().unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Whether a test that cannot run here must fail rather than skip: the QEMU
/// guests of `scripts/test.sh` set `BERTH_TEST_NO_SKIP` (there, every test
/// must run).
pub fn no_skip() -> bool {
    std::env::var_os("BERTH_TEST_NO_SKIP").is_some()
}

/// `None` after printing `skipped: <test>: <why>` — or a panic under
/// [`no_skip`].
pub fn skip<T>(test: &str, why: &str) -> Option<T> {
    assert!(!no_skip(), "{test} would be skipped: {why}");
    println!("skipped: {test}: {why}");
    None
}

/// An id unique in this machine's run.
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// An error with its sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
