//! The CRI `ImageService`: PullImage, ListImages, ImageStatus, RemoveImage,
//! ImageFsInfo, with the semantics the comments in `api.proto` give them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_client::secrets::RegistryAuth;
use tonic::{Request, Response, Status};

use super::error::ImageError;
use super::helper::HelperCommand;
use super::hosts::RegistryHosts;
use super::pull::PullOptions;
use super::puller::Puller;
use super::reference::ImageName;
use super::store::{ImageRecord, ImageStore};
use crate::proto;
use crate::util::blocking;

/// Settings of the image service.
#[derive(Debug, Clone, Default)]
pub struct ImageServiceConfig {
    /// containerd-style `certs.d` directory (`--registry-config-dir`).
    pub registry_config_dir: Option<PathBuf>,
    /// Image names reported as pinned.
    pub pinned_images: Vec<String>,
    /// Layers fetched at once per pull (0: default).
    pub max_concurrent_layers: usize,
    /// Node-wide registry credentials in Docker's `config.json` format, for
    /// pulls whose request carries none (`--auth-file`).
    pub auth_file: Option<PathBuf>,
    /// The most bytes of a manifest, index or image config a pull reads
    /// (0: [`DEFAULT_MAX_METADATA_BYTES`](super::pull::DEFAULT_MAX_METADATA_BYTES)).
    pub max_metadata_bytes: u64,
    /// The most bytes an image's layers may unpack to (`None`:
    /// [`DEFAULT_MAX_UNPACKED_BYTES`](super::pull::DEFAULT_MAX_UNPACKED_BYTES);
    /// `Some(0)`: no limit).
    pub max_unpacked_bytes: Option<u64>,
    /// Run each pull's fetch in a helper process started so (`berth
    /// serve`: itself); `None`: in this process.
    pub pull_helper: Option<HelperCommand>,
}

/// The image service: store plus puller.
#[derive(Clone)]
pub struct ImageServiceImpl {
    store: Arc<ImageStore>,
    puller: Arc<Puller>,
}

impl ImageServiceImpl {
    /// Opens the image store under `root` (e.g. `/var/lib/berth`).
    pub fn open(root: &Path, config: ImageServiceConfig) -> Result<ImageServiceImpl, ImageError> {
        let store = Arc::new(ImageStore::open(root, config.pinned_images)?);
        let mut opts = PullOptions {
            auth_file: config.auth_file,
            ..PullOptions::default()
        };
        if config.max_concurrent_layers > 0 {
            opts.max_concurrent_layers = config.max_concurrent_layers;
        }
        if config.max_metadata_bytes > 0 {
            opts.max_metadata_bytes = config.max_metadata_bytes;
        }
        if let Some(n) = config.max_unpacked_bytes {
            opts.max_unpacked_bytes = n;
        }
        let puller = Arc::new(match config.pull_helper {
            Some(cmd) => Puller::with_helper(store.clone(), cmd, config.registry_config_dir, opts),
            None => Puller::new(
                store.clone(),
                RegistryHosts::new(config.registry_config_dir),
                opts,
            ),
        });
        Ok(ImageServiceImpl { store, puller })
    }

    /// The store (the container code prepares root filesystems from it).
    pub fn store(&self) -> &Arc<ImageStore> {
        &self.store
    }

    /// The puller.
    pub fn puller(&self) -> &Arc<Puller> {
        &self.puller
    }

    fn to_cri(&self, rec: &ImageRecord) -> proto::Image {
        let (uid, username) = match &rec.user {
            Some(user) => super::rootfs::uid_or_name(user),
            None => self
                .store
                .image_config(rec)
                .map(|c| c.uid_or_name())
                .unwrap_or_default(),
        };
        proto::Image {
            id: rec.id.to_string(),
            repo_tags: rec.repo_tags.clone(),
            repo_digests: rec.repo_digests.clone(),
            size: rec.size,
            uid: uid.map(|value| proto::Int64Value { value }),
            username,
            spec: Some(proto::ImageSpec {
                image: rec.id.to_string(),
                ..Default::default()
            }),
            pinned: self.store.is_pinned(rec),
        }
    }
}

fn image_field(spec: Option<&proto::ImageSpec>, field: &'static str) -> Result<String, ImageError> {
    spec.map(|s| s.image.clone())
        .filter(|s| !s.is_empty())
        .ok_or(ImageError::MissingField(field))
}

/// CRI credentials → oci-client's. An `auth` string is base64 `user:pass`.
pub fn registry_auth(auth: Option<&proto::AuthConfig>) -> Result<RegistryAuth, Status> {
    use base64::Engine as _;
    let Some(a) = auth else {
        return Ok(RegistryAuth::Anonymous);
    };
    // Credentials end up in an HTTP header: a control character (a NUL, a
    // newline that would start another header) is refused here, naming the
    // field, before anything is sent.
    for (field, value) in [
        ("auth.username", &a.username),
        ("auth.password", &a.password),
        ("auth.auth", &a.auth),
        ("auth.identity_token", &a.identity_token),
        ("auth.registry_token", &a.registry_token),
    ] {
        if value.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "{field} must not contain control characters"
            )));
        }
    }
    if !a.registry_token.is_empty() {
        return Ok(RegistryAuth::Bearer(a.registry_token.clone()));
    }
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(RegistryAuth::Basic(a.username.clone(), a.password.clone()));
    }
    if !a.auth.is_empty() {
        let bad = || Status::invalid_argument("auth.auth must be base64 of \"username:password\"");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        if text.chars().any(char::is_control) {
            return Err(bad());
        }
        let (user, pass) = text.split_once(':').ok_or_else(bad)?;
        return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
    }
    if !a.identity_token.is_empty() {
        // Docker's convention for an identity (refresh) token.
        return Ok(RegistryAuth::Basic(
            "<token>".into(),
            a.identity_token.clone(),
        ));
    }
    Ok(RegistryAuth::Anonymous)
}

#[tonic::async_trait]
impl proto::image_service_server::ImageService for ImageServiceImpl {
    async fn list_images(
        &self,
        request: Request<proto::ListImagesRequest>,
    ) -> Result<Response<proto::ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let records = match filter {
            Some(f) => self.store.resolve(&f).into_iter().collect(),
            None => self.store.list(),
        };
        let images = records.iter().map(|r| self.to_cri(r)).collect();
        Ok(Response::new(proto::ListImagesResponse { images }))
    }

    async fn stream_images(
        &self,
        request: Request<proto::StreamImagesRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<proto::StreamImagesResponse>>, Status> {
        let filter = request.into_inner().filter;
        let images = self
            .list_images(Request::new(proto::ListImagesRequest { filter }))
            .await?
            .into_inner()
            .images;
        Ok(Response::new(crate::util::batches(images, |images| {
            proto::StreamImagesResponse { images }
        })))
    }

    async fn image_status(
        &self,
        request: Request<proto::ImageStatusRequest>,
    ) -> Result<Response<proto::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let spec = image_field(req.image.as_ref(), "image.image")?;
        // Not present is not an error: the response carries no image.
        let Some(rec) = self.store.resolve(&spec) else {
            return Ok(Response::new(proto::ImageStatusResponse::default()));
        };
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let config: serde_json::Value = self
                .store
                .blobs()
                .read(&rec.id)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let verbose = serde_json::json!({
                "id": rec.id,
                "manifest": rec.manifest,
                "chainID": rec.layers.last().map(|l| l.chain_id.to_string()),
                "layers": rec.layers.iter().map(|l| serde_json::json!({
                    "digest": l.blob, "mediaType": l.media_type, "size": l.size,
                    "diffID": l.diff_id, "chainID": l.chain_id,
                })).collect::<Vec<_>>(),
                "imageSpec": config,
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(Response::new(proto::ImageStatusResponse {
            image: Some(self.to_cri(&rec)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<proto::PullImageRequest>,
    ) -> Result<Response<proto::PullImageResponse>, Status> {
        let req = request.into_inner();
        let spec = image_field(req.image.as_ref(), "image.image")?;
        let name = ImageName::parse(&spec).map_err(ImageError::from)?;
        let auth = registry_auth(req.auth.as_ref())?;
        let rec = self.puller.pull(&name, &auth).await.map_err(|e| {
            tracing::warn!(image = %name, error = %e, "PullImage failed");
            Status::from(e)
        })?;
        tracing::info!(image = %name, id = %rec.id, "pulled");
        crate::util::release_free_memory();
        Ok(Response::new(proto::PullImageResponse {
            image_ref: rec.id.to_string(),
        }))
    }

    async fn remove_image(
        &self,
        request: Request<proto::RemoveImageRequest>,
    ) -> Result<Response<proto::RemoveImageResponse>, Status> {
        let spec = image_field(request.into_inner().image.as_ref(), "image.image")?;
        let store = self.store.clone();
        blocking(move || store.remove(&spec)).await?;
        Ok(Response::new(proto::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<proto::ImageFsInfoRequest>,
    ) -> Result<Response<proto::ImageFsInfoResponse>, Status> {
        let store = self.store.clone();
        let usage = blocking(move || {
            let (bytes, inodes) = store.usage();
            let mountpoint =
                mountpoint_of(store.root()).map_err(|e| ImageError::io(store.root(), e))?;
            Ok::<_, ImageError>(proto::FilesystemUsage {
                timestamp: crate::util::now_nanos(),
                fs_id: Some(proto::FilesystemIdentifier {
                    mountpoint: mountpoint.to_string_lossy().into_owned(),
                }),
                used_bytes: Some(proto::UInt64Value { value: bytes }),
                inodes_used: Some(proto::UInt64Value { value: inodes }),
            })
        })
        .await?;
        Ok(Response::new(proto::ImageFsInfoResponse {
            image_filesystems: vec![usage],
            container_filesystems: Vec::new(),
        }))
    }
}

/// The mount point of the filesystem holding `path` (kubelet matches it
/// against cAdvisor's filesystems, so it must be a real mount point).
pub fn mountpoint_of(path: &Path) -> std::io::Result<PathBuf> {
    let path = path.canonicalize()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let best = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len());
    Ok(best.unwrap_or_else(|| PathBuf::from("/")))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_mapping() {
        let a = |f: fn(&mut proto::AuthConfig)| {
            let mut c = proto::AuthConfig::default();
            f(&mut c);
            registry_auth(Some(&c))
        };
        assert!(matches!(
            registry_auth(None).unwrap(),
            RegistryAuth::Anonymous
        ));
        assert!(
            matches!(a(|c| c.username = "u".into()).unwrap(), RegistryAuth::Basic(u, _) if u == "u")
        );
        // base64("alice:s3cr:et")
        let basic = a(|c| c.auth = "YWxpY2U6czNjcjpldA==".into()).unwrap();
        assert!(matches!(basic, RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cr:et"));
        assert!(
            matches!(a(|c| c.registry_token = "t".into()).unwrap(), RegistryAuth::Bearer(t) if t == "t")
        );
        let err = a(|c| c.auth = "not base64!".into()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("auth.auth"));
        // A control character would break (or add) a header: refused by name.
        for (field, err) in [
            (
                "auth.registry_token",
                a(|c| c.registry_token = "a\nb".into()),
            ),
            (
                "auth.registry_token",
                a(|c| c.registry_token = "a\0b".into()),
            ),
            ("auth.password", a(|c| c.password = "p\r\nX-Evil: 1".into())),
            ("auth.username", a(|c| c.username = "\x7f".into())),
            // base64("u:p\nq")
            ("auth.auth", a(|c| c.auth = "dTpwCnE=".into())),
        ] {
            let err = err.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(err.message().contains(field), "{field}: {err:?}");
        }
    }

    #[test]
    fn mountpoints() {
        assert_eq!(mountpoint_of(Path::new("/")).unwrap(), PathBuf::from("/"));
        assert_eq!(
            mountpoint_of(Path::new("/proc/self")).unwrap(),
            PathBuf::from("/proc")
        );
        assert_eq!(unescape_mountinfo("/a\\040b"), PathBuf::from("/a b"));
    }
}
