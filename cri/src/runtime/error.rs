//! The runtime service's errors, and the one place they become gRPC codes.

use std::path::{Path, PathBuf};

use crate::image::ImageError;

/// Everything that can go wrong in the runtime service.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A request field is missing or malformed; `field` is its path in the
    /// request (`config.metadata.name`).
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No such pod sandbox or container.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// `pod sandbox` or `container`.
        kind: &'static str,
        /// The id as given.
        id: String,
    },
    /// The name is taken by another object.
    #[error("{kind} name {name:?} is already reserved by {holder}")]
    AlreadyExists {
        /// `pod sandbox` or `container`.
        kind: &'static str,
        /// The name.
        name: String,
        /// The id holding it.
        holder: String,
    },
    /// The object is in a state that does not allow the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A deadline in the request passed (ExecSync's timeout).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Pinning or unpinning the pod's namespaces failed.
    #[error("pod namespaces: {0}")]
    Pin(#[from] berth_core::pin::PinError),
    /// An image problem (e.g. the container's image is not present).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A file operation in berth's directories failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The pod network (CNI).
    #[error(transparent)]
    Network(#[from] crate::cni::CniError),
    /// No streaming URL for Exec, Attach or PortForward.
    #[error(transparent)]
    Stream(#[from] crate::stream::IssueError),
    /// A request to a container's monitor failed.
    #[error("container {id}")]
    Task {
        /// The container.
        id: String,
        /// What failed.
        #[source]
        source: crate::task::TaskError,
    },
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::spec::SpecError> for RuntimeError {
    fn from(e: crate::spec::SpecError) -> RuntimeError {
        use crate::spec::SpecError;
        match e {
            SpecError::InvalidArgument { field, reason } => {
                RuntimeError::InvalidArgument { field, reason }
            }
            SpecError::Unsupported { field, reason } => RuntimeError::InvalidArgument {
                field,
                reason: format!("not supported: {reason}"),
            },
            SpecError::SeccompProfile {
                field,
                reference,
                reason,
            } => RuntimeError::InvalidArgument {
                field,
                reason: format!("seccomp profile {reference:?}: {reason}"),
            },
        }
    }
}

impl RuntimeError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> RuntimeError {
        RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A task error of container `id`.
    pub(crate) fn task(
        id: impl std::fmt::Display,
    ) -> impl FnOnce(crate::task::TaskError) -> RuntimeError {
        let id = id.to_string();
        move |source| RuntimeError::Task { id, source }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
