//! Start-up recovery of what a daemon that died mid-request made but never
//! recorded: a container's record and a pod's are written last, so a
//! container or pod directory without one is the remains of a
//! CreateContainer or RunPodSandbox cut short. Its processes are killed,
//! its runtime state, cgroup, writable layer, image lease, pinned
//! namespaces and files go (its network is released with the other
//! unrecorded pods' by `clean_up_networks`). Runs before the daemon serves.

use std::path::Path;

use super::container::Containers;
use super::sandbox::Sandboxes;
use crate::image::ImageStore;

/// Takes apart every unrecorded container and pod; how many of each.
pub(super) fn reap_unrecorded(
    containers: &Containers,
    sandboxes: &Sandboxes,
    images: &ImageStore,
) -> (usize, usize) {
    let known = |ids: Vec<crate::store::ObjectId>| -> std::collections::HashSet<String> {
        ids.iter().map(ToString::to_string).collect()
    };
    let recorded = known(containers.registry.ids());
    let mut reaped_containers = std::collections::BTreeSet::new();
    // A container's volatile dir comes first (CreateContainer makes it
    // before anything else), its writable layer second: either may be the
    // only remains.
    let layer_dirs = images.root().join("containers");
    for dir in [containers.state_dir.as_path(), layer_dirs.as_path()] {
        for id in subdirs(dir) {
            if recorded.contains(&id) || reaped_containers.contains(&id) {
                continue;
            }
            reap_container(containers, images, &id);
            reaped_containers.insert(id);
        }
    }
    let pods = known(sandboxes.registry.ids());
    let mut reaped_pods = 0;
    for id in subdirs(sandboxes.state_dir()) {
        if !pods.contains(&id) {
            reap_pod(&sandboxes.state_dir().join(&id));
            tracing::warn!(pod = %id, "removed a pod a daemon crash left without a record");
            reaped_pods += 1;
        }
    }
    (reaped_containers.len(), reaped_pods)
}

/// The names of `dir`'s subdirectories that are object ids.
fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

fn reap_container(containers: &Containers, images: &ImageStore, id: &str) {
    // The init (and so its monitor, which then exits), the cgroup and the
    // runtime state.
    super::container_create::kill_and_destroy_id(containers, id);
    if let Ok(cid) = berth_core::ContainerId::new(id) {
        if let Err(e) = images.remove_container(&cid) {
            tracing::warn!(id, error = %e, "removing an unrecorded container's writable layer");
        }
    }
    let _ = std::fs::remove_dir_all(containers.state_dir.join(id));
    tracing::warn!(
        id,
        "removed a container a daemon crash left without a record"
    );
}

fn reap_pod(dir: &Path) {
    let init = std::fs::read_to_string(dir.join(super::sandbox_run::POD_INIT_FILE))
        .ok()
        .and_then(|t| {
            let mut f = t.split_whitespace().map(str::parse::<u64>);
            match (f.next(), f.next()) {
                (Some(Ok(pid)), Some(Ok(start))) => Some((i32::try_from(pid).ok()?, start)),
                _ => None,
            }
        });
    if let Some(init) = init {
        super::sandbox_stop::kill_pod_init(init);
    }
    let _ = berth_core::pin::unpin(&dir.join("ns"));
    let _ = std::fs::remove_dir_all(dir);
}
