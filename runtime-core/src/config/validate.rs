//! Checks of a [`Config`] made before anything is created.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use super::{Config, NamespaceKind, Propagation};
use crate::cgroups::{self, CgroupError};

/// A config that cannot be used, with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `rootfs` is not an existing absolute directory.
    #[error("rootfs {path}: {reason}")]
    Rootfs {
        /// The rootfs.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A namespace type is listed twice.
    #[error("namespaces: {0:?} listed more than once")]
    DuplicateNamespace(NamespaceKind),
    /// A namespace to join is not usable.
    #[error("namespaces: {kind:?} path {path}: {reason}")]
    NamespacePath {
        /// Type.
        kind: NamespaceKind,
        /// Path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The container needs its own mount namespace.
    #[error("namespaces: a new mount namespace is required")]
    NoMountNamespace,
    /// A setting needs a namespace the config does not create.
    #[error("{field} requires a new {needs:?} namespace")]
    NeedsNamespace {
        /// The field.
        field: String,
        /// The namespace it needs.
        needs: NamespaceKind,
    },
    /// A new user namespace has no mappings.
    #[error("uid_mappings/gid_mappings: a new user namespace needs both uid and gid mappings")]
    MissingMappings,
    /// A path field is not absolute or contains `..`.
    #[error("{field} {path:?}: must be an absolute path without '..'")]
    BadPath {
        /// The field.
        field: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A bind mount without source.
    #[error("mounts: bind mount on {0} has no source")]
    BindWithoutSource(PathBuf),
    /// A hook that cannot be run as given.
    #[error("hooks.{point}: {path:?}: {reason}")]
    Hook {
        /// The hook point (OCI name).
        point: &'static str,
        /// The hook's path.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A device outside /dev.
    #[error("devices: {0} is not under /dev")]
    DeviceOutsideDev(PathBuf),
    /// A hostname or domainname that is not valid.
    #[error("{field} {value:?}: {reason}")]
    BadName {
        /// hostname or domainname.
        field: &'static str,
        /// The value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A sysctl that is not allowed.
    #[error("sysctls: {name:?}: {reason}")]
    Sysctl {
        /// Name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Only recursive private/slave/unbindable root propagation is supported
    /// (a shared or non-recursive one would let container mounts reach the host).
    #[error(
        "rootfs_propagation {0:?} is not supported (use rprivate, rslave, rshared or runbindable)"
    )]
    RootfsPropagation(Propagation),
    /// oom_score_adj out of range.
    #[error("oom_score_adj {0} is outside -1000..=1000")]
    OomScoreAdj(i32),
    /// An rlimit with soft > hard.
    #[error("rlimits: {kind:?} soft limit {soft} exceeds hard limit {hard}")]
    Rlimit {
        /// Resource.
        kind: crate::config::RlimitKind,
        /// Soft.
        soft: u64,
        /// Hard.
        hard: u64,
    },
    /// An overlay of more layers than overlayfs stacks.
    #[error("{field}: {count} layers, but overlayfs stacks at most {max}")]
    TooManyLayers {
        /// The field.
        field: &'static str,
        /// Layers asked for.
        count: usize,
        /// overlayfs's limit ([`crate::config::MAX_OVERLAY_LAYERS`]).
        max: usize,
    },
    /// The cgroup settings are invalid.
    #[error("cgroup")]
    Cgroup(#[source] CgroupError),
    /// The seccomp profile does not compile.
    #[error("seccomp")]
    Seccomp(#[source] crate::security::seccomp::SeccompError),
}

impl Config {
    /// Whether the namespace of `kind` this config joins is the caller's
    /// own (the host's, for a runtime running in the host's namespaces).
    fn joins_host_namespace(&self, kind: NamespaceKind) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(path) = self.namespace(kind).and_then(|ns| ns.path.as_ref()) else {
            return false;
        };
        let own = format!("/proc/self/ns/{}", kind.proc_name());
        match (std::fs::metadata(path), std::fs::metadata(own)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            // Cannot tell: refuse rather than risk the host's settings.
            _ => true,
        }
    }
}

/// Whether `p` is absolute and free of `..`.
pub(crate) fn is_clean_absolute(p: &Path) -> bool {
    p.is_absolute() && !p.components().any(|c| c == Component::ParentDir)
}

/// Which namespace a sysctl belongs to, if it is namespaced at all
/// (the same allow-list as runc's `validateSysctl`).
fn sysctl_namespace(name: &str) -> Option<NamespaceKind> {
    const IPC: [&str; 6] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
    ];
    const IPC2: [&str; 2] = ["kernel.shmmni", "kernel.shm_rmid_forced"];
    if IPC.contains(&name) || IPC2.contains(&name) || name.starts_with("fs.mqueue.") {
        Some(NamespaceKind::Ipc)
    } else if name.starts_with("net.") {
        Some(NamespaceKind::Network)
    } else if name == "kernel.hostname" || name == "kernel.domainname" {
        Some(NamespaceKind::Uts)
    } else {
        None
    }
}

fn check_name(field: &'static str, value: &str) -> Result<(), ConfigError> {
    let bad = |reason| {
        Err(ConfigError::BadName {
            field,
            value: value.to_string(),
            reason,
        })
    };
    if value.len() > 64 {
        return bad("longer than 64 bytes");
    }
    if value
        .bytes()
        .any(|b| b == 0 || b == b'/' || b.is_ascii_control())
    {
        return bad("contains a NUL, '/' or control character");
    }
    Ok(())
}

impl Config {
    /// Checks the config. Namespace paths are opened to make sure they are
    /// namespaces of the right type.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rootfs_err = |reason| ConfigError::Rootfs {
            path: self.rootfs.clone(),
            reason,
        };
        if !self.rootfs.is_absolute() {
            return Err(rootfs_err("must be an absolute path"));
        }
        match std::fs::metadata(&self.rootfs) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(rootfs_err("is not a directory")),
            Err(_) => return Err(rootfs_err("does not exist")),
        }
        let mut seen = HashSet::new();
        for ns in &self.namespaces {
            if !seen.insert(ns.kind) {
                return Err(ConfigError::DuplicateNamespace(ns.kind));
            }
            if let Some(path) = &ns.path {
                check_ns_path(ns.kind, path)?;
            }
        }
        if !self.creates(NamespaceKind::Mount) {
            return Err(ConfigError::NoMountNamespace);
        }
        let needs = |field: &str, kind| {
            if self.creates(kind) {
                Ok(())
            } else {
                Err(ConfigError::NeedsNamespace {
                    field: field.to_string(),
                    needs: kind,
                })
            }
        };
        if let Some(h) = &self.hostname {
            needs("hostname", NamespaceKind::Uts)?;
            check_name("hostname", h)?;
        }
        if let Some(d) = &self.domainname {
            needs("domainname", NamespaceKind::Uts)?;
            check_name("domainname", d)?;
        }
        if !self.uid_mappings.is_empty() || !self.gid_mappings.is_empty() {
            needs("uid_mappings", NamespaceKind::User)?;
        }
        // Idmapped mounts take the container's user namespace, new or joined.
        let in_user_ns = |field: &str| {
            if self
                .namespaces
                .iter()
                .any(|n| n.kind == NamespaceKind::User)
            {
                Ok(())
            } else {
                Err(ConfigError::NeedsNamespace {
                    field: field.to_string(),
                    needs: NamespaceKind::User,
                })
            }
        };
        if self.idmap_rootfs {
            in_user_ns("idmap_rootfs")?;
        }
        if let Some(o) = &self.overlay {
            o.check()?;
        }
        if self.mounts.iter().any(|m| m.idmap) {
            in_user_ns("mounts idmap")?;
            if let Some(m) = self.mounts.iter().find(|m| m.idmap && !m.is_bind()) {
                return Err(ConfigError::BadPath {
                    field: "mounts.idmap (bind mounts only)",
                    path: m.destination.clone(),
                });
            }
        }
        if self.creates(NamespaceKind::User)
            && (self.uid_mappings.is_empty() || self.gid_mappings.is_empty())
        {
            return Err(ConfigError::MissingMappings);
        }
        if !matches!(
            self.rootfs_propagation,
            Propagation::RPrivate
                | Propagation::RSlave
                | Propagation::RShared
                | Propagation::RUnbindable
        ) {
            return Err(ConfigError::RootfsPropagation(self.rootfs_propagation));
        }
        for m in &self.mounts {
            if !is_clean_absolute(&m.destination) {
                return Err(ConfigError::BadPath {
                    field: "mounts.destination",
                    path: m.destination.clone(),
                });
            }
            if m.is_bind() && m.source.as_deref().is_none_or(|s| s.as_os_str().is_empty()) {
                return Err(ConfigError::BindWithoutSource(m.destination.clone()));
            }
            if m.is_bind() && m.source.as_deref().is_some_and(|s| !s.is_absolute()) {
                return Err(ConfigError::BadPath {
                    field: "mounts.source",
                    path: m.source.clone().unwrap_or_default(),
                });
            }
            if let super::MountKind::Overlay { lowerdirs } = &m.kind {
                super::check_layers("mounts.overlay", lowerdirs)?;
            }
        }
        for d in &self.devices {
            if !is_clean_absolute(&d.path) {
                return Err(ConfigError::BadPath {
                    field: "devices.path",
                    path: d.path.clone(),
                });
            }
            if !d.path.starts_with("/dev") || d.path == Path::new("/dev") {
                return Err(ConfigError::DeviceOutsideDev(d.path.clone()));
            }
        }
        if let Some((field, value, reason)) = crate::security::first_bad_label(self) {
            return Err(ConfigError::BadName {
                field,
                value,
                reason,
            });
        }
        if let Some((point, path, reason)) = self.hooks.first_invalid() {
            return Err(ConfigError::Hook {
                point,
                path,
                reason,
            });
        }
        for (field, paths) in [
            ("masked_paths", &self.masked_paths),
            ("readonly_paths", &self.readonly_paths),
        ] {
            if let Some(p) = paths.iter().find(|p| !is_clean_absolute(p)) {
                return Err(ConfigError::BadPath {
                    field,
                    path: p.clone(),
                });
            }
        }
        for name in self.sysctls.keys() {
            let sysctl_err = |reason: String| ConfigError::Sysctl {
                name: name.clone(),
                reason,
            };
            let ok_chars = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                && !name.split('.').any(|part| part.is_empty());
            if !ok_chars {
                return Err(sysctl_err("not a valid sysctl name".into()));
            }
            match sysctl_namespace(name) {
                None => {
                    return Err(sysctl_err(
                        "not a namespaced sysctl: it would change the host".into(),
                    ))
                }
                Some(kind) if !self.has(kind) => {
                    return Err(sysctl_err(format!(
                        "requires a new or joined {kind:?} namespace"
                    )))
                }
                // A joined namespace is fine (a pod's pinned one) unless it
                // is the host's own, as runc checks.
                Some(kind) if self.joins_host_namespace(kind) => {
                    return Err(sysctl_err(format!(
                        "the joined {kind:?} namespace is the host's: it would change the host"
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(adj) = self.oom_score_adj {
            if !(-1000..=1000).contains(&adj) {
                return Err(ConfigError::OomScoreAdj(adj));
            }
        }
        for r in &self.rlimits {
            if r.soft > r.hard {
                return Err(ConfigError::Rlimit {
                    kind: r.kind,
                    soft: r.soft,
                    hard: r.hard,
                });
            }
        }
        if let Some(cg) = &self.cgroup {
            cgroups::validate_path(&cg.path).map_err(ConfigError::Cgroup)?;
            cgroups::validate_resources(&cg.resources).map_err(ConfigError::Cgroup)?;
        }
        if let Some(p) = &self.seccomp {
            p.validate().map_err(ConfigError::Seccomp)?;
        }
        Ok(())
    }
}

fn check_ns_path(kind: NamespaceKind, path: &Path) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::NamespacePath {
        kind,
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot be opened: {e}")))?;
    match crate::sys::ns_type(std::os::fd::AsFd::as_fd(&file)) {
        Ok(t) if t == kind.clone_flag() => Ok(()),
        Ok(_) => Err(err(format!("is a namespace of another type, not {kind:?}"))),
        Err(_) => Err(err("is not a namespace file".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IdMap, Mount, Namespace};

    fn base() -> (tempfile::TempDir, Config) {
        let d = tempfile::tempdir().unwrap();
        let c = Config::new(d.path());
        (d, c)
    }

    #[test]
    fn default_config_is_valid() {
        let (_d, c) = base();
        c.validate().unwrap();
    }

    #[test]
    fn rootfs_must_exist() {
        let (_d, mut c) = base();
        c.rootfs = "/nonexistent/berth".into();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Rootfs {
                reason: "does not exist",
                ..
            })
        ));
        c.rootfs = "relative".into();
        assert!(matches!(c.validate(), Err(ConfigError::Rootfs { .. })));
    }

    #[test]
    fn hostname_needs_uts() {
        let (_d, mut c) = base();
        c.hostname = Some("testing".into());
        c.validate().unwrap();
        c.namespaces.retain(|n| n.kind != NamespaceKind::Uts);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::NeedsNamespace {
                needs: NamespaceKind::Uts,
                ..
            })
        ));
    }

    #[test]
    fn duplicate_and_bad_namespaces() {
        let (_d, mut c) = base();
        c.namespaces.push(Namespace::new(NamespaceKind::Pid));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DuplicateNamespace(NamespaceKind::Pid))
        ));
        let (_d, mut c) = base();
        c.namespaces.retain(|n| n.kind != NamespaceKind::Network);
        c.namespaces
            .push(Namespace::join(NamespaceKind::Network, "/nonexistent"));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::NamespacePath { .. })
        ));
        let (_d, mut c) = base();
        c.namespaces.retain(|n| n.kind != NamespaceKind::Network);
        c.namespaces
            .push(Namespace::join(NamespaceKind::Network, "/proc/self/ns/uts"));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("another type"), "{e}");
        let (_d, mut c) = base();
        c.namespaces.retain(|n| n.kind != NamespaceKind::Network);
        c.namespaces
            .push(Namespace::join(NamespaceKind::Network, "/etc/hostname"));
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not a namespace"));
    }

    #[test]
    fn mounts_and_paths() {
        let (_d, mut c) = base();
        c.mounts.push(Mount::fs("tmpfs", "/a/../../etc", &[]));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BadPath {
                field: "mounts.destination",
                ..
            })
        ));
        let (_d, mut c) = base();
        c.masked_paths.push("relative".into());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BadPath {
                field: "masked_paths",
                ..
            })
        ));
        let (_d, mut c) = base();
        c.devices[0].path = "/etc/null".into();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DeviceOutsideDev(_))
        ));
    }

    #[test]
    fn sysctls_must_be_namespaced() {
        let (_d, mut c) = base();
        c.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        c.sysctls.insert("kernel.shmmax".into(), "1".into());
        c.validate().unwrap();
        c.sysctls.insert("vm.swappiness".into(), "1".into());
        assert!(c.validate().unwrap_err().to_string().contains("host"));
        let (_d, mut c) = base();
        c.sysctls.insert("net/../../x".into(), "1".into());
        assert!(matches!(c.validate(), Err(ConfigError::Sysctl { .. })));
    }

    #[test]
    fn sysctls_in_joined_namespaces_but_never_the_hosts() {
        let (_d, mut c) = base();
        c.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        c.namespaces.retain(|n| n.kind != NamespaceKind::Network);
        // The host's own network namespace, joined by path: refused.
        c.namespaces.push(Namespace {
            kind: NamespaceKind::Network,
            path: Some("/proc/self/ns/net".into()),
        });
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("host"), "{err}");
        // No network namespace at all: refused.
        c.namespaces.retain(|n| n.kind != NamespaceKind::Network);
        assert!(c.validate().unwrap_err().to_string().contains("namespace"));
    }

    #[test]
    fn user_namespace_needs_mappings() {
        let (_d, mut c) = base();
        c.namespaces.push(Namespace::new(NamespaceKind::User));
        assert!(matches!(c.validate(), Err(ConfigError::MissingMappings)));
        let map = IdMap {
            container_id: 0,
            host_id: 100_000,
            size: 65536,
        };
        c.uid_mappings.push(map);
        c.gid_mappings.push(map);
        c.validate().unwrap();
    }

    #[test]
    fn propagation_must_be_recursive_and_bind_sources_absolute() {
        let (_d, mut c) = base();
        c.rootfs_propagation = Propagation::Private;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::RootfsPropagation(_))
        ));
        c.rootfs_propagation = Propagation::Shared;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::RootfsPropagation(_))
        ));
        c.rootfs_propagation = Propagation::RShared;
        c.validate().unwrap();
        c.rootfs_propagation = Propagation::RSlave;
        c.validate().unwrap();
        c.mounts.push(Mount::bind("relative/src", "/x", &[]));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BadPath {
                field: "mounts.source",
                ..
            })
        ));
    }

    #[test]
    fn oom_and_rlimits() {
        let (_d, mut c) = base();
        c.oom_score_adj = Some(1001);
        assert!(matches!(c.validate(), Err(ConfigError::OomScoreAdj(1001))));
        let (_d, mut c) = base();
        c.rlimits.push(crate::config::Rlimit {
            kind: crate::config::RlimitKind::RlimitNofile,
            soft: 10,
            hard: 5,
        });
        assert!(matches!(c.validate(), Err(ConfigError::Rlimit { .. })));
    }
}
