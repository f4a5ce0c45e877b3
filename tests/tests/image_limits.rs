//! Image metadata a registry serves, through the real `berth serve` and a
//! real `docker-registry` (issues 17 and 24): a manifest or image config
//! over `[image] max_metadata_bytes` fails the pull before it is buffered
//! (the peak RSS of the pull helper that fetched it stays small, the
//! daemon's barely moves, nothing is left in the store),
//! whether its size is declared or it arrives chunked; and an index whose
//! entry is itself an index is followed to the platform's manifest, to a
//! bounded depth.
//!
//! distribution neither takes nor serves a manifest over 4 MiB, so the
//! 100 MiB manifest comes from a gateway in front of the registry that
//! answers that one path itself (with its size, or chunked); everything
//! else, the 100 MiB config blob among it, is the registry's.

mod common;

use std::path::Path;
use std::sync::Arc;

use berth_cri::proto::image_service_client::ImageServiceClient;
use berth_cri::proto::{self, ImageSpec};
use berth_e2e::berth_binary;
use berth_e2e::daemon::Daemon;
use berth_e2e::gateway::{Canned, Gateway, GatewayRules};
use berth_e2e::images::{self, PushedImage, OCI_INDEX, OCI_MANIFEST};
use berth_e2e::registry::Registry;
use common::*;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

const MIB: usize = 1 << 20;
/// How big the oversized documents are.
const HUGE: usize = 100 * MIB;
/// berth's default `max_metadata_bytes`.
const LIMIT: u64 = 4 << 20;
/// How much the daemon's peak RSS may grow over the oversized pulls.
const RSS_BUDGET_KIB: u64 = 64 * 1024;

/// A started registry, or `None` after printing `skipped: ...`.
fn registry(test: &str) -> Option<Registry> {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: {test}: needs root");
        return None;
    }
    match Registry::start() {
        Ok(r) => Some(r),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: starting the registry: {e}"),
    }
}

/// PullImage of `image`: the image ref, or the status.
async fn try_pull(ch: Channel, image: &str) -> Result<String, tonic::Status> {
    ImageServiceClient::new(ch)
        .pull_image(proto::PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status_of(ch: Channel, image: &str) -> Option<proto::Image> {
    ImageServiceClient::new(ch)
        .image_status(proto::ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

async fn listed(ch: Channel) -> Vec<proto::Image> {
    ImageServiceClient::new(ch)
        .list_images(proto::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images
}

/// `(VmHWM, VmRSS)` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The JSON document stored in `reg` under `digest`.
fn stored_json(reg: &Registry, digest: &str) -> Value {
    serde_json::from_slice(&std::fs::read(reg.blob_data_path(digest)).unwrap()).unwrap()
}

/// Asserts `err` is the refusal of an oversized document: FailedPrecondition
/// naming `what`, the size (when declared) and the limit.
fn assert_too_large(err: &tonic::Status, what: &str, size: Option<usize>) {
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let msg = err.message();
    assert!(msg.contains(what), "{what} named: {msg}");
    assert!(
        msg.contains(&format!("over the limit of {LIMIT} bytes"))
            && msg.contains("max_metadata_bytes"),
        "limit named: {msg}"
    );
    match size {
        Some(size) => assert!(msg.contains(&format!("is {size} bytes")), "size: {msg}"),
        None => assert!(msg.contains("no size declared"), "{msg}"),
    }
}

/// busybox as `repo:small`, plus `repo:config`, whose image config is
/// busybox's padded to 100 MiB (the blob written into the registry's
/// storage, quicker than a push), and a manifest (for a gateway to serve)
/// that is busybox's padded to 100 MiB with an annotation. berth once
/// pulled both.
async fn push_oversized(reg: &Registry, repo: &str) -> Oversized {
    let small = images::busybox_image(&reg.addr(), repo, "small")
        .await
        .unwrap();
    let manifest = stored_json(reg, &small.manifest_digest);

    let mut big = manifest.clone();
    big["annotations"] = json!({ "org.example.padding": "x".repeat(HUGE) });
    let big = serde_json::to_vec(&big).unwrap();
    assert!(big.len() > HUGE);

    let mut config = stored_json(reg, &small.config_digest);
    config["padding"] = json!("x".repeat(HUGE));
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = reg.put_blob_file(repo, &config).unwrap();
    let mut doc = manifest;
    doc["config"]["digest"] = json!(config_digest);
    doc["config"]["size"] = json!(config.len());
    images::push_manifest_doc(&reg.addr(), repo, Some("config"), OCI_MANIFEST, &doc)
        .await
        .unwrap();
    Oversized {
        manifest: Arc::new(big),
        config_digest,
        config_size: config.len(),
    }
}

/// What `push_oversized` pushed.
struct Oversized {
    manifest: Arc<Vec<u8>>,
    config_digest: String,
    config_size: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifests_and_configs_are_refused_before_they_are_buffered() {
    const T: &str = "oversized_manifests_and_configs_are_refused_before_they_are_buffered";
    let Some(reg) = registry(T) else {
        return;
    };
    let Some(berth) = berth_binary(T) else {
        return;
    };
    let repo = "test/big";
    let big = push_oversized(&reg, repo).await;

    // Fronts that serve the 100 MiB manifest as `repo:manifest`: one with
    // its size, one chunked, where the size is learned only by reading.
    let canned = Canned {
        path: format!("/v2/{repo}/manifests/manifest"),
        content_type: OCI_MANIFEST.into(),
        body: big.manifest.clone(),
    };
    let front = |chunked| {
        Gateway::start(
            &reg.addr(),
            GatewayRules {
                chunked,
                canned: vec![canned.clone()],
                ..GatewayRules::default()
            },
        )
        .unwrap()
    };
    let (sized_gw, chunked_gw) = (front(false), front(true));
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.d");
    for (host, gw) in [
        ("sized.example.test", &sized_gw),
        ("chunked.example.test", &chunked_gw),
    ] {
        std::fs::create_dir_all(certs.join(host)).unwrap();
        std::fs::write(
            certs.join(host).join("hosts.toml"),
            format!("server = \"http://{}\"\n", gw.addr()),
        )
        .unwrap();
    }
    let mut daemon = Daemon::start(
        &berth,
        dir.path(),
        &["--registry-config-dir", certs.to_str().unwrap()],
    );
    let ch = daemon.channel().await;
    assert!(listed(ch.clone()).await.is_empty());
    let pid = daemon.child.id();
    let (hwm_before, rss_before) = memory_kib(pid);

    let addr = reg.addr();
    let by_size = format!("sized.example.test/{repo}:manifest");
    let err = try_pull(ch.clone(), &by_size).await.unwrap_err();
    assert_too_large(
        &err,
        &format!("the manifest of {by_size}"),
        Some(big.manifest.len()),
    );
    assert!(sized_gw.canned() > 0, "the gateway served the manifest");

    let with_config = format!("{addr}/{repo}:config");
    let err = try_pull(ch.clone(), &with_config).await.unwrap_err();
    assert_too_large(
        &err,
        &format!("image config {}", big.config_digest),
        Some(big.config_size),
    );

    // Chunked: the read stops at the limit.
    let chunked = format!("chunked.example.test/{repo}:manifest");
    let err = try_pull(ch.clone(), &chunked).await.unwrap_err();
    assert_too_large(&err, &format!("the manifest of {chunked}"), None);
    assert!(chunked_gw.canned() > 0, "the gateway served the manifest");

    let (hwm_after, rss_after) = memory_kib(pid);
    println!(
        "daemon memory over the oversized pulls: VmHWM {hwm_before} -> {hwm_after} KiB \
         (+{} KiB), VmRSS {rss_before} -> {rss_after} KiB",
        hwm_after.saturating_sub(hwm_before)
    );
    assert!(
        hwm_after.saturating_sub(hwm_before) < RSS_BUDGET_KIB,
        "peak RSS grew by {} KiB (budget {RSS_BUDGET_KIB} KiB)",
        hwm_after - hwm_before
    );
    // The fetches ran in pull helper processes: their peaks, as logged.
    let peaks: Vec<u64> = daemon
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "pull helper finished")
        .filter_map(|v| v["fields"]["helper_peak_rss_kib"].as_u64())
        .collect();
    println!("pull helpers' peak RSS: {peaks:?} KiB");
    assert_eq!(peaks.len(), 3, "one helper per pull:\n{}", daemon.log());
    assert!(
        peaks.iter().all(|&p| p > 0 && p < RSS_BUDGET_KIB),
        "a pull helper's peak RSS {peaks:?} KiB is over {RSS_BUDGET_KIB} KiB"
    );

    // Nothing recorded, nothing left in the store.
    assert!(listed(ch.clone()).await.is_empty());
    for name in [&by_size, &with_config, &chunked] {
        assert!(status_of(ch.clone(), name).await.is_none(), "{name}");
    }
    let root = dir.path().join("root");
    assert_eq!(entries(&root.join("blobs/sha256")), Vec::<String>::new());
    assert_eq!(entries(&root.join("ingest")), Vec::<String>::new());
    assert_eq!(entries(&root.join("images")), Vec::<String>::new());

    // The same images, within the limit, pull: the small one does.
    let small = format!("{addr}/{repo}:small");
    try_pull(ch.clone(), &small).await.unwrap();
    daemon.terminate();
    berth_e2e::daemon::cleanup_dir(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_limit_is_the_configured_one() {
    const T: &str = "the_metadata_limit_is_the_configured_one";
    let Some(reg) = registry(T) else {
        return;
    };
    let Some(berth) = berth_binary(T) else {
        return;
    };
    let pushed = images::busybox_image(&reg.addr(), "test/busybox", "1")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let limit = 128;
    assert!(pushed.manifest_size > limit);
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[image]\nmax_metadata_bytes = {limit}\n")).unwrap();
    let mut daemon = Daemon::start(&berth, dir.path(), &["--config", config.to_str().unwrap()]);
    let ch = daemon.channel().await;
    let image = format!("{}/test/busybox:1", reg.addr());
    let err = try_pull(ch.clone(), &image).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let msg = err.message();
    assert!(
        msg.contains(&format!("is {} bytes", pushed.manifest_size))
            && msg.contains(&format!("over the limit of {limit} bytes")),
        "{msg}"
    );
    assert!(listed(ch).await.is_empty());
    daemon.terminate();
    berth_e2e::daemon::cleanup_dir(dir.path());
}

/// Pushes an OCI index over `entries` (descriptor JSON) to `repo`, tagged
/// `tag` or by digest; its descriptor with `platform` (if any).
async fn push_index(
    addr: &str,
    repo: &str,
    tag: Option<&str>,
    entries: Vec<Value>,
    platform: Option<&images::Platform>,
) -> Value {
    let doc = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries });
    let (digest, size) = images::push_manifest_doc(addr, repo, tag, OCI_INDEX, &doc)
        .await
        .unwrap();
    descriptor(OCI_INDEX, &digest, size, platform)
}

fn descriptor(
    media_type: &str,
    digest: &str,
    size: u64,
    platform: Option<&images::Platform>,
) -> Value {
    let mut d = json!({ "mediaType": media_type, "digest": digest, "size": size });
    if let Some(p) = platform {
        d["platform"] = p.to_json();
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_indexes_are_followed_to_the_platform_manifest() {
    const T: &str = "nested_indexes_are_followed_to_the_platform_manifest";
    let Some(mut env) = env(T).await else {
        return;
    };
    let addr = env._reg.addr();
    let repo = "test/nested";
    let host = images::Platform::host();
    let other = images::Platform::new("linux", "s390x", None);
    let leaf: PushedImage = images::busybox_image(&addr, repo, "leaf").await.unwrap();
    let leaf_desc = descriptor(
        &leaf.media_type,
        &leaf.manifest_digest,
        leaf.manifest_size,
        Some(&host),
    );
    // An index of the platform's manifest, itself an entry (for this
    // platform) of the tagged index, next to another platform's entry.
    let inner = push_index(&addr, repo, None, vec![leaf_desc], Some(&host)).await;
    let decoy = descriptor(
        &leaf.media_type,
        &leaf.manifest_digest,
        leaf.manifest_size,
        Some(&other),
    );
    let outer = push_index(
        &addr,
        repo,
        Some("v1"),
        vec![decoy.clone(), inner.clone()],
        None,
    )
    .await;
    // An entry without a platform that is an index is followed too.
    let mut untagged = inner.clone();
    untagged.as_object_mut().unwrap().remove("platform");
    push_index(&addr, repo, Some("v2"), vec![decoy, untagged], None).await;
    // A chain of indexes: 4 levels pull, 5 are refused.
    let mut chain = inner.clone();
    for level in 2..=5 {
        let tag = format!("deep{level}");
        chain = push_index(&addr, repo, Some(&tag), vec![chain], Some(&host)).await;
    }

    let ch = env.daemon.channel().await;
    let v1 = format!("{addr}/{repo}:v1");
    assert_eq!(try_pull(ch.clone(), &v1).await.unwrap(), leaf.config_digest);
    let st = status_of(ch.clone(), &v1).await.expect("v1 is listed");
    assert_eq!(st.id, leaf.config_digest);
    let outer_digest = outer["digest"].as_str().unwrap();
    assert_eq!(st.repo_digests, [format!("{addr}/{repo}@{outer_digest}")]);
    for tag in ["v2", "deep4"] {
        let image = format!("{addr}/{repo}:{tag}");
        assert_eq!(
            try_pull(ch.clone(), &image).await.unwrap(),
            leaf.config_digest,
            "{tag}"
        );
    }
    let deep5 = format!("{addr}/{repo}:deep5");
    let err = try_pull(ch.clone(), &deep5).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("at most 4 levels of index"),
        "{}",
        err.message()
    );
    assert!(status_of(ch.clone(), &deep5).await.is_none());

    // The image runs.
    let mut cfg = container(&env, "nested", &["sh", "-c", "echo nested-ok"], &[]);
    cfg.image = Some(ImageSpec {
        image: v1.clone(),
        ..Default::default()
    });
    let id = create(&mut env, cfg).await.unwrap();
    start(&mut env.rt, &id).await.unwrap();
    let st = wait_exited(&mut env.rt, &id).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(st.image_id, leaf.config_digest);
    let out: Vec<String> = log_records(&st.log_path).into_iter().map(|r| r.2).collect();
    assert_eq!(out, ["nested-ok"]);
}

/// A gzip bomb (64 MiB of zeros in a ~64 KiB layer) on a node that allows
/// 16 MiB of unpacked layers: the pull fails naming the setting, with no
/// image, layer or unpack directory left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_past_the_unpacked_limit_is_refused_before_the_disk_fills() {
    const T: &str = "a_layer_past_the_unpacked_limit_is_refused_before_the_disk_fills";
    let Some(reg) = registry(T) else {
        return;
    };
    let Some(berth) = berth_binary(T) else {
        return;
    };
    let mut files = images::busybox_entries().unwrap();
    files.push(images::Entry::file("zeros", 0o644, vec![0u8; 64 << 20]));
    let bomb = images::Layer::tar_gz(&files).unwrap();
    assert!(bomb.blob.len() < 4 << 20, "{} bytes", bomb.blob.len());
    let spec = images::ImageSpec::new(vec![bomb], json!({}));
    images::push_image(&reg.addr(), "test/bomb", "v1", &spec, None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[image]\nmax_unpacked_bytes = 16777216\n").unwrap();
    let mut daemon = Daemon::start(&berth, dir.path(), &["--config", config.to_str().unwrap()]);
    let ch = daemon.channel().await;
    let image = format!("{}/test/bomb:v1", reg.addr());
    let err = try_pull(ch.clone(), &image).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("more than 16777216 bytes")
            && err.message().contains("max_unpacked_bytes"),
        "{}",
        err.message()
    );
    assert!(listed(ch.clone()).await.is_empty());
    assert!(entries(&dir.path().join("root/layers")).is_empty());
    // Within the limit (the busybox layer alone), a pull works.
    images::busybox_image(&reg.addr(), "test/busybox", "1")
        .await
        .unwrap();
    try_pull(ch, &format!("{}/test/busybox:1", reg.addr()))
        .await
        .unwrap();
    daemon.terminate();
    berth_e2e::daemon::cleanup_dir(dir.path());
}

/// Pids of the pull helpers (`berth __berth_pull`) whose parent is `daemon`.
fn helpers_of(daemon: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains("__berth_pull")
                && status.lines().any(|l| {
                    l.strip_prefix("PPid:")
                        .is_some_and(|p| p.trim() == daemon.to_string())
                })
        })
        .collect()
}

/// Waits up to 10 s for `f` to hold.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("not within 10 s: {what}");
}

/// A registry that accepts connections and never answers: a pull of an
/// image on it waits (the read timeout is 60 s).
fn stalled_registry() -> (String, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten().take(16) {
            held.push(s);
        }
    });
    (addr, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_helper_lives_no_longer_than_its_pull() {
    const T: &str = "a_pull_helper_lives_no_longer_than_its_pull";
    let Some(reg) = registry(T) else {
        return;
    };
    let Some(berth) = berth_binary(T) else {
        return;
    };
    images::busybox_image(&reg.addr(), "test/helper", "v1")
        .await
        .unwrap();
    let (stalled, _accepting) = stalled_registry();
    let stalled_image = format!("{stalled}/test/stalled:v1");
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(&berth, dir.path(), &[]);
    let ch = daemon.channel().await;
    let pid = daemon.child.id();
    let root = dir.path().join("root");

    // A pull: its helper ran, answered and is gone.
    try_pull(ch.clone(), &format!("{}/test/helper:v1", reg.addr()))
        .await
        .unwrap();
    assert!(daemon.log().contains("pull helper finished"));
    assert!(helpers_of(pid).is_empty(), "{:?}", helpers_of(pid));

    // A client that gives up: the daemon kills the helper of that pull.
    let mut img = ImageServiceClient::new(ch.clone());
    let mut req = tonic::Request::new(proto::PullImageRequest {
        image: Some(ImageSpec {
            image: stalled_image.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });
    req.set_timeout(std::time::Duration::from_secs(1));
    let err = img.pull_image(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    eventually("the cancelled pull's helper is gone", || {
        helpers_of(pid).is_empty()
    })
    .await;

    // A helper killed mid-pull: the pull fails, saying so, and what the
    // helper had left unfinished (its files are named by its pid: stand-ins
    // here, the pull is stalled before any) is deleted.
    let (c, image) = (ch.clone(), stalled_image.clone());
    let pulling = tokio::spawn(async move { try_pull(c, &image).await });
    eventually("a helper runs", || helpers_of(pid).len() == 1).await;
    let helper = helpers_of(pid)[0];
    let hex = "ab".repeat(32);
    let ingest_left = root.join(format!("ingest/{hex}.{helper}.0"));
    let unpack_left = root.join(format!("layers/tmp-{hex}-{helper}-0"));
    std::fs::write(&ingest_left, b"partial").unwrap();
    std::fs::create_dir_all(unpack_left.join("fs")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let err = pulling.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("without an answer"), "{err:?}");
    assert!(!ingest_left.exists() && !unpack_left.exists());
    assert!(helpers_of(pid).is_empty());

    // The daemon killed mid-pull: its helper ends by itself.
    let (c, image) = (ch.clone(), stalled_image.clone());
    let _pulling = tokio::spawn(async move { try_pull(c, &image).await });
    eventually("a helper runs", || helpers_of(pid).len() == 1).await;
    let helper = helpers_of(pid)[0];
    daemon.crash();
    eventually("the orphaned helper is gone", || {
        !Path::new(&format!("/proc/{helper}")).exists()
            || std::fs::read_to_string(format!("/proc/{helper}/status"))
                .is_ok_and(|s| s.contains("State:\tZ"))
    })
    .await;

    // A new daemon on the same store pulls as before.
    let daemon = Daemon::start(&berth, dir.path(), &[]);
    let ch = daemon.channel().await;
    try_pull(ch.clone(), &format!("{}/test/helper:v1", reg.addr()))
        .await
        .unwrap();
    assert!(entries(&root.join("ingest")).is_empty());
    drop(daemon);
    berth_e2e::daemon::cleanup_dir(dir.path());
}
