//! The one place where berth's typed errors become gRPC status codes, for
//! the image and the runtime service alike. Everything below keeps its
//! error types (`ImageError`, `RuntimeError`, the monitor's `TaskError`)
//! until a handler returns; the message is the error chain, cut to the
//! size kubelet logs.

use tonic::{Code, Status};

use crate::image::error::ImageErrorKind;
use crate::image::ImageError;
use crate::runtime::RuntimeError;

/// The code of an image error, by its kind (the same for an error the
/// pull helper sent back).
fn image_code(e: &ImageError) -> Code {
    match e.kind() {
        ImageErrorKind::BadRequest => Code::InvalidArgument,
        ImageErrorKind::NodeConfig => Code::FailedPrecondition,
        ImageErrorKind::Unauthenticated => Code::Unauthenticated,
        ImageErrorKind::NotFound | ImageErrorKind::NotPresent => Code::NotFound,
        ImageErrorKind::Registry => Code::Unavailable,
        // Not something this node accepts as configured: retrying does not
        // help, raising the limit does.
        ImageErrorKind::Unacceptable => Code::FailedPrecondition,
        ImageErrorKind::Integrity => Code::DataLoss,
        ImageErrorKind::Internal => Code::Internal,
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
        | RuntimeError::CriuLacks { .. }
        | RuntimeError::AppArmor(_) => Code::FailedPrecondition,
        // Not there to restore from: the node is missing something the
        // request needs, not the request is wrong.
        RuntimeError::CheckpointImage { source, .. } => match source.kind() {
            ImageErrorKind::NotPresent | ImageErrorKind::BadRequest => Code::FailedPrecondition,
            _ => image_code(source),
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
