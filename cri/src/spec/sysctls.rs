//! The pod's namespaced sysctls: what kubelet asks for, plus the two
//! defaults containerd 2.0 ships (`enable_unprivileged_ports`,
//! `enable_unprivileged_icmp`) for pods with a network namespace of their
//! own, so an image that binds port 80 as non-root, or pings, works as it
//! does on containerd 2. kubelet's values win; host-network pods get none
//! (they would change the node's). <https://github.com/containerd/containerd/blob/main/docs/cri/config.md>

use std::collections::BTreeMap;

/// `net.ipv4.ip_unprivileged_port_start`.
pub const UNPRIVILEGED_PORT_START: &str = "net.ipv4.ip_unprivileged_port_start";
/// `net.ipv4.ping_group_range`.
pub const PING_GROUP_RANGE: &str = "net.ipv4.ping_group_range";

/// Which node defaults apply to pods (berth's `[runtime]` config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodSysctlDefaults {
    /// Any user may bind ports below 1024 (`ip_unprivileged_port_start=0`).
    pub unprivileged_ports: bool,
    /// Any group may open ICMP echo sockets (`ping_group_range=0 2147483647`).
    pub unprivileged_icmp: bool,
}

impl Default for PodSysctlDefaults {
    /// Both on, as in containerd 2.0.
    fn default() -> Self {
        PodSysctlDefaults {
            unprivileged_ports: true,
            unprivileged_icmp: true,
        }
    }
}

/// The pod's sysctls: `requested` (kubelet's, validated) plus the defaults
/// that apply. `own_netns`: the pod is not on the host network.
/// `own_userns`: the pod has its own user namespace, where a group range
/// beyond the pod's gid map is refused by the kernel (EINVAL), so the ICMP
/// default is left out there, as containerd does.
pub fn pod_sysctls(
    requested: impl IntoIterator<Item = (String, String)>,
    defaults: PodSysctlDefaults,
    own_netns: bool,
    own_userns: bool,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = requested.into_iter().collect();
    if own_netns {
        if defaults.unprivileged_ports {
            out.entry(UNPRIVILEGED_PORT_START.into())
                .or_insert_with(|| "0".into());
        }
        if defaults.unprivileged_icmp && !own_userns {
            out.entry(PING_GROUP_RANGE.into())
                .or_insert_with(|| "0 2147483647".into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: PodSysctlDefaults = PodSysctlDefaults {
        unprivileged_ports: true,
        unprivileged_icmp: true,
    };

    #[test]
    fn a_pod_with_its_own_network_gets_both_defaults() {
        let s = pod_sysctls([], ON, true, false);
        assert_eq!(s[UNPRIVILEGED_PORT_START], "0");
        assert_eq!(s[PING_GROUP_RANGE], "0 2147483647");
    }

    #[test]
    fn kubelets_values_win() {
        let req = [
            (UNPRIVILEGED_PORT_START.to_string(), "1024".to_string()),
            ("net.core.somaxconn".to_string(), "1000".to_string()),
        ];
        let s = pod_sysctls(req, ON, true, false);
        assert_eq!(s[UNPRIVILEGED_PORT_START], "1024");
        assert_eq!(s["net.core.somaxconn"], "1000");
        assert_eq!(s[PING_GROUP_RANGE], "0 2147483647");
    }

    #[test]
    fn none_on_the_host_network_or_when_turned_off() {
        assert!(pod_sysctls([], ON, false, false).is_empty());
        let off = PodSysctlDefaults {
            unprivileged_ports: false,
            unprivileged_icmp: false,
        };
        assert!(pod_sysctls([], off, true, false).is_empty());
    }

    #[test]
    fn no_icmp_range_in_a_user_namespace() {
        let s = pod_sysctls([], ON, true, true);
        assert_eq!(s[UNPRIVILEGED_PORT_START], "0");
        assert!(!s.contains_key(PING_GROUP_RANGE));
    }
}
