//! The one place where berth's typed errors become gRPC status codes, for
//! the image and the runtime service alike. Everything below keeps its
//! error types (`ImageError`, `RuntimeError`, the monitor's `TaskError`)
//! until a handler returns; the message is the error chain, cut to the
//! size kubelet logs.

use tonic::{Code, Status};

use crate::image::blobs::BlobError;
use crate::image::layers::LayerError;
use crate::image::ImageError;
use crate::runtime::RuntimeError;

/// The code of an image error.
fn image_code(e: &ImageError) -> Code {
    match e {
        ImageError::Reference(_) | ImageError::MissingField(_) => Code::InvalidArgument,
        ImageError::Hosts(_) | ImageError::AuthFile(_) | ImageError::EndpointUnsupported { .. } => {
            Code::FailedPrecondition
        }
        ImageError::Unauthenticated { .. } => Code::Unauthenticated,
        ImageError::NotFound { .. } | ImageError::NotPresent(_) => Code::NotFound,
        ImageError::Registry { .. } => Code::Unavailable,
        // Not something this node accepts as configured (as for
        // Manifest): retrying does not help, raising the limit does.
        ImageError::Manifest { .. } | ImageError::MetadataTooLarge { .. } => {
            Code::FailedPrecondition
        }
        ImageError::Blob(BlobError::DigestMismatch { .. } | BlobError::SizeMismatch { .. }) => {
            Code::DataLoss
        }
        ImageError::Layer(LayerError::Unpack { .. }) => Code::FailedPrecondition,
        ImageError::Blob(_)
        | ImageError::Layer(_)
        | ImageError::Io { .. }
        | ImageError::Internal(_) => Code::Internal,
    }
}

/// The code of a runtime error (an image error inside it keeps its own).
fn runtime_code(e: &RuntimeError) -> Code {
    match e {
        RuntimeError::InvalidArgument { .. } => Code::InvalidArgument,
        RuntimeError::NotFound { .. } => Code::NotFound,
        RuntimeError::AlreadyExists { .. } => Code::AlreadyExists,
        RuntimeError::ContainerState { .. }
        | RuntimeError::SandboxNotReady { .. }
        | RuntimeError::RestoreDisabled { .. }
        | RuntimeError::CheckpointShape { .. }
        | RuntimeError::AppArmor(_) => Code::FailedPrecondition,
        // Not there to restore from: the node is missing something the
        // request needs, not the request is wrong.
        RuntimeError::CheckpointImage { source, .. } => match **source {
            ImageError::NotPresent(_) | ImageError::Reference(_) => Code::FailedPrecondition,
            ref other => image_code(other),
        },
        RuntimeError::Create(e) => {
            use crate::monitor::MonitorError;
            match e {
                // runtime-core refused or failed to create it (its report).
                MonitorError::Create(_) => Code::FailedPrecondition,
                _ => Code::Internal,
            }
        }
        RuntimeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        RuntimeError::Image(e) => image_code(e),
        RuntimeError::Network(n) => {
            use crate::cni::{exec::PluginError, CniError};
            match n {
                CniError::NotReady(_) => Code::FailedPrecondition,
                CniError::Invalid { .. } => Code::InvalidArgument,
                CniError::Plugin(PluginError::Timeout { .. }) => Code::DeadlineExceeded,
                // A plugin's own failure: neither the request's fault
                // nor berth's.
                CniError::Plugin(_) => Code::Unknown,
                CniError::Cache { .. } => Code::Internal,
            }
        }
        // kubelet's own streaming server answers a full request
        // cache with ResourceExhausted.
        RuntimeError::Stream(
            crate::stream::IssueError::TooMany { .. } | crate::stream::IssueError::TooLarge { .. },
        ) => Code::ResourceExhausted,
        RuntimeError::Stream(crate::stream::IssueError::Random(_)) => Code::Internal,
        RuntimeError::Task { source, .. } => {
            use crate::task::{FailureKind, TaskError};
            match source {
                // Exited, or not in a state that allows the call.
                TaskError::Gone => Code::FailedPrecondition,
                TaskError::Failed(f) => match f.kind {
                    FailureKind::Refused { .. } | FailureKind::Invalid => Code::InvalidArgument,
                    FailureKind::Timeout => Code::DeadlineExceeded,
                    FailureKind::Version | FailureKind::BadRequest => Code::Internal,
                    FailureKind::InvalidState | FailureKind::Unsupported | FailureKind::Failed => {
                        Code::FailedPrecondition
                    }
                },
                TaskError::Channel(_) | TaskError::Protocol(_) => Code::Internal,
            }
        }
        RuntimeError::Pin(_) | RuntimeError::Io { .. } | RuntimeError::Internal(_) => {
            Code::Internal
        }
    }
}

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Status {
        crate::util::status(image_code(&e), crate::util::error_chain(&e))
    }
}

impl From<RuntimeError> for Status {
    fn from(e: RuntimeError) -> Status {
        crate::util::status(runtime_code(&e), crate::util::error_chain(&e))
    }
}
