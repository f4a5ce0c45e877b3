//! CDI (Container Device Interface) devices of a container: which the
//! request names, and the resolved edits applied to its translated spec.
//! Resolving names against the node's CDI specs is I/O, done by the
//! caller ([`crate::cdi`]); what comes back is a [`CdiEdits`].

use std::path::PathBuf;

use berth_core::cgroups::DeviceRule;
use berth_core::config::{Device, Hooks, Mount};

use super::{clean_absolute, invalid, ContainerSpec, SpecError};
use crate::proto;

/// The annotation prefix of CDI device requests (`cdi.k8s.io/<key>`:
/// `vendor.com/class=name[,...]`), what device plugins set.
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// The CDI devices a CreateContainer request asks for, fully qualified
/// (`vendor.com/class=name`): its `CDI_devices`, then its `cdi.k8s.io/*`
/// annotations in key order; each once. A name that is not a qualified
/// CDI name is refused, naming the field.
pub fn requested(req: &proto::ContainerConfig) -> Result<Vec<String>, SpecError> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |field: String, name: &str| {
        if !is_qualified(name) {
            return Err(invalid(
                field,
                format!("{name:?} is not a qualified CDI device name (vendor.com/class=name)"),
            ));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
        Ok(())
    };
    for (i, d) in req.cdi_devices.iter().enumerate() {
        add(format!("config.CDI_devices[{i}].name"), &d.name)?;
    }
    let mut keys: Vec<&String> = req
        .annotations
        .keys()
        .filter(|k| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    for k in keys {
        for name in req.annotations[k].split(',') {
            add(format!("config.annotations[{k:?}]"), name.trim())?;
        }
    }
    Ok(out)
}

/// Whether `name` is a fully qualified CDI device name, by the CDI crate's
/// own rule (it is public through its annotation parser only).
fn is_qualified(name: &str) -> bool {
    let one =
        std::collections::HashMap::from([(format!("{ANNOTATION_PREFIX}check"), name.to_string())]);
    !name.contains(',') && container_device_interface::annotations::parse_annotations(&one).is_ok()
}

/// What the node's CDI specs add to a container for its devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdiEdits {
    /// `KEY=value` entries, each replacing the same key.
    pub env: Vec<String>,
    /// Device nodes made in the container's `/dev`.
    pub devices: Vec<Device>,
    /// Device cgroup rules that let the container use them.
    pub device_rules: Vec<DeviceRule>,
    /// Mounts: `(source, destination, type, options)`.
    pub mounts: Vec<(Option<PathBuf>, String, String, Vec<String>)>,
    /// OCI hooks (a vendor's `createContainer` hook that runs `ldconfig`).
    pub hooks: Hooks,
    /// Supplementary groups for the container's process.
    pub additional_gids: Vec<u32>,
}

/// Applies `edits` to the translated container, as containerd applies CDI
/// edits to its generated OCI spec: env entries replace the same key,
/// device nodes replace a node at the same path, mounts replace a mount at
/// the same destination, hooks and groups are added.
pub fn apply(cs: &mut ContainerSpec, edits: &CdiEdits) -> Result<(), SpecError> {
    for e in &edits.env {
        let Some((key, _)) = e.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(invalid(
                "CDI containerEdits.env",
                format!("{e:?} is not KEY=value"),
            ));
        };
        let prefix = format!("{key}=");
        cs.process
            .env
            .retain(|x| !x.as_encoded_bytes().starts_with(prefix.as_bytes()));
        cs.process.env.push(e.into());
    }
    for d in &edits.devices {
        if !d.path.starts_with("/dev") || d.path.as_os_str() == "/dev" {
            return Err(invalid(
                "CDI containerEdits.deviceNodes.path",
                format!("{} must be below /dev", d.path.display()),
            ));
        }
        clean_absolute(
            "CDI containerEdits.deviceNodes.path",
            &d.path.to_string_lossy(),
        )?;
        cs.config.devices.retain(|x| x.path != d.path);
        cs.config.devices.push(d.clone());
    }
    if let Some(cg) = &mut cs.config.cgroup {
        if let Some(rules) = &mut cg.resources.devices {
            rules.extend(edits.device_rules.iter().cloned());
        }
    }
    for (source, dest, typ, options) in &edits.mounts {
        let field = "CDI containerEdits.mounts.containerPath";
        let dest = clean_absolute(field, dest)?;
        let opts: Vec<&str> = options.iter().map(String::as_str).collect();
        let typ = if typ.is_empty() { "bind" } else { typ.as_str() };
        let m = Mount::try_from_oci(source.clone(), typ, &dest, &opts)
            .map_err(|e| invalid("CDI containerEdits.mounts", e.to_string()))?;
        cs.config.mounts.retain(|x| x.destination != dest);
        cs.config.mounts.push(m);
    }
    if let Some((point, path, reason)) = edits.hooks.first_invalid() {
        return Err(invalid(
            format!("CDI containerEdits.hooks ({point})"),
            format!("{}: {reason}", path.display()),
        ));
    }
    let h = &mut cs.config.hooks;
    h.prestart.extend(edits.hooks.prestart.iter().cloned());
    h.create_runtime
        .extend(edits.hooks.create_runtime.iter().cloned());
    h.create_container
        .extend(edits.hooks.create_container.iter().cloned());
    h.start_container
        .extend(edits.hooks.start_container.iter().cloned());
    h.poststart.extend(edits.hooks.poststart.iter().cloned());
    h.poststop.extend(edits.hooks.poststop.iter().cloned());
    for g in &edits.additional_gids {
        if !cs.process.user.additional_gids.contains(g) {
            cs.process.user.additional_gids.push(*g);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fixture;
    use super::*;
    use berth_core::config::{DeviceKind, Hook};

    #[test]
    fn requested_names_come_from_the_field_then_the_annotations_once_each() {
        let mut req = proto::ContainerConfig {
            cdi_devices: vec![
                proto::CdiDevice {
                    name: "vendor.com/gpu=0".into(),
                },
                proto::CdiDevice {
                    name: "vendor.com/gpu=1".into(),
                },
            ],
            ..Default::default()
        };
        req.annotations.insert(
            "cdi.k8s.io/b".into(),
            "vendor.com/gpu=1,example.org/nic=a".into(),
        );
        req.annotations
            .insert("cdi.k8s.io/a".into(), "example.org/nic=b".into());
        req.annotations.insert("other".into(), "not=cdi".into());
        assert_eq!(
            requested(&req).unwrap(),
            [
                "vendor.com/gpu=0",
                "vendor.com/gpu=1",
                "example.org/nic=b",
                "example.org/nic=a"
            ]
        );
        req.cdi_devices[1].name = "gpu1".into();
        let err = requested(&req).unwrap_err().to_string();
        assert!(err.starts_with("config.CDI_devices[1].name"), "{err}");
        req.cdi_devices.truncate(1);
        req.annotations.insert("cdi.k8s.io/c".into(), "nope".into());
        let err = requested(&req).unwrap_err().to_string();
        assert!(
            err.contains("cdi.k8s.io/c") && err.contains("qualified"),
            "{err}"
        );
    }

    fn edits() -> CdiEdits {
        CdiEdits {
            env: vec!["PATH=/cdi/bin".into(), "VENDOR_VISIBLE=0".into()],
            devices: vec![Device {
                path: "/dev/vendor0".into(),
                kind: DeviceKind::Char,
                major: 195,
                minor: 0,
                file_mode: 0o666,
                uid: 0,
                gid: 0,
            }],
            device_rules: vec![DeviceRule::allow_char(Some(195), Some(0), "rw")],
            mounts: vec![(
                Some("/usr/lib/vendor/libvendor.so.1".into()),
                "/usr/lib/libvendor.so.1".into(),
                String::new(),
                vec!["ro".into(), "nosuid".into(), "bind".into()],
            )],
            hooks: Hooks {
                create_container: vec![Hook::new("/usr/bin/vendor-hook")],
                ..Default::default()
            },
            additional_gids: vec![44],
        }
    }

    #[test]
    fn edits_add_devices_rules_mounts_env_hooks_and_groups() {
        let mut cs = Fixture::new().spec();
        apply(&mut cs, &edits()).unwrap();
        let env: Vec<String> = cs
            .process
            .env
            .iter()
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        assert!(env.contains(&"PATH=/cdi/bin".to_string()), "{env:?}");
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert!(env.contains(&"VENDOR_VISIBLE=0".to_string()));
        let dev = cs
            .config
            .devices
            .iter()
            .find(|d| d.path.ends_with("vendor0"));
        assert_eq!(dev.map(|d| (d.major, d.minor)), Some((195, 0)));
        let rules = cs.config.cgroup.unwrap().resources.devices.unwrap();
        assert!(rules.contains(&DeviceRule::allow_char(Some(195), Some(0), "rw")));
        let m = cs
            .config
            .mounts
            .iter()
            .find(|m| m.destination == std::path::Path::new("/usr/lib/libvendor.so.1"))
            .expect("the CDI mount");
        assert!(m.is_bind());
        assert_eq!(cs.config.hooks.create_container.len(), 1);
        assert!(cs.process.user.additional_gids.contains(&44));
    }

    #[test]
    fn edits_outside_dev_or_with_bad_paths_are_refused() {
        let mut e = edits();
        e.devices[0].path = "/etc/vendor0".into();
        let err = apply(&mut Fixture::new().spec(), &e)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("deviceNodes.path") && err.contains("below /dev"),
            "{err}"
        );
        let mut e = edits();
        e.mounts[0].1 = "../escape".into();
        let err = apply(&mut Fixture::new().spec(), &e)
            .unwrap_err()
            .to_string();
        assert!(err.contains("containerPath"), "{err}");
    }
}
