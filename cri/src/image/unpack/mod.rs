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
//! Extended attributes from the layer are filtered by one policy ([`xattrs`]); memory does not
//! grow with the number of entries (directory times are kept per distinct directory,
//! [`dir_times`]), and paths are held to the kernel's `PATH_MAX`/`NAME_MAX` ([`path`]).
//!
//! Syscalls go through `rustix`, whose `*at` calls return `OwnedFd`: nix 0.29 returns
//! `RawFd`, and turning that into an owned fd needs `unsafe`, which this crate does not use.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

pub use budget::{OverBudget, UnpackBudget};
use path::PathError;
use stream::{Digesting, Progress};
use unpacker::Unpacker;
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
    /// The entry's path (or its hard link target) is longer than the kernel could resolve:
    /// `PATH_MAX` in all, `NAME_MAX` per component. `entry` is shortened for display.
    #[error("entry {entry:?}: path too long: {reason}")]
    PathTooLong { entry: String, reason: String },
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
    unpack_layer_within(
        blob,
        compression,
        dest,
        expected_diff_id,
        &UnpackBudget::unlimited(),
    )
}

/// [`unpack_layer`], drawing the decompressed stream's bytes from `budget`
/// (shared by the layers of one pull): past it, the unpack fails.
pub fn unpack_layer_within(
    blob: impl Read,
    compression: Compression,
    dest: &Path,
    expected_diff_id: &str,
    budget: &UnpackBudget,
) -> Result<LayerUsage, UnpackError> {
    let expected = parse_diff_id(expected_diff_id)?;
    match compression {
        Compression::None => unpack_tar(budget.wrap(blob), dest, Some(expected)),
        Compression::Gzip => unpack_tar(
            budget.wrap(flate2::read::MultiGzDecoder::new(blob)),
            dest,
            Some(expected),
        ),
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(blob).map_err(UnpackError::Decompress)?;
            unpack_tar(budget.wrap(decoder), dest, Some(expected))
        }
    }
    .map(|done| done.usage)
}

/// Unpacks an uncompressed tar of the same format as a layer, with no digest to check
/// (a checkpoint archive, or its rootfs diff, given by path): the same rules keep every
/// entry inside `dest`.
///
/// Extended attributes follow the same policy as a layer's ([`xattrs`]), so a checkpoint
/// restores no more than an image could have set.
pub fn unpack_untrusted(stream: impl Read, dest: &Path) -> Result<LayerUsage, UnpackError> {
    unpack_tar(stream, dest, None).map(|done| done.usage)
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

/// What unpacking one tar stream did: its usage, and what it held in memory on the way.
struct Unpacked {
    usage: LayerUsage,
    /// The most directories whose times were tracked at once.
    peak_tracked_dirs: usize,
}

fn unpack_tar<R: Read>(
    stream: R,
    dest: &Path,
    expected_hex: Option<&str>,
) -> Result<Unpacked, UnpackError> {
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
    let mut unpacker = Unpacker::new(root, &progress);
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
    let done = unpacker.finish()?;
    tracing::debug!(
        dest = %dest.display(),
        inodes = done.usage.inodes,
        bytes = done.usage.bytes,
        peak_tracked_dirs = done.peak_tracked_dirs,
        "layer unpacked"
    );
    Ok(done)
}

fn unsafe_path(label: &str, reason: String) -> UnpackError {
    UnpackError::UnsafePath {
        entry: label.to_owned(),
        reason,
    }
}

/// The error for an entry path (or, with `what`, its hard link target) that `split_path`
/// refused.
fn path_error(label: &str, what: &str, e: PathError) -> UnpackError {
    match e {
        PathError::Unsafe(reason) => unsafe_path(label, format!("{what}{reason}")),
        PathError::TooLong { .. } => UnpackError::PathTooLong {
            entry: shorten(label),
            reason: format!("{what}{e}"),
        },
    }
}

/// At most the first 128 characters of a label, then how long it was: a path too long for
/// the kernel is too long for a log line as well.
fn shorten(label: &str) -> String {
    const SHOWN: usize = 128;
    match label.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!(
            "{}... ({} bytes)",
            label.get(..cut).unwrap_or_default(),
            label.len()
        ),
        None => label.to_owned(),
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

mod budget;
mod dir_times;
mod meta;
mod path;
mod stream;
#[cfg(test)]
mod tests;
mod unpacker;
mod xattrs;
