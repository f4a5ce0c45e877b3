//! A gRPC client that is not grpc-go: Python's grpcio (grpc-core) drives the
//! real `berth serve` over its unix socket with stubs generated at test time
//! from cri/proto/api.proto (issue 16).
//!
//! grpc-go (kubelet, crictl) sends `:authority: localhost` on a unix socket;
//! grpc-core sends `localhost` up to 1.56 and the percent-encoded socket path
//! from 1.57 on, grpc-java and older grpc-go the socket path itself. None of
//! those is a valid URI authority, and h2 reset every such stream with
//! PROTOCOL_ERROR until berth's copy of it took them as no authority at all
//! (vendor/README.md). The pod's life runs on a channel with default
//! settings; then each of those authorities is sent explicitly (Debian
//! bookworm's grpcio is 1.51, so its default is `localhost`).

use std::path::Path;
use std::process::Command;

use berth_e2e::berth_binary;
use berth_e2e::daemon::{cleanup_dir, Daemon};

/// Debian's python3 (with Debian's python3-grpcio and python3-grpc-tools),
/// not whatever python3 comes first on PATH; `BERTH_TEST_PYTHON` names
/// another one (e.g. a venv with a current grpcio and grpcio-tools, whose
/// default `:authority` is the percent-encoded socket path).
fn python() -> String {
    std::env::var("BERTH_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

const CLIENT: &str = include_str!("python_grpc/cri_client.py");

/// Kills the daemon and detaches what its pod mounted, also after a failed
/// assertion.
struct Guard {
    daemon: Daemon,
    dir: tempfile::TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.daemon.crash();
        cleanup_dir(self.dir.path());
    }
}

/// Why Python's grpcio cannot run here, if it cannot.
fn python_grpc_missing() -> Option<String> {
    let python = python();
    let ok = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .output();
    match ok {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "{python} cannot import grpc and grpc_tools (apt install python3-grpcio python3-grpc-tools): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("{python}: {e}")),
    }
}

/// Generates api_pb2.py and api_pb2_grpc.py from the vendored CRI proto
/// into `out` with `python3 -m grpc_tools.protoc`.
fn generate_stubs(out: &Path) {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cri/proto/api.proto");
    let text = std::fs::read_to_string(&proto).expect("cri/proto/api.proto");
    // Debian bookworm's grpc-tools bundles protoc 3.21, which predates the
    // `debug_redact` field option (protobuf 22); it only marks fields for
    // redaction in debug output and changes nothing on the wire.
    let text = text.replace(" [debug_redact = true]", "");
    let src = out.join("proto");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("api.proto"), text).unwrap();
    let gen = Command::new(python())
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&src)
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .arg(src.join("api.proto"))
        .output()
        .expect("running grpc_tools.protoc");
    assert!(
        gen.status.success(),
        "grpc_tools.protoc: {}",
        String::from_utf8_lossy(&gen.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_runs_a_pod_over_the_unix_socket() {
    const T: &str = "python_grpcio_runs_a_pod_over_the_unix_socket";
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: {T}: needs root");
        return;
    }
    if let Some(why) = python_grpc_missing() {
        println!("skipped: {T}: {why}");
        return;
    }
    let Some(berth) = berth_binary(T) else { return };
    let dir = tempfile::tempdir().unwrap();
    let stubs = dir.path().join("stubs");
    generate_stubs(&stubs);
    let script = dir.path().join("cri_client.py");
    std::fs::write(&script, CLIENT).unwrap();

    let daemon = Daemon::start(&berth, dir.path(), &[]);
    let g = Guard { daemon, dir };
    // Ready once our own (grpc-go-like) client gets through.
    drop(g.daemon.channel().await);

    let sock = g.daemon.sock.to_string_lossy().into_owned();
    let encoded = sock.replace('/', "%2F");
    // What grpc-java and older grpc-go send; what grpc-core >= 1.57 sends
    // for `unix:///path` and for `unix:/path`.
    let authorities = [
        sock.clone(),
        encoded.trim_start_matches("%2F").to_string(),
        encoded.clone(),
    ];
    let logs = g.dir.path().join("pod-logs");
    let out = {
        let (script, stubs, sock, logs) = (script.clone(), stubs.clone(), sock.clone(), logs);
        let authorities = authorities.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(python())
                .arg(&script)
                .arg(&sock)
                .arg(&stubs)
                .arg(&logs)
                .args(&authorities)
                .output()
                .expect("running the Python client")
        })
        .await
        .unwrap()
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Python client failed: {stdout}\n{}\ndaemon log (h2's reason is at debug):\n{}",
        String::from_utf8_lossy(&out.stderr),
        g.daemon
            .log()
            .lines()
            .filter(|l| l.contains("h2::") && l.contains("authority"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("the client's JSON");
    println!("grpcio {}", v["grpcio"]);

    assert_eq!(v["version"]["runtime_name"], "berth", "{v}");
    assert_eq!(v["version"]["runtime_api_version"], "v1", "{v}");
    assert_eq!(
        v["version"]["runtime_version"],
        env!("CARGO_PKG_VERSION"),
        "{v}"
    );
    let id = v["pod_id"].as_str().unwrap_or_default();
    assert_eq!(id.len(), 64, "{v}");
    assert_eq!(
        v["pods_running"],
        serde_json::json!([{
            "id": id, "name": "py-pod", "uid": "py-uid-1",
            "state": "SANDBOX_READY", "labels": {"client": "grpcio"},
        }]),
        "{v}"
    );
    assert_eq!(v["containers"], serde_json::json!([]), "{v}");
    assert_eq!(v["pods_stopped"][0]["state"], "SANDBOX_NOTREADY", "{v}");
    assert_eq!(v["pods_removed"], serde_json::json!([]), "{v}");
    assert!(
        !g.dir.path().join("state/pods").join(id).exists(),
        "the removed pod's state directory is gone"
    );
    for a in &authorities {
        assert_eq!(
            v["authorities"][a],
            serde_json::json!({"runtime_name": "berth", "pods": 0}),
            "{a}: {v}"
        );
    }
}
