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
    /// The container is in a state that does not allow the call.
    #[error("container {id} is {state:?}: {wanted}")]
    ContainerState {
        /// The container.
        id: String,
        /// Its state.
        state: super::container::ContainerState,
        /// What the call needs.
        wanted: &'static str,
    },
    /// The pod sandbox cannot take the call (stopped, or what the call
    /// needs of it is gone).
    #[error("pod sandbox {id} {reason}")]
    SandboxNotReady {
        /// The pod.
        id: String,
        /// What is missing.
        reason: &'static str,
    },
    /// The image is a checkpoint, and this node does not restore them.
    #[error(
        "{field} {image:?} is a checkpoint, and restoring checkpoints is off on this \
         node (set restore = true in the [checkpoint] section of berth's configuration to allow it)"
    )]
    RestoreDisabled {
        /// The request field naming it (`config.image.image`, `checkpoint_path`).
        field: &'static str,
        /// The image or directory as requested.
        image: String,
    },
    /// A container of a pod being checkpointed has a shape pod checkpoints
    /// do not hold yet.
    #[error("{id} {reason}: CheckpointPod does not checkpoint such containers yet")]
    CheckpointShape {
        /// The container (`container <id>`) or pod (`pod sandbox <id>`).
        id: String,
        /// What it has.
        reason: String,
    },
    /// The node's criu lacks what a restore needs.
    #[error(
        "{criu} lacks {what} (`criu check --feature {feature}` fails); scripts/install-criu.sh \
         builds a criu with berth's patches"
    )]
    CriuLacks {
        /// The criu binary.
        criu: PathBuf,
        /// What is missing, in words.
        what: &'static str,
        /// Its `criu check --feature` name.
        feature: &'static str,
    },
    /// The rootfs image a checkpoint was taken from cannot be had.
    #[error("the checkpoint's rootfs image {name:?}")]
    CheckpointImage {
        /// The image's name in the checkpoint.
        name: String,
        /// Why not (boxed: an image error is large).
        #[source]
        source: Box<ImageError>,
    },
    /// The container's monitor could not create it.
    #[error("creating the container")]
    Create(#[source] crate::monitor::MonitorError),
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
    /// The node cannot load or list AppArmor profiles (no
    /// `apparmor_parser`, securityfs not mounted).
    #[error(transparent)]
    AppArmor(#[from] berth_core::security::apparmor::AppArmorError),
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

    /// Unless container `rec` is in `state`, the error saying it needs
    /// that (`wanted`).
    pub(crate) fn require(
        rec: &super::container::ContainerRecord,
        state: super::container::ContainerState,
        wanted: &'static str,
    ) -> Result<(), RuntimeError> {
        match rec.state == state {
            true => Ok(()),
            false => Err(RuntimeError::ContainerState {
                id: rec.id.to_string(),
                state: rec.state,
                wanted,
            }),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
