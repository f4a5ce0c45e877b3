//! The tasks of a restored container, checked against its security context
//! while they are still stopped (CRIU's `--leave-stopped`).

use std::os::fd::AsFd;

use super::{Container, ContainerError};
use crate::process::ProcessSpec;
use crate::security::ceiling::{Ceiling, TaskCreds};
use crate::security::user;

/// More tasks than this in one restored tree are not examined: refused.
const MAX_TASKS: usize = 1 << 16;

impl Container {
    /// Checks every task of the tree restored under `init` (its threads and
    /// all their descendants) against the ceiling of what `process` would
    /// get from a normal start of this container. Any excess, or a task that
    /// cannot be read, is an error; the caller kills the tree.
    pub(super) fn check_restored(
        &self,
        init: i32,
        process: &ProcessSpec,
    ) -> Result<(), ContainerError> {
        let config = &self.state.config;
        let refuse = |tid: i32, excess: String| ContainerError::RestoreRefused { tid, excess };
        // The user resolves against the restored rootfs, as the init of a
        // normal start resolves it against the container's /etc/passwd.
        let root_path = format!("/proc/{init}/root");
        let root = std::fs::File::open(&root_path)
            .map_err(|e| refuse(init, format!("an unreadable root ({root_path}: {e})")))?;
        let resolved = user::resolve(
            &process.user,
            &user::read_id_file(root.as_fd(), "/etc/passwd"),
            &user::read_id_file(root.as_fd(), "/etc/group"),
        )
        .map_err(|e| refuse(init, format!("a user that does not resolve ({e})")))?;
        let caps = process
            .capabilities
            .as_ref()
            .unwrap_or(&config.capabilities);
        let nnp = process
            .no_new_privileges
            .unwrap_or(config.no_new_privileges);
        let ceiling = Ceiling::new(caps, &resolved, nnp, config.seccomp.is_some());
        // In the pod's user namespace the tasks' ids (host ids in `status`)
        // are compared as the container knows them, through its maps.
        let maps = match super::checkpoint_userns::joined(config) {
            Some(_) => Some(
                super::checkpoint_userns::UserMaps::of_process(init)
                    .map_err(|e| refuse(init, format!("unreadable id maps ({e})")))?,
            ),
            None => None,
        };
        for (pid, tid) in tasks(init).map_err(|e| refuse(init, e))? {
            let path = format!("/proc/{pid}/task/{tid}/status");
            let creds = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| TaskCreds::parse(&s))
                .map(|c| match &maps {
                    Some(m) => m.creds_inside(c),
                    None => c,
                })
                .ok_or_else(|| refuse(tid, format!("credentials that cannot be read ({path})")))?;
            let excess = ceiling.excess(&creds);
            if !excess.is_empty() {
                return Err(refuse(tid, excess.join("; ")));
            }
        }
        Ok(())
    }
}

/// Every (pid, tid) of the tree under `init`: its threads, and recursively
/// the children of each thread.
fn tasks(init: i32) -> Result<Vec<(i32, i32)>, String> {
    let mut out = Vec::new();
    let mut queue = vec![init];
    while let Some(pid) = queue.pop() {
        let dir = format!("/proc/{pid}/task");
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| format!("a task list that cannot be read ({dir}: {e})"))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| format!("a task list that cannot be read ({dir}: {e})"))?;
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<i32>().ok())
            else {
                continue;
            };
            let children_path = format!("{dir}/{tid}/children");
            let children = std::fs::read_to_string(&children_path)
                .map_err(|e| format!("children that cannot be read ({children_path}: {e})"))?;
            queue.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
            out.push((pid, tid));
            if out.len() > MAX_TASKS {
                return Err(format!("more than {MAX_TASKS} tasks"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_of_this_process_has_its_threads_and_children() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = tasks(me).unwrap();
        assert!(found.contains(&(me, me)), "{found:?}");
        assert!(
            found.iter().any(|(p, _)| *p == child.id() as i32),
            "{found:?}"
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(tasks(i32::MAX).is_err());
    }
}
