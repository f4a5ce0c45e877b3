//! Smoke tests of the image test-support library: a real registry, images
//! pushed with oci-client and pulled back, htpasswd auth, and the
//! fault-injecting proxy.

use std::os::unix::fs::MetadataExt;

use berth_e2e::images::{self, OCI_INDEX, OCI_MANIFEST};
use berth_e2e::proxy::Proxy;
use berth_e2e::registry::{self, Registry};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;

/// A started registry, or `None` after printing `skipped: ...`.
fn start_registry(test: &str, auth: Option<(&str, &str)>) -> Option<Registry> {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        println!("skipped: {test}: not root");
        return None;
    }
    let started = match auth {
        Some((user, password)) => Registry::start_with_auth(user, password),
        None => Registry::start(),
    };
    match started {
        Ok(registry) => Some(registry),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: starting the registry: {e}"),
    }
}

fn client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

fn reference(addr: &str, repo: &str, tag: &str) -> Reference {
    Reference::with_tag(addr.into(), repo.into(), tag.into())
}

#[tokio::test]
async fn pushed_images_pull_back_with_the_same_digests() {
    let Some(reg) = start_registry("pushed_images_pull_back_with_the_same_digests", None) else {
        return;
    };
    let addr = reg.addr();
    let client = client();

    let image = images::busybox_image(&addr, "test/busybox", "latest")
        .await
        .unwrap();
    let (raw, digest) = client
        .pull_manifest_raw(
            &reference(&addr, "test/busybox", "latest"),
            &RegistryAuth::Anonymous,
            &[OCI_MANIFEST],
        )
        .await
        .unwrap();
    assert_eq!(digest, image.manifest_digest);
    assert_eq!(images::sha256_digest(&raw), image.manifest_digest);
    assert_eq!(raw.len() as u64, image.manifest_size);
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
    assert_eq!(
        manifest["layers"][0]["digest"],
        image.layer_digests[0].as_str()
    );
    assert!(reg.blob_data_path(&image.layer_digests[0]).is_file());

    let index = images::two_platform_index(&addr, "test/multi", "v1")
        .await
        .unwrap();
    let (raw, digest) = client
        .pull_manifest_raw(
            &reference(&addr, "test/multi", "v1"),
            &RegistryAuth::Anonymous,
            &[OCI_INDEX],
        )
        .await
        .unwrap();
    assert_eq!(digest, index.digest);
    let doc: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(doc["mediaType"], OCI_INDEX);
    let arm = index.image("arm64").unwrap();
    let entry = doc["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["digest"] == arm.manifest_digest.as_str())
        .expect("arm64 entry in the index");
    assert_eq!(entry["platform"]["architecture"], "arm64");
    assert_eq!(entry["platform"]["variant"], "v8");
    // The per-platform images are there by digest.
    let by_digest = Reference::with_digest(
        addr.clone(),
        "test/multi".into(),
        index.image("amd64").unwrap().manifest_digest.clone(),
    );
    let (_, digest) = client
        .pull_manifest_raw(&by_digest, &RegistryAuth::Anonymous, &[OCI_MANIFEST])
        .await
        .unwrap();
    assert_eq!(digest, index.image("amd64").unwrap().manifest_digest);
}

#[tokio::test]
async fn every_fixture_is_accepted_by_the_registry() {
    let Some(reg) = start_registry("every_fixture_is_accepted_by_the_registry", None) else {
        return;
    };
    let addr = reg.addr();
    let client = client();

    let layered = images::multilayer_whiteouts_image(&addr, "test/layers", "1")
        .await
        .unwrap();
    assert_eq!(layered.layer_digests.len(), 2);
    let zstd = images::zstd_image(&addr, "test/zstd", "1").await.unwrap();
    // A blob corrupted on disk is served as it is, and fails the digest check.
    let zstd_layer = zstd.layer_digests[0].as_str();
    let path = reg.blob_data_path(zstd_layer);
    let mut data = std::fs::read(&path).unwrap();
    data[0] ^= 0xff;
    std::fs::write(&path, data).unwrap();
    let mut out = Vec::new();
    let pulled = client
        .pull_blob(&reference(&addr, "test/zstd", "1"), zstd_layer, &mut out)
        .await;
    assert!(pulled.is_err(), "a corrupted blob must not verify");
    images::large_image(&addr, "test/large", "1", 2, 64 * 1024)
        .await
        .unwrap();

    let configured = images::configured_image(&addr, "test/configured", "1")
        .await
        .unwrap();
    let mut config = Vec::new();
    client
        .pull_blob(
            &reference(&addr, "test/configured", "1"),
            configured.config_digest.as_str(),
            &mut config,
        )
        .await
        .unwrap();
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["config"], images::configured_image_config());
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        configured.diff_ids[0].as_str()
    );

    let spec = images::ImageSpec::new(
        vec![images::busybox_layer().unwrap()],
        serde_json::json!({}),
    );
    let docker = images::push_image_docker_v2(&addr, "test/docker", "1", &spec, None)
        .await
        .unwrap();
    let (raw, _) = client
        .pull_manifest_raw(
            &reference(&addr, "test/docker", "1"),
            &RegistryAuth::Anonymous,
            &[images::DOCKER_MANIFEST],
        )
        .await
        .unwrap();
    assert_eq!(images::sha256_digest(&raw), docker.manifest_digest);
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["config"]["mediaType"], images::DOCKER_CONFIG);
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        images::DOCKER_LAYER_GZIP
    );
}

#[tokio::test]
async fn auth_registry_takes_credentials_and_refuses_anonymous() {
    let Some(reg) = start_registry(
        "auth_registry_takes_credentials_and_refuses_anonymous",
        Some(("berth", "s3cret")),
    ) else {
        return;
    };
    let addr = reg.addr();
    let spec = images::ImageSpec::new(
        vec![images::busybox_layer().unwrap()],
        serde_json::json!({}),
    );
    let image = images::push_image(&addr, "test/private", "1", &spec, Some(("berth", "s3cret")))
        .await
        .unwrap();

    let status = registry::http_status(&addr, "/v2/test/private/manifests/1").unwrap();
    assert_eq!(status, 401);
    let err = images::push_image(&addr, "test/private", "2", &spec, None).await;
    assert!(err.is_err(), "anonymous push must fail");

    let (_, digest) = client()
        .pull_manifest_raw(
            &reference(&addr, "test/private", "1"),
            &images::registry_auth(Some(("berth", "s3cret"))),
            &[OCI_MANIFEST],
        )
        .await
        .unwrap();
    assert_eq!(digest, image.manifest_digest);
}

#[tokio::test]
async fn proxy_counts_blob_gets_and_drops_one_download() {
    let Some(reg) = start_registry("proxy_counts_blob_gets_and_drops_one_download", None) else {
        return;
    };
    let image = images::busybox_image(&reg.addr(), "test/busybox", "latest")
        .await
        .unwrap();
    let proxy = Proxy::start(&reg.addr()).unwrap();
    let r = reference(&proxy.addr(), "test/busybox", "latest");
    let layer = image.layer_digests[0].as_str();
    let client = client();

    let mut blob = Vec::new();
    client.pull_blob(&r, layer, &mut blob).await.unwrap();
    assert_eq!(images::sha256_digest(&blob), layer);
    assert_eq!(proxy.blob_gets(), 1);

    proxy.drop_after(100);
    let mut cut = Vec::new();
    let err = client.pull_blob(&r, layer, &mut cut).await;
    assert!(err.is_err(), "the cut download must fail");
    assert_eq!(proxy.drops(), 1);

    // A cut in the body, past the headers, fails too.
    proxy.drop_after(5000);
    let mut cut = Vec::new();
    let err = client.pull_blob(&r, layer, &mut cut).await;
    assert!(err.is_err(), "a download cut mid-body must fail");
    assert_eq!(proxy.drops(), 2);

    let mut again = Vec::new();
    client.pull_blob(&r, layer, &mut again).await.unwrap();
    assert_eq!(again, blob);
    assert_eq!(proxy.blob_gets(), 4);
    assert_eq!(proxy.drops(), 2);
}
