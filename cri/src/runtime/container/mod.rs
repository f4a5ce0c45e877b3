//! Containers: records and their state machine.
//!
//! A container is a runtime-core container created and owned by a monitor
//! process (see [`crate::monitor`]), with its record under
//! `<root>/metadata/containers/<id>.json` and its volatile files (monitor
//! spec, exit record, overlay mount point) under `<state>/containers/<id>/`.
//! runtime-core's own state lives under `<state>/runtime/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use serde::{Deserialize, Serialize};

use super::error::RuntimeError;
use crate::monitor;
use crate::proto;
use crate::store::{make_dir, modes, Durability, ObjectId, Registry};
use crate::task::{ExitRecord, Task, Tasks};

/// The exit code of a container whose monitor died without recording one
/// (containerd's `UnknownExitStatus`).
pub const UNKNOWN_EXIT_CODE: i32 = 255;

/// The container record format this build reads and writes.
pub const RECORD_VERSION: u32 = 1;

/// CRI `ContainerState`, with the transitions the RPCs may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created: the init waits for StartContainer.
    Created,
    /// Started.
    Running,
    /// Its process ended (exit record read).
    Exited,
    /// Its monitor vanished without an exit record.
    Unknown,
}

impl ContainerState {
    /// CRI's enum value.
    pub fn to_cri(self) -> proto::ContainerState {
        match self {
            ContainerState::Created => proto::ContainerState::ContainerCreated,
            ContainerState::Running => proto::ContainerState::ContainerRunning,
            ContainerState::Exited => proto::ContainerState::ContainerExited,
            ContainerState::Unknown => proto::ContainerState::ContainerUnknown,
        }
    }

    /// Whether a process may still be alive.
    pub fn is_live(self) -> bool {
        matches!(self, ContainerState::Created | ContainerState::Running)
    }
}

/// Why StartContainer refuses a container that is not Created.
pub const START_NEEDS: &str = "only a Created container can be started";

/// A container record as the daemon holds it (with its in-memory state).
pub type LiveContainer = crate::store::Live<ContainerRecord>;

/// What is stored of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Format version.
    pub version: u32,
    /// The id (also runtime-core's container id).
    pub id: ObjectId,
    /// Its pod.
    pub sandbox_id: ObjectId,
    /// Reserved name: `<name>_<pod name>_<attempt>`.
    pub name: String,
    /// State.
    pub state: ContainerState,
    /// When it was created, ns since the epoch.
    pub created_at: i64,
    /// When StartContainer released it (`None`: not yet).
    #[serde(with = "crate::store::unset")]
    pub started_at: Option<i64>,
    /// When it exited (`None`: not yet).
    #[serde(with = "crate::store::unset")]
    pub finished_at: Option<i64>,
    /// Exit code (128+n for signal n).
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// Details of the reason.
    pub message: String,
    /// The image as requested.
    pub image: String,
    /// The image id it runs (the config digest; `ContainerStatus.image_id`,
    /// `Container.image_ref`).
    pub image_ref: String,
    /// The image's `repo@sha256:<manifest digest>` (`ContainerStatus.image_ref`,
    /// kubelet's `imageID`); empty in records written before it existed,
    /// which report the image id there.
    #[serde(default)]
    pub repo_digest: String,
    /// The CRI log file ("" when kubelet gave none).
    pub log_path: String,
    /// The monitor process.
    pub monitor_pid: i32,
    /// The container's init (pid in the host pid namespace).
    pub init_pid: i32,
    /// Signal StopContainer sends first.
    pub stop_signal: i32,
    /// `<state>/containers/<id>`.
    pub dir: PathBuf,
    /// The `ContainerConfig` as kubelet sent it (protobuf).
    #[serde(with = "crate::store::b64")]
    pub config: Vec<u8>,
}

impl crate::store::Record for ContainerRecord {
    const KIND: &'static str = "container";
    const VERSION: u32 = RECORD_VERSION;
    fn id(&self) -> &ObjectId {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn group(&self) -> Option<&ObjectId> {
        Some(&self.sandbox_id)
    }
}

impl ContainerRecord {
    /// The decoded `ContainerConfig`.
    pub fn config(&self) -> proto::ContainerConfig {
        proto::ContainerConfig::decode(self.config.as_slice()).unwrap_or_default()
    }

    /// The exit record the monitor writes.
    pub fn exit_file(&self) -> PathBuf {
        self.dir.join("exit.json")
    }

    /// Takes in the monitor's exit record, if it wrote one. Returns whether
    /// anything changed.
    pub fn refresh(&mut self, tasks: &dyn Tasks) -> bool {
        if !self.state.is_live() {
            return false;
        }
        match self.take_recorded_exit() {
            true => true,
            // A monitor that refuses connections is gone; it may have
            // written the record just now. Otherwise it was killed: what it
            // left running is killed too.
            false => {
                let task = tasks.open(&self.dir);
                if task.is_running() {
                    return false;
                }
                match monitor::read_exit(&self.exit_file()) {
                    Some(exit) => self.exited(&exit),
                    None => {
                        task.abandon();
                        self.lost(crate::util::now_nanos());
                    }
                }
                true
            }
        }
    }

    /// Takes in the monitor's exit record if it is there (without asking
    /// the monitor anything). Returns whether it was.
    pub fn take_recorded_exit(&mut self) -> bool {
        match monitor::read_exit(&self.exit_file()) {
            Some(exit) => {
                self.exited(&exit);
                true
            }
            None => false,
        }
    }

    /// Created → Running, released at `at` (ns since the epoch).
    pub fn started(&mut self, at: i64) -> Result<(), RuntimeError> {
        RuntimeError::require(self, ContainerState::Created, START_NEEDS)?;
        self.state = ContainerState::Running;
        self.started_at = Some(at);
        Ok(())
    }

    /// The init ended as its monitor recorded.
    pub fn exited(&mut self, exit: &ExitRecord) {
        self.state = ContainerState::Exited;
        self.exit_code = exit.exit_code;
        self.finished_at = Some(exit.finished_at);
        self.reason = exit.reason.clone();
        self.message = exit.message.clone();
    }

    /// Its monitor died without recording an exit (noticed at `at`): the
    /// container has exited with the status containerd reports for a lost
    /// shim (255).
    pub fn lost(&mut self, at: i64) {
        self.state = ContainerState::Exited;
        self.exit_code = UNKNOWN_EXIT_CODE;
        self.finished_at = Some(at);
        self.reason = "Error".into();
        self.message =
            "the container's monitor died without recording an exit; its processes were killed"
                .into();
    }

    /// The image it runs, as CRI reports it: the request's spec, naming the
    /// image actually used (a container restored from a checkpoint archive
    /// runs the archive's rootfs image, not the archive).
    pub fn image_spec(&self, requested: Option<proto::ImageSpec>) -> Option<proto::ImageSpec> {
        let mut spec = requested.unwrap_or_default();
        spec.image = self.image.clone();
        Some(spec)
    }

    /// CRI `Container` (for List).
    pub fn to_cri(&self) -> proto::Container {
        let c = self.config();
        proto::Container {
            id: self.id.to_string(),
            pod_sandbox_id: self.sandbox_id.to_string(),
            metadata: c.metadata,
            image: self.image_spec(c.image),
            image_ref: self.image_ref.clone(),
            state: self.state.to_cri() as i32,
            created_at: self.created_at,
            labels: c.labels,
            annotations: c.annotations,
            image_id: self.image_ref.clone(),
        }
    }
}

/// All containers.
pub struct Containers {
    /// Records, names and locks.
    pub registry: Registry<ContainerRecord>,
    /// `<state>/containers`.
    pub state_dir: PathBuf,
    /// runtime-core's state root, `<state>/runtime`.
    pub runtime_root: PathBuf,
    /// `<root>/checkpoints`: work directories of checkpoints being written
    /// and archives being restored (on disk, not in the volatile state: a
    /// checkpoint is as big as the container's memory).
    pub checkpoint_dir: PathBuf,
    /// How each container is reached: through its monitor.
    pub tasks: Arc<dyn Tasks>,
}

impl Containers {
    /// The task of the container of `rec`.
    pub fn task(&self, rec: &ContainerRecord) -> Arc<dyn Task> {
        self.tasks.open(&rec.dir)
    }

    /// [`ContainerRecord::refresh`] through this service's tasks.
    pub fn refresh(&self, rec: &mut ContainerRecord) -> bool {
        rec.refresh(&*self.tasks)
    }

    /// Refreshes `rec` and saves what changed (an exit, which a power
    /// loss makes moot: [`Durability::Atomic`]).
    pub fn refresh_and_save(&self, rec: &mut LiveContainer) -> Result<(), RuntimeError> {
        match self.refresh(rec) {
            true => self.registry.save_with(rec, Durability::Atomic),
            false => Ok(()),
        }
    }

    /// Loads the records; containers whose monitor recorded an exit while
    /// the daemon was down are brought up to date.
    pub fn open(
        root: &Path,
        state: &Path,
        tasks: Arc<dyn Tasks>,
    ) -> Result<Containers, RuntimeError> {
        let registry = Registry::open(
            &root.join("metadata/containers"),
            |r: &mut ContainerRecord| r.refresh(&*tasks),
        )?;
        let checkpoint_dir = root.join("checkpoints");
        // Only work directories live there: any left are from a daemon that
        // died mid-checkpoint or mid-restore.
        let _ = std::fs::remove_dir_all(&checkpoint_dir);
        let private = [root.join("metadata"), checkpoint_dir.clone()];
        for d in &private {
            make_dir(d, modes::PRIVATE).map_err(|e| RuntimeError::io(d, e))?;
        }
        // Per-container dirs (monitor spec, rootfs mount point, attach
        // socket) are private, or searchable by one user-namespaced pod's
        // root; this one is only traversed.
        let state_dir = state.join("containers");
        make_dir(&state_dir, modes::TRAVERSE).map_err(|e| RuntimeError::io(&state_dir, e))?;
        Ok(Containers {
            registry,
            state_dir,
            runtime_root: state.join("runtime"),
            checkpoint_dir,
            tasks,
        })
    }
}
