//! Pod networking through CNI: berth speaks the CNI protocol itself (spec
//! 1.0/1.1, and older results), as libcni does for containerd and CRI-O.
//!
//! - The configuration in force is the first usable file of the config
//!   directory in lexical order; a watcher thread (inotify, plus a slow
//!   rescan) reloads it, so a config installed later by a CNI DaemonSet
//!   turns `NetworkReady` true without a restart.
//! - Each pod attachment is cached under `<root>/cni/<pod id>.json` — the
//!   configuration, arguments and capabilities ADD used, and its result —
//!   written *before* ADD runs and removed only when DEL succeeds. So DEL
//!   (after a daemon restart too) passes what ADD got, a repeated
//!   StopPodSandbox runs DEL once, and a failed DEL is retried by the next
//!   Stop or Remove.

pub mod caps;
pub mod config;
pub mod exec;
pub mod result;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use config::{Loaded, NetworkList};
use exec::{Invocation, PluginError};

use crate::proto;

/// Where configurations and plugins are, and how long a plugin may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniSettings {
    /// The config directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// Plugin directories, searched in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Deadline of one plugin call.
    pub plugin_timeout: Duration,
    /// A verbose PodSandboxStatus runs CNI CHECK and reports it
    /// (`networkCheck`): off by default, it runs every plugin of the config.
    pub check_on_status: bool,
}

impl Default for CniSettings {
    fn default() -> Self {
        CniSettings {
            conf_dir: "/etc/cni/net.d".into(),
            // The CNI project's install path, then Debian's package's.
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            plugin_timeout: Duration::from_secs(120),
            check_on_status: false,
        }
    }
}

/// The pod interface's name.
pub const IFNAME: &str = "eth0";

/// What can go wrong with the pod network.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No usable configuration.
    #[error("the pod network is not ready: {0}")]
    NotReady(String),
    /// A request value the plugins cannot be given.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A plugin failed.
    #[error("pod network: {0}")]
    Plugin(#[from] PluginError),
    /// The attachment cache could not be read or written.
    #[error("pod network cache {path}: {reason}")]
    Cache {
        /// The file.
        path: PathBuf,
        /// What happened.
        reason: String,
    },
}

/// One pod's attachment, as cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attachment {
    kind: String,
    container_id: String,
    if_name: String,
    network_name: String,
    /// The `.conflist` as ADD used it.
    config: Value,
    cni_args: Vec<(String, String)>,
    capability_args: Map<String, Value>,
    netns: PathBuf,
    /// ADD's result; `None` while (or if) ADD did not finish.
    result: Option<Value>,
}

const CACHE_KIND: &str = "berthCniCacheV1";

/// The pod facts a network attachment needs.
#[derive(Debug, Clone, Copy)]
pub struct PodRef<'a> {
    /// The sandbox id (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub id: &'a str,
    /// The pinned netns file.
    pub netns: &'a Path,
    /// The pod's config (metadata, port mappings, DNS, annotations).
    pub config: &'a proto::PodSandboxConfig,
    /// IPs to ask the plugins for (RestorePod: the checkpointed pod's),
    /// as `CNI_ARGS` `IP=a,b` — host-local's and static's convention; other
    /// plugins ignore it (`IgnoreUnknown`). Empty: whatever they give.
    pub preferred_ips: &'a [IpAddr],
}

/// The CNI manager: the configuration in force, kubelet's pod CIDRs, the
/// attachment cache.
pub struct Cni {
    settings: CniSettings,
    cache_dir: PathBuf,
    loaded: RwLock<Arc<Loaded>>,
    pod_cidrs: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Cni {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cni")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Cni {
    /// Loads the configuration and starts watching its directory (the
    /// watcher ends when the last `Arc` goes). `cache_dir` is berth's own
    /// (`<root>/cni`).
    pub fn start(settings: CniSettings, cache_dir: PathBuf) -> Arc<Cni> {
        let loaded = config::load_dir(&settings.conf_dir);
        log_loaded(&loaded);
        let cni = Arc::new(Cni {
            settings,
            cache_dir,
            loaded: RwLock::new(Arc::new(loaded)),
            pod_cidrs: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&cni);
        let dir = cni.settings.conf_dir.clone();
        std::thread::Builder::new()
            .name("berth-cni-watch".into())
            .spawn(move || watch(&weak, &dir))
            .map_err(|e| tracing::warn!(error = %e, "cannot watch the CNI config directory"))
            .ok();
        cni
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the directory again; logs a change. Out of file descriptors
    /// (or memory), the configuration in force stays: a flood of
    /// connections must not take the node's network away.
    pub fn reload(&self) {
        let new = match config::try_load_dir(&self.settings.conf_dir) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(dir = %self.settings.conf_dir.display(), error = %e, "cannot read the CNI config directory; keeping the configuration in force");
                return;
            }
        };
        let mut cur = self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if **cur != new {
            log_loaded(&new);
            *cur = Arc::new(new);
        }
    }

    /// `Ok` when pods can get a network (for `NetworkReady`); with a CNI
    /// 1.1 configuration the plugins' STATUS must succeed too.
    pub fn network_status(&self) -> Result<(), String> {
        // The loaded config is shared (an Arc), not copied per call.
        let loaded = self.current();
        let list = match &*loaded {
            Loaded::Ready(l) => l,
            Loaded::NotReady(why) => return Err(why.clone()),
        };
        if list.has_status_and_gc() {
            for p in &list.plugins {
                let conf = plugin_config(p, list, None, None);
                self.invoke(p, &conf, "STATUS", "", "", &[])
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// What `crictl info` shows: directories, the network in force, pod
    /// CIDRs.
    pub fn describe(&self) -> Value {
        let network = match &*self.current() {
            Loaded::Ready(l) => serde_json::json!({
                "name": l.name,
                "cniVersion": l.cni_version,
                "file": l.source,
                "plugins": l.plugins.iter().map(|p| p.get("type").cloned().unwrap_or_default()).collect::<Vec<_>>(),
            }),
            Loaded::NotReady(why) => serde_json::json!({ "notReady": why }),
        };
        serde_json::json!({
            "confDir": self.settings.conf_dir,
            "binDirs": self.settings.bin_dirs,
            "network": network,
            "podCIDRs": *self.pod_cidrs.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        })
    }

    /// kubelet's pod CIDRs (UpdateRuntimeConfig), for plugins that take
    /// the `ipRanges` capability.
    pub fn set_pod_cidrs(&self, cidrs: Vec<String>) {
        *self
            .pod_cidrs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = cidrs;
    }

    fn cache_path(&self, pod_id: &str) -> PathBuf {
        self.cache_dir.join(format!("{pod_id}.json"))
    }

    fn write_cache(&self, pod_id: &str, a: &Attachment) -> Result<(), CniError> {
        let path = self.cache_path(pod_id);
        let err = |e: &dyn std::fmt::Display| CniError::Cache {
            path: path.clone(),
            reason: e.to_string(),
        };
        crate::store::make_dir(&self.cache_dir, crate::store::modes::PRIVATE)
            .map_err(|e| err(&e))?;
        let bytes = serde_json::to_vec(a).map_err(|e| err(&e))?;
        crate::store::write_atomic_mode(&path, &bytes, 0o600).map_err(|e| err(&e))
    }

    fn read_cache(&self, pod_id: &str) -> Result<Option<Attachment>, CniError> {
        let path = self.cache_path(pod_id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CniError::Cache {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CniError::Cache {
                path,
                reason: format!("unreadable: {e}"),
            })
    }

    /// Runs one plugin of a list.
    fn invoke(
        &self,
        plugin: &Map<String, Value>,
        conf: &Value,
        command: &str,
        container_id: &str,
        netns: &str,
        args: &[(String, String)],
    ) -> Result<Option<Value>, PluginError> {
        let ty = plugin.get("type").and_then(Value::as_str).unwrap_or("");
        exec::run(
            ty,
            conf,
            &Invocation {
                command,
                container_id,
                netns,
                ifname: IFNAME,
                args,
                path: &self.settings.bin_dirs,
                timeout: self.settings.plugin_timeout,
            },
        )
    }

    /// Attaches the pod to the network (ADD through the chain) and returns
    /// its IPs. On failure the attachment stays cached: the caller undoes it
    /// with [`Cni::teardown`] (DEL through the chain), once, so no address
    /// stays allocated.
    ///
    /// With `preferred_ips`, an ADD that fails (the address is taken, or
    /// outside the plugin's range) is undone and tried again without them.
    pub fn setup(&self, pod: PodRef) -> Result<Vec<IpAddr>, CniError> {
        if !pod.preferred_ips.is_empty() {
            match self.setup_asking(pod, pod.preferred_ips) {
                Ok(ips) => return Ok(ips),
                Err(e) => {
                    tracing::info!(pod = %pod.id, error = %e, "the requested IPs cannot be had; taking any");
                    self.teardown(pod.id)?;
                }
            }
        }
        self.setup_asking(pod, &[])
    }

    fn setup_asking(&self, pod: PodRef, ips: &[IpAddr]) -> Result<Vec<IpAddr>, CniError> {
        let loaded = self.current();
        let list = match &*loaded {
            Loaded::Ready(l) => l,
            Loaded::NotReady(why) => return Err(CniError::NotReady(why.clone())),
        };
        let cidrs = self
            .pod_cidrs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let capability_args =
            caps::capability_args(pod.config, &cidrs).map_err(|b| CniError::Invalid {
                field: b.field,
                reason: b.reason,
            })?;
        let meta = pod.config.metadata.clone().unwrap_or_default();
        let mut cni_args = vec![
            ("IgnoreUnknown".to_string(), "1".to_string()),
            ("K8S_POD_NAMESPACE".to_string(), meta.namespace),
            ("K8S_POD_NAME".to_string(), meta.name),
            ("K8S_POD_INFRA_CONTAINER_ID".to_string(), pod.id.to_string()),
            ("K8S_POD_UID".to_string(), meta.uid),
        ];
        if !ips.is_empty() {
            let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
            cni_args.push(("IP".to_string(), list.join(",")));
        }
        let mut att = Attachment {
            kind: CACHE_KIND.into(),
            container_id: pod.id.to_string(),
            if_name: IFNAME.into(),
            network_name: list.name.clone(),
            config: list.to_conflist(),
            cni_args,
            capability_args,
            netns: pod.netns.to_path_buf(),
            result: None,
        };
        // Cached before ADD: a daemon that dies mid-ADD still knows what
        // to DEL.
        self.write_cache(pod.id, &att)?;
        match self.add_chain(list, &att) {
            Ok(result) => {
                let ips = result.as_ref().map(result::pod_ips).unwrap_or_default();
                att.result = result;
                self.write_cache(pod.id, &att)?;
                Ok(ips)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn add_chain(
        &self,
        list: &NetworkList,
        att: &Attachment,
    ) -> Result<Option<Value>, PluginError> {
        let netns = att.netns.to_string_lossy();
        let mut prev: Option<Value> = None;
        for p in &list.plugins {
            let conf = plugin_config(p, list, prev.as_ref(), Some(&att.capability_args));
            if let Some(r) =
                self.invoke(p, &conf, "ADD", &att.container_id, &netns, &att.cni_args)?
            {
                prev = Some(r);
            }
        }
        Ok(prev)
    }

    /// Detaches the pod (DEL through the chain in reverse, with what ADD
    /// used). Nothing to do when the pod has no attachment; the cache
    /// entry goes only when DEL succeeded.
    pub fn teardown(&self, pod_id: &str) -> Result<(), CniError> {
        let Some(att) = self.read_cache(pod_id)? else {
            return Ok(());
        };
        let list = self.cached_list(pod_id, &att)?;
        // The netns is gone after a reboot (the pin file may stay, no
        // longer a namespace): plugins are then called with an empty
        // CNI_NETNS, as the spec asks, to free what they hold.
        let netns = if is_namespace(&att.netns) {
            att.netns.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let prev = att.result.as_ref().filter(|_| list.has_check());
        for p in list.plugins.iter().rev() {
            let conf = plugin_config(p, &list, prev, Some(&att.capability_args));
            self.invoke(p, &conf, "DEL", &att.container_id, &netns, &att.cni_args)?;
        }
        match std::fs::remove_file(self.cache_path(pod_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CniError::Cache {
                path: self.cache_path(pod_id),
                reason: e.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// The configuration list an attachment was made with.
    fn cached_list(&self, pod_id: &str, att: &Attachment) -> Result<NetworkList, CniError> {
        let path = self.cache_path(pod_id);
        NetworkList::parse(
            &serde_json::to_vec(&att.config).unwrap_or_default(),
            false,
            &path,
        )
        .map_err(|reason| CniError::Cache { path, reason })
    }

    /// Whether the pod has an attachment that DEL has not removed yet.
    pub fn attached(&self, pod_id: &str) -> bool {
        self.cache_path(pod_id).exists()
    }

    /// Whether a verbose PodSandboxStatus should run [`Cni::check`].
    pub fn check_on_status(&self) -> bool {
        self.settings.check_on_status
    }

    /// CHECK through the chain (CNI ≥ 0.4, unless the list disables it):
    /// `Ok(false)` when there is nothing to check.
    pub fn check(&self, pod_id: &str) -> Result<bool, CniError> {
        let Some(att) = self.read_cache(pod_id)? else {
            return Ok(false);
        };
        let Some(result) = att.result.as_ref() else {
            return Ok(false);
        };
        let list = self.cached_list(pod_id, &att)?;
        if !list.has_check() || list.disable_check {
            return Ok(false);
        }
        let netns = att.netns.to_string_lossy();
        for p in &list.plugins {
            let conf = plugin_config(p, &list, Some(result), Some(&att.capability_args));
            self.invoke(p, &conf, "CHECK", &att.container_id, &netns, &att.cni_args)?;
        }
        Ok(true)
    }

    /// CNI 1.1 GC: tells the plugins which attachments are still valid so
    /// they free the rest (addresses of pods lost in a crash). Only with a
    /// 1.1 configuration that does not disable it.
    pub fn gc(&self, valid_pods: &[String]) -> Result<(), CniError> {
        let loaded = self.current();
        let list = match &*loaded {
            Loaded::Ready(l) if l.has_status_and_gc() && !l.disable_gc => l,
            _ => return Ok(()),
        };
        let valid: Vec<Value> = valid_pods
            .iter()
            .map(|id| serde_json::json!({"containerID": id, "ifname": IFNAME}))
            .collect();
        for p in &list.plugins {
            let mut conf = plugin_config(p, list, None, None);
            conf["cni.dev/valid-attachments"] = Value::Array(valid.clone());
            self.invoke(p, &conf, "GC", "", "", &[])?;
        }
        Ok(())
    }

    /// The pods with an attachment in the cache.
    pub fn cached_pods(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.cache_dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .collect()
    }
}

/// Whether `path` is a namespace file (nsfs), not a leftover mount point.
fn is_namespace(path: &Path) -> bool {
    use nix::sys::statfs::{statfs, NSFS_MAGIC};
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// One plugin's stdin: its object with the list's name and version, the
/// previous result, and the capabilities it declares.
fn plugin_config(
    plugin: &Map<String, Value>,
    list: &NetworkList,
    prev: Option<&Value>,
    capability_args: Option<&Map<String, Value>>,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(p) = prev {
        conf.insert("prevResult".into(), p.clone());
    }
    if let Some(rc) = capability_args.and_then(|a| caps::runtime_config(plugin, a)) {
        conf.insert("runtimeConfig".into(), rc);
    }
    Value::Object(conf)
}

fn log_loaded(l: &Loaded) {
    match l {
        Loaded::Ready(list) => tracing::info!(
            network = %list.name,
            version = %list.cni_version,
            file = %list.source.display(),
            "CNI network config loaded"
        ),
        Loaded::NotReady(why) => tracing::info!(reason = %why, "no CNI network config"),
    }
}

/// The watcher: reload on any change in the directory (inotify), and
/// every few seconds anyway (the directory may not exist yet, or be
/// replaced). Ends when the manager is dropped.
fn watch(cni: &Weak<Cni>, dir: &Path) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use std::os::fd::AsFd;
    let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok();
    let mut watching = false;
    loop {
        if let Some(ino) = &ino {
            if !watching {
                let flags = AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_ATTRIB
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF;
                watching = ino.add_watch(dir, flags).is_ok();
            }
            let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
            let timeout = if watching { 5000u16 } else { 1000 };
            if matches!(poll(&mut fds, PollTimeout::from(timeout)), Ok(n) if n > 0) {
                // Let a writer finish (editors write, rename, chmod).
                std::thread::sleep(Duration::from_millis(50));
                while let Ok(events) = ino.read_events() {
                    if events.is_empty() {
                        break;
                    }
                    if events.iter().any(|e| {
                        e.mask.intersects(
                            AddWatchFlags::IN_IGNORED
                                | AddWatchFlags::IN_DELETE_SELF
                                | AddWatchFlags::IN_MOVE_SELF,
                        )
                    }) {
                        watching = false;
                    }
                }
            }
        } else {
            std::thread::sleep(Duration::from_secs(2));
        }
        match cni.upgrade() {
            Some(c) => c.reload(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests;
