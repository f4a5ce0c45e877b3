//! Pod networking through the real daemon and the real CNI plugins of
//! Debian's containernetworking-plugins (bridge, host-local, portmap,
//! firewall, tuning, loopback), plus a plugin of our own that fails on
//! demand (`berth-test-cni-plugin`).
//!
//! Every test has its own bridge (`brt-<name>`) on its own /24 of
//! 10.251.0.0/16 with host-local's data under the test's directory;
//! traffic stays between the test's pods and between the host and them.
//! The bridge is deleted when the test ends.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_cri::proto::image_service_client::ImageServiceClient;
use berth_cri::proto::runtime_service_client::RuntimeServiceClient;
use berth_cri::proto::{self, ContainerMetadata, ImageSpec, PodSandboxMetadata};
use berth_e2e::daemon::{Daemon, DEBIAN_CNI_BIN};
use berth_e2e::registry::Registry;
use berth_e2e::{berth_binary, images};
use serde_json::json;
use tonic::transport::Channel;
use tonic::Code;

type Rt = RuntimeServiceClient<Channel>;

/// A test's network: its daemon, bridge, subnet and directories.
struct Net {
    dir: tempfile::TempDir,
    berth: PathBuf,
    daemon: Option<Daemon>,
    rt: Rt,
    bridge: String,
    subnet_prefix: String,
    _reg: Option<Registry>,
    image: String,
}

impl Drop for Net {
    fn drop(&mut self) {
        // A failed test leaves pods: berth itself removes them first, so
        // their DELs undo the plugins' host state (portmap's and firewall's
        // iptables rules, veths, addresses), then the daemon goes.
        if let Some(d) = &mut self.daemon {
            let sock = d.sock.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(30), remove_all_pods(&sock)).await;
                });
            })
            .join();
            d.crash();
        }
        berth_e2e::daemon::cleanup_dir(self.dir.path());
        // Only our own bridge, by its name.
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status();
        }
    }
}

/// Stops and removes every pod of the daemon on `sock`.
async fn remove_all_pods(sock: &Path) {
    let Ok(ch) = berth_e2e::cri::wait_and_connect(sock, Duration::from_secs(2)).await else {
        return;
    };
    let mut rt = RuntimeServiceClient::new(ch);
    let Ok(list) = rt
        .list_pod_sandbox(proto::ListPodSandboxRequest { filter: None })
        .await
    else {
        return;
    };
    for p in list.into_inner().items {
        let _ = remove(&mut rt, &p.id).await;
    }
}

/// Whether this machine can run the tests; prints `skipped:` when not.
fn can_run(test: &str) -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: {test}: needs root");
        return None;
    }
    if !Path::new(DEBIAN_CNI_BIN).join("bridge").exists() {
        println!("skipped: {test}: no CNI plugins in {DEBIAN_CNI_BIN} (scripts/install-test-deps.sh installs containernetworking-plugins)");
        return None;
    }
    berth_binary(test)
}

/// The fail-on-demand plugin, installed in the test's own plugin dir.
fn install_test_plugin(bin: &Path) {
    std::fs::create_dir_all(bin).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_berth-test-cni-plugin"),
        bin.join("berth-test-fail"),
    )
    .unwrap();
}

impl Net {
    /// A daemon whose CNI config dir is DIR/net.d (written by `conflist`
    /// unless `None`), with plugins from Debian's dir and DIR/bin.
    async fn start(test: &str, short: &str, subnet: u8, with_image: bool) -> Option<Net> {
        let berth = can_run(test)?;
        let (reg, image) = if with_image {
            let reg = match Registry::start() {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("skipped: {test}: {e}");
                    return None;
                }
                Err(e) => panic!("{e}"),
            };
            // Runs as root: httpd's document root is made at start.
            images::busybox_image(&reg.addr(), "test/net", "v1")
                .await
                .unwrap();
            let image = format!("{}/test/net:v1", reg.addr());
            (Some(reg), image)
        } else {
            (None, String::new())
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net.d")).unwrap();
        install_test_plugin(&dir.path().join("bin"));
        let bridge = format!("brt-{short}");
        assert!(bridge.len() <= 15, "interface names are at most 15 bytes");
        let daemon = start_daemon(&berth, dir.path());
        let ch = daemon.channel().await;
        if with_image {
            ImageServiceClient::new(ch.clone())
                .pull_image(proto::PullImageRequest {
                    image: Some(ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        Some(Net {
            rt: RuntimeServiceClient::new(ch),
            dir,
            berth,
            daemon: Some(daemon),
            bridge,
            subnet_prefix: format!("10.251.{subnet}"),
            _reg: reg,
            image,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// host-local's allocations: the files named after an IP.
    fn allocated(&self) -> Vec<String> {
        std::fs::read_dir(self.path().join("ipam/berth-test-net"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// The bridge plugin with host-local on our subnet, then `more`.
    fn write_config(&self, more: Vec<serde_json::Value>) {
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("{}.0/24", self.subnet_prefix)}]],
                "dataDir": self.path().join("ipam"),
            },
        })];
        plugins.extend(more);
        let list = json!({"cniVersion": "1.0.0", "name": "berth-test-net", "plugins": plugins});
        // Written to a temp name and renamed in, as an installer would.
        let tmp = self.path().join("net.d/.tmp");
        std::fs::write(&tmp, list.to_string()).unwrap();
        std::fs::rename(&tmp, self.path().join("net.d/10-test.conflist")).unwrap();
    }

    /// The fail-on-demand plugin's config (flags and call log in DIR).
    fn fail_plugin(&self) -> serde_json::Value {
        json!({
            "type": "berth-test-fail",
            "capabilities": {"ipRanges": true, "dns": true},
            "failAddIf": self.path().join("fail-add"),
            "failDelIf": self.path().join("fail-del"),
            "log": self.path().join("calls"),
        })
    }

    fn calls(&self, command: &str) -> usize {
        std::fs::read_to_string(self.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("{command} ")))
            .count()
    }

    /// Waits until Status says NetworkReady (the watcher picked up the
    /// config).
    async fn wait_network_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (ready, msg) = network_ready(&mut self.rt).await;
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "NetworkReady stays false: {msg}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn restart(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.crash();
        }
        let d = start_daemon(&self.berth, self.dir.path());
        self.rt = RuntimeServiceClient::new(d.channel().await);
        self.daemon = Some(d);
    }

    fn daemon_log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }
}

/// `berth serve` on the test's directories with its CNI settings (and a
/// verbose PodSandboxStatus that runs CNI CHECK).
fn start_daemon(berth: &Path, dir: &Path) -> Daemon {
    let (conf, bin) = (dir.join("net.d"), dir.join("bin"));
    let config = dir.join("config.toml");
    std::fs::write(&config, "[network]\ncheck_on_status = true\n").unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--cni-conf-dir",
        conf.to_str().unwrap(),
        "--cni-bin-dir",
        DEBIAN_CNI_BIN,
        "--cni-bin-dir",
        bin.to_str().unwrap(),
    ];
    Daemon::start(berth, dir, &args)
}

async fn network_ready(rt: &mut Rt) -> (bool, String) {
    let s = rt
        .status(proto::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let c = s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    (
        c.status,
        format!(
            "{} {}",
            c.message,
            s.info.get("cniconfig").cloned().unwrap_or_default()
        ),
    )
}

fn pod(name: &str, host_network: bool) -> proto::PodSandboxConfig {
    proto::PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "net-test".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(proto::LinuxPodSandboxConfig {
            security_context: Some(proto::LinuxSandboxSecurityContext {
                namespace_options: Some(proto::NamespaceOption {
                    network: if host_network {
                        proto::NamespaceMode::Node as i32
                    } else {
                        proto::NamespaceMode::Pod as i32
                    },
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

async fn run(rt: &mut Rt, config: proto::PodSandboxConfig) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(proto::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn stop(rt: &mut Rt, id: &str) -> Result<(), tonic::Status> {
    rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map(|_| ())
}

async fn remove(rt: &mut Rt, id: &str) -> Result<(), tonic::Status> {
    rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map(|_| ())
}

async fn pod_status(rt: &mut Rt, id: &str, verbose: bool) -> proto::PodSandboxStatusResponse {
    rt.pod_sandbox_status(proto::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn pod_ip(rt: &mut Rt, id: &str) -> String {
    pod_status(rt, id, false)
        .await
        .status
        .unwrap()
        .network
        .unwrap()
        .ip
}

/// Runs `sh -c script` as a container of `pod`; returns its id.
async fn container(
    net: &mut Net,
    pod_id: &str,
    config: &proto::PodSandboxConfig,
    name: &str,
    script: &str,
) -> String {
    let id = net
        .rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(proto::ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: net.image.clone(),
                    ..Default::default()
                }),
                command: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            }),
            sandbox_config: Some(config.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    net.rt
        .start_container(proto::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    id
}

async fn exec(rt: &mut Rt, id: &str, cmd: &[&str]) -> (i32, String) {
    let r = rt
        .exec_sync(proto::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 20,
        })
        .await
        .unwrap()
        .into_inner();
    (
        r.exit_code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        ),
    )
}

/// A free TCP port on 127.0.0.1 (for a hostPort).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /` on 127.0.0.1:port from the host, retried until the server
/// answers (10 s).
fn host_get(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match attempt {
            Ok(body) if body.contains("200 OK") => return body,
            other => assert!(
                Instant::now() < deadline,
                "no answer on 127.0.0.1:{port}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_ready_follows_the_config_dir() {
    let Some(mut net) = Net::start("network_ready_follows_the_config_dir", "ready", 1, false).await
    else {
        return;
    };
    // No config yet: not ready, pod networks refused, host network fine.
    let (ready, msg) = network_ready(&mut net.rt).await;
    assert!(!ready, "{msg}");
    assert!(msg.contains("no network config found"), "{msg}");
    let err = run(&mut net.rt, pod("early", false)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not ready"), "{err:?}");
    let host = run(&mut net.rt, pod("cni-daemonset", true)).await.unwrap();
    assert_eq!(pod_ip(&mut net.rt, &host).await, "");

    // A config appears (as a CNI DaemonSet installs one): ready, no restart
    // — and a broken file sorted first is skipped.
    std::fs::write(net.path().join("net.d/00-broken.conflist"), "{").unwrap();
    net.write_config(vec![]);
    net.wait_network_ready().await;
    let (_, msg) = network_ready(&mut net.rt).await;
    assert!(
        msg.contains("berth-test-net") && msg.contains("bridge"),
        "{msg}"
    );
    let p = run(&mut net.rt, pod("late", false)).await.unwrap();
    let ip = pod_ip(&mut net.rt, &p).await;
    assert!(ip.starts_with(&format!("{}.", net.subnet_prefix)), "{ip}");
    // Removing the config turns it false again (naming the broken one).
    std::fs::remove_file(net.path().join("net.d/10-test.conflist")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ready, msg) = network_ready(&mut net.rt).await;
        if !ready {
            assert!(msg.contains("00-broken.conflist"), "{msg}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready after the config went"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pod attached earlier is still torn down with the config it got.
    stop(&mut net.rt, &p).await.unwrap();
    remove(&mut net.rt, &p).await.unwrap();
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    remove(&mut net.rt, &host).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_each_other_and_the_host_reaches_a_host_port() {
    let Some(mut net) = Net::start(
        "pods_reach_each_other_and_the_host_reaches_a_host_port",
        "talk",
        2,
        true,
    )
    .await
    else {
        return;
    };
    net.write_config(vec![
        json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        json!({"type": "firewall"}),
        json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}}),
    ]);
    net.wait_network_ready().await;
    let port = free_port();
    let mut server_cfg = pod("server", false);
    server_cfg.port_mappings = vec![proto::PortMapping {
        protocol: proto::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: i32::from(port),
        host_ip: "127.0.0.1".into(),
    }];
    let server = run(&mut net.rt, server_cfg.clone()).await.unwrap();
    let client_cfg = pod("client", false);
    let client = run(&mut net.rt, client_cfg.clone()).await.unwrap();
    let (server_ip, client_ip) = (
        pod_ip(&mut net.rt, &server).await,
        pod_ip(&mut net.rt, &client).await,
    );
    for ip in [&server_ip, &client_ip] {
        assert!(ip.starts_with(&format!("{}.", net.subnet_prefix)), "{ip}");
    }
    assert_ne!(server_ip, client_ip);
    assert_eq!(net.allocated().len(), 2);

    let httpd = container(
        &mut net,
        &server,
        &server_cfg,
        "httpd",
        "mkdir -p /tmp/www && echo hello-from-server > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
    )
    .await;
    let sleeper = container(&mut net, &client, &client_cfg, "client", "exec sleep 1000").await;
    // The pod's eth0 carries the address CNI reported, and the tuning
    // plugin's sysctl is in effect (the chain ran to its end).
    let (code, out) = exec(&mut net.rt, &sleeper, &["ip", "-4", "addr", "show", "eth0"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{client_ip}/24")), "{out}");
    let (_, out) = exec(
        &mut net.rt,
        &sleeper,
        &["cat", "/proc/sys/net/ipv4/conf/eth0/accept_redirects"],
    )
    .await;
    assert_eq!(out.trim(), "0");

    // Pod to pod over the bridge (retried while httpd starts).
    let deadline = Instant::now() + Duration::from_secs(10);
    // (busybox-static's wget crashes without the host's libraries; nc
    // speaks the HTTP request instead.)
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {server_ip} 8080");
    loop {
        let (code, out) = exec(&mut net.rt, &sleeper, &["sh", "-c", &get]).await;
        if code == 0 && out.contains("200 OK") {
            assert!(out.contains("hello-from-server"), "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client cannot reach {server_ip}:8080: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And back, with nc: the server pod reaches the client pod.
    let _listener = container(
        &mut net,
        &client,
        &client_cfg,
        "listener",
        "exec nc -l -p 9000 -e echo hello-from-client",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out) = exec(
            &mut net.rt,
            &httpd,
            &["sh", "-c", &format!("nc -w 2 {client_ip} 9000 </dev/null")],
        )
        .await;
        if out.contains("hello-from-client") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server cannot reach the client: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Host to pod through the hostPort mapping on 127.0.0.1 (portmap).
    let port2 = port;
    let body = tokio::task::spawn_blocking(move || host_get(port2))
        .await
        .unwrap();
    assert!(body.contains("hello-from-server"), "{body}");

    // Verbose status runs CHECK through the chain. The client passes. (For
    // the server, Debian's portmap 1.1.1 looks for an IPv6 DNAT chain it
    // never made and fails CHECK: what matters here is that berth runs it
    // and quotes the plugin, not that plugin's bug.)
    let st = pod_status(&mut net.rt, &client, true).await;
    assert_eq!(
        st.info.get("networkCheck").map(String::as_str),
        Some("ok"),
        "{:?}",
        st.info
    );
    let st = pod_status(&mut net.rt, &server, true).await;
    let check = &st.info["networkCheck"];
    assert!(check == "ok" || check.contains("plugin said"), "{check}");
    assert!(st.info["info"].contains(&server_ip), "{:?}", st.info);

    // Stop releases the addresses and the host port; a second Stop is a
    // no-op (DEL ran once).
    for p in [&server, &client] {
        stop(&mut net.rt, p).await.unwrap();
        stop(&mut net.rt, p).await.unwrap();
        assert_eq!(pod_ip(&mut net.rt, p).await, "");
    }
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(!nat.contains(&format!("--dport {port} ")), "{nat}");
    let ports = std::fs::read_dir(format!("/sys/class/net/{}/brif", net.bridge))
        .unwrap()
        .count();
    assert_eq!(ports, 0, "veths left on the bridge");
    for p in [&server, &client] {
        remove(&mut net.rt, p).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_released_across_300_pods() {
    let Some(mut net) =
        Net::start("addresses_are_released_across_300_pods", "many", 3, false).await
    else {
        return;
    };
    net.write_config(vec![]);
    net.wait_network_ready().await;
    // 300 pods one after another on a /24 (253 usable addresses): only
    // possible when every pod's address is freed.
    let t = Instant::now();
    let mut seen = std::collections::HashSet::new();
    for i in 0..300 {
        let id = run(&mut net.rt, pod(&format!("p{i}"), false))
            .await
            .unwrap_or_else(|e| panic!("pod {i}: {e:?}"));
        let ip = pod_ip(&mut net.rt, &id).await;
        assert!(
            ip.starts_with(&format!("{}.", net.subnet_prefix)),
            "pod {i}: {ip}"
        );
        seen.insert(ip);
        stop(&mut net.rt, &id).await.unwrap();
        remove(&mut net.rt, &id).await.unwrap();
    }
    println!("300 pods with CNI run+stop+remove in {:?}", t.elapsed());
    assert!(
        seen.len() > 200,
        "host-local hands out addresses round-robin"
    );
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    assert_eq!(
        std::fs::read_dir(net.path().join("root/cni"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_add_rolls_back_and_a_failed_del_is_retried() {
    let Some(mut net) = Net::start(
        "a_failed_add_rolls_back_and_a_failed_del_is_retried",
        "fail",
        4,
        false,
    )
    .await
    else {
        return;
    };
    let fail = net.fail_plugin();
    net.write_config(vec![fail]);
    net.wait_network_ready().await;

    // ADD fails in the second plugin, after the bridge allocated an
    // address: RunPodSandbox fails with the plugin's own error, DEL frees
    // the address, nothing of the pod is left.
    std::fs::write(net.path().join("fail-add"), "").unwrap();
    let err = run(&mut net.rt, pod("doomed", false)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    assert!(
        err.message().contains("ADD fails on demand") && err.message().contains("999"),
        "{err:?}"
    );
    assert!(
        err.message()
            .contains(r#""msg":"berth-test-fail: ADD fails on demand""#),
        "{err:?}"
    );
    assert_eq!(net.calls("ADD"), 1);
    assert_eq!(net.calls("DEL"), 1);
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    assert_eq!(
        std::fs::read_dir(net.path().join("root/cni"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(net.path().join("state/pods"))
            .unwrap()
            .count(),
        0
    );
    let ports = std::fs::read_dir(format!("/sys/class/net/{}/brif", net.bridge))
        .unwrap()
        .count();
    assert_eq!(ports, 0, "the pod's veth is left on the bridge");
    let listed = net
        .rt
        .list_pod_sandbox(proto::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(listed.is_empty(), "{listed:?}");

    // The name is free again and the same pod now starts.
    std::fs::remove_file(net.path().join("fail-add")).unwrap();
    let id = run(&mut net.rt, pod("doomed", false)).await.unwrap();
    assert_eq!(net.allocated().len(), 1);

    // DEL fails: StopPodSandbox fails and says why; the address is kept
    // (the plugin still holds it) and the next call retries.
    std::fs::write(net.path().join("fail-del"), "").unwrap();
    let err = stop(&mut net.rt, &id).await.unwrap_err();
    assert!(err.message().contains("DEL fails on demand"), "{err:?}");
    let dels = net.calls("DEL");
    assert!(remove(&mut net.rt, &id).await.is_err());
    assert_eq!(net.calls("DEL"), dels + 1, "RemovePodSandbox retried DEL");
    std::fs::remove_file(net.path().join("fail-del")).unwrap();
    remove(&mut net.rt, &id).await.unwrap();
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    // Removing again runs no DEL.
    let dels = net.calls("DEL");
    remove(&mut net.rt, &id).await.unwrap();
    assert_eq!(net.calls("DEL"), dels);

    // A repeated StopPodSandbox runs DEL once.
    let id = run(&mut net.rt, pod("twice", false)).await.unwrap();
    let dels = net.calls("DEL");
    for _ in 0..3 {
        stop(&mut net.rt, &id).await.unwrap();
    }
    assert_eq!(net.calls("DEL"), dels + 1);
    remove(&mut net.rt, &id).await.unwrap();
    assert_eq!(net.calls("DEL"), dels + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_is_torn_down_after_a_daemon_restart() {
    let Some(mut net) = Net::start(
        "the_network_is_torn_down_after_a_daemon_restart",
        "rst",
        5,
        false,
    )
    .await
    else {
        return;
    };
    let fail = net.fail_plugin();
    net.write_config(vec![fail]);
    net.wait_network_ready().await;
    let id = run(&mut net.rt, pod("survivor", false)).await.unwrap();
    let ip = pod_ip(&mut net.rt, &id).await;
    assert_eq!(net.allocated(), std::slice::from_ref(&ip));
    // A second pod whose netns will be gone, as after a reboot.
    let lost = run(&mut net.rt, pod("lost", false)).await.unwrap();
    assert_eq!(net.allocated().len(), 2);

    // kill -9 the daemon; meanwhile the config changes (the cached one
    // must be used for DEL, not the new one).
    if let Some(d) = &mut net.daemon {
        d.crash();
    }
    let pinned = net.path().join("state/pods").join(&lost).join("ns/net");
    assert!(Command::new("umount")
        .arg(&pinned)
        .status()
        .unwrap()
        .success());
    net.restart().await;
    std::fs::write(
        net.path().join("net.d/10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"loopback"}]}"#,
    )
    .unwrap();
    assert_eq!(
        pod_ip(&mut net.rt, &id).await,
        ip,
        "the IP survives the restart"
    );
    let dels = net.calls("DEL");
    stop(&mut net.rt, &id).await.unwrap();
    assert_eq!(net.calls("DEL"), dels + 1, "{}", net.daemon_log());
    assert_eq!(net.allocated().len(), 1, "{:?}", net.allocated());
    remove(&mut net.rt, &id).await.unwrap();
    // The pod without its netns: DEL with an empty CNI_NETNS still frees
    // its address.
    remove(&mut net.rt, &lost).await.unwrap();
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_pod_cidr_reaches_plugins() {
    let Some(mut net) = Net::start(
        "bad_requests_are_refused_and_pod_cidr_reaches_plugins",
        "bad",
        6,
        false,
    )
    .await
    else {
        return;
    };
    let fail = net.fail_plugin();
    net.write_config(vec![fail]);
    net.wait_network_ready().await;
    let mut c = pod("bw", false);
    c.annotations = HashMap::from([(
        "kubernetes.io/ingress-bandwidth".to_string(),
        "fast".to_string(),
    )]);
    let err = run(&mut net.rt, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("kubernetes.io/ingress-bandwidth"),
        "{err:?}"
    );
    let mut c = pod("semi", false);
    c.metadata.as_mut().unwrap().name = "a;K8S_POD_NAME=b".into();
    let err = run(&mut net.rt, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("config.metadata.name"), "{err:?}");
    assert_eq!(net.calls("ADD"), 0);
    // kubelet's pod CIDR: a bad one is refused, a good one accepted.
    let err = net
        .rt
        .update_runtime_config(proto::UpdateRuntimeConfigRequest {
            runtime_config: Some(proto::RuntimeConfig {
                network_config: Some(proto::NetworkConfig {
                    pod_cidr: "10.0.0.0/33".into(),
                }),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    net.rt
        .update_runtime_config(proto::UpdateRuntimeConfigRequest {
            runtime_config: Some(proto::RuntimeConfig {
                network_config: Some(proto::NetworkConfig {
                    pod_cidr: "10.251.6.0/24".into(),
                }),
            }),
        })
        .await
        .unwrap();
    let (_, msg) = network_ready(&mut net.rt).await;
    assert!(msg.contains("10.251.6.0/24"), "{msg}");
    // ... and handed to the plugin that declares `ipRanges` (with the
    // pod's DNS, which it declares too), not to the bridge.
    let mut c = pod("ranged", false);
    c.dns_config = Some(proto::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        ..Default::default()
    });
    let id = run(&mut net.rt, c).await.unwrap();
    let calls = std::fs::read_to_string(net.path().join("calls")).unwrap();
    let add = calls.lines().find(|l| l.starts_with("ADD ")).unwrap();
    assert!(
        add.contains(r#""ipRanges":[[{"subnet":"10.251.6.0/24"}]]"#) && add.contains("10.96.0.10"),
        "{add}"
    );
    assert!(!add.contains("portMappings"), "{add}");
    stop(&mut net.rt, &id).await.unwrap();
    remove(&mut net.rt, &id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_1_1_status_and_gc() {
    let Some(mut net) = Net::start("cni_1_1_status_and_gc", "gc", 7, false).await else {
        return;
    };
    // A CNI 1.1 list (Debian's plugins speak up to 1.0, so only ours).
    let mut plugin = net.fail_plugin();
    plugin["failStatusIf"] = json!(net.path().join("fail-status"));
    let list = json!({"cniVersion": "1.1.0", "name": "berth-test-11", "plugins": [plugin]});
    std::fs::write(net.path().join("net.d/10-v11.conflist"), list.to_string()).unwrap();
    net.wait_network_ready().await;
    assert!(net.calls("STATUS") >= 1, "STATUS is part of NetworkReady");
    // A plugin that answers STATUS with an error makes the node not ready,
    // with the plugin's message.
    std::fs::write(net.path().join("fail-status"), "").unwrap();
    let (ready, msg) = network_ready(&mut net.rt).await;
    assert!(!ready && msg.contains("STATUS fails on demand"), "{msg}");
    std::fs::remove_file(net.path().join("fail-status")).unwrap();
    net.wait_network_ready().await;

    // GC at start names the attachments still valid: the live pod's, not
    // the removed one's.
    let keep = run(&mut net.rt, pod("keep", false)).await.unwrap();
    let gone = run(&mut net.rt, pod("gone", false)).await.unwrap();
    remove(&mut net.rt, &gone).await.unwrap();
    net.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.calls("GC") == 0 {
        assert!(Instant::now() < deadline, "no GC after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = std::fs::read_to_string(net.path().join("calls")).unwrap();
    let gc = calls.lines().find(|l| l.starts_with("GC ")).unwrap();
    assert!(
        gc.contains(&format!(r#"{{"containerID":"{keep}","ifname":"eth0"}}"#))
            && !gc.contains(&gone),
        "{gc}"
    );
    remove(&mut net.rt, &keep).await.unwrap();
}
