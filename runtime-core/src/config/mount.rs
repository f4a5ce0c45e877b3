//! Mount descriptions, and the parser for OCI-style option lists.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Mount propagation, as `mount --make-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// `private`
    Private,
    /// `rprivate`
    RPrivate,
    /// `slave`
    Slave,
    /// `rslave`
    RSlave,
    /// `shared`
    Shared,
    /// `rshared`
    RShared,
    /// `unbindable`
    Unbindable,
    /// `runbindable`
    RUnbindable,
}

impl Propagation {
    /// The `mount(2)` flags that apply this propagation.
    pub fn ms_flags(self) -> libc::c_ulong {
        match self {
            Propagation::Private => libc::MS_PRIVATE,
            Propagation::RPrivate => libc::MS_PRIVATE | libc::MS_REC,
            Propagation::Slave => libc::MS_SLAVE,
            Propagation::RSlave => libc::MS_SLAVE | libc::MS_REC,
            Propagation::Shared => libc::MS_SHARED,
            Propagation::RShared => libc::MS_SHARED | libc::MS_REC,
            Propagation::Unbindable => libc::MS_UNBINDABLE,
            Propagation::RUnbindable => libc::MS_UNBINDABLE | libc::MS_REC,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "private" => Propagation::Private,
            "rprivate" => Propagation::RPrivate,
            "slave" => Propagation::Slave,
            "rslave" => Propagation::RSlave,
            "shared" => Propagation::Shared,
            "rshared" => Propagation::RShared,
            "unbindable" => Propagation::Unbindable,
            "runbindable" => Propagation::RUnbindable,
            _ => return None,
        })
    }
}

/// A per-mount flag (the `MS_*` flags that describe a mount, not an operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountFlag {
    /// `ro`
    ReadOnly,
    /// `nosuid`
    NoSuid,
    /// `nodev`
    NoDev,
    /// `noexec`
    NoExec,
    /// `sync`
    Sync,
    /// `dirsync`
    DirSync,
    /// `noatime`
    NoAtime,
    /// `nodiratime`
    NoDirAtime,
    /// `relatime`
    RelAtime,
    /// `strictatime`
    StrictAtime,
}

impl MountFlag {
    /// The `MS_*` bit.
    pub fn ms_flag(self) -> libc::c_ulong {
        match self {
            MountFlag::ReadOnly => libc::MS_RDONLY,
            MountFlag::NoSuid => libc::MS_NOSUID,
            MountFlag::NoDev => libc::MS_NODEV,
            MountFlag::NoExec => libc::MS_NOEXEC,
            MountFlag::Sync => libc::MS_SYNCHRONOUS,
            MountFlag::DirSync => libc::MS_DIRSYNC,
            MountFlag::NoAtime => libc::MS_NOATIME,
            MountFlag::NoDirAtime => libc::MS_NODIRATIME,
            MountFlag::RelAtime => libc::MS_RELATIME,
            MountFlag::StrictAtime => libc::MS_STRICTATIME,
        }
    }

    fn parse(s: &str) -> Option<(Self, bool)> {
        Some(match s {
            "ro" => (MountFlag::ReadOnly, true),
            "rw" => (MountFlag::ReadOnly, false),
            "nosuid" => (MountFlag::NoSuid, true),
            "suid" => (MountFlag::NoSuid, false),
            "nodev" => (MountFlag::NoDev, true),
            "dev" => (MountFlag::NoDev, false),
            "noexec" => (MountFlag::NoExec, true),
            "exec" => (MountFlag::NoExec, false),
            "sync" => (MountFlag::Sync, true),
            "async" => (MountFlag::Sync, false),
            "dirsync" => (MountFlag::DirSync, true),
            "noatime" => (MountFlag::NoAtime, true),
            "atime" => (MountFlag::NoAtime, false),
            "nodiratime" => (MountFlag::NoDirAtime, true),
            "diratime" => (MountFlag::NoDirAtime, false),
            "relatime" => (MountFlag::RelAtime, true),
            "norelatime" => (MountFlag::RelAtime, false),
            "strictatime" => (MountFlag::StrictAtime, true),
            "nostrictatime" => (MountFlag::StrictAtime, false),
            _ => return None,
        })
    }
}

/// What is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum MountKind {
    /// A bind mount of `source` (a host path).
    Bind {
        /// `rbind`: also bind the mounts below `source`.
        recursive: bool,
    },
    /// A new filesystem instance (`proc`, `tmpfs`, `sysfs`, `devpts`, `mqueue`, ...).
    Fs {
        /// The filesystem type passed to `mount(2)`.
        fstype: String,
    },
    /// A read-only overlayfs of host directories (an image volume of
    /// several layers). Mounted like the overlay rootfs, so any number of
    /// layers up to overlayfs's limit works, where a `lowerdir=` in
    /// [`Mount::data`] stops at one page.
    Overlay {
        /// Lower directories, top first.
        lowerdirs: Vec<PathBuf>,
    },
}

/// One mount in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Host path (bind mounts) or device/label (filesystems; may be empty).
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Absolute path inside the container. Symlinks in it are resolved inside
    /// the rootfs, never outside.
    pub destination: PathBuf,
    /// Bind mount or filesystem.
    pub kind: MountKind,
    /// Mount flags.
    #[serde(default)]
    pub flags: Vec<MountFlag>,
    /// Filesystem-specific data (`mode=755,size=65536k`).
    #[serde(default)]
    pub data: String,
    /// Propagation applied after mounting.
    #[serde(default)]
    pub propagation: Option<Propagation>,
    /// Make the whole mount tree read-only (`rro`, `mount_setattr(AT_RECURSIVE)`).
    #[serde(default)]
    pub recursive_readonly: bool,
    /// Bind mounts only: an idmapped mount that maps the source's ownership
    /// through the container's user namespace (`mount_setattr(MOUNT_ATTR_IDMAP)`).
    #[serde(default)]
    pub idmap: bool,
}

/// An OCI mount option that is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mount option {option:?} for {destination}")]
pub struct UnknownMountOption {
    /// The option.
    pub option: String,
    /// The mount destination it was given for.
    pub destination: String,
}

impl Mount {
    /// A filesystem mount.
    pub fn fs(fstype: &str, destination: impl Into<PathBuf>, options: &[&str]) -> Self {
        Self::from_oci(Some(fstype.into()), fstype, destination, options)
            .expect("built-in mount options are valid")
    }

    /// A read-only overlay of `lowerdirs` (top first) with `options`
    /// (flags; other options go to overlayfs as data).
    pub fn overlay(
        lowerdirs: Vec<PathBuf>,
        destination: impl Into<PathBuf>,
        options: &[&str],
    ) -> Self {
        let mut m = Self::from_oci(Some("overlay".into()), "overlay", destination, options)
            .expect("built-in mount options are valid");
        m.kind = MountKind::Overlay { lowerdirs };
        if !m.flags.contains(&MountFlag::ReadOnly) {
            m.flags.push(MountFlag::ReadOnly);
        }
        m
    }

    /// A bind mount of a host path.
    pub fn bind(
        source: impl Into<PathBuf>,
        destination: impl Into<PathBuf>,
        options: &[&str],
    ) -> Self {
        let mut opts = vec!["rbind"];
        opts.extend_from_slice(options);
        Self::from_oci(Some(source.into()), "bind", destination, &opts)
            .expect("built-in mount options are valid")
    }

    /// Builds a mount from an OCI runtime-spec style description: `type` and
    /// `options` (`ro`, `nosuid`, `rbind`, `rprivate`, `rro`, `mode=755`, ...).
    /// Options that are not flags are passed to the filesystem as data.
    pub fn try_from_oci(
        source: Option<PathBuf>,
        fstype: &str,
        destination: impl Into<PathBuf>,
        options: &[&str],
    ) -> Result<Self, UnknownMountOption> {
        Self::from_oci(source, fstype, destination, options)
    }

    fn from_oci(
        source: Option<PathBuf>,
        fstype: &str,
        destination: impl Into<PathBuf>,
        options: &[&str],
    ) -> Result<Self, UnknownMountOption> {
        let destination = destination.into();
        let mut bind: Option<bool> = (fstype == "bind").then_some(false);
        let mut flags: Vec<MountFlag> = Vec::new();
        let mut data: Vec<&str> = Vec::new();
        let mut propagation = None;
        let mut recursive_readonly = false;
        let mut idmap = false;
        for &opt in options {
            if let Some((flag, set)) = MountFlag::parse(opt) {
                flags.retain(|f| *f != flag);
                if set {
                    flags.push(flag);
                }
            } else if let Some(p) = Propagation::parse(opt) {
                propagation = Some(p);
            } else {
                match opt {
                    "bind" => bind = Some(bind.unwrap_or(false)),
                    "rbind" => bind = Some(true),
                    "rro" => recursive_readonly = true,
                    "rrw" => recursive_readonly = false,
                    "idmap" | "ridmap" => idmap = true,
                    // Kubernetes/OCI options handled elsewhere or meaningless here.
                    "defaults" => {}
                    _ if opt.contains('=') || bind.is_none() => data.push(opt),
                    _ => {
                        return Err(UnknownMountOption {
                            option: opt.to_string(),
                            destination: destination.display().to_string(),
                        })
                    }
                }
            }
        }
        let kind = match bind {
            Some(recursive) => MountKind::Bind { recursive },
            None => MountKind::Fs {
                fstype: fstype.to_string(),
            },
        };
        Ok(Self {
            source,
            destination,
            kind,
            flags,
            data: data.join(","),
            propagation,
            recursive_readonly,
            idmap,
        })
    }

    /// The `MS_*` flags of [`Mount::flags`] combined.
    pub fn ms_flags(&self) -> libc::c_ulong {
        self.flags.iter().fold(0, |acc, f| acc | f.ms_flag())
    }

    /// Whether this is a bind mount.
    pub fn is_bind(&self) -> bool {
        matches!(self.kind, MountKind::Bind { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oci_options() {
        let m = Mount::try_from_oci(
            Some("tmpfs".into()),
            "tmpfs",
            "/dev",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )
        .unwrap();
        assert_eq!(
            m.kind,
            MountKind::Fs {
                fstype: "tmpfs".into()
            }
        );
        assert_eq!(m.flags, vec![MountFlag::NoSuid, MountFlag::StrictAtime]);
        assert_eq!(m.data, "mode=755,size=65536k");
        assert_eq!(m.ms_flags(), libc::MS_NOSUID | libc::MS_STRICTATIME);
    }

    #[test]
    fn bind_options() {
        let m = Mount::try_from_oci(
            Some("/src".into()),
            "bind",
            "/dst",
            &["rbind", "ro", "rslave", "rro"],
        )
        .unwrap();
        assert_eq!(m.kind, MountKind::Bind { recursive: true });
        assert_eq!(m.flags, vec![MountFlag::ReadOnly]);
        assert_eq!(m.propagation, Some(Propagation::RSlave));
        assert!(m.recursive_readonly);
        // "bind" in the options of a non-bind type also means bind
        let m = Mount::try_from_oci(Some("/src".into()), "none", "/dst", &["bind", "rw"]).unwrap();
        assert_eq!(m.kind, MountKind::Bind { recursive: false });
        assert!(m.flags.is_empty());
    }

    #[test]
    fn later_option_wins() {
        let m = Mount::try_from_oci(None, "tmpfs", "/t", &["ro", "rw", "noexec"]).unwrap();
        assert_eq!(m.flags, vec![MountFlag::NoExec]);
    }

    #[test]
    fn unknown_bind_option_is_an_error() {
        let e =
            Mount::try_from_oci(Some("/s".into()), "bind", "/d", &["rbind", "bogus"]).unwrap_err();
        assert_eq!(e.option, "bogus");
    }
}
