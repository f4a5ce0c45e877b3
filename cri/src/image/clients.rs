//! oci-client `Client`s, one per endpoint connection settings and
//! credentials, built from what hosts.toml says about the endpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::Client;

use super::hosts::Endpoint;

/// The connect bound when hosts.toml sets no `dial_timeout` (containerd's
/// default is 30 s; berth falls back to the next endpoint sooner).
pub(crate) const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a response may stall before the request fails (and a blob
/// download is resumed).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Distinct clients kept at most; the cache starts over beyond this.
const MAX_CLIENTS: usize = 256;

/// Clients are cached per endpoint settings *and credentials*: an
/// oci-client `Client` remembers the first credentials it saw for a registry
/// (and the tokens they bought), so sharing one between requests with
/// different pull secrets would lend one pod's credentials to another.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    http: bool,
    skip_verify: bool,
    ca_files: Vec<PathBuf>,
    dial_timeout: Option<Duration>,
    headers: BTreeMap<String, Vec<String>>,
    /// sha256 of the client identity as read now (a certificate renewed in
    /// place gets a new client; the key itself is not kept here).
    identity: [u8; 32],
    /// sha256 of the credentials (the secrets themselves are not kept here).
    auth: [u8; 32],
}

/// The client cache.
pub(crate) struct Clients {
    cache: Mutex<HashMap<ClientKey, Client>>,
    /// The most bytes of a manifest (or a token or error response) a client
    /// reads into memory.
    max_body_bytes: u64,
}

impl Clients {
    /// An empty cache of clients that read at most `max_body_bytes` of a
    /// manifest.
    pub(crate) fn new(max_body_bytes: u64) -> Clients {
        Clients {
            cache: Mutex::default(),
            max_body_bytes,
        }
    }

    /// The client for `ep` (in plain HTTP when `http`) with `auth`. Fails
    /// when the endpoint's client certificate cannot be read or used, or a
    /// header is not valid HTTP: never a client without what hosts.toml
    /// asks for.
    pub(crate) fn get(
        &self,
        ep: &Endpoint,
        http: bool,
        auth: &RegistryAuth,
    ) -> Result<Client, OciDistributionError> {
        let identity = identity_pem(ep).map_err(|e| OciDistributionError::GenericError(Some(e)))?;
        let key = ClientKey {
            http,
            skip_verify: ep.skip_verify,
            ca_files: ep.ca_files.clone(),
            dial_timeout: ep.dial_timeout,
            headers: ep.headers.clone(),
            identity: digest(identity.as_deref().unwrap_or_default()),
            auth: auth_key(auth),
        };
        let mut clients = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        // try_from, not new: new falls back to a default client on error.
        let client = Client::try_from(config(ep, http, identity, self.max_body_bytes))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// hosts.toml `client`: the first certificate (chain) and its key as one PEM
/// (rustls presents one identity; containerd's Go TLS picks among several,
/// berth uses the first, as the README says). `None` without one.
fn identity_pem(ep: &Endpoint) -> Result<Option<Vec<u8>>, String> {
    let Some(c) = ep.client_certs.first() else {
        return Ok(None);
    };
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| format!("hosts.toml `client` {}: {e}", p.display()))
    };
    let mut pem = read(&c.cert)?;
    if let Some(key) = &c.key {
        pem.push(b'\n');
        pem.extend(read(key)?);
    }
    Ok(Some(pem))
}

fn digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

fn config(
    ep: &Endpoint,
    http: bool,
    identity: Option<Vec<u8>>,
    max_body_bytes: u64,
) -> ClientConfig {
    let extra_root_certificates = ep
        .ca_files
        .iter()
        .filter_map(|p| match std::fs::read(p) {
            Ok(data) => Some(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            }),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "cannot read registry CA file");
                None
            }
        })
        .collect();
    ClientConfig {
        protocol: if http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: ep.skip_verify,
        extra_root_certificates,
        platform_resolver: None,
        connect_timeout: connect_timeout(ep.dial_timeout),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")),
        client_identity_pem: identity,
        default_headers: ep
            .headers
            .iter()
            .flat_map(|(name, values)| values.iter().map(move |v| (name.clone(), v.clone())))
            .collect(),
        max_body_bytes: Some(max_body_bytes),
        ..ClientConfig::default()
    }
}

/// hosts.toml `dial_timeout` → reqwest's connect timeout: unset is berth's
/// default, zero is no bound (containerd's `net.Dialer{Timeout: 0}`).
fn connect_timeout(dial_timeout: Option<Duration>) -> Option<Duration> {
    match dial_timeout {
        None => Some(DEFAULT_DIAL_TIMEOUT),
        Some(Duration::ZERO) => None,
        Some(d) => Some(d),
    }
}

fn auth_key(auth: &RegistryAuth) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    match auth {
        RegistryAuth::Anonymous => h.update(b"anonymous"),
        RegistryAuth::Basic(u, p) => {
            h.update(b"basic\0");
            h.update(u.as_bytes());
            h.update(b"\0");
            h.update(p.as_bytes());
        }
        RegistryAuth::Bearer(t) => {
            h.update(b"bearer\0");
            h.update(t.as_bytes());
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(dir: &std::path::Path, key: Option<&str>) -> Endpoint {
        use super::super::hosts::{Capabilities, ClientCert, Scheme};
        Endpoint {
            scheme: Scheme::Https,
            host: "r.example".into(),
            path: "/v2".into(),
            capabilities: Capabilities {
                pull: true,
                resolve: true,
            },
            skip_verify: false,
            ca_files: Vec::new(),
            client_certs: vec![ClientCert {
                cert: dir.join("c.pem"),
                key: key.map(|k| dir.join(k)),
            }],
            headers: BTreeMap::from([("x-a".to_string(), vec!["1".into(), "2".into()])]),
            dial_timeout: None,
            http_fallback: false,
            is_mirror: false,
            file: None,
        }
    }

    #[test]
    fn the_client_identity_is_the_certificate_and_its_key() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("c.pem"), "CERT").unwrap();
        std::fs::write(d.path().join("k.pem"), "KEY").unwrap();
        let ep = endpoint(d.path(), Some("k.pem"));
        assert_eq!(identity_pem(&ep).unwrap().unwrap(), b"CERT\nKEY");
        assert_eq!(
            identity_pem(&endpoint(d.path(), None)).unwrap().unwrap(),
            b"CERT"
        );
        let missing = endpoint(d.path(), Some("gone.pem"));
        let err = identity_pem(&missing).unwrap_err();
        assert!(
            err.contains("gone.pem") && err.contains("`client`"),
            "{err}"
        );
        // Not PEM: the client is not built (never one without the identity).
        let err = Clients::new(1 << 20)
            .get(&ep, false, &RegistryAuth::Anonymous)
            .err()
            .expect("a bad identity fails");
        assert!(!err.to_string().is_empty());
        // Every header value is its own line.
        let c = config(&ep, false, None, 1 << 20);
        assert_eq!(c.max_body_bytes, Some(1 << 20));
        assert_eq!(
            c.default_headers,
            [
                ("x-a".to_string(), "1".to_string()),
                ("x-a".into(), "2".into())
            ]
        );
    }

    #[test]
    fn dial_timeout_bounds_the_connect() {
        assert_eq!(connect_timeout(None), Some(DEFAULT_DIAL_TIMEOUT));
        assert_eq!(connect_timeout(Some(Duration::ZERO)), None);
        let d = Duration::from_millis(500);
        assert_eq!(connect_timeout(Some(d)), Some(d));
    }
}
