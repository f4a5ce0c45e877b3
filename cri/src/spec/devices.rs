//! CRI devices: host device nodes recreated in the container's `/dev`.

use berth_core::cgroups::{default_device_rules, DeviceRule, DeviceType};
use berth_core::config::{Device, DeviceKind};
use berth_core::Config;

use super::{clean_absolute, invalid, HostDeviceLookup, SpecError};
use crate::proto;

/// runtime-core's default devices, plus each CRI `Device` as a node of the
/// host device's kind, numbers, mode and owner (containerd's
/// `oci.DeviceFromPath`) at `container_path` (which must be under `/dev`,
/// where runtime-core creates nodes), replacing a default of the same path.
///
/// `permissions` (`r`, `w`, `m`) becomes the device's cgroup rule (see
/// [`rules`]).
///
/// A privileged container gets every host device node at its host path
/// (CRI: "All devices from the host's /dev are available"; what runc-based
/// runtimes give it), the host's node replacing a default of the same path.
/// CDI devices are not handled here: the caller resolves them against the
/// node's CDI specs and applies them with [`super::cdi::apply`].
pub(super) fn devices(
    req: &proto::ContainerConfig,
    host: HostDeviceLookup<'_>,
    privileged: bool,
) -> Result<Vec<Device>, SpecError> {
    let mut out = Config::default_devices();
    if privileged {
        for (path, node) in host.all() {
            let dev = device_at(path, node);
            match out.iter_mut().find(|e| e.path == dev.path) {
                Some(existing) => *existing = dev,
                None => out.push(dev),
            }
        }
    }
    for (i, d) in req.devices.iter().enumerate() {
        let field = |name: &str| format!("config.devices[{i}].{name}");
        let path = clean_absolute(&field("container_path"), &d.container_path)?;
        if !path.starts_with("/dev") || path.as_os_str() == "/dev" {
            return Err(invalid(
                field("container_path"),
                format!("{:?} must be below /dev", d.container_path),
            ));
        }
        let host_path = clean_absolute(&field("host_path"), &d.host_path)?;
        if !d.permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(invalid(
                field("permissions"),
                format!("{:?} must be made of r, w and m", d.permissions),
            ));
        }
        let node = host.get(&host_path).ok_or_else(|| {
            invalid(
                field("host_path"),
                format!("{:?} is not a device node on this host", d.host_path),
            )
        })?;
        if !matches!(node.kind, DeviceKind::Char | DeviceKind::Block) {
            return Err(invalid(
                field("host_path"),
                format!("{:?} is not a character or block device", d.host_path),
            ));
        }
        let dev = device_at(path, node);
        match out.iter_mut().find(|e| e.path == dev.path) {
            Some(existing) => *existing = dev,
            None => out.push(dev),
        }
    }
    Ok(out)
}

/// A node like the host's `node` at `path` in the container.
fn device_at(path: std::path::PathBuf, node: super::HostDevice) -> Device {
    Device {
        path,
        kind: node.kind,
        major: node.major,
        minor: node.minor,
        file_mode: node.file_mode,
        uid: node.uid,
        gid: node.gid,
    }
}

/// The container's device cgroup rules: everything for a privileged
/// container (as containerd's `WithDevices` allow-all); otherwise runc's
/// default allow list plus each CRI device with its `permissions`, after
/// denying everything else — so a node made with `mknod` (allowed) cannot
/// be opened unless it is one of these.
pub(super) fn rules(
    req: &proto::ContainerConfig,
    devices: &[Device],
    privileged: bool,
) -> Vec<DeviceRule> {
    if privileged {
        return vec![DeviceRule::allow_all()];
    }
    let mut rules = default_device_rules();
    for d in &req.devices {
        let Some(dev) = devices
            .iter()
            .find(|x| x.path.as_os_str() == d.container_path.trim_end_matches('/'))
        else {
            continue;
        };
        let kind = match dev.kind {
            DeviceKind::Block => DeviceType::Block,
            _ => DeviceType::Char,
        };
        let access = if d.permissions.is_empty() {
            "rwm".to_string()
        } else {
            d.permissions.clone()
        };
        rules.push(DeviceRule {
            allow: true,
            kind,
            major: u32::try_from(dev.major).ok(),
            minor: u32::try_from(dev.minor).ok(),
            access,
        });
    }
    rules
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::fixture::Fixture;
    use super::super::HostDevice;
    use super::*;

    fn cri_device(container: &str, host: &str) -> proto::Device {
        proto::Device {
            container_path: container.into(),
            host_path: host.into(),
            permissions: "rwm".into(),
        }
    }

    fn device_at(f: &Fixture, path: &str) -> Option<Device> {
        f.spec()
            .config
            .devices
            .into_iter()
            .find(|d| d.path == Path::new(path))
    }

    #[test]
    fn base_has_the_default_devices() {
        let f = Fixture::new();
        assert_eq!(f.spec().config.devices, Config::default_devices());
    }

    #[test]
    fn host_device_is_added_with_the_hosts_numbers() {
        let mut f = Fixture::new();
        f.req.devices = vec![cri_device("/dev/fuse", "/dev/fuse")];
        let d = device_at(&f, "/dev/fuse").unwrap();
        assert_eq!(
            (d.kind, d.major, d.minor, d.file_mode),
            (DeviceKind::Char, 10, 229, 0o666)
        );
    }

    #[test]
    fn device_may_be_renamed() {
        let mut f = Fixture::new();
        f.req.devices = vec![cri_device("/dev/myfuse", "/dev/fuse")];
        assert!(device_at(&f, "/dev/myfuse").is_some());
    }

    #[test]
    fn device_replaces_a_default_of_the_same_path() {
        let mut f = Fixture::new();
        f.req.devices = vec![cri_device("/dev/null", "/dev/fuse")];
        let s = f.spec();
        let nulls: Vec<_> = s
            .config
            .devices
            .iter()
            .filter(|d| d.path == Path::new("/dev/null"))
            .collect();
        assert_eq!((nulls.len(), nulls[0].minor), (1, 229));
    }

    #[test]
    fn unknown_host_device_names_the_field() {
        let mut f = Fixture::new();
        f.req.devices = vec![
            cri_device("/dev/fuse", "/dev/fuse"),
            cri_device("/dev/sdz", "/dev/sdz"),
        ];
        assert_eq!(f.err_field(), "config.devices[1].host_path");
    }

    #[test]
    fn fifo_is_not_a_device() {
        let mut f = Fixture::new();
        f.host_devices.insert(
            PathBuf::from("/run/pipe"),
            HostDevice {
                kind: DeviceKind::Fifo,
                major: 0,
                minor: 0,
                file_mode: 0o600,
                uid: 0,
                gid: 0,
            },
        );
        f.req.devices = vec![cri_device("/dev/pipe", "/run/pipe")];
        assert_eq!(f.err_field(), "config.devices[0].host_path");
    }

    #[test]
    fn container_path_outside_dev_is_invalid() {
        let mut f = Fixture::new();
        f.req.devices = vec![cri_device("/etc/fuse", "/dev/fuse")];
        assert_eq!(f.err_field(), "config.devices[0].container_path");
    }

    #[test]
    fn bad_permissions_are_invalid() {
        let mut f = Fixture::new();
        let mut d = cri_device("/dev/fuse", "/dev/fuse");
        d.permissions = "rwx".into();
        f.req.devices = vec![d];
        assert_eq!(f.err_field(), "config.devices[0].permissions");
    }

    #[test]
    fn device_cgroup_rules() {
        let mut f = Fixture::new();
        let rules = f.spec().config.cgroup.unwrap().resources.devices.unwrap();
        assert_eq!(rules, default_device_rules(), "the default allow list");
        f.req.devices = vec![proto::Device {
            permissions: "rw".into(),
            ..cri_device("/dev/fuse", "/dev/fuse")
        }];
        f.host_devices.insert(
            PathBuf::from("/dev/fuse"),
            HostDevice {
                kind: DeviceKind::Char,
                major: 10,
                minor: 229,
                file_mode: 0o666,
                uid: 0,
                gid: 0,
            },
        );
        let rules = f.spec().config.cgroup.unwrap().resources.devices.unwrap();
        assert_eq!(rules.last().unwrap().v1_line(), "c 10:229 rw");
        f.sc().privileged = true;
        let rules = f.spec().config.cgroup.unwrap().resources.devices.unwrap();
        assert_eq!(rules, vec![DeviceRule::allow_all()]);
        assert_eq!(rules[0].v1_line(), "a *:* rwm");
    }

    #[test]
    fn privileged_gets_every_host_device_at_its_path() {
        let mut f = Fixture::new();
        let has_fuse = |f: &Fixture| {
            f.spec()
                .config
                .devices
                .iter()
                .any(|d| d.path == Path::new("/dev/fuse") && (d.major, d.minor) == (10, 229))
        };
        assert!(!has_fuse(&f), "not without privileged");
        f.sc().privileged = true;
        assert!(has_fuse(&f));
        // The defaults are still there once.
        let devs = f.spec().config.devices;
        assert_eq!(
            devs.iter()
                .filter(|d| d.path == Path::new("/dev/null"))
                .count(),
            1
        );
    }
}
