//! The security context: capabilities, privileged mode, masked and
//! read-only paths, no_new_privs and a read-only rootfs. Seccomp is in
//! [`super::seccomp`]; AppArmor and SELinux requests are checked in
//! [`super::lsm`].

use std::path::PathBuf;

use berth_core::config::{Capabilities, Capability};
use berth_core::security::capabilities::parse_name;
use berth_core::Config;

use super::{clean_absolute, invalid, SpecError};
use crate::proto;

const SC: &str = "config.linux.security_context";

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

fn parse_list(field: &str, names: &[String]) -> Result<Vec<Capability>, SpecError> {
    names
        .iter()
        .enumerate()
        .filter(|(_, n)| !is_all(n))
        .map(|(i, n)| {
            parse_name(n)
                .map_err(|_| invalid(format!("{field}[{i}]"), format!("unknown capability {n:?}")))
        })
        .collect()
}

/// The capability set of an unprivileged container, in containerd's order
/// (`WithCapabilities`): the default set; all of them if `add` has `ALL`;
/// none if `drop` has `ALL`; then each named addition; then each named drop
/// (so a capability both added and dropped is dropped). Names are taken
/// with or without `CAP_`, in any case; an unknown one is refused.
///
/// The set goes to bounding, effective and permitted; nothing inheritable
/// (CVE-2022-24769) and nothing ambient: containerd clears ambient
/// capabilities (`WithoutAmbientCaps`), so `add_ambient_capabilities` is
/// ignored too (Kubernetes does not send it).
fn capability_set(caps: Option<&proto::Capability>) -> Result<Vec<Capability>, SpecError> {
    let mut set = Capabilities::default_set().bounding;
    if let Some(c) = caps {
        apply_add_drop(&mut set, c)?;
    }
    set.sort_by_key(|cap| cap.index());
    set.dedup();
    Ok(set)
}

fn apply_add_drop(set: &mut Vec<Capability>, c: &proto::Capability) -> Result<(), SpecError> {
    let add = parse_list(
        &format!("{SC}.capabilities.add_capabilities"),
        &c.add_capabilities,
    )?;
    let drop = parse_list(
        &format!("{SC}.capabilities.drop_capabilities"),
        &c.drop_capabilities,
    )?;
    if c.add_capabilities.iter().any(|n| is_all(n)) {
        *set = Capabilities::held().bounding;
    }
    if c.drop_capabilities.iter().any(|n| is_all(n)) {
        set.clear();
    }
    set.extend(add);
    set.retain(|cap| !drop.contains(cap));
    Ok(())
}

fn paths(field: &str, list: &[String]) -> Result<Vec<PathBuf>, SpecError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| clean_absolute(&format!("{field}[{i}]"), p))
        .collect()
}

/// Applies the security context to `config` (built by `Config::new`).
///
/// - Privileged (CRI): every capability the runtime holds, no masked or read-only paths (and
///   `/sys` read-write, see `mounts`; no seccomp, see `seccomp`); `add`/`drop`
///   are ignored, as in containerd where `WithPrivileged` comes last.
/// - Otherwise: capabilities per [`capability_set`]; `masked_paths` and
///   `readonly_paths` are kubelet's lists and replace the defaults, also
///   when empty: kubelet sends the defaults itself, and empty lists for
///   `procMount: Unmasked` (containerd does the same, containerd#5029; a
///   client that sends none gets none).
/// - `no_new_privs` and `readonly_rootfs` as requested (runtime-core's
///   default of no_new_privs on is replaced: Kubernetes'
///   `allowPrivilegeEscalation` defaults to true).
pub(super) fn apply(
    config: &mut Config,
    sc: &proto::LinuxContainerSecurityContext,
) -> Result<(), SpecError> {
    config.no_new_privileges = sc.no_new_privs;
    config.readonly_rootfs = sc.readonly_rootfs;
    if sc.privileged {
        config.capabilities = Capabilities::held();
        config.masked_paths.clear();
        config.readonly_paths.clear();
        return Ok(());
    }
    config.capabilities = Capabilities::uniform(capability_set(sc.capabilities.as_ref())?);
    config.masked_paths = paths(&format!("{SC}.masked_paths"), &sc.masked_paths)?;
    config.readonly_paths = paths(&format!("{SC}.readonly_paths"), &sc.readonly_paths)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fixture;
    use super::*;

    fn caps(add: &[&str], drop: &[&str]) -> Option<proto::Capability> {
        Some(proto::Capability {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            add_ambient_capabilities: Vec::new(),
        })
    }

    fn caps_of(f: &Fixture) -> Capabilities {
        f.spec().config.capabilities
    }

    fn sorted(mut v: Vec<Capability>) -> Vec<Capability> {
        v.sort_by_key(|c| c.index());
        v
    }

    #[test]
    fn default_set_without_capabilities_field() {
        let f = Fixture::new();
        assert_eq!(
            caps_of(&f).bounding,
            sorted(Capabilities::default_set().bounding)
        );
    }

    #[test]
    fn add_net_admin() {
        let mut f = Fixture::new();
        f.sc().capabilities = caps(&["NET_ADMIN"], &[]);
        let c = caps_of(&f);
        assert!(c.effective.contains(&Capability::CAP_NET_ADMIN));
        assert!(c.bounding.contains(&Capability::CAP_NET_ADMIN));
        assert!(
            c.permitted.contains(&Capability::CAP_CHOWN),
            "defaults are kept"
        );
        assert!(c.inheritable.is_empty() && c.ambient.is_empty());
    }

    #[test]
    fn drop_all_then_add_one() {
        let mut f = Fixture::new();
        f.sc().capabilities = caps(&["NET_BIND_SERVICE"], &["ALL"]);
        assert_eq!(caps_of(&f).bounding, vec![Capability::CAP_NET_BIND_SERVICE]);
    }

    #[test]
    fn add_all_then_drop_one() {
        let mut f = Fixture::new();
        f.sc().capabilities = caps(&["all"], &["CAP_CHOWN"]);
        let c = caps_of(&f).bounding;
        assert!(c.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!c.contains(&Capability::CAP_CHOWN));
    }

    #[test]
    fn drop_wins_over_add_and_prefix_is_optional() {
        let mut f = Fixture::new();
        f.sc().capabilities = caps(&["CAP_SYS_TIME"], &["sys_time", "KILL"]);
        let c = caps_of(&f).bounding;
        assert!(!c.contains(&Capability::CAP_SYS_TIME));
        assert!(!c.contains(&Capability::CAP_KILL));
    }

    #[test]
    fn unknown_capability_names_the_field() {
        let mut f = Fixture::new();
        f.sc().capabilities = caps(&["NET_ADMIN", "FLY"], &[]);
        assert_eq!(
            f.err_field(),
            "config.linux.security_context.capabilities.add_capabilities[1]"
        );
    }

    #[test]
    fn unknown_dropped_capability_names_the_field() {
        let mut f = Fixture::new();
        f.sc().capabilities = caps(&[], &["NOPE"]);
        assert_eq!(
            f.err_field(),
            "config.linux.security_context.capabilities.drop_capabilities[0]"
        );
    }

    #[test]
    fn ambient_capabilities_are_ignored() {
        let mut f = Fixture::new();
        f.sc().capabilities = Some(proto::Capability {
            add_ambient_capabilities: vec!["NET_ADMIN".into()],
            ..Default::default()
        });
        let c = caps_of(&f);
        assert!(c.ambient.is_empty());
        assert!(!c.bounding.contains(&Capability::CAP_NET_ADMIN));
    }

    #[test]
    fn privileged_gets_everything_and_no_masks() {
        let mut f = Fixture::new();
        f.sc().privileged = true;
        f.sc().capabilities = caps(&[], &["ALL"]);
        f.sc().masked_paths = vec!["/proc/kcore".into()];
        let c = f.spec().config;
        assert_eq!(c.capabilities, Capabilities::held());
        assert!(c.masked_paths.is_empty() && c.readonly_paths.is_empty());
    }

    #[test]
    fn masked_paths_replace_the_defaults() {
        let mut f = Fixture::new();
        f.sc().masked_paths = vec!["/proc/kcore".into(), "/proc/keys".into()];
        assert_eq!(
            f.spec().config.masked_paths,
            vec![PathBuf::from("/proc/kcore"), PathBuf::from("/proc/keys")]
        );
    }

    #[test]
    fn readonly_paths_replace_the_defaults() {
        let mut f = Fixture::new();
        f.sc().readonly_paths = vec!["/proc/sys".into()];
        assert_eq!(
            f.spec().config.readonly_paths,
            vec![PathBuf::from("/proc/sys")]
        );
    }

    #[test]
    fn empty_lists_mean_no_masked_or_readonly_paths() {
        let f = Fixture::new();
        let c = f.spec().config;
        assert!(c.masked_paths.is_empty() && c.readonly_paths.is_empty());
    }

    #[test]
    fn relative_masked_path_names_the_field() {
        let mut f = Fixture::new();
        f.sc().masked_paths = vec!["/proc/kcore".into(), "proc/keys".into()];
        assert_eq!(
            f.err_field(),
            "config.linux.security_context.masked_paths[1]"
        );
    }

    #[test]
    fn no_new_privs_is_off_unless_asked() {
        let f = Fixture::new();
        assert!(!f.spec().config.no_new_privileges);
    }

    #[test]
    fn no_new_privs() {
        let mut f = Fixture::new();
        f.sc().no_new_privs = true;
        assert!(f.spec().config.no_new_privileges);
    }

    #[test]
    fn readonly_rootfs() {
        let mut f = Fixture::new();
        f.sc().readonly_rootfs = true;
        assert!(f.spec().config.readonly_rootfs);
    }
}
