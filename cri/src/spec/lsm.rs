//! AppArmor and SELinux: what a container asks for, checked against what
//! this node can do. A request for confinement berth cannot give is
//! refused with the field named — a container that asked to be confined
//! never runs unconfined without a word.
//!
//! AppArmor, as containerd's CRI plugin does it: on a node with AppArmor,
//! `RuntimeDefault` (and no request at all, for an unprivileged container)
//! is berth's default profile (`berth-default`, containerd's rules; loaded
//! by the caller when missing), `Localhost` a profile the node has loaded
//! (checked by the caller), `Unconfined` none; a privileged container gets
//! no default profile. On a node without AppArmor, only Unconfined (or
//! nothing) can be honoured: anything else is refused, as containerd
//! refuses it ("apparmor is not supported"). SELinux labels: `selinux.rs`.

use super::SpecError;
use crate::proto;
use crate::proto::security_profile::ProfileType;

const SC: &str = "config.linux.security_context";

/// The Linux security modules enabled on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostLsm {
    /// AppArmor is enabled and usable
    /// ([`berth_core::security::apparmor::enabled`]).
    pub apparmor: bool,
    /// SELinux is enabled (selinuxfs mounted at `/sys/fs/selinux`).
    pub selinux: bool,
}

impl HostLsm {
    /// What this node has (looked at once: modules are chosen at boot).
    pub fn node() -> HostLsm {
        static NODE: std::sync::OnceLock<HostLsm> = std::sync::OnceLock::new();
        *NODE.get_or_init(HostLsm::detect)
    }

    /// What this node has, looked at now.
    pub fn detect() -> HostLsm {
        let apparmor = berth_core::security::apparmor::enabled();
        let selinux = berth_core::security::selinux::enabled();
        HostLsm { apparmor, selinux }
    }
}

/// What the container asks of AppArmor: the `apparmor` message, else the
/// deprecated `apparmor_profile` string (`runtime/default`,
/// `localhost/<name>`, `unconfined`), with the field that asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    /// Nothing.
    Nothing,
    /// Unconfined.
    Unconfined,
    /// RuntimeDefault.
    Default(String),
    /// A profile loaded on the node, by name.
    Localhost(String, String),
}

#[allow(deprecated)] // apparmor_profile: still sent by older kubelets
fn apparmor_asked(sc: &proto::LinuxContainerSecurityContext) -> Result<Asked, SpecError> {
    Ok(match &sc.apparmor {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Unconfined) => Asked::Unconfined,
            Ok(ProfileType::Localhost) => Asked::Localhost(
                format!("{SC}.apparmor.localhost_ref"),
                p.localhost_ref.clone(),
            ),
            Ok(ProfileType::RuntimeDefault) => Asked::Default(format!("{SC}.apparmor")),
            Err(_) => {
                return Err(super::invalid(
                    format!("{SC}.apparmor.profile_type"),
                    format!("{} is not a profile type", p.profile_type),
                ))
            }
        },
        None => {
            let field = format!("{SC}.apparmor_profile");
            match sc.apparmor_profile.as_str() {
                "" => Asked::Nothing,
                "unconfined" => Asked::Unconfined,
                "runtime/default" => Asked::Default(field),
                other => match other.strip_prefix("localhost/") {
                    Some(name) => Asked::Localhost(field, name.to_string()),
                    None => {
                        return Err(super::invalid(
                            field,
                            format!(
                                "{other:?}: expected runtime/default, localhost/<profile> or \
                                 unconfined"
                            ),
                        ))
                    }
                },
            }
        }
    })
}

/// The AppArmor profile a container runs under on `host` (see the module
/// comment), with the field that asked for it; `None`: unconfined.
pub fn apparmor(
    sc: &proto::LinuxContainerSecurityContext,
    host: HostLsm,
) -> Result<Option<(String, String)>, SpecError> {
    let asked = apparmor_asked(sc)?;
    let unsupported = |field: &str, profile: &str| SpecError::Unsupported {
        field: field.to_string(),
        reason: format!(
            "AppArmor profile {profile:?}: AppArmor is not enabled on this node (only \
             Unconfined can be honoured; containerd refuses it too)"
        ),
    };
    Ok(match asked {
        Asked::Unconfined => None,
        // containerd gives a privileged container no default profile.
        Asked::Nothing | Asked::Default(_) if sc.privileged => None,
        Asked::Nothing if !host.apparmor => None,
        Asked::Default(field) if !host.apparmor => {
            return Err(unsupported(&field, "runtime/default"))
        }
        Asked::Nothing => Some((
            format!("{SC}.apparmor"),
            berth_core::security::apparmor::DEFAULT_PROFILE.to_string(),
        )),
        Asked::Default(field) => Some((
            field,
            berth_core::security::apparmor::DEFAULT_PROFILE.to_string(),
        )),
        Asked::Localhost(field, name) => {
            if !host.apparmor {
                return Err(unsupported(&field, &format!("localhost/{name}")));
            }
            if !berth_core::security::apparmor::valid_name(&name) {
                return Err(super::invalid(
                    field,
                    format!("{name:?} is not an AppArmor profile name"),
                ));
            }
            Some((field, name))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(t: ProfileType, r: &str) -> Option<proto::SecurityProfile> {
        Some(proto::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        })
    }

    const NONE: HostLsm = HostLsm {
        apparmor: false,
        selinux: false,
    };
    const BOTH: HostLsm = HostLsm {
        apparmor: true,
        selinux: true,
    };

    fn profile_of(sc: &proto::LinuxContainerSecurityContext, host: HostLsm) -> Option<String> {
        apparmor(sc, host).unwrap().map(|(_, p)| p)
    }

    #[test]
    #[allow(deprecated)]
    fn without_apparmor_only_unconfined_is_honoured_and_the_rest_refused() {
        let mut sc = proto::LinuxContainerSecurityContext::default();
        assert_eq!(profile_of(&sc, NONE), None, "nothing asked");
        sc.apparmor = profile(ProfileType::Unconfined, "");
        assert_eq!(profile_of(&sc, NONE), None);
        for (p, field) in [
            (
                profile(ProfileType::RuntimeDefault, ""),
                "config.linux.security_context.apparmor",
            ),
            (
                profile(ProfileType::Localhost, "k8s-deny-write"),
                "config.linux.security_context.apparmor.localhost_ref",
            ),
        ] {
            sc.apparmor = p;
            match apparmor(&sc, NONE) {
                Err(SpecError::Unsupported { field: f, reason }) => {
                    assert_eq!(f, field);
                    assert!(reason.contains("AppArmor is not enabled"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        sc.apparmor = None;
        sc.apparmor_profile = "localhost/x".into();
        assert!(
            matches!(apparmor(&sc, NONE), Err(SpecError::Unsupported { field, .. })
                if field.ends_with("apparmor_profile"))
        );
        sc.apparmor_profile = "unconfined".into();
        assert_eq!(profile_of(&sc, NONE), None);
        // A privileged container gets no default profile (containerd).
        sc.apparmor_profile.clear();
        sc.privileged = true;
        sc.apparmor = profile(ProfileType::RuntimeDefault, "");
        assert_eq!(profile_of(&sc, NONE), None);
    }

    #[test]
    #[allow(deprecated)]
    fn with_apparmor_default_localhost_and_unconfined_are_applied_as_containerd_does() {
        let default = Some(berth_core::security::apparmor::DEFAULT_PROFILE.to_string());
        let mut sc = proto::LinuxContainerSecurityContext::default();
        assert_eq!(profile_of(&sc, BOTH), default, "nothing asked: the default");
        sc.apparmor = profile(ProfileType::RuntimeDefault, "");
        assert_eq!(profile_of(&sc, BOTH), default);
        sc.apparmor = profile(ProfileType::Localhost, "k8s-deny-write");
        assert_eq!(
            apparmor(&sc, BOTH).unwrap(),
            Some((
                "config.linux.security_context.apparmor.localhost_ref".to_string(),
                "k8s-deny-write".to_string()
            ))
        );
        sc.apparmor = profile(ProfileType::Localhost, "");
        assert!(matches!(
            apparmor(&sc, BOTH),
            Err(SpecError::InvalidArgument { .. })
        ));
        sc.apparmor = profile(ProfileType::Unconfined, "");
        assert_eq!(profile_of(&sc, BOTH), None);
        sc.apparmor = None;
        sc.apparmor_profile = "runtime/default".into();
        assert_eq!(profile_of(&sc, BOTH), default);
        sc.apparmor_profile = "localhost/p1".into();
        assert_eq!(profile_of(&sc, BOTH), Some("p1".into()));
        sc.apparmor_profile = "docker-default".into();
        assert!(
            matches!(apparmor(&sc, BOTH), Err(SpecError::InvalidArgument { field, .. })
            if field.ends_with("apparmor_profile"))
        );
        sc.apparmor_profile.clear();
        sc.apparmor = Some(proto::SecurityProfile {
            profile_type: 17,
            localhost_ref: String::new(),
        });
        assert!(
            apparmor(&sc, BOTH).is_err(),
            "an unknown type is not guessed"
        );
        // Privileged: no default, but a named profile is applied.
        sc.privileged = true;
        sc.apparmor = None;
        assert_eq!(profile_of(&sc, BOTH), None);
        sc.apparmor = profile(ProfileType::RuntimeDefault, "");
        assert_eq!(profile_of(&sc, BOTH), None);
        sc.apparmor = profile(ProfileType::Localhost, "p");
        assert_eq!(profile_of(&sc, BOTH), Some("p".into()));
    }
}
