//! CRI lifecycle benchmark: what kubelet waits for, measured at the CRI call.
//!
//! `cargo bench -p berth-e2e --bench cri_lifecycle [-- --socket PATH --image REF]`
//! drives a CRI runtime over its unix socket. Without `--socket` it starts
//! the workspace's `berth serve` on private directories and a loopback
//! registry with a busybox image; with `--socket` (and `--image`, already
//! pullable by that runtime) it measures any CRI runtime the same way.
//! Reports median, min and max (ms) over N runs of: RunPodSandbox;
//! CreateContainer+StartContainer in a running pod; the full pod cycle
//! (run, create, start, stop, remove); ExecSync of `true`; 50 pods started
//! one after another and all at once; and the PSS/RSS of the daemon idle and
//! per running pod (its monitors included). Figures also go to
//! `target/bench-cri-lifecycle.json`. Under `cargo test` it is a smoke run.
//!
//! `-- --containerd` runs the same suite against berth and against Debian's
//! containerd (1.6 + runc, started here on a side socket with its own
//! directories, the local registry as mirror and a busybox `sleep` image as
//! its pause image), both with host-network pods, and prints the ratios.
//! `-- --cni` gives pods a real network instead: Debian's CNI plugins
//! (bridge + host-local + portmap) on a private /24 and bridge per runtime
//! (containerd too, with `--containerd`), so RunPodSandbox includes CNI ADD
//! and teardown includes DEL. The bridges are deleted at the end.
//! `-- --iters N --pods N --images N` sets the runs per figure, the pods
//! started together and the images pulled (each with a layer of its own)
//! before the daemon's idle memory after all that work is measured
//! (defaults 20, 50 and 20; 2, 3 and 2 for the smoke run).
//! `-- --handler runc|crun|runc-shim` runs berth's pods under that
//! RuntimeClass handler (kind "oci": Debian's /usr/sbin/runc or
//! /usr/bin/crun; kind "shim-v2": containerd-shim-runc-v2), so the figures
//! show what an external runtime costs against the embedded core.
//! `BENCH_DUMP_ANON=1` also lists the idle daemon's mappings over 256 KiB
//! resident (where its memory is).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_cri::proto::image_service_client::ImageServiceClient;
use berth_cri::proto::runtime_service_client::RuntimeServiceClient;
use berth_cri::proto::{self, ContainerMetadata, ImageSpec, PodSandboxMetadata};
use berth_e2e::daemon::Daemon;
use berth_e2e::registry::Registry;
use tonic::transport::Channel;

type Rt = RuntimeServiceClient<Channel>;

/// A CNI config in `conf_dir`: bridge `bridge` on 10.251.`net`.0/24 with
/// host-local (its data in `conf_dir/../ipam`), then portmap.
fn write_cni_config(conf_dir: &Path, bridge: &str, net: u8) {
    std::fs::create_dir_all(conf_dir).unwrap();
    let ipam = conf_dir.parent().unwrap().join("ipam");
    let list = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "berth-bench",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("10.251.{net}.0/24")}]],
                      "dataDir": ipam}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    std::fs::write(conf_dir.join("10-bench.conflist"), list.to_string()).unwrap();
}

/// Deletes a bridge the benchmark's CNI config made (by its name).
fn delete_bridge(bridge: &str) {
    if Path::new("/sys/class/net").join(bridge).exists() {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", bridge])
            .status();
    }
}

/// Pods use the host's network (`--containerd`: containerd without a CNI
/// plugin can only run those, so both runtimes get the same pods).
static HOST_NETWORK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The RuntimeClass handler of berth's pods (`--handler`; "": the default).
static HANDLER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// berth's configuration file with the `oci` handlers `--handler` names.
const HANDLERS_TOML: &str =
    "[runtime.handlers.runc]\nkind = \"oci\"\npath = \"/usr/sbin/runc\"\n\n\
                             [runtime.handlers.crun]\nkind = \"oci\"\npath = \"/usr/bin/crun\"\n\n\
                             [runtime.handlers.runc-shim]\nkind = \"shim-v2\"\n\
                             path = \"/usr/bin/containerd-shim-runc-v2\"\n";

fn pod_config(name: &str, logs: &Path) -> proto::PodSandboxConfig {
    let network = if HOST_NETWORK.load(std::sync::atomic::Ordering::Relaxed) {
        proto::NamespaceMode::Node
    } else {
        proto::NamespaceMode::Pod
    };
    proto::PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        // A host-network pod keeps the node's hostname (runc refuses one
        // without a UTS namespace of its own).
        hostname: if network == proto::NamespaceMode::Node {
            String::new()
        } else {
            name.into()
        },
        log_directory: logs.join(name).to_string_lossy().into_owned(),
        linux: Some(proto::LinuxPodSandboxConfig {
            security_context: Some(proto::LinuxSandboxSecurityContext {
                namespace_options: Some(proto::NamespaceOption {
                    network: network as i32,
                    pid: proto::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(image: &str) -> proto::ContainerConfig {
    command_config(image, "c", &["sleep", "3600"])
}

/// A container `name` running `cmd`.
fn command_config(image: &str, name: &str, cmd: &[&str]) -> proto::ContainerConfig {
    proto::ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(proto::LinuxContainerConfig {
            security_context: Some(proto::LinuxContainerSecurityContext {
                namespace_options: Some(proto::NamespaceOption {
                    pid: proto::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Pod {
    id: String,
    container: Option<String>,
}

async fn run_pod(rt: &mut Rt, name: &str, logs: &Path) -> String {
    rt.run_pod_sandbox(proto::RunPodSandboxRequest {
        config: Some(pod_config(name, logs)),
        runtime_handler: HANDLER.get().cloned().unwrap_or_default(),
    })
    .await
    .expect("RunPodSandbox")
    .into_inner()
    .pod_sandbox_id
}

/// Creates and starts a container; returns its id and how long
/// StartContainer alone took.
async fn create_start_timed(
    rt: &mut Rt,
    pod: &str,
    name: &str,
    logs: &Path,
    image: &str,
) -> (String, Duration) {
    let id = rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(container_config(image)),
            sandbox_config: Some(pod_config(name, logs)),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    let t = Instant::now();
    rt.start_container(proto::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    (id, t.elapsed())
}

async fn create_start(rt: &mut Rt, pod: &str, name: &str, logs: &Path, image: &str) -> String {
    create_start_timed(rt, pod, name, logs, image).await.0
}

async fn teardown(rt: &mut Rt, pod: &Pod) {
    if let Some(c) = &pod.container {
        rt.stop_container(proto::StopContainerRequest {
            container_id: c.clone(),
            timeout: 0,
        })
        .await
        .expect("StopContainer");
        rt.remove_container(proto::RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .expect("RemoveContainer");
    }
    rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await
    .expect("RemovePodSandbox");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// (PSS, RSS) in KiB of a process, from smaps_rollup.
fn mem(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Rss:"))
}

/// Where a process's memory is (KiB of the `fields` per mapping name: the
/// binary, `[heap]`, `[stack]`, `anon`), largest first.
fn by_mapping(pid: i32, fields: &[&str]) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by: HashMap<String, u64> = HashMap::new();
    let mut cur = String::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // address perms offset dev inode [path]
            let path = f.nth(4).unwrap_or("anon");
            cur = path.rsplit('/').next().unwrap_or(path).to_string();
        } else if fields.contains(&first) {
            *by.entry(cur.clone()).or_default() +=
                f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    let mut v: Vec<_> = by.into_iter().filter(|(_, k)| *k > 0).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}

/// Pids of processes whose command line contains `needle`.
fn pids_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A runtime under test.
struct Target {
    name: &'static str,
    sock: PathBuf,
    image: String,
    /// The daemon, for its memory.
    daemon_pid: Option<i32>,
    /// Its per-pod helper processes (berth: monitors and their zygote;
    /// containerd: shims and pause processes), found by command line.
    helpers: fn(&Path) -> Vec<i32>,
    /// Images pulled at the end, before the daemon's memory after the work
    /// is measured.
    extra_images: Vec<String>,
}

/// What one suite run measured.
#[derive(Default)]
struct Results {
    /// (name, runs in ms).
    timings: Vec<(&'static str, Vec<f64>)>,
    sequential: f64,
    parallel: f64,
    /// Daemon idle (PSS, RSS) KiB.
    idle: Option<(u64, u64)>,
    /// Per running pod: daemon growth + helpers (PSS, RSS) KiB, helpers' PSS.
    per_pod: Option<(f64, f64, f64)>,
    /// Daemon idle (PSS, RSS) KiB after all the pods and the extra pulls.
    after_work: Option<(u64, u64)>,
    /// Pulls and pods behind `after_work`.
    work: (usize, usize),
}

/// Pulls `image` through the CRI image service on `ch`.
async fn pull(ch: &tonic::transport::Channel, image: &str) {
    ImageServiceClient::new(ch.clone())
        .pull_image(proto::PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("PullImage");
}

/// The six files (or anonymous memory) with most of `pid` resident.
fn print_resident(pid: i32, what: &str) {
    let top: Vec<String> = by_mapping(pid, &["Rss:"])
        .into_iter()
        .take(6)
        .map(|(k, v)| format!("{k} {v} KiB"))
        .collect();
    println!("{what}: {}", top.join(", "));
}

/// With `BENCH_DUMP_ANON=1`: the daemon's mappings over 256 KiB resident.
fn dump_mappings(pid: i32) {
    if std::env::var_os("BENCH_DUMP_ANON").is_none() {
        return;
    }
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut hdr = String::new();
    for line in smaps.lines() {
        if line.split_whitespace().next().is_some_and(|f| {
            f.contains('-') && f.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        }) {
            hdr = line.to_string();
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kb: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            if kb >= 256 {
                println!("  {kb:>6} KiB  {hdr}");
            }
        }
    }
}

fn berth_helpers(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    pids_with("__berth_monitor")
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

fn containerd_helpers(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut v: Vec<i32> = pids_with("containerd-shim-runc-v2")
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect();
    v.extend(pids_with(PAUSE_ARG));
    v
}

/// The pause image's argument, to find its processes.
const PAUSE_ARG: &str = "2147483646";

async fn suite(
    t: &Target,
    iters: usize,
    pods_n: usize,
    logs: &Path,
    dir: &Path,
    settle: bool,
) -> Results {
    let ch = berth_e2e::cri::wait_and_connect(&t.sock, Duration::from_secs(30))
        .await
        .unwrap();
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let image = t.image.clone();
    pull(&ch, &image).await;
    // Idle: once the pull's worker threads have ended (tokio keeps idle
    // blocking threads 10 s); the figure right after the pull too.
    if let Some(pid) = t.daemon_pid {
        let (p, r) = mem(pid);
        println!(
            "{}: daemon right after the pull: PSS {:.1} MiB, RSS {:.1} MiB",
            t.name,
            p as f64 / 1024.0,
            r as f64 / 1024.0
        );
        if settle {
            tokio::time::sleep(Duration::from_secs(12)).await;
        }
    }
    let mut res = Results {
        idle: t.daemon_pid.map(mem),
        ..Default::default()
    };
    if let Some(pid) = t.daemon_pid {
        dump_mappings(pid);
        print_resident(pid, &format!("{}: idle daemon's resident memory", t.name));
    }

    let mut run_sandbox = Vec::new();
    let mut create_start_ms = Vec::new();
    let mut start_ms = Vec::new();
    let mut cycle = Vec::new();
    let mut exec = Vec::new();
    let mut stop_term = Vec::new();
    for i in 0..iters {
        let t0 = Instant::now();
        let pod = run_pod(&mut rt, &format!("p{i}"), logs).await;
        run_sandbox.push(ms(t0.elapsed()));
        let t2 = Instant::now();
        let (c, started) = create_start_timed(&mut rt, &pod, &format!("p{i}"), logs, &image).await;
        create_start_ms.push(ms(t2.elapsed()));
        start_ms.push(ms(started));
        let t3 = Instant::now();
        let r = rt
            .exec_sync(proto::ExecSyncRequest {
                container_id: c.clone(),
                cmd: vec!["true".into()],
                timeout: 10,
            })
            .await
            .expect("ExecSync")
            .into_inner();
        assert_eq!(r.exit_code, 0);
        exec.push(ms(t3.elapsed()));
        // StopContainer of a container that exits on SIGTERM at once (its
        // shell's `wait` returns to the trap): the stop's own latency.
        let term = rt
            .create_container(proto::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(command_config(
                    &image,
                    "t",
                    &["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                )),
                sandbox_config: Some(pod_config(&format!("p{i}"), logs)),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        rt.start_container(proto::StartContainerRequest {
            container_id: term.clone(),
        })
        .await
        .expect("StartContainer");
        // The shell has set its trap (a signal before that would kill it
        // the default way, just as fast).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t4 = Instant::now();
        rt.stop_container(proto::StopContainerRequest {
            container_id: term.clone(),
            timeout: 10,
        })
        .await
        .expect("StopContainer");
        stop_term.push(ms(t4.elapsed()));
        rt.remove_container(proto::RemoveContainerRequest { container_id: term })
            .await
            .expect("RemoveContainer");
        let side = ms(t3.elapsed());
        teardown(
            &mut rt,
            &Pod {
                id: pod,
                container: Some(c),
            },
        )
        .await;
        cycle.push(ms(t0.elapsed()) - side);
    }
    res.timings = vec![
        ("RunPodSandbox", run_sandbox),
        ("CreateContainer+StartContainer", create_start_ms),
        ("StartContainer", start_ms),
        ("pod cycle (run,create,start,stop,rm)", cycle),
        ("ExecSync true", exec),
        ("StopContainer (exits on SIGTERM)", stop_term),
    ];

    // Pods one after another, then all at once; memory with all running.
    let t0 = Instant::now();
    let mut pods = Vec::new();
    for i in 0..pods_n {
        let pod = run_pod(&mut rt, &format!("s{i}"), logs).await;
        let c = create_start(&mut rt, &pod, &format!("s{i}"), logs, &image).await;
        pods.push(Pod {
            id: pod,
            container: Some(c),
        });
    }
    res.sequential = ms(t0.elapsed());
    res.per_pod = t.daemon_pid.map(|pid| {
        let (dp, dr) = mem(pid);
        let (mut hp, mut hr) = (0, 0);
        for h in (t.helpers)(dir) {
            let (p, r) = mem(h);
            hp += p;
            hr += r;
        }
        let monitor = pids_with("__berth_monitor").into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "berth-monitor")
        });
        if let Some(m) = monitor {
            let top: Vec<String> = by_mapping(m, &["Private_Clean:", "Private_Dirty:"])
                .into_iter()
                .take(6)
                .map(|(k, v)| format!("{k} {v} KiB"))
                .collect();
            println!(
                "{}: one monitor's private memory: {}",
                t.name,
                top.join(", ")
            );
        }
        let (ip, ir) = res.idle.unwrap_or((0, 0));
        (
            (dp.saturating_sub(ip) + hp) as f64 / pods_n as f64,
            (dr.saturating_sub(ir) + hr) as f64 / pods_n as f64,
            hp as f64 / pods_n as f64,
        )
    });
    for p in &pods {
        teardown(&mut rt, p).await;
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..pods_n)
        .map(|i| {
            let mut rt = rt.clone();
            let (logs, image) = (logs.to_path_buf(), image.clone());
            tokio::spawn(async move {
                let pod = run_pod(&mut rt, &format!("q{i}"), &logs).await;
                let c = create_start(&mut rt, &pod, &format!("q{i}"), &logs, &image).await;
                Pod {
                    id: pod,
                    container: Some(c),
                }
            })
        })
        .collect();
    let mut pods = Vec::new();
    for task in tasks {
        pods.push(task.await.unwrap());
    }
    res.parallel = ms(t0.elapsed());
    for p in &pods {
        teardown(&mut rt, p).await;
    }
    // The pods' share of the growth, apart from the pulls'.
    if let Some(pid) = t.daemon_pid {
        let (p, r) = mem(pid);
        println!(
            "{}: daemon after the pods, before the extra pulls: PSS {:.1} MiB, RSS {:.1} MiB",
            t.name,
            p as f64 / 1024.0,
            r as f64 / 1024.0
        );
        print_resident(pid, &format!("{}: its resident memory then", t.name));
    }
    // The daemon once the work is done: every pod removed, the extra images
    // pulled (and kept), its idle threads gone.
    // Each is a new image whose only new layer is small: the pull's fixed
    // cost (berth: the pull helper's start included).
    let mut pulls = Vec::new();
    for image in &t.extra_images {
        let t0 = Instant::now();
        pull(&ch, image).await;
        pulls.push(ms(t0.elapsed()));
    }
    if !pulls.is_empty() {
        res.timings
            .push(("PullImage (new image, one small new layer)", pulls));
    }
    res.work = (t.extra_images.len() + 1, iters + 2 * pods_n);
    if let Some(pid) = t.daemon_pid {
        if settle {
            tokio::time::sleep(Duration::from_secs(12)).await;
        }
        res.after_work = Some(mem(pid));
        dump_mappings(pid);
        print_resident(
            pid,
            &format!("{}: daemon's resident memory after the work", t.name),
        );
    }
    res
}

fn report(name: &str, iters: usize, pods_n: usize, r: &Results) -> serde_json::Value {
    println!(
        "{name}: CRI lifecycle ({iters} runs; {} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!("{:<40} {:>9} {:>9} {:>9}", "ms", "median", "min", "max");
    let mut json = serde_json::Map::new();
    for (n, v) in &r.timings {
        let (m, lo, hi) = stats(v.clone());
        println!("{n:<40} {m:>9.2} {lo:>9.2} {hi:>9.2}");
        json.insert(
            n.to_string(),
            serde_json::json!({"median_ms": m, "min_ms": lo, "max_ms": hi}),
        );
    }
    println!(
        "{pods_n} pods+containers one after another: {:.0} ms ({:.1} ms each)",
        r.sequential,
        r.sequential / pods_n as f64
    );
    println!("{pods_n} pods+containers at once: {:.0} ms", r.parallel);
    json.insert(
        "sequential_total_ms".into(),
        serde_json::json!(r.sequential),
    );
    json.insert("parallel_total_ms".into(), serde_json::json!(r.parallel));
    if let (Some((ip, ir)), Some((pp, pr, hp))) = (r.idle, r.per_pod) {
        println!(
            "daemon idle: PSS {:.1} MiB, RSS {:.1} MiB",
            ip as f64 / 1024.0,
            ir as f64 / 1024.0
        );
        println!(
            "per running pod (daemon growth + helpers): PSS {:.2} MiB, RSS {:.2} MiB (helpers alone PSS {:.2} MiB)",
            pp / 1024.0,
            pr / 1024.0,
            hp / 1024.0
        );
        json.insert(
            "daemon_idle_kib".into(),
            serde_json::json!({"pss": ip, "rss": ir}),
        );
        json.insert(
            "per_pod_kib".into(),
            serde_json::json!({"pss": pp, "rss": pr, "helpers_pss": hp}),
        );
    }
    if let Some((pss, rss)) = r.after_work {
        let (pulls, pods) = r.work;
        println!(
            "daemon idle after {pulls} pulls and {pods} pods run and removed: PSS {:.1} MiB, RSS {:.1} MiB",
            pss as f64 / 1024.0,
            rss as f64 / 1024.0
        );
        json.insert(
            "daemon_after_work_kib".into(),
            serde_json::json!({"pss": pss, "rss": rss, "pulls": pulls, "pods": pods}),
        );
    }
    serde_json::Value::Object(json)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let compare = std::env::args().any(|a| a == "--containerd");
    let cni = std::env::args().any(|a| a == "--cni");
    if cni
        && !Path::new(berth_e2e::daemon::DEBIAN_CNI_BIN)
            .join("bridge")
            .exists()
    {
        println!("skipped: cri_lifecycle --cni: no CNI plugins (apt install containernetworking-plugins)");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: cri_lifecycle: needs root");
        return;
    }
    // `--iters N` and `--pods N` shorten (or lengthen) a run.
    let count =
        |name: &str, default: usize| arg(name).and_then(|n| n.parse().ok()).unwrap_or(default);
    let iters = count("--iters", if full { 20 } else { 2 });
    let pods_n = count("--pods", if full { 50 } else { 3 });
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let mut out = serde_json::Map::new();
    if let Some(s) = arg("--socket") {
        let t = Target {
            name: "runtime",
            sock: s.into(),
            image: arg("--image").expect("--image REF (pullable by that runtime)"),
            daemon_pid: None,
            helpers: |_| Vec::new(),
            extra_images: Vec::new(),
        };
        let r = suite(&t, iters, pods_n, &logs, dir.path(), full).await;
        out.insert(t.name.into(), report(t.name, iters, pods_n, &r));
    } else {
        let Some(berth) = berth_e2e::berth_binary("cri_lifecycle") else {
            return;
        };
        let reg = match Registry::start() {
            Ok(r) => r,
            Err(e) => {
                println!("skipped: cri_lifecycle: {e}");
                return;
            }
        };
        berth_e2e::images::busybox_image(&reg.addr(), "bench/busybox", "v1")
            .await
            .unwrap();
        let image = format!("{}/bench/busybox:v1", reg.addr());
        // `--images N`: the pulls (one already done) before the daemon's
        // memory after the work.
        let mut extra_images = Vec::new();
        for i in 1..count("--images", if full { 20 } else { 2 }) {
            let repo = format!("bench/extra{i}");
            berth_e2e::images::busybox_with_extra(&reg.addr(), &repo, "v1", &i.to_string())
                .await
                .unwrap();
            extra_images.push(format!("{}/{repo}:v1", reg.addr()));
        }
        HOST_NETWORK.store(compare && !cni, std::sync::atomic::Ordering::Relaxed);
        let bdir = dir.path().join("berth");
        std::fs::create_dir_all(&bdir).unwrap();
        let conf = bdir.join("cni");
        let mut args = Vec::new();
        if cni {
            write_cni_config(&conf, "brt-bench-b", 200);
            args = vec!["--cni-conf-dir", conf.to_str().unwrap()];
        }
        let conf_file = bdir.join("config.toml");
        if let Some(h) = arg("--handler") {
            std::fs::write(&conf_file, HANDLERS_TOML).unwrap();
            args.extend(["--config", conf_file.to_str().unwrap()]);
            println!("berth's pods run under RuntimeClass handler {h:?}");
            HANDLER.set(h).unwrap();
        }
        // Logging as deployed (info, text): see Daemon::start_as_deployed.
        let d = Daemon::start_as_deployed(&berth, &bdir, &args);
        let t = Target {
            name: "berth",
            sock: d.sock.clone(),
            image: image.clone(),
            daemon_pid: Some(d.child.id() as i32),
            helpers: berth_helpers,
            extra_images: extra_images.clone(),
        };
        let rb = suite(&t, iters, pods_n, &logs, dir.path(), full).await;
        drop(d);
        berth_e2e::daemon::cleanup_dir(&dir.path().join("berth"));
        delete_bridge("brt-bench-b");
        out.insert("berth".into(), report("berth", iters, pods_n, &rb));
        if compare {
            let pause = format!("{}/bench/pause:v1", reg.addr());
            berth_e2e::images::pause_image(&reg.addr(), "bench/pause", "v1", PAUSE_ARG)
                .await
                .unwrap();
            let cdir = dir.path().join("containerd");
            std::fs::create_dir_all(&cdir).unwrap();
            if cni {
                // containerd's conf_dir and bin_dir (tests/src/containerd.rs).
                write_cni_config(&cdir.join("cni"), "brt-bench-c", 201);
                std::fs::create_dir_all(cdir.join("cnibin")).unwrap();
                for p in std::fs::read_dir(berth_e2e::daemon::DEBIAN_CNI_BIN)
                    .unwrap()
                    .flatten()
                {
                    let _ = std::os::unix::fs::symlink(
                        p.path(),
                        cdir.join("cnibin").join(p.file_name()),
                    );
                }
            }
            let started =
                berth_e2e::containerd::Containerd::start(&cdir, &reg.addr(), Some(&pause));
            if let Err(e) = &started {
                println!("skipped: containerd comparison: {e} (apt install containerd runc)");
            }
            if let Ok(containerd) = started {
                let t = Target {
                    name: "containerd",
                    sock: containerd.sock.clone(),
                    image,
                    daemon_pid: Some(containerd.pid()),
                    helpers: containerd_helpers,
                    extra_images,
                };
                let rc = suite(&t, iters, pods_n, &logs, dir.path(), full).await;
                drop(containerd);
                berth_e2e::daemon::cleanup_dir(&cdir);
                delete_bridge("brt-bench-c");
                out.insert(
                    "containerd".into(),
                    report("containerd", iters, pods_n, &rc),
                );
                println!("berth / containerd (medians; lower is better for berth)");
                for ((n, b), (_, c)) in rb.timings.iter().zip(&rc.timings) {
                    let (bm, cm) = (stats(b.clone()).0, stats(c.clone()).0);
                    println!("{n:<40} {bm:>9.2} {cm:>9.2} {:>8.2}x", bm / cm);
                }
                println!(
                    "{:<40} {:>9.0} {:>9.0} {:>8.2}x",
                    "50 pods one after another",
                    rb.sequential,
                    rc.sequential,
                    rb.sequential / rc.sequential
                );
                println!(
                    "{:<40} {:>9.0} {:>9.0} {:>8.2}x",
                    "50 pods at once",
                    rb.parallel,
                    rc.parallel,
                    rb.parallel / rc.parallel
                );
                if let (Some(bp), Some(cp), Some(bi), Some(ci)) =
                    (rb.per_pod, rc.per_pod, rb.idle, rc.idle)
                {
                    println!(
                        "{:<40} {:>9.2} {:>9.2} {:>8.2}x",
                        "per pod PSS MiB",
                        bp.0 / 1024.0,
                        cp.0 / 1024.0,
                        bp.0 / cp.0
                    );
                    println!(
                        "{:<40} {:>9.1} {:>9.1} {:>8.2}x",
                        "daemon idle RSS MiB",
                        bi.1 as f64 / 1024.0,
                        ci.1 as f64 / 1024.0,
                        bi.1 as f64 / ci.1 as f64
                    );
                }
            }
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-cri-lifecycle.json");
    let _ = std::fs::write(
        path,
        serde_json::to_string_pretty(&serde_json::Value::Object(out)).unwrap_or_default(),
    );
}
