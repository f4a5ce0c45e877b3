//! Container lifecycle benchmark (reported, not a timed test).
//!
//! N containers one after another, each running `/bin/true` in new mnt, uts,
//! ipc, pid and net namespaces — create, run, wait, destroy — timed for
//! berth-core (without and with a cgroup), and in the same run, on the same
//! busybox rootfs as an OCI bundle, for `runc run` and `crun run` when they
//! are installed. Prints medians and spread; writes JSON to
//! `target/bench-lifecycle.json`.
//!
//! `cargo bench -p berth-core --bench lifecycle` runs 100 iterations; under
//! `cargo test` (no `--bench` argument) it runs a 3-iteration smoke pass.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use berth_core::config::{CgroupConfig, Resources};
use berth_core::{Config, Container, Process};

fn main() {
    berth_core::init::run_if_requested();
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 100 } else { 3 };
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: lifecycle benchmark: needs root");
        return;
    }
    if berth_e2e::busybox().is_none() {
        println!("skipped: lifecycle benchmark: needs busybox-static");
        return;
    }
    let work = std::env::temp_dir().join(format!("berth-bench-{}", std::process::id()));
    let rootfs = work.join("bundle/rootfs");
    berth_e2e::busybox_rootfs(&rootfs).expect("busybox rootfs");
    let state = work.join("state");

    let mut results: Vec<(String, Vec<f64>)> = Vec::new();
    results.push(("berth-core".into(), bench_berth(&rootfs, &state, n, false)));
    results.push((
        "berth-core + cgroup".into(),
        bench_berth(&rootfs, &state, n, true),
    ));
    for rt in ["runc", "crun"] {
        if rt == "crun" {
            hide_hybrid_cgroup2();
        }
        match bench_oci(rt, &work, n) {
            Ok(t) => results.push((format!("{rt} run"), t)),
            Err(why) => println!("skipped: {rt}: {why}"),
        }
    }

    println!("\n{n} containers one after another, /bin/true in new mnt/uts/ipc/pid/net namespaces (ms per container)");
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "runtime", "median", "p10", "p90", "min", "max"
    );
    let mut json = Vec::new();
    for (name, t) in &results {
        let s = Stats::of(t);
        println!(
            "{:<22} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            name, s.median, s.p10, s.p90, s.min, s.max
        );
        json.push(format!(
            "{{\"runtime\":\"{name}\",\"n\":{},\"median_ms\":{:.3},\"p10_ms\":{:.3},\"p90_ms\":{:.3},\"min_ms\":{:.3},\"max_ms\":{:.3}}}",
            t.len(), s.median, s.p10, s.p90, s.min, s.max
        ));
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-lifecycle.json");
    let _ = std::fs::write(&out, format!("[{}]\n", json.join(",")));
    let _ = std::fs::remove_dir_all(&work);
}

/// crun 1.8 refuses a hybrid cgroup layout ("drop all controllers from
/// cgroupv2"), which this kind of machine has (hugetlb on the v2 mount). In a
/// private mount namespace of this (single-threaded) process, hide the v2
/// mount; the host's mounts are untouched. Runs last, after berth and runc.
fn hide_hybrid_cgroup2() {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if !unified.join("cgroup.controllers").exists() {
        return;
    }
    let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_ok()
        && nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .is_ok()
        && nix::mount::umount2(unified, nix::mount::MntFlags::MNT_DETACH).is_ok();
    if !ok {
        println!("note: could not hide the hybrid cgroup v2 mount for crun");
    }
}

struct Stats {
    median: f64,
    p10: f64,
    p90: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(t: &[f64]) -> Self {
        let mut v = t.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Stats {
            median: q(0.5),
            p10: q(0.1),
            p90: q(0.9),
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

fn bench_berth(rootfs: &Path, state: &Path, n: usize, cgroup: bool) -> Vec<f64> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let mut config = Config::new(rootfs);
        config.hostname = Some("bench".into());
        if cgroup {
            config.cgroup = Some(CgroupConfig {
                path: format!("berth-bench/c{i}").into(),
                driver: Default::default(),
                resources: Resources {
                    pids_limit: Some(100),
                    ..Default::default()
                },
            });
        }
        let t = Instant::now();
        let mut c = Container::create(state, &format!("b{i}"), config).expect("create");
        let h = c.run(Process::new(["/bin/true"])).expect("run");
        assert!(h.wait().expect("wait").success());
        c.destroy().expect("destroy");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    if cgroup {
        for ctrl in ["cpu", "cpuacct", "memory", "pids", "freezer", "blkio"] {
            let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(ctrl).join("berth-bench"));
        }
    }
    times
}

/// `RT run` on an OCI bundle made with `RT spec`, pointed at the same rootfs.
fn bench_oci(rt: &str, work: &Path, n: usize) -> Result<Vec<f64>, String> {
    let bundle = work.join(format!("bundle-{rt}"));
    std::fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
    let spec = Command::new(rt)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .map_err(|e| format!("not installed ({e})"))?;
    if !spec.success() {
        return Err(format!("{rt} spec failed"));
    }
    let path = bundle.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    cfg["root"]["path"] =
        serde_json::Value::String(work.join("bundle/rootfs").to_string_lossy().into_owned());
    cfg["root"]["readonly"] = false.into();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
    cfg["hostname"] = "bench".into();
    // Same namespaces as berth: mnt, uts, ipc, pid, net (drop cgroup/user if present).
    cfg["linux"]["namespaces"] = serde_json::json!([
        {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
    ]);
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).map_err(|e| e.to_string())?;
    let root = work.join(format!("{rt}-root"));
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let out = Command::new(rt)
            .arg("--root")
            .arg(&root)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("{rt}-bench-{}-{i}", std::process::id()))
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        if !out.status.success() {
            return Err(format!(
                "{rt} run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(times)
}
