//! An entry's owner, mode, times and extended attributes: read from its header and PAX
//! records before anything is created, then applied in the order the kernel needs.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};

use super::unpacker::At;
use super::xattrs::{self, Target, Verdict};
use super::{meta_err, xattr_err, UnpackError};

const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Owner, mode, times and xattrs of an entry, parsed before anything is created.
pub(super) struct Meta {
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    pub(super) mode: Mode,
    pub(super) times: Timestamps,
    pub(super) xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Reads the metadata of an entry that creates a `target`. Its xattrs are those the layer
/// xattr policy ([`xattrs::verdict`]) keeps; each one dropped is logged at debug level.
pub(super) fn read_meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    label: &str,
    target: Target,
) -> Result<Meta, UnpackError> {
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
            let value = ext.value_bytes();
            match xattrs::verdict(name, value, target) {
                Verdict::Keep => {
                    xattrs.push((OsStr::from_bytes(name).to_os_string(), value.to_vec()));
                }
                Verdict::Drop(reason) => tracing::debug!(
                    entry = label,
                    xattr = %String::from_utf8_lossy(name),
                    reason,
                    "layer xattr dropped"
                ),
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
pub(super) fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
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

/// Owner, then mode (chown clears setuid/setgid), then xattrs (chown clears
/// security.capability). Times are set by the caller.
pub(super) fn set_fd_meta(fd: &impl AsFd, meta: &Meta, label: &str) -> Result<(), UnpackError> {
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
pub(super) fn set_meta_at(at: At<'_>, meta: &Meta, chmod: bool) -> Result<(), UnpackError> {
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
