//! berth's configuration file (`/etc/berth/config.toml`, or `--config`).
//!
//! Every setting has an embedded default, so `berth serve` runs on a fresh
//! machine with no file at all; `berth config default` prints them all.
//! Unknown keys are refused, so a typo does not silently fall back to a
//! default.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use berth_cri::runtime::CgroupDriver;
use serde::{Deserialize, Serialize};

/// The file read when `--config` is not given (absent is fine).
pub const DEFAULT_PATH: &str = "/etc/berth/config.toml";

/// The default configuration, with comments: what `berth config default`
/// prints. A unit test checks it parses to [`Config::default`].
pub const DEFAULT_TOML: &str = r#"# berth configuration. Every setting here is the built-in default.

# The CRI socket kubelet and crictl connect to (mode 0660, root).
listen = "/run/berth/berth.sock"
# Persistent state: image blobs and layers, container upper dirs, metadata.
root = "/var/lib/berth"
# Volatile state: pinned namespaces, container runtime state.
state = "/run/berth"
# error, warn, info, debug or trace (or a tracing filter such as
# "info,berth_cri=debug").
log_level = "info"
# "text" or "json".
log_format = "text"

[image]
# Registry mirrors, plain-HTTP registries and CA files, in containerd's
# certs.d/<host>/hosts.toml format (an existing /etc/containerd/certs.d works).
registry_config_dir = "/etc/berth/certs.d"
# Node-wide registry credentials in Docker's config.json format
# ({"auths": {"<registry>": {"auth": "<base64 user:password>"}}}), used when
# a pull request carries none. Read at each such pull; no file, no
# credentials. It holds secrets: keep it 0600 (berth never logs it).
auth_file = "/etc/berth/auth.json"
# Images reported to kubelet as pinned (never garbage-collected by it).
pinned_images = []
# Layers fetched at the same time per pull.
max_concurrent_layers = 4
# The most bytes of a manifest, index or image config (each) a pull reads
# into memory; a larger one fails the pull (FailedPrecondition) before it is
# read. 4 MiB, containerd's limit for manifests.
max_metadata_bytes = 4194304
# The most bytes an image's layers may unpack to (their decompressed tar
# streams, summed); past it the pull fails before the disk fills (a gzip
# bomb). 100 GiB; 0 means no limit.
max_unpacked_bytes = 107374182400

[runtime]
# "cgroupfs" or "systemd"; must match kubelet's cgroupDriver.
cgroup_driver = "cgroupfs"
# Pods with their own network get net.ipv4.ip_unprivileged_port_start=0 (any
# user may bind ports below 1024) unless kubelet sets it, as in containerd 2.
enable_unprivileged_ports = true
# ... and net.ipv4.ping_group_range="0 2147483647" (any group may ping; not
# in pods with their own user namespace), as in containerd 2.
enable_unprivileged_icmp = true
# CDI (Container Device Interface) devices, requested by CreateContainer's
# CDI_devices or cdi.k8s.io/* annotations (GPU and DRA drivers): their specs
# are read from these directories, later ones winning, at each such
# request. Disabled, such a request is refused (never ignored).
enable_cdi = true
cdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]
# RuntimeClass handlers besides the default one ("" or "berth"): pods whose
# RuntimeClass has handler <name> run under [runtime.handlers.<name>], and
# Status lists them. kind = "embedded": berth's own runtime under a policy it
# enforces on the handler's pods and containers (what it forbids is refused,
# naming the field). For example:
# [runtime.handlers.hardened]
# kind = "embedded"
# require_user_namespace = true  # pods need their own (hostUsers: false)
# deny_host_namespaces = true    # no hostNetwork, hostPID or hostIPC
# deny_privileged = true         # no privileged containers
# readonly_rootfs = true         # every container's rootfs read-only
# default_seccomp = true         # RuntimeDefault unless a profile is named
#
# kind = "oci": an external runtime with runc's command line (runc, crun,
# youki, runsc) runs the handler's containers from an OCI bundle; berth keeps
# the pod's namespaces, logs, exec and attach. The policy settings above
# apply too. Its pods cannot have their own user namespace. For example:
# [runtime.handlers.runc]
# kind = "oci"
# path = "/usr/sbin/runc"
# root = "/run/berth/oci/runc"  # its --root; default <state>/oci/<name>
#
# kind = "shim-v2": a containerd shim v2 (containerd-shim-runc-v2, Kata,
# gVisor, runwasi) runs each container; berth speaks the shim's ttrpc Task
# API. No terminals, checkpoints or user-namespace pods. For example:
# [runtime.handlers.runc-shim]
# kind = "shim-v2"
# path = "/usr/bin/containerd-shim-runc-v2"

[checkpoint]
# CreateContainer may restore a container from a checkpoint archive or
# checkpoint image (kubelet's and CRI-O's container checkpoint format). CRIU
# recreates the tasks with the ids, capabilities, no_new_privs and seccomp
# mode recorded in the checkpoint; berth refuses the restore when any task
# holds more than the container's requested security context allows, but
# the rest of the checkpoint (memory, open files) is trusted: enable only
# where checkpoints come from a trusted source.
restore = false

[network]
# CNI network configurations: the first .conflist/.conf/.json file in
# lexical order is used; the directory is watched, so a config installed
# later (by a CNI DaemonSet) takes effect without a restart.
cni_conf_dir = "/etc/cni/net.d"
# Where CNI plugins are looked for, in order (the CNI project's install path,
# then Debian's containernetworking-plugins package).
cni_bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
# How long one plugin call may take before it is killed.
plugin_timeout_seconds = 120
# A verbose PodSandboxStatus (crictl inspectp) also runs CNI CHECK on the
# pod's attachment and reports it as "networkCheck" (slow: runs the plugins).
check_on_status = false

[stream]
# The streaming server behind Exec and PortForward (kubectl exec and
# port-forward reach it through kubelet): port 0 picks a free port. Keep it
# on loopback unless kubelet's API server proxy must reach it otherwise.
listen = "127.0.0.1:0"
# HTTPS for it: a PEM certificate chain and key (both, or neither).
# tls_cert = "/etc/berth/stream.crt"
# tls_key = "/etc/berth/stream.key"
# How long a URL from Exec, Attach or PortForward stays valid (kubelet's
# streaming server: 1 minute); its request is dropped when it expires.
token_ttl_seconds = 60
# URLs issued and not yet used, at most: more Exec, Attach or PortForward
# calls get ResourceExhausted until some are used or expire (kubelet: 1000).
max_pending_tokens = 1000
# Connections open at once, at most (exec, attach and port-forward sessions
# included); more wait until one closes.
max_connections = 1024
# The time a client has to send its request headers (TLS handshake
# included).
header_timeout_seconds = 30
# A session with no data either way for this long is closed (kubelet's and
# containerd's stream idle timeout: 4 hours).
idle_timeout_seconds = 14400

[metrics]
# Prometheus metrics on http://<listen>/metrics and a health check on
# /healthz: CRI calls (count, latency), pods, containers, monitors, image
# pulls.
enabled = false
listen = "127.0.0.1:9323"
"#;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub log_level: String,
    pub log_format: LogFormat,
    pub image: ImageSection,
    pub runtime: RuntimeSection,
    pub checkpoint: CheckpointSection,
    pub network: NetworkSection,
    pub stream: StreamSection,
    pub metrics: MetricsSection,
}

/// `[stream]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSection {
    pub listen: std::net::SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub token_ttl_seconds: u64,
    pub max_pending_tokens: usize,
    pub max_connections: usize,
    pub header_timeout_seconds: u64,
    pub idle_timeout_seconds: u64,
}

impl Default for StreamSection {
    fn default() -> Self {
        let d = berth_cri::stream::Limits::default();
        StreamSection {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_cert: None,
            tls_key: None,
            token_ttl_seconds: d.token_ttl.as_secs(),
            max_pending_tokens: d.max_pending,
            max_connections: d.max_connections,
            header_timeout_seconds: d.header_timeout.as_secs(),
            idle_timeout_seconds: d.idle_timeout.as_secs(),
        }
    }
}

impl StreamSection {
    /// The streaming server's limits.
    pub fn limits(&self) -> berth_cri::stream::Limits {
        use std::time::Duration;
        berth_cri::stream::Limits {
            token_ttl: Duration::from_secs(self.token_ttl_seconds),
            max_pending: self.max_pending_tokens,
            max_connections: self.max_connections,
            header_timeout: Duration::from_secs(self.header_timeout_seconds),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            ..berth_cri::stream::Limits::default()
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: false,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9323)),
        }
    }
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub plugin_timeout_seconds: u64,
    pub check_on_status: bool,
}

impl Default for NetworkSection {
    fn default() -> Self {
        let d = berth_cri::cni::CniSettings::default();
        NetworkSection {
            cni_conf_dir: d.conf_dir,
            cni_bin_dirs: d.bin_dirs,
            plugin_timeout_seconds: d.plugin_timeout.as_secs(),
            check_on_status: d.check_on_status,
        }
    }
}

/// `[image]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSection {
    pub registry_config_dir: PathBuf,
    pub auth_file: PathBuf,
    pub pinned_images: Vec<String>,
    pub max_concurrent_layers: usize,
    pub max_metadata_bytes: u64,
    pub max_unpacked_bytes: u64,
}

/// `[checkpoint]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    pub restore: bool,
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    pub cgroup_driver: CgroupDriver,
    pub enable_unprivileged_ports: bool,
    pub enable_unprivileged_icmp: bool,
    pub enable_cdi: bool,
    pub cdi_spec_dirs: Vec<PathBuf>,
    pub handlers: std::collections::BTreeMap<String, HandlerSection>,
}

/// `[runtime.handlers.<name>]`: one RuntimeClass handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSection {
    pub kind: HandlerKind,
    #[serde(default)]
    pub require_user_namespace: bool,
    #[serde(default)]
    pub deny_host_namespaces: bool,
    #[serde(default)]
    pub deny_privileged: bool,
    #[serde(default)]
    pub readonly_rootfs: bool,
    #[serde(default)]
    pub default_seccomp: bool,
    /// kind = "oci": the runtime's binary.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// kind = "oci": its state directory (`--root`).
    #[serde(default)]
    pub root: Option<PathBuf>,
}

/// The kinds of handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerKind {
    /// berth's own runtime core under the handler's policy.
    Embedded,
    /// An external OCI runtime with runc's command line.
    Oci,
    /// A containerd shim v2.
    #[serde(rename = "shim-v2")]
    ShimV2,
}

impl RuntimeSection {
    /// The handlers, as the runtime service takes them; an `oci` handler's
    /// default `--root` is under the daemon's `state` directory.
    pub fn handlers(&self, state: &std::path::Path) -> berth_cri::runtime::handlers::Handlers {
        use berth_cri::runtime::handlers::{
            EmbeddedPolicy, Handler, Handlers, OciRuntime, ShimRuntime,
        };
        Handlers::new(
            self.handlers
                .iter()
                .map(|(name, h)| {
                    let policy = EmbeddedPolicy {
                        require_user_namespace: h.require_user_namespace,
                        deny_host_namespaces: h.deny_host_namespaces,
                        deny_privileged: h.deny_privileged,
                        readonly_rootfs: h.readonly_rootfs,
                        default_seccomp: h.default_seccomp,
                    };
                    let handler = match h.kind {
                        HandlerKind::Embedded => Handler::Embedded(policy),
                        HandlerKind::Oci => Handler::Oci(
                            OciRuntime {
                                path: h.path.clone().unwrap_or_default(),
                                root: h
                                    .root
                                    .clone()
                                    .unwrap_or_else(|| state.join("oci").join(name)),
                            },
                            policy,
                        ),
                        HandlerKind::ShimV2 => Handler::Shim(
                            ShimRuntime {
                                path: h.path.clone().unwrap_or_default(),
                            },
                            policy,
                        ),
                    };
                    (name.clone(), handler)
                })
                .collect(),
        )
    }
}

impl Default for RuntimeSection {
    fn default() -> Self {
        let d = berth_cri::spec::sysctls::PodSysctlDefaults::default();
        RuntimeSection {
            cgroup_driver: CgroupDriver::default(),
            enable_unprivileged_ports: d.unprivileged_ports,
            enable_unprivileged_icmp: d.unprivileged_icmp,
            enable_cdi: berth_cri::cdi::CdiSettings::default().enabled,
            cdi_spec_dirs: berth_cri::cdi::CdiSettings::default().spec_dirs,
            handlers: Default::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "/run/berth/berth.sock".into(),
            root: "/var/lib/berth".into(),
            state: "/run/berth".into(),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            image: ImageSection::default(),
            runtime: RuntimeSection::default(),
            checkpoint: CheckpointSection::default(),
            network: NetworkSection::default(),
            stream: StreamSection::default(),
            metrics: MetricsSection::default(),
        }
    }
}

impl Default for ImageSection {
    fn default() -> Self {
        ImageSection {
            registry_config_dir: "/etc/berth/certs.d".into(),
            auth_file: "/etc/berth/auth.json".into(),
            pinned_images: Vec::new(),
            max_concurrent_layers: 4,
            max_metadata_bytes: berth_cri::image::pull::DEFAULT_MAX_METADATA_BYTES,
            max_unpacked_bytes: berth_cri::image::pull::DEFAULT_MAX_UNPACKED_BYTES,
        }
    }
}

impl Config {
    /// Reads `path` when given (it must exist), else [`DEFAULT_PATH`] when it
    /// exists, else the defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let (path, required) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default())
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("{}: invalid configuration", path.display()))?;
        config
            .validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, p) in [
            ("listen", &self.listen),
            ("root", &self.root),
            ("state", &self.state),
        ] {
            if !p.is_absolute() {
                bail!("{name} must be an absolute path, not {}", p.display());
            }
        }
        if self.root == self.state {
            bail!("root and state must be different directories");
        }
        if !self.image.auth_file.is_absolute() {
            bail!(
                "image.auth_file must be an absolute path, not {}",
                self.image.auth_file.display()
            );
        }
        if let Some(name) = self
            .runtime
            .handlers
            .keys()
            .find(|n| !berth_cri::runtime::handlers::valid_name(n))
        {
            bail!(
                "runtime.handlers.{name:?}: a handler name is a DNS label (lowercase letters, \
                 digits, '-'), and not \"berth\", the default handler's"
            );
        }
        for (name, h) in &self.runtime.handlers {
            match h.kind {
                HandlerKind::Oci => {
                    if !h.path.as_ref().is_some_and(|p| p.is_absolute()) {
                        bail!("runtime.handlers.{name}: kind \"oci\" needs path, the runtime's absolute path");
                    }
                    if h.root.as_ref().is_some_and(|p| !p.is_absolute()) {
                        bail!("runtime.handlers.{name}.root must be an absolute path");
                    }
                    if h.require_user_namespace {
                        bail!("runtime.handlers.{name}: an \"oci\" handler runs no pods in their own user namespace");
                    }
                }
                HandlerKind::ShimV2 => {
                    if !h.path.as_ref().is_some_and(|p| p.is_absolute()) {
                        bail!("runtime.handlers.{name}: kind \"shim-v2\" needs path, the shim's absolute path");
                    }
                    if h.root.is_some() || h.require_user_namespace {
                        bail!("runtime.handlers.{name}: a \"shim-v2\" handler takes no root and runs no pods in their own user namespace");
                    }
                }
                HandlerKind::Embedded => {
                    if h.path.is_some() || h.root.is_some() {
                        bail!("runtime.handlers.{name}: path and root are for kinds \"oci\" and \"shim-v2\"");
                    }
                }
            }
        }
        if self.runtime.cdi_spec_dirs.iter().any(|d| !d.is_absolute()) {
            bail!("runtime.cdi_spec_dirs must be absolute paths");
        }
        if !self.network.cni_conf_dir.is_absolute()
            || self.network.cni_bin_dirs.iter().any(|d| !d.is_absolute())
        {
            bail!("network.cni_conf_dir and network.cni_bin_dirs must be absolute paths");
        }
        if self.stream.tls_cert.is_some() != self.stream.tls_key.is_some() {
            bail!("stream.tls_cert and stream.tls_key go together");
        }
        for (name, v) in [
            ("token_ttl_seconds", self.stream.token_ttl_seconds),
            ("max_pending_tokens", self.stream.max_pending_tokens as u64),
            ("max_connections", self.stream.max_connections as u64),
            ("header_timeout_seconds", self.stream.header_timeout_seconds),
            ("idle_timeout_seconds", self.stream.idle_timeout_seconds),
        ] {
            if v == 0 {
                bail!("stream.{name} must be at least 1");
            }
        }
        if self.network.plugin_timeout_seconds == 0 {
            bail!("network.plugin_timeout_seconds must be at least 1");
        }
        if self.image.max_concurrent_layers == 0 {
            bail!("image.max_concurrent_layers must be at least 1");
        }
        if self.image.max_metadata_bytes == 0 {
            bail!("image.max_metadata_bytes must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handler_example_parses_and_bad_handlers_are_refused() {
        // The commented example of `berth config default`, uncommented.
        let example_of = |table: &str| -> String {
            DEFAULT_TOML
                .lines()
                .skip_while(|l| !l.starts_with(&format!("# [runtime.handlers.{table}]")))
                .take_while(|l| l.starts_with("# "))
                .map(|l| format!("{}\n", &l[2..]))
                .collect()
        };
        let oci: Config = toml::from_str(&example_of("runc")).unwrap();
        oci.validate().unwrap();
        let h = oci.runtime.handlers(std::path::Path::new("/run/berth"));
        let rt = h.oci_runtime("runc").unwrap();
        assert_eq!(rt.path, std::path::Path::new("/usr/sbin/runc"));
        assert_eq!(rt.root, std::path::Path::new("/run/berth/oci/runc"));
        let shim: Config = toml::from_str(&example_of("runc-shim")).unwrap();
        shim.validate().unwrap();
        let h = shim.runtime.handlers(std::path::Path::new("/run/berth"));
        assert!(h.shim_runtime("runc-shim").is_some() && h.external("runc-shim"));
        let no_path: Config = toml::from_str("[runtime.handlers.x]\nkind = \"oci\"\n").unwrap();
        assert!(no_path.validate().is_err());
        let example = example_of("hardened");
        assert!(example.contains("kind = \"embedded\""), "{example}");
        let c: Config = toml::from_str(&example).unwrap();
        c.validate().unwrap();
        let h = c.runtime.handlers(std::path::Path::new("/run/berth"));
        let p = h.policy("hardened").unwrap();
        assert!(p.require_user_namespace && p.deny_host_namespaces && p.deny_privileged);
        assert!(p.readonly_rootfs && p.default_seccomp);
        assert!(h.policy("other").is_err());
        let bad: Config =
            toml::from_str("[runtime.handlers.Berth]\nkind = \"embedded\"\n").unwrap();
        assert!(bad.validate().is_err());
        assert!(toml::from_str::<Config>("[runtime.handlers.x]\nkind = \"vm\"\n").is_err());
        assert!(toml::from_str::<Config>(
            "[runtime.handlers.x]\nkind = \"embedded\"\nno_such = true\n"
        )
        .is_err());
    }

    #[test]
    fn the_printed_default_is_the_default() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn the_readme_shows_the_default_configuration() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&format!("```toml\n{DEFAULT_TOML}```")),
            "README.md's Configuration reference must be `berth config default` verbatim"
        );
    }

    #[test]
    fn partial_files_keep_defaults_and_typos_are_refused() {
        let c: Config =
            toml::from_str("root = \"/srv/berth\"\n[image]\npinned_images = [\"pause\"]\n")
                .unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/berth"));
        assert_eq!(c.state, PathBuf::from("/run/berth"));
        assert_eq!(c.image.pinned_images, ["pause"]);
        assert_eq!(c.image.max_concurrent_layers, 4);
        assert_eq!(c.image.max_metadata_bytes, 4 << 20);
        let c: Config = toml::from_str("[image]\nmax_metadata_bytes = 1024\n").unwrap();
        assert_eq!(c.image.max_metadata_bytes, 1024);
        let err = toml::from_str::<Config>("rooot = \"/x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rooot"), "{err}");
        let err = toml::from_str::<Config>("[runtime]\ncgroup_driver = \"cgroupv3\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cgroupv3"), "{err}");
    }

    #[test]
    fn relative_paths_and_missing_explicit_files_are_errors() {
        let c = Config {
            root: "var/lib".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("root"));
        let mut c = Config::default();
        c.image.auth_file = "auth.json".into();
        assert!(c.validate().unwrap_err().to_string().contains("auth_file"));
        let mut c = Config::default();
        c.stream.max_pending_tokens = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("stream.max_pending_tokens"), "{err}");
        let mut c = Config::default();
        c.image.max_metadata_bytes = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("max_metadata_bytes"), "{err}");
        let err = Config::load(Some(Path::new("/nonexistent/berth.toml"))).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/berth.toml"));
    }
}
