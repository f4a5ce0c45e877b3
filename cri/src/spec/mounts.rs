//! The container's mounts: runtime-core's defaults, the pod's shared files
//! and `/dev/shm`, and the request's bind mounts.

use std::path::{Path, PathBuf};

use berth_core::config::{Mount, MountFlag, MountKind, Propagation};
use berth_core::Config;

use super::{clean_absolute, invalid, unsupported, ImageLayersLookup, PodContext, SpecError};
use crate::proto;

/// The mounts and the propagation the container's `/` needs for them.
pub(super) struct Planned {
    pub mounts: Vec<Mount>,
    pub rootfs_propagation: Propagation,
}

/// One bind mount before it becomes a runtime-core [`Mount`].
struct Bind {
    source: PathBuf,
    destination: PathBuf,
    readonly: bool,
    recursive_readonly: bool,
    propagation: Propagation,
    /// Idmapped into the container's user namespace.
    idmap: bool,
    /// CRI `mount_options`: `noexec`, `nodev`, `nosuid`.
    flags: Vec<&'static str>,
    /// An image volume of several layers: a read-only overlay of these
    /// directories (top first) instead of a bind of `source`.
    overlay: Option<Vec<PathBuf>>,
}

impl Bind {
    fn into_mount(self) -> Mount {
        let propagation = match self.propagation {
            Propagation::RSlave => "rslave",
            Propagation::RShared => "rshared",
            _ => "rprivate",
        };
        let mode = if self.readonly { "ro" } else { "rw" };
        if let Some(lowers) = self.overlay {
            let mut opts = vec!["ro"];
            opts.extend(self.flags);
            return Mount::overlay(lowers, self.destination, &opts);
        }
        let mut opts = vec![propagation, mode];
        if self.idmap {
            opts.push("idmap");
        }
        opts.extend(self.flags);
        let mut m = Mount::bind(self.source, self.destination, &opts);
        m.recursive_readonly = self.recursive_readonly;
        m
    }
}

/// Number of components, the order mounts are made in (a parent before
/// what is mounted below it), as containerd's `orderedMounts`.
fn depth(p: &Path) -> usize {
    p.components().count()
}

/// One CRI `Mount`, checked: `container_path` and `host_path` absolute,
/// `container_path` without `..`; `recursive_read_only` only with
/// `readonly` and private propagation (CRI); id-mapped only into the pod's
/// user namespace, with its maps (what kubelet sends); no image mounts.
/// `selinux_relabel` is ignored: this node has no SELinux.
fn cri_bind(
    i: usize,
    m: &proto::Mount,
    pod: &PodContext<'_>,
    image_layers: ImageLayersLookup<'_>,
) -> Result<Bind, SpecError> {
    let field = |name: &str| format!("config.mounts[{i}].{name}");
    let destination = clean_absolute(&field("container_path"), &m.container_path)?;
    if let Some(img) = m.image.as_ref().filter(|img| !img.image.is_empty()) {
        return image_volume(i, m, &img.image, destination, pod, image_layers);
    }
    if m.host_path.is_empty() {
        return Err(invalid(field("host_path"), "must be set"));
    }
    if m.host_path.contains('\0') || !Path::new(&m.host_path).is_absolute() {
        return Err(invalid(
            field("host_path"),
            format!("{:?} must be an absolute path", m.host_path),
        ));
    }
    let idmap = !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty();
    if idmap {
        let same = |cri: &[proto::IdMapping], ours: &[berth_core::config::IdMap]| {
            cri.len() == ours.len()
                && cri.iter().zip(ours).all(|(c, o)| {
                    (c.container_id, c.host_id, c.length) == (o.container_id, o.host_id, o.size)
                })
        };
        match pod.user_ns {
            None => {
                return Err(invalid(
                    field("uidMappings"),
                    "an id-mapped mount needs a pod with its own user namespace",
                ))
            }
            Some(u) if !same(&m.uid_mappings, u.uids) || !same(&m.gid_mappings, u.gids) => {
                return Err(unsupported(
                    field("uidMappings"),
                    "id maps other than the pod user namespace's",
                ))
            }
            Some(_) => {}
        }
    }
    // kubelet 1.37+ sends only these (RuntimeFeatures.mount_options).
    let mut flags = Vec::new();
    for (j, o) in m.mount_options.iter().enumerate() {
        let flag = match o.as_str() {
            "noexec" => "noexec",
            "nodev" => "nodev",
            "nosuid" => "nosuid",
            _ => {
                return Err(invalid(
                    field(&format!("mount_options[{j}]")),
                    format!("{o:?} is not one of noexec, nodev, nosuid"),
                ))
            }
        };
        if !flags.contains(&flag) {
            flags.push(flag);
        }
    }
    let propagation = match proto::MountPropagation::try_from(m.propagation) {
        Ok(proto::MountPropagation::PropagationPrivate) => Propagation::RPrivate,
        Ok(proto::MountPropagation::PropagationHostToContainer) => Propagation::RSlave,
        Ok(proto::MountPropagation::PropagationBidirectional) => Propagation::RShared,
        Err(_) => {
            return Err(invalid(
                field("propagation"),
                format!("unknown propagation {}", m.propagation),
            ))
        }
    };
    if m.recursive_read_only && (!m.readonly || propagation != Propagation::RPrivate) {
        return Err(invalid(
            field("recursive_read_only"),
            "requires readonly and private propagation",
        ));
    }
    Ok(Bind {
        source: PathBuf::from(&m.host_path),
        destination,
        readonly: m.readonly,
        recursive_readonly: m.recursive_read_only,
        propagation,
        idmap,
        flags,
        overlay: None,
    })
}

/// An image volume (CRI `Mount.image`, the OCI volume source): the pulled
/// image's layers at `image_sub_path`, read-only — a bind of the one layer
/// that has it, or a read-only overlay of those that do. Whiteouts of the
/// sub path itself in upper layers are not honoured (overlayfs applies
/// them below it). Not in a pod with its own user namespace (the layers
/// would need idmapping).
fn image_volume(
    i: usize,
    m: &proto::Mount,
    image: &str,
    destination: PathBuf,
    pod: &PodContext<'_>,
    image_layers: ImageLayersLookup<'_>,
) -> Result<Bind, SpecError> {
    let field = |name: &str| format!("config.mounts[{i}].{name}");
    if pod.user_ns.is_some() {
        return Err(unsupported(
            field("image"),
            "image volumes in a pod with its own user namespace",
        ));
    }
    let sub = m.image_sub_path.trim_start_matches('/');
    let sub = if sub.is_empty() {
        PathBuf::new()
    } else {
        let p = clean_absolute(&field("image_sub_path"), &format!("/{sub}"))?;
        p.strip_prefix("/").map(Path::to_path_buf).unwrap_or(p)
    };
    let lowers = image_layers(image, &sub).map_err(|e| invalid(field("image"), e))?;
    // overlayfs' lowerdir list is split on ':' (and options on ',').
    if let Some(p) = lowers.iter().find(|p| {
        p.as_os_str()
            .to_str()
            .is_none_or(|s| s.contains([',', ':']))
    }) {
        return Err(unsupported(
            field("image"),
            format!("a layer path with ',' or ':' ({})", p.display()),
        ));
    }
    if lowers.is_empty() {
        return Err(invalid(
            field("image_sub_path"),
            format!("{:?} is not a directory in image {image}", m.image_sub_path),
        ));
    }
    let (source, overlay) = match lowers.len() {
        1 => (lowers[0].clone(), None),
        _ => (PathBuf::new(), Some(lowers)),
    };
    Ok(Bind {
        source,
        destination,
        readonly: true,
        recursive_readonly: false,
        propagation: Propagation::RPrivate,
        idmap: false,
        flags: Vec::new(),
        overlay,
    })
}

/// The image's `Volumes` that no CRI mount covers (same destination, as
/// containerd decides), each with its directory under the container's
/// image-store directory (`<upperdir>/../volumes/<n>`): CreateContainer
/// fills each with the image's content there ([`crate::image::volumes`])
/// and they are bound read-write. A path that is not absolute, or has
/// `..`, is refused.
pub fn image_volumes(
    image: &crate::image::rootfs::ImageConfig,
    req: &proto::ContainerConfig,
    rootfs: &berth_core::config::OverlayRootfs,
) -> Result<Vec<(PathBuf, PathBuf)>, SpecError> {
    let base = rootfs
        .upperdir
        .parent()
        .unwrap_or(Path::new("/"))
        .join("volumes");
    let taken: Vec<PathBuf> = req
        .mounts
        .iter()
        .filter_map(|m| clean_absolute("", &m.container_path).ok())
        .collect();
    let mut out = Vec::new();
    for (i, v) in image.volumes.iter().enumerate() {
        let dest = clean_absolute(&format!("image.config.Volumes[{v:?}]"), v)?;
        if dest == Path::new("/") || taken.contains(&dest) {
            continue;
        }
        out.push((dest, base.join(i.to_string())));
    }
    Ok(out)
}

/// The pod's files and `/dev/shm`, for destinations the request does not
/// mount itself (kubelet mounts its own `/etc/hosts` for most pods).
/// As containerd's `linuxContainerMounts`: the files are read-write unless
/// the rootfs is read-only; `/dev/shm` is always read-write, the host's for
/// `hostIPC` pods.
fn pod_binds(pod: &PodContext<'_>, readonly_rootfs: bool, taken: &[PathBuf]) -> Vec<Bind> {
    let shm: Option<&Path> = match (pod.shm, pod.ipc_ns) {
        (Some(dir), _) => Some(dir),
        (None, None) => Some(Path::new("/dev/shm")),
        (None, Some(_)) => None,
    };
    let files = [
        ("/etc/hostname", Some(pod.hostname_file), readonly_rootfs),
        ("/etc/hosts", Some(pod.hosts), readonly_rootfs),
        ("/etc/resolv.conf", Some(pod.resolv_conf), readonly_rootfs),
        ("/dev/shm", shm, false),
    ];
    files
        .into_iter()
        .filter_map(|(dest, source, readonly)| {
            let destination = PathBuf::from(dest);
            (!taken.contains(&destination)).then_some(())?;
            Some(Bind {
                source: source?.to_path_buf(),
                destination,
                readonly,
                recursive_readonly: false,
                propagation: Propagation::RPrivate,
                idmap: false,
                flags: Vec::new(),
                overlay: None,
            })
        })
        .collect()
}

/// All mounts, in containerd's layout: runtime-core's defaults (`/proc`,
/// `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys`) except those a
/// bind replaces (and everything under `/dev` when `/dev` itself is
/// bound), then the request's and the pod's binds sorted by depth (stable,
/// so the request's order is kept at equal depth). A request mount on a
/// pod file's destination replaces the pod file.
///
/// A privileged container gets `/sys` read-write (CRI: "Any sysfs and
/// procfs mounts are mounted RW").
///
/// The root's propagation follows containerd: `rslave` when a mount is
/// `HOST_TO_CONTAINER` (so host mounts reach it), `rshared` when one is
/// `BIDIRECTIONAL`. containerd also checks that the host source is a shared
/// (or slave) mount; that needs the host's mount table and is not done
/// here.
pub(super) fn mounts(
    req: &proto::ContainerConfig,
    pod: &PodContext<'_>,
    readonly_rootfs: bool,
    privileged: bool,
    volumes: Vec<(PathBuf, PathBuf)>,
    image_layers: ImageLayersLookup<'_>,
    cgroup_rel: &Path,
) -> Result<Planned, SpecError> {
    let mut binds = req
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| cri_bind(i, m, pod, image_layers))
        .collect::<Result<Vec<_>, _>>()?;
    binds.extend(volumes.into_iter().map(|(destination, source)| Bind {
        source,
        destination,
        readonly: false,
        recursive_readonly: false,
        propagation: Propagation::RPrivate,
        // Filled with uid 0 files: idmapped like the layers they come from.
        idmap: pod.user_ns.is_some(),
        flags: Vec::new(),
        overlay: None,
    }));
    let taken: Vec<PathBuf> = binds.iter().map(|b| b.destination.clone()).collect();
    binds.extend(pod_binds(pod, readonly_rootfs, &taken));
    binds.sort_by_key(|b| depth(&b.destination));

    let rootfs_propagation = if binds.iter().any(|b| b.propagation == Propagation::RShared) {
        Propagation::RShared
    } else if binds.iter().any(|b| b.propagation == Propagation::RSlave) {
        Propagation::RSlave
    } else {
        Propagation::RPrivate
    };

    let bound: Vec<&Path> = binds.iter().map(|b| b.destination.as_path()).collect();
    let dev_bound = bound.contains(&Path::new("/dev"));
    let mut out: Vec<Mount> = Config::default_mounts()
        .into_iter()
        .filter(|m| !bound.contains(&m.destination.as_path()))
        .filter(|m| !(dev_bound && m.destination.starts_with("/dev")))
        .collect();
    if privileged {
        for m in &mut out {
            if matches!(&m.kind, MountKind::Fs { fstype } if fstype == "sysfs") {
                m.flags.retain(|f| *f != MountFlag::ReadOnly);
            }
        }
    }
    // The container's own cgroup at /sys/fs/cgroup, read-only unless
    // privileged (what JVMs and Go runtimes read their limits from), as
    // runc and containerd give it — unless the request mounts something
    // there itself.
    let sys_kept = out.iter().any(|m| m.destination == Path::new("/sys"));
    let cgroup_taken = bound
        .iter()
        .any(|b| b.starts_with("/sys/fs/cgroup") || Path::new("/sys/fs/cgroup").starts_with(b));
    let mut cgroup_binds = Vec::new();
    match (&pod.cgroup_view, sys_kept && !cgroup_taken) {
        (Some(super::CgroupView::V2), true) => {
            let mut opts = vec!["nosuid", "noexec", "nodev", "relatime"];
            if !privileged {
                opts.push("ro");
            }
            // Mounted inside the container's cgroup namespace: its root
            // is the container's cgroup.
            out.push(Mount::fs("cgroup2", "/sys/fs/cgroup", &opts));
        }
        (Some(super::CgroupView::V1 { root, controllers }), true) => {
            out.push(Mount::fs(
                "tmpfs",
                "/sys/fs/cgroup",
                &["nosuid", "noexec", "nodev", "mode=755", "size=64k"],
            ));
            // Each controller: the container's own directory there.
            for c in controllers {
                cgroup_binds.push(Bind {
                    source: root
                        .join(c)
                        .join(cgroup_rel.strip_prefix("/").unwrap_or(cgroup_rel)),
                    destination: Path::new("/sys/fs/cgroup").join(c),
                    readonly: !privileged,
                    recursive_readonly: false,
                    propagation: Propagation::RPrivate,
                    idmap: false,
                    flags: vec!["nosuid", "noexec", "nodev"],
                    overlay: None,
                });
            }
        }
        _ => {}
    }
    out.extend(cgroup_binds.into_iter().map(Bind::into_mount));
    out.extend(binds.into_iter().map(Bind::into_mount));
    Ok(Planned {
        mounts: out,
        rootfs_propagation,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fixture;
    use super::*;

    fn cri_mount(container: &str, host: &str) -> proto::Mount {
        proto::Mount {
            container_path: container.into(),
            host_path: host.into(),
            ..Default::default()
        }
    }

    fn mount_at(f: &Fixture, dest: &str) -> Option<Mount> {
        f.spec()
            .config
            .mounts
            .into_iter()
            .find(|m| m.destination == Path::new(dest))
    }

    fn destinations(f: &Fixture) -> Vec<String> {
        f.spec()
            .config
            .mounts
            .iter()
            .map(|m| m.destination.display().to_string())
            .collect()
    }

    #[test]
    fn base_has_defaults_then_pod_files_and_shm() {
        let f = Fixture::new();
        assert_eq!(
            destinations(&f),
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/mqueue",
                "/sys",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm",
            ]
        );
        let hosts = mount_at(&f, "/etc/hosts").unwrap();
        assert_eq!(
            hosts.source.as_deref(),
            Some(Path::new("/run/berth/pods/p1/hosts"))
        );
        assert_eq!(hosts.kind, MountKind::Bind { recursive: true });
        assert!(hosts.flags.is_empty(), "pod files are read-write");
        let shm = mount_at(&f, "/dev/shm").unwrap();
        assert_eq!(
            shm.source.as_deref(),
            Some(Path::new("/run/berth/pods/p1/ns/shm"))
        );
        assert_eq!(f.spec().config.rootfs_propagation, Propagation::RPrivate);
    }

    #[test]
    fn readonly_rootfs_makes_pod_files_readonly_but_not_shm() {
        let mut f = Fixture::new();
        f.sc().readonly_rootfs = true;
        assert_eq!(
            mount_at(&f, "/etc/resolv.conf").unwrap().flags,
            vec![MountFlag::ReadOnly]
        );
        assert!(mount_at(&f, "/dev/shm").unwrap().flags.is_empty());
    }

    #[test]
    fn host_ipc_binds_the_hosts_shm() {
        let mut f = Fixture::new();
        f.ipc_ns = None;
        f.shm = None;
        assert_eq!(
            mount_at(&f, "/dev/shm").unwrap().source.as_deref(),
            Some(Path::new("/dev/shm"))
        );
    }

    #[test]
    fn readonly_mount() {
        let mut f = Fixture::new();
        let mut m = cri_mount("/data", "/var/lib/kubelet/pods/u/volumes/v");
        m.readonly = true;
        f.req.mounts = vec![m];
        let got = mount_at(&f, "/data").unwrap();
        assert_eq!(got.flags, vec![MountFlag::ReadOnly]);
        assert_eq!(got.propagation, Some(Propagation::RPrivate));
        assert!(!got.recursive_readonly);
    }

    #[test]
    fn recursive_readonly_mount() {
        let mut f = Fixture::new();
        let mut m = cri_mount("/data", "/v");
        m.readonly = true;
        m.recursive_read_only = true;
        f.req.mounts = vec![m];
        assert!(mount_at(&f, "/data").unwrap().recursive_readonly);
    }

    #[test]
    fn recursive_readonly_needs_readonly() {
        let mut f = Fixture::new();
        let mut m = cri_mount("/data", "/v");
        m.recursive_read_only = true;
        f.req.mounts = vec![m];
        assert_eq!(f.err_field(), "config.mounts[0].recursive_read_only");
    }

    #[test]
    fn host_to_container_is_rslave_with_rslave_root() {
        let mut f = Fixture::new();
        let mut m = cri_mount("/data", "/v");
        m.propagation = proto::MountPropagation::PropagationHostToContainer as i32;
        f.req.mounts = vec![m];
        assert_eq!(
            mount_at(&f, "/data").unwrap().propagation,
            Some(Propagation::RSlave)
        );
        assert_eq!(f.spec().config.rootfs_propagation, Propagation::RSlave);
    }

    #[test]
    fn bidirectional_is_rshared_with_rshared_root() {
        let mut f = Fixture::new();
        let mut m = cri_mount("/data", "/v");
        m.propagation = proto::MountPropagation::PropagationBidirectional as i32;
        let mut s = cri_mount("/slave", "/w");
        s.propagation = proto::MountPropagation::PropagationHostToContainer as i32;
        f.req.mounts = vec![m, s];
        assert_eq!(
            mount_at(&f, "/data").unwrap().propagation,
            Some(Propagation::RShared)
        );
        assert_eq!(f.spec().config.rootfs_propagation, Propagation::RShared);
    }

    #[test]
    fn escaping_container_path_names_the_field() {
        let mut f = Fixture::new();
        f.req.mounts = vec![cri_mount("/data", "/v"), cri_mount("/a/../../etc", "/w")];
        assert_eq!(f.err_field(), "config.mounts[1].container_path");
    }

    #[test]
    fn relative_container_path_names_the_field() {
        let mut f = Fixture::new();
        f.req.mounts = vec![cri_mount("data", "/v")];
        assert_eq!(f.err_field(), "config.mounts[0].container_path");
    }

    #[test]
    fn relative_host_path_names_the_field() {
        let mut f = Fixture::new();
        f.req.mounts = vec![cri_mount("/data", "v")];
        assert_eq!(f.err_field(), "config.mounts[0].host_path");
    }

    #[test]
    fn request_etc_hosts_replaces_the_pods() {
        let mut f = Fixture::new();
        f.req.mounts = vec![cri_mount(
            "/etc/hosts/",
            "/var/lib/kubelet/pods/u/etc-hosts",
        )];
        let at_hosts: Vec<_> = f
            .spec()
            .config
            .mounts
            .into_iter()
            .filter(|m| m.destination == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(at_hosts.len(), 1);
        assert_eq!(
            at_hosts[0].source.as_deref(),
            Some(Path::new("/var/lib/kubelet/pods/u/etc-hosts"))
        );
    }

    #[test]
    fn binds_are_sorted_parents_first() {
        let mut f = Fixture::new();
        f.req.mounts = vec![
            cri_mount("/a/b/c", "/x"),
            cri_mount("/a", "/y"),
            cri_mount("/z", "/w"),
        ];
        let d = destinations(&f);
        let pos = |p: &str| d.iter().position(|x| x == p).unwrap();
        assert!(pos("/a") < pos("/a/b/c"));
        assert!(pos("/z") < pos("/a/b/c"));
        assert!(
            pos("/a") < pos("/z"),
            "equal depth keeps the request's order"
        );
    }

    #[test]
    fn binding_dev_drops_the_default_dev_mounts() {
        let mut f = Fixture::new();
        f.req.mounts = vec![cri_mount("/dev", "/dev")];
        let d = destinations(&f);
        assert!(
            !d.iter().any(|p| p == "/dev/pts" || p == "/dev/mqueue"),
            "{d:?}"
        );
        assert_eq!(d.iter().filter(|p| *p == "/dev").count(), 1);
    }

    #[test]
    fn privileged_gets_a_writable_sys() {
        let mut f = Fixture::new();
        f.sc().privileged = true;
        assert!(!mount_at(&f, "/sys")
            .unwrap()
            .flags
            .contains(&MountFlag::ReadOnly));
    }

    #[test]
    fn unprivileged_sys_is_readonly() {
        let f = Fixture::new();
        assert!(mount_at(&f, "/sys")
            .unwrap()
            .flags
            .contains(&MountFlag::ReadOnly));
    }

    #[test]
    fn mount_options_become_bind_flags() {
        let mut f = Fixture::new();
        f.req.mounts = vec![proto::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            mount_options: vec!["noexec".into(), "nosuid".into(), "noexec".into()],
            ..Default::default()
        }];
        let m = f
            .spec()
            .config
            .mounts
            .into_iter()
            .find(|m| m.destination == Path::new("/data"))
            .unwrap();
        let flags = m.ms_flags();
        assert_ne!(flags & nix::libc::MS_NOEXEC, 0);
        assert_ne!(flags & nix::libc::MS_NOSUID, 0);
        assert_eq!(flags & nix::libc::MS_NODEV, 0);
        f.req.mounts[0].mount_options = vec!["ro".into()];
        let e = f.run().unwrap_err();
        assert!(
            e.to_string().contains("config.mounts[0].mount_options[0]"),
            "{e}"
        );
    }

    fn image_mount(image: &str, sub: &str) -> proto::Mount {
        proto::Mount {
            container_path: "/img".into(),
            image: Some(proto::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            image_sub_path: sub.into(),
            ..Default::default()
        }
    }

    #[test]
    fn image_volumes_are_read_only_binds_or_overlays() {
        let mut f = Fixture::new();
        f.req.mounts = vec![image_mount("vol:1", "")];
        let m = mount_at(&f, "/img").unwrap();
        assert!(m.is_bind());
        assert_eq!(
            m.source.as_deref(),
            Some(Path::new("/var/lib/berth/layers/v1/fs"))
        );
        assert_ne!(m.ms_flags() & nix::libc::MS_RDONLY, 0);

        f.req.mounts = vec![image_mount("vol:2", "/etc/conf")];
        let m = mount_at(&f, "/img").unwrap();
        let MountKind::Overlay { lowerdirs } = &m.kind else {
            panic!("not an overlay: {m:?}");
        };
        assert_eq!(
            lowerdirs,
            &[
                Path::new("/var/lib/berth/layers/v2b/fs/etc/conf"),
                Path::new("/var/lib/berth/layers/v2a/fs/etc/conf")
            ]
        );
        assert_eq!(m.data, "");
        assert_ne!(m.ms_flags() & nix::libc::MS_RDONLY, 0);

        for (image, sub, field) in [
            ("vol:9", "", "config.mounts[0].image"),
            ("vol:1", "missing", "config.mounts[0].image_sub_path"),
            ("vol:1", "a/../../x", "config.mounts[0].image_sub_path"),
        ] {
            f.req.mounts = vec![image_mount(image, sub)];
            let e = f.run().unwrap_err();
            assert!(e.to_string().contains(field), "{image} {sub}: {e}");
        }
    }

    #[test]
    fn the_containers_cgroup_at_sys_fs_cgroup() {
        let mut f = Fixture::new();
        f.cgroup_view = Some(super::super::CgroupView::V1 {
            root: "/sys/fs/cgroup".into(),
            controllers: vec!["memory".into(), "cpu".into()],
        });
        let tmpfs = mount_at(&f, "/sys/fs/cgroup").unwrap();
        assert!(matches!(&tmpfs.kind, MountKind::Fs { fstype } if fstype == "tmpfs"));
        let mem = mount_at(&f, "/sys/fs/cgroup/memory").unwrap();
        assert_eq!(
            mem.source.as_deref(),
            Some(Path::new(
                "/sys/fs/cgroup/memory/kubepods/burstable/pod1234/c1"
            ))
        );
        assert_ne!(mem.ms_flags() & nix::libc::MS_RDONLY, 0, "read-only");
        let d = destinations(&f);
        let pos = |p: &str| d.iter().position(|x| x == p).unwrap();
        assert!(
            pos("/sys") < pos("/sys/fs/cgroup")
                && pos("/sys/fs/cgroup") < pos("/sys/fs/cgroup/cpu")
        );
        f.sc().privileged = true;
        assert_eq!(
            mount_at(&f, "/sys/fs/cgroup/memory").unwrap().ms_flags() & nix::libc::MS_RDONLY,
            0
        );

        f.sc().privileged = false;
        f.cgroup_view = Some(super::super::CgroupView::V2);
        let cg2 = mount_at(&f, "/sys/fs/cgroup").unwrap();
        assert!(matches!(&cg2.kind, MountKind::Fs { fstype } if fstype == "cgroup2"));
        assert!(f
            .spec()
            .config
            .namespaces
            .iter()
            .any(|n| n.kind == berth_core::config::NamespaceKind::Cgroup && n.path.is_none()));
        // A request's own /sys/fs/cgroup mount wins.
        f.req.mounts = vec![cri_mount("/sys/fs/cgroup", "/sys/fs/cgroup")];
        assert!(mount_at(&f, "/sys/fs/cgroup").unwrap().is_bind());
    }
}
