//! The OCI bundle an external runtime gets: `config.json` built with the
//! `oci-spec` crate's types from the same [`berth_core::Config`] and
//! [`ProcessSpec`] the embedded core would run, so a container asks the
//! same of runc or crun as of berth: the pod's pinned namespaces joined by
//! path, its cgroup, mounts, devices, capabilities, seccomp, rlimits,
//! LSM labels and hooks.
//!
//! The parts of berth's config that already have the runtime-spec's JSON
//! shape (capabilities, rlimits, seccomp, hooks) go through `serde` into
//! oci-spec's types, whose typed parse checks them; the rest is built
//! field by field.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_core::cgroups::{DeviceRule, DeviceType, Resources};
use berth_core::config::{DeviceKind, MountFlag, MountKind, NamespaceKind};
use berth_core::process::ProcessSpec;
use berth_core::security::user::ResolvedUser;
use berth_core::{Config, Mount};
use oci_spec::runtime as oci;
use serde::de::DeserializeOwned;

/// The bundle could not be built from the config.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Something the external runtime is not asked to do.
    #[error("{0}: not with an external OCI runtime")]
    Unsupported(String),
    /// oci-spec refused a value.
    #[error("OCI runtime spec, {field}: {reason}")]
    Spec {
        /// Which part.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

fn spec_err(field: &'static str) -> impl Fn(oci_spec::OciSpecError) -> BundleError {
    move |e| BundleError::Spec {
        field,
        reason: e.to_string(),
    }
}

/// Converts a berth value whose JSON is the runtime-spec's into oci-spec's
/// type (checked by its typed parse).
fn same_shape<T: DeserializeOwned>(
    field: &'static str,
    value: &impl serde::Serialize,
) -> Result<T, BundleError> {
    let bad = |e: serde_json::Error| BundleError::Spec {
        field,
        reason: e.to_string(),
    };
    serde_json::from_value(serde_json::to_value(value).map_err(bad)?).map_err(bad)
}

/// The `ociVersion` of the bundles.
pub const OCI_VERSION: &str = "1.0.2";

/// The container's spec. `user` is [`ProcessSpec::user`] resolved against
/// the rootfs (runtimes take numbers).
pub fn spec(
    config: &Config,
    process: &ProcessSpec,
    user: &ResolvedUser,
    cgroups_path: Option<&Path>,
) -> Result<oci::Spec, BundleError> {
    if config.idmap_rootfs || config.mounts.iter().any(|m| m.idmap) {
        return Err(BundleError::Unsupported("idmapped mounts".into()));
    }
    if config.mounts.iter().any(|m| m.recursive_readonly) {
        return Err(BundleError::Unsupported(
            "recursive read-only mounts".into(),
        ));
    }
    let root = oci::RootBuilder::default()
        .path(config.rootfs.clone())
        .readonly(config.readonly_rootfs)
        .build()
        .map_err(spec_err("root"))?;
    let mounts = config
        .mounts
        .iter()
        .map(mount)
        .collect::<Result<Vec<_>, _>>()?;
    let mut b = oci::SpecBuilder::default()
        // 1.0.2: what runc 1.1 declares, and crun 1.8 refuses any but 1.0.x
        // (nothing berth asks for is newer).
        .version(OCI_VERSION)
        .root(root)
        .mounts(mounts)
        .process(self::process(config, process, user)?)
        .linux(linux(config, cgroups_path)?);
    if !config.hooks.is_empty() {
        b = b.hooks(same_shape::<oci::Hooks>("hooks", &config.hooks)?);
    }
    if !config.annotations.is_empty() {
        b = b.annotations(
            config
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        );
    }
    let mut spec = b.build().map_err(spec_err("spec"))?;
    // oci-spec's builders start from its own defaults (a hostname of
    // "youki", runc's default namespaces and paths): what berth does not
    // ask for is cleared, not inherited from them.
    spec.set_hostname(config.hostname.clone());
    spec.set_domainname(config.domainname.clone());
    Ok(spec)
}

/// `process` (the init's, or an exec's `process.json`).
pub fn process(
    config: &Config,
    p: &ProcessSpec,
    user: &ResolvedUser,
) -> Result<oci::Process, BundleError> {
    let oci_user = oci::UserBuilder::default()
        .uid(user.uid)
        .gid(user.gid)
        .additional_gids(user.additional_gids.clone())
        .build()
        .map_err(spec_err("process.user"))?;
    let mut env: Vec<String> = p
        .env
        .iter()
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let caps = p.capabilities.as_ref().unwrap_or(&config.capabilities);
    let mut b = oci::ProcessBuilder::default()
        .terminal(p.terminal.is_some())
        .user(oci_user)
        .args(p.args.clone())
        .env(env)
        .cwd(p.cwd.clone())
        .capabilities(same_shape::<oci::LinuxCapabilities>(
            "process.capabilities",
            caps,
        )?)
        .rlimits(same_shape::<Vec<oci::PosixRlimit>>(
            "process.rlimits",
            &config.rlimits,
        )?)
        .no_new_privileges(p.no_new_privileges.unwrap_or(config.no_new_privileges));
    if let Some(size) = p.terminal {
        b = b.console_size(
            oci::BoxBuilder::default()
                .height(u64::from(size.rows))
                .width(u64::from(size.cols))
                .build()
                .map_err(spec_err("process.consoleSize"))?,
        );
    }
    if let Some(a) = &config.apparmor_profile {
        b = b.apparmor_profile(a.clone());
    }
    if let Some(l) = &config.selinux_label {
        b = b.selinux_label(l.clone());
    }
    if let Some(o) = config.oom_score_adj {
        b = b.oom_score_adj(o);
    }
    b.build().map_err(spec_err("process"))
}

/// One mount, with the runtime-spec's options.
fn mount(m: &Mount) -> Result<oci::Mount, BundleError> {
    let mut options: Vec<String> = Vec::new();
    let (typ, source) = match &m.kind {
        MountKind::Bind { recursive } => {
            options.push(if *recursive { "rbind" } else { "bind" }.into());
            ("bind".to_string(), m.source.clone())
        }
        MountKind::Fs { fstype } => (
            fstype.clone(),
            Some(m.source.clone().unwrap_or_else(|| PathBuf::from(fstype))),
        ),
        MountKind::Overlay { lowerdirs } => {
            let lower: Vec<String> = lowerdirs.iter().map(|p| p.display().to_string()).collect();
            options.push(format!("lowerdir={}", lower.join(":")));
            ("overlay".to_string(), Some(PathBuf::from("overlay")))
        }
    };
    options.extend(m.flags.iter().map(|f| flag_option(*f).to_string()));
    if let Some(p) = m.propagation {
        options.push(
            serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        );
    }
    options.extend(
        m.data
            .split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_string),
    );
    let mut b = oci::MountBuilder::default()
        .destination(m.destination.clone())
        .typ(typ)
        .options(options);
    if let Some(s) = source {
        b = b.source(s);
    }
    b.build().map_err(spec_err("mounts"))
}

fn flag_option(f: MountFlag) -> &'static str {
    match f {
        MountFlag::ReadOnly => "ro",
        MountFlag::NoSuid => "nosuid",
        MountFlag::NoDev => "nodev",
        MountFlag::NoExec => "noexec",
        MountFlag::Sync => "sync",
        MountFlag::DirSync => "dirsync",
        MountFlag::NoAtime => "noatime",
        MountFlag::NoDirAtime => "nodiratime",
        MountFlag::RelAtime => "relatime",
        MountFlag::StrictAtime => "strictatime",
    }
}

fn namespace_type(k: NamespaceKind) -> oci::LinuxNamespaceType {
    match k {
        NamespaceKind::User => oci::LinuxNamespaceType::User,
        NamespaceKind::Mount => oci::LinuxNamespaceType::Mount,
        NamespaceKind::Uts => oci::LinuxNamespaceType::Uts,
        NamespaceKind::Ipc => oci::LinuxNamespaceType::Ipc,
        NamespaceKind::Pid => oci::LinuxNamespaceType::Pid,
        NamespaceKind::Network => oci::LinuxNamespaceType::Network,
        NamespaceKind::Cgroup => oci::LinuxNamespaceType::Cgroup,
    }
}

fn linux(config: &Config, cgroups_path: Option<&Path>) -> Result<oci::Linux, BundleError> {
    let namespaces = config
        .namespaces
        .iter()
        .map(|n| {
            let mut b = oci::LinuxNamespaceBuilder::default().typ(namespace_type(n.kind));
            if let Some(p) = &n.path {
                b = b.path(p.clone());
            }
            b.build().map_err(spec_err("linux.namespaces"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let devices = config
        .devices
        .iter()
        .map(|d| {
            oci::LinuxDeviceBuilder::default()
                .path(d.path.clone())
                .typ(match d.kind {
                    DeviceKind::Char => oci::LinuxDeviceType::C,
                    DeviceKind::Block => oci::LinuxDeviceType::B,
                    DeviceKind::Fifo => oci::LinuxDeviceType::P,
                })
                .major(d.major as i64)
                .minor(d.minor as i64)
                .file_mode(d.file_mode)
                .uid(d.uid)
                .gid(d.gid)
                .build()
                .map_err(spec_err("linux.devices"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let idmap = |maps: &[berth_core::config::IdMap]| {
        maps.iter()
            .map(|m| {
                oci::LinuxIdMappingBuilder::default()
                    .container_id(m.container_id)
                    .host_id(m.host_id)
                    .size(m.size)
                    .build()
                    .map_err(spec_err("linux.uidMappings"))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let paths = |p: &[PathBuf]| {
        p.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
    };
    let mut b = oci::LinuxBuilder::default()
        .namespaces(namespaces)
        .devices(devices)
        .uid_mappings(idmap(&config.uid_mappings)?)
        .gid_mappings(idmap(&config.gid_mappings)?)
        .masked_paths(paths(&config.masked_paths))
        .readonly_paths(paths(&config.readonly_paths))
        .sysctl(
            config
                .sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        )
        .rootfs_propagation(
            serde_json::to_value(config.rootfs_propagation)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "rprivate".into()),
        );
    if let Some(cg) = &config.cgroup {
        b = b.resources(resources(&cg.resources, Some(&config.devices))?);
    }
    if let Some(p) = cgroups_path {
        b = b.cgroups_path(p.to_path_buf());
    }
    if let Some(s) = &config.seccomp {
        b = b.seccomp(same_shape::<oci::LinuxSeccomp>("linux.seccomp", s)?);
    }
    if let Some(l) = &config.mount_label {
        b = b.mount_label(l.clone());
    }
    let mut linux = b.build().map_err(spec_err("linux"))?;
    if config.cgroup.is_none() {
        // Not oci-spec's default (an empty rule list).
        linux.set_resources(None);
    }
    Ok(linux)
}

/// `linux.resources` (also `update --resources`). `nodes`: at create, the
/// container's device nodes, allowed when the rules are left as they are
/// (`devices: None`), as the embedded core does; `None` (an update): the
/// device rules are not touched.
pub fn resources(
    r: &Resources,
    nodes: Option<&[berth_core::config::Device]>,
) -> Result<oci::LinuxResources, BundleError> {
    let err = spec_err("linux.resources");
    let mut memory = oci::LinuxMemoryBuilder::default();
    if let Some(v) = r.memory_limit {
        memory = memory.limit(v);
    }
    if let Some(v) = r.memory_reservation {
        memory = memory.reservation(v);
    }
    if let Some(v) = r.memory_swap {
        memory = memory.swap(v);
    }
    let mut cpu = oci::LinuxCpuBuilder::default();
    if let Some(v) = r.cpu_shares {
        cpu = cpu.shares(v);
    }
    if let Some(v) = r.cpu_quota {
        cpu = cpu.quota(v);
    }
    if let Some(v) = r.cpu_period {
        cpu = cpu.period(v);
    }
    if let Some(v) = &r.cpuset_cpus {
        cpu = cpu.cpus(v.clone());
    }
    if let Some(v) = &r.cpuset_mems {
        cpu = cpu.mems(v.clone());
    }
    let throttle = |pick: fn(&berth_core::cgroups::IoThrottle) -> Option<u64>| {
        r.io_throttle
            .iter()
            .filter_map(|t| {
                let rate = pick(t)?;
                oci::LinuxThrottleDeviceBuilder::default()
                    .major(i64::from(t.major))
                    .minor(i64::from(t.minor))
                    .rate(rate)
                    .build()
                    .ok()
            })
            .collect::<Vec<_>>()
    };
    let mut blkio = oci::LinuxBlockIoBuilder::default()
        .throttle_read_bps_device(throttle(|t| t.read_bps))
        .throttle_write_bps_device(throttle(|t| t.write_bps))
        .throttle_read_iops_device(throttle(|t| t.read_iops))
        .throttle_write_iops_device(throttle(|t| t.write_iops));
    if let Some(w) = r.blkio_weight {
        blkio = blkio.weight(w);
    }
    let hugepages = r
        .hugepage_limits
        .iter()
        .map(|(size, limit)| {
            oci::LinuxHugepageLimitBuilder::default()
                .page_size(size.clone())
                .limit(i64::try_from(*limit).unwrap_or(i64::MAX))
                .build()
                .map_err(spec_err("linux.resources.hugepageLimits"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rules: Vec<DeviceRule> = match (&r.devices, nodes) {
        (Some(rules), _) => rules.clone(),
        (None, None) => Vec::new(),
        (None, Some(nodes)) => nodes
            .iter()
            .filter(|d| d.kind != DeviceKind::Fifo)
            .map(|d| DeviceRule {
                allow: true,
                kind: match d.kind {
                    DeviceKind::Block => DeviceType::Block,
                    _ => DeviceType::Char,
                },
                major: u32::try_from(d.major).ok(),
                minor: u32::try_from(d.minor).ok(),
                access: "rwm".into(),
            })
            .collect(),
    };
    // Everything denied first, then the rules in order (the embedded core's
    // and runc's own order).
    let deny_all = oci::LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(&err)?;
    let mut devices = match (&r.devices, nodes) {
        (None, None) => Vec::new(),
        _ => vec![deny_all],
    };
    for rule in rules {
        let mut d = oci::LinuxDeviceCgroupBuilder::default()
            .allow(rule.allow)
            .access(rule.access.clone());
        d = match rule.kind {
            DeviceType::All => d.typ(oci::LinuxDeviceType::A),
            DeviceType::Char => d.typ(oci::LinuxDeviceType::C),
            DeviceType::Block => d.typ(oci::LinuxDeviceType::B),
        };
        if let Some(m) = rule.major {
            d = d.major(i64::from(m));
        }
        if let Some(m) = rule.minor {
            d = d.minor(i64::from(m));
        }
        devices.push(d.build().map_err(&err)?);
    }
    let mut b = oci::LinuxResourcesBuilder::default()
        .memory(memory.build().map_err(&err)?)
        .cpu(cpu.build().map_err(&err)?)
        .block_io(blkio.build().map_err(&err)?)
        .hugepage_limits(hugepages);
    if !devices.is_empty() {
        b = b.devices(devices);
    }
    if let Some(l) = r.pids_limit {
        b = b.pids(
            oci::LinuxPidsBuilder::default()
                .limit(l)
                .build()
                .map_err(&err)?,
        );
    }
    if !r.unified.is_empty() {
        b = b.unified(
            r.unified
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
        );
    }
    b.build().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::cgroups::CgroupConfig;

    fn user() -> ResolvedUser {
        ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![10],
            home: "/home/u".into(),
        }
    }

    #[test]
    fn the_embedded_defaults_make_a_runtime_spec_runc_reads() {
        let mut config = Config::new("/r/rootfs");
        config
            .namespaces
            .retain(|n| n.kind != NamespaceKind::Network);
        config.namespaces.push(berth_core::Namespace::join(
            NamespaceKind::Network,
            "/run/berth/ns/net-1",
        ));
        config.hostname = Some("pod".into());
        config.seccomp = Some(berth_core::security::seccomp::SeccompProfile::runtime_default(&[]));
        config.cgroup = Some(CgroupConfig {
            path: "/kubepods/pod1/c1".into(),
            resources: Resources {
                memory_limit: Some(64 << 20),
                pids_limit: Some(100),
                ..Default::default()
            },
            ..Default::default()
        });
        let mut p = berth_core::Process::new(["sh"]).spec;
        p.cwd = "/".into();
        p.env = vec!["A=1".into()];
        let s = spec(&config, &p, &user(), Some(Path::new("/kubepods/pod1/c1"))).unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["root"]["path"], "/r/rootfs");
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["process"]["user"]["additionalGids"][0], 10);
        assert_eq!(json["process"]["env"][1], "HOME=/home/u");
        assert!(json["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "CAP_CHOWN"));
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/berth/ns/net-1"));
        assert_eq!(json["linux"]["cgroupsPath"], "/kubepods/pod1/c1");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 100);
        // Deny all, then the default device nodes.
        let devs = json["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(devs[0]["allow"], false);
        assert!(devs
            .iter()
            .any(|d| d["allow"] == true && d["major"] == 1 && d["minor"] == 3));
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let proc_mount = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/proc")
            .unwrap()
            .clone();
        assert_eq!(proc_mount["type"], "proc");
        assert_eq!(json["hostname"], "pod");
    }

    #[test]
    fn what_an_external_runtime_is_not_asked_to_do_is_refused() {
        let mut config = Config::new("/r");
        config.idmap_rootfs = true;
        let err = spec(
            &config,
            &berth_core::Process::new(["sh"]).spec,
            &user(),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("idmapped"), "{err}");
        // Nothing of oci-spec's own defaults comes along.
        let s = spec(
            &Config::new("/r"),
            &berth_core::Process::new(["sh"]).spec,
            &user(),
            None,
        )
        .unwrap();
        assert_eq!(s.hostname(), &None);
        let err = {
            let mut c = Config::new("/r");
            c.mounts[0].recursive_readonly = true;
            spec(&c, &berth_core::Process::new(["sh"]).spec, &user(), None).unwrap_err()
        };
        assert!(err.to_string().contains("recursive"), "{err}");
    }
}
