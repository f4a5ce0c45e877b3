//! `Version`: runtime name and versions.

use crate::proto;

/// The CRI API version berth serves.
pub const RUNTIME_API_VERSION: &str = "v1";

pub(super) fn version(_req: &proto::VersionRequest) -> proto::VersionResponse {
    proto::VersionResponse {
        // "Version of the kubelet runtime API" (api.proto): 0.1.0 for v1.
        version: "0.1.0".into(),
        runtime_name: "berth".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: RUNTIME_API_VERSION.into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_berth_and_v1() {
        let v = super::version(&Default::default());
        assert_eq!(v.runtime_name, "berth");
        assert_eq!(v.runtime_api_version, "v1");
        assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    }
}
