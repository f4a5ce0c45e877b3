//! The pull helper: each PullImage's fetch runs in a process of its own —
//! berth's binary exec'd for the one pull, gone when it is done.
//!
//! Why: a pull is the daemon's largest and most hostile work (registry
//! responses, decompression, tar parsing) and its code is a third of the
//! binary. Run in the daemon, it leaves the daemon's resident memory larger
//! for good: the pull path's code pages stay mapped and its buffers stay in
//! the allocator's arenas. Measured with the `cri_lifecycle` benchmark (20
//! pulls, 120 pods), see the README. A crash or a runaway allocation in
//! the parsers ends the helper, not the daemon.
//!
//! Protocol: one typed [`berth_core::ipc`] channel, the helper's stdin. The
//! daemon sends one [`Request`] (with the protocol version); the helper
//! fetches into the store's blobs and layers and sends one [`Reply`]: the
//! image's record, or the error's kind and message, and what it did. The
//! daemon records the image (the records are the image store's alone) and
//! holds the store's garbage collection off meanwhile ([`super::puller`]).
//!
//! Lifetime: the helper exits after its reply, or as soon as the daemon's
//! end closes (the daemon died, or the pull was cancelled). The daemon
//! kills a helper whose pull it no longer waits for, and deletes what a
//! helper that died left unfinished (its files are named by its pid).

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use berth_core::ipc::{Channel, ChannelError};
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};

use super::error::{ImageError, ImageErrorKind};
use super::hosts::RegistryHosts;
use super::pull::{FetchStats, Fetcher, PullOptions};
use super::reference::ImageName;
use super::store::{Content, ImageRecord};

/// `argv[1]` that makes a berth binary run as a pull helper.
pub const PULL_ARG: &str = "__berth_pull";

/// The protocol's version; a helper of another version refuses the pull.
pub const VERSION: u32 = 1;

/// Largest request the helper reads (credentials are the large part).
const MAX_REQUEST: usize = 1 << 20;
/// Largest reply the daemon reads (a record of 127 layers is ~40 KiB).
const MAX_REPLY: usize = 1 << 20;

/// What the daemon asks its helper.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// [`VERSION`].
    pub version: u32,
    /// The image, as parsed by the daemon.
    pub image: String,
    /// The request's credentials.
    pub auth: WireAuth,
    /// The image store's root.
    pub root: PathBuf,
    /// containerd-style `certs.d` directory.
    pub registry_config_dir: Option<PathBuf>,
    /// The fetch's settings.
    pub opts: PullOptions,
    /// Loopback hosts known to speak plain HTTP.
    pub plain_http: Vec<String>,
}

/// Credentials, as oci-client takes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireAuth {
    /// None.
    Anonymous,
    /// A user name and password.
    Basic(String, String),
    /// A bearer token.
    Bearer(String),
}

impl From<&RegistryAuth> for WireAuth {
    fn from(a: &RegistryAuth) -> Self {
        match a {
            RegistryAuth::Anonymous => WireAuth::Anonymous,
            RegistryAuth::Basic(u, p) => WireAuth::Basic(u.clone(), p.clone()),
            RegistryAuth::Bearer(t) => WireAuth::Bearer(t.clone()),
        }
    }
}

impl From<WireAuth> for RegistryAuth {
    fn from(a: WireAuth) -> Self {
        match a {
            WireAuth::Anonymous => RegistryAuth::Anonymous,
            WireAuth::Basic(u, p) => RegistryAuth::Basic(u, p),
            WireAuth::Bearer(t) => RegistryAuth::Bearer(t),
        }
    }
}

/// An error as the helper sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// What decides its gRPC code.
    pub kind: ImageErrorKind,
    /// Its error chain.
    pub message: String,
}

/// The helper's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    /// The image's record (to be recorded by the daemon), or why not.
    pub result: Result<ImageRecord, WireError>,
    /// What the fetch did.
    pub stats: FetchStats,
    /// Loopback hosts known to speak plain HTTP now.
    pub plain_http: Vec<String>,
    /// The helper's peak resident memory, KiB.
    pub peak_rss_kib: u64,
}

/// How the daemon starts a helper: its own binary, with [`PULL_ARG`] and
/// whatever the binary wants after it (its log settings).
#[derive(Debug, Clone)]
pub struct HelperCommand {
    /// The executable: the daemon's own binary (its sealed copy's
    /// `/proc/self/fd` path, else `/proc/self/exe`).
    pub exe: PathBuf,
    /// Its arguments, [`PULL_ARG`] first.
    pub args: Vec<OsString>,
}

/// The daemon's side: starts a helper per fetch.
pub(crate) struct PullHelper {
    cmd: HelperCommand,
    content: Content,
    root: PathBuf,
    registry_config_dir: Option<PathBuf>,
    opts: PullOptions,
    plain_http: Mutex<HashSet<String>>,
    peak_rss_kib: AtomicU64,
}

/// A started helper, killed (and what it left deleted) unless it
/// finished.
struct Running {
    child: Option<tokio::process::Child>,
    pid: u32,
    content: Content,
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let (pid, content) = (self.pid, self.content.clone());
        let reap = async move {
            let _ = child.kill().await;
            content.remove_unfinished_of(pid);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(reap);
            }
            Err(_) => tracing::warn!(pid, "pull helper left running (no runtime to reap it)"),
        }
    }
}

impl PullHelper {
    pub(crate) fn new(
        cmd: HelperCommand,
        content: Content,
        root: PathBuf,
        registry_config_dir: Option<PathBuf>,
        opts: PullOptions,
    ) -> PullHelper {
        PullHelper {
            cmd,
            content,
            root,
            registry_config_dir,
            opts,
            plain_http: Mutex::default(),
            peak_rss_kib: AtomicU64::new(0),
        }
    }

    /// The largest peak resident memory of a helper so far, KiB.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        self.peak_rss_kib.load(Ordering::Relaxed)
    }

    /// Fetches `name` in a new helper process.
    pub(crate) async fn fetch(
        &self,
        name: &ImageName,
        auth: &RegistryAuth,
    ) -> (Result<ImageRecord, ImageError>, FetchStats) {
        let plain_http = {
            let known = self.plain_http.lock().unwrap_or_else(|p| p.into_inner());
            known.iter().cloned().collect()
        };
        let request = Request {
            version: VERSION,
            image: name.to_string(),
            auth: auth.into(),
            root: self.root.clone(),
            registry_config_dir: self.registry_config_dir.clone(),
            opts: self.opts.clone(),
            plain_http,
        };
        let reply = match self.exchange(&request).await {
            Ok(r) => r,
            Err(e) => return (Err(e), FetchStats::default()),
        };
        self.peak_rss_kib
            .fetch_max(reply.peak_rss_kib, Ordering::Relaxed);
        self.plain_http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(reply.plain_http);
        tracing::info!(
            image = %name,
            helper_peak_rss_kib = reply.peak_rss_kib,
            downloads = reply.stats.downloads,
            bytes = reply.stats.bytes,
            ok = reply.result.is_ok(),
            "pull helper finished"
        );
        let result = reply.result.map_err(|e| ImageError::Remote {
            kind: e.kind,
            message: e.message,
        });
        (result, reply.stats)
    }

    async fn exchange(&self, request: &Request) -> Result<Reply, ImageError> {
        let internal = |what: &str, e: &dyn std::error::Error| {
            ImageError::Internal(format!(
                "pull helper {}: {what}: {}",
                self.cmd.exe.display(),
                crate::util::error_chain(e)
            ))
        };
        let (ours, theirs) = Channel::pair().map_err(|e| internal("its channel", &e))?;
        let child = tokio::process::Command::new(&self.cmd.exe)
            .args(&self.cmd.args)
            .current_dir("/")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| internal("starting it", &e))?;
        let pid = child.id().unwrap_or(0);
        let mut running = Running {
            child: Some(child),
            pid,
            content: self.content.clone(),
        };
        let ours = ours.with_limit(MAX_REPLY);
        ours.send(request, &[])
            .map_err(|e| internal("sending the request", &e))?;
        // The reply, or the end of the channel when the helper is gone.
        let received = tokio::task::spawn_blocking(move || ours.recv::<Reply>())
            .await
            .map_err(|e| internal("waiting for it", &e))?;
        let mut child = running.child.take().expect("still held");
        let status = child.wait().await;
        match received {
            Ok((reply, _)) => Ok(reply),
            Err(e) => {
                self.content.remove_unfinished_of(pid);
                let how = match status {
                    Ok(s) => format!("pid {pid} ended ({s}) without an answer"),
                    Err(w) => format!("pid {pid}: {w}"),
                };
                Err(internal(&how, &e))
            }
        }
    }
}

/// The helper process: reads the request on stdin, fetches, replies.
/// Returns the exit code. Logging is the caller's (the binary's) to set up.
pub fn serve() -> i32 {
    crate::util::CRASH_KILLS_PARENT.store(true, Ordering::Relaxed);
    let sock = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => Channel::from_fd(fd),
        Err(e) => {
            tracing::error!(error = %e, "pull helper: its channel");
            return 1;
        }
    };
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
    }
    serve_on(sock)
}

/// Answers the one request on `sock`.
fn serve_on(sock: Channel) -> i32 {
    let sock = sock.with_limit(MAX_REQUEST);
    let request = match sock.recv::<Request>() {
        Ok((r, _)) => r,
        Err(ChannelError::Closed) => return 0,
        Err(e) => {
            tracing::error!(error = %crate::util::error_chain(&e), "pull helper: its request");
            return 1;
        }
    };
    let reply = match answer(request, &sock) {
        Ok(reply) => reply,
        Err(message) => Reply {
            result: Err(WireError {
                kind: ImageErrorKind::Internal,
                message,
            }),
            stats: FetchStats::default(),
            plain_http: Vec::new(),
            peak_rss_kib: peak_rss_kib(),
        },
    };
    match sock.send(&reply, &[]) {
        Ok(()) => 0,
        Err(e) => {
            tracing::warn!(error = %crate::util::error_chain(&e), "pull helper: sending its answer");
            1
        }
    }
}

/// Runs the request's fetch. `Err`: the helper itself failed.
fn answer(request: Request, sock: &Channel) -> Result<Reply, String> {
    if request.version != VERSION {
        return Err(format!(
            "pull helper speaks protocol version {VERSION}, the daemon {} (the binary was replaced?)",
            request.version
        ));
    }
    watch_for_hangup(sock)?;
    let name = ImageName::parse(&request.image).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("pull helper: its async runtime: {e}"))?;
    let fetcher = Fetcher::new(
        Content::attach(&request.root),
        RegistryHosts::new(request.registry_config_dir),
        request.opts,
    );
    fetcher.learn_plain_http(request.plain_http);
    let auth = RegistryAuth::from(request.auth);
    let (result, stats) = runtime.block_on(fetcher.fetch(&name, &auth));
    Ok(Reply {
        result: result.map_err(|e| WireError {
            kind: e.kind(),
            message: crate::util::error_chain(&e),
        }),
        stats,
        plain_http: fetcher.plain_http_hosts(),
        peak_rss_kib: peak_rss_kib(),
    })
}

/// Ends this process when the daemon's end of `sock` closes (the daemon
/// died, or no longer waits for the pull): nobody would record what it
/// fetches, and a restarted daemon cleans the store's unfinished files.
fn watch_for_hangup(sock: &Channel) -> Result<(), String> {
    let fd = sock
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("pull helper: its channel: {e}"))?;
    std::thread::Builder::new()
        .name("hangup".into())
        .spawn(move || {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            loop {
                match poll(&mut fds, PollTimeout::NONE) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    // Readable means closed: the daemon sends nothing more.
                    _ => std::process::exit(3),
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("pull helper: its watch thread: {e}"))
}

/// This process's peak resident memory, KiB.
fn peak_rss_kib() -> u64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| u64::try_from(u.max_rss()).unwrap_or(0))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
