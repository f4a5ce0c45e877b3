//! The layer xattr policy end to end: a tar with PAX `SCHILY.xattr.*` records unpacked into
//! a temporary directory, as a layer and as a checkpoint's rootfs diff.

use super::*;

const SELINUX_LABEL: &[u8] = b"system_u:object_r:bin_t:s0";

/// `struct vfs_cap_data` revision 2: permitted = CAP_NET_BIND_SERVICE (bit 10), effective.
fn cap_v2() -> Vec<u8> {
    let mut cap = 0x0200_0001u32.to_le_bytes().to_vec();
    cap.extend_from_slice(&[0, 4, 0, 0]);
    cap.resize(20, 0);
    cap
}

/// Revision 3: the same, for the user namespace whose root is uid 100000.
fn cap_v3() -> Vec<u8> {
    let mut cap = cap_v2();
    cap.splice(..4, 0x0300_0001u32.to_le_bytes());
    cap.extend_from_slice(&100_000u32.to_le_bytes());
    cap
}

/// Every class of xattr, on a file, a directory and a symlink, plus an opaque directory.
fn layer() -> Vec<u8> {
    let mut short_cap = cap_v2();
    short_cap.pop();
    Tar::new()
        .pax(&[
            ("SCHILY.xattr.user.foo", b"bar"),
            ("SCHILY.xattr.security.capability", &cap_v2()),
            ("SCHILY.xattr.security.selinux", SELINUX_LABEL),
            ("SCHILY.xattr.security.ima", b"\x03\x02\x04imahash"),
            ("SCHILY.xattr.security.evm", b"\x05evm"),
            ("SCHILY.xattr.trusted.foo", b"1"),
            ("SCHILY.xattr.trusted.overlay.metacopy", b""),
            ("SCHILY.xattr.system.posix_acl_access", b"\x02\0\0\0"),
        ])
        .add(
            owned(header(EntryType::Regular, b"bin", 0o755, 1), 1000, 1000),
            &b"x"[..],
        )
        .pax(&[("SCHILY.xattr.security.capability", &cap_v3())])
        .file("bin3", 0o755, b"3")
        // Malformed: one byte short of revision 2. The kernel would refuse it (EINVAL) and
        // fail the whole layer; it is dropped instead.
        .pax(&[("SCHILY.xattr.security.capability", &short_cap)])
        .file("short", 0o755, b"s")
        .pax(&[
            ("SCHILY.xattr.user.dir", b"d"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.security.capability", &cap_v2()),
        ])
        .dir("d/", 0o755)
        // The kernel allows user.* only on files and directories (EPERM on a symlink).
        .pax(&[("SCHILY.xattr.user.link", b"l")])
        .add(
            with_link(header(EntryType::Symlink, b"link", 0o777, 0), b"bin"),
            &[][..],
        )
        // berth's own opaque marker still works.
        .dir("o/", 0o755)
        .add(
            header(EntryType::Regular, b"o/.wh..wh..opq", 0o644, 0),
            &[][..],
        )
        .finish()
}

fn names(path: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n = rfs::llistxattr(path, &mut buf).unwrap();
    let mut names: Vec<String> = buf[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        // An SELinux host labels every new file itself; checked apart.
        .filter(|n| n != "security.selinux")
        .collect();
    names.sort();
    names
}

fn check(dir: &Path) {
    let bin = dir.join("bin");
    assert_eq!(names(&bin), ["security.capability", "user.foo"]);
    assert_eq!(get_xattr(&bin, "user.foo").as_deref(), Some(&b"bar"[..]));
    assert_ne!(
        get_xattr(&bin, "security.selinux").as_deref(),
        Some(SELINUX_LABEL)
    );
    // Set after chown (which clears it), so it survives the owner change.
    assert_eq!(get_xattr(&bin, "security.capability"), Some(cap_v2()));
    assert_eq!(std::fs::metadata(&bin).unwrap().uid(), 1000);
    assert_eq!(names(&dir.join("bin3")), ["security.capability"]);
    assert_eq!(
        get_xattr(&dir.join("bin3"), "security.capability"),
        Some(cap_v3())
    );
    assert!(names(&dir.join("short")).is_empty());
    assert_eq!(names(&dir.join("d")), ["user.dir"]);
    assert!(names(&dir.join("link")).is_empty());
    assert_eq!(
        get_xattr(&dir.join("o"), OPAQUE_XATTR).as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dir.join("o/.wh..wh..opq").exists());
}

/// Today's unpacker applied every xattr but trusted.overlay.*: selinux/ima/evm labels,
/// trusted.foo and ACLs landed on disk, a malformed capability or user.* on a symlink failed
/// the layer.
#[test]
fn layer_xattrs_filtered_by_policy() {
    if !is_root() {
        println!("skipped: security.capability and trusted.* need root");
        return;
    }
    if let Some(why) = trusted_xattrs_unsupported() {
        println!("skipped: {why}");
        return;
    }
    let tar = layer();
    let (dir, res) = unpack(&tar);
    res.unwrap();
    check(dir.path());
}

/// A checkpoint's rootfs diff goes through `unpack_untrusted`: the same policy.
#[test]
fn rootfs_diff_xattrs_filtered_by_the_same_policy() {
    if !is_root() {
        println!("skipped: security.capability and trusted.* need root");
        return;
    }
    if let Some(why) = trusted_xattrs_unsupported() {
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    unpack_untrusted(&layer()[..], dir.path()).unwrap();
    check(dir.path());
}
