//! Node registry configuration in containerd's `certs.d` format.
//!
//! `<dir>/<registry host[:port]>/hosts.toml` (or `<dir>/_default/hosts.toml`)
//! lists, in order of preference, the endpoints to try for that registry:
//!
//! ```toml
//! server = "https://registry.example.com"      # the upstream, tried last
//! dial_timeout = "5s"                           # top-level keys: the upstream's
//! [host."https://mirror.example.com"]
//!   capabilities = ["pull", "resolve"]
//!   ca = "mirror-ca.pem"                        # relative to this file's dir
//!   skip_verify = false
//!   dial_timeout = "500ms"
//! [host."http://10.0.0.5:5000/cache"]           # API root /cache/v2
//!   capabilities = ["pull"]
//! [host."https://mirror.example.com/registry/v2"]
//!   override_path = true                        # API root exactly /registry/v2
//! ```
//!
//! Operators can point berth at the directory they already use for
//! containerd (`/etc/containerd/certs.d`); the keys mean what containerd's
//! `docs/hosts.md` says (`client` and `header` through berth's patch of
//! oci-client, vendor/README.md; of several `client` certificates the first
//! is presented). `override_path` with a root that does not end in `/v2` is
//! parsed and checked, but oci-client always puts `/v2` in front of API
//! paths: such an endpoint is refused with an error that names the key
//! ([`Endpoint::unsupported`]) rather than used otherwise. Unknown keys are
//! ignored, as containerd does. The file is read on every pull, so edits
//! take effect without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod parse;
#[cfg(test)]
mod tests;

/// Why a hosts.toml was refused.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The file exists but could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a field of the wrong type.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the endpoint and the key).
        reason: String,
    },
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS.
    Https,
}

/// What an endpoint may be used for (hosts.toml `capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// Fetch blobs and manifests by digest.
    pub pull: bool,
    /// Resolve a tag to a manifest digest.
    pub resolve: bool,
}

/// A TLS client certificate for an endpoint (hosts.toml `client`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientCert {
    /// The PEM certificate (chain).
    pub cert: PathBuf,
    /// The PEM private key; `None` when `cert` holds the key too (a single
    /// path, or an empty second element of a pair).
    pub key: Option<PathBuf>,
}

/// A hosts.toml key that berth parses but cannot apply to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported {
    /// The key, as written in hosts.toml.
    pub key: &'static str,
    /// Why it cannot be applied.
    pub reason: &'static str,
}

/// One place to fetch a registry's content from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// How to talk to it.
    pub scheme: Scheme,
    /// `host[:port]`.
    pub host: String,
    /// The API root on the host, as containerd computes it: `/v2` for a URL
    /// without a path, `<path>/v2` for one with a path, the URL's path as it
    /// is with `override_path = true` (then it may not end in `/v2`).
    pub path: String,
    /// What it may be used for.
    pub capabilities: Capabilities,
    /// Do not verify its TLS certificate (hosts.toml `skip_verify`).
    pub skip_verify: bool,
    /// Extra CA certificates (PEM) to trust for it.
    pub ca_files: Vec<PathBuf>,
    /// TLS client certificates to present (hosts.toml `client`).
    pub client_certs: Vec<ClientCert>,
    /// Extra headers for every request to it (hosts.toml `[header]`): name →
    /// values, each value sent as its own header line.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Bound on the TCP connect (hosts.toml `dial_timeout`): `None` when not
    /// set (berth's default applies), zero for no bound but the kernel's, as
    /// in containerd.
    pub dial_timeout: Option<Duration>,
    /// When HTTPS is not answered, try plain HTTP (loopback registries, as
    /// Docker does by default).
    pub http_fallback: bool,
    /// True for a mirror: requests carry `?ns=<registry>` as containerd's do.
    pub is_mirror: bool,
    /// The hosts.toml it comes from (`None`: berth's default).
    pub file: Option<PathBuf>,
}

impl Endpoint {
    /// `scheme://host/root`, for messages.
    pub fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}{}", self.host, self.path)
    }

    /// The registry address oci-client should use: `host` followed by the
    /// API root without its final `/v2` (oci-client always appends `/v2/`),
    /// e.g. `mirror:5000/cache` for `http://mirror:5000/cache`. `None` when
    /// the root does not end in `/v2`, which only `override_path` allows.
    pub fn registry_address(&self) -> Option<String> {
        let prefix = self.path.strip_suffix("/v2")?;
        Some(format!("{}{prefix}", self.host))
    }

    /// The first configured key that berth cannot honour for this endpoint,
    /// if any. Such an endpoint is not used: pulling without a client
    /// certificate or header the operator asked for would at best fail at
    /// the registry and at worst reach something other than intended.
    pub fn unsupported(&self) -> Option<Unsupported> {
        if self.registry_address().is_none() {
            return Some(Unsupported {
                key: "override_path",
                reason: "berth's registry client (oci-client 0.18) always puts /v2 in front of \
                         API paths, so an API root that does not end in /v2 cannot be used",
            });
        }
        None
    }
}

/// The registry configuration directory (`--registry-config-dir`).
#[derive(Debug, Clone, Default)]
pub struct RegistryHosts {
    dir: Option<PathBuf>,
}

impl RegistryHosts {
    /// Configuration read from `dir`; `None` means defaults only.
    pub fn new(dir: Option<PathBuf>) -> RegistryHosts {
        RegistryHosts { dir }
    }

    /// The endpoints to try for `registry`, most preferred first.
    pub fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
        let file = self.dir.as_deref().and_then(|dir| {
            [registry, "_default"]
                .iter()
                .map(|name| dir.join(name).join("hosts.toml"))
                .find(|p| p.is_file())
        });
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| HostsError::Read {
                    path: path.clone(),
                    source,
                })?;
                parse::parse(registry, &text, &path)
            }
            None => Ok(vec![default_endpoint(registry)]),
        }
    }
}

/// The upstream itself when nothing is configured: HTTPS, with the plain-HTTP
/// fallback for loopback hosts.
fn default_endpoint(registry: &str) -> Endpoint {
    let host = if registry == "docker.io" {
        "registry-1.docker.io".to_string()
    } else {
        registry.to_string()
    };
    Endpoint {
        scheme: Scheme::Https,
        http_fallback: is_loopback(&host),
        host,
        path: "/v2".into(),
        capabilities: Capabilities {
            pull: true,
            resolve: true,
        },
        skip_verify: false,
        ca_files: Vec::new(),
        client_certs: Vec::new(),
        headers: BTreeMap::new(),
        dial_timeout: None,
        is_mirror: false,
        file: None,
    }
}

/// `localhost`, `127.0.0.0/8` and `::1`, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// The directory relative paths in `file` are resolved against.
fn base_dir(file: &Path) -> &Path {
    file.parent().unwrap_or(Path::new("/"))
}
