//! What a client can make the daemon hold, through the real daemon
//! (issues 17 and 24, found by a fuzzer): connections to the streaming
//! server that never send a request, a daemon out of file descriptors,
//! Exec URLs nobody uses, and one gRPC connection opening thousands of
//! calls. Each test measures the daemon's file descriptors, memory or CPU
//! time from /proc and prints the figures.

mod common;

use std::time::{Duration, Instant};

use berth_cri::proto;
use common::*;

/// VmRSS of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// Raises this process's soft fd limit to its hard one (the daemon
/// inherits it): the tests open thousands of connections.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    hard
}

/// Sets the soft fd limit of `pid` with util-linux's prlimit (the hard one
/// stays `hard`, so the soft one can go back up without privileges).
fn set_fd_limit(pid: u32, soft: u64, hard: u64) -> bool {
    std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A running container that sleeps.
async fn sleeper(env: &mut Env, name: &str) -> String {
    let cfg = container(env, name, &["sleep", "1000"], &[]);
    let id = create(env, cfg).await.unwrap();
    start(&mut env.rt, &id).await.unwrap();
    id
}

fn exec_request(id: &str, cmd: Vec<String>) -> proto::ExecRequest {
    proto::ExecRequest {
        container_id: id.into(),
        cmd,
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    }
}

/// `echo <word>` through Exec and a WebSocket session: what it printed.
async fn exec_echo(env: &mut Env, id: &str, word: &str) -> String {
    let url = env
        .rt
        .exec(exec_request(id, vec!["echo".into(), word.into()]))
        .await
        .unwrap()
        .into_inner()
        .url;
    session_stdout(&url).await
}

/// The streaming server's `host:port`, from an Exec URL.
async fn stream_addr(env: &mut Env, id: &str) -> String {
    let url = env
        .rt
        .exec(exec_request(id, vec!["true".into()]))
        .await
        .unwrap()
        .into_inner()
        .url;
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// Up to `n` TCP connections to `addr` that never send a byte (those not
/// made within 3 s are given up).
async fn silent_connections(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for chunk in 0..n.div_ceil(250) {
        let want = 250.min(n - chunk * 250);
        let tries = (0..want).map(|_| {
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        });
        for r in futures::future::join_all(tries).await {
            if let Ok(Ok(c)) = r {
                held.push(c);
            }
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_streaming_connections_are_closed_after_the_header_timeout() {
    let test = "silent_streaming_connections_are_closed_after_the_header_timeout";
    if raise_fd_limit() < 12_000 {
        println!("skipped: {test}: RLIMIT_NOFILE's hard limit is under 12000");
        return;
    }
    let config = "[stream]\nheader_timeout_seconds = 2\nmax_connections = 512\n";
    let Some(mut env) = env_with_config(test, config).await else {
        return;
    };
    let id = sleeper(&mut env, "silent").await;
    let addr = stream_addr(&mut env, &id).await;
    let pid = env.daemon.child.id();
    assert_eq!(exec_echo(&mut env, &id, "warm").await, "warm\n");
    let (fds0, rss0, cpu0) = (fds(pid), rss_kib(pid), cpu_seconds(pid));

    // 5000 connections that never send their request, held open by us.
    let sampler = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut peak_fds, mut peak_rss) = (0, 0);
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                peak_fds = peak_fds.max(fds(pid));
                peak_rss = peak_rss.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (peak_fds, peak_rss)
        });
        (stop, task)
    };
    let start = Instant::now();
    let held = silent_connections(&addr, 5000).await;
    let connected = held.len();
    // The daemon closes them (2 s each, 512 at a time) while we keep ours.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fds(pid) > fds0 + 16 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled = start.elapsed();
    let fds_after = fds(pid);
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak_fds, peak_rss) = sampler.1.await.unwrap();
    let cpu = cpu_seconds(pid) - cpu0;
    println!(
        "{connected} silent connections made; daemon fds {fds0} -> peak {peak_fds} -> {fds_after} \
         after {settled:.1?}; RSS {rss0} -> peak {peak_rss} KiB; CPU {cpu:.2} s"
    );
    assert!(connected >= 1000, "only {connected} connections were made");
    assert!(
        fds_after <= fds0 + 16,
        "the daemon still holds {fds_after} fds ({fds0} before): silent connections are kept"
    );
    assert!(
        peak_fds <= fds0 + 512 + 64,
        "{peak_fds} fds at the peak ({fds0} before; at most 512 connections)"
    );
    assert!(peak_rss < rss0 + 48 * 1024, "RSS {rss0} -> {peak_rss} KiB");
    // Every one of ours was closed by the daemon: reading gives EOF (or a
    // 408 and then EOF).
    let mut closed = 0;
    for mut c in held.into_iter().take(200) {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 200, "connections the daemon should have closed");
    assert_eq!(exec_echo(&mut env, &id, "after").await, "after\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_out_of_fds_backs_off_and_keeps_its_network() {
    let test = "a_daemon_out_of_fds_backs_off_and_keeps_its_network";
    let hard = raise_fd_limit();
    if which_prlimit().is_none() {
        println!("skipped: {test}: needs util-linux's prlimit");
        return;
    }
    let config = "[stream]\nheader_timeout_seconds = 3\n";
    let Some(mut env) = env_with_config(test, config).await else {
        return;
    };
    let id = sleeper(&mut env, "starved").await;
    let addr = stream_addr(&mut env, &id).await;
    let pid = env.daemon.child.id();
    let ready = |s: &proto::StatusResponse| {
        s.status.as_ref().is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.r#type == "NetworkReady" && c.status)
        })
    };
    assert!(ready(&runtime_status(&mut env.rt).await));
    // A few descriptors to spare, then 1000 connections: accept fails
    // with EMFILE while they wait in the backlog.
    let limit = fds(pid) as u64 + 8;
    assert!(set_fd_limit(pid, limit, hard), "prlimit on the daemon");
    let held = silent_connections(&addr, 1000).await;
    let cpu0 = cpu_seconds(pid);
    let window = Duration::from_secs(8);
    // Longer than the CNI watcher's 5 s reload: the config must survive.
    tokio::time::sleep(window).await;
    let cpu = cpu_seconds(pid) - cpu0;
    let network = ready(&runtime_status(&mut env.rt).await);
    let log = env.daemon.log();
    println!(
        "{} connections against an fd limit of {limit}: daemon CPU {cpu:.2} s in {window:?}; \
         NetworkReady {network}; EMFILE warnings logged: {}",
        held.len(),
        log.matches("cannot accept connections").count()
    );
    drop(held);
    assert!(set_fd_limit(pid, hard, hard), "prlimit back");
    assert!(
        cpu < 2.0,
        "the daemon spent {cpu:.2} s of CPU in {window:?} out of descriptors (spinning on accept)"
    );
    assert!(network, "NetworkReady went false while out of descriptors");
    assert_eq!(exec_echo(&mut env, &id, "recovered").await, "recovered\n");
}

fn which_prlimit() -> Option<()> {
    std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_exec_urls_are_dropped_when_they_expire() {
    let test = "unused_exec_urls_are_dropped_when_they_expire";
    let ttl = Duration::from_secs(3);
    let config = format!("[stream]\ntoken_ttl_seconds = {}\n", ttl.as_secs());
    let Some(mut env) = env_with_config(test, &config).await else {
        return;
    };
    let id = sleeper(&mut env, "tokens").await;
    let pid = env.daemon.child.id();
    assert_eq!(exec_echo(&mut env, &id, "warm").await, "warm\n");
    let rss0 = rss_kib(pid);

    // 1000 Exec calls with 1 MiB commands (8 arguments of 128 KiB - 1,
    // what execve takes), never used.
    let big: Vec<String> = (0..8)
        .map(|i| char::from(b'a' + i).to_string().repeat(128 * 1024 - 1))
        .collect();
    let (mut issued, mut refused, mut peak) = (0, 0, 0);
    let start = Instant::now();
    for i in 0..1000 {
        match env.rt.exec(exec_request(&id, big.clone())).await {
            Ok(_) => issued += 1,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => refused += 1,
            Err(s) => panic!("Exec {i}: {s:?}"),
        }
        if i % 50 == 0 {
            peak = peak.max(rss_kib(pid));
        }
    }
    let took = start.elapsed();
    let rss_end = rss_kib(pid);
    peak = peak.max(rss_end);
    // Within twice the TTL the requests are gone.
    tokio::time::sleep(2 * ttl).await;
    let rss_later = rss_kib(pid);
    println!(
        "1000 Exec calls of 1 MiB in {took:.1?}: {issued} issued, {refused} ResourceExhausted; \
         daemon RSS {rss0} KiB -> peak {peak} -> {rss_end} at the end -> {rss_later} KiB {:?} later",
        2 * ttl
    );
    assert!(
        peak < rss0 + 256 * 1024,
        "RSS {rss0} -> {peak} KiB while the URLs waited"
    );
    assert!(
        rss_later < rss0 + 32 * 1024,
        "RSS {rss0} -> {rss_later} KiB after {:?}: unused URLs are kept",
        2 * ttl
    );
    // Too large a command is refused outright.
    let err = env
        .rt
        .exec(exec_request(&id, vec!["x".repeat(200 * 1024)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(exec_echo(&mut env, &id, "still").await, "still\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_grpc_connection_cannot_open_unbounded_calls() {
    let test = "one_grpc_connection_cannot_open_unbounded_calls";
    let Some(env) = env(test).await else {
        return;
    };
    let pid = env.daemon.child.id();
    let sock = tokio::net::UnixStream::connect(&env.daemon.sock)
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(sock).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    // The server's SETTINGS arrive with the first exchange.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let advertised = client.current_max_send_streams();
    let rss0 = rss_kib(pid);
    // Calls that send their headers and never their body: each holds a
    // stream (and a handler) until the connection goes. h2 queues those
    // past the server's limit on our side; without a limit all 20,000
    // reach the daemon.
    let mut open = Vec::new();
    for _ in 0..20_000 {
        match tokio::time::timeout(Duration::from_secs(2), client.clone().ready()).await {
            Ok(Ok(c)) => client = c,
            _ => break,
        }
        let req = tonic::codegen::http::Request::post(
            "http://localhost/runtime.v1.RuntimeService/Version",
        )
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        match client.send_request(req, false) {
            Ok(pair) => open.push(pair),
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_kib(pid);
    println!(
        "server advertises max_concurrent_streams {advertised}; {} calls started on one \
         connection; daemon RSS {rss0} -> {rss} KiB",
        open.len()
    );
    assert!(
        advertised <= 1000,
        "SETTINGS_MAX_CONCURRENT_STREAMS {advertised}"
    );
    assert!(rss < rss0 + 24 * 1024, "RSS {rss0} -> {rss} KiB");
    drop(open);
    drop(client);
    // The daemon still answers on a new connection.
    let mut rt = RuntimeServiceClient::new(env.daemon.channel().await);
    rt.version(proto::VersionRequest::default()).await.unwrap();
}

use berth_cri::proto::runtime_service_client::RuntimeServiceClient;
