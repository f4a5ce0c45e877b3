//! The `runtimeConfig` capabilities berth fills in from the pod's config
//! (`portMappings`, `bandwidth`, `dns`, `ipRanges`, `cgroupPath`, and the
//! pod annotations as containerd passes them). A plugin sees only those it
//! declares in its `capabilities`.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::proto;

/// kubelet's bandwidth annotations.
pub const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
/// kubelet's bandwidth annotations.
pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// A bad bandwidth annotation: the annotation's key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAnnotation {
    /// `config.annotations["..."]`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// A Kubernetes quantity as an integer (`10M`, `1.5Gi`, `100k`, `2e6`),
/// rounded up; `None` when it is not one or is negative.
pub fn parse_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (num, suffix) = if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
        let e: u32 = exp.parse().ok()?;
        (num, 10f64.powi(i32::try_from(e).ok()?))
    } else {
        let m: f64 = match suffix {
            "" => 1.0,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024.0,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            _ => return None,
        };
        (num, m)
    };
    if num.is_empty() || num.matches('.').count() > 1 {
        return None;
    }
    let v: f64 = num.parse().ok()?;
    let total = (v * suffix).ceil();
    (total.is_finite() && total >= 0.0 && total <= u64::MAX as f64).then_some(total as u64)
}

/// The pod's bandwidth limits (bits per second) in the `bandwidth`
/// capability's shape, or `None` without annotations. Limits must lie in
/// kubelet's accepted range, 1k to 1P.
pub fn bandwidth(annotations: &HashMap<String, String>) -> Result<Option<Value>, BadAnnotation> {
    let mut out = Map::new();
    for (key, rate, burst) in [
        (INGRESS_BANDWIDTH, "ingressRate", "ingressBurst"),
        (EGRESS_BANDWIDTH, "egressRate", "egressBurst"),
    ] {
        let Some(v) = annotations.get(key) else {
            continue;
        };
        let bad = |reason: &str| BadAnnotation {
            field: format!("config.annotations[{key:?}]"),
            reason: format!("{v:?} {reason}"),
        };
        let bits = parse_quantity(v).ok_or_else(|| bad("is not a quantity"))?;
        if !(1_000..=1_000_000_000_000_000).contains(&bits) {
            return Err(bad("must be between 1k and 1P bits per second"));
        }
        out.insert(rate.into(), json!(bits));
        // As containerd: no burst limit of its own (the largest the
        // bandwidth plugin takes).
        out.insert(burst.into(), json!(u32::MAX));
    }
    Ok((!out.is_empty()).then_some(Value::Object(out)))
}

/// What the pod offers the plugins.
pub fn capability_args(
    config: &proto::PodSandboxConfig,
    pod_cidrs: &[String],
) -> Result<Map<String, Value>, BadAnnotation> {
    let mut caps = Map::new();
    let ports: Vec<Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = match proto::Protocol::try_from(p.protocol) {
                Ok(proto::Protocol::Udp) => "udp",
                Ok(proto::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": protocol,
                "hostIP": p.host_ip,
            })
        })
        .collect();
    caps.insert("portMappings".into(), Value::Array(ports));
    if let Some(b) = bandwidth(&config.annotations)? {
        caps.insert("bandwidth".into(), b);
    }
    if let Some(d) = &config.dns_config {
        caps.insert(
            "dns".into(),
            json!({"servers": d.servers, "searches": d.searches, "options": d.options}),
        );
    }
    if !pod_cidrs.is_empty() {
        let ranges: Vec<Value> = pod_cidrs.iter().map(|c| json!([{ "subnet": c }])).collect();
        caps.insert("ipRanges".into(), Value::Array(ranges));
    }
    if let Some(l) = &config.linux {
        if !l.cgroup_parent.is_empty() {
            caps.insert("cgroupPath".into(), json!(l.cgroup_parent));
        }
    }
    caps.insert(
        "io.kubernetes.cri.pod-annotations".into(),
        json!(config.annotations),
    );
    Ok(caps)
}

/// `runtimeConfig` for one plugin: the capabilities it declares true.
pub fn runtime_config(plugin: &Map<String, Value>, args: &Map<String, Value>) -> Option<Value> {
    let declared = plugin.get("capabilities")?.as_object()?;
    let rc: Map<String, Value> = args
        .iter()
        .filter(|(k, _)| declared.get(*k).and_then(Value::as_bool) == Some(true))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!rc.is_empty()).then_some(Value::Object(rc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1Mi"), Some(1 << 20));
        assert_eq!(parse_quantity("1.5k"), Some(1500));
        assert_eq!(parse_quantity("2e6"), Some(2_000_000));
        assert_eq!(parse_quantity("123"), Some(123));
        for bad in ["", "M", "10X", "1.2.3", "-5M", "10 M"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn bandwidth_annotations() {
        let mut a = HashMap::new();
        assert_eq!(bandwidth(&a).unwrap(), None);
        a.insert(INGRESS_BANDWIDTH.to_string(), "10M".to_string());
        let b = bandwidth(&a).unwrap().unwrap();
        assert_eq!(b["ingressRate"], 10_000_000);
        assert!(b.get("egressRate").is_none());
        a.insert(EGRESS_BANDWIDTH.to_string(), "10".to_string());
        let e = bandwidth(&a).unwrap_err();
        assert!(e.field.contains(EGRESS_BANDWIDTH) && e.reason.contains("1k"));
        a.insert(EGRESS_BANDWIDTH.to_string(), "lots".to_string());
        assert!(bandwidth(&a).unwrap_err().reason.contains("quantity"));
    }

    #[test]
    fn plugins_see_only_what_they_declare() {
        let config = proto::PodSandboxConfig {
            port_mappings: vec![
                proto::PortMapping {
                    protocol: proto::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                },
                // No host port: not a mapping for portmap.
                proto::PortMapping {
                    container_port: 80,
                    ..Default::default()
                },
            ],
            dns_config: Some(proto::DnsConfig {
                servers: vec!["10.0.0.10".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let args = capability_args(&config, &["10.244.1.0/24".into()]).unwrap();
        assert_eq!(
            args["portMappings"],
            json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}])
        );
        assert_eq!(args["ipRanges"], json!([[{"subnet": "10.244.1.0/24"}]]));
        let plugin =
            json!({"type": "portmap", "capabilities": {"portMappings": true, "dns": false}});
        let rc = runtime_config(plugin.as_object().unwrap(), &args).unwrap();
        assert_eq!(rc.as_object().unwrap().len(), 1);
        assert!(rc.get("portMappings").is_some());
        let bare = json!({"type": "bridge"});
        assert_eq!(runtime_config(bare.as_object().unwrap(), &args), None);
    }
}
