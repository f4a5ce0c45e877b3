//! berth-cri: translates Kubernetes CRI requests into berth-core containers.
//!
//! This crate is a placeholder until the CRI RuntimeService and ImageService
//! land (tracked issues); it exists so the workspace layout — `shim → cri →
//! runtime-core` — is in place from the start.

/// The runtime-core version this CRI layer is built against.
pub fn core_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
