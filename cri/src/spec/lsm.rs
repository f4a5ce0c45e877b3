//! AppArmor and SELinux: what a container asks for, checked against what
//! this node can do. berth applies neither yet, so a request for
//! confinement it cannot give is refused with the field named — a container
//! that asked to be confined never runs unconfined without a word. Where
//! the node lacks the module, containerd's behaviour: an AppArmor profile
//! other than Unconfined is refused ("apparmor is not supported"); SELinux
//! options are ignored (there is nothing to label with).

use std::path::Path;

use super::SpecError;
use crate::proto;
use crate::proto::security_profile::ProfileType;

const SC: &str = "config.linux.security_context";

/// The Linux security modules enabled on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostLsm {
    /// AppArmor is enabled (`/sys/module/apparmor/parameters/enabled`).
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
        let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim() == "Y");
        let selinux = Path::new("/sys/fs/selinux/enforce").exists();
        HostLsm { apparmor, selinux }
    }
}

/// The AppArmor profile asked for, with the field that asked: the
/// `apparmor` message, else the deprecated `apparmor_profile` string
/// (`runtime/default`, `localhost/<name>`, `unconfined`). `None`: nothing,
/// or Unconfined.
#[allow(deprecated)] // apparmor_profile: still sent by older kubelets
fn apparmor_asked(sc: &proto::LinuxContainerSecurityContext) -> Option<(String, String)> {
    match &sc.apparmor {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Unconfined) => None,
            Ok(ProfileType::Localhost) => Some((
                format!("{SC}.apparmor.localhost_ref"),
                format!("localhost/{}", p.localhost_ref),
            )),
            // RuntimeDefault, and a type this build does not know.
            _ => Some((format!("{SC}.apparmor"), "runtime/default".into())),
        },
        None => match sc.apparmor_profile.as_str() {
            "" | "unconfined" => None,
            other => Some((format!("{SC}.apparmor_profile"), other.to_string())),
        },
    }
}

/// Refuses what the container asks of AppArmor or SELinux that berth
/// cannot give on `host`.
pub(super) fn check(
    sc: &proto::LinuxContainerSecurityContext,
    host: HostLsm,
) -> Result<(), SpecError> {
    if let Some((field, profile)) = apparmor_asked(sc) {
        // containerd gives a privileged container no default profile.
        let privileged_default = sc.privileged && profile == "runtime/default";
        if !privileged_default {
            let reason = match host.apparmor {
                false => format!(
                    "AppArmor profile {profile:?}: AppArmor is not enabled on this node \
                     (only Unconfined can be honoured; containerd refuses it too)"
                ),
                true => format!(
                    "AppArmor profile {profile:?}: berth does not apply AppArmor profiles yet \
                     (only Unconfined can be honoured)"
                ),
            };
            return Err(SpecError::Unsupported { field, reason });
        }
    }
    let selinux = sc.selinux_options.as_ref().filter(|o| {
        [&o.user, &o.role, &o.r#type, &o.level]
            .iter()
            .any(|s| !s.is_empty())
    });
    if selinux.is_some() && host.selinux {
        return Err(SpecError::Unsupported {
            field: format!("{SC}.selinux_options"),
            reason: "SELinux is enabled on this node and berth does not apply SELinux labels \
                     yet"
            .into(),
        });
    }
    Ok(())
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

    #[test]
    #[allow(deprecated)]
    fn apparmor_confinement_is_refused_never_dropped() {
        let mut sc = proto::LinuxContainerSecurityContext::default();
        for host in [NONE, BOTH] {
            assert!(check(&sc, host).is_ok(), "nothing asked");
            sc.apparmor = profile(ProfileType::Unconfined, "");
            assert!(check(&sc, host).is_ok(), "Unconfined is what berth gives");
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
                match check(&sc, host) {
                    Err(SpecError::Unsupported { field: f, reason }) => {
                        assert_eq!(f, field);
                        assert!(reason.contains("AppArmor"), "{reason}");
                    }
                    other => panic!("{other:?}"),
                }
            }
            sc.apparmor = None;
            sc.apparmor_profile = "localhost/x".into();
            assert!(
                matches!(check(&sc, host), Err(SpecError::Unsupported { field, .. })
                    if field.ends_with("apparmor_profile"))
            );
            sc.apparmor_profile = "unconfined".into();
            assert!(check(&sc, host).is_ok());
            sc.apparmor_profile.clear();
        }
        // A privileged container gets no default profile (containerd).
        sc.privileged = true;
        sc.apparmor = profile(ProfileType::RuntimeDefault, "");
        assert!(check(&sc, BOTH).is_ok());
        sc.apparmor = profile(ProfileType::Localhost, "p");
        assert!(check(&sc, BOTH).is_err());
    }

    #[test]
    fn selinux_options_are_refused_where_selinux_is_on() {
        let mut sc = proto::LinuxContainerSecurityContext {
            selinux_options: Some(proto::SeLinuxOption {
                level: "s0:c1,c2".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check(&sc, NONE).is_ok(), "ignored without SELinux");
        assert!(matches!(
            check(&sc, BOTH),
            Err(SpecError::Unsupported { field, .. }) if field.ends_with("selinux_options")
        ));
        sc.selinux_options = Some(proto::SeLinuxOption::default());
        assert!(check(&sc, BOTH).is_ok(), "empty options ask for nothing");
    }
}
