//! Unit tests of the layer unpacker: entry kinds, metadata, unsafe paths, digests and
//! compression, with archives built in memory.

use super::meta::parse_pax_time;
use super::unpacker::OPAQUE_XATTR;
use super::*;
use rustix::fs::XattrFlags;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use tar::{EntryType, Header};

mod deep;
mod xattrs;

const MTIME: u64 = 1_600_000_000;

fn header(kind: EntryType, path: &[u8], mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    // Raw bytes, so the tests can write names tar::Builder would refuse.
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name = [0; 100];
    gnu.name[..path.len()].copy_from_slice(path);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h.set_cksum();
    h
}

fn with_link(mut h: Header, target: &[u8]) -> Header {
    let gnu = h.as_gnu_mut().unwrap();
    gnu.linkname = [0; 100];
    gnu.linkname[..target.len()].copy_from_slice(target);
    h.set_cksum();
    h
}

fn owned(mut h: Header, uid: u64, gid: u64) -> Header {
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_cksum();
    h
}

struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }
    fn add(mut self, h: Header, data: &[u8]) -> Self {
        self.0.append(&h, data).unwrap();
        self
    }
    fn file(self, path: &str, mode: u32, data: &[u8]) -> Self {
        let h = header(EntryType::Regular, path.as_bytes(), mode, data.len() as u64);
        self.add(h, data)
    }
    fn dir(self, path: &str, mode: u32) -> Self {
        self.add(
            header(EntryType::Directory, path.as_bytes(), mode, 0),
            &[][..],
        )
    }
    fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        self.0
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }
    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn diff_id(tar: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(tar)))
}

fn unpack(tar: &[u8]) -> (tempfile::TempDir, Result<LayerUsage, UnpackError>) {
    let dir = tempfile::tempdir().unwrap();
    let res = unpack_layer(tar, Compression::None, dir.path(), &diff_id(tar));
    (dir, res)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rfs::lgetxattr(path, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// trusted.* needs CAP_SYS_ADMIN and a filesystem that stores it.
fn trusted_xattrs_unsupported() -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    match rfs::lsetxattr(dir.path(), "trusted.berth-probe", b"1", XattrFlags::empty()) {
        Ok(()) => None,
        Err(e) => Some(format!(
            "trusted.* xattrs unsupported on the temp dir ({e})"
        )),
    }
}

#[test]
fn media_types() {
    use Compression as C;
    assert_eq!(
        C::from_media_type("application/vnd.oci.image.layer.v1.tar"),
        Some(C::None)
    );
    assert_eq!(
        C::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip"),
        Some(C::Gzip)
    );
    assert_eq!(
        C::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
        Some(C::Zstd)
    );
    assert_eq!(
        C::from_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
        Some(C::Gzip)
    );
    assert_eq!(
        C::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        Some(C::Gzip)
    );
    assert_eq!(
        C::from_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
        Some(C::Gzip)
    );
    assert_eq!(
        C::from_media_type("application/vnd.oci.image.config.v1+json"),
        None
    );
}

#[test]
fn regular_file_content_mode_mtime_and_usage() {
    let tar = Tar::new()
        .dir("./d/", 0o750)
        .add(
            owned(header(EntryType::Regular, b"./d/f", 0o777, 5), 1000, 1001),
            &b"hello"[..],
        )
        .finish();
    let (dir, res) = unpack(&tar);
    let usage = res.unwrap();
    let f = dir.path().join("d/f");
    assert_eq!(std::fs::read(&f).unwrap(), b"hello");
    let md = std::fs::symlink_metadata(&f).unwrap();
    // 0777 survives the process umask.
    assert_eq!(md.permissions().mode() & 0o7777, 0o777);
    assert_eq!((md.uid(), md.gid()), (1000, 1001));
    assert_eq!(md.mtime(), MTIME as i64);
    // The directory's mtime is set after its child was created.
    let d = std::fs::symlink_metadata(dir.path().join("d")).unwrap();
    assert_eq!(d.mtime(), MTIME as i64);
    assert_eq!(d.permissions().mode() & 0o7777, 0o750);
    assert_eq!(usage.inodes, 2);
    assert!(usage.bytes >= 4096, "{usage:?}");
}

#[test]
fn later_entry_replaces_earlier_and_implicit_parents() {
    let tar = Tar::new()
        .file("a/b/f", 0o644, b"one")
        .file("./a/b/f", 0o600, b"two")
        .add(
            with_link(header(EntryType::Symlink, b"a/b/f", 0o777, 0), b"x"),
            &[][..],
        )
        .finish();
    let (dir, res) = unpack(&tar);
    assert_eq!(res.unwrap().inodes, 3);
    assert_eq!(
        std::fs::read_link(dir.path().join("a/b/f")).unwrap(),
        Path::new("x")
    );
    let a = std::fs::symlink_metadata(dir.path().join("a")).unwrap();
    assert_eq!(a.permissions().mode() & 0o7777, 0o755);
    assert_eq!((a.uid(), a.gid()), (0, 0));
}

#[test]
fn setuid_bit_kept_after_chown() {
    let tar = Tar::new()
        .add(
            owned(header(EntryType::Regular, b"suid", 0o4755, 1), 1000, 1000),
            &b"x"[..],
        )
        .add(
            owned(header(EntryType::Directory, b"sgid", 0o2775, 0), 1000, 1000),
            &[][..],
        )
        .finish();
    let (dir, res) = unpack(&tar);
    res.unwrap();
    let md = std::fs::metadata(dir.path().join("suid")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(md.uid(), 1000);
    let md = std::fs::metadata(dir.path().join("sgid")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o2775);
}

#[test]
fn symlink_target_kept_and_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let target = victim.as_os_str().as_bytes();
    let h = owned(
        with_link(header(EntryType::Symlink, b"link", 0o777, 0), target),
        1234,
        1234,
    );
    let (dir, res) = unpack(&Tar::new().add(h, &[][..]).finish());
    res.unwrap();
    let link = dir.path().join("link");
    assert_eq!(std::fs::read_link(&link).unwrap(), victim);
    let md = std::fs::symlink_metadata(&link).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!((md.uid(), md.mtime()), (1234, MTIME as i64));
    let v = std::fs::metadata(&victim).unwrap();
    assert_eq!(v.uid(), 0, "chown went through the symlink");
    assert_ne!(
        v.mtime(),
        MTIME as i64,
        "utimensat went through the symlink"
    );
}

#[test]
fn hard_link_shares_inode() {
    let tar = Tar::new()
        .file("dir/orig", 0o640, b"data")
        .add(
            with_link(
                header(EntryType::Link, b"other/link", 0o640, 0),
                b"./dir/orig",
            ),
            &[][..],
        )
        .finish();
    let (dir, res) = unpack(&tar);
    let usage = res.unwrap();
    let a = std::fs::metadata(dir.path().join("dir/orig")).unwrap();
    let b = std::fs::metadata(dir.path().join("other/link")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    assert_eq!(usage.inodes, 3, "dir, other and one file inode");
}

#[test]
fn whiteout_becomes_char_device_0_0() {
    if !is_root() {
        println!("skipped: mknod of a whiteout needs CAP_MKNOD");
        return;
    }
    let tar = Tar::new()
        .dir("etc/", 0o755)
        .file("etc/gone", 0o644, b"replaced by the whiteout")
        .add(
            owned(header(EntryType::Regular, b"etc/.wh.gone", 0o644, 0), 7, 7),
            &[][..],
        )
        .add(header(EntryType::Regular, b".wh.top", 0o644, 0), &[][..])
        .finish();
    let (dir, res) = unpack(&tar);
    res.unwrap();
    for p in ["etc/gone", "top"] {
        let md = std::fs::symlink_metadata(dir.path().join(p)).unwrap();
        assert!(md.file_type().is_char_device(), "{p}");
        assert_eq!(md.rdev(), 0, "{p}");
        assert_eq!(
            (md.uid(), md.gid(), md.permissions().mode() & 0o7777),
            (0, 0, 0),
            "{p}"
        );
    }
    assert!(!dir.path().join("etc/.wh.gone").exists());
    assert!(!dir.path().join(".wh.top").exists());
}

#[test]
fn opaque_dir_gets_overlay_xattr() {
    if let Some(why) = trusted_xattrs_unsupported() {
        println!("skipped: {why}");
        return;
    }
    let tar = Tar::new()
        .dir("var/", 0o755)
        .add(
            header(EntryType::Regular, b"var/.wh..wh..opq", 0o644, 0),
            &[][..],
        )
        .add(
            header(EntryType::Regular, b"new/.wh..wh..opq", 0o644, 0),
            &[][..],
        )
        .finish();
    let (dir, res) = unpack(&tar);
    res.unwrap();
    for d in ["var", "new"] {
        assert_eq!(
            get_xattr(&dir.path().join(d), OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..]),
            "{d}"
        );
        assert!(!dir.path().join(d).join(".wh..wh..opq").exists());
    }
}

fn assert_unsafe(res: Result<LayerUsage, UnpackError>, needle: &str) {
    match res {
        Err(UnpackError::UnsafePath { reason, .. }) => {
            assert!(reason.contains(needle), "{reason}")
        }
        other => panic!("expected UnsafePath, got {other:?}"),
    }
}

#[test]
fn dotdot_rejected() {
    let (_dir, res) = unpack(&Tar::new().file("a/../../x", 0o644, b"x").finish());
    assert_unsafe(res, "..");
}

#[test]
fn absolute_path_rejected() {
    let (_dir, res) = unpack(&Tar::new().file("/etc/x", 0o644, b"x").finish());
    assert_unsafe(res, "absolute");
}

#[test]
fn write_through_symlinked_parent_rejected() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().as_os_str().as_bytes();
    let tar = Tar::new()
        .add(
            with_link(header(EntryType::Symlink, b"a", 0o777, 0), target),
            &[][..],
        )
        .file("a/pwned", 0o644, b"owned")
        .finish();
    let (_dir, res) = unpack(&tar);
    assert_unsafe(res, "parent a is a symlink");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn hard_link_escape_rejected() {
    let h = with_link(
        header(EntryType::Link, b"evil", 0o644, 0),
        b"../../etc/passwd",
    );
    let (dir, res) = unpack(&Tar::new().add(h, &[][..]).finish());
    assert_unsafe(res, "hard link target");
    assert!(!dir.path().join("evil").exists());
}

#[test]
fn hard_link_through_symlink_rejected() {
    let tar = Tar::new()
        .add(
            with_link(header(EntryType::Symlink, b"etc", 0o777, 0), b"/etc"),
            &[][..],
        )
        .add(
            with_link(header(EntryType::Link, b"evil", 0o644, 0), b"etc/passwd"),
            &[][..],
        )
        .finish();
    let (_dir, res) = unpack(&tar);
    assert_unsafe(res, "parent etc is a symlink");
}

#[test]
fn diff_id_mismatch_rejected() {
    let tar = Tar::new().file("f", 0o644, b"x").finish();
    let dir = tempfile::tempdir().unwrap();
    let wrong = diff_id(b"something else");
    match unpack_layer(&tar[..], Compression::None, dir.path(), &wrong) {
        Err(UnpackError::DiffIdMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, diff_id(&tar));
        }
        other => panic!("expected DiffIdMismatch, got {other:?}"),
    }
    let bad = unpack_layer(&tar[..], Compression::None, dir.path(), "sha256:XYZ");
    assert!(
        matches!(bad, Err(UnpackError::InvalidDiffId { .. })),
        "{bad:?}"
    );
}

#[test]
fn trailing_bytes_are_hashed() {
    let mut tar = Tar::new().file("f", 0o644, b"x").finish();
    let short = diff_id(&tar);
    tar.extend_from_slice(&[0; 4096]);
    let dir = tempfile::tempdir().unwrap();
    let res = unpack_layer(&tar[..], Compression::None, dir.path(), &short);
    assert!(
        matches!(res, Err(UnpackError::DiffIdMismatch { .. })),
        "{res:?}"
    );
}

/// Two files, "a" (5 bytes) and "b" (6 bytes): a's header at 0, its data 512..517, b's
/// header at 1024, its data 1536..1542, padding to 2048, then two zero blocks to 3072.
fn two_files() -> Vec<u8> {
    Tar::new()
        .file("a", 0o644, b"hello")
        .file("b", 0o644, b"world!")
        .finish()
}

#[test]
fn stream_may_end_after_the_last_entrys_data_as_go_reads_it() {
    // umoci insert's layers stop right after the data (1542); others inside the padding,
    // at the end of it, or after one of the two end blocks.
    for cut in [1542, 1543, 1800, 2047, 2048, 2560, 3072] {
        let tar = &two_files()[..cut];
        let (dir, res) = unpack(tar);
        res.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"hello");
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"world!");
        // The same ending inside gzip; the diff_id is still that of the bytes given.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(tar).unwrap();
        let blob = enc.finish().unwrap();
        let gz = tempfile::tempdir().unwrap();
        unpack_layer(&blob[..], Compression::Gzip, gz.path(), &diff_id(tar))
            .unwrap_or_else(|e| panic!("gzip, cut at {cut}: {e}"));
        assert_eq!(std::fs::read(gz.path().join("b")).unwrap(), b"world!");
    }
}

#[test]
fn stream_ending_inside_data_or_a_header_is_refused() {
    // Inside b's data (1536..1542), inside a's data, inside b's header, inside an end block.
    for cut in [1541, 1536, 515, 1100, 2100] {
        let tar = &two_files()[..cut];
        let (_dir, res) = unpack(tar);
        assert!(
            matches!(res, Err(UnpackError::ReadArchive { .. })),
            "cut at {cut}: {res:?}"
        );
    }
    // Still refused when the wrong diff_id would not have caught it.
    let tar = &two_files()[..1541];
    let dir = tempfile::tempdir().unwrap();
    let res = unpack_layer(tar, Compression::None, dir.path(), &diff_id(&two_files()));
    assert!(res.is_err(), "{res:?}");
}

#[test]
fn gzip_round_trip() {
    let tar = Tar::new().file("g", 0o644, b"gzipped").finish();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&tar).unwrap();
    let blob = enc.finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    unpack_layer(&blob[..], Compression::Gzip, dir.path(), &diff_id(&tar)).unwrap();
    assert_eq!(std::fs::read(dir.path().join("g")).unwrap(), b"gzipped");
}

#[test]
fn zstd_round_trip() {
    let tar = Tar::new().file("z", 0o644, b"zstd").finish();
    let blob = zstd::stream::encode_all(&tar[..], 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    unpack_layer(&blob[..], Compression::Zstd, dir.path(), &diff_id(&tar)).unwrap();
    assert_eq!(std::fs::read(dir.path().join("z")).unwrap(), b"zstd");
}

#[test]
fn corrupt_gzip_is_a_decompress_error() {
    let dir = tempfile::tempdir().unwrap();
    let res = unpack_layer(
        &b"\x1f\x8bnot gzip at all"[..],
        Compression::Gzip,
        dir.path(),
        &diff_id(b""),
    );
    assert!(matches!(res, Err(UnpackError::Decompress(_))), "{res:?}");
}

#[test]
fn pax_mtime_with_fraction() {
    let tar = Tar::new()
        .pax(&[("mtime", b"1700000000.25")])
        .file("f", 0o644, b"")
        .finish();
    let (dir, res) = unpack(&tar);
    res.unwrap();
    let md = std::fs::metadata(dir.path().join("f")).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 250_000_000));
    assert_eq!(
        parse_pax_time(b"-1.5").map(|t| (t.tv_sec, t.tv_nsec)),
        Some((-2, 500_000_000))
    );
    assert!(parse_pax_time(b"12x").is_none());
}

#[test]
fn device_nodes_and_fifo() {
    if !is_root() {
        println!("skipped: mknod of a device needs CAP_MKNOD");
        return;
    }
    let mut null = header(EntryType::Char, b"dev/null", 0o666, 0);
    null.set_device_major(1).unwrap();
    null.set_device_minor(3).unwrap();
    null.set_cksum();
    let tar = Tar::new()
        .add(null, &[][..])
        .add(header(EntryType::Fifo, b"dev/fifo", 0o620, 0), &[][..])
        .finish();
    let (dir, res) = unpack(&tar);
    res.unwrap();
    let md = std::fs::symlink_metadata(dir.path().join("dev/null")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!((rfs::major(md.rdev()), rfs::minor(md.rdev())), (1, 3));
    assert_eq!(md.permissions().mode() & 0o7777, 0o666);
    let md = std::fs::symlink_metadata(dir.path().join("dev/fifo")).unwrap();
    assert!(md.file_type().is_fifo());
    assert_eq!(md.permissions().mode() & 0o7777, 0o620);
}
