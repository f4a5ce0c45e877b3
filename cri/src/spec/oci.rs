//! A container's runtime-core [`Config`] and [`ProcessSpec`] rendered as an
//! OCI runtime spec (JSON), for those who read one: `crictl inspect`'s
//! `.info.runtimeSpec` (what containerd and CRI-O show) and a checkpoint's
//! `spec.dump`. It describes what berth applies; nothing reads it back.
//! <https://github.com/opencontainers/runtime-spec/blob/main/config.md>

use berth_core::cgroups::Resources;
use berth_core::config::MountKind;
use berth_core::process::ProcessSpec;
use berth_core::security::user::IdOrName;
use berth_core::Config;
use serde_json::{json, Map, Value};

/// The OCI runtime spec version the rendering follows.
pub const OCI_VERSION: &str = "1.2.0";

/// The spec of a container running `process` under `config`, with
/// `annotations` (the `io.kubernetes.*` ones included by the caller).
pub fn runtime_spec(
    config: &Config,
    process: &ProcessSpec,
    annotations: Map<String, Value>,
) -> Value {
    let c = config;
    let p = process;
    let caps = p.capabilities.as_ref().unwrap_or(&c.capabilities);
    let mut user = Map::new();
    match &p.user.user {
        IdOrName::Id(uid) => {
            user.insert("uid".into(), (*uid).into());
        }
        IdOrName::Name(name) => {
            user.insert("username".into(), name.clone().into());
        }
    }
    if let Some(IdOrName::Id(gid)) = &p.user.group {
        user.insert("gid".into(), (*gid).into());
    }
    if !p.user.additional_gids.is_empty() {
        user.insert("additionalGids".into(), json!(p.user.additional_gids));
    }
    let mut process = json!({
        "terminal": p.terminal.is_some(),
        "user": user,
        "args": p.args,
        "env": p.env.iter().map(|e| e.to_string_lossy()).collect::<Vec<_>>(),
        "cwd": p.cwd,
        "capabilities": {
            "bounding": caps.bounding,
            "effective": caps.effective,
            "permitted": caps.permitted,
            "inheritable": caps.inheritable,
            "ambient": caps.ambient,
        },
        "rlimits": c.rlimits,
        "noNewPrivileges": p.no_new_privileges.unwrap_or(c.no_new_privileges),
    });
    if let (Some(adj), Some(obj)) = (c.oom_score_adj, process.as_object_mut()) {
        obj.insert("oomScoreAdj".into(), adj.into());
    }
    let mut linux = json!({
        "namespaces": namespaces(c),
        "maskedPaths": c.masked_paths,
        "readonlyPaths": c.readonly_paths,
        "devices": c.devices.iter().map(|d| json!({
            "path": d.path,
            "type": match d.kind {
                berth_core::config::DeviceKind::Char => "c",
                berth_core::config::DeviceKind::Block => "b",
                _ => "p",
            },
            "major": d.major,
            "minor": d.minor,
            "fileMode": d.file_mode,
            "uid": d.uid,
            "gid": d.gid,
        })).collect::<Vec<_>>(),
        "sysctl": c.sysctls,
        "rootfsPropagation": c.rootfs_propagation,
    });
    if let Some(obj) = linux.as_object_mut() {
        if let Some(g) = &c.cgroup {
            obj.insert("cgroupsPath".into(), json!(g.path));
            obj.insert("resources".into(), resources(&g.resources));
        }
        let ids = |m: &[berth_core::config::IdMap]| {
            m.iter()
                .map(
                    |m| json!({"containerID": m.container_id, "hostID": m.host_id, "size": m.size}),
                )
                .collect::<Vec<_>>()
        };
        if !c.uid_mappings.is_empty() {
            obj.insert("uidMappings".into(), json!(ids(&c.uid_mappings)));
            obj.insert("gidMappings".into(), json!(ids(&c.gid_mappings)));
        }
        if let Some(s) = &c.seccomp {
            obj.insert("seccomp".into(), json!(s));
        }
    }
    json!({
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": c.rootfs, "readonly": c.readonly_rootfs},
        "hostname": c.hostname,
        "mounts": mounts(c),
        "annotations": annotations,
        "linux": linux,
    })
}

fn namespaces(c: &Config) -> Vec<Value> {
    c.namespaces
        .iter()
        .map(|n| {
            let kind = match n.kind.proc_name() {
                "net" => "network",
                "mnt" => "mount",
                other => other,
            };
            match &n.path {
                Some(path) => json!({"type": kind, "path": path}),
                None => json!({"type": kind}),
            }
        })
        .collect()
}

fn mounts(c: &Config) -> Vec<Value> {
    c.mounts
        .iter()
        .map(|m| {
            let (kind, mut options) = match &m.kind {
                MountKind::Bind { recursive } => (
                    "bind".to_string(),
                    vec![if *recursive { "rbind" } else { "bind" }.to_string()],
                ),
                MountKind::Fs { fstype } => (fstype.clone(), Vec::new()),
                MountKind::Overlay { lowerdirs } => {
                    let lower: Vec<String> =
                        lowerdirs.iter().map(|p| p.display().to_string()).collect();
                    (
                        "overlay".to_string(),
                        vec![format!("lowerdir={}", lower.join(":"))],
                    )
                }
            };
            options.extend(
                m.flags
                    .iter()
                    .filter_map(|f| serde_json::to_value(f).ok()?.as_str().map(String::from)),
            );
            if !m.data.is_empty() {
                options.extend(m.data.split(',').map(String::from));
            }
            json!({
                "destination": m.destination,
                "type": kind,
                "source": m.source.clone().unwrap_or_else(|| kind.clone().into()),
                "options": options,
            })
        })
        .collect()
}

/// `linux.resources` in the OCI spec's shape.
fn resources(r: &Resources) -> Value {
    let mut out = json!({
        "memory": {
            "limit": r.memory_limit,
            "reservation": r.memory_reservation,
            "swap": r.memory_swap,
        },
        "cpu": {
            "shares": r.cpu_shares,
            "quota": r.cpu_quota,
            "period": r.cpu_period,
            "cpus": r.cpuset_cpus,
            "mems": r.cpuset_mems,
        },
        "pids": {"limit": r.pids_limit},
        "hugepageLimits": r.hugepage_limits.iter()
            .map(|(size, limit)| json!({"pageSize": size, "limit": limit}))
            .collect::<Vec<_>>(),
        "unified": r.unified,
    });
    if let Some(obj) = out.as_object_mut() {
        if let Some(w) = r.blkio_weight {
            obj.insert("blockIO".into(), json!({"weight": w}));
        }
        if let Some(d) = &r.devices {
            obj.insert("devices".into(), json!(d));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fixture;
    use super::*;

    #[test]
    fn the_spec_shows_what_berth_applies() {
        let mut f = Fixture::new();
        f.sc().run_as_user = Some(crate::proto::Int64Value { value: 1000 });
        let s = f.spec();
        let v = runtime_spec(&s.config, &s.process, Map::new());
        assert_eq!(v["ociVersion"], OCI_VERSION);
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["args"][0], "/docker-entrypoint.sh");
        assert!(v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .contains(&json!("CAP_CHOWN")));
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"mount") && ns.contains(&"network"), "{ns:?}");
        assert!(v["linux"]["cgroupsPath"].is_string());
        assert!(v["linux"]["resources"]["devices"].is_array());
        assert!(v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/proc" && m["type"] == "proc"));
    }
}
