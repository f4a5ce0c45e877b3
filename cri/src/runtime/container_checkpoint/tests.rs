use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::archive::*;
use super::restore::*;
use super::*;

#[test]
fn locations_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let ok = d.path().join("c.tar");
    assert_eq!(check_location(ok.to_str().unwrap()).unwrap(), ok);
    for bad in ["", "rel.tar", "/nonexistent-dir/c.tar", "/tmp/"] {
        let e = check_location(bad).unwrap_err();
        assert!(
            matches!(&e, RuntimeError::InvalidArgument { field, .. } if field == "location"),
            "{bad:?}: {e}"
        );
    }
    let e = check_location(d.path().to_str().unwrap()).unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");
    // Never a device node, FIFO or symlink (not even to a regular file).
    let fifo = d.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&ok, &link).unwrap();
    for bad in [Path::new("/dev/null"), &fifo, &link] {
        let e = check_location(bad.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{bad:?}: {e}");
    }
    // A regular file is replaced.
    std::fs::write(&ok, "old").unwrap();
    assert_eq!(check_location(ok.to_str().unwrap()).unwrap(), ok);
}

#[test]
fn the_archive_is_a_new_private_file_whatever_was_planted() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("config.dump"), "{}").unwrap();
    // A planted file at the location, world-writable and another's.
    let location = d.path().join("c.tar");
    std::fs::write(&location, "planted").unwrap();
    std::fs::set_permissions(&location, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(&location, Some(65534), Some(65534)).unwrap();
    // And the old predictable temporary name as a symlink to a victim.
    let victim = d.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, d.path().join(".c.tar.berth-tmp")).unwrap();
    write_archive(&src, &location).unwrap();
    let m = std::fs::symlink_metadata(&location).unwrap();
    assert!(m.file_type().is_file());
    assert_eq!((m.mode() & 0o777, m.uid()), (0o600, 0));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    let mut a = tar::Archive::new(std::fs::File::open(&location).unwrap());
    let names: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["config.dump"]);
    // No temporary file left.
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().ends_with(".berth-tmp")
                && e.file_type().is_ok_and(|t| !t.is_symlink())
        })
        .collect();
    assert!(left.is_empty());
}

#[test]
fn rootfs_diff_round_trips_files_and_deletions() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let upper = d.path().join("upper");
    std::fs::create_dir_all(upper.join("etc/sub")).unwrap();
    std::fs::write(upper.join("etc/new"), "hello").unwrap();
    std::fs::set_permissions(
        upper.join("etc/new"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/new", upper.join("link")).unwrap();
    // An overlay whiteout: a 0/0 character device.
    nix::sys::stat::mknod(
        &upper.join("etc/gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    rootfs_diff(&upper, &out).unwrap();
    let deleted: Vec<String> =
        serde_json::from_slice(&std::fs::read(out.join(DELETED_FILES)).unwrap()).unwrap();
    assert_eq!(deleted, ["/etc/gone"]);

    let unpacked = Unpacked {
        dir: out.clone(),
        config: ConfigDump {
            id: "x".into(),
            name: "x".into(),
            rootfs_image: String::new(),
            rootfs_image_ref: String::new(),
            rootfs_image_name: "img".into(),
            oci_runtime: String::new(),
            created_time: String::new(),
            checkpointed_time: String::new(),
        },
    };
    let upper2 = d.path().join("upper2");
    std::fs::create_dir(&upper2).unwrap();
    apply_rootfs_diff(&unpacked, &upper2).unwrap();
    assert_eq!(
        std::fs::read_to_string(upper2.join("etc/new")).unwrap(),
        "hello"
    );
    let mode = std::fs::metadata(upper2.join("etc/new"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    assert_eq!(
        std::fs::read_link(upper2.join("link")).unwrap(),
        Path::new("/etc/new")
    );
    assert!(upper2.join("etc/sub").is_dir());
    let wh = std::fs::symlink_metadata(upper2.join("etc/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout"
    );
}

#[test]
fn a_truncated_or_foreign_archive_is_refused_by_field() {
    let d = tempfile::tempdir().unwrap();
    let junk = d.path().join("junk.tar");
    std::fs::write(&junk, vec![7u8; 3000]).unwrap();
    let e = unpack(&junk, &d.path().join("x")).unwrap_err();
    assert!(
        matches!(&e, RuntimeError::InvalidArgument { field, .. } if field == "config.image.image"),
        "{e}"
    );
    // A valid tar that is not a checkpoint.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = empty_file_header();
    h.set_size(2);
    b.append_data(&mut h, "hello", &b"hi"[..]).unwrap();
    let other = d.path().join("other.tar");
    std::fs::write(&other, b.into_inner().unwrap()).unwrap();
    let e = unpack(&other, &d.path().join("y")).unwrap_err();
    assert!(
        e.to_string()
            .contains("checkpoint/inventory.img is missing"),
        "{e}"
    );
}

#[test]
fn a_criu_without_the_join_userns_feature_is_refused() {
    // Stand-ins whose `check --feature` passes and fails; asked again,
    // the kept answers are the same.
    for _ in 0..2 {
        check_criu_joins_userns(std::path::Path::new("/bin/true")).unwrap();
        let e = check_criu_joins_userns(std::path::Path::new("/bin/false")).unwrap_err();
        assert!(matches!(e, RuntimeError::CriuLacks { .. }), "{e}");
        assert!(e.to_string().contains("join-userns patch"), "{e}");
        assert_eq!(
            tonic::Status::from(e).code(),
            tonic::Code::FailedPrecondition
        );
    }
}
