//! `Status`: the RuntimeReady and NetworkReady conditions kubelet gates the
//! node on, and the runtime handlers with their features.

use crate::proto;

/// kubelet's condition types (api.proto `RuntimeReady`, `NetworkReady`).
const RUNTIME_READY: &str = "RuntimeReady";
const NETWORK_READY: &str = "NetworkReady";

/// `network`: whether pods can get a network, or why not; `cni`: what the
/// verbose answer shows of the CNI setup; `cdi`: CDI's settings (the
/// verbose config shows them under containerd's names, `enableCDI` and
/// `cdiSpecDirs`: cri-api has no field for them); `handlers`: the
/// RuntimeClass handlers besides the default one.
pub(super) fn status(
    req: &proto::StatusRequest,
    network: Result<(), String>,
    cni: Option<serde_json::Value>,
    cdi: &crate::cdi::CdiSettings,
    handlers: &super::handlers::Handlers,
) -> proto::StatusResponse {
    let conditions = vec![
        proto::RuntimeCondition {
            r#type: RUNTIME_READY.into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        // kubelet keeps the node NotReady until this is true; pods with
        // host networking are accepted meanwhile (a CNI DaemonSet's own).
        match network {
            Ok(()) => proto::RuntimeCondition {
                r#type: NETWORK_READY.into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Err(why) => proto::RuntimeCondition {
                r#type: NETWORK_READY.into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("berth: network plugin not ready: {why}"),
            },
        },
    ];
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        info.insert(
            "config".into(),
            serde_json::json!({
                "runtime": "berth",
                "version": env!("CARGO_PKG_VERSION"),
                "enableCDI": cdi.enabled,
                "cdiSpecDirs": cdi.spec_dirs,
            })
            .to_string(),
        );
        if let Some(cni) = cni {
            info.insert("cniconfig".into(), cni.to_string());
        }
    }
    proto::StatusResponse {
        status: Some(proto::RuntimeStatus { conditions }),
        info,
        // The default handler, with what CreateContainer really does:
        // recursive read-only mounts (mount_setattr, Linux 5.12+) and pod
        // user namespaces, whose image layers are idmapped under an overlay
        // (overlayfs on idmapped layers: Linux 5.19+).
        // Every configured handler is berth's core too (`embedded`): the
        // same features.
        runtime_handlers: std::iter::once("")
            .chain(handlers.names())
            .map(|name| {
                // An external runtime is asked for neither (its rootfs and
                // mounts would need what berth does not give it).
                let embedded = !handlers.external(name);
                proto::RuntimeHandler {
                    name: name.to_string(),
                    features: Some(proto::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: embedded && berth_core::kernel::at_least(5, 12),
                        user_namespaces: embedded && berth_core::kernel::at_least(5, 19),
                    }),
                }
            })
            .collect(),
        // Mount options: noexec/nodev/nosuid on bind mounts, applied.
        features: Some(proto::RuntimeFeatures {
            supplemental_groups_policy: true,
            user_namespaces_host_network: berth_core::kernel::at_least(5, 19),
            mount_options: true,
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runtime_ready_network_as_told() {
        let req = crate::proto::StatusRequest { verbose: true };
        let cdi = crate::cdi::CdiSettings::default();
        let s = super::status(
            &req,
            Err("no config in /x".into()),
            None,
            &cdi,
            &Default::default(),
        );
        let c = s.status.unwrap().conditions;
        assert!(c.iter().any(|c| c.r#type == "RuntimeReady" && c.status));
        let net = c.iter().find(|c| c.r#type == "NetworkReady").unwrap();
        assert!(!net.status && net.reason == "NetworkPluginNotReady");
        assert!(net.message.contains("no config in /x"));
        let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
        assert_eq!(config["enableCDI"], true);
        assert_eq!(config["cdiSpecDirs"][1], "/var/run/cdi");
        let pods = Some(serde_json::json!({"network": "pods"}));
        let handlers = super::super::handlers::Handlers::new(std::collections::BTreeMap::from([(
            "hardened".to_string(),
            super::super::handlers::Handler::Embedded(Default::default()),
        )]));
        let s = super::status(&req, Ok(()), pods, &cdi, &handlers);
        let names: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["", "hardened"]);
        let c = s.status.unwrap().conditions;
        assert!(c.iter().all(|c| c.status));
        assert!(s.info["cniconfig"].contains("pods"));
    }
}
