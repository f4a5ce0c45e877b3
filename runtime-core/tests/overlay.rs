//! Overlay rootfs and overlay volumes of many layers: more than one page of
//! `lowerdir=` paths (about 40 layers) up to overlayfs's limit of 500,
//! as root and idmapped in a user namespace, checked from inside.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use berth_core::config::{OverlayRootfs, MAX_OVERLAY_LAYERS};
use berth_core::{Container, ContainerError, ExitStatus, Mount};
use common::*;

/// `n` layers under `dir`, top first, each with a long name like the image
/// store's (`<64 hex>/fs`). The bottom one is the busybox rootfs; layer `i`
/// (0 = bottom) holds `/layers/<i>`, and every layer writes `/layers/top`
/// with its own index, so the file shows which layer is on top.
fn layers(dir: &Path, n: usize) -> Vec<PathBuf> {
    let mut out = vec![rootfs().to_path_buf()];
    for i in 1..n {
        let fs = dir.join(format!("{i:064x}")).join("fs");
        std::fs::create_dir_all(fs.join("layers")).unwrap();
        std::fs::write(
            fs.join("layers").join(i.to_string()),
            format!("layer {i}\n"),
        )
        .unwrap();
        std::fs::write(fs.join("layers/top"), format!("{i}\n")).unwrap();
        out.push(fs);
    }
    out.reverse();
    out
}

/// A config whose rootfs is an overlay of `lowerdirs` with a fresh upper
/// dir, all under `dir`.
fn overlay_config(dir: &Path, lowerdirs: Vec<PathBuf>) -> berth_core::Config {
    let (upper, work, merged) = (dir.join("c/upper"), dir.join("c/work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut config = base_config(&merged);
    config.overlay = Some(OverlayRootfs {
        lowerdirs,
        upperdir: upper,
        workdir: work,
    });
    config
}

/// Reads the bottom layer's busybox, the second layer's file, the top
/// layer's, the winner of `/layers/top`, and the length of the root's
/// mountinfo line (short: the layers are named by fd, not by path).
const CHECK: &str = "test -x /bin/busybox && echo bottom; cat /layers/1 /layers/$N /layers/top; \
                     awk '$5 == \"/\" { print length($0) < 4096 }' /proc/self/mountinfo";

fn check(config: berth_core::Config, n: usize) {
    let script = CHECK.replace("$N", &(n - 1).to_string());
    let out = run(config, &["sh", "-c", &script]);
    assert_eq!(out.status, ExitStatus::Exited(0), "{n} layers: {out:?}");
    let want = [
        "bottom".to_string(),
        "layer 1".into(),
        format!("layer {}", n - 1),
        (n - 1).to_string(),
        "1".into(),
    ];
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), want, "{out:?}");
}

#[test]
fn an_overlay_rootfs_of_many_layers() {
    let Some(()) = privileged("an_overlay_rootfs_of_many_layers") else {
        return;
    };
    // 37 layers fit in one page of plain paths; 128 is Docker's limit,
    // 500 overlayfs's.
    for n in [37, 128, 200, MAX_OVERLAY_LAYERS] {
        let dir = tempfile::tempdir().unwrap();
        check(overlay_config(dir.path(), layers(dir.path(), n)), n);
    }
}

#[test]
fn more_layers_than_overlayfs_takes_is_refused_at_create() {
    let dir = tempfile::tempdir().unwrap();
    let config = overlay_config(dir.path(), layers(dir.path(), MAX_OVERLAY_LAYERS + 1));
    let state = state_root();
    let err = Container::create(state.path(), "too-many-layers", config).unwrap_err();
    assert!(
        matches!(&err, ContainerError::InvalidConfig(_)),
        "{}",
        chain(&err)
    );
    assert!(chain(&err).contains("501 layers"), "{}", chain(&err));
}

#[test]
fn an_idmapped_overlay_rootfs_of_many_layers_in_a_user_namespace() {
    let test = "an_idmapped_overlay_rootfs_of_many_layers_in_a_user_namespace";
    let Some(()) = privileged(test) else {
        return;
    };
    // Each layer is an idmapped tree passed to the init: more fds than one
    // message carries.
    // Reachable by the init, whose root is a mapped id.
    let dir = tempfile::Builder::new()
        .prefix("berth-ovl")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let n = 128;
    let mut config = overlay_config(dir.path(), layers(dir.path(), n));
    config
        .namespaces
        .push(berth_core::Namespace::new(berth_core::NamespaceKind::User));
    let map = berth_core::config::IdMap {
        container_id: 0,
        host_id: 400_000,
        size: 65536,
    };
    config.uid_mappings.push(map);
    config.gid_mappings.push(map);
    config.idmap_rootfs = true;
    let script = format!(
        "stat -c %u /bin/busybox /layers/{}; cat /layers/top; touch /new && echo ok",
        n - 1
    );
    let out = run(config, &["sh", "-c", &script]);
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["0", "0", &(n - 1).to_string(), "ok"],
        "{out:?}"
    );
    let upper_file = dir.path().join("c/upper/new");
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(upper_file).unwrap());
    assert_eq!(uid, 0, "written through the idmapped upper dir");
}

#[test]
fn an_overlay_volume_of_many_layers() {
    let Some(()) = privileged("an_overlay_volume_of_many_layers") else {
        return;
    };
    let n = 200;
    let (dir, rootfs) = private_rootfs("berth-ovl-vol");
    let lowers = layers(dir.path(), n);
    let mut config = base_config(&rootfs);
    config.mounts.push(Mount::overlay(lowers, "/vol", &[]));
    let script = format!(
        "cat /vol/layers/1 /vol/layers/{} /vol/layers/top; test -x /vol/bin/busybox && echo bottom; \
         touch /vol/x 2>/dev/null || echo read-only",
        n - 1
    );
    let out = run(config, &["sh", "-c", &script]);
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    let last = format!("layer {}", n - 1);
    let top = (n - 1).to_string();
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        [
            "layer 1",
            last.as_str(),
            top.as_str(),
            "bottom",
            "read-only"
        ],
        "{out:?}"
    );
}
