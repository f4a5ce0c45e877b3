//! Debian's containerd on a side socket, for benchmarks that compare berth
//! with it: its own root, state, socket, `opt` and CNI dirs and a `certs.d`
//! that sends the test registry to plain HTTP, all under a directory the
//! caller owns; nothing of the host's configuration is used. Stopped (by its
//! pid) on drop, and the empty `k8s.io` cgroups it made are removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running containerd.
pub struct Containerd {
    child: Child,
    /// Its CRI socket.
    pub sock: PathBuf,
    /// `k8s.io` cgroup dirs that did not exist before it started.
    new_cgroups: Vec<PathBuf>,
}

impl Containerd {
    /// Starts `containerd` with everything under `dir`, pulling from
    /// `registry` over HTTP; `pause` is its sandbox image (pods need one).
    /// `ErrorKind::NotFound` when containerd is not installed.
    pub fn start(dir: &Path, registry: &str, pause: Option<&str>) -> std::io::Result<Containerd> {
        let certs = dir.join("certs.d").join(registry);
        std::fs::create_dir_all(&certs)?;
        std::fs::write(
            certs.join("hosts.toml"),
            format!("server = \"http://{registry}\"\n"),
        )?;
        let sandbox = pause.map_or(String::new(), |p| format!("  sandbox_image = \"{p}\"\n"));
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
{sandbox}  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # The pause container's -998 needs CAP_SYS_RESOURCE, which root lacks on
  # some hosts (the development VM): keep scores >= containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{d}/cni"
    bin_dir = "{d}/cnibin"
"#,
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let new_cgroups: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("k8s.io"))
            .filter(|p| !p.exists())
            .collect();
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut c = Containerd {
            child,
            sock: dir.join("containerd.sock"),
            new_cgroups,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.sock.exists() {
            if Instant::now() > deadline || matches!(c.child.try_wait(), Ok(Some(_))) {
                return Err(std::io::Error::other(format!(
                    "containerd did not create its socket (see {})",
                    dir.join("containerd.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Only the containerd we started, by its pid.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        for p in &self.new_cgroups {
            let _ = std::fs::remove_dir(p); // only if empty
        }
    }
}
