//! Pull throughput: berth's ImageService against containerd's CRI plugin, on
//! the same image from the same loopback registry, in the same run.
//!
//! `cargo bench -p berth-cri --bench pull` pulls a ~100 MB image (8 gzip
//! layers of 12.5 MB) cold — a fresh store and a fresh containerd root per
//! iteration — through each runtime's CRI `PullImage` over its unix socket,
//! and prints the median, min and max seconds and MB/s of each. Under
//! `cargo test --all-targets` (no `--bench`) it is a smoke run: a 2 MB image,
//! one pull each.
//!
//! containerd is Debian's (`containerd` package); without it only berth is
//! measured and the output says `skipped: containerd`. Knobs:
//! BERTH_BENCH_ITERS (default 5), BERTH_BENCH_LAYERS (8),
//! BERTH_BENCH_LAYER_MB (12.5).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_cri::image::service::ImageServiceConfig;
use berth_cri::proto::image_service_client::ImageServiceClient;
use berth_cri::proto::{PullImageRequest, RemoveImageRequest};

struct Containerd {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd with its own root, state, socket and a certs.d that
    /// sends the registry to plain HTTP; nothing of the host's is used.
    fn start(registry: &str) -> std::io::Result<Containerd> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let certs = d.join("certs.d").join(registry);
        std::fs::create_dir_all(&certs)?;
        std::fs::write(
            certs.join("hosts.toml"),
            format!("server = \"http://{registry}\"\n"),
        )?;
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
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{d}/cni"
    bin_dir = "{d}/cnibin"
"#,
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config)?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let sock = d.join("containerd.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(
                    "containerd did not create its socket in 20 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Containerd {
            child,
            sock,
            _dir: dir,
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Only the containerd this benchmark started, by its PID.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

async fn pull(sock: &Path, image: &str) -> Result<Duration, String> {
    let mut client = ImageServiceClient::new(common::connect(sock).await);
    let start = Instant::now();
    client
        .pull_image(PullImageRequest {
            image: Some(common::spec(image)),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let took = start.elapsed();
    let _ = client
        .remove_image(RemoveImageRequest {
            image: Some(common::spec(image)),
        })
        .await;
    Ok(took)
}

fn report(name: &str, mut secs: Vec<f64>, mb: f64) {
    secs.sort_by(f64::total_cmp);
    let med = secs[secs.len() / 2];
    println!(
        "{name:<28} median {med:>7.3} s  min {:>7.3} s  max {:>7.3} s  -> {:>7.1} MB/s (median; min-max {:.1}-{:.1})",
        secs[0],
        secs[secs.len() - 1],
        mb / med,
        mb / secs[secs.len() - 1],
        mb / secs[0],
    );
}

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (iters, layers, layer_mb) = if full {
        (
            env_or("BERTH_BENCH_ITERS", 5.0) as usize,
            env_or("BERTH_BENCH_LAYERS", 8.0) as usize,
            env_or("BERTH_BENCH_LAYER_MB", 12.5),
        )
    } else {
        (1, 2, 1.0)
    };
    let Some(reg) = common::registry("pull benchmark", None) else {
        return;
    };
    let addr = reg.addr();
    let layer_bytes = (layer_mb * 1e6) as usize;
    berth_e2e::images::large_image(&addr, "bench/large", "v1", layers, layer_bytes)
        .await
        .expect("pushing the benchmark image");
    let image = format!("{addr}/bench/large:v1");
    let mb = layers as f64 * layer_bytes as f64 / 1e6;
    println!("pull benchmark: {layers} layers x {layer_mb} MB = {mb:.1} MB, {iters} cold pulls each, loopback docker-registry");

    let mut berth = Vec::new();
    let mut containerd = Vec::new();
    let have_containerd = Command::new("containerd").arg("--version").output().is_ok();
    if !have_containerd {
        println!("skipped: containerd: not installed (apt-get install containerd)");
    }
    // Interleaved, so drift on the machine hits both alike.
    for _ in 0..iters {
        let s = common::Service::start(ImageServiceConfig::default()).await;
        let sock = s
            .dir
            .path()
            .join(format!("berth-{}.sock", std::process::id()));
        berth.push(pull(&sock, &image).await.expect("berth pull").as_secs_f64());
        drop(s);
        if have_containerd {
            let c = Containerd::start(&addr).expect("starting containerd");
            // containerd's CRI plugin comes up just after the socket.
            let mut last = Err(String::new());
            for _ in 0..50 {
                last = pull(&c.sock, &image).await;
                if last.is_ok() || !last.as_ref().unwrap_err().contains("Unimplemented") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            containerd.push(last.expect("containerd pull").as_secs_f64());
        }
    }
    report("berth", berth.clone(), mb);
    if !containerd.is_empty() {
        let version = Command::new("containerd")
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .nth(2)
                    .unwrap_or("?")
                    .to_string()
            })
            .unwrap_or_default();
        report(
            &format!("containerd {version} (CRI)"),
            containerd.clone(),
            mb,
        );
        let med = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "berth throughput / containerd throughput: {:.2}x (medians)",
            med(containerd) / med(berth)
        );
    }
}
