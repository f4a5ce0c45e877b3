//! The real `kubectl` as a client of berth's streaming server, through the
//! stand-in API server of `berth_e2e::kube_api` (which relays kubectl's
//! upgrades to the URLs the real daemon hands out, as kubelet's proxy
//! does). Every test runs twice: with kubectl's default negotiation
//! (WebSocket first: `v5.channel.k8s.io`, and SPDY tunneled over WebSocket
//! for port-forward) and with WebSockets turned off (SPDY/3.1), and checks
//! in the stand-in's record that the transport was the one intended, not a
//! silent fallback.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_cri::proto;
use berth_e2e::kube_api::{self, BoxFuture, Container, Cri, KubeApi, Seen, StreamCall};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// The pod's name for kubectl.
const POD: &str = "testpod";

/// kubectl's two transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    WebSocket,
    Spdy,
}

const MODES: [Mode; 2] = [Mode::WebSocket, Mode::Spdy];

impl Mode {
    fn upgrade(self) -> &'static str {
        match self {
            Mode::WebSocket => "websocket",
            Mode::Spdy => "spdy/3.1",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Mode::WebSocket => "ws",
            Mode::Spdy => "spdy",
        }
    }
}

/// The daemon over CRI, for the stand-in.
struct Backend(Rt);

impl Cri for Backend {
    fn streaming_url(&self, call: StreamCall) -> BoxFuture<Result<String, String>> {
        let mut rt = self.0.clone();
        Box::pin(async move {
            let r = match call {
                StreamCall::Exec {
                    container_id,
                    cmd,
                    stdin,
                    stdout,
                    stderr,
                    tty,
                } => rt
                    .exec(proto::ExecRequest {
                        container_id,
                        cmd,
                        tty,
                        stdin,
                        stdout,
                        stderr,
                    })
                    .await
                    .map(|r| r.into_inner().url),
                StreamCall::Attach {
                    container_id,
                    stdin,
                    stdout,
                    stderr,
                    tty,
                } => rt
                    .attach(proto::AttachRequest {
                        container_id,
                        stdin,
                        tty,
                        stdout,
                        stderr,
                    })
                    .await
                    .map(|r| r.into_inner().url),
                StreamCall::PortForward { sandbox_id, ports } => rt
                    .port_forward(proto::PortForwardRequest {
                        pod_sandbox_id: sandbox_id,
                        port: ports.into_iter().map(i32::from).collect(),
                    })
                    .await
                    .map(|r| r.into_inner().url),
            };
            r.map_err(|s| s.message().to_string())
        })
    }
}

/// A daemon with a pod (see `common::env`), the stand-in in front of it,
/// and kubectl's own home. The stand-in goes first when dropped, then the
/// daemon and everything of the test's pod.
struct KEnv {
    api: KubeApi,
    env: Env,
    home: PathBuf,
}

async fn kenv(test: &str) -> Option<KEnv> {
    kube_api::kubectl_available(test)?;
    let env = env(test).await?;
    let api = KubeApi::start(Backend(env.rt.clone())).await.unwrap();
    api.add_pod(POD, &env.pod);
    let home = env.dir.path().join("kubectl-home");
    Some(KEnv { api, env, home })
}

impl KEnv {
    /// Creates and starts container `name` in the pod, known to the
    /// stand-in.
    async fn container(&mut self, name: &str, cmd: &[&str], stdin: bool) -> String {
        let mut cfg = container(&self.env, name, cmd, &[]);
        cfg.stdin = stdin;
        let id = create(&mut self.env, cfg).await.unwrap();
        start(&mut self.env.rt, &id).await.unwrap();
        self.api.add_container(
            POD,
            Container {
                name: name.into(),
                id: id.clone(),
                stdin,
                tty: false,
                log_path: Some(self.env.dir.path().join("logs").join(name).join("0.log")),
            },
        );
        id
    }

    /// `program` (kubectl, or what runs it) set up for kubectl in `mode`,
    /// stdin null unless set otherwise.
    fn command(&self, mode: Mode, program: &str) -> tokio::process::Command {
        let mut cmd = kube_api::kubectl_command(&self.api, &self.home, program);
        if mode == Mode::Spdy {
            cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
            cmd.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false");
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    fn kubectl(&self, mode: Mode, args: &[&str]) -> tokio::process::Command {
        let mut cmd = self.command(mode, "kubectl");
        cmd.args(args);
        cmd
    }

    /// Runs kubectl with `input` on its stdin: (exit code, stdout, stderr).
    async fn run(&self, mode: Mode, args: &[&str], input: Option<&[u8]>) -> (i32, String, String) {
        let mut cmd = self.kubectl(mode, args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().unwrap();
        if let (Some(mut w), Some(data)) = (child.stdin.take(), input) {
            let data = data.to_vec();
            tokio::spawn(async move {
                let _ = w.write_all(&data).await;
            });
        }
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish"))
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The streaming requests since the last call went over `mode`'s
    /// transport and were all switched (101): no fallback, no refusal.
    fn assert_transport(&self, mode: Mode, sub: &str) {
        let seen: Vec<Seen> = self.api.take_seen();
        assert!(
            seen.iter().any(|s| s.subresource == sub),
            "no {sub} request reached the stand-in: {seen:?}"
        );
        for s in &seen {
            assert_eq!(
                (s.upgrade.as_str(), s.status),
                (mode.upgrade(), 101),
                "{seen:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_output_exit_codes_and_stdin() {
    let Some(mut k) = kenv("kubectl_exec_output_exit_codes_and_stdin").await else {
        return;
    };
    k.container("sh", &["sleep", "1000"], false).await;
    let exec = |script: &'static str, stdin: bool| {
        let mut a = vec!["exec", POD, "-c", "sh"];
        if stdin {
            a.push("-i");
        }
        a.extend(["--", "sh", "-c", script]);
        a
    };
    for mode in MODES {
        let (code, out, err) = k
            .run(mode, &exec("echo out; echo err >&2", false), None)
            .await;
        assert_eq!((code, out.as_str()), (0, "out\n"), "{mode:?}: {err}");
        assert!(err.contains("err\n"), "{mode:?}: {err:?}");

        let (code, _, err) = k.run(mode, &exec("exit 7", false), None).await;
        assert_eq!(code, 7, "{mode:?}: {err}");
        assert!(err.contains("exit code 7"), "{mode:?}: {err:?}");

        let input = b"hello\nworld\n";
        let (code, out, err) = k
            .run(mode, &exec("cat; echo done", true), Some(input))
            .await;
        assert_eq!(
            (code, out.as_str()),
            (0, "hello\nworld\ndone\n"),
            "{mode:?}: {err}"
        );
        k.assert_transport(mode, "exec");
    }
}

/// What a kubectl on a pseudo-terminal printed, as it arrives.
struct Terminal {
    master: std::fs::File,
    slave: PathBuf,
    output: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    seen: String,
}

impl Terminal {
    /// Opens a pty of `rows`×`cols` and starts `cmd` with it as stdin,
    /// stdout and stderr.
    fn spawn(
        mut cmd: tokio::process::Command,
        rows: u16,
        cols: u16,
    ) -> (Terminal, tokio::process::Child) {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).unwrap();
        let slave = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
        cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave));
        let child = cmd.spawn().unwrap();
        // Our copies of the slave close with the command: the master reads
        // EOF (EIO) once kubectl is gone.
        drop(cmd);
        let master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let (tx, output) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let t = Terminal {
            master,
            slave,
            output,
            seen: String::new(),
        };
        (t, child)
    }

    /// Waits (20 s at most) until the output holds `want` after what was
    /// already waited for; meanwhile types `keys` every 300 ms, if any.
    async fn expect(&mut self, want: &str, keys: Option<&[u8]>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            if let Some(i) = self.seen.find(want) {
                self.seen.drain(..i + want.len());
                return;
            }
            tokio::select! {
                got = tokio::time::timeout_at(deadline.into(), self.output.recv()) => match got {
                    Ok(Some(b)) => self.seen.push_str(&String::from_utf8_lossy(&b)),
                    other => panic!("no {want:?} in {:?} ({other:?})", self.seen),
                },
                _ = tick.tick(), if keys.is_some() => self.type_keys(keys.unwrap_or_default()),
            }
        }
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).unwrap();
    }

    /// Resizes the terminal as a terminal emulator does (TIOCSWINSZ, which
    /// sends SIGWINCH to its foreground process group).
    fn resize(&self, rows: u16, cols: u16) {
        let ok = std::process::Command::new("stty")
            .arg("-F")
            .arg(&self.slave)
            .args(["rows", &rows.to_string(), "cols", &cols.to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "stty rows {rows} cols {cols}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_terminal_follows_resizes() {
    const T: &str = "kubectl_exec_terminal_follows_resizes";
    if std::process::Command::new("setsid")
        .arg("--help")
        .output()
        .map_or(true, |o| {
            !String::from_utf8_lossy(&o.stdout).contains("--ctty")
        })
    {
        println!("skipped: {T}: util-linux setsid with --ctty is missing");
        return;
    }
    let Some(mut k) = kenv(T).await else {
        return;
    };
    k.container("tty", &["sleep", "1000"], false).await;
    for mode in MODES {
        println!("{mode:?}:");
        // kubectl on a terminal of 30 rows, 100 columns, as the leader of
        // a session whose controlling terminal it is (so that a resize
        // reaches it as SIGWINCH).
        let mut setsid = k.command(mode, "setsid");
        setsid
            .args(["--ctty", "kubectl", "exec", "-it", POD, "-c", "tty", "--"])
            .args([
                "sh",
                "-c",
                r#"while read l; do [ "$l" = q ] && exit 5; stty size; done"#,
            ]);
        let (mut term, mut child) = Terminal::spawn(setsid, 30, 100);
        // The size kubectl found on its terminal when it started. (It
        // travels apart from the keystrokes: Enter is pressed until the
        // size has landed.)
        term.expect("30 100", Some(b"\r")).await;
        // A resize while the command runs reaches its terminal.
        term.resize(40, 120);
        term.expect("40 120", Some(b"\r")).await;
        term.type_keys(b"q\r");
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("kubectl exec -it did not end")
            .unwrap();
        assert_eq!(status.code(), Some(5), "{mode:?}: {}", term.seen);
        k.assert_transport(mode, "exec");
    }
}

/// 10 MiB that do not compress (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_cp_10_mib_in_and_out() {
    use sha2::Digest;
    let Some(mut k) = kenv("kubectl_cp_10_mib_in_and_out").await else {
        return;
    };
    let id = k.container("cp", &["sleep", "1000"], false).await;
    let dir = k.env.dir.path().join("cp");
    std::fs::create_dir_all(&dir).unwrap();
    let data = noise(10 << 20);
    let local = dir.join("big");
    std::fs::write(&local, &data).unwrap();
    let sum = hex::encode(sha2::Sha256::digest(&data));
    for mode in MODES {
        let remote = format!("{POD}:/tmp/big-{}", mode.tag());
        let local_s = local.to_str().unwrap();
        let (code, _, err) = k
            .run(mode, &["cp", local_s, &remote, "-c", "cp"], None)
            .await;
        assert_eq!(code, 0, "{mode:?}: kubectl cp in: {err}");
        // What the container sees.
        let r = k
            .env
            .rt
            .exec_sync(proto::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["sha256sum".into(), format!("/tmp/big-{}", mode.tag())],
                timeout: 20,
            })
            .await
            .unwrap()
            .into_inner();
        let inside = String::from_utf8_lossy(&r.stdout);
        assert!(inside.starts_with(&sum), "{mode:?}: {inside}");

        let back = dir.join(format!("back-{}", mode.tag()));
        let (code, _, err) = k
            .run(
                mode,
                &["cp", &remote, back.to_str().unwrap(), "-c", "cp"],
                None,
            )
            .await;
        assert_eq!(code, 0, "{mode:?}: kubectl cp out: {err}");
        let got = std::fs::read(&back).unwrap();
        assert!(
            got == data,
            "{mode:?}: {} bytes back, not the same",
            got.len()
        );
        k.assert_transport(mode, "exec");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_attach_until_the_container_exits_and_logs() {
    let Some(mut k) = kenv("kubectl_attach_until_the_container_exits_and_logs").await else {
        return;
    };
    let script = r#"while read l; do echo "got $l"; [ "$l" = quit ] && exit 3; done"#;
    for mode in MODES {
        let name = format!("att-{}", mode.tag());
        let id = k.container(&name, &["sh", "-c", script], true).await;
        let (code, out, err) = k
            .run(
                mode,
                &["attach", "-i", POD, "-c", &name],
                Some(b"hello\nquit\n"),
            )
            .await;
        // kubelet reports Success when the attached container's output
        // ends; the container's own exit code is in its status.
        assert_eq!(code, 0, "{mode:?}: {err}");
        assert!(
            out.contains("got hello\ngot quit\n"),
            "{mode:?}: {out:?} {err}"
        );
        let st = wait_exited(&mut k.env.rt, &id).await;
        assert_eq!(st.exit_code, 3, "{mode:?}");
        k.assert_transport(mode, "attach");

        let (code, out, err) = k.run(mode, &["logs", POD, "-c", &name], None).await;
        assert_eq!((code, out.as_str()), (0, "got hello\ngot quit\n"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_round_trips() {
    let Some(mut k) = kenv("kubectl_port_forward_round_trips").await else {
        return;
    };
    let id = k
        .container("httpd", &["httpd", "-f", "-p", "8080", "-h", "/etc"], false)
        .await;
    // kubectl port-forward gives up on its first refused connection: wait
    // until httpd listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = k
            .env
            .rt
            .exec_sync(proto::ExecSyncRequest {
                container_id: id.clone(),
                cmd: [
                    "wget",
                    "-q",
                    "-O",
                    "/dev/null",
                    "http://127.0.0.1:8080/passwd",
                ]
                .map(String::from)
                .to_vec(),
                timeout: 5,
            })
            .await
            .unwrap()
            .into_inner();
        if r.exit_code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "httpd does not listen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mode in MODES {
        let mut cmd = k.kubectl(
            mode,
            &["port-forward", "--address", "127.0.0.1", POD, ":8080"],
        );
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("kubectl port-forward said nothing")
            .unwrap()
            .unwrap_or_default();
        // "Forwarding from 127.0.0.1:PORT -> 8080"
        let port = line
            .strip_prefix("Forwarding from 127.0.0.1:")
            .and_then(|r| r.split_once(' '))
            .map(|(p, _)| p.to_string())
            .unwrap_or_else(|| panic!("{mode:?}: {line:?}"));
        // Several connections, one after another and at once, over one
        // session.
        let get = |port: String| async move {
            let mut c = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .unwrap();
            c.write_all(b"GET /passwd HTTP/1.0\r\n\r\n").await.unwrap();
            let mut body = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut body))
                .await
                .expect("no answer through the forwarded port")
                .unwrap();
            String::from_utf8_lossy(&body).into_owned()
        };
        let mut bodies = vec![get(port.clone()).await, get(port.clone()).await];
        bodies.extend(futures::future::join_all((0..5).map(|_| get(port.clone()))).await);
        for body in &bodies {
            assert!(
                body.contains("200 OK") && body.contains("root:x:0:0"),
                "{mode:?}: {body:?}"
            );
        }
        k.assert_transport(mode, "portforward");
        child.kill().await.unwrap();
    }
}
