//! Pod sandboxes: records, the name index and per-sandbox locks.
//!
//! A sandbox is a set of pinned namespaces (see `berth_core::pin`) plus the
//! files every container of the pod shares (`resolv.conf`, `hostname`,
//! `hosts`) under `<state>/pods/<id>/`, and a record under
//! `<root>/metadata/pods/<id>.json`. There is no pause process.

pub mod files;

use std::path::{Path, PathBuf};

use berth_core::pin::PinnedNamespaces;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::error::RuntimeError;
use crate::proto;
use crate::store::{ObjectId, Registry};

/// The sandbox record format this build reads and writes.
pub const RECORD_VERSION: u32 = 1;

/// A sandbox's state (CRI `PodSandboxState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// Namespaces pinned, network set up.
    Ready,
    /// Stopped (or found broken after a restart): namespaces released.
    NotReady,
}

impl SandboxState {
    /// CRI's enum value.
    pub fn to_cri(self) -> proto::PodSandboxState {
        match self {
            SandboxState::Ready => proto::PodSandboxState::SandboxReady,
            SandboxState::NotReady => proto::PodSandboxState::SandboxNotready,
        }
    }
}

/// How the pod shares a namespace kind (CRI `NamespaceMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsMode {
    /// One for the pod, shared by its containers.
    Pod,
    /// One per container.
    Container,
    /// The host's.
    Node,
}

/// What is stored of a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Format version.
    pub version: u32,
    /// The id.
    pub id: ObjectId,
    /// The reserved name (`<name>_<namespace>_<uid>_<attempt>`).
    pub name: String,
    /// Ready or not.
    pub state: SandboxState,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// CRI runtime handler ("" = default).
    pub runtime_handler: String,
    /// Pinned namespaces and the pod's /dev/shm.
    pub namespaces: Option<PinnedNamespaces>,
    /// Network namespace mode (Pod or Node).
    pub network: NsMode,
    /// PID namespace mode.
    pub pid: NsMode,
    /// IPC namespace mode (Pod or Node).
    pub ipc: NsMode,
    /// The pod's hostname.
    pub hostname: String,
    /// The init of the pod's own pid namespace — pid and start ticks (see
    /// [`berth_core::process::start_ticks`]) — when the pod shares one
    /// (`namespace_options.pid == POD`); gone once the pod is stopped.
    #[serde(default)]
    pub pod_init: Option<(i32, u64)>,
    /// The pod's own user namespace's id maps (`hostUsers: false`); the
    /// namespace itself is pinned with the others.
    #[serde(default)]
    pub userns: Option<Userns>,
    /// The pod's SELinux MCS level, shared by its containers (empty
    /// without SELinux).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selinux_level: String,
    /// The pod's IPs from its CNI result, primary first (empty without a
    /// pod network, and once the pod is stopped).
    #[serde(default)]
    pub ips: Vec<String>,
    /// kubelet's `cgroup_parent`, exactly as given (containers go under it).
    pub cgroup_parent: String,
    /// `<state>/pods/<id>`: resolv.conf, hostname, hosts, ns/.
    pub dir: PathBuf,
    /// The `PodSandboxConfig` as kubelet sent it (protobuf, base64 in the
    /// JSON), so labels, annotations, DNS and port mappings are verbatim.
    #[serde(with = "crate::store::b64")]
    pub config: Vec<u8>,
}

/// A pod record as the daemon holds it (with its in-memory state).
pub type LiveSandbox = crate::store::Live<SandboxRecord>;

/// The id maps of a pod's user namespace (container id → host id ranges).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Userns {
    /// uid ranges.
    pub uids: Vec<berth_core::config::IdMap>,
    /// gid ranges.
    pub gids: Vec<berth_core::config::IdMap>,
}

/// Whether `(pid, start)` is still that process.
pub fn pod_init_alive((pid, start): (i32, u64)) -> bool {
    berth_core::process::start_ticks(pid) == Some(start)
}

impl SandboxRecord {
    /// The pod's shared pid namespace, while its init runs.
    pub fn pid_ns(&self) -> Option<PathBuf> {
        let init = self.pod_init.filter(|i| pod_init_alive(*i))?;
        Some(PathBuf::from(format!("/proc/{}/ns/pid", init.0)))
    }

    /// The decoded `PodSandboxConfig`.
    pub fn config(&self) -> proto::PodSandboxConfig {
        proto::PodSandboxConfig::decode(self.config.as_slice()).unwrap_or_default()
    }

    /// The CRI `PodSandbox` (for List).
    pub fn to_cri(&self) -> proto::PodSandbox {
        let c = self.config();
        proto::PodSandbox {
            id: self.id.to_string(),
            metadata: c.metadata,
            state: self.state.to_cri() as i32,
            created_at: self.created_at,
            labels: c.labels,
            annotations: c.annotations,
            runtime_handler: self.runtime_handler.clone(),
        }
    }
}

impl crate::store::Record for SandboxRecord {
    const KIND: &'static str = "pod sandbox";
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
}

/// All sandboxes.
pub struct Sandboxes {
    /// Records, names and locks.
    pub registry: Registry<SandboxRecord>,
    state_dir: PathBuf,
}

impl Sandboxes {
    /// Loads the records under `<root>/metadata/pods`; sandboxes whose
    /// pinned namespaces did not survive (a reboot) become NotReady.
    pub fn open(root: &Path, state: &Path) -> Result<Sandboxes, RuntimeError> {
        let registry = Registry::open(&root.join("metadata/pods"), |rec: &mut SandboxRecord| {
            if rec.state == SandboxState::Ready && !namespaces_alive(rec) {
                tracing::warn!(id = %rec.id, "pod namespaces are gone (reboot?): sandbox is NotReady");
                rec.state = SandboxState::NotReady;
                rec.namespaces = None;
                return true;
            }
            false
        })?;
        Ok(Sandboxes {
            registry,
            state_dir: state.join("pods"),
        })
    }

    /// `<state>/pods`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

fn namespaces_alive(rec: &SandboxRecord) -> bool {
    use berth_core::config::NamespaceKind;
    let Some(ns) = &rec.namespaces else {
        return true;
    };
    [
        (&ns.user, NamespaceKind::User),
        (&ns.net, NamespaceKind::Network),
        (&ns.ipc, NamespaceKind::Ipc),
        (&ns.uts, NamespaceKind::Uts),
        (&ns.pid, NamespaceKind::Pid),
    ]
    .into_iter()
    .all(|(p, kind)| {
        p.as_ref()
            .is_none_or(|p| berth_core::pin::is_pinned(p, kind))
    }) && rec.pod_init.is_none_or(pod_init_alive)
}

/// CRI's `PodSandboxMetadata` → the reserved name.
pub fn sandbox_name(m: &proto::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}
