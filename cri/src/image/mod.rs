//! The image half of berth: CRI's ImageService.
//!
//! - [`reference`]: image names, normalised as Docker and containerd do
//!   (`busybox` → `docker.io/library/busybox:latest`), and validated digests.
//! - [`hosts`]: node registry configuration in containerd's
//!   `certs.d/<host>/hosts.toml` format (mirrors, plain HTTP, CA files,
//!   path prefixes, connect timeouts).
//! - [`auth_file`]: node-wide registry credentials (Docker's `config.json`).
//! - [`blobs`]: the content-addressed blob store (atomic, verified writes).
//! - [`unpack`]: one layer tar → one overlayfs lower directory.
//! - [`layers`]: unpacked layers keyed by chain id.
//! - [`store`]: image records, name resolution, container leases, GC.
//! - `manifest`: the manifest, index and config fields berth reads.
//! - [`pull`]: the fetcher (oci-client), parallel verified layer fetches;
//!   `clients`: its oci-client per endpoint settings and credentials.
//! - [`puller`]: the daemon's puller: single-flight pulls, the store's GC
//!   held off, the image recorded; fetches in a [`helper`] process.
//! - [`rootfs`]: what a container gets from its image: overlay dirs + config.
//! - [`service`]: the tonic `ImageService` implementation.

pub mod auth_file;
pub mod blobs;
mod clients;
pub mod error;
pub mod helper;
pub mod hosts;
pub mod layers;
mod manifest;
pub mod pull;
pub mod puller;
pub mod reference;
pub mod rootfs;
pub mod service;
pub mod store;
pub mod unpack;
pub mod volumes;

pub use error::ImageError;
pub use reference::{Digest, ImageName};
pub use service::ImageServiceImpl;
pub use store::{ImageRecord, ImageStore};
