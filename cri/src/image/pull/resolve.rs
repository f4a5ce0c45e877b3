//! Resolving a name to this node's image manifest: the name on the first
//! endpoint that answers, then down through indexes (nested ones too) to
//! the platform's manifest, each document bounded by `max_metadata_bytes`
//! before it is buffered and checked against its digest after.

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;

use super::super::blobs::BlobError;
use super::super::error::ImageError;
use super::super::hosts::Endpoint;
use super::super::manifest::{choose_platform, is_index, parse_json, Manifest, ACCEPTED};
use super::super::reference::{Digest, ImageName};
use super::{Ctx, Fetcher};

/// The most indexes on the way from a name to its image manifest, the
/// top-level one included. Registries serve an index whose entry is itself
/// an index (containerd follows them); the bound keeps a registry from
/// leading a pull down an endless chain.
pub(super) const MAX_INDEX_LEVELS: usize = 4;

/// What a name resolved to.
pub(super) struct Resolved {
    /// The top-level manifest or index (what the repo digest names).
    pub(super) top: Digest,
    /// The image manifest for this node's platform.
    pub(super) digest: Digest,
    /// It, parsed.
    pub(super) manifest: Manifest,
    /// Every manifest and index on the way, with its bytes: the image
    /// manifest first, the top-level one last.
    pub(super) blobs: Vec<(Digest, Vec<u8>)>,
}

impl Fetcher {
    /// Resolves the pull's name and follows indexes, at most
    /// [`MAX_INDEX_LEVELS`] deep, to the manifest for this node's platform.
    pub(super) async fn resolve_image(
        &self,
        ctx: &Ctx<'_>,
        endpoints: &[Endpoint],
    ) -> Result<Resolved, ImageError> {
        let name = ctx.name;
        let (top_bytes, top, ep) = self.resolve(ctx, endpoints).await?;
        let mut manifest: Manifest = parse_json(name, "manifest", &top_bytes)?;
        let mut digest = top.clone();
        let mut blobs = vec![(top.clone(), top_bytes)];
        let mut levels = 0;
        while manifest.manifests.is_some() || is_index(manifest.media_type.as_deref()) {
            levels += 1;
            if levels > MAX_INDEX_LEVELS {
                return Err(ImageError::Manifest {
                    image: name.to_string(),
                    reason: format!(
                        "index {digest} is nested in {} others; berth follows at most \
                         {MAX_INDEX_LEVELS} levels of index",
                        levels - 1
                    ),
                });
            }
            let child = choose_platform(name, &manifest, &self.opts.platform)?;
            let child_digest = Digest::parse(&child.digest)?;
            let what = format!("manifest {child_digest}");
            ImageError::check_declared_size(name, &what, child.size, self.opts.max_metadata_bytes)?;
            let bytes = self
                .fetch_manifest(ctx, &ep, endpoints, &child_digest)
                .await?;
            manifest = parse_json(name, "manifest", &bytes)?;
            blobs.insert(0, (child_digest.clone(), bytes));
            digest = child_digest;
        }
        Ok(Resolved {
            top,
            digest,
            manifest,
            blobs,
        })
    }

    /// Resolves the name on the first resolve-capable endpoint that answers.
    async fn resolve(
        &self,
        ctx: &Ctx<'_>,
        endpoints: &[Endpoint],
    ) -> Result<(Vec<u8>, Digest, Endpoint), ImageError> {
        let mut last = None;
        for ep in endpoints.iter().filter(|e| e.capabilities.resolve) {
            let result = self.pull_manifest(ep, &ctx.auth_for(ep), ctx.name).await;
            match result {
                Ok((bytes, digest)) => {
                    let actual = Digest::of(&bytes);
                    if let Some(want) = ctx.name.digest() {
                        if *want != actual {
                            return Err(ImageError::Blob(BlobError::DigestMismatch {
                                expected: want.clone(),
                                actual,
                            }));
                        }
                    }
                    if digest != actual.as_str() {
                        tracing::debug!(registry_digest = %digest, %actual, "registry reported another manifest digest");
                    }
                    return Ok((bytes, actual, ep.clone()));
                }
                Err(e) => {
                    let e = ImageError::from_manifest_fetch(
                        ctx.name,
                        &ep.host,
                        &format!("the manifest of {}", ctx.name),
                        e,
                    );
                    // Credentials problems are the same on every mirror only
                    // for the upstream; keep trying the next endpoint.
                    tracing::debug!(endpoint = %ep.host, error = %e, "resolve failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ImageError::Manifest {
            image: ctx.name.to_string(),
            reason: "no endpoint with the resolve capability is configured".into(),
        }))
    }

    /// Fetches the manifest or index `digest` of the pull's repository from
    /// `first`, else from the other pull-capable endpoints in order.
    async fn fetch_manifest(
        &self,
        ctx: &Ctx<'_>,
        first: &Endpoint,
        endpoints: &[Endpoint],
        digest: &Digest,
    ) -> Result<Vec<u8>, ImageError> {
        let by_digest = ctx.name.with_digest(digest.clone());
        let mut last = None;
        let order = std::iter::once(first).chain(
            endpoints
                .iter()
                .filter(|e| *e != first && e.capabilities.pull),
        );
        for ep in order {
            let result = self.pull_manifest(ep, &ctx.auth_for(ep), &by_digest).await;
            match result {
                Ok((bytes, _)) => {
                    let actual = Digest::of(&bytes);
                    if actual != *digest {
                        return Err(ImageError::Blob(BlobError::DigestMismatch {
                            expected: digest.clone(),
                            actual,
                        }));
                    }
                    return Ok(bytes);
                }
                Err(e) => {
                    last = Some(ImageError::from_manifest_fetch(
                        ctx.name,
                        &ep.host,
                        &format!("manifest {digest}"),
                        e,
                    ))
                }
            }
        }
        Err(last.unwrap_or_else(|| ImageError::Internal("no endpoint".into())))
    }

    /// Fetches the raw manifest `name` names from `ep`; a loopback registry
    /// that does not answer HTTPS is tried again over plain HTTP (and
    /// remembered). The client reads at most `max_metadata_bytes` of it.
    async fn pull_manifest(
        &self,
        ep: &Endpoint,
        auth: &RegistryAuth,
        name: &ImageName,
    ) -> Result<(Vec<u8>, String), OciDistributionError> {
        let r = &self.reference_for(name, ep);
        let http = self.is_plain_http(ep);
        let fetch = |http| async move {
            self.clients
                .get(ep, http, auth)?
                .pull_manifest_raw(r, auth, ACCEPTED)
                .await
                .map(|(bytes, digest)| (Vec::from(bytes), digest))
        };
        match fetch(http).await {
            Err(OciDistributionError::RequestError(e))
                if !http && ep.http_fallback && (e.is_connect() || e.is_request()) =>
            {
                tracing::info!(host = %ep.host, "HTTPS not answered on a loopback registry; using plain HTTP");
                let result = fetch(true).await;
                if result.is_ok() {
                    self.plain_http
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(ep.host.clone());
                }
                result
            }
            other => other,
        }
    }
}
