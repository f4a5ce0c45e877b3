//! Fetching an image: resolve the name to a manifest (choosing this node's
//! platform from an index), fetch the config and all layers in parallel
//! (bounded), verify every byte against its digest, unpack each layer as soon
//! as it is complete, and return the image's record. Recording it is the
//! image store's ([`super::puller`]); this part runs in the pull helper
//! process ([`super::helper`]), or in the daemon's own for library users.
//!
//! The registry protocol (manifests, auth challenges, token exchange, range
//! requests) is oci-client's; berth adds the endpoint choice (mirrors, plain
//! HTTP, CAs, path prefixes and connect timeouts from hosts.toml), node
//! credentials for pulls that carry none, retries with resume, and the
//! store's verified writes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::BlobResponse;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;

use super::auth_file::NodeAuth;
use super::clients::Clients;
use super::error::ImageError;
use super::hosts::{Endpoint, RegistryHosts, Scheme};
use super::layers::chain_ids;
pub use super::manifest::Platform;
use super::manifest::{parse_json, Descriptor, ImageConfigBlob};
use super::reference::{Digest, ImageName};
use super::store::{Content, ImageRecord, LayerRecord};
use super::unpack::{Compression, UnpackBudget};
use resolve::Resolved;

mod resolve;

/// Attempts per blob: a dropped connection is resumed where it broke.
const BLOB_ATTEMPTS: u32 = 4;

/// The default bound on a manifest, index or image config read into memory:
/// containerd's limit for manifests (and CNCF distribution's for a pushed
/// one).
pub const DEFAULT_MAX_METADATA_BYTES: u64 = 4 << 20;

/// Async locks by key: the second pull of an image (or fetch of a blob)
/// waits for the first and then finds the work done.
#[derive(Default)]
pub(crate) struct KeyedLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    pub(crate) async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

/// Tuning for the puller.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PullOptions {
    /// Layers fetched at the same time per pull.
    pub max_concurrent_layers: usize,
    /// The platform to choose from an index.
    pub platform: Platform,
    /// Node-wide credentials (Docker's `config.json`) for pulls that carry
    /// none; read at each such pull, absent means none.
    pub auth_file: Option<std::path::PathBuf>,
    /// The most bytes of a manifest, index or image config (each) a pull
    /// reads; a larger one fails the pull before it is buffered.
    pub max_metadata_bytes: u64,
    /// The most bytes an image's layers may unpack to (their decompressed
    /// tar streams, summed over the layers a pull unpacks); 0: no limit.
    pub max_unpacked_bytes: u64,
}

/// The most layers an image may have: what overlayfs stacks, so a pulled
/// image can always be a container's rootfs (Docker's limit is 127;
/// containerd has none but its mounts fail past about 120).
pub const MAX_LAYERS: usize = berth_core::config::MAX_OVERLAY_LAYERS;

/// The default [`PullOptions::max_unpacked_bytes`]: 100 GiB — generous
/// (the largest images in common use are tens of GiB) but finite.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 100 << 30;

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            max_concurrent_layers: 4,
            platform: Platform::host(),
            auth_file: None,
            max_metadata_bytes: DEFAULT_MAX_METADATA_BYTES,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
        }
    }
}

/// What one fetch did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FetchStats {
    /// Blob downloads started.
    pub downloads: u64,
    /// Downloads continued from where they broke (a registry answering a
    /// range request past byte 0 with 206).
    pub resumes: u64,
    /// Bytes of blobs downloaded and verified.
    pub bytes: u64,
}

#[derive(Default)]
struct StatCounters {
    downloads: AtomicU64,
    resumes: AtomicU64,
    bytes: AtomicU64,
}

impl StatCounters {
    fn get(&self) -> FetchStats {
        FetchStats {
            downloads: self.downloads.load(Ordering::Relaxed),
            resumes: self.resumes.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// The fetcher: writes blobs and layers into [`Content`]. Fetches run
/// concurrently; a blob or layer two of them need is fetched once.
pub struct Fetcher {
    content: Content,
    hosts: RegistryHosts,
    opts: PullOptions,
    clients: Clients,
    /// Loopback hosts that did not answer HTTPS and are spoken to in HTTP.
    plain_http: Mutex<HashSet<String>>,
    blob_locks: KeyedLocks,
}

/// One pull: the name, and the credentials for each endpoint.
struct Ctx<'a> {
    name: &'a ImageName,
    /// The request's own credentials (`Anonymous`: none).
    auth: &'a RegistryAuth,
    /// The node's, used when the request has none.
    node: NodeAuth,
    /// What the pull's layers may unpack to, together.
    budget: UnpackBudget,
    /// What it did.
    stats: StatCounters,
}

impl Ctx<'_> {
    /// The credentials to present to `ep`: the request's when it has some
    /// (for every endpoint, as before node credentials existed), else the
    /// node file's entry for the endpoint's own host, or, for the upstream
    /// only, for the registry name. A mirror never gets the upstream's node
    /// credentials.
    fn auth_for(&self, ep: &Endpoint) -> RegistryAuth {
        if !matches!(self.auth, RegistryAuth::Anonymous) {
            return self.auth.clone();
        }
        let upstream = (!ep.is_mirror).then(|| self.name.registry());
        self.node
            .get(&ep.host)
            .or_else(|| upstream.and_then(|r| self.node.get(r)))
            .cloned()
            .unwrap_or(RegistryAuth::Anonymous)
    }
}

enum Attempt {
    Transient(ImageError),
    /// The endpoint could not be connected to (refused, timed out): the
    /// next endpoint is tried before this one again.
    Unreachable(ImageError),
    Permanent(ImageError),
}

impl Fetcher {
    /// A fetcher writing into `content`, configured by `hosts`.
    pub fn new(content: Content, hosts: RegistryHosts, opts: PullOptions) -> Fetcher {
        let clients = Clients::new(opts.max_metadata_bytes);
        Fetcher {
            content,
            hosts,
            opts,
            clients,
            plain_http: Mutex::default(),
            blob_locks: KeyedLocks::default(),
        }
    }

    /// Loopback hosts found to speak plain HTTP so far.
    pub fn plain_http_hosts(&self) -> Vec<String> {
        let hosts = self.plain_http.lock().unwrap_or_else(|p| p.into_inner());
        hosts.iter().cloned().collect()
    }

    /// Takes `hosts` as loopback hosts known to speak plain HTTP (what an
    /// earlier fetcher learned).
    pub fn learn_plain_http(&self, hosts: impl IntoIterator<Item = String>) {
        let mut known = self.plain_http.lock().unwrap_or_else(|p| p.into_inner());
        known.extend(hosts);
    }

    /// Fetches `name` into the content store and returns the image's record
    /// (not yet recorded), and what it did either way. `auth` is the request's
    /// credentials; with `Anonymous` the node's auth file (if configured and
    /// present) supplies them. The caller keeps the store's garbage
    /// collection away meanwhile.
    pub async fn fetch(
        &self,
        name: &ImageName,
        auth: &RegistryAuth,
    ) -> (Result<ImageRecord, ImageError>, FetchStats) {
        let node = match (auth, &self.opts.auth_file) {
            (RegistryAuth::Anonymous, Some(file)) => match NodeAuth::load(file) {
                Ok(n) => n,
                Err(e) => return (Err(e.into()), FetchStats::default()),
            },
            _ => NodeAuth::default(),
        };
        let ctx = Ctx {
            name,
            auth,
            node,
            budget: UnpackBudget::new(self.opts.max_unpacked_bytes),
            stats: StatCounters::default(),
        };
        let record = self.fetch_with(&ctx).await;
        (record, ctx.stats.get())
    }

    async fn fetch_with(&self, ctx: &Ctx<'_>) -> Result<ImageRecord, ImageError> {
        let name = ctx.name;
        let endpoints = self.usable_endpoints(name)?;

        let Resolved {
            top: top_digest,
            digest: manifest_digest,
            manifest,
            blobs: manifest_blobs,
        } = self.resolve_image(ctx, &endpoints).await?;
        let config_desc = manifest
            .config
            .clone()
            .ok_or_else(|| ImageError::Manifest {
                image: name.to_string(),
                reason: format!("manifest {manifest_digest} has no config (not an image manifest)"),
            })?;
        let layers = manifest.layers.clone().unwrap_or_default();
        if layers.len() > MAX_LAYERS {
            return Err(ImageError::Manifest {
                image: name.to_string(),
                reason: format!(
                    "manifest {manifest_digest} has {} layers; berth takes at most {MAX_LAYERS}",
                    layers.len()
                ),
            });
        }

        let config_digest = Digest::parse(&config_desc.digest)?;
        // The config is read into memory below: bounded by its descriptor
        // before it is fetched (the blob writer refuses any byte past it).
        ImageError::check_declared_size(
            name,
            &format!("image config {config_digest}"),
            config_desc.size,
            self.opts.max_metadata_bytes,
        )?;
        self.fetch_blob(ctx, &endpoints, &config_desc).await?;
        let config_bytes = self.content.blobs.read(&config_digest)?;
        let config: ImageConfigBlob = parse_json(name, "image config", &config_bytes)?;
        let diff_ids = config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        if diff_ids.len() != layers.len() {
            return Err(ImageError::Manifest {
                image: name.to_string(),
                reason: format!(
                    "manifest has {} layers but the config lists {} diff ids",
                    layers.len(),
                    diff_ids.len()
                ),
            });
        }
        let chains = chain_ids(&diff_ids);
        let mut records = Vec::with_capacity(layers.len());
        for ((l, diff_id), chain_id) in layers.iter().zip(&diff_ids).zip(&chains) {
            Compression::from_media_type(&l.media_type).ok_or_else(|| ImageError::Manifest {
                image: name.to_string(),
                reason: format!(
                    "layer {}: unsupported media type {:?}",
                    l.digest, l.media_type
                ),
            })?;
            records.push(LayerRecord {
                blob: Digest::parse(&l.digest)?,
                media_type: l.media_type.clone(),
                size: u64::try_from(l.size).unwrap_or(0),
                diff_id: diff_id.clone(),
                chain_id: chain_id.clone(),
            });
        }

        // Futures built up front (not polled until buffered): a closure over
        // borrowed pairs would not be `Send` for tonic's handler.
        let fetches: Vec<_> = layers
            .iter()
            .zip(&records)
            .map(|(desc, rec)| self.fetch_layer(ctx, &endpoints, desc, rec))
            .collect();
        futures::stream::iter(fetches)
            .buffer_unordered(self.opts.max_concurrent_layers.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        crate::util::crash_point("pull:unpacked");

        for (d, bytes) in &manifest_blobs {
            if self.content.blobs.size(d).is_none() {
                self.content.blobs.put(d, bytes)?;
            }
        }
        let size = u64::try_from(config_desc.size).unwrap_or(0)
            + records.iter().map(|l| l.size).sum::<u64>();
        let record = ImageRecord {
            version: 1,
            id: config_digest,
            repo_tags: name.repo_tag().into_iter().collect(),
            repo_digests: vec![name.repo_digest(&top_digest)],
            manifest: manifest_digest,
            manifest_blobs: manifest_blobs.into_iter().map(|(d, _)| d).collect(),
            layers: records,
            size,
            removed: false,
            user: super::rootfs::ImageConfig::parse(&config_bytes)
                .ok()
                .map(|c| c.user),
            checkpoint: super::store::marks_checkpoint(&manifest.annotations),
        };
        Ok(record)
    }

    /// The configured endpoints berth can honour. The others are skipped
    /// with a warning; when none is left, the pull fails with the first
    /// one's reason.
    fn usable_endpoints(&self, name: &ImageName) -> Result<Vec<Endpoint>, ImageError> {
        let mut refused = None;
        let mut usable = Vec::new();
        for ep in self.hosts.endpoints(name.registry())? {
            let Some(u) = ep.unsupported() else {
                usable.push(ep);
                continue;
            };
            let e = ImageError::EndpointUnsupported {
                image: name.to_string(),
                endpoint: ep.url(),
                file: ep
                    .file
                    .as_deref()
                    .map(|f| f.display().to_string())
                    .unwrap_or_default(),
                key: u.key,
                reason: u.reason,
            };
            tracing::warn!(error = %e, "registry endpoint skipped");
            refused.get_or_insert(e);
        }
        match refused {
            Some(e) if usable.is_empty() => Err(e),
            _ => Ok(usable),
        }
    }

    async fn fetch_layer(
        &self,
        ctx: &Ctx<'_>,
        endpoints: &[Endpoint],
        desc: &Descriptor,
        rec: &LayerRecord,
    ) -> Result<(), ImageError> {
        if self.content.layers.usage(&rec.chain_id).is_some() {
            return Ok(());
        }
        let _layer = self
            .blob_locks
            .lock(&format!("layer:{}", rec.chain_id))
            .await;
        if self.content.layers.usage(&rec.chain_id).is_some() {
            return Ok(());
        }
        self.fetch_blob(ctx, endpoints, desc).await?;
        let content = self.content.clone();
        let rec = rec.clone();
        let budget = ctx.budget.clone();
        let compression =
            Compression::from_media_type(&rec.media_type).unwrap_or(Compression::None);
        tokio::task::spawn_blocking(move || {
            let path = content.blobs.path(&rec.blob);
            content.layers.ensure(
                &rec.chain_id,
                &rec.diff_id,
                &path,
                &rec.blob,
                compression,
                &budget,
            )
        })
        .await
        .map_err(|e| ImageError::Internal(format!("unpack task: {e}")))??;
        Ok(())
    }

    /// Fetches a blob into the store unless it is there, trying each
    /// pull-capable endpoint in order.
    async fn fetch_blob(
        &self,
        ctx: &Ctx<'_>,
        endpoints: &[Endpoint],
        desc: &Descriptor,
    ) -> Result<(), ImageError> {
        let digest = Digest::parse(&desc.digest)?;
        let size = u64::try_from(desc.size).map_err(|_| ImageError::Manifest {
            image: ctx.name.to_string(),
            reason: format!("blob {digest}: negative size"),
        })?;
        let _blob = self.blob_locks.lock(&format!("blob:{digest}")).await;
        if self.content.blobs.size(&digest) == Some(size) {
            return Ok(());
        }
        let mut last = None;
        let pullers: Vec<_> = endpoints.iter().filter(|e| e.capabilities.pull).collect();
        for (i, ep) in pullers.iter().enumerate() {
            let more = i + 1 < pullers.len();
            match self.download(ctx, ep, desc, &digest, size, more).await {
                Ok(()) => return Ok(()),
                Err(e @ ImageError::Blob(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ImageError::Manifest {
            image: ctx.name.to_string(),
            reason: "no endpoint with the pull capability is configured".into(),
        }))
    }

    /// Downloads a blob from `ep`, resuming where a transfer broke. An
    /// endpoint that cannot be connected to is left at once when `more`
    /// endpoints follow (its `dial_timeout` is then the whole delay).
    async fn download(
        &self,
        ctx: &Ctx<'_>,
        ep: &Endpoint,
        desc: &Descriptor,
        digest: &Digest,
        size: u64,
        more: bool,
    ) -> Result<(), ImageError> {
        ctx.stats.downloads.fetch_add(1, Ordering::Relaxed);
        let mut writer = self.content.blobs.writer(digest, Some(size))?;
        let oci = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size,
            urls: desc.urls.clone(),
            ..OciDescriptor::default()
        };
        let reference = self.reference_for(ctx.name, ep);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .download_once(ctx, ep, &reference, &oci, &mut writer)
                .await
            {
                Ok(()) => break,
                // All bytes arrived: only the digest check can tell more.
                Err(_) if writer.written() == size => break,
                Err(Attempt::Unreachable(e)) if more => return Err(e),
                Err(Attempt::Transient(e) | Attempt::Unreachable(e)) if attempt < BLOB_ATTEMPTS => {
                    tracing::info!(blob = %digest, attempt, offset = writer.written(), error = %e, "blob download interrupted; resuming");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(Attempt::Transient(e) | Attempt::Unreachable(e) | Attempt::Permanent(e)) => {
                    return Err(e)
                }
            }
        }
        tokio::task::spawn_blocking(move || writer.commit())
            .await
            .map_err(|e| ImageError::Internal(format!("commit task: {e}")))??;
        ctx.stats.bytes.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    async fn download_once(
        &self,
        ctx: &Ctx<'_>,
        ep: &Endpoint,
        reference: &oci_client::Reference,
        desc: &OciDescriptor,
        writer: &mut super::blobs::BlobWriter,
    ) -> Result<(), Attempt> {
        let client = self
            .clients
            .get(ep, self.is_plain_http(ep), &ctx.auth_for(ep))
            .map_err(|e| Attempt::Permanent(ImageError::from_registry(ctx.name, &ep.host, e)))?;
        // Always a range request: a fresh start asks for bytes=0-, a resume
        // for the rest. berth verifies the whole blob itself on commit.
        let response = client
            .pull_blob_stream_partial(reference, desc, writer.written(), None)
            .await
            .map_err(|e| {
                let unreachable =
                    matches!(&e, OciDistributionError::RequestError(r) if r.is_connect());
                let transient = ImageError::is_transient(&e);
                let e = ImageError::from_registry(ctx.name, &ep.host, e);
                if unreachable {
                    Attempt::Unreachable(e)
                } else if transient {
                    Attempt::Transient(e)
                } else {
                    Attempt::Permanent(e)
                }
            })?;
        let mut stream = match response {
            BlobResponse::Full(s) => {
                writer.reset().map_err(|e| Attempt::Permanent(e.into()))?;
                s.stream
            }
            BlobResponse::Partial(s) => {
                if writer.written() > 0 {
                    ctx.stats.resumes.fetch_add(1, Ordering::Relaxed);
                }
                s.stream
            }
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Attempt::Transient(ImageError::Registry {
                    image: ctx.name.to_string(),
                    registry: ep.host.clone(),
                    reason: format!("blob {}: {e}", desc.digest),
                })
            })?;
            writer
                .write(&chunk)
                .map_err(|e| Attempt::Permanent(e.into()))?;
        }
        Ok(())
    }

    /// `name` as oci-client should fetch it from `ep`: the endpoint's
    /// address (with its path prefix) as a mirror registry unless it is the
    /// registry itself. (An upstream with a path prefix therefore gets
    /// `?ns=` too, which registries ignore.)
    fn reference_for(&self, name: &ImageName, ep: &Endpoint) -> oci_client::Reference {
        let mut r = name.to_oci();
        // `usable_endpoints` let through only endpoints that have one.
        let addr = ep.registry_address().unwrap_or_else(|| ep.host.clone());
        let same = addr == name.registry()
            || (name.registry() == "docker.io" && addr == "registry-1.docker.io");
        if !same {
            r.set_mirror_registry(addr);
        }
        r
    }

    fn is_plain_http(&self, ep: &Endpoint) -> bool {
        ep.scheme == Scheme::Http
            || self
                .plain_http
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&ep.host)
    }
}
