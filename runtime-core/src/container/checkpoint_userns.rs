//! Checkpoint and restore of a container in its pod's user namespace.
//!
//! - The user namespace is the pod's, joined by path. CRIU dumps it with the
//!   tree (its id maps); berth also records the maps it saw
//!   ([`USERNS_FILE`]) so a restore can be refused before anything is made
//!   when the new pod's maps differ.
//! - Restore joins the new pod's user namespace instead of creating one
//!   (`--join-ns user:<path>`): the namespaces CRIU then creates (mount,
//!   pid) are owned by it, and the pod's network namespace, owned by it
//!   too, can be joined. Stock CRIU 4.1.1 creates the dumped user namespace
//!   and fails to join the pod's network namespace (EPERM); the patch
//!   `scripts/criu-join-userns.patch` (installed by
//!   `scripts/install-criu.sh`) clones the root task inside the joined
//!   namespace and checks its maps against the images instead of writing
//!   them. A criu without it (`criu check --feature join_userns` fails) is
//!   refused before the restore.
//! - Files: each overlay layer (or a plain rootfs) is idmapped into the
//!   user namespace, as at a normal start, before the rootfs CRIU restores
//!   into is mounted; bind mounts that were idmapped are handed to CRIU as
//!   idmapped trees; device nodes (bound from the host, since a user
//!   namespace cannot mknod) are external mounts.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::launch::{idmapped_trees_in, IdmapSources};
use super::ContainerError;
use crate::config::{Config, IdMap, NamespaceKind};
use crate::security::ceiling::TaskCreds;

/// What `criu check --feature` calls the join-userns patch: a restore into
/// a user namespace is refused up front without it (stock CRIU would fail
/// with EPERM at its network namespace step).
pub(super) const CRIU_FEATURE: &str = "join_userns";

/// File (in the images directory) with the id maps of the user namespace
/// the container was in, as the host sees them; absent when it had none.
pub const USERNS_FILE: &str = "userns.json";

/// The id maps of a user namespace, host ids absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserMaps {
    /// `uid_map` lines.
    pub uid_map: Vec<IdMap>,
    /// `gid_map` lines.
    pub gid_map: Vec<IdMap>,
}

impl UserMaps {
    /// The maps of `pid`'s user namespace (`/proc/PID/{uid,gid}_map`).
    pub fn of_process(pid: i32) -> Result<Self, ContainerError> {
        let read = |name: &str| -> Result<Vec<IdMap>, ContainerError> {
            let path = PathBuf::from(format!("/proc/{pid}/{name}"));
            let text =
                std::fs::read_to_string(&path).map_err(|source| ContainerError::StateIo {
                    path: path.clone(),
                    source,
                })?;
            parse_map(&text).ok_or_else(|| {
                ContainerError::Checkpoint(format!("{}: not an id map: {text:?}", path.display()))
            })
        };
        Ok(Self {
            uid_map: read("uid_map")?,
            gid_map: read("gid_map")?,
        })
    }

    /// `creds` (host ids) with their ids as the namespace sees them; a host
    /// id the maps do not cover becomes `u32::MAX` (no container id).
    pub fn creds_inside(&self, mut creds: TaskCreds) -> TaskCreds {
        for u in &mut creds.uids {
            *u = inside(&self.uid_map, *u);
        }
        for g in creds.gids.iter_mut().chain(creds.groups.iter_mut()) {
            *g = inside(&self.gid_map, *g);
        }
        creds
    }

    /// The host uid and gid of root in this namespace. Maps read from
    /// images are input: callers check first that they are the restored
    /// pod's (berth's CRI layer refuses others before the container is
    /// made; CRIU also checks its own image of them against the joined
    /// namespace), since these ids become the overlay creator's fsuid and
    /// the terminal's owner.
    pub fn root(&self) -> Result<(u32, u32), ContainerError> {
        let root = |map: &[IdMap]| {
            map.iter()
                .find(|e| e.container_id == 0 && e.size > 0)
                .map(|e| e.host_id)
        };
        match (root(&self.uid_map), root(&self.gid_map)) {
            (Some(u), Some(g)) => Ok((u, g)),
            _ => Err(ContainerError::Unsupported(
                "restore into a user namespace without a root (uid and gid 0 unmapped)".into(),
            )),
        }
    }

    /// Whether these are `uids` and `gids`, in any order.
    pub fn same_as(&self, uids: &[IdMap], gids: &[IdMap]) -> bool {
        let sorted = |m: &[IdMap]| {
            let mut v: Vec<(u32, u32, u32)> = m
                .iter()
                .map(|e| (e.container_id, e.host_id, e.size))
                .collect();
            v.sort_unstable();
            v
        };
        sorted(&self.uid_map) == sorted(uids) && sorted(&self.gid_map) == sorted(gids)
    }
}

/// The id inside for host id `id`; `u32::MAX` when unmapped.
fn inside(map: &[IdMap], id: u32) -> u32 {
    map.iter()
        .find(|e| id >= e.host_id && u64::from(id) < u64::from(e.host_id) + u64::from(e.size))
        .map_or(u32::MAX, |e| e.container_id + (id - e.host_id))
}

/// `inside outside count` lines; `None` for anything else.
fn parse_map(text: &str) -> Option<Vec<IdMap>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace().map(|n| n.parse::<u32>().ok());
            let m = IdMap {
                container_id: f.next()??,
                host_id: f.next()??,
                size: f.next()??,
            };
            f.next().is_none().then_some(m)
        })
        .collect()
}

/// The user namespace maps recorded with CRIU images; `None`: the container
/// had no user namespace of its own.
pub fn images_user_maps(images: &Path) -> Result<Option<UserMaps>, ContainerError> {
    let path = images.join(USERNS_FILE);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // CRIU writes a user namespace image only when it dumped one:
            // without berth's record, such images cannot be checked.
            let dumped = std::fs::read_dir(images)
                .map_err(|source| ContainerError::StateIo {
                    path: images.to_path_buf(),
                    source,
                })?
                .flatten()
                .any(|e| e.file_name().as_bytes().starts_with(b"userns-"));
            if dumped {
                return Err(ContainerError::Checkpoint(format!(
                    "{}: a user namespace was dumped but {USERNS_FILE} is missing",
                    images.display()
                )));
            }
            Ok(None)
        }
        Err(source) => Err(ContainerError::StateIo { path, source }),
        Ok(_) => super::checkpoint::read_json(&path).map(Some),
    }
}

/// Gives the new terminal (the `tty[..]` fds handed to CRIU) to the pod's
/// root, `(uid, gid)` on the host: CRIU sets the terminal's dumped owner
/// from inside the pod's user namespace, where only a file owned by an id
/// it maps may be chowned.
pub(super) fn give_terminal(
    inherit: &[(OwnedFd, String)],
    (uid, gid): (u32, u32),
) -> Result<(), ContainerError> {
    for (fd, _) in inherit.iter().filter(|(_, k)| k.starts_with("tty[")) {
        nix::unistd::fchown(
            fd.as_raw_fd(),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|source| ContainerError::Sys {
            step: "give the restored terminal to the pod's root",
            source,
        })?;
    }
    Ok(())
}

/// Writes [`USERNS_FILE`] for the container whose init is `pid`.
pub(super) fn record(pid: i32, images: &Path) -> Result<(), ContainerError> {
    super::checkpoint::write_json(&images.join(USERNS_FILE), &UserMaps::of_process(pid)?)
}

/// The pod user namespace the container joins by path, if any.
pub(super) fn joined(config: &Config) -> Option<&Path> {
    config
        .namespace(NamespaceKind::User)
        .and_then(|n| n.path.as_deref())
}

/// Device nodes the init bound from the host (`/dev/null` onto
/// `/dev/null`): external mounts, keyed by their path.
pub(super) fn device_keys(config: &Config) -> Vec<String> {
    if joined(config).is_none() {
        return Vec::new();
    }
    config
        .devices
        .iter()
        .map(|d| d.path.display().to_string())
        .collect()
}

/// The idmapped trees a restore attaches in CRIU's mount namespace before
/// the rootfs is mounted: each onto its directory.
#[derive(Default)]
pub(super) struct Trees {
    /// `(directory, idmapped tree)`: the overlay's layers (and the upper
    /// and work directories' parent) or a plain rootfs, and the staging
    /// paths of idmapped bind mounts.
    pub onto: Vec<(CString, OwnedFd)>,
    /// Whether a plain rootfs is among them (then it is a mount already).
    pub rootfs: bool,
    /// Bind mounts that were idmapped: `(destination, staging path)`, the
    /// staging path (under the work directory) holding the idmapped tree of
    /// the source, for CRIU to bind.
    pub staged: Vec<(PathBuf, PathBuf)>,
}

/// What a start of the container would idmap ([`IdmapSources::of`]),
/// cloned and idmapped through the user namespace at `userns` as a start
/// does; the bind mounts' trees go onto staging paths made under `work`.
pub(super) fn trees(config: &Config, userns: &Path, work: &Path) -> Result<Trees, ContainerError> {
    let ns = std::fs::File::open(userns).map_err(|source| ContainerError::StateIo {
        path: userns.to_path_buf(),
        source,
    })?;
    let (idx, fds) = idmapped_trees_in(&ns, &IdmapSources::of(config))?;
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut take = |i: usize| {
        fds.get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| ContainerError::Checkpoint(format!("no idmapped tree #{i}")))
    };
    let cstr = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| ContainerError::Checkpoint(format!("{}: a NUL byte", p.display())))
    };
    let mut out = Trees::default();
    if let Some(i) = idx.rootfs {
        out.onto.push((cstr(&config.rootfs)?, take(i)?));
        out.rootfs = true;
    }
    for (dir, i) in &idx.layers {
        out.onto.push((cstr(dir)?, take(*i)?));
    }
    let staging = work.join("idmapped");
    for (m, i) in &idx.mounts {
        let (Some(mount), tree) = (config.mounts.get(*m), take(*i)?) else {
            continue;
        };
        let src = mount.source.as_deref().unwrap_or(Path::new("/"));
        let at = staging.join(m.to_string());
        let io = |source| ContainerError::StateIo {
            path: at.clone(),
            source,
        };
        std::fs::create_dir_all(&staging).map_err(io)?;
        let _ = std::fs::remove_dir(&at).or_else(|_| std::fs::remove_file(&at));
        if src.is_dir() {
            std::fs::create_dir(&at).map_err(io)?;
        } else {
            std::fs::File::create(&at).map_err(io)?;
        }
        out.onto.push((cstr(&at)?, tree));
        out.staged.push((mount.destination.clone(), at));
    }
    Ok(out)
}

/// Removes the staging paths [`trees`] made (mounted only in CRIU's own
/// mount namespace, gone with it).
pub(super) fn remove_staging(work: &Path) {
    let _ = std::fs::remove_dir_all(work.join("idmapped"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_parse_and_compare_in_any_order() {
        let m = parse_map("         0     500000      65536\n 70000 1 2\n").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].host_id, 500000);
        let maps = UserMaps {
            uid_map: m.clone(),
            gid_map: m.clone(),
        };
        let rev: Vec<IdMap> = m.iter().rev().copied().collect();
        assert!(maps.same_as(&rev, &m));
        assert!(!maps.same_as(&m[..1], &m));
        assert!(parse_map("0 1\n").is_none());
        assert!(parse_map("0 1 2 3\n").is_none());
        assert!(parse_map("a b c\n").is_none());
        assert_eq!(inside(&m, 500000), 0);
        assert_eq!(inside(&m, 501000), 1000);
        assert_eq!(inside(&m, 565536), u32::MAX);
        assert_eq!(inside(&m, 1), 70000);
        assert_eq!(inside(&m, 0), u32::MAX);
    }

    #[test]
    fn dumped_user_namespace_without_the_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(images_user_maps(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join("userns-12.img"), b"x").unwrap();
        assert!(images_user_maps(dir.path()).is_err());
        let maps = UserMaps {
            uid_map: vec![IdMap {
                container_id: 0,
                host_id: 500000,
                size: 65536,
            }],
            gid_map: Vec::new(),
        };
        super::super::checkpoint::write_json(&dir.path().join(USERNS_FILE), &maps).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(USERNS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "private whatever the umask");
        assert_eq!(images_user_maps(dir.path()).unwrap(), Some(maps));
    }
}
