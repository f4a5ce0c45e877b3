//! What CreateContainer needs from the node beyond the pure translation
//! (`crate::spec`): the CDI devices resolved against the node's CDI specs,
//! and the AppArmor profile the container will switch to, loaded.

use super::error::RuntimeError;
use crate::proto;
use crate::spec;

/// Applies the CDI devices `config` asks for, from the node's specs as
/// they are now; the request's annotations go to the container's hooks
/// with its state.
pub(super) fn cdi_devices(
    cs: &mut spec::ContainerSpec,
    config: &proto::ContainerConfig,
    cdi: &crate::cdi::Cdi,
) -> Result<(), RuntimeError> {
    let names = spec::cdi::requested(config)?;
    spec::cdi::apply(cs, &cdi.resolve(&names)?)?;
    cs.config.annotations = config.annotations.clone().into_iter().collect();
    Ok(())
}

/// The container's AppArmor profile is there to switch to: berth's default
/// loaded when missing (containerd loads its own the same way), a
/// `Localhost` one loaded by the node's administrator, else the request is
/// refused naming the field (the CRI: "the profile must be loaded").
pub(super) fn apparmor_ready(
    config: &proto::ContainerConfig,
    host: spec::lsm::HostLsm,
) -> Result<(), RuntimeError> {
    use berth_core::security::apparmor;
    let no_sc = proto::LinuxContainerSecurityContext::default();
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&no_sc);
    match spec::lsm::apparmor(sc, host)? {
        Some((_, p)) if p == apparmor::DEFAULT_PROFILE => Ok(apparmor::ensure_default_loaded()?),
        Some((field, p)) if !apparmor::is_loaded(&p)? => Err(RuntimeError::invalid(
            field,
            format!("AppArmor profile {p:?} is not loaded on this node"),
        )),
        _ => Ok(()),
    }
}
