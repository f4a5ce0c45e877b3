//! The real `crictl` (kubernetes-sigs/cri-tools v1.36, the CRI command line
//! kubeadm installs on every node) as a client in tests. It comes from the
//! cri-tools kit the scripts use (`BERTH_CRI_TOOLS`, else
//! `<repo>/../shared/tools/cri-tools`, see its README.md): its
//! `bin/crictl.xz` is unpacked into the test's own directory, so nothing
//! depends on what `setup.sh` left in /var/tmp. Every call names the
//! endpoints and a config file of the test's own, so /etc/crictl.yaml and
//! the `CONTAINER_RUNTIME_ENDPOINT`/`IMAGE_SERVICE_ENDPOINT` variables never
//! matter.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The environment variable naming the cri-tools kit directory.
pub const KIT_ENV: &str = "BERTH_CRI_TOOLS";

/// The cri-tools kit: `$BERTH_CRI_TOOLS`, else `<repo>/../shared/tools/cri-tools`.
pub fn kit_dir() -> PathBuf {
    match std::env::var_os(KIT_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        // This crate is `<repo>/tests`.
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/cri-tools"),
    }
}

/// crictl pointed at one daemon's socket.
pub struct Crictl {
    bin: PathBuf,
    config: PathBuf,
    endpoint: String,
}

impl Crictl {
    /// Unpacks the kit's `bin/crictl.xz` into `dir` and points it at
    /// `sock`. `None`, after printing `skipped: <test>: why`, without the
    /// kit or the `xz` command.
    pub fn unpack(test: &str, dir: &Path, sock: &Path) -> Option<Crictl> {
        let xz = kit_dir().join("bin/crictl.xz");
        if !xz.exists() {
            println!(
                "skipped: {test}: no cri-tools kit ({} is missing; set {KIT_ENV})",
                xz.display()
            );
            return None;
        }
        let bin = dir.join("crictl");
        // The shell writes the file, so no write fd to it is ever open in
        // this (multi-threaded) process: a fork in another thread could
        // otherwise hold one and make exec fail with ETXTBSY
        // (golang/go#22315).
        let status = Command::new("sh")
            .args(["-c", r#"xz -dc -- "$1" > "$2" && chmod 755 "$2""#, "sh"])
            .arg(&xz)
            .arg(&bin)
            .stdin(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => {
                println!(
                    "skipped: {test}: could not unpack {} with xz (xz-utils): {other:?}",
                    xz.display()
                );
                return None;
            }
        }
        let endpoint = format!("unix://{}", sock.display());
        let config = dir.join("crictl.yaml");
        std::fs::write(
            &config,
            format!(
                "runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\n\
                 timeout: 30\ndebug: false\npull-image-on-create: false\n\
                 disable-pull-on-run: true\n"
            ),
        )
        .expect("crictl config");
        Some(Crictl {
            bin,
            config,
            endpoint,
        })
    }

    /// The command line `crictl --config C --runtime-endpoint E
    /// --image-endpoint E <args>`, with a clean endpoint environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--runtime-endpoint", &self.endpoint])
            .args(["--image-endpoint", &self.endpoint])
            .args(args)
            .env_remove("CONTAINER_RUNTIME_ENDPOINT")
            .env_remove("IMAGE_SERVICE_ENDPOINT")
            .env_remove("CRI_CONFIG_FILE")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `crictl <args>` to the end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("running crictl {args:?}: {e}"))
    }

    /// Stdout of `crictl <args>`, which must exit 0.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "crictl {args:?} exited with {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("crictl prints UTF-8")
    }

    /// `crictl <args>` (which must exit 0) parsed as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("crictl {args:?}: not JSON ({e}):\n{out}"))
    }

    /// Waits until `crictl version` answers (the daemon is serving), 20 s
    /// at most; the last failure otherwise.
    pub fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.run(&["--timeout", "2s", "version"]);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "crictl version kept failing: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
