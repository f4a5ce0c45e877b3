//! The node-wide registry credentials file (`[image] auth_file`), in Docker's
//! `config.json` format:
//!
//! ```json
//! {"auths": {
//!   "registry.example.com": {"auth": "dXNlcjpwYXNz"},
//!   "https://index.docker.io/v1/": {"username": "u", "password": "p"},
//!   "mirror.example.com:5000": {"identitytoken": "..."}
//! }}
//! ```
//!
//! Keys are `host`, `host:port` or URLs as `docker login` writes them
//! (`https://host/v1/`); `docker.io`, `index.docker.io` and
//! `registry-1.docker.io` are one registry. Used only when a pull carries no
//! credentials of its own; credential helpers (`credsStore`, `credHelpers`)
//! are not run. The file is read at each such pull. It holds secrets: keep
//! it 0600; nothing here logs or quotes its contents, error messages
//! included (they give a line and column, never a value).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// Why the auth file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The file exists but could not be read.
    #[error("reading the registry auth file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not Docker's `config.json` format.
    #[error("registry auth file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, without any of the file's values.
        reason: String,
    },
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

/// One `auths` entry (Docker's `types.AuthConfig`, the fields berth uses).
#[derive(Deserialize, Default)]
struct Entry {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    identitytoken: String,
    #[serde(default)]
    registrytoken: String,
}

/// The credentials of an auth file, by registry host.
#[derive(Clone, Default)]
pub struct NodeAuth {
    by_host: BTreeMap<String, RegistryAuth>,
}

// Hand-written so that no credential ever reaches a log line through `{:?}`.
impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuth")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl NodeAuth {
    /// Reads `path`; a missing file means no node credentials.
    pub fn load(path: &Path) -> Result<NodeAuth, AuthFileError> {
        match std::fs::read(path) {
            Ok(bytes) => NodeAuth::parse(&bytes, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeAuth::default()),
            Err(source) => Err(AuthFileError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses the contents of `path`.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<NodeAuth, AuthFileError> {
        let invalid = |reason: String| AuthFileError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        // serde_json's messages can quote the offending value (a password
        // of the wrong type); only its category and position are kept.
        let file: ConfigFile = serde_json::from_slice(bytes).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Io => "unreadable",
                serde_json::error::Category::Syntax => "not valid JSON",
                serde_json::error::Category::Data => {
                    "not Docker's config.json format ({\"auths\": {\"<registry>\": {\"auth\": \"<base64 user:password>\"}}})"
                }
                serde_json::error::Category::Eof => "truncated JSON",
            };
            invalid(format!("{what} at line {} column {}", e.line(), e.column()))
        })?;
        let mut by_host = BTreeMap::new();
        for (key, entry) in file.auths {
            let host = normalize(&key);
            if host.is_empty() {
                return Err(invalid(format!("auths key {key:?} names no registry")));
            }
            let auth = entry
                .into_auth()
                .map_err(|why| invalid(format!("auths entry {key:?}: {why}")))?;
            // A bare `host` key wins over URL forms of the same host (the
            // exact key is what Docker looks up first).
            let exact = key == host;
            if let Some(auth) = auth {
                if exact || !by_host.contains_key(&host) {
                    by_host.insert(host, auth);
                }
            }
        }
        Ok(NodeAuth { by_host })
    }

    /// The credentials for `host` (`host[:port]`, as an endpoint names it).
    pub fn get(&self, host: &str) -> Option<&RegistryAuth> {
        self.by_host.get(&normalize(host))
    }
}

impl Entry {
    /// What the entry gives, in Docker's order: `auth` (base64
    /// `user:password`, over `username`/`password`), then an identity
    /// (refresh) token, then a registry (bearer) token. `None` when empty.
    fn into_auth(self) -> Result<Option<RegistryAuth>, &'static str> {
        use base64::Engine as _;
        if !self.auth.is_empty() {
            let bad = "`auth` is not base64 of \"username:password\"";
            let raw = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|_| bad)?;
            let text = String::from_utf8(raw).map_err(|_| bad)?;
            let (user, pass) = text.split_once(':').ok_or(bad)?;
            return Ok(Some(RegistryAuth::Basic(user.into(), pass.into())));
        }
        if !self.username.is_empty() || !self.password.is_empty() {
            return Ok(Some(RegistryAuth::Basic(self.username, self.password)));
        }
        if !self.identitytoken.is_empty() {
            // The same convention as a CRI `identity_token` (service.rs).
            return Ok(Some(RegistryAuth::Basic(
                "<token>".into(),
                self.identitytoken,
            )));
        }
        if !self.registrytoken.is_empty() {
            return Ok(Some(RegistryAuth::Bearer(self.registrytoken)));
        }
        Ok(None)
    }
}

/// `https://host:port/v1/` → `host:port`, lower-cased; Docker Hub's names →
/// `docker.io` (Docker's `ConvertToHostname` plus its Hub aliases).
fn normalize(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or("").to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<NodeAuth, AuthFileError> {
        NodeAuth::parse(json.as_bytes(), Path::new("/etc/berth/auth.json"))
    }

    fn basic(a: Option<&RegistryAuth>) -> Option<(String, String)> {
        match a {
            Some(RegistryAuth::Basic(u, p)) => Some((u.clone(), p.clone())),
            _ => None,
        }
    }

    #[test]
    fn keys_in_every_form_docker_writes() {
        // base64("alice:pa:ss"), base64("bob:x")
        let a = parse(
            r#"{"auths": {
                "registry.example.com": {"auth": "YWxpY2U6cGE6c3M="},
                "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
                "http://10.0.0.5:5000": {"auth": "Ym9iOng=", "email": "ignored"},
                "Mirror.Example.com:443/v2/": {"identitytoken": "refresh"},
                "tokens.example": {"registrytoken": "bearer-t"},
                "empty.example": {}
             },
             "credsStore": "desktop", "HttpHeaders": {"X-Meta": "1"}}"#,
        )
        .unwrap();
        let pair = |u: &str, p: &str| Some((u.to_string(), p.to_string()));
        assert_eq!(basic(a.get("registry.example.com")), pair("alice", "pa:ss"));
        for hub in ["docker.io", "registry-1.docker.io", "index.docker.io"] {
            assert_eq!(basic(a.get(hub)), pair("hub", "pw"), "{hub}");
        }
        assert_eq!(basic(a.get("10.0.0.5:5000")), pair("bob", "x"));
        assert_eq!(a.get("10.0.0.5"), None, "the port is part of the host");
        assert_eq!(
            basic(a.get("mirror.example.com:443")),
            pair("<token>", "refresh")
        );
        assert!(
            matches!(a.get("tokens.example"), Some(RegistryAuth::Bearer(t)) if t == "bearer-t")
        );
        assert!(a.get("empty.example").is_none());
        assert!(a.get("other.example").is_none());
        // Debug output names hosts only.
        let dbg = format!("{a:?}");
        assert!(
            dbg.contains("registry.example.com") && !dbg.contains("pw"),
            "{dbg}"
        );
    }

    #[test]
    fn auth_wins_over_username_and_the_bare_key_over_urls() {
        let a = parse(
            r#"{"auths": {
                "https://r.example/v1/": {"auth": "dXJsOnU="},
                "r.example": {"auth": "YmFyZTpi", "username": "x", "password": "y"},
                "s.example": {"username": "only-user"}
             }}"#,
        )
        .unwrap();
        // base64("bare:b") from the bare key, `auth` over username/password.
        assert_eq!(
            basic(a.get("r.example")),
            Some(("bare".to_string(), "b".to_string()))
        );
        assert_eq!(
            basic(a.get("s.example")),
            Some(("only-user".to_string(), String::new()))
        );
    }

    #[test]
    fn absent_file_is_no_credentials_and_bad_ones_name_the_file_not_the_secret() {
        let d = tempfile::tempdir().unwrap();
        let a = NodeAuth::load(&d.path().join("missing.json")).unwrap();
        assert!(a.get("docker.io").is_none());
        let err = NodeAuth::load(d.path()).unwrap_err().to_string();
        assert!(err.contains(&d.path().display().to_string()), "{err}");
        for (json, want) in [
            ("{\"auths\": ", "truncated JSON"),
            ("not json", "not valid JSON"),
            (
                r#"{"auths": {"r": "hunter2-secret"}}"#,
                "config.json format",
            ),
            (
                r#"{"auths": {"r": {"password": 12345678}}}"#,
                "config.json format",
            ),
            (
                r#"{"auths": {"r": {"auth": "hunter2-secret"}}}"#,
                "not base64",
            ),
            (
                r#"{"auths": {"r": {"auth": "aHVudGVyMg=="}}}"#,
                "not base64",
            ),
            (
                r#"{"auths": {"https:///v1/": {"auth": "YTpi"}}}"#,
                "names no registry",
            ),
        ] {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains("/etc/berth/auth.json"), "{json}: {err}");
            assert!(err.contains(want), "{json}: {err}");
            for secret in ["hunter2", "12345678", "aHVudGVyMg"] {
                assert!(!err.contains(secret), "{json}: {err}");
            }
        }
    }
}
