//! oci-client `Client`s, one per endpoint connection settings and
//! credentials, built from what hosts.toml says about the endpoint.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
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
    /// sha256 of the credentials (the secrets themselves are not kept here).
    auth: [u8; 32],
}

/// The client cache.
#[derive(Default)]
pub(crate) struct Clients(Mutex<HashMap<ClientKey, Client>>);

impl Clients {
    /// The client for `ep` (in plain HTTP when `http`) with `auth`.
    pub(crate) fn get(&self, ep: &Endpoint, http: bool, auth: &RegistryAuth) -> Client {
        let key = ClientKey {
            http,
            skip_verify: ep.skip_verify,
            ca_files: ep.ca_files.clone(),
            dial_timeout: ep.dial_timeout,
            auth: auth_key(auth),
        };
        let mut clients = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&key) {
            clients.clear();
        }
        clients
            .entry(key)
            .or_insert_with(|| Client::new(config(ep, http)))
            .clone()
    }
}

fn config(ep: &Endpoint, http: bool) -> ClientConfig {
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

    #[test]
    fn dial_timeout_bounds_the_connect() {
        assert_eq!(connect_timeout(None), Some(DEFAULT_DIAL_TIMEOUT));
        assert_eq!(connect_timeout(Some(Duration::ZERO)), None);
        let d = Duration::from_millis(500);
        assert_eq!(connect_timeout(Some(d)), Some(d));
    }
}
