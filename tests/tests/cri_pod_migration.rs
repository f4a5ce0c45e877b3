//! A pod moved between two nodes keeps its IP where the network plugin can
//! give it, and a TCP connection from outside the pod survives the move:
//! two daemons (separate roots and state: two "nodes") whose pods join one
//! bridge (Debian's bridge and host-local plugins, each node with its own
//! host-local data), the real CRIU.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_cri::proto;
use berth_e2e::daemon::DEBIAN_CNI_BIN;
use common::exec_sh as exec;
use common::pods::*;
use common::*;

const RESTORE_ON: &str = "[checkpoint]\nrestore = true\n";
const BRIDGE: &str = "brt-migrate";
const SUBNET: &str = "10.251.40";

/// Deletes the test's bridge (by its name: only ours) when the test ends.
struct BridgeGuard;

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        if Path::new("/sys/class/net").join(BRIDGE).exists() {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", BRIDGE])
                .status();
        }
    }
}

/// Points `env`'s daemon at the bridge network (a conflist sorting before
/// the loopback one) and waits until it is in force.
async fn join_bridge(env: &mut Env) {
    let list = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "berth-migrate",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("{SUBNET}.0/24")}]],
                "dataDir": env.dir.path().join("ipam"),
            },
        }],
    });
    let dir = env.dir.path().join("net.d");
    std::fs::write(dir.join(".tmp"), list.to_string()).unwrap();
    std::fs::rename(dir.join(".tmp"), dir.join("00-bridge.conflist")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = env
            .rt
            .status(proto::StatusRequest { verbose: true })
            .await
            .unwrap()
            .into_inner();
        if s.info
            .get("cniconfig")
            .is_some_and(|c| c.contains("berth-migrate"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the bridge config is not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pod_ip(rt: &mut Rt, id: &str) -> String {
    pod_status(rt, id, false)
        .await
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default()
}

/// A client on the node (outside every pod) sending `i\n` every 0.1 s to
/// `addr` until stopped; the last number sent, and whether a send failed.
struct Sender {
    last: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Sender {
    fn start(addr: &str) -> Sender {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut stream = loop {
            match std::net::TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "connect {addr}: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let (last, failed, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (l, f, s) = (last.clone(), failed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                if writeln!(stream, "{i}").is_err() {
                    f.store(true, Ordering::SeqCst);
                    return;
                }
                l.store(i, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sender { last, failed, stop }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Node a runs a pod (after another that took the first address) with a
/// server that a client on the node keeps sending to. Node a drops off the
/// network (its pod's link is cut), the pod is checkpointed and stopped,
/// and the checkpoint is restored on node b: the pod has
/// its old IP there — not the first free one, which a new pod on b would
/// get — and the client's connection carries on, one stream, nothing lost
/// or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_moved_to_another_node_keeps_its_ip_and_its_connections() {
    let test = "a_pod_moved_to_another_node_keeps_its_ip_and_its_connections";
    if !criu_works(test) {
        return;
    }
    if !Path::new(DEBIAN_CNI_BIN).join("bridge").exists() {
        println!("skipped: {test}: no CNI bridge plugin in {DEBIAN_CNI_BIN}");
        return;
    }
    let Some(mut a) = env_with_config(test, RESTORE_ON).await else {
        return;
    };
    let Some(mut b) = env_with_config(test, RESTORE_ON).await else {
        return;
    };
    let _bridge = BridgeGuard;
    join_bridge(&mut a).await;
    join_bridge(&mut b).await;

    let first_cfg = pod_named(&a, "first");
    let first = run_pod(&mut a.rt, first_cfg).await;
    assert_eq!(pod_ip(&mut a.rt, &first).await, format!("{SUBNET}.2"));
    let cfg = pod_named(&a, "mover");
    let pod = run_pod(&mut a.rt, cfg.clone()).await;
    let ip = pod_ip(&mut a.rt, &pod).await;
    assert_eq!(ip, format!("{SUBNET}.3"));
    let server = root_sh(
        &a,
        "server",
        "busybox tail -f /dev/null | nc -l -p 7000 > /recv",
    );
    let server_id = create_start(&mut a.rt, &pod, &cfg, server).await;
    let sender = Sender::start(&format!("{ip}:7000"));
    wait_at_least(&mut a.rt, &server_id, "cat /recv", 5).await;

    // Node a drops off the network first: its pod's veth goes (the bridge
    // then holds only the first pod's). The source must not go on after
    // the dump — a server that kept acknowledging the client would leave
    // the restored one behind a gap the client no longer holds — and the
    // stopped server's goodbye reaches nobody.
    let ports: Vec<String> = std::fs::read_dir(format!("/sys/class/net/{BRIDGE}/brif"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ports.len(), 2, "{ports:?}");
    let veth = exec(&mut a.rt, &server_id, "cat /sys/class/net/eth0/iflink")
        .await
        .1;
    let veth_index: u32 = veth.trim().parse().unwrap();
    let host_veth = ports
        .iter()
        .find(|p| {
            std::fs::read_to_string(format!("/sys/class/net/{p}/ifindex"))
                .is_ok_and(|i| i.trim().parse() == Ok(veth_index))
        })
        .unwrap_or_else(|| panic!("no port of {BRIDGE} has ifindex {veth_index}: {ports:?}"))
        .clone();
    let del = std::process::Command::new("ip")
        .args(["link", "del", &host_veth])
        .status()
        .unwrap();
    assert!(del.success());
    let out = a.dir.path().join("pod-checkpoint");
    std::fs::create_dir(&out).unwrap();
    checkpoint_pod(&mut a.rt, &pod, &[&server_id], &out)
        .await
        .unwrap_or_else(|e| panic!("CheckpointPod: {}", e.message()));
    a.rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();

    let moved = b.dir.path().join("moved");
    copy_dir(&out, &moved);
    let sent_before = sender.last.load(Ordering::SeqCst);
    let (new_cfg, configs) = (pod_named(&b, "mover"), vec![root_sh(&b, "server", "")]);
    let restored = restore_pod(&mut b.rt, &moved, new_cfg, configs)
        .await
        .unwrap_or_else(|e| panic!("RestorePod: {}", e.message()));
    let new_ip = pod_ip(&mut b.rt, &restored.pod_sandbox_id).await;
    assert_eq!(new_ip, ip, "the old IP, not b's first free one");
    let server2 = restored.restored_containers[0].container_id.clone();
    start(&mut b.rt, &server2).await.unwrap();
    // The node forgets where the address was (the old link is gone, but
    // its neighbour entry may stay reachable for tens of seconds after the
    // last ACK): between machines, the network learns the address's new
    // place from the new node. berth sends no announcement of its own yet.
    let _ = std::process::Command::new("ip")
        .args(["neigh", "del", &ip, "dev", BRIDGE])
        .status();
    let recv = wait_at_least(&mut b.rt, &server2, "cat /recv", sent_before + 10).await;
    let nums: Vec<u64> = recv.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let expect: Vec<u64> = (1..=nums.len() as u64).collect();
    assert_eq!(nums, expect, "one stream across the move");
    assert!(!sender.failed.load(Ordering::SeqCst), "a send failed");
    drop(sender);
    b.rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: restored.pod_sandbox_id.clone(),
    })
    .await
    .unwrap();
    a.rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: first,
    })
    .await
    .unwrap();
}
