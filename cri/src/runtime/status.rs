//! `Status`: the RuntimeReady and NetworkReady conditions kubelet gates the
//! node on, and the runtime handlers with their features.

use crate::proto;

/// kubelet's condition types (api.proto `RuntimeReady`, `NetworkReady`).
const RUNTIME_READY: &str = "RuntimeReady";
const NETWORK_READY: &str = "NetworkReady";

pub(super) fn status(req: &proto::StatusRequest) -> proto::StatusResponse {
    let conditions = vec![
        proto::RuntimeCondition {
            r#type: RUNTIME_READY.into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        // No pod network yet: kubelet keeps the node NotReady until a CNI
        // configuration is loaded (the CNI issue), which is the truth.
        proto::RuntimeCondition {
            r#type: NETWORK_READY.into(),
            status: false,
            reason: "NetworkPluginNotReady".into(),
            message: "berth: no pod network configured (CNI support is not built yet)".into(),
        },
    ];
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        info.insert(
            "config".into(),
            serde_json::json!({ "runtime": "berth", "version": env!("CARGO_PKG_VERSION") })
                .to_string(),
        );
    }
    proto::StatusResponse {
        status: Some(proto::RuntimeStatus { conditions }),
        info,
        // The default handler. Features are reported only once the CRI
        // container code implements them (recursive read-only mounts and user
        // namespaces exist in runtime-core but not yet behind CreateContainer).
        runtime_handlers: vec![proto::RuntimeHandler {
            name: String::new(),
            features: Some(proto::RuntimeHandlerFeatures {
                recursive_read_only_mounts: false,
                user_namespaces: false,
            }),
        }],
        features: Some(proto::RuntimeFeatures {
            supplemental_groups_policy: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runtime_ready_network_not_yet() {
        let s = super::status(&crate::proto::StatusRequest { verbose: true });
        let c = s.status.unwrap().conditions;
        assert!(c.iter().any(|c| c.r#type == "RuntimeReady" && c.status));
        let net = c.iter().find(|c| c.r#type == "NetworkReady").unwrap();
        assert!(!net.status && !net.reason.is_empty() && !net.message.is_empty());
        assert!(s.info.contains_key("config"));
    }
}
