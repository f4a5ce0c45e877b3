//! The streaming server through the real daemon: CRI `Exec` and
//! `PortForward` URLs upgraded to Kubernetes' WebSocket channel protocols,
//! with our own client and with Python's `websocket-client` (a client we
//! did not write) speaking `v5.channel.k8s.io`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_cri::proto;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects to a streaming URL offering `protocols`; the HTTP status when
/// the upgrade is refused.
async fn connect(url: &str, protocols: &str) -> Result<(Ws, String), u16> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    let host = req.uri().authority().unwrap().to_string();
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, resp)) => {
            let proto = resp
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            Ok((ws, proto))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// Everything received per channel until the server closes, which it
/// does with status 1000: client-go takes nothing else for a clean end.
async fn collect(ws: &mut Ws) -> HashMap<u8, Vec<u8>> {
    let mut out: HashMap<u8, Vec<u8>> = HashMap::new();
    while let Some(Ok(m)) = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("the server did not close the session")
    {
        match m {
            Message::Binary(b) if !b.is_empty() => {
                out.entry(b[0]).or_default().extend_from_slice(&b[1..]);
            }
            Message::Close(f) => {
                assert_eq!(f.map(|f| f.code), Some(CloseCode::Normal), "close status");
                break;
            }
            _ => {}
        }
    }
    out
}

fn text(out: &HashMap<u8, Vec<u8>>, ch: u8) -> String {
    String::from_utf8_lossy(out.get(&ch).map(Vec::as_slice).unwrap_or_default()).into_owned()
}

async fn exec_url(env: &mut Env, id: &str, cmd: &[&str], stdin: bool, tty: bool) -> String {
    env.rt
        .exec(proto::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

/// A running container that sleeps.
async fn sleeper(env: &mut Env, name: &str) -> String {
    let cfg = container(env, name, &["sleep", "1000"], &[]);
    let id = create(env, cfg).await.unwrap();
    start(&mut env.rt, &id).await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_exit_codes_output_and_stdin_over_websocket() {
    let Some(mut env) = env("exec_exit_codes_output_and_stdin_over_websocket").await else {
        return;
    };
    let id = sleeper(&mut env, "exec").await;

    // Output on stdout and stderr, then success.
    let url = exec_url(
        &mut env,
        &id,
        &["sh", "-c", "echo out; echo err >&2"],
        false,
        false,
    )
    .await;
    let (mut ws, proto) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    assert_eq!(proto, "v5.channel.k8s.io");
    let out = collect(&mut ws).await;
    assert_eq!(text(&out, 1), "out\n");
    assert_eq!(text(&out, 2), "err\n");
    assert_eq!(text(&out, 3), r#"{"metadata":{},"status":"Success"}"#);

    // Exit codes 1 and 137 (SIGKILL) as kubelet reports them.
    for (script, code) in [("exit 1", "1"), ("kill -9 $$", "137")] {
        let url = exec_url(&mut env, &id, &["sh", "-c", script], false, false).await;
        let (mut ws, _) = connect(&url, "v4.channel.k8s.io").await.unwrap();
        let out = collect(&mut ws).await;
        let status: serde_json::Value = serde_json::from_slice(&out[&3]).unwrap();
        assert_eq!(status["status"], "Failure", "{status}");
        assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
        assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], code, "{script}");
    }

    // stdin piped through cat; the v5 close signal ends it.
    let url = exec_url(&mut env, &id, &["cat"], true, false).await;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws.send(Message::Binary(b"\x00hello\n".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(b"\x00world\n".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
    let out = collect(&mut ws).await;
    assert_eq!(text(&out, 1), "hello\nworld\n");
    assert_eq!(text(&out, 3), r#"{"metadata":{},"status":"Success"}"#);

    // The base64 form: text messages, an ASCII channel digit.
    let url = exec_url(&mut env, &id, &["echo", "b64"], false, false).await;
    let (mut ws, proto) = connect(&url, "v4.base64.channel.k8s.io").await.unwrap();
    assert_eq!(proto, "v4.base64.channel.k8s.io");
    let mut got = String::new();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            got.push_str(&t);
            got.push('|');
        }
    }
    assert!(got.contains("1YjY0Cg==|"), "{got}"); // '1' + base64("b64\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_10_mib_and_a_terminal_with_resizes() {
    let Some(mut env) = env("exec_streams_10_mib_and_a_terminal_with_resizes").await else {
        return;
    };
    let id = sleeper(&mut env, "big").await;
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let daemon = env.daemon.child.id();
    let before = rss(daemon);
    let url = exec_url(
        &mut env,
        &id,
        &["dd", "if=/dev/zero", "bs=65536", "count=160"],
        false,
        false,
    )
    .await;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    // A client that does not read: dd's 10 MiB must wait in the kernel's
    // pipes, not pile up in the daemon (flow control end to end).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stalled = rss(daemon);
    println!("daemon RSS: {before} KiB before, {stalled} KiB with 10 MiB unread");
    assert!(
        stalled < before + 6 * 1024,
        "the daemon buffered what the client did not read: {before} KiB -> {stalled} KiB"
    );
    let mut stdout = 0usize;
    let mut status = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Binary(b) = m {
            match b.first() {
                Some(1) => {
                    assert!(b[1..].iter().all(|&x| x == 0));
                    stdout += b.len() - 1;
                }
                Some(3) => status.extend_from_slice(&b[1..]),
                _ => {}
            }
        }
    }
    assert_eq!(stdout, 10 << 20, "every byte arrives");
    assert!(String::from_utf8_lossy(&status).contains("Success"));
    let after = rss(daemon);
    assert!(
        after < before + 32 * 1024,
        "the daemon buffered the stream: {before} KiB -> {after} KiB"
    );

    // A terminal: each size the client sends is the one stty sees next.
    let url = exec_url(
        &mut env,
        &id,
        &["sh", "-c", "read x; stty size; read y; stty size"],
        true,
        true,
    )
    .await;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (w, h) in [(100, 40), (120, 50)] {
        let size = format!(r#"{{"Width":{w},"Height":{h}}}"#);
        ws.send(Message::Binary(
            [&[4u8][..], size.as_bytes()].concat().into(),
        ))
        .await
        .unwrap();
        // Resizes and keystrokes travel on different channels: let the
        // resize land before the line that makes stty run.
        tokio::time::sleep(Duration::from_millis(300)).await;
        ws.send(Message::Binary(b"\x00\n".to_vec().into()))
            .await
            .unwrap();
        let want = format!("{h} {w}");
        while !seen.contains(&want) {
            match tokio::time::timeout_at(deadline.into(), ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) if b.first() == Some(&1) => {
                    seen.push_str(&String::from_utf8_lossy(&b[1..]));
                }
                Ok(Some(Ok(_))) => {}
                other => panic!("no {want:?} in {seen:?}: {other:?}"),
            }
        }
    }
    collect(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_single_use_and_a_departed_client_leaves_no_process() {
    let Some(mut env) = env("tokens_are_single_use_and_a_departed_client_leaves_no_process").await
    else {
        return;
    };
    let id = sleeper(&mut env, "tok").await;
    let url = exec_url(&mut env, &id, &["true"], false, false).await;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    collect(&mut ws).await;
    assert_eq!(
        connect(&url, "v5.channel.k8s.io").await.err(),
        Some(404),
        "replayed"
    );
    let forged = format!("{}x", &url[..url.len() - 1]);
    assert_eq!(connect(&forged, "v5.channel.k8s.io").await.err(), Some(404));
    let url = exec_url(&mut env, &id, &["true"], false, false).await;
    assert_eq!(
        connect(&url, "bogus.k8s.io").await.err(),
        Some(400),
        "no protocol we speak"
    );

    // The client goes away mid-stream: the process goes too.
    let url = exec_url(&mut env, &id, &["sleep", "777"], false, false).await;
    let (ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    let ps = |env: &mut Env| {
        let mut rt = env.rt.clone();
        let id = id.clone();
        async move {
            let r = rt
                .exec_sync(proto::ExecSyncRequest {
                    container_id: id,
                    cmd: vec!["ps".into()],
                    timeout: 10,
                })
                .await
                .unwrap()
                .into_inner();
            String::from_utf8_lossy(&r.stdout).into_owned()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ps(&mut env).await.contains("sleep 777") {
        assert!(Instant::now() < deadline, "the exec never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ps(&mut env).await;
        if !out.contains("sleep 777") {
            break;
        }
        assert!(Instant::now() < deadline, "left behind:\n{out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Requests the streaming server must never see.
    let err = env
        .rt
        .exec(proto::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into()],
            tty: true,
            stderr: true,
            stdout: true,
            stdin: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = env
        .rt
        .exec(proto::ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websocket_client_speaks_v5() {
    const T: &str = "python_websocket_client_speaks_v5";
    // Debian's python3 (with Debian's python3-websocket), not whatever
    // python3 comes first on PATH.
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let have = std::process::Command::new(python)
        .args(["-c", "import websocket"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        println!("skipped: {T}: python3 with websocket-client is missing (apt install python3-websocket)");
        return;
    }
    let Some(mut env) = env(T).await else {
        return;
    };
    let id = sleeper(&mut env, "py").await;
    let url = exec_url(
        &mut env,
        &id,
        &["sh", "-c", "cat; echo done; exit 3"],
        true,
        false,
    )
    .await;
    let script = r#"
import json, sys, websocket
ws = websocket.create_connection(sys.argv[1].replace("http://", "ws://", 1), subprotocols=["v5.channel.k8s.io"])
assert ws.getsubprotocol() == "v5.channel.k8s.io", ws.getsubprotocol()
ws.send_binary(b"\x00from python\n")
ws.send_binary(b"\xff\x00")
out, status = b"", None
while True:
    try:
        m = ws.recv()
    except websocket.WebSocketConnectionClosedException:
        break
    if not m:
        break
    if isinstance(m, str):
        m = m.encode()
    if m[0] == 1:
        out += m[1:]
    elif m[0] == 3 and len(m) > 1:
        status = json.loads(m[1:])
print(json.dumps({"out": out.decode(), "status": status}))
"#;
    let url2 = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", script, &url2])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["out"], "from python\ndone\n", "{v}");
    assert_eq!(v["status"]["reason"], "NonZeroExitCode", "{v}");
    assert_eq!(v["status"]["details"]["causes"][0]["message"], "3", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_server_in_the_pod_50_times_at_once() {
    let Some(mut env) = env("port_forward_reaches_a_server_in_the_pod_50_times_at_once").await
    else {
        return;
    };
    let cfg = container(
        &env,
        "httpd",
        &["httpd", "-f", "-p", "8080", "-h", "/etc"],
        &[],
    );
    let id = create(&mut env, cfg).await.unwrap();
    start(&mut env.rt, &id).await.unwrap();
    let pod = env.pod.clone();
    let one = |mut rt: Rt, pod: String| async move {
        let url = rt
            .port_forward(proto::PortForwardRequest {
                pod_sandbox_id: pod,
                port: vec![8080],
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let (mut ws, _) = connect(&url, "v4.channel.k8s.io").await.unwrap();
        // Each channel opens with the port, little endian.
        let mut opened = 0;
        while opened < 2 {
            if let Some(Ok(Message::Binary(b))) = ws.next().await {
                assert_eq!(&b[1..], &8080u16.to_le_bytes(), "channel {}", b[0]);
                opened += 1;
            }
        }
        ws.send(Message::Binary(
            [&[0u8][..], b"GET /passwd HTTP/1.0\r\n\r\n"]
                .concat()
                .into(),
        ))
        .await
        .unwrap();
        let out = tokio::time::timeout(Duration::from_secs(20), collect(&mut ws)).await;
        let Ok(out) = out else {
            return (String::new(), "timeout".to_string());
        };
        (text(&out, 0), text(&out, 1))
    };
    // httpd starts asynchronously: the first request is retried.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (data, err) = one(env.rt.clone(), pod.clone()).await;
        if data.contains("200 OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer: {data:?} {err:?}\n{}",
            env.daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = futures::future::join_all((0..50).map(|_| one(env.rt.clone(), pod.clone()))).await;
    for (data, err) in &all {
        assert!(
            data.contains("200 OK") && data.contains("root:x:0:0"),
            "{data:?} {err:?}"
        );
    }
    // A port nobody listens on: the error channel says so.
    let url = env
        .rt
        .port_forward(proto::PortForwardRequest {
            pod_sandbox_id: pod,
            port: vec![9],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, _) = connect(&url, "v4.channel.k8s.io").await.unwrap();
    let out = collect(&mut ws).await;
    let err = text(&out, 1);
    assert!(err.contains("port 9") && err.contains("refused"), "{err:?}");
}

async fn attach_url(env: &mut Env, id: &str, stdin: bool) -> String {
    env.rt
        .attach(proto::AttachRequest {
            container_id: id.into(),
            stdin,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

/// Reads stdout (channel 1) until it contains `want`.
async fn read_until(ws: &mut Ws, want: &str) -> String {
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.contains(want) {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if b.first() == Some(&1) => {
                seen.push_str(&String::from_utf8_lossy(&b[1..]));
            }
            Ok(Some(Ok(Message::Binary(b)))) if b.first() == Some(&3) => {
                panic!("error channel: {}", String::from_utf8_lossy(&b[1..]))
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no {want:?} in {seen:?}: {other:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_output_stdin_terminal_and_stdin_once() {
    let Some(mut env) = env("attach_to_output_stdin_terminal_and_stdin_once").await else {
        return;
    };
    // Output of a running container reaches an attached client.
    let cfg = container(
        &env,
        "ticker",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
        ],
        &[],
    );
    let ticker = create(&mut env, cfg).await.unwrap();
    start(&mut env.rt, &ticker).await.unwrap();
    let url = attach_url(&mut env, &ticker, false).await;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    read_until(&mut ws, "tick").await;
    drop(ws);
    assert_eq!(
        status(&mut env.rt, &ticker).await.state,
        proto::ContainerState::ContainerRunning as i32,
        "detaching leaves the container running"
    );

    // stdin reaches the container; its answers come back (and are logged).
    let mut cfg = container(
        &env,
        "echoer",
        &["sh", "-c", "while read l; do echo \"got $l\"; done"],
        &[],
    );
    cfg.stdin = true;
    let echoer = create(&mut env, cfg).await.unwrap();
    start(&mut env.rt, &echoer).await.unwrap();
    let url = attach_url(&mut env, &echoer, true).await;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws.send(Message::Binary(b"\x00hello\n".to_vec().into()))
        .await
        .unwrap();
    read_until(&mut ws, "got hello").await;
    drop(ws);
    // A second client, after the first left: stdin is still open.
    let url = attach_url(&mut env, &echoer, true).await;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws.send(Message::Binary(b"\x00again\n".to_vec().into()))
        .await
        .unwrap();
    read_until(&mut ws, "got again").await;
    drop(ws);
    // The monitor does not spin on a socket the client left behind (a
    // quiet container: no output that would reveal the hang-up).
    let v = verbose_info(&mut env.rt, &echoer).await;
    let pid = v["monitorPid"].as_i64().unwrap() as i32;
    let cpu = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        cpu() - before < 20,
        "the monitor used {} ticks in 1 s",
        cpu() - before
    );

    // A terminal container: resizes from the attached client apply.
    let mut cfg = container(
        &env,
        "term",
        &["sh", "-c", "while read l; do stty size; done"],
        &[],
    );
    cfg.stdin = true;
    cfg.tty = true;
    let term = create(&mut env, cfg).await.unwrap();
    start(&mut env.rt, &term).await.unwrap();
    let url = attach_url(&mut env, &term, true).await;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws.send(Message::Binary(
        [&[4u8][..], br#"{"Width":77,"Height":33}"#].concat().into(),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::Binary(b"\x00\n".to_vec().into()))
        .await
        .unwrap();
    read_until(&mut ws, "33 77").await;
    drop(ws);

    // stdin_once: when the attached client closes stdin, the container's
    // stdin closes — cat ends, and so does the container.
    let mut cfg = container(&env, "once", &["cat"], &[]);
    cfg.stdin = true;
    cfg.stdin_once = true;
    let once = create(&mut env, cfg).await.unwrap();
    start(&mut env.rt, &once).await.unwrap();
    let url = attach_url(&mut env, &once, true).await;
    let (mut ws, _) = connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws.send(Message::Binary(b"\x00bye\n".to_vec().into()))
        .await
        .unwrap();
    read_until(&mut ws, "bye").await;
    ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
    let out = collect(&mut ws).await;
    assert_eq!(
        text(&out, 3),
        r#"{"metadata":{},"status":"Success"}"#,
        "{out:?}"
    );
    let st = wait_exited(&mut env.rt, &once).await;
    assert_eq!(st.exit_code, 0);

    // Attach needs a running container, and stdin only if it has one.
    let err = env
        .rt
        .attach(proto::AttachRequest {
            container_id: ticker.clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = env
        .rt
        .attach(proto::AttachRequest {
            container_id: once,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
}

/// Upgrades a streaming URL to SPDY/3.1 as client-go's round tripper does
/// (offering `protocol`), then runs our own SPDY client session on it.
async fn spdy_connect(
    url: &str,
    protocol: &str,
) -> Result<berth_cri::stream::spdy::Session, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    tcp.write_all(
        format!(
            "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Byte by byte: what follows the headers is already SPDY.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(head);
    }
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("x-stream-protocol-version: {protocol}")),
        "{head}"
    );
    Ok(berth_cri::stream::spdy::Session::client(tcp))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_port_forward_over_spdy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(mut env) = env("exec_and_port_forward_over_spdy").await else {
        return;
    };
    let id = sleeper(&mut env, "spdy").await;

    // Exec, as kubectl's SPDY transport opens it: error stream first, then
    // one stream per stdio.
    let url = exec_url(
        &mut env,
        &id,
        &["sh", "-c", "cat; echo err >&2; exit 2"],
        true,
        false,
    )
    .await;
    let session = spdy_connect(&url, "v4.channel.k8s.io").await.unwrap();
    let mut error = session.open(&[("streamtype", "error")]).await.unwrap();
    let mut stdin = session.open(&[("streamtype", "stdin")]).await.unwrap();
    let mut stdout = session.open(&[("streamtype", "stdout")]).await.unwrap();
    let mut stderr = session.open(&[("streamtype", "stderr")]).await.unwrap();
    let payload: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
    let p2 = payload.clone();
    let writer = tokio::spawn(async move {
        stdin.write_all(&p2).await.unwrap();
        stdin.shutdown().await.unwrap();
    });
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
    let (a, b, c) = tokio::join!(
        stdout.read_to_end(&mut out),
        stderr.read_to_end(&mut err),
        error.read_to_end(&mut status)
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    writer.await.unwrap();
    assert!(
        out == payload,
        "3 MiB through cat over SPDY: {} bytes back",
        out.len()
    );
    assert_eq!(err, b"err\n");
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "2", "{status}");
    session.close().await;

    // An unsupported protocol version is refused before the upgrade.
    let url = exec_url(&mut env, &id, &["true"], false, false).await;
    let refused = spdy_connect(&url, "v9.channel.k8s.io").await.err().unwrap();
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

    // Port-forward: one session, many connections (error + data stream
    // pairs by requestID).
    let cfg = container(
        &env,
        "httpd",
        &["httpd", "-f", "-p", "8080", "-h", "/etc"],
        &[],
    );
    let httpd = create(&mut env, cfg).await.unwrap();
    start(&mut env.rt, &httpd).await.unwrap();
    let url = env
        .rt
        .port_forward(proto::PortForwardRequest {
            pod_sandbox_id: env.pod.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let session = std::sync::Arc::new(spdy_connect(&url, "portforward.k8s.io").await.unwrap());
    // One connection; one that httpd resets is tried again: busybox httpd
    // (listen backlog 9) resets a few of 50 simultaneous connections, and
    // the error stream says so.
    let get = |n: usize| {
        let session = session.clone();
        async move {
            let mut body = String::new();
            for attempt in 0..3 {
                let rid = format!("{n}.{attempt}");
                let headers = |ty: &'static str| vec![("streamtype", ty), ("port", "8080")];
                let mut h = headers("error");
                h.push(("requestid", &rid));
                let mut err = session.open(&h).await.unwrap();
                let mut h = headers("data");
                h.push(("requestid", &rid));
                let mut data = session.open(&h).await.unwrap();
                data.write_all(b"GET /passwd HTTP/1.0\r\n\r\n")
                    .await
                    .unwrap();
                data.shutdown().await.unwrap();
                let mut got = Vec::new();
                let read = data.read_to_end(&mut got).await;
                body = String::from_utf8_lossy(&got).into_owned();
                if body.contains("200 OK") {
                    break;
                }
                let mut e = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), err.read_to_end(&mut e)).await;
                let e = String::from_utf8_lossy(&e).into_owned();
                body.push_str(&format!(" [data stream: {read:?}; error stream: {e:?}]"));
                if !e.contains("reset by peer") {
                    break;
                }
                println!("connection {rid} reset by httpd, tried again: {e}");
            }
            body
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get(0).await.contains("200 OK") {
        assert!(
            Instant::now() < deadline,
            "httpd never answered through SPDY"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = futures::future::join_all((1..=50).map(get)).await;
    for body in &all {
        assert!(
            body.contains("200 OK") && body.contains("root:x:0:0"),
            "{body:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streaming_server_speaks_tls_when_given_a_certificate() {
    const T: &str = "the_streaming_server_speaks_tls_when_given_a_certificate";
    let python = "/usr/bin/python3";
    let have = std::process::Command::new(python)
        .args(["-c", "import websocket"])
        .status()
        .is_ok_and(|s| s.success());
    if !have || !std::path::Path::new("/usr/bin/openssl").exists() {
        println!("skipped: {T}: needs /usr/bin/openssl and Debian's python3-websocket");
        return;
    }
    let Some(mut env) = env(T).await else {
        return;
    };
    // A self-signed certificate for 127.0.0.1; the daemon is restarted on
    // the same directories with it (pods and images stay).
    let dir = env.dir.path().to_path_buf();
    let (cert, key) = (dir.join("stream.crt"), dir.join("stream.key"));
    let ok = std::process::Command::new("/usr/bin/openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    env.daemon.crash();
    let args = [
        "--stream-tls-cert",
        cert.to_str().unwrap(),
        "--stream-tls-key",
        key.to_str().unwrap(),
    ];
    env.daemon = berth_e2e::daemon::Daemon::start(&env.berth, &dir, &args);
    env.rt = berth_cri::proto::runtime_service_client::RuntimeServiceClient::new(
        env.daemon.channel().await,
    );
    let id = sleeper(&mut env, "tls").await;
    let url = exec_url(&mut env, &id, &["echo", "over tls"], false, false).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let script = r#"
import json, ssl, sys, websocket
ws = websocket.create_connection(sys.argv[1].replace("https://", "wss://", 1),
    subprotocols=["v5.channel.k8s.io"], sslopt={"ca_certs": sys.argv[2]})
out = b""
while True:
    try:
        m = ws.recv()
    except websocket.WebSocketConnectionClosedException:
        break
    if not m:
        break
    if m[0] == 1:
        out += m[1:]
print(out.decode(), end="")
"#;
    let cert2 = cert.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(["-c", script, &url])
            .arg(&cert2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over tls\n");
}
