//! overlayfs mounts of many layers.
//!
//! `mount(2)` copies at most one page of option data, and `lowerdir=` with
//! the image store's absolute layer paths (about 90 bytes each) outgrows it
//! past about 40 layers. When the plain options do not fit, every directory
//! is opened `O_PATH` first and named by its fd number, which the kernel
//! resolves relative to `/proc/self/fd` (the mounting process stands there
//! for the call): about 4 bytes a layer, so overlayfs's own limit of 500
//! layers fits. containerd does the same with paths relative to its
//! snapshot directory (`mount.compactLowerdirOption`).
//!
//! Not `fsconfig(FSCONFIG_SET_STRING, "lowerdir+")`: that needs Linux 6.8,
//! and the kernel then shows every absolute path in mountinfo, a 12 KiB line
//! for 128 layers that CRIU cannot read (it parses mountinfo one page-sized
//! line at a time, `criu/proc_parse.c`), so such a container could not be
//! checkpointed. The short names also keep the mount line short.
//!
//! The fd numbers are reserved when the options are prepared, but each
//! directory is opened again onto its number just before the mount: overlayfs
//! takes private clones of its layers' mounts, which the kernel allows only
//! of mounts in the caller's mount namespace (`clone_private_mount`), and
//! CRIU's restore mounts in a namespace made after the fork (an fd from
//! before it gives `EINVAL`). [`OverlayMount::mount`] only makes raw
//! syscalls on data prepared by [`OverlayMount::prepare`], so it may run
//! between `fork` and `exec`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::RootfsError;

/// The most lower layers overlayfs stacks (`OVL_MAX_STACK` in
/// `fs/overlayfs/params.h`).
pub const MAX_LAYERS: usize = 500;

/// An overlay could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// More layers than overlayfs takes.
    #[error("an overlay of {count} layers: overlayfs stacks at most {MAX_LAYERS}")]
    TooManyLayers {
        /// Lower layers asked for.
        count: usize,
    },
    /// A layer, upper or work directory could not be opened.
    #[error("open the overlay directory {path}")]
    Open {
        /// The directory.
        path: PathBuf,
        /// Kernel error.
        #[source]
        source: Errno,
    },
    /// Even named by fd, the options do not fit in what `mount(2)` copies.
    #[error("an overlay of {count} layers: its mount options take {len} bytes, more than the {limit} that mount(2) takes")]
    TooLong {
        /// Lower layers.
        count: usize,
        /// Bytes of options.
        len: usize,
        /// Bytes `mount(2)` copies (one page, with the final NUL).
        limit: usize,
    },
}

/// The writable part of an overlay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upper<'a> {
    pub upperdir: &'a Path,
    pub workdir: &'a Path,
}

/// An overlay mount with its options ready.
#[derive(Debug)]
pub(crate) struct OverlayMount {
    /// The `mount(2)` data, NUL-terminated.
    data: CString,
    /// Open directories that `data` names by fd number (none: plain paths).
    fds: Vec<OwnedFd>,
    /// Their paths, to open them again in the mounting mount namespace.
    paths: Vec<CString>,
    /// Number of lower layers.
    layers: usize,
}

/// The overlay mount failed: at which step, with the kernel's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{step}")]
pub(crate) struct MountFailed {
    pub step: &'static str,
    #[source]
    pub errno: Errno,
}

impl OverlayMount {
    /// Options for an overlay of `lowerdirs` (top first) with `upper` (none:
    /// a read-only overlay) and `extra` options. Plain paths when they fit in
    /// a page, which keeps mountinfo readable and CRIU able to remount the
    /// overlay as shown there; else each directory is opened (after any
    /// idmapped tree was moved onto it: the fd holds what the path shows
    /// now) and named by its fd.
    pub(crate) fn prepare(
        lowerdirs: &[PathBuf],
        upper: Option<Upper<'_>>,
        extra: &str,
    ) -> Result<Self, OverlayError> {
        let count = lowerdirs.len();
        if count > MAX_LAYERS {
            return Err(OverlayError::TooManyLayers { count });
        }
        let limit = page_size();
        let name = |p: &Path| p.as_os_str().as_bytes().to_vec();
        let data = options(
            lowerdirs.iter().map(|p| name(p)),
            upper.map(|u| (name(u.upperdir), name(u.workdir))),
            extra,
        );
        if data.len() < limit {
            return Ok(Self {
                data: cstring(data),
                fds: Vec::new(),
                paths: Vec::new(),
                layers: count,
            });
        }
        let open = |p: &Path| {
            open_dir(p).map_err(|source| OverlayError::Open {
                path: p.to_path_buf(),
                source,
            })
        };
        let mut dirs: Vec<&Path> = lowerdirs.iter().map(PathBuf::as_path).collect();
        if let Some(u) = upper {
            dirs.extend([u.upperdir, u.workdir]);
        }
        let fds = dirs
            .iter()
            .map(|p| open(p))
            .collect::<Result<Vec<_>, _>>()?;
        let paths = dirs.iter().map(|p| cstring(name(p))).collect();
        let num = |fd: &OwnedFd| fd.as_raw_fd().to_string().into_bytes();
        let upper_names = upper.map(|_| (num(&fds[count]), num(&fds[count + 1])));
        let data = options(fds[..count].iter().map(num), upper_names, extra);
        if data.len() >= limit {
            return Err(OverlayError::TooLong {
                count,
                len: data.len(),
                limit,
            });
        }
        Ok(Self {
            data: cstring(data),
            fds,
            paths,
            layers: count,
        })
    }

    /// Whether the directories are named by fd (too many for plain paths).
    pub(crate) fn by_fd(&self) -> bool {
        !self.fds.is_empty()
    }

    /// For error messages: the options, or the number of layers when they
    /// are named by fd.
    pub(crate) fn describe(&self) -> String {
        if self.by_fd() {
            format!("overlay of {} layers named by fd", self.layers)
        } else {
            format!("overlay ({})", self.data.to_string_lossy())
        }
    }

    /// [`Self::mount`] on `target` (a path in this process), with an error
    /// that names `shown` (the path the caller knows it by).
    pub(crate) fn mount_at(
        &self,
        target: &Path,
        shown: &Path,
        flags: libc::c_ulong,
    ) -> Result<(), RootfsError> {
        let err = |step: &str, errno| RootfsError::Mount {
            what: match step {
                "mount" => self.describe(),
                _ => format!("{}: {step}", self.describe()),
            },
            target: shown.to_path_buf(),
            source: errno,
        };
        let c_target = CString::new(target.as_os_str().as_bytes())
            .map_err(|_| err("a NUL byte in the target", Errno::EINVAL))?;
        self.mount(&c_target, flags)
            .map_err(|f| err(f.step, f.errno))
    }

    /// Mounts the overlay on `target` (an absolute path) with `MS_*`
    /// `flags`. Async-signal-safe: raw syscalls on data prepared before.
    pub(crate) fn mount(
        &self,
        target: &std::ffi::CStr,
        flags: libc::c_ulong,
    ) -> Result<(), MountFailed> {
        if !self.by_fd() {
            return raw_mount(target, flags, &self.data).map_err(|errno| MountFailed {
                step: "mount",
                errno,
            });
        }
        let fail = |step| move |errno| MountFailed { step, errno };
        for (fd, path) in self.fds.iter().zip(&self.paths) {
            raw_reopen_onto(path, fd).map_err(fail("open a layer in this mount namespace"))?;
        }
        let cwd = raw_open_dir(c".").map_err(fail("open the working directory"))?;
        raw_chdir(c"/proc/self/fd").map_err(fail("enter /proc/self/fd"))?;
        let mounted = raw_mount(target, flags, &self.data).map_err(fail("mount"));
        let back = raw_fchdir(&cwd).map_err(fail("return to the working directory"));
        mounted.and(back)
    }
}

/// `lowerdir=a:b[,upperdir=u,workdir=w][,extra]`.
fn options(
    lowers: impl Iterator<Item = Vec<u8>>,
    upper: Option<(Vec<u8>, Vec<u8>)>,
    extra: &str,
) -> Vec<u8> {
    let mut d = b"lowerdir=".to_vec();
    for (i, l) in lowers.enumerate() {
        if i > 0 {
            d.push(b':');
        }
        d.extend_from_slice(&l);
    }
    if let Some((u, w)) = upper {
        d.extend_from_slice(b",upperdir=");
        d.extend_from_slice(&u);
        d.extend_from_slice(b",workdir=");
        d.extend_from_slice(&w);
    }
    if !extra.is_empty() {
        d.push(b',');
        d.extend_from_slice(extra.as_bytes());
    }
    d
}

/// Paths with NUL bytes cannot name files; they are dropped, and the mount
/// then fails on the truncated name (config validation refuses them first).
fn cstring(mut data: Vec<u8>) -> CString {
    data.retain(|b| *b != 0);
    CString::new(data).expect("NUL bytes removed")
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(4096)
}

fn open_dir(path: &Path) -> Result<OwnedFd, Errno> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: open returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(r: libc::c_int) -> Result<libc::c_int, Errno> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

fn raw_mount(target: &std::ffi::CStr, flags: libc::c_ulong, data: &CString) -> Result<(), Errno> {
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
    .map(drop)
}

fn raw_open_dir(path: &std::ffi::CStr) -> Result<OwnedFd, Errno> {
    // SAFETY: a NUL-terminated path that outlives the call; no allocation.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: open returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` again onto `fd`'s number (so it names the directory as
/// this process's mount namespace has it). The temporary fd is closed.
fn raw_reopen_onto(path: &std::ffi::CStr, fd: &OwnedFd) -> Result<(), Errno> {
    let new = raw_open_dir(path)?;
    // SAFETY: both fds are open and ours; dup3 atomically replaces what
    // `fd`'s number refers to, and `fd` still owns (and will close) it.
    check(unsafe { libc::dup3(new.as_raw_fd(), fd.as_raw_fd(), libc::O_CLOEXEC) }).map(drop)
}

fn raw_chdir(dir: &std::ffi::CStr) -> Result<(), Errno> {
    // SAFETY: a NUL-terminated path that outlives the call.
    check(unsafe { libc::chdir(dir.as_ptr()) }).map(drop)
}

fn raw_fchdir(dir: &OwnedFd) -> Result<(), Errno> {
    // SAFETY: an fd we own, open for the duration of the call.
    check(unsafe { libc::fchdir(dir.as_raw_fd()) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| PathBuf::from(format!("/var/lib/berth/layers/{i:064}/fs")))
            .collect()
    }

    #[test]
    fn few_layers_keep_plain_paths() {
        let upper = Upper {
            upperdir: Path::new("/c/upper"),
            workdir: Path::new("/c/work"),
        };
        let m = OverlayMount::prepare(&layers(2), Some(upper), "").unwrap();
        assert!(!m.by_fd());
        let want = format!(
            "lowerdir={}:{},upperdir=/c/upper,workdir=/c/work",
            layers(2)[0].display(),
            layers(2)[1].display()
        );
        assert_eq!(m.data.to_str().unwrap(), want);
        let m = OverlayMount::prepare(&layers(1), None, "index=off").unwrap();
        assert!(m.describe().ends_with(",index=off)"), "{}", m.describe());
    }

    #[test]
    fn too_many_layers_is_refused_with_the_count() {
        let e = OverlayMount::prepare(&layers(501), None, "").unwrap_err();
        assert!(matches!(e, OverlayError::TooManyLayers { count: 501 }));
        assert!(e.to_string().contains("501 layers"), "{e}");
    }

    #[test]
    fn many_layers_are_named_by_fd() {
        // Real directories: they are opened.
        let dir = tempfile::tempdir().unwrap();
        let lowers: Vec<PathBuf> = (0..200)
            .map(|i| {
                let p = dir.path().join(format!("{i:064}"));
                std::fs::create_dir(&p).unwrap();
                p
            })
            .collect();
        let m = OverlayMount::prepare(&lowers, None, "").unwrap();
        assert!(m.by_fd());
        assert_eq!(m.fds.len(), 200);
        let data = m.data.to_str().unwrap();
        let first = m.fds[0].as_raw_fd();
        assert!(data.starts_with(&format!("lowerdir={first}:")), "{data}");
        assert!(data.len() < page_size());

        let missing = dir.path().join("missing");
        let mut lowers = lowers;
        lowers.push(missing.clone());
        let e = OverlayMount::prepare(&lowers, None, "").unwrap_err();
        assert!(matches!(&e, OverlayError::Open { path, .. } if *path == missing));
    }
}
