//! Setting a shim's container up and tearing it down: the bundle and its
//! rootfs, the shim's `start` and `delete` commands, and clean-up after a
//! shim or monitor that is gone.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use berth_core::Config;
use containerd_shim_protos::api;
use containerd_shim_protos::{Client, TaskClient};

use super::{ctx, io, ShimError, ShimRuntime, NAMESPACE};
use crate::monitor::oci::{bundle, cgroups_path, OciError};

/// The bundle of container `id` whose monitor's directory is `dir`:
/// `<dir>/<id>`, named by the id as containerd names its bundles — the
/// shim's `delete` command finds the bundle as `../<id>` of its working
/// directory.
pub(super) fn bundle_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join(id)
}

/// `process.user` in numbers, from the rootfs's own files.
pub(super) fn resolve_user(
    bundle: &Path,
    p: &berth_core::process::ProcessSpec,
) -> Result<berth_core::security::user::ResolvedUser, ShimError> {
    let rootfs = bundle.join("rootfs");
    let root = std::fs::File::open(&rootfs).map_err(io(format!("open {}", rootfs.display())))?;
    berth_core::security::user::resolve_in_root(&p.user, root.as_fd())
        .map_err(|e| ShimError::Setup(OciError::User(e)))
}

/// The bundle's `config.json`: `config` with the rootfs at
/// `<bundle>/rootfs`, where it is mounted.
pub(super) fn write_config(
    config: &Config,
    bundle: &Path,
    process: &berth_core::process::ProcessSpec,
) -> Result<(), ShimError> {
    let mut cfg = config.clone();
    cfg.rootfs = bundle.join("rootfs");
    cfg.overlay = None;
    let user = resolve_user(bundle, process)?;
    let spec = bundle::spec(&cfg, process, &user, cgroups_path(&cfg).as_deref())
        .map_err(OciError::from)?;
    let data = serde_json::to_vec(&spec).map_err(|e| io("encode config.json")(e.into()))?;
    let file = bundle.join("config.json");
    crate::monitor::write_private(&file, &data).map_err(io(format!("write {}", file.display())))
}

/// The rootfs at `target` on the host: the overlay, or a bind of the
/// config's directory.
pub(super) fn mount_rootfs(config: &Config, target: &Path) -> Result<(), ShimError> {
    match &config.overlay {
        Some(_) => Ok(crate::monitor::oci::mount_overlay(config, target)?),
        None => nix::mount::mount(
            Some(&config.rootfs),
            target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| io(format!("bind the rootfs on {}", target.display()))(e.into())),
    }
}

/// Runs the shim's `start` in the bundle; returns the address it prints.
/// Its log FIFO is copied to `<dir>/shim.log` by a thread.
pub(super) fn start_shim(
    rt: &ShimRuntime,
    id: &str,
    bundle: &Path,
    dir: &Path,
) -> Result<String, ShimError> {
    let fail = |message: String| ShimError::Start {
        shim: rt.path.display().to_string(),
        message,
    };
    let log = bundle.join("log");
    nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| io(format!("create {}", log.display()))(e.into()))?;
    // Opened read-write: never blocks, and never reads end-of-file while
    // the shim restarts its writer.
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&log)
        .map_err(io(format!("open {}", log.display())))?;
    let out_path = dir.join("shim.log");
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .map_err(io(format!("open {}", out_path.display())))?;
    std::thread::Builder::new()
        .name("shim-log".into())
        .spawn(move || {
            let mut fifo = fifo;
            let _ = std::io::copy(&mut fifo, &mut out);
        })
        .map_err(io("start the shim log copier"))?;
    let output = shim_command(&rt.path, id, bundle, "start")
        .output()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let address = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || address.is_empty() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(fail(format!("{}: {}", output.status, err.trim())));
    }
    std::fs::write(bundle.join("address"), &address).map_err(io("write the shim's address"))?;
    Ok(address)
}

/// `<shim> -namespace berth -address <bundle>/events.sock -publish-binary
/// /bin/true -id <id> <action>` in the bundle, as containerd runs it.
pub(super) fn shim_command(
    shim: &Path,
    id: &str,
    bundle: &Path,
    action: &str,
) -> std::process::Command {
    let events = bundle.join("events.sock");
    let mut cmd = std::process::Command::new(shim);
    cmd.args(["-namespace", NAMESPACE, "-address"])
        .arg(&events)
        .args(["-publish-binary", "/bin/true", "-id", id, action])
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", format!("{}.ttrpc", events.display()))
        .stdin(std::process::Stdio::null());
    if std::env::var_os("PATH").is_none() {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    berth_core::process::default_signals(&mut cmd);
    cmd
}

/// After a shim died: its `delete` command (what containerd runs then)
/// deletes the container from its runtime and unmounts the rootfs; its
/// socket file is removed. Best effort.
pub(super) fn cleanup_after_dead_shim(shim: &Path, id: &str, bundle: &Path) {
    if bundle.is_dir() {
        let _ = shim_command(shim, id, bundle, "delete")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        remove_socket(address.trim());
    }
}

/// Removes the socket file of `address` (`unix://<path>`) that a killed
/// shim left behind, if it is one.
pub(super) fn remove_socket(address: &str) {
    use std::os::unix::fs::FileTypeExt;
    if let Some(path) = address.strip_prefix("unix://") {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub(super) fn shutdown(client: &TaskClient, id: &str) {
    let req = api::ShutdownRequest {
        id: id.to_string(),
        now: true,
        ..Default::default()
    };
    // The shim exits while answering: an error here is the normal end.
    let _ = client.shutdown(ctx(), &req);
}

/// Unmounts the rootfs (detached: a process still in it keeps its view)
/// and removes the bundle — not while anything is still mounted there.
pub(super) fn cleanup_bundle(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    if crate::monitor::oci::unmount(&rootfs) {
        let _ = std::fs::remove_dir_all(bundle);
    } else {
        crate::monitor::diag::warn(&format!(
            "{} is still mounted: the bundle is left in place",
            rootfs.display()
        ));
    }
}

/// For a container whose monitor is gone (or failed to start it): the shim
/// it left, reached at its recorded address, kills and deletes the
/// container and shuts down; the rootfs is unmounted. Best effort.
pub fn delete_leftover(rt: &ShimRuntime, dir: &Path, id: &str) {
    let bundle = bundle_dir(dir, id);
    let address = std::fs::read_to_string(bundle.join("address")).unwrap_or_default();
    match Client::connect(address.trim()) {
        Err(_) => cleanup_after_dead_shim(&rt.path, id, &bundle),
        Ok(client) => {
            let client = TaskClient::new(client);
            let kill = api::KillRequest {
                id: id.to_string(),
                signal: 9,
                all: true,
                ..Default::default()
            };
            let _ = client.kill(ctx(), &kill);
            let wait = api::WaitRequest {
                id: id.to_string(),
                ..Default::default()
            };
            let _ = client.wait(ctx(), &wait);
            let delete = api::DeleteRequest {
                id: id.to_string(),
                ..Default::default()
            };
            let _ = client.delete(ctx(), &delete);
            shutdown(&client, id);
        }
    }
    cleanup_bundle(&bundle);
}
