//! An in-memory index of records of one kind (pods or containers), backed by
//! a [`RecordDir`]: per-object async locks, a name index reserved before any
//! work, and lookup by full id or unique prefix.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{is_hex_prefix, Loaded, ObjectId, RecordDir};
use crate::runtime::RuntimeError;

/// What a registry needs of its records.
pub trait Record: Serialize + DeserializeOwned + Send + 'static {
    /// `pod sandbox` or `container`, for messages.
    const KIND: &'static str;
    /// Format version this build writes and reads.
    const VERSION: u32;
    /// The record's id.
    fn id(&self) -> &ObjectId;
    /// The reserved name.
    fn name(&self) -> &str;
    /// The stored format version.
    fn version(&self) -> u32;
    /// The object this one belongs to (a container's pod); fixed for the
    /// record's life, so it is indexed outside the record's lock.
    fn group(&self) -> Option<&ObjectId> {
        None
    }
}

/// A record as the daemon holds it: what is persisted (`R`, reached through
/// `Deref`) and what lives only in memory.
#[derive(Debug, Clone)]
pub struct Live<R> {
    record: R,
    /// Deleted while a caller waited for its lock: the caller must act as
    /// if it were not found.
    pub removed: bool,
}

impl<R> Live<R> {
    /// A record not (yet) deleted.
    pub fn new(record: R) -> Live<R> {
        Live {
            record,
            removed: false,
        }
    }

    /// The persisted part.
    pub fn record(&self) -> &R {
        &self.record
    }
}

impl<R> std::ops::Deref for Live<R> {
    type Target = R;
    fn deref(&self) -> &R {
        &self.record
    }
}

impl<R> std::ops::DerefMut for Live<R> {
    fn deref_mut(&mut self) -> &mut R {
        &mut self.record
    }
}

/// A map slot: the immutable group next to the locked record.
struct Slot<R> {
    group: Option<ObjectId>,
    entry: Entry<R>,
}

impl<R: Record> Slot<R> {
    fn new(rec: R) -> Slot<R> {
        Slot {
            group: rec.group().cloned(),
            entry: Arc::new(tokio::sync::Mutex::new(Live::new(rec))),
        }
    }
}

/// One object: its record behind a lock that serialises RPCs on it.
pub type Entry<R> = Arc<tokio::sync::Mutex<Live<R>>>;

/// The registry.
pub struct Registry<R: Record> {
    records: RecordDir,
    map: Mutex<BTreeMap<ObjectId, Slot<R>>>,
    names: Mutex<HashMap<String, ObjectId>>,
}

impl<R: Record> Registry<R> {
    /// Loads every record in `dir`; `fix` may adjust each one (e.g. mark a
    /// pod whose namespaces are gone NotReady) and returns whether to save it.
    pub fn open(
        dir: &Path,
        mut fix: impl FnMut(&mut R) -> bool,
    ) -> Result<Registry<R>, RuntimeError> {
        let records = RecordDir::open(dir).map_err(|e| RuntimeError::io(dir, e))?;
        let Loaded {
            records: ok,
            unreadable,
        } = records.load_all::<R>();
        for (path, err) in unreadable {
            tracing::warn!(path = %path.display(), error = %err, kind = R::KIND, "ignoring unreadable record");
        }
        let mut map = BTreeMap::new();
        let mut names = HashMap::new();
        for (id, mut rec) in ok {
            if rec.version() != R::VERSION || *rec.id() != id {
                tracing::warn!(%id, kind = R::KIND, "ignoring record of another version or id");
                continue;
            }
            if fix(&mut rec) {
                if let Err(e) = records.save(&id, &rec, super::Durability::Durable) {
                    tracing::warn!(%id, error = %e, "saving a repaired record");
                }
            }
            names.insert(rec.name().to_string(), id.clone());
            map.insert(id, Slot::new(rec));
        }
        Ok(Registry {
            records,
            map: Mutex::new(map),
            names: Mutex::new(names),
        })
    }

    /// Reserves `name` for `id`, or says who holds it.
    pub fn reserve(&self, name: &str, id: &ObjectId) -> Result<(), RuntimeError> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(holder) = names.get(name) {
            return Err(RuntimeError::AlreadyExists {
                kind: R::KIND,
                name: name.to_string(),
                holder: holder.to_string(),
            });
        }
        names.insert(name.to_string(), id.clone());
        Ok(())
    }

    /// Frees a name held by `id`.
    pub fn release_name(&self, name: &str, id: &ObjectId) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.get(name) == Some(id) {
            names.remove(name);
        }
    }

    /// Persists and registers a new record.
    pub fn insert(&self, rec: R) -> Result<(), RuntimeError> {
        self.write(&rec, super::Durability::Durable)?;
        let id = rec.id().clone();
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Slot::new(rec));
        Ok(())
    }

    /// Persists a changed record (never one that was removed), durably.
    pub fn save(&self, rec: &Live<R>) -> Result<(), RuntimeError> {
        self.save_with(rec, super::Durability::Durable)
    }

    /// Persists a changed record as durably as `durability` says.
    pub fn save_with(
        &self,
        rec: &Live<R>,
        durability: super::Durability,
    ) -> Result<(), RuntimeError> {
        if rec.removed {
            return Err(self.not_found(rec.id().as_str()));
        }
        self.write(rec.record(), durability)
    }

    fn write(&self, rec: &R, durability: super::Durability) -> Result<(), RuntimeError> {
        self.records
            .save(rec.id(), rec, durability)
            .map_err(|e| RuntimeError::Internal(format!("saving {} {}: {e}", R::KIND, rec.id())))
    }

    /// Deletes a record whose resources are gone, and frees its name.
    pub fn remove(&self, rec: &mut Live<R>) -> Result<(), RuntimeError> {
        self.records.delete(rec.id()).map_err(|e| {
            RuntimeError::Internal(format!("deleting {} {}: {e}", R::KIND, rec.id()))
        })?;
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(rec.id());
        self.release_name(rec.name(), rec.id());
        rec.removed = true;
        Ok(())
    }

    /// NotFound for `id`.
    pub fn not_found(&self, id: &str) -> RuntimeError {
        RuntimeError::NotFound {
            kind: R::KIND,
            id: id.to_string(),
        }
    }

    /// Finds a record by full id or unique prefix; `field` names the request
    /// field in errors.
    pub fn get(&self, id: &str, field: &str) -> Result<Entry<R>, RuntimeError> {
        if id.is_empty() {
            return Err(RuntimeError::invalid(field, "must not be empty"));
        }
        if !is_hex_prefix(id) {
            return Err(self.not_found(id));
        }
        let lowest = ObjectId::parse(&format!("{id:0<64}")).map_err(|_| self.not_found(id))?;
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut hits = map
            .range(lowest..)
            .take_while(|(k, _)| k.as_str().starts_with(id));
        match (hits.next(), hits.next()) {
            (Some((_, v)), None) => Ok(v.entry.clone()),
            (Some(_), Some(_)) => Err(RuntimeError::invalid(
                field,
                format!("{id:?} matches more than one {}", R::KIND),
            )),
            (None, _) => Err(self.not_found(id)),
        }
    }

    /// Like [`Registry::get`], but an id that is not there is `None`: what
    /// the idempotent Remove RPCs need ("must not return an error if ...
    /// already removed", api.proto).
    pub fn find(&self, id: &str, field: &str) -> Result<Option<Entry<R>>, RuntimeError> {
        match self.get(id, field) {
            Ok(e) => Ok(Some(e)),
            Err(RuntimeError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The ids of every record (without taking any record's lock).
    pub fn ids(&self) -> Vec<ObjectId> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Every entry.
    pub fn all(&self) -> Vec<Entry<R>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| s.entry.clone())
            .collect()
    }

    /// The entries whose [`Record::group`] is `group` (a pod's containers),
    /// found without taking any record's lock.
    pub fn members(&self, group: &ObjectId) -> Vec<Entry<R>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.group.as_ref() == Some(group))
            .map(|s| s.entry.clone())
            .collect()
    }
}
