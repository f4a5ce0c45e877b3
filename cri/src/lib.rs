//! berth-cri: the Kubernetes CRI layer of berth.
//!
//! - [`proto`]: the CRI v1 gRPC types, client and server traits, generated
//!   from the vendored `proto/api.proto`.
//! - [`image`]: the ImageService — pulling from OCI registries, the
//!   content-addressed blob store, layer unpacking, image metadata and GC.
//! - [`runtime`]: the RuntimeService (pods and containers).
//! - [`cni`]: pod networking through CNI plugins.
//! - [`stream`]: the streaming server of Exec, Attach and PortForward.
//! - [`conn`]: connection limits shared by berth's servers (accept
//!   backoff, connection slots, idle timeouts).

pub mod cdi;
pub mod cni;
mod codec;
pub mod conn;
mod grpc_status;
pub mod image;
pub mod logs;
pub mod monitor;
pub mod runtime;
pub mod spec;
pub mod store;
pub mod stream;
pub mod task;
mod util;
pub use util::CRASH_POINTS;

/// CRI v1 (`runtime.v1`) messages and services generated from `proto/api.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("runtime.v1");
}

/// The runtime-core version this CRI layer is built against.
pub fn core_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
