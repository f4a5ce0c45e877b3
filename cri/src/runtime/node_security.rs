//! What CreateContainer needs from the node beyond the pure translation
//! (`crate::spec`): the CDI devices resolved against the node's CDI specs,
//! the AppArmor profile the container will switch to, loaded, and the
//! SELinux relabel of the volumes that ask for one; and RunPodSandbox's
//! SELinux level, unique among the node's pods.

use super::error::RuntimeError;
use crate::proto;
use crate::spec;

/// Applies the CDI devices `config` asks for, from the node's specs as
/// they are now; when that gives the container hooks, the request's
/// annotations go to them with its state (otherwise nothing reads them).
pub(super) fn cdi_devices(
    cs: &mut spec::ContainerSpec,
    config: &proto::ContainerConfig,
    cdi: &crate::cdi::Cdi,
) -> Result<(), RuntimeError> {
    let names = spec::cdi::requested(config)?;
    spec::cdi::apply(cs, &cdi.resolve(&names)?)?;
    if !cs.config.hooks.is_empty() {
        cs.config.annotations = config.annotations.clone().into_iter().collect();
    }
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

/// A new pod's SELinux level: the one it names, else a pair of
/// categories from its new id's random bytes that no other pod here
/// has (containerd reserves levels the same way). Pods busy in another
/// call are not looked at.
pub(super) fn pod_selinux_level(
    sandboxes: &super::sandbox::Sandboxes,
    options: Option<&proto::SeLinuxOption>,
    id: &crate::store::ObjectId,
) -> Result<String, RuntimeError> {
    let taken: std::collections::HashSet<String> = sandboxes
        .registry
        .all()
        .iter()
        .filter_map(|e| e.try_lock().ok().map(|r| r.selinux_level.clone()))
        .collect();
    let hex = id.as_str();
    let num = |at: usize| u16::from_str_radix(&hex[at..at + 4], 16).unwrap_or(0);
    let mut level = String::new();
    for at in (0..hex.len().saturating_sub(7)).step_by(8) {
        level = crate::spec::selinux::pod_level(options, [num(at), num(at + 4)])?;
        if !taken.contains(&level) {
            break;
        }
    }
    Ok(level)
}

/// Paths never relabeled (go-selinux's list, which containerd and CRI-O
/// use): the system's own directories.
const NO_RELABEL: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/etc/passwd",
    "/etc/pki",
    "/etc/shadow",
    "/home",
    "/lib",
    "/lib64",
    "/media",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/var/lib",
    "/var/log",
];

/// Relabels the host path of every mount with `selinux_relabel` to the
/// container's mount label (what `:Z` does for Docker), when the container
/// has one (SELinux enabled, not privileged). A system directory is
/// refused, naming the mount.
pub(super) fn relabel_volumes(
    config: &proto::ContainerConfig,
    mount_label: Option<&str>,
) -> Result<(), RuntimeError> {
    let Some(label) = mount_label else {
        return Ok(());
    };
    for (i, m) in config.mounts.iter().enumerate() {
        if !m.selinux_relabel {
            continue;
        }
        let field = format!("config.mounts[{i}].host_path");
        let path = spec::clean_absolute(&field, &m.host_path)?;
        if NO_RELABEL.iter().any(|p| std::path::Path::new(p) == path) {
            return Err(RuntimeError::invalid(
                field,
                format!("SELinux relabeling of {} is not allowed", path.display()),
            ));
        }
        relabel(&path, label).map_err(|e| RuntimeError::io(&path, e))?;
    }
    Ok(())
}

/// Sets `security.selinux` to `label` on `path` and everything below it,
/// never following a symlink (the link itself is labeled).
fn relabel(path: &std::path::Path, label: &str) -> std::io::Result<()> {
    let set = |p: &std::path::Path| {
        rustix::fs::lsetxattr(
            p,
            "security.selinux",
            label.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(std::io::Error::from)
    };
    set(path)?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                relabel(&entry.path(), label)?;
            } else {
                set(&entry.path())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label_of(p: &std::path::Path) -> String {
        let mut buf = [0u8; 256];
        match rustix::fs::lgetxattr(p, "security.selinux", &mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => String::new(),
        }
    }

    #[test]
    fn volumes_asking_for_it_are_relabeled_without_following_links_and_system_dirs_refused() {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: relabel: security.* xattrs need root");
            return;
        }
        // tmpfs keeps security.* xattrs (as plain ones where SELinux is off).
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(vol.join("sub")).unwrap();
        std::fs::write(vol.join("sub/f"), "x").unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "o").unwrap();
        std::os::unix::fs::symlink(&outside, vol.join("link")).unwrap();
        let mut c = proto::ContainerConfig::default();
        c.mounts.push(proto::Mount {
            host_path: vol.display().to_string(),
            selinux_relabel: true,
            ..Default::default()
        });
        let label = "system_u:object_r:container_file_t:s0:c1,c2";
        relabel_volumes(&c, None).unwrap();
        assert_eq!(label_of(&vol), "", "no mount label: nothing to do");
        if let Err(e) = relabel_volumes(&c, Some(label)) {
            println!("skipped: relabel: this filesystem keeps no security.selinux here: {e}");
            return;
        }
        for p in [vol.clone(), vol.join("sub"), vol.join("sub/f")] {
            assert_eq!(
                label_of(&p).trim_end_matches('\0'),
                label,
                "{}",
                p.display()
            );
        }
        assert_ne!(
            label_of(&outside).trim_end_matches('\0'),
            label,
            "the link was not followed"
        );
        c.mounts[0].host_path = "/etc/".into();
        let err = relabel_volumes(&c, Some(label)).unwrap_err();
        assert!(err.to_string().contains("not allowed"), "{err}");
    }
}
