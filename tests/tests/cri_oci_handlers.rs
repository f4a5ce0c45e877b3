//! RuntimeClass handlers of kind `oci`: Debian's `runc` and `crun` as two
//! handlers of one node, each running pods' containers from the bundle
//! berth writes, next to the embedded default. The same requests must give
//! the same container: user, capabilities, seccomp, no_new_privs, the
//! pod's hostname; logs, exec, a terminal, stats, update, exit codes, a
//! daemon restart and removal all go through the runtime.

mod common;

use std::path::Path;
use std::time::Duration;

use berth_cri::proto;
use common::*;
use tonic::Code;

const RUNC: &str = "/usr/sbin/runc";
const CRUN: &str = "/usr/bin/crun";

fn config() -> String {
    format!(
        "[runtime.handlers.runc]\nkind = \"oci\"\npath = \"{RUNC}\"\n\n\
         [runtime.handlers.crun]\nkind = \"oci\"\npath = \"{CRUN}\"\n"
    )
}

/// What the security context gives a process: its ids, capability sets,
/// seccomp mode and no_new_privs; the pod's hostname; the container's
/// memory cgroup.
const PROBE: &str = "id -u; id -g; grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|Seccomp|NoNewPrivs):' /proc/self/status; hostname; grep -E ':memory:|^0::' /proc/self/cgroup | head -1";

async fn run_pod_with(
    env: &mut Env,
    name: &str,
    handler: &str,
) -> (String, proto::PodSandboxConfig) {
    let mut cfg = pod_config(env.dir.path());
    cfg.metadata.as_mut().unwrap().name = name.into();
    cfg.metadata.as_mut().unwrap().uid = format!("uid-{name}");
    cfg.hostname = format!("{name}-host");
    let id = env
        .rt
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    (id, cfg)
}

async fn create_in(
    env: &mut Env,
    pod: &(String, proto::PodSandboxConfig),
    c: proto::ContainerConfig,
) -> Result<String, tonic::Status> {
    let id = env
        .rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.0.clone(),
            config: Some(c),
            sandbox_config: Some(pod.1.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    start(&mut env.rt, &id).await?;
    Ok(id)
}

fn runtime_default(c: &mut proto::ContainerConfig, uid: i64) {
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            run_as_user: Some(proto::Int64Value { value: uid }),
            seccomp: Some(proto::SecurityProfile {
                profile_type: proto::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            no_new_privs: true,
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// The log file of container `name` in `pod`'s log directory.
fn log_of(pod: &proto::PodSandboxConfig, name: &str) -> String {
    Path::new(&pod.log_directory)
        .join(format!("{name}/0.log"))
        .display()
        .to_string()
}

async fn stats_of(rt: &mut Rt, id: &str) -> proto::ContainerStats {
    rt.container_stats(proto::ContainerStatsRequest {
        container_id: id.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .stats
    .unwrap()
}

/// The runtime's own list of containers (its `--root` under the daemon's
/// state directory).
fn runtime_list(env: &Env, handler: &str, binary: &str) -> String {
    let root = env.dir.path().join("state/oci").join(handler);
    let out = std::process::Command::new(binary)
        .arg(format!("--root={}", root.display()))
        .args(["list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The embedded default's answer to the probe.
async fn embedded_probe(env: &mut Env) -> String {
    let embedded = run_pod_with(env, "embedded-pod", "").await;
    let mut c = container(env, "probe", &["sleep", "300"], &[]);
    runtime_default(&mut c, 1000);
    let id = create_in(env, &embedded, c).await.unwrap();
    let probe = sh_in(&mut env.rt, &id, PROBE).await.replace(&id, "ID");
    assert!(probe.starts_with("1000\n"), "{probe}");
    stop_and_remove(&mut env.rt, &id).await;
    probe
}

/// What every external handler must do as the embedded core does, in
/// `pod`: the probe's answer, stats and an update through its cgroup, an
/// exec's exit code and streams, logs of both streams and the exit code.
/// Returns the running probe container and the exited talker.
async fn same_as_embedded(
    env: &mut Env,
    pod: &(String, proto::PodSandboxConfig),
    handler: &str,
    embedded_probe: &str,
) -> (String, String) {
    // The same security context as the embedded container gives the same
    // process (the hostname aside: each pod has its own).
    let mut c = container(env, "probe", &["sleep", "300"], &[]);
    runtime_default(&mut c, 1000);
    let id = create_in(env, pod, c).await.unwrap();
    let probe = sh_in(&mut env.rt, &id, PROBE).await;
    assert_eq!(
        probe
            .replace(&format!("{handler}-pod-host"), "HOST")
            .replace(&id, "ID"),
        embedded_probe.replace("embedded-pod-host", "HOST"),
        "{handler}"
    );

    // Stats come from the cgroup the runtime made; an update reaches it.
    let s = stats_of(&mut env.rt, &id).await;
    assert!(
        s.memory
            .as_ref()
            .is_some_and(|m| m.working_set_bytes.is_some()),
        "{handler}: {s:?}"
    );
    env.rt
        .update_container_resources(proto::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(proto::LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let limit = sh_in(
        &mut env.rt,
        &id,
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
    )
    .await;
    assert_eq!(limit.trim(), (96u64 << 20).to_string(), "{handler}");

    // A failing exec is the program's exit code, its stderr kept.
    let r = env
        .rt
        .exec_sync(proto::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 4".into(),
            ],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.exit_code, &r.stdout[..], &r.stderr[..]),
        (4, &b"out\n"[..], &b"err\n"[..])
    );

    // Output to both streams, and the exit code, as with the embedded core.
    let c = container(
        env,
        "talker",
        &["sh", "-c", "echo hello; echo oops >&2; exit 7"],
        &[],
    );
    let talker = create_in(env, pod, c).await.unwrap();
    let st = wait_exited(&mut env.rt, &talker).await;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (7, "Error"),
        "{handler}"
    );
    let records = log_records(&log_of(&pod.1, "talker"));
    let lines: Vec<(String, String)> = records
        .iter()
        .map(|(s, _, l)| (format!("{s:?}"), l.clone()))
        .collect();
    assert!(
        lines.contains(&("Stdout".into(), "hello".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("Stderr".into(), "oops".into())),
        "{lines:?}"
    );

    // Attach: what the client writes reaches the container's stdin and
    // its echo comes back.
    // With stdin_once, the client's leaving closes the container's stdin:
    // `cat` sees the end of its input and the container exits.
    let mut c = container(env, "cat", &["sh", "-c", "cat; echo eof-seen"], &[]);
    c.stdin = true;
    c.stdin_once = true;
    let cat = create_in(env, pod, c).await.unwrap();
    attach_echo(&mut env.rt, false, &cat, "hello-attach", "hello-attach").await;
    let st = wait_exited(&mut env.rt, &cat).await;
    assert_eq!(st.exit_code, 0, "{handler}: {st:?}");
    let lines: Vec<String> = log_records(&log_of(&pod.1, "cat"))
        .into_iter()
        .map(|(_, _, l)| l)
        .collect();
    assert!(
        lines.contains(&"eof-seen".to_string()),
        "{handler}: {lines:?}"
    );
    env.rt
        .remove_container(proto::RemoveContainerRequest { container_id: cat })
        .await
        .unwrap();
    (id, talker)
}

async fn one_handler(env: &mut Env, handler: &str, binary: &str, embedded_probe: &str) {
    let pod = run_pod_with(env, &format!("{handler}-pod"), handler).await;

    let (id, talker) = same_as_embedded(env, &pod, handler, embedded_probe).await;
    // The runtime knows it, under berth's id.
    assert!(
        runtime_list(env, handler, binary).contains(&id),
        "{handler}"
    );

    // A terminal: the runtime hands it over on the console socket.
    let mut c = container(env, "tty", &["sh", "-c", "tty; sleep 300"], &[]);
    c.tty = true;
    let tty = create_in(env, &pod, c).await.unwrap();
    let log = log_of(&pod.1, "tty");
    let mut seen = String::new();
    for _ in 0..100 {
        seen = log_records(&log)
            .into_iter()
            .map(|(_, _, l)| l)
            .collect::<Vec<_>>()
            .join("|");
        if seen.contains("/dev/pts/") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.contains("/dev/pts/0"), "{handler}: {seen:?}");

    // A streaming exec with a terminal (the runtime hands the exec's over
    // on a console socket of its own).
    let url = env
        .rt
        .exec(proto::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "tty; echo done".into()],
            tty: true,
            stdin: false,
            stdout: true,
            stderr: false,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let out = session_stdout(&url).await;
    assert!(
        out.contains("/dev/pts/") && out.contains("done"),
        "{handler}: {out:?}"
    );

    // Checkpoints are not for an external runtime: refused, not dropped.
    let dir = tempfile::tempdir().unwrap();
    let err = env
        .rt
        .checkpoint_container(proto::CheckpointContainerRequest {
            container_id: id.clone(),
            location: dir.path().join("c.tar").display().to_string(),
            timeout: 30,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{handler}");
    assert!(
        err.message().contains("external OCI runtime"),
        "{handler}: {err:?}"
    );
    assert_eq!(
        status(&mut env.rt, &id).await.state,
        proto::ContainerState::ContainerRunning as i32
    );

    // Its monitor killed with SIGKILL: the container is reported exited
    // (255), its init killed and the runtime's record deleted.
    let c = container(env, "orphan", &["sleep", "1000"], &[]);
    let orphan = create_in(env, &pod, c).await.unwrap();
    let v = verbose_info(&mut env.rt, &orphan).await;
    let monitor = v["monitorPid"].as_i64().unwrap() as i32;
    let init = v["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = wait_exited(&mut env.rt, &orphan).await;
    assert_eq!(st.exit_code, 255, "{handler}: {st:?}");
    for _ in 0..200 {
        let gone = std::fs::read_to_string(format!("/proc/{init}/stat"))
            .map_or(true, |s| s.contains(") Z "));
        if gone && !runtime_list(env, handler, binary).contains(&orphan) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        std::fs::read_to_string(format!("/proc/{init}/stat")).map_or(true, |s| s.contains(") Z ")),
        "{handler}: the orphan's init {init} still runs"
    );
    assert!(
        !runtime_list(env, handler, binary).contains(&orphan),
        "{handler}"
    );
    env.rt
        .remove_container(proto::RemoveContainerRequest {
            container_id: orphan,
        })
        .await
        .unwrap();

    // The daemon dies and comes back: the containers still run, exec and
    // stop still work.
    env.daemon.crash();
    restart(env).await;
    assert_eq!(
        status(&mut env.rt, &id).await.state,
        proto::ContainerState::ContainerRunning as i32
    );
    assert!(sh_in(&mut env.rt, &id, "echo back").await.contains("back"));
    for c in [&id, &tty, &talker] {
        stop_and_remove(&mut env.rt, c).await;
    }
    // Removed from the runtime too.
    let left = runtime_list(env, handler, binary);
    assert!(
        !left.contains(&id) && !left.contains(&tty),
        "{handler}: {left}"
    );

    env.rt
        .stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap();
    env.rt
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: pod.0,
        })
        .await
        .unwrap();
}

/// Why crun cannot run containers on this host, if it cannot: crun 1.8
/// refuses a hybrid hierarchy whose cgroup v2 part has controllers (this
/// host's holds hugetlb); cgroup v2 (the QEMU guest) is fine.
fn crun_unusable() -> Option<String> {
    let v2 = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    let controllers = std::fs::read_to_string(v2).unwrap_or_default();
    (!controllers.trim().is_empty()).then(|| {
        format!(
            "crun refuses this host's hybrid cgroup hierarchy (controllers in cgroup v2: {})",
            controllers.trim()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_and_crun_handlers_run_what_the_embedded_core_would() {
    let test = "runc_and_crun_handlers_run_what_the_embedded_core_would";
    let no_skip = std::env::var_os("BERTH_TEST_NO_SKIP").is_some();
    let mut have: Vec<(&str, &str)> = Vec::new();
    for (name, binary) in [("runc", RUNC), ("crun", CRUN)] {
        let why = match (Path::new(binary).exists(), name) {
            (false, _) => Some(format!("{binary} is not installed")),
            (true, "crun") => crun_unusable(),
            (true, _) => None,
        };
        match why {
            Some(why) => {
                assert!(!no_skip, "{test}: {name} must run here: {why}");
                println!("skipped: {test}: the {name} handler: {why}");
            }
            None => have.push((name, binary)),
        }
    }
    if !have.iter().any(|(n, _)| *n == "runc") {
        return;
    }
    let Some(mut env) = env_with_config(test, &config()).await else {
        return;
    };
    // Status: both handlers, neither offering user namespaces.
    let handlers = runtime_status(&mut env.rt).await.runtime_handlers;
    let names: Vec<&str> = handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["", "crun", "runc"]);
    for h in &handlers[1..] {
        let f = h.features.as_ref().unwrap();
        assert!(!f.user_namespaces && !f.recursive_read_only_mounts, "{h:?}");
    }

    let embedded_probe = embedded_probe(&mut env).await;

    for (handler, binary) in have {
        one_handler(&mut env, handler, binary, &embedded_probe).await;
    }

    // A pod in its own user namespace is refused for an external runtime.
    let cfg = userns_pod(&env, "userns");
    let err = env
        .rt
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: "runc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("userns_options"),
        "{}",
        err.message()
    );
}

const SHIM: &str = "/usr/bin/containerd-shim-runc-v2";

/// The runc state directory containerd-shim-runc-v2 uses for berth's
/// namespace.
const SHIM_RUNC_ROOT: &str = "/run/containerd/runc/berth";

fn shim_runc_list() -> String {
    let out = std::process::Command::new(RUNC)
        .args(["--root", SHIM_RUNC_ROOT, "list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A handler of kind `shim-v2` with Debian's containerd-shim-runc-v2: the
/// same container as the embedded core, logs, exec, exit codes, a terminal
/// refused, the shim killed (the container reported exited), a daemon
/// restart, and removal through the shim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containerd_shim_handler_runs_what_the_embedded_core_would() {
    let test = "a_containerd_shim_handler_runs_what_the_embedded_core_would";
    for b in [SHIM, RUNC] {
        if !Path::new(b).exists() {
            assert!(
                std::env::var_os("BERTH_TEST_NO_SKIP").is_none(),
                "{test}: {b} must be installed here"
            );
            println!("skipped: {test}: {b} is not installed (Debian's containerd and runc)");
            return;
        }
    }
    let config = format!("[runtime.handlers.runc-shim]\nkind = \"shim-v2\"\npath = \"{SHIM}\"\n");
    let Some(mut env) = env_with_config(test, &config).await else {
        return;
    };
    let handlers = runtime_status(&mut env.rt).await.runtime_handlers;
    let shim = handlers.iter().find(|h| h.name == "runc-shim").unwrap();
    assert!(!shim.features.as_ref().unwrap().user_namespaces);
    let embedded_probe = embedded_probe(&mut env).await;

    let handler = "runc-shim";
    let pod = run_pod_with(&mut env, &format!("{handler}-pod"), handler).await;
    let (id, talker) = same_as_embedded(&mut env, &pod, handler, &embedded_probe).await;
    // The shim's runc runs it, under berth's id.
    assert!(shim_runc_list().contains(&id), "{}", shim_runc_list());

    // A terminal is refused, naming the field.
    let mut c = container(&env, "tty", &["sh"], &[]);
    c.tty = true;
    let err = create_in(&mut env, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("config.tty"), "{}", err.message());

    // The shim killed: the container is reported exited, its init gone.
    let c = container(&env, "orphan", &["sleep", "1000"], &[]);
    let orphan = create_in(&mut env, &pod, c).await.unwrap();
    let v = verbose_info(&mut env.rt, &orphan).await;
    let init = v["pid"].as_i64().unwrap() as i32;
    // The shim is the one started with `-id <container id>`.
    let shim_pid: i32 = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("containerd-shim-runc-v2") && cmd.contains(orphan.as_str())
        })
        .expect("the orphan's shim");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = wait_exited(&mut env.rt, &orphan).await;
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert!(
        std::fs::read_to_string(format!("/proc/{init}/stat")).map_or(true, |s| s.contains(") Z ")),
        "the orphan's init {init} still runs"
    );
    env.rt
        .remove_container(proto::RemoveContainerRequest {
            container_id: orphan.clone(),
        })
        .await
        .unwrap();
    // Cleaned up without its shim (the shim's own `delete` command).
    assert!(!shim_runc_list().contains(&orphan), "{}", shim_runc_list());

    // The daemon dies and comes back: the container still runs, through
    // the same monitor and shim.
    env.daemon.crash();
    restart(&mut env).await;
    assert_eq!(
        status(&mut env.rt, &id).await.state,
        proto::ContainerState::ContainerRunning as i32
    );
    assert!(sh_in(&mut env.rt, &id, "echo back").await.contains("back"));
    for c in [&id, &talker] {
        stop_and_remove(&mut env.rt, c).await;
    }
    assert!(!shim_runc_list().contains(&id), "{}", shim_runc_list());
    // Its bundle (and rootfs mount) are gone with it.
    assert!(!env.dir.path().join("state/containers").join(&id).exists());
}
