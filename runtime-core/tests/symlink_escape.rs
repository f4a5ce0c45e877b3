//! CVE-2021-30465 class: mount destinations that are symlinks pointing out
//! of the rootfs must resolve inside it.

mod common;

use berth_core::{Config, Mount};
use common::*;

#[test]
fn mount_destinations_through_symlinks_stay_inside_the_rootfs() {
    let Some(()) = privileged("mount_destinations_through_symlinks_stay_inside_the_rootfs") else {
        return;
    };
    let (dir, rootfs) = private_rootfs("berth-escape");
    let marker = format!("berth-escape-{}", std::process::id());
    // An absolute symlink to "/" and a relative one climbing far above the rootfs.
    std::os::unix::fs::symlink("/", rootfs.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../..", rootfs.join("tmp/up")).unwrap();
    // A host directory the second link would reach without in-root resolution.
    let host_target = dir.path().join("host-side");
    std::fs::create_dir(&host_target).unwrap();

    let mut config: Config = base_config(&rootfs);
    config
        .mounts
        .push(Mount::fs("tmpfs", format!("/abs/{marker}-a"), &["size=1m"]));
    config.mounts.push(Mount::fs(
        "tmpfs",
        format!("/tmp/up/{marker}-b"),
        &["size=1m"],
    ));
    config.mounts.push(Mount::bind(
        "/etc",
        format!("/tmp/up/{marker}-c/etc"),
        &["ro"],
    ));
    let out = run(
        config,
        &["sh", "-c", &format!("grep -c -e ' /{marker}-a ' -e ' /{marker}-b ' -e ' /{marker}-c/etc ' /proc/self/mountinfo")],
    );
    assert_eq!(
        out.stdout.trim(),
        "3",
        "all three mounts are inside the container: {out:?}"
    );
    for suffix in ["a", "b", "c"] {
        let host = std::path::Path::new("/").join(format!("{marker}-{suffix}"));
        assert!(!host.exists(), "{} was created on the host", host.display());
        assert!(
            rootfs.join(format!("{marker}-{suffix}")).exists(),
            "created inside the rootfs"
        );
    }
    assert!(std::fs::read_dir(&host_target).unwrap().next().is_none());
}
