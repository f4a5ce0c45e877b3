//! OCI images built in memory and pushed to a test registry with
//! oci-client: layers from a list of tar entries, image configs, OCI and
//! Docker schema 2 manifests, image indexes, and ready-made fixtures.
//!
//! Builds are deterministic (uid/gid 0, fixed mtimes, gzip without a
//! timestamp), so the same fixture always has the same digests.

use std::io::{self, Write};
use std::sync::OnceLock;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The mtime of every tar entry (2020-09-13), so builds are reproducible.
const MTIME: u64 = 1_600_000_000;
/// The `created` time in image configs, for the same reason.
const CREATED: &str = "2020-09-13T12:26:40Z";

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One entry of a layer tar. Paths are relative to the root (a leading `/`
/// is dropped); every entry is owned by 0:0.
#[derive(Clone, Debug)]
pub enum Entry {
    File {
        path: String,
        mode: u32,
        content: Vec<u8>,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// `target` is the path (from the root) of an earlier entry.
    Hardlink {
        path: String,
        target: String,
    },
    /// Deletes `path` from lower layers: `etc/motd` becomes `etc/.wh.motd`.
    Whiteout {
        path: String,
    },
    /// Hides everything lower layers have in `dir`: `dir/.wh..wh..opq`.
    Opaque {
        dir: String,
    },
}

impl Entry {
    pub fn file(path: &str, mode: u32, content: impl Into<Vec<u8>>) -> Entry {
        Entry::File {
            path: path.into(),
            mode,
            content: content.into(),
        }
    }

    pub fn dir(path: &str, mode: u32) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode,
        }
    }

    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }

    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::Hardlink {
            path: path.into(),
            target: target.into(),
        }
    }

    pub fn whiteout(path: &str) -> Entry {
        Entry::Whiteout { path: path.into() }
    }

    pub fn opaque(dir: &str) -> Entry {
        Entry::Opaque { dir: dir.into() }
    }
}

/// A layer blob as pushed, with the digest of its uncompressed tar.
#[derive(Clone, Debug)]
pub struct Layer {
    pub media_type: String,
    pub blob: Vec<u8>,
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

impl Layer {
    /// An uncompressed tar layer.
    pub fn tar(entries: &[Entry]) -> io::Result<Layer> {
        let tar = build_tar(entries)?;
        Ok(Layer {
            media_type: OCI_LAYER_TAR.into(),
            diff_id: sha256_digest(&tar),
            blob: tar,
        })
    }

    /// A gzip layer (`...tar+gzip`).
    pub fn tar_gz(entries: &[Entry]) -> io::Result<Layer> {
        Self::gzip_tar(build_tar(entries)?, flate2::Compression::default())
    }

    /// A zstd layer (`...tar+zstd`).
    pub fn tar_zstd(entries: &[Entry]) -> io::Result<Layer> {
        let tar = build_tar(entries)?;
        Ok(Layer {
            media_type: OCI_LAYER_ZSTD.into(),
            diff_id: sha256_digest(&tar),
            blob: zstd::encode_all(tar.as_slice(), 3)?,
        })
    }

    /// `sha256:<hex>` of the blob, the digest in the manifest.
    pub fn digest(&self) -> String {
        sha256_digest(&self.blob)
    }

    fn gzip_tar(tar: Vec<u8>, level: flate2::Compression) -> io::Result<Layer> {
        // GzBuilder writes mtime 0 and no file name: reproducible.
        let mut gz = flate2::GzBuilder::new().write(Vec::new(), level);
        gz.write_all(&tar)?;
        Ok(Layer {
            media_type: OCI_LAYER_GZIP.into(),
            diff_id: sha256_digest(&tar),
            blob: gz.finish()?,
        })
    }
}

fn build_tar(entries: &[Entry]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(0);
        match entry {
            Entry::File {
                path,
                mode,
                content,
            } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(content.len() as u64);
                builder.append_data(&mut header, rel(path), content.as_slice())?;
            }
            Entry::Dir { path, mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                builder.append_data(&mut header, rel(path), io::empty())?;
            }
            Entry::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                builder.append_link(&mut header, rel(path), target)?;
            }
            Entry::Hardlink { path, target } => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                builder.append_link(&mut header, rel(path), rel(target))?;
            }
            Entry::Whiteout { path } => {
                let path = rel(path);
                let (dir, name) = match path.rsplit_once('/') {
                    Some((dir, name)) => (format!("{dir}/"), name),
                    None => (String::new(), path),
                };
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                builder.append_data(&mut header, format!("{dir}.wh.{name}"), io::empty())?;
            }
            Entry::Opaque { dir } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                let dir = rel(dir).trim_end_matches('/');
                builder.append_data(&mut header, format!("{dir}/.wh..wh..opq"), io::empty())?;
            }
        }
    }
    builder.into_inner()
}

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// The applets linked in the busybox layer's /bin.
const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "ls",
    "cat",
    "echo",
    "id",
    "sleep",
    "true",
    "false",
    "env",
    "pwd",
    "test",
    "stat",
    "wc",
    "head",
    "mkdir",
    "ip",
    "nc",
    "httpd",
    "printf",
    "stty",
    "ps",
    "dd",
    "kill",
    // What `kubectl cp` runs in the container, and checks around it
    // (tests/kubectl.rs).
    "tar",
    "sha256sum",
    "wget",
];

/// A small root filesystem around the host's static busybox: /bin/busybox
/// and symlinks to it for `BUSYBOX_APPLETS`, /etc/passwd and /etc/group with
/// root and nobody (65534, also in group staff 50), a 1777 /tmp, and empty /root, /proc, /sys, /dev
/// for the runtime to mount on.
pub fn busybox_entries() -> io::Result<Vec<Entry>> {
    let busybox = crate::busybox().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no static busybox: install Debian's busybox-static",
        )
    })?;
    let mut entries = vec![
        Entry::dir("bin", 0o755),
        Entry::file("bin/busybox", 0o755, std::fs::read(busybox)?),
    ];
    for applet in BUSYBOX_APPLETS {
        entries.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    entries.extend([
        Entry::dir("etc", 0o755),
        Entry::file(
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        // nobody is also a member of staff (50): the Merge/Strict
        // supplementary-groups policies differ on it.
        Entry::file(
            "etc/group",
            0o644,
            "root:x:0:\nstaff:x:50:nobody\nnogroup:x:65534:\n",
        ),
        Entry::dir("tmp", 0o1777),
        Entry::dir("root", 0o700),
        Entry::dir("proc", 0o555),
        Entry::dir("sys", 0o555),
        Entry::dir("dev", 0o755),
    ]);
    Ok(entries)
}

/// `busybox_entries` as a gzip layer. Built once per test binary: deflating
/// 2 MB in an unoptimised build is not free.
pub fn busybox_layer() -> io::Result<Layer> {
    static LAYER: OnceLock<Layer> = OnceLock::new();
    if let Some(layer) = LAYER.get() {
        return Ok(layer.clone());
    }
    let layer = Layer::tar_gz(&busybox_entries()?)?;
    Ok(LAYER.get_or_init(|| layer).clone())
}

/// An image's platform, as in an index entry and the image config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: variant.map(Into::into),
        }
    }

    /// This machine, in Go's names (`amd64`, `arm64`/`v8`, ...).
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform::new("linux", arch, variant)
    }

    pub fn to_json(&self) -> Value {
        let mut p = json!({ "os": self.os, "architecture": self.architecture });
        if let Some(variant) = &self.variant {
            p["variant"] = json!(variant);
        }
        p
    }
}

/// What `push_image` pushes: the layers, bottom first, and the image
/// config's `config` object (`Entrypoint`, `Cmd`, `Env`, `User`,
/// `WorkingDir`, `StopSignal`, `Volumes`, `ExposedPorts`).
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub layers: Vec<Layer>,
    pub config: Value,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    /// The manifest's `annotations` (none when empty).
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl ImageSpec {
    /// An image for this machine's platform.
    pub fn new(layers: Vec<Layer>, config: Value) -> ImageSpec {
        Self::for_platform(layers, config, &Platform::host())
    }

    pub fn for_platform(layers: Vec<Layer>, config: Value, platform: &Platform) -> ImageSpec {
        ImageSpec {
            layers,
            config,
            os: platform.os.clone(),
            architecture: platform.architecture.clone(),
            variant: platform.variant.clone(),
            annotations: Default::default(),
        }
    }

    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// What a push put in the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedImage {
    pub manifest_digest: String,
    pub manifest_size: u64,
    /// The manifest's media type (OCI or Docker schema 2).
    pub media_type: String,
    pub config_digest: String,
    /// Blob digests, bottom layer first.
    pub layer_digests: Vec<String>,
    /// The config's `rootfs.diff_ids`, bottom layer first.
    pub diff_ids: Vec<String>,
}

/// What `two_platform_index` pushed.
#[derive(Clone, Debug)]
pub struct PushedIndex {
    pub digest: String,
    pub manifests: Vec<(Platform, PushedImage)>,
}

impl PushedIndex {
    /// The image for `architecture` (`amd64`, `arm64`).
    pub fn image(&self, architecture: &str) -> Option<&PushedImage> {
        self.manifests
            .iter()
            .find(|(p, _)| p.architecture == architecture)
            .map(|(_, image)| image)
    }
}

/// A layer already in the registry: what the manifest and config need.
struct PushedLayer {
    media_type: String,
    digest: String,
    size: u64,
    diff_id: String,
}

/// A client for the loopback registry (plain HTTP) with `auth` stored.
async fn client_for(addr: &str, auth: Option<(&str, &str)>) -> Client {
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    client
        .store_auth_if_needed(addr, &registry_auth(auth))
        .await;
    client
}

/// `auth` as oci-client wants it.
pub fn registry_auth(auth: Option<(&str, &str)>) -> RegistryAuth {
    match auth {
        Some((user, password)) => RegistryAuth::Basic(user.into(), password.into()),
        None => RegistryAuth::Anonymous,
    }
}

fn reference(addr: &str, repo: &str, tag: &str) -> Reference {
    Reference::with_tag(addr.into(), repo.into(), tag.into())
}

async fn push_blob(
    client: &Client,
    r: &Reference,
    data: Vec<u8>,
) -> Result<PushedLayerBlob, String> {
    let digest = sha256_digest(&data);
    let size = data.len() as u64;
    client
        .push_blob(r, data, &digest)
        .await
        .map_err(|e| format!("push blob {digest} to {}: {e}", r.whole()))?;
    Ok(PushedLayerBlob { digest, size })
}

struct PushedLayerBlob {
    digest: String,
    size: u64,
}

async fn push_layer(client: &Client, r: &Reference, layer: &Layer) -> Result<PushedLayer, String> {
    let blob = push_blob(client, r, layer.blob.clone()).await?;
    Ok(PushedLayer {
        media_type: layer.media_type.clone(),
        digest: blob.digest,
        size: blob.size,
        diff_id: layer.diff_id.clone(),
    })
}

/// The two manifest formats `push_image*` write.
#[derive(Clone, Copy)]
enum Format {
    Oci,
    DockerV2,
}

impl Format {
    fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::DockerV2 => DOCKER_MANIFEST,
        }
    }

    fn config_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::DockerV2 => DOCKER_CONFIG,
        }
    }

    /// The layer media type in this format; Docker schema 2 has no zstd.
    fn layer_type(self, oci_type: &str) -> Result<String, String> {
        match (self, oci_type) {
            (Format::Oci, t) => Ok(t.into()),
            (Format::DockerV2, OCI_LAYER_GZIP | DOCKER_LAYER_GZIP) => Ok(DOCKER_LAYER_GZIP.into()),
            (Format::DockerV2, OCI_LAYER_TAR | DOCKER_LAYER_TAR) => Ok(DOCKER_LAYER_TAR.into()),
            (Format::DockerV2, t) => Err(format!("Docker schema 2 has no layer type for {t}")),
        }
    }
}

/// The image config: a valid OCI image config (and Docker's, which is the
/// same document).
fn image_config(platform: &Platform, config: &Value, layers: &[PushedLayer]) -> Value {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let history: Vec<Value> = (0..layers.len())
        .map(|i| json!({ "created": CREATED, "created_by": format!("berth-e2e layer {i}") }))
        .collect();
    let mut doc = json!({
        "created": CREATED,
        "architecture": platform.architecture,
        "os": platform.os,
        "config": if config.is_null() { json!({}) } else { config.clone() },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history,
    });
    if let Some(variant) = &platform.variant {
        doc["variant"] = json!(variant);
    }
    doc
}

/// Pushes the config and the manifest for layers already pushed to `r`'s
/// repository; the manifest is tagged `tag`, or pushed by digest only.
async fn push_config_and_manifest(
    client: &Client,
    r: &Reference,
    tag: Option<&str>,
    format: Format,
    spec: &ImageSpec,
    layers: &[PushedLayer],
) -> Result<PushedImage, String> {
    let config_json = serde_json::to_vec(&image_config(&spec.platform(), &spec.config, layers))
        .map_err(|e| e.to_string())?;
    let config_blob = push_blob(client, r, config_json).await?;
    let mut layer_descs = Vec::new();
    for l in layers {
        layer_descs.push(json!({
            "mediaType": format.layer_type(&l.media_type)?,
            "digest": l.digest,
            "size": l.size,
        }));
    }
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": format.manifest_type(),
        "config": {
            "mediaType": format.config_type(),
            "digest": config_blob.digest,
            "size": config_blob.size,
        },
        "layers": layer_descs,
    });
    if !spec.annotations.is_empty() {
        manifest["annotations"] = json!(spec.annotations);
    }
    let (manifest_digest, manifest_size) =
        push_manifest(client, r, tag, format.manifest_type(), &manifest).await?;
    Ok(PushedImage {
        manifest_digest,
        manifest_size,
        media_type: format.manifest_type().into(),
        config_digest: config_blob.digest,
        layer_digests: layers.iter().map(|l| l.digest.clone()).collect(),
        diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
    })
}

/// Pushes `doc` to `r`'s repository with exactly these bytes, so the digest
/// computed here is the registry's; tagged `tag`, or by digest when `None`.
async fn push_manifest(
    client: &Client,
    r: &Reference,
    tag: Option<&str>,
    media_type: &str,
    doc: &Value,
) -> Result<(String, u64), String> {
    let body = serde_json::to_vec(doc).map_err(|e| e.to_string())?;
    let digest = sha256_digest(&body);
    let size = body.len() as u64;
    let r = match tag {
        Some(tag) => reference(r.registry(), r.repository(), tag),
        None => Reference::with_digest(r.registry().into(), r.repository().into(), digest.clone()),
    };
    let r = &r;
    let content_type = media_type
        .parse()
        .map_err(|_| format!("bad media type {media_type}"))?;
    client
        .push_manifest_raw(r, body, content_type)
        .await
        .map_err(|e| format!("push manifest to {}: {e}", r.whole()))?;
    Ok((digest, size))
}

/// Pushes the manifest or index `doc` (exactly as serialized here) to
/// `registry_addr/repo`, tagged `tag` or by digest only; its digest and
/// size. For hand-made documents (nested indexes, odd descriptors).
pub async fn push_manifest_doc(
    registry_addr: &str,
    repo: &str,
    tag: Option<&str>,
    media_type: &str,
    doc: &Value,
) -> Result<(String, u64), String> {
    let client = client_for(registry_addr, None).await;
    let r = reference(registry_addr, repo, tag.unwrap_or("latest"));
    push_manifest(&client, &r, tag, media_type, doc).await
}

async fn push_with_format(
    registry_addr: &str,
    repo: &str,
    tag: Option<&str>,
    spec: &ImageSpec,
    auth: Option<(&str, &str)>,
    format: Format,
) -> Result<PushedImage, String> {
    let client = client_for(registry_addr, auth).await;
    let r = reference(registry_addr, repo, tag.unwrap_or("latest"));
    let mut layers = Vec::new();
    for layer in &spec.layers {
        layers.push(push_layer(&client, &r, layer).await?);
    }
    push_config_and_manifest(&client, &r, tag, format, spec, &layers).await
}

/// Pushes `spec` as `registry_addr/repo:tag` with an OCI image manifest.
pub async fn push_image(
    registry_addr: &str,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
    auth: Option<(&str, &str)>,
) -> Result<PushedImage, String> {
    push_with_format(registry_addr, repo, Some(tag), spec, auth, Format::Oci).await
}

/// Pulls `registry_addr/repo:tag` (an OCI image manifest) with oci-client
/// and returns its manifest's annotations and its layers' bytes, in order.
pub async fn pull_layers(
    registry_addr: &str,
    repo: &str,
    tag: &str,
) -> Result<(std::collections::BTreeMap<String, String>, Vec<Vec<u8>>), String> {
    let client = client_for(registry_addr, None).await;
    let r = reference(registry_addr, repo, tag);
    let image = client
        .pull(
            &r,
            &registry_auth(None),
            vec!["application/vnd.oci.image.layer.v1.tar"],
        )
        .await
        .map_err(|e| format!("pull {}: {e}", r.whole()))?;
    let annotations = image
        .manifest
        .and_then(|m| m.annotations)
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok((
        annotations,
        image.layers.into_iter().map(|l| l.data.to_vec()).collect(),
    ))
}

/// Pushes `spec` with a Docker schema 2 manifest: Docker media types for the
/// manifest, the config and the layers (gzip or plain tar; zstd is refused).
pub async fn push_image_docker_v2(
    registry_addr: &str,
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
    auth: Option<(&str, &str)>,
) -> Result<PushedImage, String> {
    push_with_format(registry_addr, repo, Some(tag), spec, auth, Format::DockerV2).await
}

/// Pushes an OCI image index over images already pushed to `repo`, each
/// entry with its platform, tagged `tag`. Returns the index digest.
pub async fn push_index(
    registry_addr: &str,
    repo: &str,
    tag: &str,
    images: &[(PushedImage, Platform)],
    auth: Option<(&str, &str)>,
) -> Result<String, String> {
    let client = client_for(registry_addr, auth).await;
    let r = reference(registry_addr, repo, tag);
    let manifests: Vec<Value> = images
        .iter()
        .map(|(image, platform)| {
            json!({
                "mediaType": image.media_type,
                "digest": image.manifest_digest,
                "size": image.manifest_size,
                "platform": platform.to_json(),
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    Ok(push_manifest(&client, &r, Some(tag), OCI_INDEX, &index)
        .await?
        .0)
}

fn busybox_config() -> Value {
    json!({
        "Cmd": ["/bin/sh"],
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    })
}

fn io_err(e: io::Error) -> String {
    format!("building layer: {e}")
}

/// The busybox rootfs (`busybox_entries`) as a single gzip layer, for this
/// machine's platform, `Cmd ["/bin/sh"]`.
pub async fn busybox_image(addr: &str, repo: &str, tag: &str) -> Result<PushedImage, String> {
    let spec = ImageSpec::new(vec![busybox_layer().map_err(io_err)?], busybox_config());
    push_image(addr, repo, tag, &spec, None).await
}

/// Busybox with one more small layer of its own (`/extra`, holding
/// `content`): images that differ by a layer, for pulling many.
pub async fn busybox_with_extra(
    addr: &str,
    repo: &str,
    tag: &str,
    content: &str,
) -> Result<PushedImage, String> {
    let extra = Layer::tar_gz(&[Entry::file("extra", 0o644, content)]).map_err(io_err)?;
    let spec = ImageSpec::new(
        vec![busybox_layer().map_err(io_err)?, extra],
        busybox_config(),
    );
    push_image(addr, repo, tag, &spec, None).await
}

/// Busybox whose default command sleeps `seconds`: a stand-in pause image
/// for another runtime's pod sandboxes (the benchmark's containerd).
pub async fn pause_image(
    addr: &str,
    repo: &str,
    tag: &str,
    seconds: &str,
) -> Result<PushedImage, String> {
    let mut config = busybox_config();
    config["Cmd"] = json!(["sleep", seconds]);
    let spec = ImageSpec::new(vec![busybox_layer().map_err(io_err)?], config);
    push_image(addr, repo, tag, &spec, None).await
}

/// Two gzip layers exercising whiteouts. Layer 1: the busybox rootfs (so a
/// container can look at the result) plus `a/keep`, `a/gone`, `opq/old`.
/// Layer 2: a whiteout of `a/gone`, `opq/` made opaque with a new
/// `opq/new`, and a new `top/file`. The merged view has `a/keep`,
/// `opq/new` and `top/file` (contents `keep\n`, `new\n`, `top\n`) and no
/// `a/gone` or `opq/old`.
pub async fn multilayer_whiteouts_image(
    addr: &str,
    repo: &str,
    tag: &str,
) -> Result<PushedImage, String> {
    whiteouts_image_with(addr, repo, tag, busybox_config()).await
}

/// [`multilayer_whiteouts_image`] declaring `Volumes` `/a`, `/opq` and
/// `/empty` (which no layer has).
pub async fn whiteouts_volumes_image(
    addr: &str,
    repo: &str,
    tag: &str,
) -> Result<PushedImage, String> {
    let mut config = busybox_config();
    config["Volumes"] = json!({ "/a": {}, "/opq": {}, "/empty": {} });
    whiteouts_image_with(addr, repo, tag, config).await
}

async fn whiteouts_image_with(
    addr: &str,
    repo: &str,
    tag: &str,
    config: Value,
) -> Result<PushedImage, String> {
    let mut lower = busybox_entries().map_err(io_err)?;
    lower.extend([
        Entry::dir("a", 0o755),
        Entry::file("a/keep", 0o644, "keep\n"),
        Entry::file("a/gone", 0o644, "gone\n"),
        Entry::dir("opq", 0o755),
        Entry::file("opq/old", 0o644, "old\n"),
    ]);
    let upper = [
        Entry::dir("a", 0o755),
        Entry::whiteout("a/gone"),
        Entry::dir("opq", 0o755),
        Entry::opaque("opq"),
        Entry::file("opq/new", 0o644, "new\n"),
        Entry::dir("top", 0o755),
        Entry::file("top/file", 0o644, "top\n"),
    ];
    let layers = vec![
        Layer::tar_gz(&lower).map_err(io_err)?,
        Layer::tar_gz(&upper).map_err(io_err)?,
    ];
    push_image(addr, repo, tag, &ImageSpec::new(layers, config), None).await
}

/// An image of `layers` layers (at least 2): the busybox rootfs at the
/// bottom, then layers `1..layers` each adding `layers/<i>` (`layer <i>\n`)
/// and writing `layers/top` (`<i>\n`), so `layers/top` shows which layer
/// overlayfs put on top. Small plain-tar layers: about one page of
/// `lowerdir=` paths per 40 layers of the image store.
pub async fn many_layers_image(
    addr: &str,
    repo: &str,
    tag: &str,
    layers: usize,
) -> Result<PushedImage, String> {
    let mut all = vec![busybox_layer().map_err(io_err)?];
    for i in 1..layers {
        let layer = Layer::tar(&[
            Entry::dir("layers", 0o755),
            Entry::file(&format!("layers/{i}"), 0o644, format!("layer {i}\n")),
            Entry::file("layers/top", 0o644, format!("{i}\n")),
        ])
        .map_err(io_err)?;
        all.push(layer);
    }
    push_image(
        addr,
        repo,
        tag,
        &ImageSpec::new(all, busybox_config()),
        None,
    )
    .await
}

/// The busybox rootfs as one zstd layer (`...tar+zstd`).
pub async fn zstd_image(addr: &str, repo: &str, tag: &str) -> Result<PushedImage, String> {
    let layer = Layer::tar_zstd(&busybox_entries().map_err(io_err)?).map_err(io_err)?;
    let spec = ImageSpec::new(vec![layer], busybox_config());
    push_image(addr, repo, tag, &spec, None).await
}

/// An OCI index tagged `tag` over a linux/amd64 and a linux/arm64/v8 image
/// (pushed by digest, untagged). Each has one gzip layer with `/platform` holding `amd64` or `arm64` (no
/// newline); both layers also carry the host's busybox, so whichever
/// platform a runtime picks here can run `cat /platform`.
pub async fn two_platform_index(addr: &str, repo: &str, tag: &str) -> Result<PushedIndex, String> {
    let platforms = [
        Platform::new("linux", "amd64", None),
        Platform::new("linux", "arm64", Some("v8")),
    ];
    let mut manifests = Vec::new();
    for platform in platforms {
        let mut entries = busybox_entries().map_err(io_err)?;
        entries.push(Entry::file(
            "platform",
            0o644,
            platform.architecture.as_bytes(),
        ));
        let layer = Layer::tar_gz(&entries).map_err(io_err)?;
        let spec = ImageSpec::for_platform(vec![layer], busybox_config(), &platform);
        let image = push_with_format(addr, repo, None, &spec, None, Format::Oci).await?;
        manifests.push((platform, image));
    }
    let images: Vec<(PushedImage, Platform)> = manifests
        .iter()
        .map(|(p, i)| (i.clone(), p.clone()))
        .collect();
    let digest = push_index(addr, repo, tag, &images, None).await?;
    Ok(PushedIndex { digest, manifests })
}

/// The config `configured_image` carries, for tests to compare against.
pub fn configured_image_config() -> Value {
    json!({
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hi"],
        "Env": ["PATH=/bin", "FOO=bar"],
        "User": "65534:65534",
        "WorkingDir": "/tmp",
        "StopSignal": "SIGTERM",
        "ExposedPorts": { "8080/tcp": {} },
        "Volumes": { "/data": {} },
    })
}

/// Busybox with every config field a runtime applies set
/// (`configured_image_config`).
pub async fn configured_image(addr: &str, repo: &str, tag: &str) -> Result<PushedImage, String> {
    let spec = ImageSpec::new(
        vec![busybox_layer().map_err(io_err)?],
        configured_image_config(),
    );
    push_image(addr, repo, tag, &spec, None).await
}

/// xorshift64: deterministic, incompressible enough for gzip, no `rand`.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// A benchmark image: `layers` gzip layers, each one file `data/layer-N` of
/// `layer_bytes` random bytes (different in every layer, so nothing is
/// shared). Random data does not deflate, so the layers are written as
/// stored deflate blocks, which is what a compressor produces for it anyway,
/// without spending the time. Each layer is built, pushed and dropped in
/// turn, so memory stays at about two layers.
pub async fn large_image(
    addr: &str,
    repo: &str,
    tag: &str,
    layers: usize,
    layer_bytes: usize,
) -> Result<PushedImage, String> {
    let client = client_for(addr, None).await;
    let r = reference(addr, repo, tag);
    let mut pushed = Vec::new();
    for i in 0..layers {
        let mut data = vec![0u8; layer_bytes];
        XorShift(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9))
            .fill(&mut data);
        let entries = [
            Entry::dir("data", 0o755),
            Entry::file(&format!("data/layer-{i}"), 0o644, data),
        ];
        let tar = build_tar(&entries).map_err(io_err)?;
        drop(entries);
        let layer = Layer::gzip_tar(tar, flate2::Compression::none()).map_err(io_err)?;
        pushed.push(push_layer(&client, &r, &layer).await?);
    }
    let spec = ImageSpec::new(Vec::new(), json!({ "Cmd": ["/bin/sh"] }));
    push_config_and_manifest(&client, &r, Some(tag), Format::Oci, &spec, &pushed).await
}
