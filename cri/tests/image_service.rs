//! The ImageService against a real registry (Debian's docker-registry on
//! loopback), over a real gRPC unix socket: pulls by tag and digest, Docker
//! and OCI manifests, indexes, whiteouts, zstd, auth, corruption, dropped
//! connections, concurrent pulls, removal while in use, ImageFsInfo, restart.

mod common;

use berth_core::ContainerId;
use berth_cri::image::service::ImageServiceConfig;
use berth_e2e::images::{self, ImageSpec, Layer};
use berth_e2e::proxy::Proxy;
use common::{registry, OverlayMount, Service};
use tonic::Code;

fn cfg() -> ImageServiceConfig {
    ImageServiceConfig::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_and_digest_then_list_and_status() {
    let Some(reg) = registry("pull_by_tag_and_digest_then_list_and_status", None) else {
        return;
    };
    let addr = reg.addr();
    let pushed = images::busybox_image(&addr, "test/busybox", "v1")
        .await
        .unwrap();
    let mut s = Service::start(cfg()).await;

    let tag = format!("{addr}/test/busybox:v1");
    let id = s.pull(&tag).await.unwrap();
    assert_eq!(
        id, pushed.config_digest,
        "PullImage returns the image id (config digest)"
    );

    let listed = s.list().await;
    assert_eq!(listed.len(), 1);
    let img = &listed[0];
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, std::slice::from_ref(&tag));
    let repo_digest = format!("{addr}/test/busybox@{}", pushed.manifest_digest);
    assert_eq!(img.repo_digests, std::slice::from_ref(&repo_digest));
    assert!(
        img.size > 1_000_000,
        "busybox layer counted in size: {}",
        img.size
    );
    assert_eq!(img.uid.as_ref().map(|u| u.value), None);
    assert!(!img.pinned);

    // ImageStatus finds it by tag, id, bare hex, short id and repo digest.
    let hex = id.trim_start_matches("sha256:");
    for name in [
        tag.as_str(),
        id.as_str(),
        hex,
        &hex[..12],
        repo_digest.as_str(),
    ] {
        let st = s.status(name).await;
        assert_eq!(st.map(|i| i.id), Some(id.clone()), "status by {name}");
    }
    // Absent: no error, no image.
    assert!(s
        .status(&format!("{addr}/test/busybox:nope"))
        .await
        .is_none());

    // Verbose info carries the image config.
    let verbose = s
        .client
        .image_status(berth_cri::proto::ImageStatusRequest {
            image: Some(common::spec(&tag)),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(
        info["imageSpec"]["rootfs"]["diff_ids"][0],
        pushed.diff_ids[0].as_str()
    );

    // By digest: same image, no new layer directory, the digest recorded.
    let layers_before = s.layer_dirs();
    let by_digest = format!("{addr}/test/busybox@{}", pushed.manifest_digest);
    assert_eq!(s.pull(&by_digest).await.unwrap(), id);
    assert_eq!(s.layer_dirs(), layers_before);
    let layer = &s.layer_dirs()[0];
    assert!(layer.join("fs/bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(layer.join("fs/bin/sh"))
            .unwrap()
            .to_str(),
        Some("busybox")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_v2_manifests_and_two_platform_indexes() {
    let Some(reg) = registry("docker_v2_manifests_and_two_platform_indexes", None) else {
        return;
    };
    let addr = reg.addr();
    let spec = ImageSpec::new(
        vec![images::busybox_layer().unwrap()],
        serde_json::json!({"Cmd": ["sh"]}),
    );
    let docker = images::push_image_docker_v2(&addr, "test/docker", "v2", &spec, None)
        .await
        .unwrap();
    let index = images::two_platform_index(&addr, "test/multi", "v1")
        .await
        .unwrap();
    let mut s = Service::start(cfg()).await;

    assert_eq!(
        s.pull(&format!("{addr}/test/docker:v2")).await.unwrap(),
        docker.config_digest
    );

    let want = index.image("amd64").unwrap();
    let id = s.pull(&format!("{addr}/test/multi:v1")).await.unwrap();
    assert_eq!(
        id, want.config_digest,
        "the host's (amd64) image is chosen from the index"
    );
    let img = s.status(&id).await.unwrap();
    // kubelet sees the digest it can pull again: the index's.
    assert_eq!(
        img.repo_digests,
        [format!("{addr}/test/multi@{}", index.digest)]
    );
    let c = ContainerId::new("platform-check").unwrap();
    let prepared = s.svc.store().prepare_container(&id, &c).unwrap();
    let top = &prepared.rootfs.lowerdirs[0];
    assert_eq!(
        std::fs::read_to_string(top.join("platform")).unwrap(),
        "amd64"
    );
    s.svc.store().remove_container(&c).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_without_this_platform_is_not_found() {
    let Some(reg) = registry("an_index_without_this_platform_is_not_found", None) else {
        return;
    };
    let addr = reg.addr();
    let layer = images::busybox_layer().unwrap();
    let arm = images::Platform::new("linux", "s390x", None);
    let spec = ImageSpec::for_platform(vec![layer], serde_json::json!({}), &arm);
    let pushed = images::push_image(&addr, "test/s390x", "img", &spec, None)
        .await
        .unwrap();
    images::push_index(&addr, "test/s390x", "v1", &[(pushed, arm)], None)
        .await
        .unwrap();
    let mut s = Service::start(cfg()).await;
    let err = s.pull(&format!("{addr}/test/s390x:v1")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("linux/s390x"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_opaque_dirs_and_zstd_layers_give_the_right_tree() {
    let Some(reg) = registry(
        "whiteouts_opaque_dirs_and_zstd_layers_give_the_right_tree",
        None,
    ) else {
        return;
    };
    let addr = reg.addr();
    images::multilayer_whiteouts_image(&addr, "test/wh", "v1")
        .await
        .unwrap();
    images::zstd_image(&addr, "test/zstd", "v1").await.unwrap();
    let mut s = Service::start(cfg()).await;

    let id = s.pull(&format!("{addr}/test/wh:v1")).await.unwrap();
    let c = ContainerId::new("whiteouts").unwrap();
    let prepared = s.svc.store().prepare_container(&id, &c).unwrap();
    assert_eq!(prepared.rootfs.lowerdirs.len(), 2);
    let target = s.dir.path().join("merged");
    {
        let _m = OverlayMount::mount(&prepared.rootfs, &target);
        assert_eq!(
            std::fs::read_to_string(target.join("a/keep")).unwrap(),
            "keep\n"
        );
        assert!(!target.join("a/gone").exists(), "whiteout hides a/gone");
        assert!(!target.join("opq/old").exists(), "opaque dir hides opq/old");
        assert_eq!(
            std::fs::read_to_string(target.join("opq/new")).unwrap(),
            "new\n"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("top/file")).unwrap(),
            "top\n"
        );
        assert!(target.join("bin/busybox").is_file());
        std::fs::write(target.join("written"), "x").unwrap();
    }
    assert!(
        prepared.rootfs.upperdir.join("written").is_file(),
        "writes go to the upper dir"
    );
    s.svc.store().remove_container(&c).unwrap();
    assert!(!prepared.rootfs.upperdir.exists());

    let zid = s.pull(&format!("{addr}/test/zstd:v1")).await.unwrap();
    let z = s.status(&zid).await.unwrap();
    assert_eq!(z.repo_tags, [format!("{addr}/test/zstd:v1")]);
    assert_eq!(
        s.layer_dirs().len(),
        3,
        "two whiteout-image layers + the zstd one"
    );
    let c = ContainerId::new("zstd").unwrap();
    let p = s.svc.store().prepare_container(&zid, &c).unwrap();
    assert!(p.rootfs.lowerdirs[0].join("bin/busybox").is_file());
    s.svc.store().remove_container(&c).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_config_reaches_the_container() {
    let Some(reg) = registry("image_config_reaches_the_container", None) else {
        return;
    };
    let addr = reg.addr();
    images::configured_image(&addr, "test/conf", "v1")
        .await
        .unwrap();
    let mut s = Service::start(cfg()).await;
    let id = s.pull(&format!("{addr}/test/conf:v1")).await.unwrap();
    assert_eq!(
        s.status(&id).await.unwrap().uid.map(|u| u.value),
        Some(65534)
    );
    let c = ContainerId::new("conf").unwrap();
    let p = s.svc.store().prepare_container(&id, &c).unwrap();
    assert_eq!(p.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(p.config.cmd, ["echo hi"]);
    assert_eq!(p.config.env, ["PATH=/bin", "FOO=bar"]);
    assert_eq!(p.config.user, "65534:65534");
    assert_eq!(p.config.working_dir, "/tmp");
    assert_eq!(p.config.stop_signal, "SIGTERM");
    assert_eq!(p.config.exposed_ports, ["8080/tcp"]);
    assert_eq!(p.config.volumes, ["/data"]);
    s.svc.store().remove_container(&c).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_success_and_failure() {
    let Some(reg) = registry("auth_success_and_failure", Some(("alice", "s3cret"))) else {
        return;
    };
    let addr = reg.addr();
    let layer = images::busybox_layer().unwrap();
    let spec = ImageSpec::new(vec![layer], serde_json::json!({}));
    let pushed = images::push_image(&addr, "private/app", "v1", &spec, Some(("alice", "s3cret")))
        .await
        .unwrap();
    let mut s = Service::start(cfg()).await;
    let name = format!("{addr}/private/app:v1");

    let err = s.pull(&name).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "anonymous: {err:?}");
    let wrong = berth_cri::proto::AuthConfig {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = s.pull_with(&name, Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "wrong password: {err:?}");
    assert!(err.message().contains(&addr), "{}", err.message());
    assert!(s.list().await.is_empty());
    assert!(
        s.blob_files().is_empty(),
        "nothing stored after failed auth"
    );

    // base64("alice:s3cret") in the `auth` field, as kubelet passes it from a
    // docker config secret.
    let right = berth_cri::proto::AuthConfig {
        auth: "YWxpY2U6czNjcmV0".into(),
        ..Default::default()
    };
    assert_eq!(
        s.pull_with(&name, Some(right)).await.unwrap(),
        pushed.config_digest
    );
    // Those credentials were for that request only: a later anonymous pull
    // (another pod, no pull secret) must not ride on them.
    let err = s.pull(&name).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "credentials leaked: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_blob_is_refused_and_nothing_is_stored() {
    let Some(reg) = registry("a_corrupted_blob_is_refused_and_nothing_is_stored", None) else {
        return;
    };
    let addr = reg.addr();
    let pushed = images::busybox_image(&addr, "test/bad", "v1")
        .await
        .unwrap();
    let data = reg.blob_data_path(&pushed.layer_digests[0]);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let mut s = Service::start(cfg()).await;
    let err = s.pull(&format!("{addr}/test/bad:v1")).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(
        err.message().contains(&pushed.layer_digests[0]),
        "{}",
        err.message()
    );
    assert!(s.list().await.is_empty());
    assert!(s.layer_dirs().is_empty(), "no layer from a bad blob");
    let layer_hex = pushed.layer_digests[0].trim_start_matches("sha256:");
    assert!(
        !s.blob_files().iter().any(|p| p.ends_with(layer_hex)),
        "no blob under the digest it does not have"
    );
    assert!(common::entries(&s.root().join("ingest")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_that_escapes_its_directory_is_rejected() {
    let Some(reg) = registry("a_layer_that_escapes_its_directory_is_rejected", None) else {
        return;
    };
    let addr = reg.addr();
    // A tar whose entry name is `../escape`: written by hand, since tar
    // builders refuse such names.
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..9].copy_from_slice(b"../escape");
    header.set_mode(0o644);
    header.set_size(3);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut raw = header.as_bytes().to_vec();
    raw.extend_from_slice(b"bad");
    raw.resize(512 * 2, 0);
    raw.resize(512 * 4, 0);
    let diff_id = images::sha256_digest(&raw);
    let layer = Layer {
        media_type: images::OCI_LAYER_TAR.into(),
        blob: raw,
        diff_id,
    };
    let spec = ImageSpec::new(vec![layer], serde_json::json!({}));
    images::push_image(&addr, "test/evil", "v1", &spec, None)
        .await
        .unwrap();

    let mut s = Service::start(cfg()).await;
    let err = s.pull(&format!("{addr}/test/evil:v1")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("../escape"), "{}", err.message());
    assert!(!s.root().join("layers/escape").exists() && !s.root().join("escape").exists());
    assert!(s.layer_dirs().is_empty());
    assert!(s.list().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_mid_layer_is_resumed() {
    let Some(reg) = registry("a_dropped_connection_mid_layer_is_resumed", None) else {
        return;
    };
    let pushed = images::busybox_image(&reg.addr(), "test/drop", "v1")
        .await
        .unwrap();
    let proxy = Proxy::start(&reg.addr()).unwrap();
    let mut s = Service::start(cfg()).await;
    // Past the headers, well inside the ~1 MB busybox layer (the config blob
    // is smaller than this and passes untouched).
    proxy.drop_after(200_000);
    let id = s
        .pull(&format!("{}/test/drop:v1", proxy.addr()))
        .await
        .unwrap();
    assert_eq!(id, pushed.config_digest);
    assert_eq!(proxy.drops(), 1);
    // config + layer, plus the resumed request for the rest of the layer.
    assert_eq!(proxy.blob_gets(), 3);
    assert_eq!(s.svc.puller().downloads(), 2, "one download per blob");
    // The broken layer continued from where it stopped (a 206 answer to a
    // range request past byte 0), it was not fetched again from the start.
    assert_eq!(s.svc.puller().resumes(), 1, "resumed, not restarted");
    assert!(s.layer_dirs()[0].join("fs/bin/busybox").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_download_once() {
    let Some(reg) = registry("concurrent_pulls_of_one_image_download_once", None) else {
        return;
    };
    images::multilayer_whiteouts_image(&reg.addr(), "test/twice", "v1")
        .await
        .unwrap();
    let proxy = Proxy::start(&reg.addr()).unwrap();
    let s = Service::start(cfg()).await;
    let name = format!("{}/test/twice:v1", proxy.addr());
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let mut c = s.client.clone();
            let name = name.clone();
            tokio::spawn(async move {
                c.pull_image(berth_cri::proto::PullImageRequest {
                    image: Some(common::spec(&name)),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().image_ref)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for p in pulls {
        ids.push(p.await.unwrap().unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(proxy.blob_gets(), 3, "config + 2 layers, each fetched once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_while_in_use_defers_and_fs_info_moves() {
    let Some(reg) = registry("remove_while_in_use_defers_and_fs_info_moves", None) else {
        return;
    };
    let addr = reg.addr();
    images::busybox_image(&addr, "test/rm", "v1").await.unwrap();
    let mut s = Service::start(cfg()).await;
    let empty = s.fs_usage().await;
    let mountpoint = empty.fs_id.as_ref().unwrap().mountpoint.clone();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(mountpoint.as_str())),
        "{mountpoint} is a mount point"
    );
    let used0 = empty.used_bytes.unwrap().value;

    let name = format!("{addr}/test/rm:v1");
    let id = s.pull(&name).await.unwrap();
    let full = s.fs_usage().await;
    assert!(
        full.used_bytes.unwrap().value > used0 + 1_000_000,
        "blob + unpacked busybox counted: {} -> {}",
        used0,
        full.used_bytes.unwrap().value
    );
    assert!(full.inodes_used.unwrap().value > empty.inodes_used.unwrap().value + 10);

    let c = ContainerId::new("user").unwrap();
    s.svc.store().prepare_container(&id, &c).unwrap();
    s.remove(&name).await.unwrap();
    assert!(s.list().await.is_empty(), "removed image is not listed");
    assert!(s.status(&id).await.is_none());
    assert_eq!(
        s.layer_dirs().len(),
        1,
        "layers stay while a container uses them"
    );

    s.svc.store().remove_container(&c).unwrap();
    assert!(
        s.layer_dirs().is_empty(),
        "last user gone: layers collected"
    );
    assert!(s.blob_files().is_empty(), "and blobs");
    assert_eq!(s.fs_usage().await.used_bytes.unwrap().value, used0);

    // Removing what is not there is fine (RemoveImage is idempotent).
    s.remove(&name).await.unwrap();
    // An image not in use goes at once.
    s.pull(&name).await.unwrap();
    s.remove(&id).await.unwrap();
    assert!(s.layer_dirs().is_empty() && s.blob_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_leases_survive_a_restart() {
    let Some(reg) = registry("images_and_leases_survive_a_restart", None) else {
        return;
    };
    let addr = reg.addr();
    images::busybox_image(&addr, "test/keep", "v1")
        .await
        .unwrap();
    let mut s = Service::start(cfg()).await;
    let name = format!("{addr}/test/keep:v1");
    let id = s.pull(&name).await.unwrap();
    let c = ContainerId::new("survivor").unwrap();
    s.svc.store().prepare_container(&id, &c).unwrap();
    s.remove(&name).await.unwrap();
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);

    let mut s = Service::start_at(dir, cfg()).await;
    assert!(s.list().await.is_empty(), "the removal is remembered");
    assert_eq!(s.layer_dirs().len(), 1, "the lease is remembered");
    s.svc.store().remove_container(&c).unwrap();
    assert!(s.layer_dirs().is_empty());
    s.pull(&name).await.unwrap();
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    let mut s = Service::start_at(dir, cfg()).await;
    assert_eq!(s.status(&name).await.map(|i| i.id), Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_toml_points_a_registry_name_at_a_mirror() {
    let Some(reg) = registry("hosts_toml_points_a_registry_name_at_a_mirror", None) else {
        return;
    };
    let addr = reg.addr();
    let pushed = images::busybox_image(&addr, "library/busybox", "1.36")
        .await
        .unwrap();
    let certs = tempfile::tempdir().unwrap();
    // docker.io is served by the loopback registry as a mirror; the upstream
    // (unreachable here) is never asked because the mirror answers.
    std::fs::create_dir_all(certs.path().join("docker.io")).unwrap();
    std::fs::write(
        certs.path().join("docker.io/hosts.toml"),
        format!("server = \"https://registry-1.docker.io\"\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .unwrap();
    let mut s = Service::start(ImageServiceConfig {
        registry_config_dir: Some(certs.path().into()),
        pinned_images: vec!["busybox:1.36".into()],
        ..Default::default()
    })
    .await;
    let id = s.pull("busybox:1.36").await.unwrap();
    assert_eq!(id, pushed.config_digest);
    let img = s.status("docker.io/library/busybox:1.36").await.unwrap();
    assert_eq!(img.repo_tags, ["docker.io/library/busybox:1.36"]);
    assert!(img.pinned, "configured as pinned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_invalid_argument_naming_the_field() {
    let mut s = Service::start(cfg()).await;
    let err = s
        .client
        .pull_image(berth_cri::proto::PullImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("image.image"), "{}", err.message());
    for bad in ["Not A Name", "busybox@sha256:1234", "a:b:c"] {
        let err = s.pull(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        assert!(err.message().contains(bad), "{}", err.message());
    }
    let err = s
        .client
        .image_status(berth_cri::proto::ImageStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = s
        .client
        .remove_image(berth_cri::proto::RemoveImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // An unreachable registry is Unavailable with the host in the message.
    let err = s.pull("127.0.0.1:9/none:v1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("127.0.0.1:9"), "{}", err.message());
}
