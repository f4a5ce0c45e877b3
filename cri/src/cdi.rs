//! The node's CDI (Container Device Interface) specs: what a GPU driver or
//! a Dynamic Resource Allocation driver writes to `/etc/cdi` or
//! `/var/run/cdi`, resolved into [`CdiEdits`] for a container's devices.
//!
//! Reading and applying the specs is the CNCF crate's
//! (`container-device-interface`, vendored with a patch): its cache loads
//! every spec (a file that fails to load is skipped and reported), and its
//! `inject_devices` applies the devices' container edits to an empty OCI
//! spec, from which berth takes them. The specs are re-read at each
//! CreateContainer that asks for a CDI device, so a driver that writes its
//! spec after berth started is seen; a request without CDI devices reads
//! nothing.

use std::path::PathBuf;
use std::sync::Mutex;

use berth_core::cgroups::{DeviceRule, DeviceType};
use berth_core::config::{Device, DeviceKind, Hook, Hooks};
use container_device_interface::cache::Cache;
use oci_spec::runtime as oci;

use crate::spec::cdi::CdiEdits;
use crate::spec::{invalid, unsupported, SpecError};

/// CDI's settings (berth's `[runtime]` `enable_cdi`, `cdi_spec_dirs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdiSettings {
    /// Whether CDI devices may be requested at all.
    pub enabled: bool,
    /// The spec directories, lowest priority first (a device defined in a
    /// later directory wins).
    pub spec_dirs: Vec<PathBuf>,
}

impl Default for CdiSettings {
    /// Enabled, with the CDI spec's directories `/etc/cdi` and
    /// `/var/run/cdi` (containerd 2's defaults).
    fn default() -> Self {
        Self {
            enabled: true,
            spec_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
        }
    }
}

/// The node's CDI registry.
pub struct Cdi {
    settings: CdiSettings,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Cdi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cdi")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Cdi {
    /// A registry over `settings.spec_dirs` (nothing is read yet).
    pub fn new(settings: CdiSettings) -> Self {
        let cache = Cache {
            spec_dirs: settings
                .spec_dirs
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect(),
            ..Default::default()
        };
        Self {
            settings,
            cache: Mutex::new(cache),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &CdiSettings {
        &self.settings
    }

    /// Re-reads the specs and returns every device they define, and each
    /// spec file that failed to load with why.
    pub fn scan(&self) -> (Vec<String>, Vec<(String, String)>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let _ = cache.refresh();
        let errors = cache
            .errors
            .iter()
            .flat_map(|(path, errs)| errs.iter().map(move |e| (path.clone(), e.to_string())))
            .collect();
        (cache.list_devices(), errors)
    }

    /// The edits of the devices `names` (fully qualified), from the specs
    /// as they are now. An unknown device is an InvalidArgument naming it.
    pub fn resolve(&self, names: &[String]) -> Result<CdiEdits, SpecError> {
        const FIELD: &str = "config.CDI_devices";
        if names.is_empty() {
            return Ok(CdiEdits::default());
        }
        if !self.settings.enabled {
            return Err(invalid(
                FIELD,
                format!(
                    "CDI devices {} requested, but CDI is disabled on this node ([runtime] enable_cdi)",
                    names.join(", ")
                ),
            ));
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let _ = cache.refresh();
        for (path, errs) in &cache.errors {
            for e in errs {
                tracing::warn!(spec = %path, error = %e, "CDI spec skipped");
            }
        }
        let unknown: Vec<&str> = names
            .iter()
            .filter(|n| cache.get_device(n).is_none())
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(invalid(
                FIELD,
                format!(
                    "unknown CDI device {} (no spec in {} defines it)",
                    unknown.join(", "),
                    self.dirs()
                ),
            ));
        }
        let mut spec = empty_spec();
        cache
            .inject_devices(Some(&mut spec), names.to_vec())
            .map_err(|e| invalid(FIELD, format!("applying CDI devices: {e}")))?;
        drop(cache);
        edits_of(&spec)
    }

    fn dirs(&self) -> String {
        let d: Vec<String> = self
            .settings
            .spec_dirs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        d.join(", ")
    }
}

/// An OCI spec with nothing in it that CDI edits touch, so that whatever
/// is there after `inject_devices` came from the devices.
fn empty_spec() -> oci::Spec {
    let mut spec = oci::Spec::default();
    let mut process = oci::Process::default();
    process.set_env(None);
    spec.set_process(Some(process));
    spec.set_mounts(Some(Vec::new()));
    spec.set_hooks(None);
    let mut linux = oci::Linux::default();
    linux.set_devices(None);
    linux.set_resources(None);
    spec.set_linux(Some(linux));
    spec
}

/// The edits `inject_devices` made to [`empty_spec`], in berth's terms.
/// What berth cannot apply (network devices, Intel RDT) is refused, not
/// dropped.
fn edits_of(spec: &oci::Spec) -> Result<CdiEdits, SpecError> {
    let mut out = CdiEdits::default();
    if let Some(p) = spec.process() {
        out.env = p.env().clone().unwrap_or_default();
        out.additional_gids = p.user().additional_gids().clone().unwrap_or_default();
    }
    if let Some(linux) = spec.linux() {
        if linux.net_devices().as_ref().is_some_and(|n| !n.is_empty()) {
            return Err(unsupported(
                "config.CDI_devices",
                "CDI netDevices (moving host network interfaces into the pod)",
            ));
        }
        if linux.intel_rdt().is_some() {
            return Err(unsupported("config.CDI_devices", "CDI intelRdt"));
        }
        for d in linux.devices().iter().flatten() {
            out.devices.push(device(d)?);
        }
        let rules = linux.resources().as_ref().and_then(|r| r.devices().clone());
        for r in rules.iter().flatten() {
            out.device_rules.push(DeviceRule {
                allow: r.allow(),
                kind: match r.typ() {
                    Some(oci::LinuxDeviceType::C | oci::LinuxDeviceType::U) => DeviceType::Char,
                    Some(oci::LinuxDeviceType::B) => DeviceType::Block,
                    _ => DeviceType::All,
                },
                major: r.major().and_then(|m| u32::try_from(m).ok()),
                minor: r.minor().and_then(|m| u32::try_from(m).ok()),
                access: r.access().clone().unwrap_or_else(|| "rwm".into()),
            });
        }
    }
    for m in spec.mounts().iter().flatten() {
        out.mounts.push((
            m.source().clone(),
            m.destination().to_string_lossy().into_owned(),
            m.typ().clone().unwrap_or_default(),
            m.options().clone().unwrap_or_default(),
        ));
    }
    if let Some(h) = spec.hooks() {
        out.hooks = Hooks {
            prestart: hooks(h.prestart()),
            create_runtime: hooks(h.create_runtime()),
            create_container: hooks(h.create_container()),
            start_container: hooks(h.start_container()),
            poststart: hooks(h.poststart()),
            poststop: hooks(h.poststop()),
        };
    }
    Ok(out)
}

fn device(d: &oci::LinuxDevice) -> Result<Device, SpecError> {
    let kind = match d.typ() {
        oci::LinuxDeviceType::C | oci::LinuxDeviceType::U => DeviceKind::Char,
        oci::LinuxDeviceType::B => DeviceKind::Block,
        oci::LinuxDeviceType::P => DeviceKind::Fifo,
        other => {
            return Err(invalid(
                "CDI containerEdits.deviceNodes.type",
                format!("{other:?} is not a device node type"),
            ))
        }
    };
    let num = |n: i64, what: &str| {
        u64::try_from(n).map_err(|_| {
            invalid(
                format!("CDI containerEdits.deviceNodes.{what}"),
                format!("{n} for {}", d.path().display()),
            )
        })
    };
    Ok(Device {
        path: d.path().clone(),
        kind,
        major: num(d.major(), "major")?,
        minor: num(d.minor(), "minor")?,
        file_mode: d.file_mode().unwrap_or(0o666) & 0o7777,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

fn hooks(list: &Option<Vec<oci::Hook>>) -> Vec<Hook> {
    list.iter()
        .flatten()
        .map(|h| Hook {
            path: h.path().clone(),
            args: h.args().clone().unwrap_or_default(),
            env: h.env().clone().unwrap_or_default(),
            timeout: h
                .timeout()
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
cdiVersion: "0.6.0"
kind: "example.com/gpu"
devices:
  - name: "0"
    containerEdits:
      deviceNodes:
        - path: "/dev/example-gpu0"
          hostPath: "/dev/null"
      env:
        - "EXAMPLE_VISIBLE=0"
containerEdits:
  env:
    - "EXAMPLE_DRIVER=1.2"
  mounts:
    - hostPath: "/usr/lib/example"
      containerPath: "/usr/lib/example"
      options: ["ro", "nosuid", "nodev", "bind"]
  hooks:
    - hookName: "createContainer"
      path: "/usr/bin/example-ctk"
      args: ["example-ctk", "hook", "update-ldcache"]
"#;

    fn registry(files: &[(&str, &str)]) -> (tempfile::TempDir, Cdi) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let cdi = Cdi::new(CdiSettings {
            enabled: true,
            spec_dirs: vec![dir.path().to_path_buf()],
        });
        (dir, cdi)
    }

    #[test]
    fn a_device_resolves_to_its_node_env_mounts_and_hooks() {
        let (_d, cdi) = registry(&[("example.yaml", SPEC)]);
        let e = cdi.resolve(&["example.com/gpu=0".into()]).unwrap();
        let mut env = e.env.clone();
        env.sort();
        assert_eq!(env, ["EXAMPLE_DRIVER=1.2", "EXAMPLE_VISIBLE=0"]);
        assert_eq!(e.devices.len(), 1);
        let d = &e.devices[0];
        // The node's numbers come from its hostPath (/dev/null: 1:3).
        assert_eq!(
            (d.path.to_str(), d.kind, d.major, d.minor),
            (Some("/dev/example-gpu0"), DeviceKind::Char, 1, 3)
        );
        assert!(e.device_rules.iter().any(|r| r.allow
            && r.kind == DeviceType::Char
            && r.major == Some(1)
            && r.minor == Some(3)));
        assert_eq!(e.mounts.len(), 1);
        assert_eq!(e.mounts[0].1, "/usr/lib/example");
        assert_eq!(e.hooks.create_container.len(), 1);
        assert_eq!(e.hooks.create_container[0].args[2], "update-ldcache");
    }

    #[test]
    fn an_unknown_device_is_refused_by_name_and_a_broken_spec_is_skipped() {
        let (dir, cdi) = registry(&[("example.yaml", SPEC), ("broken.yaml", "cdiVersion: [")]);
        let err = cdi
            .resolve(&["example.com/gpu=0".into(), "example.com/gpu=7".into()])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config.CDI_devices"), "{err}");
        assert!(
            err.contains("example.com/gpu=7") && !err.contains("gpu=0,"),
            "{err}"
        );
        // The good spec still works, and the broken one is reported.
        cdi.resolve(&["example.com/gpu=0".into()]).unwrap();
        let (devices, errors) = cdi.scan();
        assert_eq!(devices, ["example.com/gpu=0"]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].0.ends_with("broken.yaml"), "{errors:?}");
        // A spec written later is seen without a restart.
        std::fs::write(
            dir.path().join("later.yaml"),
            SPEC.replace("example.com/gpu", "example.com/npu"),
        )
        .unwrap();
        cdi.resolve(&["example.com/npu=0".into()]).unwrap();
    }

    #[test]
    fn disabled_cdi_refuses_instead_of_ignoring() {
        let cdi = Cdi::new(CdiSettings {
            enabled: false,
            spec_dirs: Vec::new(),
        });
        assert_eq!(cdi.resolve(&[]).unwrap(), CdiEdits::default());
        let err = cdi.resolve(&["example.com/gpu=0".into()]).unwrap_err();
        assert!(err.to_string().contains("enable_cdi"), "{err}");
    }
}
