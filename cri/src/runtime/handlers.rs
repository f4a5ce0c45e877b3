//! RuntimeClass handlers (`RunPodSandboxRequest.runtime_handler`): the
//! default one (`""` or `berth`) and the node's configured ones
//! (`[runtime.handlers.<name>]`).
//!
//! Each configured handler is of one kind:
//! - `embedded`: berth's own runtime core under a policy the handler
//!   enforces on every pod and container it runs — a cheap, hardened
//!   RuntimeClass (pods in their own user namespace, none of the node's
//!   namespaces, no privileged containers, read-only root filesystems,
//!   RuntimeDefault seccomp unless a profile is named) that no other
//!   runtime offers;
//! - `oci`: an external runtime with runc's command line (runc, crun,
//!   youki, runsc) runs the pod's containers, driven by each container's
//!   monitor from an OCI bundle ([`crate::monitor::oci`]); the pod sandbox
//!   (its pinned namespaces) stays berth's. The same policy may apply;
//! - `shim-v2`: a containerd shim v2 (`containerd-shim-runc-v2`, Kata,
//!   gVisor, runwasi) runs each container, driven by its monitor through
//!   the shim's ttrpc Task service ([`crate::monitor::shim`]); likewise.
//!
//! What a policy forbids is refused with the field and the handler named;
//! what it sets is set before the request is translated, as if kubelet had
//! asked for it.

use std::collections::BTreeMap;

use super::error::RuntimeError;
use crate::proto;
use crate::proto::security_profile::ProfileType;

/// The policy of an `embedded` handler; everything off is the default
/// handler's behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbeddedPolicy {
    /// Pods must have their own user namespace (`hostUsers: false`).
    pub require_user_namespace: bool,
    /// Pods may not use the node's network, pid or ipc namespace.
    pub deny_host_namespaces: bool,
    /// Containers may not be privileged.
    pub deny_privileged: bool,
    /// Every container's root filesystem is read-only.
    pub readonly_rootfs: bool,
    /// A container that asks for no seccomp profile, or Unconfined, gets
    /// RuntimeDefault (a Localhost profile is kept).
    pub default_seccomp: bool,
}

/// One configured handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// berth's runtime core under a policy.
    Embedded(EmbeddedPolicy),
    /// An external OCI runtime, under a policy.
    Oci(OciRuntime, EmbeddedPolicy),
    /// A containerd shim v2, under a policy.
    Shim(ShimRuntime, EmbeddedPolicy),
}

pub use crate::monitor::oci::OciRuntime;
pub use crate::monitor::shim::ShimRuntime;

/// The node's handlers by name (the default one is implicit); shared, so
/// that a CreateContainer takes a reference, not a copy of the map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handlers(std::sync::Arc<BTreeMap<String, Handler>>);

/// The default handler's names: kubelet's `""`, and `berth`.
pub const DEFAULT_NAMES: [&str; 2] = ["", "berth"];

impl Handlers {
    /// The handlers `by_name`.
    pub fn new(by_name: BTreeMap<String, Handler>) -> Self {
        Self(std::sync::Arc::new(by_name))
    }

    /// The policy of handler `name`: the default one's (nothing) for `""`
    /// and `berth`, a configured one's, else InvalidArgument listing the
    /// known handlers.
    pub fn policy(&self, name: &str) -> Result<EmbeddedPolicy, RuntimeError> {
        if DEFAULT_NAMES.contains(&name) {
            return Ok(EmbeddedPolicy::default());
        }
        match self.0.get(name) {
            Some(Handler::Embedded(p) | Handler::Oci(_, p) | Handler::Shim(_, p)) => Ok(p.clone()),
            None => {
                let mut known: Vec<&str> = vec!["berth (the default)"];
                known.extend(self.0.keys().map(String::as_str));
                Err(RuntimeError::invalid(
                    "runtime_handler",
                    format!(
                        "unknown handler {name:?}; this node has: {}",
                        known.join(", ")
                    ),
                ))
            }
        }
    }

    /// The external runtime of handler `name`; `None` for the default
    /// handler, an embedded one and an unknown one.
    pub fn oci_runtime(&self, name: &str) -> Option<&OciRuntime> {
        match self.0.get(name) {
            Some(Handler::Oci(rt, _)) => Some(rt),
            _ => None,
        }
    }

    /// The shim of handler `name`; `None` for any other handler.
    pub fn shim_runtime(&self, name: &str) -> Option<&ShimRuntime> {
        match self.0.get(name) {
            Some(Handler::Shim(rt, _)) => Some(rt),
            _ => None,
        }
    }

    /// Whether handler `name` runs containers outside berth's core (kind
    /// `oci` or `shim-v2`).
    pub fn external(&self, name: &str) -> bool {
        matches!(self.0.get(name), Some(Handler::Oci(..) | Handler::Shim(..)))
    }

    /// The configured handlers' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// Whether `name` can name a handler (a RuntimeClass `handler` is a DNS
/// label) and is not the default one's.
pub fn valid_name(name: &str) -> bool {
    !DEFAULT_NAMES.contains(&name)
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A pod against its handler's policy: which namespaces it may use.
/// `external`: the handler is an external OCI runtime or shim, which berth
/// does not ask for user namespaces (its rootfs would need idmapped mounts).
pub(super) fn check_pod(
    name: &str,
    p: &EmbeddedPolicy,
    external: bool,
    host_namespaces: &[(&str, bool)],
    own_user_namespace: bool,
) -> Result<(), RuntimeError> {
    const NS: &str = "config.linux.security_context.namespace_options";
    if external && own_user_namespace {
        return Err(RuntimeError::invalid(
            format!("{NS}.userns_options"),
            format!("runtime handler {name:?} (an external runtime) runs no pods in their own user namespace"),
        ));
    }
    if p.require_user_namespace && !own_user_namespace {
        return Err(RuntimeError::invalid(
            format!("{NS}.userns_options"),
            format!("runtime handler {name:?} runs pods in their own user namespace only (hostUsers: false)"),
        ));
    }
    if p.deny_host_namespaces {
        if let Some((ns, _)) = host_namespaces.iter().find(|(_, host)| *host) {
            return Err(RuntimeError::invalid(
                format!("{NS}.{ns}"),
                format!("runtime handler {name:?} does not run pods in the node's {ns} namespace"),
            ));
        }
    }
    Ok(())
}

/// A container against its pod's handler's policy: refuses what it
/// forbids, sets what it sets.
pub(super) fn apply_to_container(
    name: &str,
    p: &EmbeddedPolicy,
    config: &mut proto::ContainerConfig,
) -> Result<(), RuntimeError> {
    if *p == EmbeddedPolicy::default() {
        return Ok(());
    }
    let linux = config.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    if p.deny_privileged && sc.privileged {
        return Err(RuntimeError::invalid(
            "config.linux.security_context.privileged",
            format!("runtime handler {name:?} runs no privileged containers"),
        ));
    }
    if p.readonly_rootfs {
        sc.readonly_rootfs = true;
    }
    if p.default_seccomp {
        #[allow(deprecated)] // seccomp_profile_path: still sent by older kubelets
        let unconfined = match &sc.seccomp {
            Some(s) => s.profile_type == ProfileType::Unconfined as i32,
            None => matches!(sc.seccomp_profile_path.as_str(), "" | "unconfined"),
        };
        if unconfined {
            sc.seccomp = Some(proto::SecurityProfile {
                profile_type: ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hardened() -> Handlers {
        Handlers::new(BTreeMap::from([(
            "hardened".to_string(),
            Handler::Embedded(EmbeddedPolicy {
                require_user_namespace: true,
                deny_host_namespaces: true,
                deny_privileged: true,
                readonly_rootfs: true,
                default_seccomp: true,
            }),
        )]))
    }

    #[test]
    fn unknown_handlers_are_refused_with_the_known_ones() {
        let h = hardened();
        assert_eq!(h.policy("").unwrap(), EmbeddedPolicy::default());
        assert_eq!(h.policy("berth").unwrap(), EmbeddedPolicy::default());
        assert!(h.policy("hardened").unwrap().deny_privileged);
        match h.policy("kata") {
            Err(RuntimeError::InvalidArgument { field, reason }) => {
                assert_eq!(field, "runtime_handler");
                assert!(
                    reason.contains("\"kata\"") && reason.contains("hardened"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(valid_name("hardened") && valid_name("gvisor-2"));
        assert!(
            !valid_name("") && !valid_name("berth") && !valid_name("Hard") && !valid_name("-x")
        );
    }

    #[test]
    fn pods_of_a_hardened_handler_need_their_own_user_namespace_and_no_host_ones() {
        let p = hardened().policy("hardened").unwrap();
        let err = check_pod("hardened", &p, false, &[("network", false)], false).unwrap_err();
        assert!(
            matches!(err, RuntimeError::InvalidArgument { ref field, .. } if field.ends_with("userns_options"))
        );
        let err = check_pod(
            "hardened",
            &p,
            false,
            &[("network", false), ("pid", true)],
            true,
        )
        .unwrap_err();
        assert!(
            matches!(err, RuntimeError::InvalidArgument { ref field, .. } if field.ends_with(".pid"))
        );
        check_pod(
            "hardened",
            &p,
            false,
            &[("network", false), ("pid", false)],
            true,
        )
        .unwrap();
        check_pod(
            "",
            &EmbeddedPolicy::default(),
            false,
            &[("network", true)],
            false,
        )
        .unwrap();
        let err = check_pod("runc", &EmbeddedPolicy::default(), true, &[], true).unwrap_err();
        assert!(err.to_string().contains("external runtime"), "{err}");
    }

    #[test]
    fn containers_get_readonly_roots_and_runtime_default_and_no_privilege() {
        let p = hardened().policy("hardened").unwrap();
        let mut c = proto::ContainerConfig::default();
        apply_to_container("hardened", &p, &mut c).unwrap();
        let sc = c.linux.as_ref().unwrap().security_context.as_ref().unwrap();
        assert!(sc.readonly_rootfs);
        assert_eq!(
            sc.seccomp.as_ref().map(|s| s.profile_type),
            Some(ProfileType::RuntimeDefault as i32)
        );
        // A Localhost profile is kept.
        let mut c = proto::ContainerConfig::default();
        let sc = c
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default);
        sc.seccomp = Some(proto::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: "/p.json".into(),
        });
        apply_to_container("hardened", &p, &mut c).unwrap();
        let sc = c.linux.as_ref().unwrap().security_context.as_ref().unwrap();
        assert_eq!(sc.seccomp.as_ref().unwrap().localhost_ref, "/p.json");
        // Privileged is refused.
        let mut c = proto::ContainerConfig::default();
        c.linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
        let err = apply_to_container("hardened", &p, &mut c).unwrap_err();
        assert!(err.to_string().contains("privileged"), "{err}");
        // The default handler changes nothing.
        let mut c = proto::ContainerConfig::default();
        apply_to_container("", &EmbeddedPolicy::default(), &mut c).unwrap();
        assert_eq!(c, proto::ContainerConfig::default());
    }
}
