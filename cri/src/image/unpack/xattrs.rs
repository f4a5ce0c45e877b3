//! Which extended attributes a layer (or a checkpoint's rootfs diff, unpacked by the same
//! code) may set on what it creates.
//!
//! A layer is untrusted input, and xattrs are not just data: `trusted.overlay.*` steers
//! overlayfs lookups (redirect, metacopy, origin — a layer could point a file at another
//! layer's data), `security.selinux` / `security.ima` / `security.evm` are labels that a
//! security module acts on, and `trusted.*` in general is reserved to privileged tools.
//! berth honours only what images legitimately carry:
//!
//! - `user.*`, on regular files and directories (the only inodes the kernel lets hold them,
//!   `xattr_permission()` in fs/xattr.c), except `user.overlay.*`, which overlayfs reads as
//!   its own metadata when mounted with `userxattr`;
//! - `security.capability` on regular files when it is a well-formed VFS capability
//!   (revision 2 or 3, see `include/uapi/linux/capability.h`): file capabilities are part of
//!   images (`ping`, `arping`, ... carry `cap_net_raw`).
//!
//! Everything else is dropped with a debug log. Overlay whiteouts and opaque directories are
//! not affected: berth sets `trusted.overlay.opaque` itself from the OCI `.wh..wh..opq` marker.

/// The xattr namespace every layer may use, as long as the inode can hold it.
const USER_PREFIX: &[u8] = b"user.";
/// overlayfs's own metadata when it is mounted with `userxattr`.
const USER_OVERLAY_PREFIX: &[u8] = b"user.overlay.";
const TRUSTED_PREFIX: &[u8] = b"trusted.";
const SECURITY_PREFIX: &[u8] = b"security.";
const CAPABILITY: &[u8] = b"security.capability";
const SELINUX: &[u8] = b"security.selinux";

/// `magic_etc` of `struct vfs_cap_data`: the revision in the top byte, flags below.
const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
/// The only flag defined: the permitted set is also made effective at exec.
const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x0000_0001;
/// `XATTR_CAPS_SZ_2`: magic_etc plus permitted/inheritable for two 32-bit words.
const CAPS_SIZE_2: usize = 20;
/// `XATTR_CAPS_SZ_3`: revision 2 plus the 32-bit root uid of the owning user namespace.
const CAPS_SIZE_3: usize = 24;

/// What kind of inode an xattr would be set on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    File,
    Dir,
    /// Symlinks, device nodes and FIFOs.
    Other,
}

/// What the policy decided for one xattr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Keep,
    /// Dropped, and why (for the debug log).
    Drop(&'static str),
}

/// The layer xattr policy (see the module documentation): whether the xattr `name` with
/// `value`, found in a layer entry that creates a `target`, is set on it.
pub(super) fn verdict(name: &[u8], value: &[u8], target: Target) -> Verdict {
    if name.is_empty() || name.contains(&0) {
        return Verdict::Drop("malformed name");
    }
    if name.starts_with(USER_OVERLAY_PREFIX) {
        return Verdict::Drop("overlayfs metadata (user.overlay.*) is berth's to set");
    }
    if name.starts_with(USER_PREFIX) {
        return match target {
            Target::File | Target::Dir => Verdict::Keep,
            Target::Other => {
                Verdict::Drop("user.* is allowed only on regular files and directories")
            }
        };
    }
    if name == CAPABILITY {
        if target != Target::File {
            return Verdict::Drop("a file capability on something that is not a regular file");
        }
        return match file_capability_error(value) {
            None => Verdict::Keep,
            Some(reason) => Verdict::Drop(reason),
        };
    }
    if name.starts_with(TRUSTED_PREFIX) {
        return Verdict::Drop(
            "trusted.* is reserved to the host (trusted.overlay.* steers overlayfs)",
        );
    }
    if name == SELINUX {
        return Verdict::Drop("berth does no SELinux relabeling; the layer's label is not kept");
    }
    if name.starts_with(SECURITY_PREFIX) {
        return Verdict::Drop(
            "security module labels (security.ima, security.evm, ...) are not taken from images",
        );
    }
    Verdict::Drop("not in the user.* namespace")
}

/// Why `value` is not a VFS capability xattr the kernel would honour as written, or `None`
/// when it is: revision 2 in 20 bytes or revision 3 in 24, little-endian, no flag but
/// `VFS_CAP_FLAGS_EFFECTIVE`. Revision 1 (32-bit capabilities, Linux < 2.6.25) is refused too.
fn file_capability_error(value: &[u8]) -> Option<&'static str> {
    let Some(magic) = value
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
    else {
        return Some("malformed file capability: shorter than its 4-byte header");
    };
    match (magic & !VFS_CAP_FLAGS_EFFECTIVE, value.len()) {
        (VFS_CAP_REVISION_2, CAPS_SIZE_2) | (VFS_CAP_REVISION_3, CAPS_SIZE_3) => None,
        (VFS_CAP_REVISION_2 | VFS_CAP_REVISION_3, _) => {
            Some("malformed file capability: its length does not match its revision")
        }
        _ => Some("malformed file capability: unknown revision or flags"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capability xattr: `magic_etc`, then permitted/inheritable words, then `tail`.
    fn cap(magic: u32, words: usize, tail: &[u8]) -> Vec<u8> {
        let mut v = magic.to_le_bytes().to_vec();
        // permitted[0] = CAP_NET_BIND_SERVICE (bit 10), the rest zero.
        v.extend_from_slice(&[0, 4, 0, 0]);
        v.resize(4 + words * 4, 0);
        v.extend_from_slice(tail);
        v
    }

    fn dropped(name: &str, value: &[u8], target: Target) -> bool {
        matches!(verdict(name.as_bytes(), value, target), Verdict::Drop(_))
    }

    #[test]
    fn user_xattrs_kept_on_files_and_dirs_only() {
        assert_eq!(verdict(b"user.foo", b"bar", Target::File), Verdict::Keep);
        assert_eq!(verdict(b"user.foo", b"", Target::Dir), Verdict::Keep);
        assert!(dropped("user.foo", b"bar", Target::Other));
        assert!(dropped("user.overlay.redirect", b"/x", Target::Dir));
    }

    #[test]
    fn valid_file_capabilities_kept() {
        let v2 = cap(VFS_CAP_REVISION_2, 4, &[]);
        assert_eq!(v2.len(), 20);
        assert_eq!(verdict(CAPABILITY, &v2, Target::File), Verdict::Keep);
        let v2e = cap(VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, 4, &[]);
        assert_eq!(verdict(CAPABILITY, &v2e, Target::File), Verdict::Keep);
        // Revision 3: the root uid (here 100000) of the namespace it applies in.
        let v3 = cap(VFS_CAP_REVISION_3, 4, &100_000u32.to_le_bytes());
        assert_eq!(v3.len(), 24);
        assert_eq!(verdict(CAPABILITY, &v3, Target::File), Verdict::Keep);
    }

    #[test]
    fn malformed_file_capabilities_dropped() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short header", vec![0, 0, 2]),
            ("v2 truncated", cap(VFS_CAP_REVISION_2, 3, &[])),
            ("v2 too long", cap(VFS_CAP_REVISION_2, 4, &[0])),
            ("v2 with v3 size", cap(VFS_CAP_REVISION_2, 5, &[])),
            ("v3 with v2 size", cap(VFS_CAP_REVISION_3, 4, &[])),
            ("revision 1", cap(0x0100_0000, 2, &[])),
            ("unknown revision", cap(0x0400_0000, 4, &[])),
            ("unknown flag", cap(VFS_CAP_REVISION_2 | 0x2, 4, &[])),
            ("big-endian v2", {
                let mut v = cap(0, 4, &[]);
                v.splice(..4, VFS_CAP_REVISION_2.to_be_bytes());
                v
            }),
        ];
        for (what, value) in cases {
            assert!(
                matches!(verdict(CAPABILITY, &value, Target::File), Verdict::Drop(r) if r.contains("malformed")),
                "{what}: {value:?}"
            );
        }
        // Well-formed, but not on a regular file.
        let v2 = cap(VFS_CAP_REVISION_2, 4, &[]);
        assert!(dropped("security.capability", &v2, Target::Dir));
        assert!(dropped("security.capability", &v2, Target::Other));
    }

    #[test]
    fn trusted_security_and_other_namespaces_dropped() {
        for name in [
            "trusted.overlay.redirect",
            "trusted.overlay.opaque",
            "trusted.overlay.metacopy",
            "trusted.foo",
            "security.selinux",
            "security.ima",
            "security.evm",
            "security.apparmor",
            "security.SMACK64",
            "system.posix_acl_access",
            "foo",
            "",
            "user.a\0b",
        ] {
            for target in [Target::File, Target::Dir, Target::Other] {
                assert!(dropped(name, b"y", target), "{name:?} on {target:?}");
            }
        }
    }
}
