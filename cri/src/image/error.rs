//! The image service's errors, and the one place they become gRPC codes.

use std::path::{Path, PathBuf};

use oci_client::errors::{OciDistributionError, OciErrorCode};

use super::auth_file::AuthFileError;
use super::blobs::BlobError;
use super::hosts::HostsError;
use super::layers::LayerError;
use super::reference::{ImageName, ReferenceError};

/// Everything that can go wrong in the image service.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A malformed image name or digest in the request.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A required request field is empty.
    #[error("{0} must not be empty")]
    MissingField(&'static str),
    /// The node's registry configuration is broken.
    #[error("registry configuration: {0}")]
    Hosts(#[from] HostsError),
    /// The node's registry credentials file is broken.
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    /// A hosts.toml endpoint asks for something berth cannot do, so it is
    /// not used.
    #[error(
        "pulling {image}: endpoint {endpoint} ({file}) not used: `{key}` is set, but {reason}"
    )]
    EndpointUnsupported {
        /// The image.
        image: String,
        /// The endpoint's URL.
        endpoint: String,
        /// The hosts.toml that configures it.
        file: String,
        /// The hosts.toml key.
        key: &'static str,
        /// Why it cannot be honoured.
        reason: &'static str,
    },
    /// The registry refused the credentials (or asked for some).
    #[error("pulling {image}: registry {registry} refused access: {reason}")]
    Unauthenticated {
        /// The image.
        image: String,
        /// The registry host.
        registry: String,
        /// What the registry said.
        reason: String,
    },
    /// The registry does not have the image (or the platform).
    #[error("pulling {image}: not found: {reason}")]
    NotFound {
        /// The image.
        image: String,
        /// Details.
        reason: String,
    },
    /// The registry could not be reached or failed.
    #[error("pulling {image} from {registry}: {reason}")]
    Registry {
        /// The image.
        image: String,
        /// The endpoint host.
        registry: String,
        /// What happened.
        reason: String,
    },
    /// The manifest or config is not something berth can run.
    #[error("pulling {image}: {reason}")]
    Manifest {
        /// The image.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// A manifest, index or image config is larger than berth reads into
    /// memory (`[image] max_metadata_bytes`; containerd refuses manifests
    /// over 4 MiB too).
    #[error(
        "pulling {image}: {what} {}, over the limit of {limit} bytes ([image] max_metadata_bytes)",
        too_large(.size)
    )]
    MetadataTooLarge {
        /// The image.
        image: String,
        /// Which document (`manifest sha256:…`, `image config sha256:…`).
        what: String,
        /// Its size, declared by its descriptor or `Content-Length`; `None`
        /// when none was declared and the body ran past the limit.
        size: Option<u64>,
        /// The limit.
        limit: u64,
    },
    /// A blob failed verification or could not be stored.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A layer failed to unpack (unsafe path, diff id mismatch, ...).
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The image is not present locally.
    #[error("image {0:?} not found")]
    NotPresent(String),
    /// A file operation in berth's image directories failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
    /// An error of a pull that ran in the pull helper process, as it sent
    /// it: its kind (so it maps to the same gRPC code as in the daemon) and
    /// its message (the helper's error chain).
    #[error("{message}")]
    Remote {
        /// What kind of error it was there.
        kind: ImageErrorKind,
        /// Its error chain.
        message: String,
    },
}

/// What kind an [`ImageError`] is: what decides its gRPC code, kept when
/// the error crosses a process boundary (the pull helper's reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ImageErrorKind {
    /// A malformed name or digest, or an empty required field.
    BadRequest,
    /// The node's registry configuration or credentials file is broken, or
    /// an endpoint asks for what berth cannot do.
    NodeConfig,
    /// The registry refused the credentials.
    Unauthenticated,
    /// The registry (or this node) does not have the image.
    NotFound,
    /// The registry could not be reached or failed.
    Registry,
    /// The image is not something berth takes (manifest, limits, layers
    /// that do not unpack safely).
    Unacceptable,
    /// Content did not match its digest or size.
    Integrity,
    /// Only the local name of an image was wrong: not present here.
    NotPresent,
    /// berth's own storage failed, or a bug.
    Internal,
}

impl ImageError {
    /// The kind of this error.
    pub fn kind(&self) -> ImageErrorKind {
        use ImageErrorKind as K;
        match self {
            ImageError::Reference(_) | ImageError::MissingField(_) => K::BadRequest,
            ImageError::Hosts(_)
            | ImageError::AuthFile(_)
            | ImageError::EndpointUnsupported { .. } => K::NodeConfig,
            ImageError::Unauthenticated { .. } => K::Unauthenticated,
            ImageError::NotFound { .. } => K::NotFound,
            ImageError::NotPresent(_) => K::NotPresent,
            ImageError::Registry { .. } => K::Registry,
            ImageError::Manifest { .. }
            | ImageError::MetadataTooLarge { .. }
            | ImageError::Layer(LayerError::Unpack { .. }) => K::Unacceptable,
            ImageError::Blob(BlobError::DigestMismatch { .. } | BlobError::SizeMismatch { .. }) => {
                K::Integrity
            }
            ImageError::Blob(_)
            | ImageError::Layer(_)
            | ImageError::Io { .. }
            | ImageError::Internal(_) => K::Internal,
            ImageError::Remote { kind, .. } => *kind,
        }
    }
}

fn too_large(size: &Option<u64>) -> String {
    match size {
        Some(size) => format!("is {size} bytes"),
        None => "is larger (no size declared)".to_string(),
    }
}

impl ImageError {
    /// An oci-client error while fetching `what` (a manifest or index):
    /// a body over the limit becomes [`ImageError::MetadataTooLarge`],
    /// anything else as [`ImageError::from_registry`] sorts it.
    pub(crate) fn from_manifest_fetch(
        name: &ImageName,
        registry: &str,
        what: &str,
        e: OciDistributionError,
    ) -> ImageError {
        match e {
            OciDistributionError::BodyTooLarge { size, limit } => ImageError::MetadataTooLarge {
                image: name.to_string(),
                what: what.to_string(),
                size,
                limit,
            },
            e => ImageError::from_registry(name, registry, e),
        }
    }

    /// Refuses `what` when its descriptor declares more than `limit` bytes
    /// (checked before any of it is fetched); a negative size is malformed.
    pub(crate) fn check_declared_size(
        name: &ImageName,
        what: &str,
        size: i64,
        limit: u64,
    ) -> Result<(), ImageError> {
        let size = u64::try_from(size).map_err(|_| ImageError::Manifest {
            image: name.to_string(),
            reason: format!("{what}: negative size {size}"),
        })?;
        if size > limit {
            return Err(ImageError::MetadataTooLarge {
                image: name.to_string(),
                what: what.to_string(),
                size: Some(size),
                limit,
            });
        }
        Ok(())
    }

    /// An oci-client error from `registry` (an endpoint's host) while
    /// pulling `name`, sorted into Unauthenticated, NotFound or Registry by
    /// the HTTP status and the distribution error codes.
    pub(crate) fn from_registry(
        name: &ImageName,
        registry: &str,
        e: OciDistributionError,
    ) -> ImageError {
        let image = name.to_string();
        let registry = registry.to_string();
        let codes: &[oci_client::errors::OciError] = match &e {
            OciDistributionError::RegistryError { envelope, .. } => &envelope.errors,
            _ => &[],
        };
        let unauth = matches!(
            e,
            OciDistributionError::AuthenticationFailure(_)
                | OciDistributionError::UnauthorizedError { .. }
        ) || matches!(
            e,
            OciDistributionError::ServerError {
                code: 401 | 403,
                ..
            }
        ) || codes
            .iter()
            .any(|c| matches!(c.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
        let not_found = matches!(e, OciDistributionError::ImageManifestNotFoundError(_))
            || matches!(e, OciDistributionError::ServerError { code: 404, .. })
            || codes.iter().any(|c| {
                matches!(
                    c.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            });
        let reason = crate::util::error_chain(&e);
        if unauth {
            ImageError::Unauthenticated {
                image,
                registry,
                reason,
            }
        } else if not_found {
            ImageError::NotFound { image, reason }
        } else {
            ImageError::Registry {
                image,
                registry,
                reason,
            }
        }
    }

    /// Whether trying again later may succeed (a network failure, a 5xx or
    /// 429, a `TOOMANYREQUESTS`).
    pub(crate) fn is_transient(e: &OciDistributionError) -> bool {
        match e {
            OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => true,
            OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
            OciDistributionError::RegistryError { envelope, .. } => envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Toomanyrequests)),
            _ => false,
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> ImageError {
        ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_metadata_names_its_size_and_the_limit() {
        let name = ImageName::parse("r.example/big:1").unwrap();
        let ok = ImageError::check_declared_size(&name, "image config sha256:ab", 4096, 4096);
        assert!(ok.is_ok());
        let err = ImageError::check_declared_size(&name, "image config sha256:ab", 104857600, 4096)
            .unwrap_err();
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "pulling r.example/big:1: image config sha256:ab is 104857600 bytes, over the \
             limit of 4096 bytes ([image] max_metadata_bytes)"
        );
        let err =
            ImageError::check_declared_size(&name, "manifest sha256:cd", -1, 4096).unwrap_err();
        assert!(
            matches!(&err, ImageError::Manifest { reason, .. } if reason.contains("negative")),
            "{err}"
        );

        // A body that declared no size (chunked) and ran past the limit.
        let e = OciDistributionError::BodyTooLarge {
            size: None,
            limit: 4096,
        };
        let err = ImageError::from_manifest_fetch(&name, "r.example", "manifest sha256:cd", e);
        assert_eq!(
            err.to_string(),
            "pulling r.example/big:1: manifest sha256:cd is larger (no size declared), over \
             the limit of 4096 bytes ([image] max_metadata_bytes)"
        );
        // Anything else is sorted as before.
        let e = OciDistributionError::ServerError {
            code: 503,
            url: "http://r.example/v2/".into(),
            message: "busy".into(),
        };
        let err = ImageError::from_manifest_fetch(&name, "r.example", "manifest sha256:cd", e);
        assert!(matches!(err, ImageError::Registry { .. }), "{err}");
    }
}
