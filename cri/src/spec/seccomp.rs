//! The seccomp profile, as containerd's `GenerateSeccompSecurityProfile` and
//! `GenerateSeccompSpecOpts` choose it.

use berth_core::config::{Capability, SeccompProfile};

use super::{clean_absolute, invalid, SeccompLoader, SpecError};
use crate::proto;

const SC: &str = "config.linux.security_context";

/// The deprecated `seccomp_profile_path`'s prefix of a node-local profile.
const LOCALHOST_PREFIX: &str = "localhost/";

#[derive(Debug, PartialEq, Eq)]
enum Choice {
    RuntimeDefault,
    Unconfined,
    /// An absolute path on the node.
    Localhost(String),
}

/// A `localhost_ref`: an absolute path on the node (CRI), with the
/// `localhost/` prefix tolerated as containerd does.
fn localhost(field: &str, reference: &str) -> Result<Choice, SpecError> {
    let path = reference
        .strip_prefix(LOCALHOST_PREFIX)
        .unwrap_or(reference);
    if path.is_empty() {
        return Err(invalid(
            field,
            "a Localhost profile needs the profile's path",
        ));
    }
    let clean = clean_absolute(field, path)?;
    Ok(Choice::Localhost(clean.to_string_lossy().into_owned()))
}

fn from_security_profile(sp: &proto::SecurityProfile) -> Result<Choice, SpecError> {
    use proto::security_profile::ProfileType;
    let ty = ProfileType::try_from(sp.profile_type).map_err(|_| {
        invalid(
            format!("{SC}.seccomp.profile_type"),
            format!("unknown profile type {}", sp.profile_type),
        )
    })?;
    let ref_field = format!("{SC}.seccomp.localhost_ref");
    match ty {
        ProfileType::Localhost => localhost(&ref_field, &sp.localhost_ref),
        _ if !sp.localhost_ref.is_empty() => Err(invalid(
            ref_field,
            "must only be set for a Localhost profile",
        )),
        ProfileType::RuntimeDefault => Ok(Choice::RuntimeDefault),
        ProfileType::Unconfined => Ok(Choice::Unconfined),
    }
}

/// The deprecated string form: `""` (unconfined, CRI's default),
/// `runtime/default` (or Docker's `docker/default`), `unconfined`,
/// `localhost/<absolute path>`.
fn from_profile_path(path: &str) -> Result<Choice, SpecError> {
    let field = format!("{SC}.seccomp_profile_path");
    match path {
        "" | "unconfined" => Ok(Choice::Unconfined),
        "runtime/default" | "docker/default" => Ok(Choice::RuntimeDefault),
        p if p.starts_with(LOCALHOST_PREFIX) => localhost(&field, p),
        p => Err(invalid(field, format!("unknown seccomp profile {p:?}"))),
    }
}

/// The container's seccomp filter: none for a privileged container (CRI:
/// "Seccomp restrictions are not applied"); else the `seccomp` profile, or
/// when that is absent the deprecated `seccomp_profile_path`:
/// `RuntimeDefault` is berth-core's built-in profile for the container's
/// bounding set `caps`, `Unconfined` none, `Localhost` what `load` returns
/// for the path. (`runtime_default` asks the kernel's version with
/// `uname(2)` to decide on the ptrace rule; it reads no file.)
#[allow(deprecated)] // seccomp_profile_path: still sent by older kubelets
pub(super) fn profile(
    sc: &proto::LinuxContainerSecurityContext,
    caps: &[Capability],
    load: SeccompLoader<'_>,
) -> Result<Option<SeccompProfile>, SpecError> {
    if sc.privileged {
        return Ok(None);
    }
    let (field, choice) = match &sc.seccomp {
        Some(sp) => (
            format!("{SC}.seccomp.localhost_ref"),
            from_security_profile(sp)?,
        ),
        None => (
            format!("{SC}.seccomp_profile_path"),
            from_profile_path(&sc.seccomp_profile_path)?,
        ),
    };
    match choice {
        Choice::Unconfined => Ok(None),
        Choice::RuntimeDefault => Ok(Some(SeccompProfile::runtime_default(caps))),
        Choice::Localhost(reference) => match load(&reference) {
            Ok(p) => Ok(Some(p)),
            Err(reason) => Err(SpecError::SeccompProfile {
                field,
                reference,
                reason,
            }),
        },
    }
}

#[cfg(test)]
#[allow(deprecated)] // seccomp_profile_path
mod tests {
    use berth_core::security::seccomp::Action;

    use super::super::fixture::Fixture;
    use super::*;

    fn profile_of(
        ty: proto::security_profile::ProfileType,
        reference: &str,
    ) -> Option<proto::SecurityProfile> {
        Some(proto::SecurityProfile {
            profile_type: ty as i32,
            localhost_ref: reference.into(),
        })
    }

    fn local_profile() -> SeccompProfile {
        SeccompProfile {
            default_action: Action::Log,
            default_errno_ret: None,
            architectures: Vec::new(),
            flags: Vec::new(),
            syscalls: Vec::new(),
        }
    }

    fn seccomp_of(f: &Fixture) -> Option<SeccompProfile> {
        f.spec().config.seccomp
    }

    fn runtime_default_for(f: &Fixture) -> SeccompProfile {
        SeccompProfile::runtime_default(&f.spec().config.capabilities.bounding)
    }

    #[test]
    fn nothing_set_is_unconfined() {
        let f = Fixture::new();
        assert_eq!(seccomp_of(&f), None);
    }

    #[test]
    fn runtime_default() {
        let mut f = Fixture::new();
        f.sc().seccomp = profile_of(proto::security_profile::ProfileType::RuntimeDefault, "");
        assert_eq!(seccomp_of(&f), Some(runtime_default_for(&f)));
    }

    #[test]
    fn unconfined() {
        let mut f = Fixture::new();
        f.sc().seccomp = profile_of(proto::security_profile::ProfileType::Unconfined, "");
        assert_eq!(seccomp_of(&f), None);
    }

    #[test]
    fn localhost_is_loaded_through_the_loader() {
        let mut f = Fixture::new();
        f.seccomp_files.insert(
            "/var/lib/kubelet/seccomp/audit.json".into(),
            local_profile(),
        );
        f.sc().seccomp = profile_of(
            proto::security_profile::ProfileType::Localhost,
            "/var/lib/kubelet/seccomp/audit.json",
        );
        assert_eq!(seccomp_of(&f), Some(local_profile()));
    }

    #[test]
    fn localhost_that_cannot_be_loaded() {
        let mut f = Fixture::new();
        f.sc().seccomp = profile_of(
            proto::security_profile::ProfileType::Localhost,
            "/nope.json",
        );
        assert!(matches!(
            f.run(),
            Err(SpecError::SeccompProfile { reference, .. }) if reference == "/nope.json"
        ));
    }

    #[test]
    fn localhost_relative_path_is_invalid() {
        let mut f = Fixture::new();
        f.sc().seccomp = profile_of(
            proto::security_profile::ProfileType::Localhost,
            "audit.json",
        );
        assert_eq!(
            f.err_field(),
            "config.linux.security_context.seccomp.localhost_ref"
        );
    }

    #[test]
    fn localhost_ref_with_another_type_is_invalid() {
        let mut f = Fixture::new();
        f.sc().seccomp = profile_of(
            proto::security_profile::ProfileType::RuntimeDefault,
            "/a.json",
        );
        assert_eq!(
            f.err_field(),
            "config.linux.security_context.seccomp.localhost_ref"
        );
    }

    #[test]
    fn privileged_has_no_seccomp() {
        let mut f = Fixture::new();
        f.sc().seccomp = profile_of(proto::security_profile::ProfileType::RuntimeDefault, "");
        f.sc().privileged = true;
        assert_eq!(seccomp_of(&f), None);
    }

    #[test]
    fn deprecated_runtime_default() {
        let mut f = Fixture::new();
        f.sc().seccomp_profile_path = "runtime/default".into();
        assert_eq!(seccomp_of(&f), Some(runtime_default_for(&f)));
    }

    #[test]
    fn deprecated_docker_default() {
        let mut f = Fixture::new();
        f.sc().seccomp_profile_path = "docker/default".into();
        assert_eq!(seccomp_of(&f), Some(runtime_default_for(&f)));
    }

    #[test]
    fn deprecated_unconfined() {
        let mut f = Fixture::new();
        f.sc().seccomp_profile_path = "unconfined".into();
        assert_eq!(seccomp_of(&f), None);
    }

    #[test]
    fn deprecated_localhost() {
        let mut f = Fixture::new();
        f.seccomp_files
            .insert("/profiles/a.json".into(), local_profile());
        f.sc().seccomp_profile_path = "localhost//profiles/a.json".into();
        assert_eq!(seccomp_of(&f), Some(local_profile()));
    }

    #[test]
    fn deprecated_unknown_is_invalid() {
        let mut f = Fixture::new();
        f.sc().seccomp_profile_path = "strict".into();
        assert_eq!(
            f.err_field(),
            "config.linux.security_context.seccomp_profile_path"
        );
    }

    #[test]
    fn the_profile_field_wins_over_the_deprecated_path() {
        let mut f = Fixture::new();
        f.sc().seccomp_profile_path = "runtime/default".into();
        f.sc().seccomp = profile_of(proto::security_profile::ProfileType::Unconfined, "");
        assert_eq!(seccomp_of(&f), None);
    }

    #[test]
    fn runtime_default_follows_the_capabilities() {
        let mut f = Fixture::new();
        f.sc().seccomp = profile_of(proto::security_profile::ProfileType::RuntimeDefault, "");
        f.sc().capabilities = Some(proto::Capability {
            add_capabilities: vec!["SYS_ADMIN".into()],
            ..Default::default()
        });
        let s = f.spec();
        assert_eq!(
            s.config.seccomp,
            Some(SeccompProfile::runtime_default(
                &s.config.capabilities.bounding
            ))
        );
    }
}
