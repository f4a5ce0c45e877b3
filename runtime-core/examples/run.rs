//! The libcontainer README example, in Rust: a container with new mnt, uts,
//! ipc, pid and net namespaces, the default capabilities, masked and
//! read-only paths, the default devices, hostname "testing", RLIMIT_NOFILE
//! 1025 and the loopback interface up. It runs a shell command that prints
//! what the container sees, waits, and destroys the container.
//!
//! ```text
//! sudo cargo run -p berth-core --example run                 # busybox rootfs built for you
//! sudo cargo run -p berth-core --example run -- ROOTFS [CMD...]
//! ```

use std::path::PathBuf;

use berth_core::config::{Rlimit, RlimitKind};
use berth_core::{Config, Container, Process};

const SHOW: &str = "echo \"pid $$ on $(hostname) as $(id)\"; \
    grep -E '^Cap(Eff|Bnd)' /proc/self/status; \
    echo \"nofile $(ulimit -n)\"; \
    echo \"interfaces: $(ls /sys/class/net)\"; \
    echo \"/proc/keys masked: $(wc -c < /proc/keys) bytes\"; \
    echo 'mounts:'; cut -d' ' -f5,9 /proc/self/mountinfo | sed 's/^/  /'";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // This binary is also the container's init: first thing in main.
    berth_core::init::run_if_requested();

    let mut args = std::env::args().skip(1);
    let mut keep: Option<TempDir> = None; // a temporary rootfs, removed at the end
    let rootfs = match args.next() {
        Some(p) => PathBuf::from(p),
        None => {
            let dir = tempfile_dir()?;
            // Debian's busybox-static, applets hard-linked into /bin.
            berth_e2e::busybox_rootfs(&dir)?;
            keep = Some(TempDir(dir.clone()));
            dir
        }
    };
    let command: Vec<String> = args.collect();
    let command = if command.is_empty() {
        vec!["/bin/sh".to_string(), "-c".to_string(), SHOW.to_string()]
    } else {
        command
    };

    let mut config = Config::new(&rootfs);
    config.hostname = Some("testing".into());
    config.rlimits.push(Rlimit {
        kind: RlimitKind::RlimitNofile,
        soft: 1025,
        hard: 1025,
    });
    config.loopback = true;

    let state_root = std::env::temp_dir().join(format!("berth-example-{}", std::process::id()));
    let mut container = Container::create(&state_root, "example", config)?;
    let process = Process::new(command).inherit_stdio();
    let init = container.run(process)?;
    let status = init.wait()?;
    container.destroy()?;
    let _ = std::fs::remove_dir(&state_root);
    println!("container exited: {status:?}");
    drop(keep);
    std::process::exit(status.code());
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("berth-example-rootfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
