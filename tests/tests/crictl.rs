//! The real `crictl` (cri-tools v1.36) as the only client of the real
//! daemon: the commands a user types on a node — pull from a loopback
//! registry, runp, create, start, exec (sync and streamed), logs, inspect,
//! inspecti, inspectp, stats, stopp, rmp, rmi --prune — with their exit
//! codes and the JSON fields people script against; and stop/stopp/rm/rmp
//! of ids that do not exist. Without the cri-tools kit (see
//! `berth_e2e::crictl`) the tests say `skipped: ...`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::crictl::Crictl;
use berth_e2e::daemon::{cleanup_dir, Daemon};
use berth_e2e::registry::Registry;
use berth_e2e::{berth_binary, images};
use serde_json::{json, Value};

/// What the container runs: it logs on both streams and stays up. The
/// trailing `true` keeps the shell from exec'ing `sleep`, so the
/// container's pid 1 is the shell whose argv the test compares.
const COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "echo to-stdout; echo to-stderr >&2; sleep 1000; true",
];

/// A daemon on the test's own directories, crictl pointed at it, and
/// (when asked for) a loopback registry. Dropping it crashes the daemon and
/// removes every monitor, mount and cgroup of the test's.
struct CEnv {
    crictl: Crictl,
    daemon: Daemon,
    reg: Option<Registry>,
    dir: tempfile::TempDir,
}

impl Drop for CEnv {
    fn drop(&mut self) {
        self.daemon.crash();
        cleanup_dir(self.dir.path());
    }
}

impl CEnv {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// Writes `value` as JSON to `name` in the test's directory; its path.
    fn write_json(&self, name: &str, value: &Value) -> String {
        let path = self.path(name);
        std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
        path
    }
}

fn cenv(test: &str, registry: bool) -> Option<CEnv> {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: {test}: needs root");
        return None;
    }
    let berth = berth_binary(test)?;
    let dir = tempfile::tempdir().unwrap();
    let crictl = Crictl::unpack(test, dir.path(), &dir.path().join("berth.sock"))?;
    let reg = if registry {
        match Registry::start() {
            Ok(r) => Some(r),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("skipped: {test}: {e}");
                return None;
            }
            Err(e) => panic!("{e}"),
        }
    } else {
        None
    };
    let daemon = Daemon::start(&berth, dir.path(), &[]);
    let env = CEnv {
        crictl,
        daemon,
        reg,
        dir,
    };
    if let Err(e) = env.crictl.wait_ready() {
        panic!("{e}\ndaemon log:\n{}", env.daemon.log());
    }
    Some(env)
}

/// The pod config as a user writes it for `crictl runp` (crictl's JSON
/// field names). No namespace options: the pid mode is then POD, so the
/// pod gets berth's pid-namespace init.
fn pod_json(env: &CEnv, name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "attempt": 0},
        "hostname": name,
        "log_directory": env.path("logs"),
        "linux": {}
    })
}

/// A JSON number that protobuf's JSON mapping may print as a string
/// (64-bit integers are strings there).
fn as_u64(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// The namespace inode of `path` (a /proc/PID/ns/* link or a pinned
/// bind-mounted namespace file).
fn ns_inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

/// The `path` of the namespace of `kind` in an OCI `linux.namespaces` list.
fn ns_path<'a>(namespaces: &'a Value, kind: &str) -> Option<&'a str> {
    namespaces
        .as_array()?
        .iter()
        .find(|n| n["type"] == kind)
        .and_then(|n| n["path"].as_str())
}

fn ns_types(namespaces: &Value) -> Vec<&str> {
    namespaces
        .as_array()
        .map(|a| a.iter().filter_map(|n| n["type"].as_str()).collect())
        .unwrap_or_default()
}

/// `crictl inspect -o json ID` once `.status.state` is `state` (10 s at most).
fn inspect_in_state(c: &Crictl, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = c.json(&["inspect", "-o", "json", id]);
        if v["status"]["state"] == state {
            return v;
        }
        assert!(Instant::now() < deadline, "{id} never became {state}: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_drives_a_pod_from_pull_to_rmi_prune() {
    let test = "crictl_drives_a_pod_from_pull_to_rmi_prune";
    let Some(env) = cenv(test, true) else {
        return;
    };
    let addr = env.reg.as_ref().unwrap().addr();
    let pushed = images::busybox_image(&addr, "crictl/busybox", "v1")
        .await
        .unwrap();
    let repo = format!("{addr}/crictl/busybox");
    let image = format!("{repo}:v1");
    let c = &env.crictl;

    // pull, then the image as `images` and `inspecti` show it.
    let out = c.ok(&["pull", &image]);
    assert!(out.contains(&pushed.config_digest), "pull printed: {out}");
    let listed = c.ok(&["images", "-q"]);
    assert!(
        listed.contains(&pushed.config_digest),
        "images -q: {listed}"
    );
    let img = c.json(&["inspecti", "-o", "json", &image]);
    assert_eq!(img["status"]["id"], pushed.config_digest.as_str(), "{img}");
    let repo_digest = format!("{repo}@{}", pushed.manifest_digest);
    assert_eq!(img["status"]["repoDigests"], json!([repo_digest]), "{img}");
    assert_eq!(img["status"]["repoTags"], json!([image]), "{img}");

    // runp, create, start.
    let pod_file = env.write_json("pod.json", &pod_json(&env, "crictl-pod"));
    let pod = c.ok(&["runp", &pod_file]).trim().to_string();
    assert!(
        pod.len() == 64 && pod.bytes().all(|b| b.is_ascii_hexdigit()),
        "runp printed {pod:?}"
    );
    let ctr_file = env.write_json(
        "ctr.json",
        &json!({
            "metadata": {"name": "main"},
            "image": {"image": image},
            "command": COMMAND,
            "log_path": "main/0.log",
            "linux": {}
        }),
    );
    let cid = c
        .ok(&["create", &pod, &ctr_file, &pod_file])
        .trim()
        .to_string();
    assert_eq!(cid.len(), 64, "create printed {cid:?}");
    assert_eq!(c.ok(&["start", &cid]).trim(), cid);
    let ctr = inspect_in_state(c, &cid, "CONTAINER_RUNNING");

    // exec -s: crictl prints stdout, then stderr, each with a newline.
    let out = c.ok(&["exec", "-s", &cid, "sh", "-c", "hostname; echo e >&2"]);
    assert_eq!(out, "crictl-pod\n\ne\n\n", "exec -s output");
    // A failing command: crictl 1.36 exits 1 (not the command's code) and
    // names the code and the command's stderr.
    let out = c.run(&["exec", "-s", &cid, "sh", "-c", "echo bad >&2; exit 3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exited with 3: bad"), "{stderr}");
    // exec without -s streams through berth's streaming server (SPDY).
    let out = c.run(&["exec", &cid, "sh", "-c", "echo streamed; exit 4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "streamed\n");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("command terminated with exit code 4"),
        "{stderr}"
    );

    // logs: each stream to its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = c.run(&["logs", &cid]);
        assert!(out.status.success(), "{out:?}");
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if o == "to-stdout\n" && e == "to-stderr\n" {
            break;
        }
        assert!(Instant::now() < deadline, "logs: stdout {o:?} stderr {e:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // inspect: what kubelet shows and what people script against.
    let st = &ctr["status"];
    assert_eq!(st["imageRef"], repo_digest.as_str(), "{ctr}");
    assert_eq!(st["imageId"], img["status"]["id"], "{ctr}");
    assert_eq!(st["image"]["image"], image.as_str(), "{ctr}");
    assert_eq!(st["metadata"]["name"], "main");
    let info = &ctr["info"];
    assert_eq!(info["config"]["metadata"]["name"], "main", "{info}");
    assert_eq!(info["sandboxID"], pod.as_str());
    let spec = &info["runtimeSpec"];
    assert_eq!(spec["process"]["args"], json!(COMMAND), "{spec}");
    let ctr_ns = &spec["linux"]["namespaces"];
    for kind in ["mount", "network", "ipc", "uts", "pid"] {
        assert!(ns_types(ctr_ns).contains(&kind), "{kind}: {ctr_ns}");
    }
    // .info.pid is the container's init as the host sees it.
    let pid = as_u64(&info["pid"]);
    assert!(pid > 1, "{info}");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(argv, COMMAND, "argv of pid {pid}");
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroup.contains(&cid), "/proc/{pid}/cgroup: {cgroup}");
    let net = ns_path(ctr_ns, "network").expect("a network namespace path");
    assert_eq!(ns_inode(&format!("/proc/{pid}/ns/net")), ns_inode(net));
    assert_ne!(
        ns_inode(&format!("/proc/{pid}/ns/mnt")),
        ns_inode("/proc/self/ns/mnt"),
        "the container has its own mount namespace"
    );

    // inspectp: the pod, its init (pid mode POD) and its namespaces.
    let p = c.json(&["inspectp", "-o", "json", &pod]);
    assert_eq!(p["status"]["state"], "SANDBOX_READY", "{p}");
    assert_eq!(p["status"]["metadata"]["name"], "crictl-pod");
    assert_eq!(p["info"]["config"]["metadata"]["name"], "crictl-pod", "{p}");
    assert_eq!(p["info"]["config"]["hostname"], "crictl-pod", "{p}");
    let pod_pid = as_u64(&p["info"]["pid"]);
    assert!(pod_pid > 1, "a shared pid namespace has an init: {p}");
    assert_eq!(
        ns_inode(&format!("/proc/{pid}/ns/pid")),
        ns_inode(&format!("/proc/{pod_pid}/ns/pid")),
        "the container is in the pod's pid namespace"
    );
    let pod_ns = &p["info"]["runtimeSpec"]["linux"]["namespaces"];
    for kind in ["network", "ipc", "uts"] {
        assert!(ns_types(pod_ns).contains(&kind), "{kind}: {pod_ns}");
    }
    assert_eq!(ns_path(pod_ns, "network"), Some(net), "{pod_ns}");

    // stats: the container with cpu and memory figures.
    let stats = c.json(&["stats", "-o", "json"]);
    let s = stats["stats"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["attributes"]["id"] == cid.as_str()))
        .unwrap_or_else(|| panic!("{cid} not in stats: {stats}"));
    assert_eq!(s["attributes"]["metadata"]["name"], "main");
    assert!(
        as_u64(&s["cpu"]["usageCoreNanoSeconds"]["value"]) > 0,
        "{s}"
    );
    assert!(as_u64(&s["memory"]["workingSetBytes"]["value"]) > 0, "{s}");
    assert!(as_u64(&s["cpu"]["timestamp"]) > 0, "{s}");

    // rmi --prune keeps an image a container uses.
    c.ok(&["rmi", "--prune"]);
    assert!(c.ok(&["images", "-q"]).contains(&pushed.config_digest));

    // stopp stops the container too; rmp removes both.
    c.ok(&["stopp", &pod]);
    let p = c.json(&["inspectp", "-o", "json", &pod]);
    assert_eq!(p["status"]["state"], "SANDBOX_NOTREADY", "{p}");
    inspect_in_state(c, &cid, "CONTAINER_EXITED");
    c.ok(&["rmp", &pod]);
    assert_eq!(c.ok(&["pods", "-q"]), "");
    assert_eq!(c.ok(&["ps", "-a", "-q"]), "");

    // Now nothing uses the image: rmi --prune removes it.
    let out = c.ok(&["rmi", "--prune"]);
    assert!(
        out.contains(&format!("Deleted: {image}")),
        "rmi --prune: {out}"
    );
    let listed = c.ok(&["images", "-q"]);
    assert!(
        !listed.contains(&pushed.config_digest),
        "images -q: {listed}"
    );
    assert!(!c.run(&["inspecti", &image]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_stop_and_remove_of_unknown_ids() {
    let test = "crictl_stop_and_remove_of_unknown_ids";
    let Some(env) = cenv(test, false) else {
        return;
    };
    let c = &env.crictl;
    let unknown = "0123456789abcdef".repeat(4);
    // StopContainer and StopPodSandbox of an id that does not exist succeed
    // (CRI: "If the container/sandbox ... has been removed, it must not
    // return an error").
    assert_eq!(c.ok(&["stop", &unknown]).trim(), unknown);
    c.ok(&["stopp", &unknown]);
    // And of a pod that was there and is gone (no image needed: berth's
    // pods have no pause container).
    let pod_file = env.write_json("pod.json", &pod_json(&env, "gone-pod"));
    let pod = c.ok(&["runp", &pod_file]).trim().to_string();
    c.ok(&["stopp", &pod]);
    c.ok(&["rmp", &pod]);
    c.ok(&["stopp", &pod]);
    assert_eq!(c.ok(&["pods", "-q"]), "");

    // `crictl rm` and `crictl rmp` ask for the status first and stop at its
    // NotFound (with any runtime: ContainerStatus/PodSandboxStatus of an
    // unknown id is NotFound by the CRI), so RemoveContainer and
    // RemovePodSandbox are never sent. Whatever crictl does, a failure must
    // not come from the removal itself.
    for (cmd, id, precheck, removal) in [
        (
            "rm",
            &unknown,
            "getting container status",
            "removing container",
        ),
        (
            "rmp",
            &unknown,
            "getting sandbox status",
            "removing the pod sandbox",
        ),
        (
            "rmp",
            &pod,
            "getting sandbox status",
            "removing the pod sandbox",
        ),
    ] {
        let out = c.run(&[cmd, id]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains(removal), "crictl {cmd}: {stderr}");
        assert!(
            out.status.success() || (stderr.contains(precheck) && stderr.contains("NotFound")),
            "crictl {cmd} {id}: {:?} {stderr}",
            out.status
        );
    }
    // The daemon is still fine.
    assert!(Path::new(&env.path("berth.sock")).exists());
    c.ok(&["version"]);
}
