//! `berth serve`: the CRI daemon.
//!
//! Loads the configuration (file, then flags), sets up logging, opens the
//! stores, binds the socket (0660, root) and serves RuntimeService and
//! ImageService until SIGTERM or SIGINT. Shutting down stops accepting,
//! lets calls in flight finish and removes the socket; containers are not
//! touched (they belong to their monitors, not to the daemon).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use berth_cri::image::service::ImageServiceConfig;
use berth_cri::image::ImageServiceImpl;
use berth_cri::proto::image_service_server::ImageServiceServer;
use berth_cri::proto::runtime_service_server::RuntimeServiceServer;
use berth_cri::runtime::{RuntimeServiceConfig, RuntimeServiceImpl};

use crate::config::{Config, LogFormat};

/// How often freed heap is handed back to the kernel.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the trimmer looks whether a thread has ended since its last
/// trim (see [`THREADS_ENDED`]).
const TRIM_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// How long an idle blocking-pool thread waits for work before it ends
/// (tokio's default: 10 s). A thread's end frees its thread-local buffers.
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runtime threads that have ended. Measured after 50 pods at once, the
/// blocking threads' ends freed 3 MiB of heap that a trim on the 10 s
/// clock could miss for another 10 s: the trimmer also runs within a
/// second of a thread's end.
static THREADS_ENDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The most async worker threads (one per CPU up to this): CRI calls are
/// short and mostly wait on the kernel or a monitor, and each thread costs
/// its stack and allocator state on a node with dozens of CPUs.
const WORKER_THREADS_MAX: usize = 4;

/// kubelet sends and accepts messages up to 16 MiB (its
/// `maxMsgSize`); tonic's default of 4 MiB would refuse large lists.
const MAX_MESSAGE: usize = 16 << 20;

/// Calls in flight on one connection, at most (HTTP/2
/// SETTINGS_MAX_CONCURRENT_STREAMS; h2 refuses more with REFUSED_STREAM).
/// Unlimited by default, and 40,000 open streams held 209 MiB. kubelet
/// multiplexes everything over one connection, but its calls in flight
/// are a few per pod (status, stats, exec probes), far under this.
const MAX_CONCURRENT_STREAMS: u32 = 1000;

/// HTTP/2 PINGs on a connection idle this long, and how long the answer
/// may take before the connection is closed: grpc-go's server defaults
/// (`keepalive.ServerParameters`: 2 h, 20 s), so a client that went away
/// without closing does not hold its calls forever. No per-call timeout:
/// PullImage of a large image or a long ExecSync may rightly take long.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2 * 3600);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Flags of `berth serve`; each overrides the same setting of the file.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Configuration file (default: /etc/berth/config.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Socket path.
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Persistent directory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Volatile directory.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Log level or tracing filter.
    #[arg(long)]
    log_level: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// containerd-style certs.d directory for registry hosts.
    #[arg(long)]
    registry_config_dir: Option<PathBuf>,
    /// Node-wide registry credentials (Docker's config.json format).
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Address of the streaming server (Exec, Attach, PortForward).
    #[arg(long)]
    stream_listen: Option<std::net::SocketAddr>,
    /// PEM certificate chain for HTTPS on the streaming server.
    #[arg(long, requires = "stream_tls_key")]
    stream_tls_cert: Option<PathBuf>,
    /// Its PEM private key.
    #[arg(long, requires = "stream_tls_cert")]
    stream_tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics and /healthz on this address (turns
    /// `[metrics]` on).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// CNI network configuration directory.
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directory; repeat for several (replaces the configured
    /// list).
    #[arg(long)]
    cni_bin_dir: Vec<PathBuf>,
}

impl ServeArgs {
    fn apply(self, mut c: Config) -> Config {
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.root {
            c.root = v;
        }
        if let Some(v) = self.state {
            c.state = v;
        }
        if let Some(v) = self.log_level {
            c.log_level = v;
        }
        if let Some(v) = self.log_format {
            c.log_format = v;
        }
        if let Some(v) = self.registry_config_dir {
            c.image.registry_config_dir = v;
        }
        if let Some(v) = self.auth_file {
            c.image.auth_file = v;
        }
        if let Some(v) = self.stream_listen {
            c.stream.listen = v;
        }
        if self.stream_tls_cert.is_some() {
            c.stream.tls_cert = self.stream_tls_cert;
            c.stream.tls_key = self.stream_tls_key;
        }
        if let Some(v) = self.metrics_listen {
            c.metrics.enabled = true;
            c.metrics.listen = v;
        }
        if let Some(v) = self.cni_conf_dir {
            c.network.cni_conf_dir = v;
        }
        if !self.cni_bin_dir.is_empty() {
            c.network.cni_bin_dirs = self.cni_bin_dir;
        }
        c
    }
}

pub fn main(args: ServeArgs) -> anyhow::Result<()> {
    let file = args.config.clone();
    let config = args.apply(Config::load(file.as_deref())?);
    config.validate().context("invalid setting")?;
    init_logging(&config.log_level, config.log_format)?;
    // One heap for all threads: each extra glibc arena keeps pages that
    // trimming cannot return (measured after 20 pulls and 120 pods: see
    // the README's benchmark); the daemon's allocations are few and short.
    berth_core::process::limit_heap_arenas(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            WORKER_THREADS_MAX
                .min(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)),
        )
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .on_thread_stop(|| {
            THREADS_ENDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .enable_all()
        .thread_name("berth")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

/// Logs to stderr at `level` (an `EnvFilter` directive) in `format`.
pub(crate) fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("log_level {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("setting up logging: {e}"))
}

/// Creates `path` with `mode`, and sets `mode` on an existing one (an
/// install made by an older berth is tightened at start-up).
fn make_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let now = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if now != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        tracing::info!(dir = %path.display(), from = format!("{now:o}"), to = format!("{mode:o}"), "directory mode tightened");
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    make_dir(&config.root, 0o711)?;
    make_dir(&config.state, 0o711)?;
    // The socket's directory may be a shared one (`/run`): created with
    // 0711 when missing, never changed.
    if let Some(parent) = config.listen.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let images = ImageServiceImpl::open(
        &config.root,
        ImageServiceConfig {
            registry_config_dir: Some(config.image.registry_config_dir.clone()),
            auth_file: Some(config.image.auth_file.clone()),
            pinned_images: config.image.pinned_images.clone(),
            max_concurrent_layers: config.image.max_concurrent_layers,
            max_metadata_bytes: config.image.max_metadata_bytes,
            max_unpacked_bytes: Some(config.image.max_unpacked_bytes),
            pull_helper: Some(crate::pull_helper::command(&config)),
        },
    )
    .with_context(|| format!("opening the image store in {}", config.root.display()))?;
    let runtime = RuntimeServiceImpl::open(
        &config.root,
        &config.state,
        RuntimeServiceConfig {
            cgroup_driver: config.runtime.cgroup_driver,
            monitor_exe: None,
            cni: Some(berth_cri::cni::CniSettings {
                conf_dir: config.network.cni_conf_dir.clone(),
                bin_dirs: config.network.cni_bin_dirs.clone(),
                plugin_timeout: std::time::Duration::from_secs(
                    config.network.plugin_timeout_seconds,
                ),
                check_on_status: config.network.check_on_status,
            }),
            stream_addr: Some(config.stream.listen),
            stream_tls: match (&config.stream.tls_cert, &config.stream.tls_key) {
                (Some(cert), Some(key)) => Some(berth_cri::stream::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            stream_limits: config.stream.limits(),
            criu: None,
            restore: config.checkpoint.restore,
            pod_sysctls: berth_cri::spec::sysctls::PodSysctlDefaults {
                unprivileged_ports: config.runtime.enable_unprivileged_ports,
                unprivileged_icmp: config.runtime.enable_unprivileged_icmp,
            },
            cdi: berth_cri::cdi::CdiSettings {
                enabled: config.runtime.enable_cdi,
                spec_dirs: config.runtime.cdi_spec_dirs.clone(),
            },
            handlers: config.runtime.handlers(&config.state),
        },
        images.store().clone(),
    )
    .context("opening the pod and container records")?
    .with_puller(images.puller().clone());

    // Freed heap goes back to the kernel every few seconds, and soon after
    // a runtime thread ends (a burst of pods leaves its blocking threads'
    // buffers to free when they end): glibc otherwise keeps those pages.
    // Cheap when nothing is free (a walk of the free lists), so it runs
    // here rather than on a blocking thread, whose own end would ask for
    // another trim.
    tokio::spawn(async {
        use std::sync::atomic::Ordering;
        let (mut ended, mut since) = (THREADS_ENDED.load(Ordering::Relaxed), TRIM_CHECK);
        loop {
            tokio::time::sleep(TRIM_CHECK).await;
            let now = THREADS_ENDED.load(Ordering::Relaxed);
            if now == ended && since < TRIM_EVERY {
                since += TRIM_CHECK;
                continue;
            }
            (ended, since) = (now, TRIM_CHECK);
            berth_core::process::release_free_memory();
        }
    });

    let metrics = crate::metrics::Metrics::new();
    if config.metrics.enabled {
        let addr = crate::metrics::serve(
            config.metrics.listen,
            metrics.clone(),
            runtime.clone(),
            images.puller().clone(),
        )
        .await?;
        tracing::info!(address = %addr, "metrics on /metrics, health on /healthz");
    }
    let listener = bind(&config.listen).await?;
    tracing::info!(
        socket = %config.listen.display(),
        root = %config.root.display(),
        state = %config.state.display(),
        version = env!("CARGO_PKG_VERSION"),
        "berth serving CRI"
    );
    // systemd's Type=notify: ready once the socket accepts.
    if let Err(e) = crate::notify::ready() {
        tracing::warn!(error = %e, "telling systemd we are ready (NOTIFY_SOCKET)");
    }
    let incoming = crate::incoming::incoming(listener, crate::incoming::PREFACE_TIMEOUT);
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(crate::catch_panic::CatchPanicLayer)
        // A passed grpc-timeout is DeadlineExceeded (tonic's own answer is
        // Cancelled).
        .layer(crate::deadline::DeadlineLayer)
        // Calls are only timed when someone can read the figures.
        .layer(tower::util::option_layer(
            config
                .metrics
                .enabled
                .then(|| crate::metrics::MetricsLayer(metrics)),
        ))
        .add_service(
            RuntimeServiceServer::new(runtime)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImageServiceServer::new(images)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await;
    let _ = std::fs::remove_file(&config.listen);
    result.context("serving")?;
    tracing::info!("berth stopped");
    Ok(())
}

/// Binds the socket, replacing a stale one but never a live daemon's.
async fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!("another daemon is serving on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    // Bound in a private directory, given its final mode there, then moved
    // into place: the socket is never reachable with the mode the umask
    // gave it (never bind-then-chmod at the final path).
    let parent = path.parent().unwrap_or(Path::new("/"));
    let private = parent.join(format!(".berth-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let result = (|| {
        let tmp = private.join("sock");
        let listener = tokio::net::UnixListener::bind(&tmp)
            .with_context(|| format!("binding {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("chmod 0660 {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("moving the socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop berth with SIGKILL");
        return std::future::pending().await;
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutting down (containers keep running)");
}
