//! Stage one of the init: namespaces, then `clone` into them.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{setresgid, setresuid, Gid, Uid};

use super::setup;
use crate::config::NamespaceKind;
use crate::process::channel::{Bootstrap, Channel, FromInit, InitFailure, ToInit, INIT_SOCKET_FD};
use crate::sys::{clone_parent, CloneResult};

fn fail(step: &str, e: impl std::fmt::Display) -> InitFailure {
    InitFailure::at(step, e)
}

/// Entry point; returns the exit code of the bootstrap process.
pub(super) fn main() -> i32 {
    // Not ptrace-able or dumpable by the container's processes until execve
    // (CVE-2016-9962 class); execve restores dumpability.
    if crate::sys::set_dumpable(false).is_err() {
        return 3;
    }
    // Learn the kernel's capability range now, before any namespace or root
    // change could put a container's files in the way.
    let _ = crate::sys::cap_last_cap();
    // SAFETY: the runtime placed the bootstrap socket at this fd before
    // executing us (see process::spawn); nothing else in this fresh process
    // owns it.
    let mut ch = Channel::from_fd(unsafe { OwnedFd::from_raw_fd(INIT_SOCKET_FD) });
    let (msg, fds) = match ch.recv::<ToInit>() {
        Ok(m) => m,
        Err(_) => return 2,
    };
    let ToInit::Bootstrap(b) = msg else {
        let _ = ch.send(
            &FromInit::Error(fail("bootstrap", "expected a bootstrap message")),
            &[],
        );
        return 2;
    };
    match stage_one(&mut ch, *b, fds) {
        Ok(()) => 0,
        Err(f) => {
            let _ = ch.send(&FromInit::Error(f), &[]);
            1
        }
    }
}

fn stage_one(ch: &mut Channel, b: Bootstrap, fds: Vec<OwnedFd>) -> Result<(), InitFailure> {
    // oom_score_adj is set here, through the runtime's own /proc and before
    // any namespace is joined, and inherited by the container's process: a
    // container cannot redirect the write (CVE-2025-52881 class).
    let config = match &b.task {
        crate::process::channel::Task::Init { config }
        | crate::process::channel::Task::Exec { config } => config,
    };
    if let Some(adj) = config.oom_score_adj {
        crate::sys::write_proc_file("/proc/self/oom_score_adj", &adj.to_string()).map_err(|e| {
            let hint = if adj < 0 {
                " (negative values need CAP_SYS_RESOURCE)"
            } else {
                ""
            };
            fail("set oom_score_adj", format!("{e}{hint}"))
        })?;
    }
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut take = |i: usize| fds.get_mut(i).and_then(Option::take);
    let mut joins = Vec::new();
    for kind in NamespaceKind::JOIN_ORDER {
        if let Some(&i) = b.join.get(&kind) {
            let fd =
                take(i).ok_or_else(|| fail("bootstrap", format!("missing fd for {kind:?}")))?;
            joins.push((kind, fd));
        }
    }
    let listener = match b.listener {
        Some(i) => Some(take(i).ok_or_else(|| fail("bootstrap", "missing start listener fd"))?),
        None => None,
    };
    for (kind, fd) in &joins {
        setns(fd.as_fd(), CloneFlags::from_bits_retain(kind.clone_flag()))
            .map_err(|e| fail(&format!("join the {kind:?} namespace"), e))?;
        if *kind == NamespaceKind::User {
            become_root_in_userns()?;
        }
    }
    drop(joins);
    let mut idmapped = crate::rootfs::Idmapped::default();
    if b.new_user_ns || b.idmap_in_joined_userns {
        let ask = if b.new_user_ns {
            unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| fail("create the user namespace", e))?;
            FromInit::NeedIdMaps
        } else {
            FromInit::NeedIdTrees
        };
        ch.send(&ask, &[]).map_err(|e| fail("ask for id maps", e))?;
        match ch.recv::<ToInit>() {
            Ok((ToInit::IdMapsWritten(trees), mut tree_fds)) => {
                while tree_fds.len() < trees.fds {
                    match ch.recv::<ToInit>() {
                        Ok((ToInit::MoreFds, more)) if !more.is_empty() => tree_fds.extend(more),
                        Ok(_) => return Err(fail("wait for id maps", "expected more tree fds")),
                        Err(e) => return Err(fail("wait for id maps", e)),
                    }
                }
                let mut tree_fds: Vec<Option<OwnedFd>> = tree_fds.into_iter().map(Some).collect();
                let mut get = |i: usize| {
                    tree_fds
                        .get_mut(i)
                        .and_then(Option::take)
                        .ok_or_else(|| fail("wait for id maps", "missing idmapped tree fd"))
                };
                if let Some(i) = trees.rootfs {
                    idmapped.rootfs = Some(get(i)?);
                }
                for (m, i) in trees.mounts {
                    idmapped.mounts.insert(m, get(i)?);
                }
                for (path, i) in trees.layers {
                    idmapped.layers.push((path, get(i)?));
                }
            }
            Ok(_) => return Err(fail("wait for id maps", "unexpected message")),
            Err(e) => return Err(fail("wait for id maps", e)),
        }
        become_root_in_userns()?;
    }
    match clone_parent(b.clone_flags).map_err(|e| fail("clone the container process", e))? {
        CloneResult::Parent(pid) => {
            ch.send(&FromInit::Child { pid }, &[])
                .map_err(|e| fail("report the child pid", e))?;
            Ok(())
        }
        CloneResult::Child => {
            let code = match setup::stage_two(ch, &b, listener, idmapped) {
                Ok(never) => match never {},
                Err(f) => {
                    let _ = ch.send(&FromInit::Error(f), &[]);
                    1
                }
            };
            std::process::exit(code)
        }
    }
}

fn become_root_in_userns() -> Result<(), InitFailure> {
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(|e| fail("setresgid 0 in the user namespace", e))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(|e| fail("setresuid 0 in the user namespace", e))
}
