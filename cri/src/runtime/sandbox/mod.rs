//! Pod sandboxes: records, the name index and per-sandbox locks.
//!
//! A sandbox is a set of pinned namespaces (see `berth_core::pin`) plus the
//! files every container of the pod shares (`resolv.conf`, `hostname`,
//! `hosts`) under `<state>/pods/<id>/`, and a record under
//! `<root>/metadata/pods/<id>.json`. There is no pause process.

pub mod files;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_core::pin::PinnedNamespaces;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::error::RuntimeError;
use crate::proto;
use crate::store::{is_hex_prefix, ObjectId, RecordDir};

const RECORD_VERSION: u32 = 1;

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
    /// kubelet's `cgroup_parent`, exactly as given (containers go under it).
    pub cgroup_parent: String,
    /// `<state>/pods/<id>`: resolv.conf, hostname, hosts, ns/.
    pub dir: PathBuf,
    /// The `PodSandboxConfig` as kubelet sent it (protobuf, base64 in the
    /// JSON), so labels, annotations, DNS and port mappings are verbatim.
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    /// Set (in memory only) when RemovePodSandbox has deleted the record:
    /// a call that was waiting for the lock must not act on it (or save it
    /// back to disk).
    #[serde(skip)]
    pub removed: bool,
}

impl SandboxRecord {
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

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// One sandbox: its record behind a lock that serialises RPCs on it.
pub type SandboxEntry = Arc<tokio::sync::Mutex<SandboxRecord>>;

/// All sandboxes.
pub struct Sandboxes {
    records: RecordDir,
    state_dir: PathBuf,
    map: Mutex<BTreeMap<ObjectId, SandboxEntry>>,
    /// name → id, reserved before any work so two RunPodSandbox calls for
    /// the same pod cannot both proceed.
    names: Mutex<HashMap<String, ObjectId>>,
}

impl Sandboxes {
    /// Loads the records under `<root>/metadata/pods`; sandboxes whose
    /// pinned namespaces did not survive (a reboot) become NotReady.
    pub fn open(root: &Path, state: &Path) -> Result<Sandboxes, RuntimeError> {
        let dir = root.join("metadata/pods");
        let records = RecordDir::open(&dir).map_err(|e| RuntimeError::io(&dir, e))?;
        let crate::store::Loaded {
            records: ok,
            unreadable: bad,
        } = records.load_all::<SandboxRecord>();
        for (path, err) in bad {
            tracing::warn!(path = %path.display(), error = %err, "ignoring unreadable sandbox record");
        }
        let mut map = BTreeMap::new();
        let mut names = HashMap::new();
        for (id, mut rec) in ok {
            if rec.version != RECORD_VERSION || rec.id != id {
                tracing::warn!(%id, "ignoring sandbox record of another version or id");
                continue;
            }
            if rec.state == SandboxState::Ready && !namespaces_alive(&rec) {
                tracing::warn!(%id, "pod namespaces are gone (reboot?): sandbox is NotReady");
                rec.state = SandboxState::NotReady;
                let _ = records.save(&id, &rec);
            }
            names.insert(rec.name.clone(), id.clone());
            map.insert(id, Arc::new(tokio::sync::Mutex::new(rec)));
        }
        Ok(Sandboxes {
            records,
            state_dir: state.join("pods"),
            map: Mutex::new(map),
            names: Mutex::new(names),
        })
    }

    /// `<state>/pods`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Reserves `name` for `id`.
    pub fn reserve(&self, name: &str, id: &ObjectId) -> Result<(), RuntimeError> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(holder) = names.get(name) {
            return Err(RuntimeError::AlreadyExists {
                kind: "pod sandbox",
                name: name.to_string(),
                holder: holder.to_string(),
            });
        }
        names.insert(name.to_string(), id.clone());
        Ok(())
    }

    /// Frees a name (rollback, or removal).
    pub fn release_name(&self, name: &str, id: &ObjectId) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.get(name) == Some(id) {
            names.remove(name);
        }
    }

    /// Persists and registers a new sandbox.
    pub fn insert(&self, rec: SandboxRecord) -> Result<(), RuntimeError> {
        self.save(&rec)?;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(rec.id.clone(), Arc::new(tokio::sync::Mutex::new(rec)));
        Ok(())
    }

    /// Persists a changed record.
    pub fn save(&self, rec: &SandboxRecord) -> Result<(), RuntimeError> {
        if rec.removed {
            return Err(RuntimeError::NotFound {
                kind: "pod sandbox",
                id: rec.id.to_string(),
            });
        }
        self.records
            .save(&rec.id, rec)
            .map_err(|e| RuntimeError::Internal(format!("saving sandbox {}: {e}", rec.id)))
    }

    /// Forgets a sandbox (after its resources are gone).
    pub fn remove(&self, rec: &mut SandboxRecord) -> Result<(), RuntimeError> {
        self.records
            .delete(&rec.id)
            .map_err(|e| RuntimeError::Internal(format!("deleting sandbox {}: {e}", rec.id)))?;
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&rec.id);
        self.release_name(&rec.name, &rec.id);
        rec.removed = true;
        Ok(())
    }

    /// Finds a sandbox by full id or unique prefix.
    pub fn get(&self, id: &str, field: &str) -> Result<(ObjectId, SandboxEntry), RuntimeError> {
        if id.is_empty() {
            return Err(RuntimeError::invalid(field, "must not be empty"));
        }
        let not_found = || RuntimeError::NotFound {
            kind: "pod sandbox",
            id: id.to_string(),
        };
        if !is_hex_prefix(id) {
            return Err(not_found());
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut hits =
            map.range(ObjectId::parse(&format!("{id:0<64}")).map_err(|_| not_found())?..);
        match hits.next() {
            Some((k, v)) if k.as_str().starts_with(id) => {
                if let Some((k2, _)) = hits.next() {
                    if k2.as_str().starts_with(id) {
                        return Err(RuntimeError::invalid(
                            field,
                            format!("{id:?} matches more than one pod sandbox"),
                        ));
                    }
                }
                Ok((k.clone(), v.clone()))
            }
            _ => Err(not_found()),
        }
    }

    /// Every sandbox entry.
    pub fn all(&self) -> Vec<SandboxEntry> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

fn namespaces_alive(rec: &SandboxRecord) -> bool {
    use berth_core::config::NamespaceKind;
    let Some(ns) = &rec.namespaces else {
        return true;
    };
    [
        (&ns.net, NamespaceKind::Network),
        (&ns.ipc, NamespaceKind::Ipc),
        (&ns.uts, NamespaceKind::Uts),
        (&ns.pid, NamespaceKind::Pid),
    ]
    .into_iter()
    .all(|(p, kind)| {
        p.as_ref()
            .is_none_or(|p| berth_core::pin::is_pinned(p, kind))
    })
}

/// CRI's `PodSandboxMetadata` → the reserved name.
pub fn sandbox_name(m: &proto::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}
