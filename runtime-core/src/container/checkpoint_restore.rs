//! Restoring a checkpoint into a created container: CRIU's restore run in
//! the container's cgroup and a private mount namespace holding its rootfs,
//! with the namespaces, fds and mounts [`super::checkpoint`] describes.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;

use super::checkpoint::{
    cstring, images_join_pid_ns, CriuOptions, RestoreStdio, NET_KEY, PID_KEY, RESTORE_LOG,
};
use super::checkpoint_userns::{self as userns, images_user_maps};
use super::criu::{cgroup_root_args, common_args, criu_command, run_criu};
use super::{Container, ContainerError};
use crate::config::{MountKind, NamespaceKind};
use crate::process::{ProcessHandle, ProcessSpec};

impl Container {
    /// Restores a checkpoint written by [`Container::checkpoint`] into this
    /// container, which must be created and never started: its config gives
    /// the rootfs (mounted anew), the namespaces to rejoin, the cgroup and
    /// the sources of the external mounts. `stdio` is what the init's fds
    /// 0, 1 and 2 become: new pipe ends, or a new terminal (as at dump
    /// time), whose master is then the handle's console.
    ///
    /// The restored init is a child of the caller, stopped: the container
    /// is [`Status::Created`] until [`Container::release`] lets it go on.
    ///
    /// Before this returns, each restored task is checked against the ceiling of what `process`
    /// (the requested process: user, capabilities, `no_new_privs`) and the
    /// container's config (seccomp) would allow a normal start. A task
    /// holding more is killed with the whole tree, and the restore fails
    /// with [`ContainerError::RestoreRefused`]: the checkpoint images, not
    /// berth, chose its credentials.
    pub fn restore(
        &mut self,
        opts: &CriuOptions,
        stdio: RestoreStdio,
        process: &ProcessSpec,
    ) -> Result<ProcessHandle, ContainerError> {
        if self.state.init.is_some() {
            return Err(ContainerError::AlreadyStarted(self.state.id.clone()));
        }
        self.check_checkpointable()?;
        self.check_pid_shape(&opts.images_dir)?;
        // The pod's root (host ids) when the images hold a user namespace.
        let root = images_user_maps(&opts.images_dir)?
            .map(|m| m.root())
            .transpose()?;
        self.check_user_shape(root.is_some())?;
        let wiring = super::checkpoint_stdio::wiring(&opts.images_dir, stdio)?;
        if let (Some(ids), Some(_)) = (root, &wiring.console) {
            userns::give_terminal(&wiring.inherit, ids)?;
        }
        std::fs::create_dir_all(&opts.work_dir).map_err(|source| ContainerError::StateIo {
            path: opts.work_dir.clone(),
            source,
        })?;
        let cgroup = self.create_cgroup()?;
        let tree = self.restore_tree(opts, wiring, cgroup.as_ref(), root);
        userns::remove_staging(&opts.work_dir);
        let res = tree.and_then(|handle| match self.check_restored(handle.pid(), process) {
            Ok(()) => Ok(handle),
            Err(e) => {
                // SIGKILL ends stopped tasks too; the init is our child.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(handle.pid()),
                    nix::sys::signal::SIGKILL,
                );
                let _ = handle.wait();
                Err(e)
            }
        });
        if res.is_err() {
            if let Some(cg) = &cgroup {
                cg.kill_all();
                let _ = cg.remove();
            }
            self.state.cgroup = None;
            self.state.init = None;
            let _ = self.save();
        }
        res
    }

    fn restore_tree(
        &mut self,
        opts: &CriuOptions,
        wiring: super::checkpoint_stdio::Wiring,
        cgroup: Option<&crate::cgroups::Cgroup>,
        root: Option<(u32, u32)>,
    ) -> Result<ProcessHandle, ContainerError> {
        let config = self.state.config.clone();
        let pidfile = opts.work_dir.join("restore.pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut args: Vec<String> = vec![
            "restore".into(),
            "--log-file".into(),
            RESTORE_LOG.into(),
            "-v4".into(),
            "--root".into(),
            config.rootfs.display().to_string(),
            "--restore-detached".into(),
            "--restore-sibling".into(),
            "--leave-stopped".into(),
            "--manage-cgroups=soft".into(),
            "--pidfile".into(),
            pidfile.display().to_string(),
        ];
        args.extend(common_args(opts));
        args.extend(cgroup_root_args(cgroup));
        args.extend(wiring.args);
        // Fds handed to CRIU: moved to fixed numbers in the child.
        let mut inherit: Vec<(OwnedFd, String)> = wiring.inherit;
        for (kind, key) in [
            (NamespaceKind::Network, NET_KEY),
            (NamespaceKind::Pid, PID_KEY),
        ] {
            let Some(ns) = config.namespace(kind).and_then(|n| n.path.as_ref()) else {
                continue;
            };
            let f = std::fs::File::open(ns).map_err(|source| ContainerError::StateIo {
                path: ns.clone(),
                source,
            })?;
            inherit.push((OwnedFd::from(f), key.to_string()));
        }
        const FIRST_FD: RawFd = 10;
        for (i, (_, key)) in inherit.iter().enumerate() {
            args.push("--inherit-fd".into());
            args.push(format!("fd[{}]:{key}", FIRST_FD + i as RawFd));
        }
        // In the pod's user namespace: joined, not created; its files
        // idmapped as a start would.
        let trees = match userns::joined(&config) {
            Some(_)
                if !opts
                    .joins_userns
                    .unwrap_or_else(|| super::criu::has_feature(opts, userns::CRIU_FEATURE)) =>
            {
                return Err(ContainerError::Unsupported(format!(
                    "restore into a pod's user namespace: {} lacks berth's join-userns patch \
                     (`criu check --feature {}` fails; scripts/install-criu.sh builds a criu \
                     with it)",
                    opts.criu.display(),
                    userns::CRIU_FEATURE
                )))
            }
            Some(ns) => {
                args.push("--join-ns".into());
                args.push(format!("user:{}", ns.display()));
                userns::trees(&config, ns, &opts.work_dir)?
            }
            None => userns::Trees::default(),
        };
        for m in &config.mounts {
            if let (MountKind::Bind { .. }, Some(src)) = (&m.kind, &m.source) {
                let src = trees
                    .staged
                    .iter()
                    .find(|(dest, _)| *dest == m.destination)
                    .map_or(src, |(_, at)| at);
                args.push("--external".into());
                args.push(format!(
                    "mnt[{}]:{}",
                    m.destination.display(),
                    src.display()
                ));
            }
        }
        for key in userns::device_keys(&config) {
            args.push("--external".into());
            args.push(format!("mnt[{key}]:{key}"));
        }
        for p in &config.masked_paths {
            args.push("--external".into());
            args.push(format!("mnt[{}]:/dev/null", p.display()));
        }

        // Everything the child needs, prepared before the fork.
        let join = self.joined_ipc_uts()?;
        let procs: Vec<OwnedFd> = match cgroup {
            Some(cg) => cg
                .dirs
                .iter()
                .map(|d| {
                    let p = d.join("cgroup.procs");
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .map(OwnedFd::from)
                        .map_err(|source| ContainerError::StateIo { path: p, source })
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let rootfs = cstring(&config.rootfs)?;
        // Layers past a page of plain paths are opened here and named by
        // fd: the child inherits them (close-on-exec, CRIU does not).
        let overlay = match &config.overlay {
            Some(o) => Some(o.prepare()?),
            None => None,
        };
        let has_rootfs_tree = trees.rootfs;
        let mut cmd = criu_command(opts, &args);
        let ns_fds: Vec<(RawFd, libc::c_int)> =
            join.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect();
        let proc_fds: Vec<RawFd> = procs.iter().map(|f| f.as_raw_fd()).collect();
        let inherit_fds: Vec<RawFd> = inherit.iter().map(|(f, _)| f.as_raw_fd()).collect();
        let onto: Vec<(CString, RawFd)> = trees
            .onto
            .iter()
            .map(|(dir, tree)| (dir.clone(), tree.as_raw_fd()))
            .collect();
        // SAFETY: runs in the forked child before exec; only raw syscalls on
        // fds and C strings prepared before the fork (no allocation, no
        // locks). The mount namespace it makes is CRIU's own, private: the
        // rootfs mounted there is seen by nobody else and goes with it.
        unsafe {
            cmd.pre_exec(move || {
                let ok = |r: libc::c_int| {
                    if r < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                for (fd, t) in &ns_fds {
                    ok(libc::setns(*fd, *t))?;
                }
                // Into the container's cgroup: "0" is the writer itself.
                for fd in &proc_fds {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                ok(libc::unshare(libc::CLONE_NEWNS))?;
                ok(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                // Idmapped trees onto their directories (this namespace only).
                for (dir, tree) in &onto {
                    let at = libc::open(dir.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                    ok(at)?;
                    let moved = crate::sys::move_mount_onto(
                        std::os::fd::BorrowedFd::borrow_raw(*tree),
                        std::os::fd::BorrowedFd::borrow_raw(at),
                    );
                    libc::close(at);
                    moved.map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
                }
                // The overlay's creator is the pod's root, as when its init
                // mounts it: what overlayfs creates through the idmapped
                // upper layer (copy-ups, its work dir) needs an fsuid that
                // maps there. setfsuid drops the file capabilities from the
                // effective set; they are raised again for the mount, so
                // its creator may do what the init's may in its namespace.
                if let Some((uid, gid)) = root {
                    libc::setfsgid(gid);
                    libc::setfsuid(uid);
                    let (_, permitted, inheritable) = crate::sys::capget()
                        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
                    crate::sys::capset(permitted, permitted, inheritable)
                        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
                }
                let mounted = match &overlay {
                    Some(o) => o
                        .mount(&rootfs, 0)
                        .map_err(|f| std::io::Error::from_raw_os_error(f.errno as i32)),
                    // An idmapped plain rootfs is a mount already.
                    None if has_rootfs_tree => Ok(()),
                    None => ok(libc::mount(
                        rootfs.as_ptr(),
                        rootfs.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    )),
                };
                if root.is_some() {
                    // Back to root: the file capabilities return with it.
                    libc::setfsuid(0);
                    libc::setfsgid(0);
                }
                mounted?;
                // Fds for --inherit-fd: first out of the way (above any
                // target number), then onto their numbers, inheritable.
                let mut high = [0 as RawFd; 16];
                for (i, fd) in inherit_fds.iter().enumerate().take(high.len()) {
                    let h = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                    ok(h)?;
                    high[i] = h;
                }
                for (i, h) in high.iter().take(inherit_fds.len()).enumerate() {
                    ok(libc::dup2(*h, FIRST_FD + i as RawFd))?;
                }
                Ok(())
            });
        }
        run_criu(cmd, opts, RESTORE_LOG, "restore")?;
        drop((join, procs, inherit, trees));

        let text = std::fs::read_to_string(&pidfile).map_err(|source| ContainerError::StateIo {
            path: pidfile.clone(),
            source,
        })?;
        let pid: i32 = text.trim().parse().map_err(|_| {
            ContainerError::Checkpoint(format!("{}: not a pid: {text:?}", pidfile.display()))
        })?;
        // A child of ours (`--restore-sibling`), not reaped yet.
        self.record_init(pid, wiring.console, true)
    }

    /// Refuses images whose pid namespace shape is not this container's: a
    /// tree dumped with its own pid namespace restores only into a new one,
    /// a tree of a joined (shared) one only into a joined one — CRIU would
    /// otherwise make a pid namespace the config does not have, or find no
    /// namespace for the key.
    fn check_pid_shape(&self, images: &Path) -> Result<(), ContainerError> {
        let joins = !self.state.config.creates(NamespaceKind::Pid);
        let dumped_joined = images_join_pid_ns(images)?;
        if joins == dumped_joined {
            return Ok(());
        }
        let (was, is) = if dumped_joined {
            ("shared a pid namespace", "has its own")
        } else {
            ("had its own pid namespace", "shares one")
        };
        Err(ContainerError::Unsupported(format!(
            "restore of a checkpoint whose container {was} into a container that {is}"
        )))
    }

    /// Refuses images whose user namespace shape is not this container's:
    /// `dumped` in one only into a joined one (CRIU checks its maps too),
    /// and without one only into none.
    fn check_user_shape(&self, dumped: bool) -> Result<(), ContainerError> {
        let joins = userns::joined(&self.state.config).is_some();
        match (dumped, joins) {
            (true, false) => Err(ContainerError::Unsupported(
                "restore of a checkpoint of a container in a user namespace into one without \
                 its pod's user namespace"
                    .into(),
            )),
            (false, true) => Err(ContainerError::Unsupported(
                "restore of a checkpoint of a container without a user namespace into one in \
                 a user namespace"
                    .into(),
            )),
            _ => Ok(()),
        }
    }
}
