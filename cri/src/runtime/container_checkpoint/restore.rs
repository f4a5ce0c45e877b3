//! Restoring from a checkpoint: an archive given by path or a pulled
//! checkpoint image, unpacked (or opened) for CRIU, its rootfs image found or
//! pulled, and its rootfs changes applied to the new writable layer.

use std::path::{Path, PathBuf};

use super::archive::empty_file_header;
use super::{ConfigDump, CHECKPOINT_DIR, CONFIG_DUMP, DELETED_FILES, ROOTFS_DIFF, SPEC_DUMP};
use crate::runtime::error::RuntimeError;

/// Whether CreateContainer's image names a checkpoint archive: an absolute
/// path to a file (an image reference never starts with `/`).
pub(crate) fn is_archive(image: &str) -> bool {
    image.starts_with('/') && Path::new(image).is_file()
}

/// A checkpoint archive unpacked for restore.
#[derive(Debug)]
pub(crate) struct Unpacked {
    /// Where it was unpacked.
    pub dir: PathBuf,
    /// Its `config.dump`.
    pub config: ConfigDump,
}

impl Unpacked {
    /// CRIU's images.
    pub fn images_dir(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_DIR)
    }

    /// The restored container must ask for a terminal (`tty`) exactly when
    /// the checkpointed one had one: its init's fds are re-wired to a new
    /// terminal or to new pipes, as they were.
    pub fn check_terminal(&self, tty: bool) -> Result<(), RuntimeError> {
        let had = self
            .images_dir()
            .join(berth_core::container::checkpoint::TERMINAL_FILE)
            .exists();
        match (had, tty) {
            (true, false) => Err(RuntimeError::invalid(
                "config.tty",
                "the checkpointed container had a terminal: the restored one must ask for one",
            )),
            (false, true) => Err(RuntimeError::invalid(
                "config.tty",
                "the checkpointed container had no terminal: the restored one cannot have one",
            )),
            _ => Ok(()),
        }
    }

    /// The restored container's pod must have a user namespace exactly when
    /// the checkpointed one's had, with the same id maps (host ids): the
    /// restored tasks join it, and CRIU's images hold the ids they had.
    pub fn check_user_namespace(
        &self,
        pod: Option<&crate::runtime::sandbox::Userns>,
    ) -> Result<(), RuntimeError> {
        const FIELD: &str = "config.linux.security_context.namespace_options.userns_options";
        let dumped = berth_core::container::checkpoint::images_user_maps(&self.images_dir())
            .map_err(|e| RuntimeError::invalid("config.image.image", e.to_string()))?;
        let reason = match (dumped, pod) {
            (None, None) => return Ok(()),
            (Some(m), Some(u)) if m.same_as(&u.uids, &u.gids) => return Ok(()),
            (Some(m), Some(_)) => format!(
                "the checkpointed container's pod had other user namespace id maps (uids {}, \
                 gids {}): the restored one's pod must have the same",
                describe(&m.uid_map),
                describe(&m.gid_map)
            ),
            (Some(_), None) => "the checkpointed container's pod had a user namespace of its \
                                own: the restored one's pod must have one (POD), with the same \
                                id maps"
                .into(),
            (None, Some(_)) => "the checkpointed container's pod had no user namespace of its \
                                own: the restored one's pod cannot have one"
                .into(),
        };
        Err(RuntimeError::invalid(FIELD, reason))
    }

    /// The restored container must be in the same pid namespace shape as
    /// the checkpointed one: its own, or its pod's shared one (CRIU dumped
    /// that as external and restores the tree, with its pids, into the one
    /// the new container joins).
    pub fn check_pid_namespace(&self, pid: &crate::spec::PidMode) -> Result<(), RuntimeError> {
        use crate::spec::PidMode;
        const FIELD: &str = "config.linux.security_context.namespace_options.pid";
        let images = self.images_dir();
        let shared = berth_core::container::checkpoint::images_join_pid_ns(&images)
            .map_err(|e| RuntimeError::invalid("config.image.image", e.to_string()))?;
        let reason = match (shared, pid) {
            (_, PidMode::Node) => "a checkpoint cannot be restored into the node's pid namespace",
            (true, PidMode::Container) => {
                "the checkpointed container shared its pod's pid namespace: the restored one \
                 must share its pod's (POD, in a pod that shares one)"
            }
            (false, PidMode::Pod(_)) => {
                "the checkpointed container had a pid namespace of its own: the restored one \
                 must too (CONTAINER)"
            }
            _ => return Ok(()),
        };
        Err(RuntimeError::invalid(FIELD, reason))
    }
}

/// Refuses a restore into a user-namespace pod when `criu` lacks berth's
/// join-userns patch (a stock CRIU would fail with EPERM at its network
/// namespace step). criu is asked once per binary (path and modification
/// time: a criu replaced on the node is asked again), not per container.
pub(crate) fn check_criu_joins_userns(criu: &Path) -> Result<(), RuntimeError> {
    use std::sync::Mutex;
    type Answer = (PathBuf, Option<std::time::SystemTime>, bool);
    static ASKED: Mutex<Vec<Answer>> = Mutex::new(Vec::new());
    let modified = std::fs::metadata(criu).and_then(|m| m.modified()).ok();
    let known = ASKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(p, m, _)| p == criu && *m == modified)
        .map(|a| a.2);
    let joins = known.unwrap_or_else(|| {
        let joins = berth_core::container::checkpoint::criu_joins_userns(criu);
        let mut asked = ASKED.lock().unwrap_or_else(|e| e.into_inner());
        asked.retain(|(p, _, _)| p != criu);
        asked.push((criu.to_path_buf(), modified, joins));
        joins
    });
    if joins {
        Ok(())
    } else {
        Err(RuntimeError::CriuLacks {
            criu: criu.to_path_buf(),
            what: "berth's join-userns patch, which restoring into a pod's user namespace needs",
            feature: "join_userns",
        })
    }
}

/// `container_id:host_id:size` for each map line, comma separated.
fn describe(m: &[berth_core::config::IdMap]) -> String {
    m.iter()
        .map(|e| format!("{}:{}:{}", e.container_id, e.host_id, e.size))
        .collect::<Vec<_>>()
        .join(",")
}

/// The checkpoint's rootfs image (`config.dump`'s name, else its ref), as
/// the image store resolves it. When it is not here and a `puller` is
/// given, it is pulled first — with no request credentials (the node's
/// auth file's, if any), through the configured registry hosts, as CRI-O
/// does (blocking: called from CreateContainer's blocking task, inside the
/// runtime).
pub(crate) fn rootfs_image(
    images: &crate::image::ImageStore,
    puller: Option<&crate::image::puller::Puller>,
    c: &ConfigDump,
) -> Result<String, RuntimeError> {
    let present = || {
        [&c.rootfs_image_name, &c.rootfs_image_ref]
            .into_iter()
            .find(|r| !r.is_empty() && images.resolve(r).is_some())
            .cloned()
    };
    if let Some(r) = present() {
        return Ok(r);
    }
    let name = &c.rootfs_image_name;
    if let (Some(puller), false) = (puller, name.is_empty()) {
        let image_err = |source| RuntimeError::CheckpointImage {
            name: name.clone(),
            source: Box::new(source),
        };
        let parsed = crate::image::reference::ImageName::parse(name)
            .map_err(|e| image_err(crate::image::ImageError::Reference(e)))?;
        tracing::info!(image = %name, "pulling the rootfs image of a checkpoint");
        tokio::runtime::Handle::current()
            .block_on(puller.pull(&parsed, &oci_client::secrets::RegistryAuth::Anonymous))
            .map_err(image_err)?;
    }
    present().ok_or_else(|| RuntimeError::CheckpointImage {
        name: c.rootfs_image_name.clone(),
        source: Box::new(crate::image::ImageError::NotPresent(format!(
            "{} (pull it first)",
            c.rootfs_image_ref
        ))),
    })
}

/// When `image` names a pulled checkpoint image — one layer holding an
/// archive's contents, the manifest annotated as such
/// ([`crate::image::store::marks_checkpoint`]) — that layer's directory;
/// `None` for any other image (or one not pulled).
pub(crate) fn checkpoint_image_dir(
    images: &crate::image::ImageStore,
    image: &str,
) -> Result<Option<PathBuf>, RuntimeError> {
    let Some(rec) = images.resolve(image).filter(|r| r.checkpoint) else {
        return Ok(None);
    };
    match images.layer_dirs(&rec).as_slice() {
        [one] => Ok(Some(one.clone())),
        more => Err(RuntimeError::invalid(
            "config.image.image",
            format!(
                "{image} is annotated as a checkpoint image but has {} layers (one is expected)",
                more.len()
            ),
        )),
    }
}

/// Unpacks the archive at `archive` into `dest` (created) with the image
/// layer unpacker (no entry can land outside `dest`) and checks that it is
/// a checkpoint ([`open`]).
pub(crate) fn unpack(archive: &Path, dest: &Path) -> Result<Unpacked, RuntimeError> {
    let what = format!("{} is not a checkpoint archive", archive.display());
    let bad =
        |reason: String| RuntimeError::invalid("config.image.image", format!("{what}: {reason}"));
    std::fs::create_dir_all(dest).map_err(|e| RuntimeError::io(dest, e))?;
    let file = std::fs::File::open(archive).map_err(|e| bad(e.to_string()))?;
    crate::image::unpack::unpack_untrusted(std::io::BufReader::new(file), dest)
        .map_err(|e| bad(crate::util::error_chain(&e)))?;
    open(dest, &what)
}

/// Checks that `dest` holds a checkpoint — CRIU images, `config.dump`
/// naming a rootfs image, `spec.dump` — and reads its `config.dump`. `what`
/// starts the error messages.
pub(crate) fn open(dest: &Path, what: &str) -> Result<Unpacked, RuntimeError> {
    let bad =
        |reason: String| RuntimeError::invalid("config.image.image", format!("{what}: {reason}"));
    for need in [
        format!("{CHECKPOINT_DIR}/inventory.img"),
        format!(
            "{CHECKPOINT_DIR}/{}",
            berth_core::container::checkpoint::DESCRIPTORS_FILE
        ),
        SPEC_DUMP.to_string(),
    ] {
        if !dest.join(&need).is_file() {
            return Err(bad(format!("{need} is missing")));
        }
    }
    let read = |name: &str| -> Result<Vec<u8>, RuntimeError> {
        std::fs::read(dest.join(name)).map_err(|e| bad(format!("{name}: {e}")))
    };
    let config: ConfigDump = serde_json::from_slice(&read(CONFIG_DUMP)?)
        .map_err(|e| bad(format!("{CONFIG_DUMP}: {e}")))?;
    serde_json::from_slice::<serde_json::Value>(&read(SPEC_DUMP)?)
        .map_err(|e| bad(format!("{SPEC_DUMP}: {e}")))?;
    if config.rootfs_image_name.is_empty() && config.rootfs_image_ref.is_empty() {
        return Err(bad(format!("{CONFIG_DUMP} names no rootfs image")));
    }
    Ok(Unpacked {
        dir: dest.to_path_buf(),
        config,
    })
}

/// Applies the checkpoint's `rootfs-diff.tar` to the new container's
/// writable layer and whites out its `deleted.files`. Both go through the
/// image layer unpacker, so a diff can set no more than an image layer could:
/// the same path rules and the same xattr policy (no `trusted.*`, no security
/// labels, well-formed file capabilities only).
pub(crate) fn apply_rootfs_diff(unpacked: &Unpacked, upper: &Path) -> Result<(), RuntimeError> {
    let bad = |what: &str, e: String| {
        RuntimeError::invalid(
            "config.image.image",
            format!("the checkpoint's {what} cannot be applied: {e}"),
        )
    };
    let diff = unpacked.dir.join(ROOTFS_DIFF);
    if diff.exists() {
        let f = std::fs::File::open(&diff).map_err(|e| bad(ROOTFS_DIFF, e.to_string()))?;
        crate::image::unpack::unpack_untrusted(std::io::BufReader::new(f), upper)
            .map_err(|e| bad(ROOTFS_DIFF, crate::util::error_chain(&e)))?;
    }
    let deleted_path = unpacked.dir.join(DELETED_FILES);
    let deleted: Vec<String> = match std::fs::read(&deleted_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| bad(DELETED_FILES, e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(bad(DELETED_FILES, e.to_string())),
    };
    if deleted.is_empty() {
        return Ok(());
    }
    // As an OCI layer of whiteouts, through the same safe unpacker.
    let mut b = tar::Builder::new(Vec::new());
    for p in &deleted {
        let rel = Path::new(p.trim_start_matches('/'));
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(bad(DELETED_FILES, format!("{p:?} is not a file path")));
        };
        let mut wh = std::ffi::OsString::from(".wh.");
        wh.push(name);
        let mut h = empty_file_header();
        b.append_data(&mut h, parent.join(wh), std::io::empty())
            .map_err(|e| bad(DELETED_FILES, format!("{p:?}: {e}")))?;
    }
    let bytes = b
        .into_inner()
        .map_err(|e| bad(DELETED_FILES, e.to_string()))?;
    crate::image::unpack::unpack_untrusted(bytes.as_slice(), upper)
        .map_err(|e| bad(DELETED_FILES, crate::util::error_chain(&e)))?;
    Ok(())
}
