//! Unpacking one OCI image layer into a directory used as an overlayfs lower layer.
//!
//! The layer is untrusted input. Every path is resolved one component at a time beneath a
//! directory fd of `dest` with `O_NOFOLLOW`, every file is created relative to its parent's
//! fd, and `..`, absolute paths and symlinked parents are refused, so no entry can write
//! outside `dest` (the attacks of CVE-2014-6407 and CVE-2014-9356 against `docker load`/pull:
//! a symlink or hard link in the archive followed by an entry written through it).
//!
//! OCI whiteouts become overlayfs whiteouts:
//! <https://github.com/opencontainers/image-spec/blob/main/layer.md#whiteouts>,
//! <https://docs.kernel.org/filesystems/overlayfs.html#whiteouts-and-opaque-directories>.
//!
//! Syscalls go through `rustix`, whose `*at` calls return `OwnedFd`: nix 0.29 returns
//! `RawFd`, and turning that into an owned fd needs `unsafe`, which this crate does not use.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::fs::{Uid, XattrFlags};
use rustix::io::Errno;

use stream::{Digesting, Progress};

/// Longest entry path accepted, in bytes: Linux's `PATH_MAX`. A longer path could not be
/// opened inside the container anyway, and the bound keeps directory recursion shallow.
const MAX_PATH_BYTES: usize = 4096;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// AUFS metadata (`.wh..wh.plnk`, `.wh..wh.aufs`) shares this prefix; only `.opq` means
/// anything to overlayfs, the rest is skipped as containerd does.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Compression of a layer blob, from its OCI/Docker media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (RFC 1952); multi-member streams are accepted, as Go's `gzip.Reader` does.
    Gzip,
    /// zstd (RFC 8878).
    Zstd,
}

impl Compression {
    /// From a layer media type: `application/vnd.oci.image.layer.v1.tar(+gzip|+zstd)`, their
    /// nondistributable variants, and Docker's `application/vnd.docker.image.rootfs.diff.tar`,
    /// `.diff.tar.gzip` and `.foreign.diff.tar.gzip`. Unknown media types give `None`.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }
}

/// What unpacking produced (for ImageFsInfo accounting).
///
/// `bytes` is the space allocated on disk (`st_blocks * 512`) and `inodes` the number of
/// inodes, of everything the layer left in `dest`: files, directories (including parents
/// created implicitly), symlinks, device nodes and whiteouts. Hard links add nothing (they
/// create no inode); entries replaced by later ones are subtracted. `dest` itself is not
/// counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerUsage {
    /// Allocated bytes, `st_blocks * 512` summed over inodes.
    pub bytes: u64,
    /// Number of inodes created.
    pub inodes: u64,
}

/// Why a layer could not be unpacked. Each variant names the failing step; `entry` is the
/// tar entry path (lossily decoded for display).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The expected diff_id is not `sha256:<64 lowercase hex digits>`.
    #[error("expected diff_id {diff_id:?} is not of the form sha256:<64 lowercase hex>")]
    InvalidDiffId { diff_id: String },
    /// The destination directory could not be opened.
    #[error("opening destination directory {}", path.display())]
    OpenDest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading the blob or decompressing it failed.
    #[error("reading or decompressing the layer blob")]
    Decompress(#[source] io::Error),
    /// The tar stream is malformed.
    #[error("reading the tar stream at entry {entry:?}")]
    ReadArchive {
        entry: String,
        #[source]
        source: io::Error,
    },
    /// A header field is out of range or unparsable.
    #[error("entry {entry:?}: invalid {field}: {reason}")]
    InvalidHeader {
        entry: String,
        field: &'static str,
        reason: String,
    },
    /// The entry (or its hard link target) would resolve outside `dest` or through a symlink.
    #[error("entry {entry:?}: unsafe path: {reason}")]
    UnsafePath { entry: String, reason: String },
    /// The entry uses a tar feature this unpacker does not implement.
    #[error("entry {entry:?}: unsupported: {reason}")]
    Unsupported { entry: String, reason: String },
    /// Creating the file, directory, link or node failed.
    #[error("entry {entry:?}: creating it")]
    Create {
        entry: String,
        #[source]
        source: io::Error,
    },
    /// Removing what an entry replaces failed.
    #[error("entry {entry:?}: removing the existing file it replaces")]
    Remove {
        entry: String,
        #[source]
        source: io::Error,
    },
    /// Setting owner, mode or times failed.
    #[error("entry {entry:?}: setting {what}")]
    SetMetadata {
        entry: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Setting an extended attribute failed.
    #[error("entry {entry:?}: setting xattr {name}")]
    SetXattr {
        entry: String,
        name: String,
        #[source]
        source: io::Error,
    },
    /// Another filesystem step failed.
    #[error("entry {entry:?}: {step}")]
    Io {
        entry: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// The uncompressed stream does not hash to the expected diff_id.
    #[error("layer diff_id mismatch: expected {expected}, got {actual}")]
    DiffIdMismatch { expected: String, actual: String },
}

/// Unpack the (possibly compressed) tar stream `blob` into the existing empty directory
/// `dest`, verifying that the sha256 of the *uncompressed* tar stream equals
/// `expected_diff_id` (`"sha256:<hex>"`). On error `dest` is left partly written; the caller
/// deletes it.
///
/// The digest is checked after the whole stream (including the padding after the tar end
/// marker) has been read, so a layer is only trusted once it is complete.
///
/// ```no_run
/// # use berth_cri::image::unpack::{unpack_layer, Compression};
/// let blob = std::fs::File::open("/var/lib/berth/blobs/sha256/ab12...")?;
/// let media_type = "application/vnd.oci.image.layer.v1.tar+gzip";
/// let compression = Compression::from_media_type(media_type).expect("a layer media type");
/// let usage = unpack_layer(blob, compression, "/var/lib/berth/layers/1".as_ref(), "sha256:...")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn unpack_layer(
    blob: impl Read,
    compression: Compression,
    dest: &Path,
    expected_diff_id: &str,
) -> Result<LayerUsage, UnpackError> {
    let expected = parse_diff_id(expected_diff_id)?;
    match compression {
        Compression::None => unpack_tar(blob, dest, Some(expected)),
        Compression::Gzip => unpack_tar(
            flate2::read::MultiGzDecoder::new(blob),
            dest,
            Some(expected),
        ),
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(blob).map_err(UnpackError::Decompress)?;
            unpack_tar(decoder, dest, Some(expected))
        }
    }
}

/// Unpacks an uncompressed tar of the same format as a layer, with no digest to check
/// (a checkpoint archive, or its rootfs diff, given by path): the same rules keep every
/// entry inside `dest`.
pub fn unpack_untrusted(stream: impl Read, dest: &Path) -> Result<LayerUsage, UnpackError> {
    unpack_tar(stream, dest, None)
}

fn parse_diff_id(diff_id: &str) -> Result<&str, UnpackError> {
    match diff_id.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(hex)
        }
        _ => Err(UnpackError::InvalidDiffId {
            diff_id: diff_id.to_owned(),
        }),
    }
}

fn unpack_tar<R: Read>(
    stream: R,
    dest: &Path,
    expected_hex: Option<&str>,
) -> Result<LayerUsage, UnpackError> {
    let root = rfs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::OpenDest {
        path: dest.to_owned(),
        source: e.into(),
    })?;
    let progress = Progress::default();
    let mut archive = tar::Archive::new(Digesting::new(stream, &progress));
    let mut unpacker = Unpacker {
        root,
        usage: LayerUsage::default(),
        dir_times: Vec::new(),
        buf: vec![0; 128 * 1024],
        progress: &progress,
    };
    let mut last = String::from("(start of archive)");
    // Where the previous entry's data ended in the stream (none before the first header).
    let mut data_end = None;
    let entries = archive
        .entries()
        .map_err(|e| unpacker.read_error(&last, e))?;
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(_) if data_end.is_some_and(|end| progress.ended_in_padding(end)) => break,
            Err(e) => return Err(unpacker.read_error(&format!("after {last}"), e)),
        };
        last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let size = entry
            .header()
            .entry_size()
            .map_err(|e| unpacker.read_error(&last, e))?;
        data_end = Some(entry.raw_file_position().saturating_add(size));
        unpacker.entry(&mut entry, &last)?;
    }
    // Hash what follows the end-of-archive marker too: the diff_id covers the whole stream.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(UnpackError::Decompress)?;
    let actual = rest.finish();
    if let Some(expected_hex) = expected_hex.filter(|e| *e != actual) {
        return Err(UnpackError::DiffIdMismatch {
            expected: format!("sha256:{expected_hex}"),
            actual: format!("sha256:{actual}"),
        });
    }
    unpacker.apply_dir_times()?;
    Ok(unpacker.usage)
}

/// Owner, mode, times and xattrs of an entry, parsed before anything is created.
struct Meta {
    uid: Uid,
    gid: Gid,
    mode: Mode,
    times: Timestamps,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Where an entry goes: its final name inside an open parent directory.
#[derive(Clone, Copy)]
struct At<'a> {
    dir: &'a OwnedFd,
    name: &'a OsStr,
    label: &'a str,
}

/// What a name inside a directory turned out to be, looked up without following symlinks.
enum Child {
    Dir(OwnedFd),
    Missing,
    Symlink,
    NotDir,
}

struct Unpacker<'a> {
    root: OwnedFd,
    usage: LayerUsage,
    /// Directory mtimes, applied after the last entry since adding children changes them.
    dir_times: Vec<(Vec<OsString>, Timestamps)>,
    buf: Vec<u8>,
    progress: &'a Progress,
}

impl Unpacker<'_> {
    fn read_error(&self, label: &str, source: io::Error) -> UnpackError {
        if self.progress.failed() {
            UnpackError::Decompress(source)
        } else {
            UnpackError::ReadArchive {
                entry: label.to_owned(),
                source,
            }
        }
    }

    fn entry<R: Read>(
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
        let comps = split_path(&raw_path).map_err(|reason| unsafe_path(label, reason))?;
        let Some((&name, parents)) = comps.split_last() else {
            return Ok(()); // "." or "./": the layer root itself, which is `dest`.
        };
        let meta = read_meta(entry, label)?;
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
            let at = At {
                dir: &dir,
                name: OsStr::from_bytes(hidden),
                label,
            };
            return self.whiteout(at);
        }
        let at = At {
            dir: &dir,
            name,
            label,
        };
        match kind {
            T::Directory => self.directory(at, &comps, &meta),
            T::Symlink => self.symlink(at, &link_target(entry), &meta),
            T::Link => self.hard_link(at, &comps, &link_target(entry)),
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
        if keep_dir && is_type(&st, FileType::Directory) {
            return Ok(true);
        }
        self.remove_all(at.dir, at.name, &st)
            .map_err(|e| UnpackError::Remove {
                entry: at.label.to_owned(),
                source: e.into(),
            })?;
        Ok(false)
    }

    /// Removes `name` (recursively if a directory) without following symlinks. Depth is
    /// bounded by `MAX_PATH_BYTES`, since everything here was created from entry paths.
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

    fn directory(&mut self, at: At<'_>, comps: &[&OsStr], meta: &Meta) -> Result<(), UnpackError> {
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
        let owned = comps.iter().map(|c| c.to_os_string()).collect();
        self.dir_times.push((owned, Timestamps { ..meta.times }));
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
    fn hard_link(
        &mut self,
        at: At<'_>,
        comps: &[&OsStr],
        target: &[u8],
    ) -> Result<(), UnpackError> {
        let target_comps = split_path(target)
            .map_err(|reason| unsafe_path(at.label, format!("hard link target: {reason}")))?;
        let Some((&target_name, target_parents)) = target_comps.split_last() else {
            return Err(unsafe_path(at.label, "hard link to the layer root".into()));
        };
        if target_comps == comps {
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
    fn apply_dir_times(&mut self) -> Result<(), UnpackError> {
        for (comps, times) in std::mem::take(&mut self.dir_times) {
            let comps: Vec<&OsStr> = comps.iter().map(OsString::as_os_str).collect();
            let label = display_path(&comps);
            match self.open_dir(&comps, false, &label) {
                Ok(fd) => rfs::futimens(&fd, &times).map_err(meta_err(&label, "times"))?,
                Err(UnpackError::UnsafePath { .. }) => {}
                Err(UnpackError::Io { source, .. })
                    if source.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Splits an entry path into its components, dropping empty and `.` ones (so `./a//b/`
/// is `a/b`). Absolute paths, `..`, NUL bytes and paths over `PATH_MAX` are refused.
fn split_path(raw: &[u8]) -> Result<Vec<&OsStr>, String> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(format!("path longer than {MAX_PATH_BYTES} bytes"));
    }
    let mut comps = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path contains a `..` component".into()),
            _ => comps.push(OsStr::from_bytes(comp)),
        }
    }
    Ok(comps)
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>) -> Vec<u8> {
    entry
        .link_name_bytes()
        .map(|t| t.into_owned())
        .unwrap_or_default()
}

fn display_path(comps: &[&OsStr]) -> String {
    let joined: Vec<&[u8]> = comps.iter().map(|c| c.as_bytes()).collect();
    String::from_utf8_lossy(&joined.join(&b'/')).into_owned()
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, label: &str) -> Result<Meta, UnpackError> {
    let bad = |field: &'static str, reason: String| UnpackError::InvalidHeader {
        entry: label.to_owned(),
        field,
        reason,
    };
    let h = entry.header();
    // u32::MAX is -1 to chown ("leave unchanged"), never a real id.
    let id = |v: io::Result<u64>, field| {
        let v = v.map_err(|e| bad(field, e.to_string()))?;
        u32::try_from(v)
            .ok()
            .filter(|&v| v != u32::MAX)
            .ok_or_else(|| bad(field, format!("{v} out of range")))
    };
    let uid = Uid::from_raw(id(h.uid(), "uid")?);
    let gid = Gid::from_raw(id(h.gid(), "gid")?);
    let mode = Mode::from_raw_mode(h.mode().map_err(|e| bad("mode", e.to_string()))? & 0o7777);
    let mtime = h.mtime().map_err(|e| bad("mtime", e.to_string()))?;
    let mut mtime = Timespec {
        tv_sec: i64::try_from(mtime).map_err(|_| bad("mtime", format!("{mtime} out of range")))?,
        tv_nsec: 0,
    };
    let mut xattrs = Vec::new();
    let exts = entry
        .pax_extensions()
        .map_err(|e| UnpackError::ReadArchive {
            entry: label.to_owned(),
            source: e,
        })?;
    for ext in exts.into_iter().flatten() {
        let ext = ext.map_err(|e| bad("PAX record", e.to_string()))?;
        let key = ext.key_bytes();
        if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
            // Overlay semantics come only from OCI whiteouts: a layer setting
            // trusted.overlay.redirect/metacopy/origin itself could steer overlayfs lookups.
            if !(name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")) {
                xattrs.push((
                    OsStr::from_bytes(name).to_os_string(),
                    ext.value_bytes().to_vec(),
                ));
            }
        } else if key == b"mtime" {
            mtime = parse_pax_time(ext.value_bytes()).ok_or_else(|| {
                bad(
                    "PAX mtime",
                    String::from_utf8_lossy(ext.value_bytes()).into_owned(),
                )
            })?;
        } else if key.starts_with(b"GNU.sparse.") {
            return Err(UnpackError::Unsupported {
                entry: label.to_owned(),
                reason: "PAX-format sparse file (GNU.sparse.* records)".into(),
            });
        }
    }
    let times = Timestamps {
        last_access: Timespec { ..mtime },
        last_modification: mtime,
    };
    Ok(Meta {
        uid,
        gid,
        mode,
        times,
        xattrs,
    })
}

/// Parses a PAX time, `[-]seconds[.fraction]`.
fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(value).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || !digits(secs) || !digits(frac) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let nanos: i64 = format!("{:0<9}", &frac[..frac.len().min(9)]).parse().ok()?;
    Some(match (negative, nanos) {
        (false, _) => Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        },
        (true, 0) => Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        },
        (true, _) => Timespec {
            tv_sec: -secs - 1,
            tv_nsec: 1_000_000_000 - nanos,
        },
    })
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

/// Owner, then mode (chown clears setuid/setgid), then xattrs (chown clears
/// security.capability). Times are set by the caller.
fn set_fd_meta(fd: &impl AsFd, meta: &Meta, label: &str) -> Result<(), UnpackError> {
    rfs::fchown(fd, Some(meta.uid), Some(meta.gid)).map_err(meta_err(label, "owner"))?;
    rfs::fchmod(fd, meta.mode).map_err(meta_err(label, "mode"))?;
    for (name, value) in &meta.xattrs {
        rfs::fsetxattr(fd, name.as_os_str(), value, XattrFlags::empty())
            .map_err(xattr_err(label, &name.to_string_lossy()))?;
    }
    Ok(())
}

/// The same order as `set_fd_meta`, for entries that cannot be opened (symlinks, device
/// nodes, FIFOs), then times; all relative to the parent fd without following symlinks.
fn set_meta_at(at: At<'_>, meta: &Meta, chmod: bool) -> Result<(), UnpackError> {
    rfs::chownat(
        at.dir,
        at.name,
        Some(meta.uid),
        Some(meta.gid),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(meta_err(at.label, "owner"))?;
    if chmod {
        // fchmodat has no working AT_SYMLINK_NOFOLLOW before fchmodat2; the name was just
        // created by mknodat in a directory only this unpacker writes, so it is no symlink.
        rfs::chmodat(at.dir, at.name, meta.mode, AtFlags::empty())
            .map_err(meta_err(at.label, "mode"))?;
    }
    if !meta.xattrs.is_empty() {
        // lsetxattr through the fd's magic link: the parent is the fd, not a path lookup,
        // and the final name is not followed.
        let path = Path::new("/proc/thread-self/fd")
            .join(at.dir.as_raw_fd().to_string())
            .join(at.name);
        for (name, value) in &meta.xattrs {
            rfs::lsetxattr(&path, name.as_os_str(), value, XattrFlags::empty())
                .map_err(xattr_err(at.label, &name.to_string_lossy()))?;
        }
    }
    rfs::utimensat(at.dir, at.name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(meta_err(at.label, "times"))
}

fn is_type(st: &Stat, file_type: FileType) -> bool {
    FileType::from_raw_mode(st.st_mode) == file_type
}

fn allocated(st: &Stat) -> u64 {
    u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512)
}

fn unsafe_path(label: &str, reason: String) -> UnpackError {
    UnpackError::UnsafePath {
        entry: label.to_owned(),
        reason,
    }
}

fn io_err<'a, E: Into<io::Error> + 'a>(
    label: &'a str,
    step: &'static str,
) -> impl FnOnce(E) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        entry: label.to_owned(),
        step,
        source: e.into(),
    }
}

fn create_err(label: &str) -> impl FnOnce(Errno) -> UnpackError + '_ {
    move |e| UnpackError::Create {
        entry: label.to_owned(),
        source: e.into(),
    }
}

fn meta_err<'a>(label: &'a str, what: &'static str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::SetMetadata {
        entry: label.to_owned(),
        what,
        source: e.into(),
    }
}

fn xattr_err<'a>(label: &'a str, name: &'a str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::SetXattr {
        entry: label.to_owned(),
        name: name.to_owned(),
        source: e.into(),
    }
}

mod stream;
#[cfg(test)]
mod tests;
