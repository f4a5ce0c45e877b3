//! `ListMetricDescriptors` and `ListPodSandboxMetrics`: cAdvisor-named
//! metrics of the same samples.

use berth_core::cgroups::Stats;

use super::{u64v, PodSample, PodView};
use crate::proto;
use crate::runtime::netstats::IfaceCounters;

/// Labels of every container metric (kubelet adds pod, namespace and
/// container name from its own knowledge).
const CONTAINER_LABELS: [&str; 3] = ["id", "name", "image"];
/// Labels of the pod's network metrics.
const NETWORK_LABELS: [&str; 4] = ["id", "name", "image", "interface"];

struct Desc {
    name: &'static str,
    help: &'static str,
    kind: proto::MetricType,
    network: bool,
}

const fn counter(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        kind: proto::MetricType::Counter,
        network: false,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        kind: proto::MetricType::Gauge,
        network: false,
    }
}

const fn net(name: &'static str, help: &'static str) -> Desc {
    Desc {
        name,
        help,
        kind: proto::MetricType::Counter,
        network: true,
    }
}

/// The metrics berth serves, cAdvisor's names. CPU times are whole seconds:
/// the CRI value is an integer.
const METRICS: &[Desc] = &[
    counter(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed, in seconds.",
    ),
    counter(
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time, in seconds.",
    ),
    counter(
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time, in seconds.",
    ),
    counter(
        "container_cpu_cfs_periods_total",
        "Elapsed enforcement periods.",
    ),
    counter(
        "container_cpu_cfs_throttled_periods_total",
        "Throttled periods.",
    ),
    counter(
        "container_cpu_cfs_throttled_seconds_total",
        "Time throttled, in seconds.",
    ),
    gauge(
        "container_memory_usage_bytes",
        "Current memory usage, including cache.",
    ),
    gauge(
        "container_memory_working_set_bytes",
        "Current working set (usage minus inactive file).",
    ),
    gauge("container_memory_rss", "Anonymous memory (RSS)."),
    gauge("container_memory_cache", "Page cache."),
    gauge("container_memory_swap", "Swap usage."),
    counter(
        "container_memory_failcnt",
        "Times the memory limit was hit.",
    ),
    counter(
        "container_oom_events_total",
        "Processes killed by the OOM killer.",
    ),
    gauge(
        "container_spec_memory_limit_bytes",
        "The memory limit (0: none).",
    ),
    gauge("container_processes", "Number of processes."),
    counter(
        "container_fs_reads_bytes_total",
        "Bytes read from block devices.",
    ),
    counter(
        "container_fs_writes_bytes_total",
        "Bytes written to block devices.",
    ),
    counter("container_fs_reads_total", "Block device reads completed."),
    counter(
        "container_fs_writes_total",
        "Block device writes completed.",
    ),
    gauge(
        "container_fs_usage_bytes",
        "Bytes used by the writable layer.",
    ),
    gauge(
        "container_fs_inodes_total",
        "Inodes used by the writable layer.",
    ),
    net("container_network_receive_bytes_total", "Bytes received."),
    net("container_network_transmit_bytes_total", "Bytes sent."),
    net(
        "container_network_receive_packets_total",
        "Packets received.",
    ),
    net("container_network_transmit_packets_total", "Packets sent."),
    net("container_network_receive_errors_total", "Receive errors."),
    net("container_network_transmit_errors_total", "Send errors."),
    net(
        "container_network_receive_packets_dropped_total",
        "Received packets dropped.",
    ),
    net(
        "container_network_transmit_packets_dropped_total",
        "Sent packets dropped.",
    ),
];

/// `ListMetricDescriptors`.
pub(in crate::runtime) fn descriptors() -> Vec<proto::MetricDescriptor> {
    METRICS
        .iter()
        .map(|d| proto::MetricDescriptor {
            name: d.name.into(),
            help: d.help.into(),
            label_keys: if d.network {
                NETWORK_LABELS.iter().map(|s| s.to_string()).collect()
            } else {
                CONTAINER_LABELS.iter().map(|s| s.to_string()).collect()
            },
        })
        .collect()
}

fn container_value(name: &str, s: &Stats, writable: (u64, u64)) -> Option<u64> {
    const NS: u64 = 1_000_000_000;
    Some(match name {
        "container_cpu_usage_seconds_total" => s.cpu.usage_ns / NS,
        "container_cpu_user_seconds_total" => s.cpu.user_ns / NS,
        "container_cpu_system_seconds_total" => s.cpu.system_ns / NS,
        "container_cpu_cfs_periods_total" => s.cpu.periods,
        "container_cpu_cfs_throttled_periods_total" => s.cpu.throttled_periods,
        "container_cpu_cfs_throttled_seconds_total" => s.cpu.throttled_ns / NS,
        "container_memory_usage_bytes" => s.memory.usage,
        "container_memory_working_set_bytes" => s.memory.working_set,
        "container_memory_rss" => s.memory.rss,
        "container_memory_cache" => s.memory.cache,
        "container_memory_swap" => s.memory.swap,
        "container_memory_failcnt" => s.memory.failcnt,
        "container_oom_events_total" => s.memory.oom_kills,
        "container_spec_memory_limit_bytes" => s.memory.limit.unwrap_or(0),
        "container_processes" => s.pids.current,
        "container_fs_reads_bytes_total" => s.io.read_bytes,
        "container_fs_writes_bytes_total" => s.io.write_bytes,
        "container_fs_reads_total" => s.io.read_ops,
        "container_fs_writes_total" => s.io.write_ops,
        "container_fs_usage_bytes" => writable.0,
        "container_fs_inodes_total" => writable.1,
        _ => return None,
    })
}

fn net_value(name: &str, i: &IfaceCounters) -> Option<u64> {
    Some(match name {
        "container_network_receive_bytes_total" => i.rx_bytes,
        "container_network_transmit_bytes_total" => i.tx_bytes,
        "container_network_receive_packets_total" => i.rx_packets,
        "container_network_transmit_packets_total" => i.tx_packets,
        "container_network_receive_errors_total" => i.rx_errors,
        "container_network_transmit_errors_total" => i.tx_errors,
        "container_network_receive_packets_dropped_total" => i.rx_dropped,
        "container_network_transmit_packets_dropped_total" => i.tx_dropped,
        _ => return None,
    })
}

fn metric(d: &Desc, ts: i64, labels: Vec<String>, value: u64) -> proto::Metric {
    proto::Metric {
        name: d.name.into(),
        timestamp: ts,
        metric_type: d.kind as i32,
        label_values: labels,
        value: u64v(value),
    }
}

/// `ListPodSandboxMetrics` for one pod: network metrics on the pod (labelled
/// as cAdvisor labels the sandbox, name `POD`), the rest per container.
pub(in crate::runtime) fn pod_metrics(pod: &PodView, s: &PodSample) -> proto::PodSandboxMetrics {
    let mut metrics = Vec::new();
    for d in METRICS.iter().filter(|d| d.network) {
        for i in &s.interfaces {
            if let Some(v) = net_value(d.name, i) {
                let labels = vec![pod.id.clone(), "POD".into(), String::new(), i.name.clone()];
                metrics.push(metric(d, s.timestamp, labels, v));
            }
        }
    }
    let container_metrics = s
        .containers
        .iter()
        .map(|(v, cs)| {
            let labels = vec![
                v.id.clone(),
                v.config
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default(),
                v.config
                    .image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .unwrap_or_default(),
            ];
            proto::ContainerMetrics {
                container_id: v.id.clone(),
                metrics: METRICS
                    .iter()
                    .filter(|d| !d.network)
                    .filter_map(|d| {
                        container_value(d.name, &cs.cgroup, cs.writable)
                            .map(|val| metric(d, cs.timestamp, labels.clone(), val))
                    })
                    .collect(),
            }
        })
        .collect();
    proto::PodSandboxMetrics {
        pod_sandbox_id: pod.id.clone(),
        metrics,
        container_metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::stats::{ContainerSample, ContainerView};

    #[test]
    fn every_descriptor_has_a_value_source() {
        let s = Stats::default();
        let i = IfaceCounters::default();
        for d in METRICS {
            let v = if d.network {
                net_value(d.name, &i)
            } else {
                container_value(d.name, &s, (0, 0))
            };
            assert!(v.is_some(), "{} has no value", d.name);
        }
        assert_eq!(descriptors().len(), METRICS.len());
    }

    #[test]
    fn pod_metrics_carry_labels_in_descriptor_order() {
        let pod = PodView {
            id: "p".into(),
            config: Default::default(),
            cgroup_parent: String::new(),
            netns: None,
        };
        let view = ContainerView {
            id: "c".into(),
            dir: "/nonexistent".into(),
            config: proto::ContainerConfig {
                metadata: Some(proto::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(proto::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let mut cs = ContainerSample::default();
        cs.cgroup.memory.working_set = 42;
        let sample = PodSample {
            interfaces: vec![IfaceCounters {
                name: "eth0".into(),
                rx_bytes: 7,
                ..Default::default()
            }],
            containers: vec![(view, cs)],
            ..Default::default()
        };
        let m = pod_metrics(&pod, &sample);
        let rx = m
            .metrics
            .iter()
            .find(|m| m.name == "container_network_receive_bytes_total")
            .unwrap();
        assert_eq!(rx.label_values, ["p", "POD", "", "eth0"]);
        assert_eq!(rx.value.as_ref().unwrap().value, 7);
        let ws = m.container_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == "container_memory_working_set_bytes")
            .unwrap();
        assert_eq!(ws.label_values, ["c", "app", "busybox"]);
        assert_eq!(ws.value.as_ref().unwrap().value, 42);
        assert_eq!(ws.metric_type, proto::MetricType::Gauge as i32);
    }
}
