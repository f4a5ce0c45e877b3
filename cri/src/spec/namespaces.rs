//! Which namespaces a container creates and which of its pod's it joins.

use berth_core::config::{Namespace, NamespaceKind};

use super::{unsupported, PidMode, PodContext, SpecError};
use crate::proto;

/// A new mount namespace always; the pod's pinned user (when it has one),
/// network, IPC and UTS namespaces joined when the pod has them, the host's
/// otherwise (no new one: `hostNetwork`/`hostIPC`); the pid namespace per
/// [`PidMode`]; no cgroup namespace.
///
/// The caller has turned the pid options into `pod.pid` (including
/// `TARGET`, which becomes [`PidMode::Pod`] with the target's namespace).
/// The container's user namespace options must agree with the pod's
/// (kubelet copies them): `POD` in a pod with its own, `NODE` or none in a
/// pod without.
pub(super) fn namespaces(
    pod: &PodContext<'_>,
    sc: &proto::LinuxContainerSecurityContext,
) -> Result<Vec<Namespace>, SpecError> {
    const USERNS: &str = "config.linux.security_context.namespace_options.userns_options";
    let userns = sc
        .namespace_options
        .as_ref()
        .and_then(|o| o.userns_options.as_ref());
    // kubelet copies the pod's user namespace options to its containers:
    // POD joins the pod's; NODE only in a pod without one.
    let mut out = vec![Namespace::new(NamespaceKind::Mount)];
    match (userns.map(|u| u.mode), pod.user_ns) {
        (None, None) => {}
        (Some(m), None) if m == proto::NamespaceMode::Node as i32 => {}
        (Some(_), None) => {
            return Err(unsupported(
                USERNS,
                "a user namespace in a pod sandbox without one",
            ))
        }
        (Some(m), Some(_)) if m != proto::NamespaceMode::Pod as i32 => {
            return Err(super::invalid(
                format!("{USERNS}.mode"),
                "the pod has its own user namespace: only POD",
            ))
        }
        (_, Some(u)) => out.push(Namespace::join(NamespaceKind::User, u.path)),
    }
    for (kind, path) in [
        (NamespaceKind::Network, pod.net_ns),
        (NamespaceKind::Ipc, pod.ipc_ns),
        (NamespaceKind::Uts, pod.uts_ns),
    ] {
        if let Some(path) = path {
            out.push(Namespace::join(kind, path));
        }
    }
    // On v2 the container's view of /sys/fs/cgroup is a cgroup2 mount in a
    // cgroup namespace rooted at its own cgroup.
    if pod.cgroup_view == Some(super::CgroupView::V2) {
        out.push(Namespace::new(NamespaceKind::Cgroup));
    }
    match &pod.pid {
        PidMode::Container | PidMode::Pod(None) => out.push(Namespace::new(NamespaceKind::Pid)),
        PidMode::Pod(Some(path)) => out.push(Namespace::join(NamespaceKind::Pid, path)),
        PidMode::Node => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::fixture::Fixture;
    use super::*;

    fn ns_of(f: &Fixture) -> Vec<Namespace> {
        f.spec().config.namespaces
    }

    #[test]
    fn joins_the_pods_namespaces_and_creates_mount_and_pid() {
        let f = Fixture::new();
        assert_eq!(
            ns_of(&f),
            vec![
                Namespace::new(NamespaceKind::Mount),
                Namespace::join(NamespaceKind::Network, "/run/berth/pods/p1/ns/net"),
                Namespace::join(NamespaceKind::Ipc, "/run/berth/pods/p1/ns/ipc"),
                Namespace::join(NamespaceKind::Uts, "/run/berth/pods/p1/ns/uts"),
                Namespace::new(NamespaceKind::Pid),
            ]
        );
    }

    #[test]
    fn host_network_creates_no_network_or_uts_namespace() {
        let mut f = Fixture::new();
        f.net_ns = None;
        f.uts_ns = None;
        let kinds: Vec<_> = ns_of(&f).iter().map(|n| n.kind).collect();
        assert_eq!(
            kinds,
            vec![NamespaceKind::Mount, NamespaceKind::Ipc, NamespaceKind::Pid]
        );
    }

    #[test]
    fn host_ipc_creates_no_ipc_namespace() {
        let mut f = Fixture::new();
        f.ipc_ns = None;
        assert!(!ns_of(&f).iter().any(|n| n.kind == NamespaceKind::Ipc));
    }

    #[test]
    fn host_pid() {
        let mut f = Fixture::new();
        f.pid = PidMode::Node;
        assert!(!ns_of(&f).iter().any(|n| n.kind == NamespaceKind::Pid));
    }

    #[test]
    fn pod_pid_joins_the_given_namespace() {
        let mut f = Fixture::new();
        f.pid = PidMode::Pod(Some(PathBuf::from("/proc/42/ns/pid")));
        assert!(ns_of(&f).contains(&Namespace::join(NamespaceKind::Pid, "/proc/42/ns/pid")));
    }

    #[test]
    fn pod_pid_without_a_namespace_yet_creates_one() {
        let mut f = Fixture::new();
        f.pid = PidMode::Pod(None);
        assert!(ns_of(&f).contains(&Namespace::new(NamespaceKind::Pid)));
    }

    #[test]
    fn user_namespace_is_unsupported() {
        let mut f = Fixture::new();
        f.sc().namespace_options = Some(proto::NamespaceOption {
            userns_options: Some(proto::UserNamespace {
                mode: proto::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            f.err_field(),
            "config.linux.security_context.namespace_options.userns_options"
        );
    }
}
