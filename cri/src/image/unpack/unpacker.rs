//! The unpacker proper: one tar entry at a time, each resolved beneath the root fd.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::XattrFlags;
use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Stat, Timestamps, Uid};
use rustix::io::Errno;

use super::dir_times::DirTimes;
use super::meta::{read_meta, set_fd_meta, set_meta_at, Meta};
use super::path::{display_path, split_path};
use super::stream::Progress;
use super::xattrs::Target;
use super::{create_err, io_err, meta_err, path_error, unsafe_path, xattr_err};
use super::{LayerUsage, UnpackError, Unpacked};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// AUFS metadata (`.wh..wh.plnk`, `.wh..wh.aufs`) shares this prefix; only `.opq` means
/// anything to overlayfs, the rest is skipped as containerd does.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
/// Set by berth itself from the OCI opaque marker, never taken from a layer's xattrs.
pub(super) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Where an entry goes: its final name inside an open parent directory.
#[derive(Clone, Copy)]
pub(super) struct At<'a> {
    pub(super) dir: &'a OwnedFd,
    pub(super) name: &'a OsStr,
    /// The whole path beneath the root, `name` last.
    pub(super) comps: &'a [&'a OsStr],
    pub(super) label: &'a str,
}

/// What a name inside a directory turned out to be, looked up without following symlinks.
enum Child {
    Dir(OwnedFd),
    Missing,
    Symlink,
    NotDir,
}

pub(super) struct Unpacker<'a> {
    root: OwnedFd,
    usage: LayerUsage,
    /// Directory times, applied after the last entry since adding children changes them.
    dir_times: DirTimes,
    buf: Vec<u8>,
    progress: &'a Progress,
}

impl<'a> Unpacker<'a> {
    pub(super) fn new(root: OwnedFd, progress: &'a Progress) -> Self {
        Unpacker {
            root,
            usage: LayerUsage::default(),
            dir_times: DirTimes::new(),
            buf: vec![0; 128 * 1024],
            progress,
        }
    }

    /// Sets the directory times (after the last entry) and says what was unpacked.
    pub(super) fn finish(mut self) -> Result<Unpacked, UnpackError> {
        let dir_times = std::mem::replace(&mut self.dir_times, DirTimes::new());
        self.apply_dir_times(&dir_times)?;
        Ok(Unpacked {
            usage: self.usage,
            peak_tracked_dirs: dir_times.peak(),
        })
    }

    pub(super) fn read_error(&self, label: &str, source: io::Error) -> UnpackError {
        if self.progress.failed() {
            UnpackError::Decompress(source)
        } else {
            UnpackError::ReadArchive {
                entry: label.to_owned(),
                source,
            }
        }
    }

    pub(super) fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        label: &str,
    ) -> Result<(), UnpackError> {
        use tar::EntryType as T;
        let raw_path = entry.path_bytes().into_owned();
        let mut kind = entry.header().entry_type();
        // Pre-POSIX tars mark directories with a trailing slash on a type-NUL entry.
        if entry.header().as_old().linkflag[0] == 0 && raw_path.ends_with(b"/") {
            kind = T::Directory;
        }
        let handled = matches!(
            kind,
            T::Regular | T::Continuous | T::GNUSparse | T::Directory | T::Symlink | T::Link
        ) || matches!(kind, T::Char | T::Block | T::Fifo);
        if !handled {
            // PAX global headers, volume labels and unknown types carry no file.
            return Ok(());
        }
        let comps = split_path(&raw_path).map_err(|e| path_error(label, "", e))?;
        let Some((&name, parents)) = comps.split_last() else {
            return Ok(()); // "." or "./": the layer root itself, which is `dest`.
        };
        let target = match kind {
            T::Directory => Target::Dir,
            T::Regular | T::Continuous | T::GNUSparse => Target::File,
            _ => Target::Other,
        };
        let meta = read_meta(entry, label, target)?;
        let name_bytes = name.as_bytes();
        if name_bytes.starts_with(WHITEOUT_META_PREFIX) {
            if name_bytes == WHITEOUT_OPAQUE {
                let dir = self.open_dir(parents, true, label)?;
                rfs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(xattr_err(label, OPAQUE_XATTR))?;
            }
            return Ok(());
        }
        let dir = self.open_dir(parents, true, label)?;
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX) {
            if matches!(hidden, b"" | b"." | b"..") {
                return Err(unsafe_path(label, "whiteout of an invalid name".into()));
            }
            let hidden = OsStr::from_bytes(hidden);
            let hidden_comps: Vec<&OsStr> = parents.iter().copied().chain([hidden]).collect();
            let at = At {
                dir: &dir,
                name: hidden,
                comps: &hidden_comps,
                label,
            };
            return self.whiteout(at);
        }
        let at = At {
            dir: &dir,
            name,
            comps: &comps,
            label,
        };
        match kind {
            T::Directory => self.directory(at, &meta),
            T::Symlink => self.symlink(at, &link_target(entry), &meta),
            T::Link => self.hard_link(at, &link_target(entry)),
            T::Char | T::Block | T::Fifo => self.node(at, kind, entry.header(), &meta),
            _ => self.file(at, entry, &meta),
        }
    }

    /// Opens the directory `comps` beneath the root, never following a symlink; missing
    /// directories are created 0755 root:root when `create`, else reported as `Io` ENOENT.
    fn open_dir(
        &mut self,
        comps: &[&OsStr],
        create: bool,
        label: &str,
    ) -> Result<OwnedFd, UnpackError> {
        let mut cur = self
            .root
            .try_clone()
            .map_err(io_err(label, "duplicating the root fd"))?;
        for (i, &comp) in comps.iter().enumerate() {
            let shown = || display_path(&comps[..=i]);
            cur = match open_child(&cur, comp)
                .map_err(io_err(label, "opening a parent directory"))?
            {
                Child::Dir(fd) => fd,
                Child::Missing if create => {
                    self.mkdir_implicit(&cur, comp).map_err(create_err(label))?
                }
                Child::Missing => {
                    return Err(UnpackError::Io {
                        entry: label.to_owned(),
                        step: "opening a parent directory",
                        source: io::Error::from(Errno::NOENT),
                    })
                }
                Child::Symlink => {
                    return Err(unsafe_path(
                        label,
                        format!("parent {} is a symlink", shown()),
                    ))
                }
                Child::NotDir => {
                    return Err(unsafe_path(
                        label,
                        format!("parent {} is not a directory", shown()),
                    ))
                }
            };
        }
        Ok(cur)
    }

    fn mkdir_implicit(&mut self, parent: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
        rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700))?;
        let fd = open_dir_nofollow(parent, name)?;
        // Explicitly, so neither the umask nor a setgid parent decides.
        rfs::fchown(&fd, Some(Uid::ROOT), Some(Gid::ROOT))?;
        rfs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
        self.add(&rfs::fstat(&fd)?);
        Ok(fd)
    }

    /// Makes room for an entry: removes whatever is at `at` unless it is a directory and
    /// `keep_dir`. Returns whether a directory was kept.
    fn clear(&mut self, at: At<'_>, keep_dir: bool) -> Result<bool, UnpackError> {
        let st = match rfs::statat(at.dir, at.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(io_err(at.label, "inspecting the existing file")(e)),
        };
        let is_dir = is_type(&st, FileType::Directory);
        if keep_dir && is_dir {
            return Ok(true);
        }
        if is_dir {
            // Replaced with all it held: no times left to set beneath it.
            self.dir_times.forget(at.comps);
        }
        self.remove_all(at.dir, at.name, &st)
            .map_err(|e| UnpackError::Remove {
                entry: at.label.to_owned(),
                source: e.into(),
            })?;
        Ok(false)
    }

    /// Removes `name` (recursively if a directory) without following symlinks. Depth is
    /// bounded by `PATH_MAX`, since everything here was created from entry paths.
    fn remove_all(&mut self, dir: &OwnedFd, name: &OsStr, st: &Stat) -> Result<(), Errno> {
        if is_type(st, FileType::Directory) {
            let child = open_dir_nofollow(dir, name)?;
            let mut names = Vec::new();
            for ent in rfs::Dir::read_from(&child)? {
                let ent = ent?;
                let n = ent.file_name();
                if n != c"." && n != c".." {
                    names.push(n.to_owned());
                }
            }
            for n in &names {
                let st = rfs::statat(&child, n.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                self.remove_all(&child, OsStr::from_bytes(n.as_bytes()), &st)?;
            }
            rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
        } else {
            rfs::unlinkat(dir, name, AtFlags::empty())?;
        }
        if is_type(st, FileType::Directory) || st.st_nlink <= 1 {
            self.usage.bytes = self.usage.bytes.saturating_sub(allocated(st));
            self.usage.inodes = self.usage.inodes.saturating_sub(1);
        }
        Ok(())
    }

    fn add(&mut self, st: &Stat) {
        self.usage.bytes = self.usage.bytes.saturating_add(allocated(st));
        self.usage.inodes = self.usage.inodes.saturating_add(1);
    }

    fn add_at(&mut self, at: At<'_>) -> Result<(), UnpackError> {
        let st = rfs::statat(at.dir, at.name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err(at.label, "stat after creating"))?;
        self.add(&st);
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        at: At<'_>,
        entry: &mut tar::Entry<'_, R>,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        self.clear(at, false)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(at.dir, at.name, flags, Mode::from_raw_mode(0o600))
            .map_err(create_err(at.label))?;
        let mut file = File::from(fd);
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(at.label, e)),
            };
            let chunk = self.buf.get(..n).unwrap_or_default();
            file.write_all(chunk)
                .map_err(io_err(at.label, "writing contents"))?;
        }
        set_fd_meta(&file, meta, at.label)?;
        rfs::futimens(&file, &meta.times).map_err(meta_err(at.label, "times"))?;
        let st = rfs::fstat(&file).map_err(io_err(at.label, "stat after creating"))?;
        self.add(&st);
        Ok(())
    }

    fn directory(&mut self, at: At<'_>, meta: &Meta) -> Result<(), UnpackError> {
        let existed = self.clear(at, true)?;
        if !existed {
            rfs::mkdirat(at.dir, at.name, Mode::from_raw_mode(0o700))
                .map_err(create_err(at.label))?;
        }
        let fd = open_dir_nofollow(at.dir, at.name)
            .map_err(io_err(at.label, "opening the directory"))?;
        set_fd_meta(&fd, meta, at.label)?;
        if !existed {
            self.add(&rfs::fstat(&fd).map_err(io_err(at.label, "stat after creating"))?);
        }
        self.dir_times.record(at.comps, Timestamps { ..meta.times });
        Ok(())
    }

    fn symlink(&mut self, at: At<'_>, target: &[u8], meta: &Meta) -> Result<(), UnpackError> {
        self.clear(at, false)?;
        // The target is stored as written and never resolved here.
        rfs::symlinkat(OsStr::from_bytes(target), at.dir, at.name).map_err(create_err(at.label))?;
        set_meta_at(at, meta, false)?;
        self.add_at(at)
    }

    /// A hard link's target is validated like an entry path and its parent opened the same
    /// way; `linkat` without `AT_SYMLINK_FOLLOW` links a symlink itself, never its target.
    /// The inode already carries its metadata, so none is applied.
    fn hard_link(&mut self, at: At<'_>, target: &[u8]) -> Result<(), UnpackError> {
        let target_comps =
            split_path(target).map_err(|e| path_error(at.label, "hard link target: ", e))?;
        let Some((&target_name, target_parents)) = target_comps.split_last() else {
            return Err(unsafe_path(at.label, "hard link to the layer root".into()));
        };
        if target_comps == at.comps {
            return Ok(()); // A link to itself: the file is already there.
        }
        let target_dir = self.open_dir(target_parents, false, at.label)?;
        self.clear(at, false)?;
        rfs::linkat(&target_dir, target_name, at.dir, at.name, AtFlags::empty())
            .map_err(create_err(at.label))
    }

    fn node(
        &mut self,
        at: At<'_>,
        kind: tar::EntryType,
        header: &tar::Header,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let bad = |field: &'static str| {
            move |e: io::Error| UnpackError::InvalidHeader {
                entry: at.label.to_owned(),
                field,
                reason: e.to_string(),
            }
        };
        let file_type = match kind {
            tar::EntryType::Char => FileType::CharacterDevice,
            tar::EntryType::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        // A FIFO has no device number; writers often leave the fields empty.
        let (major, minor) = if file_type == FileType::Fifo {
            (0, 0)
        } else {
            let major = header.device_major().map_err(bad("device major"))?;
            let minor = header.device_minor().map_err(bad("device minor"))?;
            (major.unwrap_or(0), minor.unwrap_or(0))
        };
        self.clear(at, false)?;
        let dev = rfs::makedev(major, minor);
        rfs::mknodat(at.dir, at.name, file_type, Mode::empty(), dev)
            .map_err(create_err(at.label))?;
        set_meta_at(at, meta, true)?;
        self.add_at(at)
    }

    /// `.wh.NAME` becomes the overlayfs whiteout for NAME: a 0:0 character device.
    fn whiteout(&mut self, at: At<'_>) -> Result<(), UnpackError> {
        self.clear(at, false)?;
        let (whiteout, dev) = (FileType::CharacterDevice, rfs::makedev(0, 0));
        rfs::mknodat(at.dir, at.name, whiteout, Mode::empty(), dev)
            .map_err(create_err(at.label))?;
        rfs::chownat(
            at.dir,
            at.name,
            Some(Uid::ROOT),
            Some(Gid::ROOT),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(meta_err(at.label, "owner"))?;
        self.add_at(at)
    }

    /// Sets directory mtimes last. A directory a later entry replaced (or turned into a
    /// symlink) is skipped: there is nothing of it left to stamp.
    fn apply_dir_times(&mut self, dir_times: &DirTimes) -> Result<(), UnpackError> {
        dir_times.visit(|comps, times| {
            let label = display_path(comps);
            match self.open_dir(comps, false, &label) {
                Ok(fd) => rfs::futimens(&fd, times).map_err(meta_err(&label, "times")),
                Err(UnpackError::UnsafePath { .. }) => Ok(()),
                Err(UnpackError::Io { source, .. })
                    if source.raw_os_error() == Some(Errno::NOENT.raw_os_error()) =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
    }
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>) -> Vec<u8> {
    entry
        .link_name_bytes()
        .map(|t| t.into_owned())
        .unwrap_or_default()
}

fn open_dir_nofollow(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    // NONBLOCK: should the name be a FIFO after all, fail rather than hang.
    let flags =
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    rfs::openat(dir, name, flags, Mode::empty())
}

fn open_child(dir: &OwnedFd, name: &OsStr) -> Result<Child, Errno> {
    match open_dir_nofollow(dir, name) {
        Ok(fd) => Ok(Child::Dir(fd)),
        Err(Errno::NOENT) => Ok(Child::Missing),
        Err(Errno::LOOP | Errno::NOTDIR) => {
            let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            Ok(if is_type(&st, FileType::Symlink) {
                Child::Symlink
            } else {
                Child::NotDir
            })
        }
        Err(e) => Err(e),
    }
}

fn is_type(st: &Stat, file_type: FileType) -> bool {
    FileType::from_raw_mode(st.st_mode) == file_type
}

fn allocated(st: &Stat) -> u64 {
    u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512)
}
