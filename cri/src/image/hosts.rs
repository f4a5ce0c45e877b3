//! Node registry configuration in containerd's `certs.d` format.
//!
//! `<dir>/<registry host[:port]>/hosts.toml` (or `<dir>/_default/hosts.toml`)
//! lists, in order of preference, the endpoints to try for that registry:
//!
//! ```toml
//! server = "https://registry.example.com"      # the upstream, tried last
//! [host."https://mirror.example.com"]
//!   capabilities = ["pull", "resolve"]
//!   ca = "mirror-ca.pem"                        # relative to this file's dir
//!   skip_verify = false
//! [host."http://10.0.0.5:5000"]
//!   capabilities = ["pull"]
//! ```
//!
//! Operators can point berth at the directory they already use for
//! containerd (`/etc/containerd/certs.d`). See containerd's `docs/hosts.md`.
//! The file is read on every pull, so edits take effect without a restart.

use std::path::{Path, PathBuf};

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
        /// What is wrong.
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

/// One place to fetch a registry's content from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// How to talk to it.
    pub scheme: Scheme,
    /// `host[:port]`.
    pub host: String,
    /// What it may be used for.
    pub capabilities: Capabilities,
    /// Do not verify its TLS certificate (hosts.toml `skip_verify`).
    pub skip_verify: bool,
    /// Extra CA certificates (PEM) to trust for it.
    pub ca_files: Vec<PathBuf>,
    /// When HTTPS is not answered, try plain HTTP (loopback registries, as
    /// Docker does by default).
    pub http_fallback: bool,
    /// True for a mirror: requests carry `?ns=<registry>` as containerd's do.
    pub is_mirror: bool,
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
                parse(registry, &text, &path)
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
        capabilities: Capabilities {
            pull: true,
            resolve: true,
        },
        skip_verify: false,
        ca_files: Vec::new(),
        is_mirror: false,
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

fn parse(registry: &str, text: &str, path: &Path) -> Result<Vec<Endpoint>, HostsError> {
    let invalid = |reason: String| HostsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    if let Some(hosts) = doc.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| invalid("`host` must be a table of tables".into()))?;
        // Table order is file order (toml's preserve_order): it is the
        // order of preference, as in containerd.
        for (url, v) in hosts {
            let t = v
                .as_table()
                .ok_or_else(|| invalid(format!("host {url:?} must be a table")))?;
            out.push(endpoint(url, t, base, true).map_err(invalid)?);
        }
    }
    match doc.get("server") {
        Some(v) => {
            let url = v
                .as_str()
                .ok_or_else(|| invalid("`server` must be a string".into()))?;
            out.push(endpoint(url, &doc, base, false).map_err(invalid)?);
        }
        None => out.push(default_endpoint(registry)),
    }
    Ok(out)
}

fn endpoint(url: &str, t: &toml::Table, base: &Path, is_mirror: bool) -> Result<Endpoint, String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        return Err(format!(
            "{url:?}: endpoint must start with http:// or https://"
        ));
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.trim_end_matches('/');
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    if !path.is_empty() && path != "v2" {
        return Err(format!(
            "{url:?}: endpoints with a path prefix other than /v2 are not supported"
        ));
    }
    let mut capabilities = Capabilities {
        pull: true,
        resolve: true,
    };
    if let Some(caps) = t.get("capabilities") {
        let caps = caps
            .as_array()
            .ok_or_else(|| format!("{url:?}: capabilities must be an array"))?;
        capabilities = Capabilities {
            pull: false,
            resolve: false,
        };
        for c in caps {
            match c.as_str() {
                Some("pull") => capabilities.pull = true,
                Some("resolve") => capabilities.resolve = true,
                Some("push") => {}
                _ => return Err(format!("{url:?}: unknown capability {c}")),
            }
        }
    }
    let skip_verify = match t.get("skip_verify") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| format!("{url:?}: skip_verify must be a boolean"))?,
    };
    let ca_files = match t.get("ca") {
        None => Vec::new(),
        Some(toml::Value::String(s)) => vec![base.join(s)],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(|s| base.join(s)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("{url:?}: ca must be a string or an array of strings"))?,
        Some(_) => {
            return Err(format!(
                "{url:?}: ca must be a string or an array of strings"
            ))
        }
    };
    Ok(Endpoint {
        scheme,
        host: host.to_string(),
        capabilities,
        skip_verify,
        ca_files,
        http_fallback: false,
        is_mirror,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, host: &str, text: &str) {
        std::fs::create_dir_all(dir.join(host)).unwrap();
        std::fs::write(dir.join(host).join("hosts.toml"), text).unwrap();
    }

    #[test]
    fn defaults_without_config() {
        let h = RegistryHosts::new(None);
        let e = h.endpoints("docker.io").unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].host, "registry-1.docker.io");
        assert_eq!(e[0].scheme, Scheme::Https);
        assert!(!e[0].http_fallback);
        for lo in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(h.endpoints(lo).unwrap()[0].http_fallback, "{lo}");
        }
        assert!(!h.endpoints("10.0.0.1:5000").unwrap()[0].http_fallback);
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "docker.io",
            r#"
server = "https://registry-1.docker.io"
[host."https://zmirror.example.com"]
  capabilities = ["pull", "resolve"]
  ca = "ca.pem"
[host."http://10.0.0.5:5000/v2"]
  capabilities = ["pull"]
  skip_verify = true
"#,
        );
        let e = RegistryHosts::new(Some(d.path().into()))
            .endpoints("docker.io")
            .unwrap();
        let hosts: Vec<_> = e.iter().map(|e| e.host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "zmirror.example.com",
                "10.0.0.5:5000",
                "registry-1.docker.io"
            ]
        );
        assert_eq!(e[0].ca_files, [d.path().join("docker.io/ca.pem")]);
        assert!(e[0].is_mirror && !e[2].is_mirror);
        assert_eq!(e[1].scheme, Scheme::Http);
        assert!(e[1].capabilities.pull && !e[1].capabilities.resolve && e[1].skip_verify);
    }

    #[test]
    fn default_dir_and_plain_http_server() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "_default", "server = \"http://127.0.0.1:5000\"\n");
        let e = RegistryHosts::new(Some(d.path().into()))
            .endpoints("example.com")
            .unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].scheme, e[0].host.as_str()),
            (Scheme::Http, "127.0.0.1:5000")
        );
    }

    #[test]
    fn bad_files_name_the_problem() {
        let d = tempfile::tempdir().unwrap();
        for (text, want) in [
            ("server = 5", "`server` must be a string"),
            ("server = \"ftp://x\"", "http:// or https://"),
            (
                "[host.\"https://m\"]\ncapabilities = [\"fly\"]",
                "unknown capability",
            ),
            ("[host.\"https://m/prefix\"]", "path prefix"),
            ("server = ", "parse error"),
        ] {
            write(d.path(), "r.example", text);
            let err = RegistryHosts::new(Some(d.path().into()))
                .endpoints("r.example")
                .unwrap_err()
                .to_string();
            assert!(
                err.to_lowercase().contains(&want.to_lowercase()),
                "{text:?}: {err}"
            );
            assert!(err.contains("hosts.toml"), "{err}");
        }
    }
}
