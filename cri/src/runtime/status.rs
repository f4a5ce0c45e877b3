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
        // The default handler, with what CreateContainer really does:
        // recursive read-only mounts (mount_setattr, Linux 5.12+) and pod
        // user namespaces, whose image layers are idmapped under an overlay
        // (overlayfs on idmapped layers: Linux 5.19+).
        runtime_handlers: vec![proto::RuntimeHandler {
            name: String::new(),
            features: Some(proto::RuntimeHandlerFeatures {
                recursive_read_only_mounts: kernel_at_least(5, 12),
                user_namespaces: kernel_at_least(5, 19),
            }),
        }],
        // Mount options: noexec/nodev/nosuid on bind mounts, applied.
        features: Some(proto::RuntimeFeatures {
            supplemental_groups_policy: true,
            user_namespaces_host_network: false,
            mount_options: true,
        }),
    }
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(u) = nix::sys::utsname::uname() else {
        return false;
    };
    let release = u.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
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
