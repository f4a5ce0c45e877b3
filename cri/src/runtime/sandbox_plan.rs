//! `RunPodSandbox`'s checks: what a valid request asks for (pure), every
//! refusal naming the field.

use std::path::Path;

use berth_core::config::IdMap;

use super::error::RuntimeError;
use super::sandbox::{sandbox_name, NsMode, Userns};
use crate::proto;

/// What a valid request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SandboxPlan {
    pub name: String,
    pub hostname: String,
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
    pub cgroup_parent: String,
    /// The pod's own user namespace (`hostUsers: false`).
    pub userns: Option<Userns>,
    /// The pod's SELinux MCS level, shared by its containers (empty: no
    /// SELinux on the node).
    pub selinux_level: String,
    /// IPs to ask the network plugins for (RestorePod's old ones).
    pub preferred_ips: Vec<std::net::IpAddr>,
}

/// Id ranges to check (pure): non-empty, no zero-length or overflowing
/// range, container id 0 mapped (the container's root).
fn id_maps(field: &str, maps: &[proto::IdMapping]) -> Result<Vec<IdMap>, RuntimeError> {
    if maps.is_empty() || maps.len() > 340 {
        return Err(RuntimeError::invalid(field, "must hold 1 to 340 ranges"));
    }
    let mut out = Vec::new();
    for (i, m) in maps.iter().enumerate() {
        let ok = m.length > 0
            && m.container_id.checked_add(m.length).is_some()
            && m.host_id.checked_add(m.length).is_some();
        if !ok {
            return Err(RuntimeError::invalid(
                format!("{field}[{i}]"),
                "must have a length > 0 and stay within 32-bit ids",
            ));
        }
        out.push(IdMap {
            container_id: m.container_id,
            host_id: m.host_id,
            size: m.length,
        });
    }
    if !out.iter().any(|m| m.container_id == 0) {
        return Err(RuntimeError::invalid(field, "must map container id 0"));
    }
    Ok(out)
}

fn mode(value: i32, field: &str, allowed: &[NsMode]) -> Result<NsMode, RuntimeError> {
    let m = match proto::NamespaceMode::try_from(value) {
        Ok(proto::NamespaceMode::Pod) => NsMode::Pod,
        Ok(proto::NamespaceMode::Container) => NsMode::Container,
        Ok(proto::NamespaceMode::Node) => NsMode::Node,
        Ok(proto::NamespaceMode::Target) | Err(_) => {
            return Err(RuntimeError::invalid(
                field,
                format!("mode {value} is not valid for a pod sandbox"),
            ))
        }
    };
    if allowed.contains(&m) {
        Ok(m)
    } else {
        Err(RuntimeError::invalid(
            field,
            format!("{m:?} is not valid for a pod sandbox"),
        ))
    }
}

/// No newline, carriage return or NUL: these values end up in files.
fn one_line(field: &str, v: &str) -> Result<(), RuntimeError> {
    if v.contains(['\n', '\r', '\0']) {
        return Err(RuntimeError::invalid(
            field,
            "must not contain newlines or NUL",
        ));
    }
    Ok(())
}

/// A path kubelet gives (log directory, cgroup parent): absolute, no `..`.
fn clean_abs(field: &str, v: &str) -> Result<(), RuntimeError> {
    one_line(field, v)?;
    let p = Path::new(v);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(RuntimeError::invalid(
            field,
            format!("{v:?} must be an absolute path without .."),
        ));
    }
    Ok(())
}

/// Checks a request and decides what to build (pure).
/// `handler`: the pod's RuntimeClass handler, whose policy it must meet,
/// and whether it is an external OCI runtime.
/// The pod's own user namespace as `opts` asks for it; `None`: the node's.
pub(super) fn userns_of(opts: &proto::NamespaceOption) -> Result<Option<Userns>, RuntimeError> {
    const USERNS: &str = "config.linux.security_context.namespace_options.userns_options";
    let Some(u) = opts.userns_options.as_ref() else {
        return Ok(None);
    };
    Ok(
        match mode(
            u.mode,
            &format!("{USERNS}.mode"),
            &[NsMode::Pod, NsMode::Node],
        )? {
            NsMode::Node => None,
            // With the host network too (cri-api 1.33
            // user_namespaces_host_network): the pod's user namespace owns
            // its IPC namespace, and its containers stay in the host's
            // network and UTS namespaces.
            _ => Some(Userns {
                uids: id_maps(&format!("{USERNS}.uids"), &u.uids)?,
                gids: id_maps(&format!("{USERNS}.gids"), &u.gids)?,
            }),
        },
    )
}

pub(super) fn plan(
    config: &proto::PodSandboxConfig,
    handler: (&str, &super::handlers::EmbeddedPolicy, bool),
) -> Result<SandboxPlan, RuntimeError> {
    let m = config
        .metadata
        .as_ref()
        .ok_or_else(|| RuntimeError::invalid("config.metadata", "must be set"))?;
    for (field, v) in [
        ("config.metadata.name", &m.name),
        ("config.metadata.namespace", &m.namespace),
        ("config.metadata.uid", &m.uid),
    ] {
        if v.is_empty() {
            return Err(RuntimeError::invalid(field, "must not be empty"));
        }
        // `;` and `=` would break CNI_ARGS, where these go.
        if v.contains(['/', '\0', '\n', ';', '=']) || v.len() > 253 {
            return Err(RuntimeError::invalid(
                field,
                "must be at most 253 characters, without /, ;, = or control characters",
            ));
        }
    }
    let linux = config.linux.clone().unwrap_or_default();
    let opts = linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let network = mode(
        opts.network,
        "config.linux.security_context.namespace_options.network",
        &[NsMode::Pod, NsMode::Node],
    )?;
    let pid = mode(
        opts.pid,
        "config.linux.security_context.namespace_options.pid",
        &[NsMode::Pod, NsMode::Container, NsMode::Node],
    )?;
    let ipc = mode(
        opts.ipc,
        "config.linux.security_context.namespace_options.ipc",
        &[NsMode::Pod, NsMode::Node],
    )?;
    let userns = userns_of(&opts)?;
    super::handlers::check_pod(
        handler.0,
        handler.1,
        handler.2,
        &[
            ("network", network == NsMode::Node),
            ("pid", pid == NsMode::Node),
            ("ipc", ipc == NsMode::Node),
        ],
        userns.is_some(),
    )?;
    if network == NsMode::Pod {
        crate::cni::caps::bandwidth(&config.annotations)
            .map_err(|b| RuntimeError::invalid(b.field, b.reason))?;
    }
    let hostname = if network == NsMode::Node {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else if config.hostname.is_empty() {
        m.name.chars().take(63).collect()
    } else {
        config.hostname.clone()
    };
    if hostname.len() > 64 || hostname.contains(['/', '\0', '\n', '\r', ' ']) {
        return Err(RuntimeError::invalid(
            "config.hostname",
            "must be at most 64 characters of a host name",
        ));
    }
    if !config.log_directory.is_empty() {
        clean_abs("config.log_directory", &config.log_directory)?;
    }
    if !linux.cgroup_parent.is_empty() {
        if linux.cgroup_parent.ends_with(".slice") && !linux.cgroup_parent.contains('/') {
            one_line("config.linux.cgroup_parent", &linux.cgroup_parent)?;
        } else {
            clean_abs("config.linux.cgroup_parent", &linux.cgroup_parent)?;
        }
    }
    if let Some(dns) = &config.dns_config {
        for (i, v) in dns.servers.iter().enumerate() {
            one_line(&format!("config.dns_config.servers[{i}]"), v)?;
        }
        for (i, v) in dns.searches.iter().enumerate() {
            one_line(&format!("config.dns_config.searches[{i}]"), v)?;
        }
        for (i, v) in dns.options.iter().enumerate() {
            one_line(&format!("config.dns_config.options[{i}]"), v)?;
        }
    }
    for (k, v) in &linux.sysctls {
        let ok_key = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
            && !k.contains("..");
        if !ok_key {
            return Err(RuntimeError::invalid(
                format!("config.linux.sysctls[{k:?}]"),
                "not a sysctl name",
            ));
        }
        one_line(&format!("config.linux.sysctls[{k:?}]"), v)?;
    }
    Ok(SandboxPlan {
        name: sandbox_name(m),
        hostname,
        network,
        pid,
        ipc,
        cgroup_parent: linux.cgroup_parent.clone(),
        userns,
        selinux_level: String::new(),
        preferred_ips: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> proto::PodSandboxConfig {
        proto::PodSandboxConfig {
            metadata: Some(proto::PodSandboxMetadata {
                name: "web".into(),
                uid: "u-1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "web".into(),
            log_directory: "/var/log/pods/default_web_u-1".into(),
            linux: Some(proto::LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/besteffort/podu-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn err_field(c: &proto::PodSandboxConfig) -> String {
        match plan(c, ("", &Default::default(), false)) {
            Err(RuntimeError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_pod_gets_its_own_namespaces() {
        let p = plan(&base(), ("", &Default::default(), false)).unwrap();
        assert_eq!(p.name, "web_default_u-1_0");
        // Zero values are POD for all three (kubelet sends CONTAINER for pid
        // explicitly unless the pod shares its process namespace).
        assert_eq!(
            (p.network, p.pid, p.ipc),
            (NsMode::Pod, NsMode::Pod, NsMode::Pod)
        );
        assert_eq!(p.hostname, "web");
        assert_eq!(p.cgroup_parent, "/kubepods/besteffort/podu-1");
    }

    #[test]
    fn host_network_uses_the_host_name() {
        let mut c = base();
        c.linux.as_mut().unwrap().security_context = Some(proto::LinuxSandboxSecurityContext {
            namespace_options: Some(proto::NamespaceOption {
                network: proto::NamespaceMode::Node as i32,
                pid: proto::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let p = plan(&c, ("", &Default::default(), false)).unwrap();
        assert_eq!((p.network, p.pid), (NsMode::Node, NsMode::Pod));
        assert_eq!(
            p.hostname,
            nix::unistd::gethostname().unwrap().to_string_lossy()
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let mut c = base();
        c.metadata = None;
        assert_eq!(err_field(&c), "config.metadata");
        let mut c = base();
        c.metadata.as_mut().unwrap().uid.clear();
        assert_eq!(err_field(&c), "config.metadata.uid");
        let mut c = base();
        c.metadata.as_mut().unwrap().name = "a/b".into();
        assert_eq!(err_field(&c), "config.metadata.name");
        let mut c = base();
        c.log_directory = "/var/log/pods/../../etc".into();
        assert_eq!(err_field(&c), "config.log_directory");
        let mut c = base();
        c.linux.as_mut().unwrap().cgroup_parent = "kubepods/../..".into();
        assert_eq!(err_field(&c), "config.linux.cgroup_parent");
        let mut c = base();
        c.dns_config = Some(proto::DnsConfig {
            servers: vec!["1.1.1.1\nnameserver 6.6.6.6".into()],
            ..Default::default()
        });
        assert_eq!(err_field(&c), "config.dns_config.servers[0]");
        let mut c = base();
        c.hostname = "x".repeat(65);
        assert_eq!(err_field(&c), "config.hostname");
        let mut c = base();
        c.linux
            .as_mut()
            .unwrap()
            .sysctls
            .insert("../../x".into(), "1".into());
        assert!(err_field(&c).starts_with("config.linux.sysctls"));
        let strict = super::super::handlers::EmbeddedPolicy {
            deny_host_namespaces: true,
            ..Default::default()
        };
        let mut c = base();
        c.linux
            .as_mut()
            .unwrap()
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options = Some(proto::NamespaceOption {
            network: proto::NamespaceMode::Node as i32,
            ..Default::default()
        });
        assert!(plan(&c, ("", &Default::default(), false)).is_ok());
        assert!(matches!(plan(&c, ("strict", &strict, false)),
            Err(RuntimeError::InvalidArgument { field, .. }) if field.ends_with("namespace_options.network")));
    }
}
