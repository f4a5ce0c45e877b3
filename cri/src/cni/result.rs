//! What berth reads from a CNI result: the pod's addresses.

use std::net::IpAddr;

use serde_json::Value;

/// The pod's IPs from a result (any version from 0.1.0 to 1.1.0): the
/// addresses on interfaces inside the pod (or with no interface given),
/// IPv4 first, each once.
pub fn pod_ips(result: &Value) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let addr = |s: &str| s.split('/').next().and_then(|a| a.parse::<IpAddr>().ok());
    if let Some(list) = result.get("ips").and_then(Value::as_array) {
        let ifaces = result.get("interfaces").and_then(Value::as_array);
        for ip in list {
            let in_pod = match (ip.get("interface").and_then(Value::as_u64), ifaces) {
                (Some(i), Some(ifaces)) => usize::try_from(i)
                    .ok()
                    .and_then(|i| ifaces.get(i))
                    .and_then(|iface| iface.get("sandbox"))
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty()),
                _ => true,
            };
            if let Some(a) = ip
                .get("address")
                .and_then(Value::as_str)
                .and_then(addr)
                .filter(|_| in_pod)
            {
                ips.push(a);
            }
        }
    } else {
        // 0.1.0 / 0.2.0: "ip4": {"ip": "10.1.0.2/24"}, "ip6": {...}.
        for k in ["ip4", "ip6"] {
            if let Some(a) = result
                .get(k)
                .and_then(|v| v.get("ip"))
                .and_then(Value::as_str)
                .and_then(addr)
            {
                ips.push(a);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    ips.retain(|a| seen.insert(*a));
    ips.sort_by_key(|a| a.is_ipv6());
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_inside_the_pod_ipv4_first() {
        let r = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0"},
                {"name": "veth1"},
                {"name": "eth0", "sandbox": "/run/berth/pods/x/ns/net"}
            ],
            "ips": [
                {"interface": 2, "address": "fd00::5/64"},
                {"interface": 0, "address": "10.9.0.1/24"},
                {"interface": 2, "address": "10.9.0.5/24", "gateway": "10.9.0.1"},
                {"address": "10.9.0.5/24"}
            ]
        });
        assert_eq!(
            pod_ips(&r),
            [
                "10.9.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        let old = serde_json::json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.2/16"}});
        assert_eq!(pod_ips(&old), ["10.1.0.2".parse::<IpAddr>().unwrap()]);
        assert!(pod_ips(&serde_json::json!({})).is_empty());
    }
}
