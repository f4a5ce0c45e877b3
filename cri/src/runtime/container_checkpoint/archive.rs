//! Writing the archive: the container's writable layer as `rootfs-diff.tar`
//! and `deleted.files`, and the whole work directory as the archive at
//! `location` (a new private file, never through what was planted there).

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::{write_json, DELETED_FILES, ROOTFS_DIFF};
use crate::runtime::error::RuntimeError;

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Writes `rootfs-diff.tar` (the upper directory as an OCI layer, without
/// its whiteouts) and `deleted.files` (the whiteouts' paths) into `out`.
/// The container is frozen: nothing changes while the tree is walked, and
/// no symlink in it is followed.
pub(super) fn rootfs_diff(upper: &Path, out: &Path) -> Result<(), RuntimeError> {
    let tar_path = out.join(ROOTFS_DIFF);
    let file = std::fs::File::create(&tar_path).map_err(|e| RuntimeError::io(&tar_path, e))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    b.follow_symlinks(false);
    let mut deleted = Vec::new();
    walk_upper(&mut b, upper, Path::new(""), &mut deleted)
        .map_err(|e| RuntimeError::io(upper, e))?;
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| RuntimeError::io(&tar_path, e))?;
    write_json(&out.join(DELETED_FILES), &deleted)
}

fn walk_upper<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    deleted: &mut Vec<String>,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = rel.join(e.file_name());
        let m = std::fs::symlink_metadata(&path)?;
        if m.file_type().is_char_device() && m.rdev() == 0 {
            deleted.push(format!("/{}", name.display()));
            continue;
        }
        b.append_path_with_name(&path, &name)?;
        if m.is_dir() {
            let opaque =
                rustix::fs::lgetxattr(&path, OPAQUE_XATTR, &mut [0u8; 4]).is_ok_and(|n| n == 1);
            if opaque {
                let mut h = empty_file_header();
                b.append_data(&mut h, name.join(".wh..wh..opq"), std::io::empty())?;
            }
            walk_upper(b, &path, &name, deleted)?;
        }
    }
    Ok(())
}

/// The header of an empty root-owned file: what marks a whiteout or an
/// opaque directory in an OCI layer.
pub(super) fn empty_file_header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Tars `dir` into `location` (through a temporary file next to it, renamed
/// into place once complete).
pub(super) fn write_archive(dir: &Path, location: &Path) -> Result<(), RuntimeError> {
    let name = location
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A name nobody can guess, created afresh (O_EXCL) and never through a
    // symlink (O_NOFOLLOW), owned by us with mode 0600 whatever was planted
    // in the directory.
    let suffix = crate::store::ObjectId::random()
        .map_err(|e| RuntimeError::io(Path::new("/dev/urandom"), e))?;
    let tmp = location.with_file_name(format!(".{name}.{}.berth-tmp", &suffix.as_str()[..16]));
    let res = (|| {
        // The container's memory, secrets included: for root only.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(file));
        b.follow_symlinks(false);
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if e.file_type()?.is_dir() {
                b.append_dir_all(e.file_name(), e.path())?;
            } else {
                b.append_path_with_name(e.path(), e.file_name())?;
            }
        }
        let w = b.into_inner()?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        // Checked again right before the rename: only a regular file (or
        // nothing) is replaced.
        match std::fs::symlink_metadata(location) {
            Ok(m) if !m.file_type().is_file() => Err(std::io::Error::other(
                "the location became something other than a regular file",
            )),
            _ => std::fs::rename(&tmp, location),
        }
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(RuntimeError::io(location, e));
    }
    Ok(())
}
