//! The files a pod's containers share: `/etc/resolv.conf` (from the pod's
//! `dns_config`, else the host's), `/etc/hostname` and `/etc/hosts`.
//! Rendering is pure (unit-tested); each field was checked for newlines by
//! validation, so no request can inject lines.

use std::path::Path;

use crate::proto;

/// resolv.conf from a CRI `DNSConfig` (kubelet has already merged the
/// cluster DNS and the pod's `dnsConfig`), as containerd writes it.
pub fn resolv_conf(dns: &proto::DnsConfig) -> String {
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

/// /etc/hosts for a pod: localhost entries and the pod's own hostname.
pub fn hosts(hostname: &str) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

/// Writes the three files into `dir`. With no DNS config the host's
/// resolv.conf is copied (as containerd does for pods without one).
pub fn write(
    dir: &Path,
    hostname: &str,
    dns: Option<&proto::DnsConfig>,
    host_network: bool,
) -> std::io::Result<()> {
    let resolv = match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            resolv_conf(d)
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    std::fs::write(dir.join("resolv.conf"), resolv)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    let hosts_text = if host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| hosts(hostname))
    } else {
        hosts(hostname)
    };
    std::fs::write(dir.join("hosts"), hosts_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lines() {
        let d = proto::DnsConfig {
            servers: vec!["10.96.0.10".into(), "10.96.0.11".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&d),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver 10.96.0.11\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(&proto::DnsConfig::default()), "");
    }

    #[test]
    fn hosts_has_localhost_and_the_pod() {
        let h = hosts("web-0");
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("127.0.1.1\tweb-0\n"));
    }
}
