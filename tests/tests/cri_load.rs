//! 100 pods, one `sleep 1000` container each, run through the whole
//! lifecycle in parallel (RunPodSandbox, CreateContainer, StartContainer,
//! StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox) over a
//! few gRPC channels; every call must succeed, and afterwards the daemon
//! must have leaked nothing: no mounts under the test's directory, no
//! container cgroups, no monitor or container processes, no zombie
//! children, and its open fds back to where they were.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_cri::proto::runtime_service_client::RuntimeServiceClient;
use berth_cri::proto::{self, ContainerMetadata, ImageSpec, PodSandboxMetadata};
use tokio::task::JoinSet;

mod common;
use common::*;

const PODS: usize = 100;
/// gRPC channels (HTTP/2 connections) the calls are spread over.
const CHANNELS: usize = 4;
/// Open fds the daemon may hold after the run beyond its baseline. The
/// baseline is taken after a warm-up container (so the monitor zygote and
/// anything else started on first use is in it) with all `CHANNELS`
/// connections open, so nothing per pod or per container may remain
/// (observed: exactly the baseline). The slack covers a few fds that are
/// not per pod but can legitimately differ: a monitor zygote restarted
/// after dying (its socket), a log file reopened, a connection the client
/// re-established. A per-pod or per-container leak shows as at least
/// `PODS` fds, far above it.
const FD_SLACK: usize = 4;

fn pod_config_n(dir: &Path, i: usize) -> proto::PodSandboxConfig {
    let mut p = pod_config(dir);
    p.metadata = Some(PodSandboxMetadata {
        name: format!("load-{i}"),
        uid: format!("uid-load-{i}"),
        namespace: "default".into(),
        attempt: 0,
    });
    p.log_directory = dir
        .join(format!("logs/load-{i}"))
        .to_string_lossy()
        .into_owned();
    p
}

fn container_config(image: &str) -> proto::ContainerConfig {
    proto::ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "sleeper".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "1000".into()],
        log_path: "sleeper/0.log".into(),
        ..Default::default()
    }
}

/// Runs `f(i, client)` for every pod as its own tokio task, clients taken
/// round-robin from `clients`; returns the results in pod order and prints
/// the phase's wall time.
async fn phase<T, F, Fut>(name: &str, clients: &[Rt], f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, Rt) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>> + Send + 'static,
{
    let t = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..PODS {
        let fut = f(i, clients[i % clients.len()].clone());
        set.spawn(async move { (i, fut.await) });
    }
    let mut out: Vec<Option<T>> = (0..PODS).map(|_| None).collect();
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        let (i, r) = r.expect("task panicked");
        match r {
            Ok(v) => out[i] = Some(v),
            Err(e) => errors.push(format!("pod {i}: {e:?}")),
        }
    }
    println!(
        "phase {name:<16} {PODS} calls in {:>8.3} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        errors.is_empty(),
        "{name}: {} failed: {errors:#?}",
        errors.len()
    );
    out.into_iter().map(Option::unwrap).collect()
}

/// Mount points under `dir` in a mountinfo file.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string(mountinfo)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&*dir))
        .map(str::to_string)
        .collect()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// (pid, state, ppid) from /proc/<pid>/stat (the comm may hold spaces and
/// parentheses: the fields start after the last `)`).
fn stat(pid: u32) -> Option<(u32, char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((pid, state, ppid))
}

fn zombie_children(parent: u32) -> Vec<u32> {
    pids()
        .filter_map(stat)
        .filter(|&(_, state, ppid)| ppid == parent && state == 'Z')
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Live (not zombie) children of `parent`.
fn children(parent: u32) -> BTreeSet<u32> {
    pids()
        .filter_map(stat)
        .filter(|&(_, state, ppid)| ppid == parent && state != 'Z')
        .map(|(pid, _, _)| pid)
        .collect()
}

/// The test's own monitors (their command lines name the test's directory;
/// the daemon's `helpers`, such as the monitor zygote whose command line
/// forked monitors share, excepted) and container processes (in the cgroup
/// of one of the containers `ids`; their root, in a mount namespace of
/// their own, says nothing here).
fn leftover_processes(dir: &Path, helpers: &BTreeSet<u32>, ids: &[String]) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    pids()
        .filter(|pid| !helpers.contains(pid))
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            let monitor = cmdline.contains("__berth_monitor") && cmdline.contains(&needle);
            let contained = cgroups
                .lines()
                .any(|l| ids.iter().any(|id| l.ends_with(&format!("/{id}"))));
            (monitor || contained).then(|| format!("{pid} {cmdline}"))
        })
        .collect()
}

/// Removes what a failed run can leave of the test's containers that
/// `cleanup_dir` cannot find any more (it looks for containers through
/// their metadata, gone once RemoveContainer succeeded): their cgroups,
/// after killing what is still in them, by PID.
struct CgroupGuard(Vec<String>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        berth_e2e::daemon::remove_container_cgroups(&self.0);
    }
}

/// Polls `f` until it returns an empty list (5 s at most); the last list.
async fn settle<T>(f: impl Fn() -> Vec<T>) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = f();
        if v.is_empty() || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_pods_in_parallel_leak_nothing() {
    let Some(mut env) = env("a_hundred_pods_in_parallel_leak_nothing").await else {
        return;
    };
    let dir = env.dir.path().to_path_buf();
    let daemon = env.daemon.child.id();
    // Warm-up: one container through its lifecycle in the shared pod, so
    // what the daemon starts on first use (its monitor zygote, caches) is
    // in the baseline; then the shared pod goes, so the baseline has no pod.
    let warm = {
        let cfg = container(&env, "warm-up", &["sleep", "1000"], &[]);
        create(&mut env, cfg).await.unwrap()
    };
    start(&mut env.rt, &warm).await.unwrap();
    env.rt
        .stop_container(proto::StopContainerRequest {
            container_id: warm.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    env.rt
        .remove_container(proto::RemoveContainerRequest {
            container_id: warm.clone(),
        })
        .await
        .unwrap();
    env.rt
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: env.pod.clone(),
        })
        .await
        .unwrap();
    let mut clients = vec![env.rt.clone()];
    for _ in 1..CHANNELS {
        clients.push(RuntimeServiceClient::new(env.daemon.channel().await));
    }
    // Every connection carries a call before the baseline.
    for c in &mut clients {
        c.version(proto::VersionRequest::default()).await.unwrap();
    }
    let mountinfos = [
        "/proc/self/mountinfo".to_string(),
        format!("/proc/{daemon}/mountinfo"),
    ];
    for m in &mountinfos {
        assert_eq!(mounts_under(m, &dir), Vec::<String>::new(), "{m} before");
    }
    // The daemon's own long-lived helpers (the monitor zygote), if any.
    let helpers = settle(|| zombie_children(daemon)).await;
    assert!(helpers.is_empty(), "zombies before: {helpers:?}");
    let helpers = children(daemon);
    println!("daemon pid {daemon}, its helper processes {helpers:?}");
    let fds_before = fd_count(daemon);
    println!("daemon pid {daemon}: {fds_before} fds before");

    let t = Instant::now();
    let pods = phase("RunPodSandbox", &clients, |i, mut rt| {
        let config = pod_config_n(&dir, i);
        async move {
            rt.run_pod_sandbox(proto::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
        }
    })
    .await;
    let ids = phase("CreateContainer", &clients, |i, mut rt| {
        let req = proto::CreateContainerRequest {
            pod_sandbox_id: pods[i].clone(),
            config: Some(container_config(&env.image)),
            sandbox_config: Some(pod_config_n(&dir, i)),
        };
        async move {
            rt.create_container(req)
                .await
                .map(|r| r.into_inner().container_id)
        }
    })
    .await;
    let mut all_ids = ids.clone();
    all_ids.push(warm);
    let _guard = CgroupGuard(all_ids.clone());
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        PODS,
        "distinct container ids"
    );
    phase("StartContainer", &clients, |i, mut rt| {
        let id = ids[i].clone();
        async move { start(&mut rt, &id).await }
    })
    .await;
    let running = env
        .rt
        .list_containers(proto::ListContainersRequest {
            filter: Some(proto::ContainerFilter {
                state: Some(proto::ContainerStateValue {
                    state: proto::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(running.len(), PODS, "all running");
    // The leak checks below look in the right places: while running, every
    // pod has mounts there, every container a cgroup and a process.
    let mounts = mounts_under(&mountinfos[0], &dir).len();
    let cgroups = berth_e2e::daemon::container_cgroup_dirs(&ids)
        .iter()
        .filter(|p| p.exists())
        .count();
    let procs = leftover_processes(&dir, &helpers, &ids).len();
    println!(
        "with {PODS} running containers: daemon {} fds, {mounts} mounts, \
         {cgroups} cgroup dirs, {procs} monitor and container processes",
        fd_count(daemon)
    );
    assert!(mounts >= PODS && cgroups >= PODS && procs >= 2 * PODS);
    // `sleep` as pid 1 ignores SIGTERM: 1 s, then SIGKILL, all at once.
    phase("StopContainer", &clients, |i, mut rt| {
        let id = ids[i].clone();
        async move {
            rt.stop_container(proto::StopContainerRequest {
                container_id: id.clone(),
                timeout: 1,
            })
            .await?;
            let st = status(&mut rt, &id).await;
            assert_eq!(
                (st.state, st.exit_code),
                (proto::ContainerState::ContainerExited as i32, 137),
                "{id}"
            );
            Ok(())
        }
    })
    .await;
    phase("RemoveContainer", &clients, |i, mut rt| {
        let id = ids[i].clone();
        async move {
            rt.remove_container(proto::RemoveContainerRequest { container_id: id })
                .await
                .map(drop)
        }
    })
    .await;
    phase("StopPodSandbox", &clients, |i, mut rt| {
        let id = pods[i].clone();
        async move {
            rt.stop_pod_sandbox(proto::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
                .map(drop)
        }
    })
    .await;
    phase("RemovePodSandbox", &clients, |i, mut rt| {
        let id = pods[i].clone();
        async move {
            rt.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .map(drop)
        }
    })
    .await;
    println!("all phases: {:.3} s", t.elapsed().as_secs_f64());

    // Nothing listed.
    let left = env
        .rt
        .list_containers(proto::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "containers left: {left:?}");
    let left = env
        .rt
        .list_pod_sandbox(proto::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(left.is_empty(), "pods left: {left:?}");

    // No mounts (pinned namespaces, /dev/shm, rootfs overlays), in the
    // test's mount namespace or the daemon's.
    for m in &mountinfos {
        let left = settle(|| mounts_under(m, &dir)).await;
        assert!(left.is_empty(), "{m}: mounts left: {left:#?}");
    }
    // No container cgroups.
    let left = settle(|| {
        berth_e2e::daemon::container_cgroup_dirs(&all_ids)
            .into_iter()
            .filter(|p| p.exists())
            .collect()
    })
    .await;
    assert!(left.is_empty(), "cgroups left: {left:#?}");
    // No monitors, no container processes.
    let left = settle(|| leftover_processes(&dir, &helpers, &all_ids)).await;
    assert!(left.is_empty(), "processes left: {left:#?}");
    // No zombie children of the daemon (or of its helpers), and no other
    // children than its helpers.
    let left = settle(|| {
        std::iter::once(daemon)
            .chain(helpers.iter().copied())
            .flat_map(zombie_children)
            .collect()
    })
    .await;
    assert!(left.is_empty(), "zombie children of the daemon: {left:?}");
    assert_eq!(children(daemon), helpers, "the daemon's children");
    // No state or rootfs directories.
    for sub in [
        "state/containers",
        "state/runtime",
        "state/pods",
        "root/containers",
    ] {
        let p = dir.join(sub);
        // runtime-core's ledger of parent cgroups may stay, with no entry.
        let ledger = p.join(".cgroup-parents");
        assert_eq!(std::fs::read_to_string(&ledger).unwrap_or_default(), "");
        let entries: Vec<_> = std::fs::read_dir(&p)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path() != ledger)
            .map(|e| e.file_name())
            .collect();
        assert!(entries.is_empty(), "{} not empty: {entries:?}", p.display());
    }
    // The daemon's fds back to the baseline.
    let deadline = Instant::now() + Duration::from_secs(5);
    let fds_after = loop {
        let n = fd_count(daemon);
        if n <= fds_before + FD_SLACK || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("daemon: {fds_after} fds after ({fds_before} before)");
    assert!(
        fds_after <= fds_before + FD_SLACK,
        "daemon fds: {fds_before} before, {fds_after} after: {:#?}",
        std::fs::read_dir(format!("/proc/{daemon}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .collect::<Vec<_>>()
    );
}
