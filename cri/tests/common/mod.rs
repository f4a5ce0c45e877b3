//! Shared setup for the image service tests: a real registry (Debian's
//! docker-registry), berth's ImageService served over a unix socket by
//! tonic, and a CRI client connected to it.

#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_cri::image::service::ImageServiceConfig;
use berth_cri::image::ImageServiceImpl;
use berth_cri::proto::image_service_client::ImageServiceClient;
use berth_cri::proto::image_service_server::ImageServiceServer;
use berth_cri::proto::{self, ImageSpec};
use berth_e2e::registry::Registry;
use tonic::transport::Channel;

/// A started registry, or `None` after printing `skipped: ...`.
pub fn registry(test: &str, auth: Option<(&str, &str)>) -> Option<Registry> {
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        println!("skipped: {test}: needs root");
        return None;
    }
    let started = match auth {
        Some((u, p)) => Registry::start_with_auth(u, p),
        None => Registry::start(),
    };
    match started {
        Ok(r) => Some(r),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: starting the registry: {e}"),
    }
}

/// berth's image service on a unix socket, with a client.
pub struct Service {
    pub dir: tempfile::TempDir,
    pub svc: ImageServiceImpl,
    pub client: ImageServiceClient<Channel>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Service {
    pub async fn start(config: ImageServiceConfig) -> Service {
        let dir = tempfile::tempdir().unwrap();
        Service::start_at(dir, config).await
    }

    /// Starts on an existing root (a "restart").
    pub async fn start_at(dir: tempfile::TempDir, config: ImageServiceConfig) -> Service {
        let root = dir.path().join("root");
        let svc = ImageServiceImpl::open(&root, config).unwrap();
        let sock = dir
            .path()
            .join(format!("berth-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let server_svc = svc.clone();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(ImageServiceServer::new(server_svc))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        let client = ImageServiceClient::new(connect(&sock).await);
        Service {
            dir,
            svc,
            client,
            server,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub async fn pull(&mut self, image: &str) -> Result<String, tonic::Status> {
        self.pull_with(image, None).await
    }

    pub async fn pull_with(
        &mut self,
        image: &str,
        auth: Option<proto::AuthConfig>,
    ) -> Result<String, tonic::Status> {
        self.client
            .pull_image(proto::PullImageRequest {
                image: Some(spec(image)),
                auth,
                sandbox_config: None,
            })
            .await
            .map(|r| r.into_inner().image_ref)
    }

    pub async fn status(&mut self, image: &str) -> Option<proto::Image> {
        self.client
            .image_status(proto::ImageStatusRequest {
                image: Some(spec(image)),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image
    }

    pub async fn list(&mut self) -> Vec<proto::Image> {
        self.client
            .list_images(proto::ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images
    }

    pub async fn remove(&mut self, image: &str) -> Result<(), tonic::Status> {
        self.client
            .remove_image(proto::RemoveImageRequest {
                image: Some(spec(image)),
            })
            .await
            .map(|_| ())
    }

    pub async fn fs_usage(&mut self) -> proto::FilesystemUsage {
        let mut r = self
            .client
            .image_fs_info(proto::ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.image_filesystems.len(), 1);
        r.image_filesystems.remove(0)
    }

    /// Unpacked layer directories on disk.
    pub fn layer_dirs(&self) -> Vec<PathBuf> {
        entries(&self.root().join("layers"))
    }

    /// Stored blobs.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        entries(&self.root().join("blobs/sha256"))
    }
}

pub fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

pub fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

/// A tonic channel over a unix socket.
pub async fn connect(sock: &Path) -> Channel {
    berth_e2e::cri::connect(sock).await.unwrap()
}

/// An overlay mount of a container rootfs on a directory of the test's own;
/// unmounted on drop.
pub struct OverlayMount(pub PathBuf);

impl OverlayMount {
    pub fn mount(rootfs: &berth_core::config::OverlayRootfs, target: &Path) -> OverlayMount {
        std::fs::create_dir_all(target).unwrap();
        let data = rootfs.mount_data();
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .unwrap_or_else(|e| panic!("mount overlay {data}: {e}"));
        OverlayMount(target.to_path_buf())
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
