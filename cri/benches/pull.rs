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

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_cri::image::service::ImageServiceConfig;
use berth_cri::proto::image_service_client::ImageServiceClient;
use berth_cri::proto::{PullImageRequest, RemoveImageRequest};

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
            let cdir = tempfile::tempdir().expect("a directory for containerd");
            let c = berth_e2e::containerd::Containerd::start(cdir.path(), &addr, None)
                .expect("starting containerd");
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
