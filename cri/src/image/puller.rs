//! The daemon's puller: one pull of a name at a time, the store's garbage
//! collection held off while blobs and layers are written, and the image
//! recorded when they are all there. The fetch itself ([`super::pull`])
//! runs in a pull helper process ([`super::helper`]) when the daemon is
//! given one (`berth serve` is), else in this process.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use oci_client::secrets::RegistryAuth;

use super::error::ImageError;
use super::helper::{HelperCommand, PullHelper};
use super::hosts::RegistryHosts;
use super::pull::{FetchStats, Fetcher, KeyedLocks, PullOptions};
use super::reference::ImageName;
use super::store::{ImageRecord, ImageStore};

/// Where fetches run.
enum Engine {
    InProcess(Fetcher),
    Helper(PullHelper),
}

/// The puller. Cheap to share (`Arc`); pulls run concurrently, the same
/// name's one after another (the second finds the work done).
pub struct Puller {
    store: Arc<ImageStore>,
    engine: Engine,
    pulls: KeyedLocks,
    downloads: AtomicU64,
    resumes: AtomicU64,
    downloaded_bytes: AtomicU64,
}

impl Puller {
    /// A puller writing into `store`, fetching in this process.
    pub fn new(store: Arc<ImageStore>, hosts: RegistryHosts, opts: PullOptions) -> Puller {
        let fetcher = Fetcher::new(store.content().clone(), hosts, opts);
        Puller::with_engine(store, Engine::InProcess(fetcher))
    }

    /// A puller writing into `store` whose fetches each run in a helper
    /// process started with `cmd`.
    pub fn with_helper(
        store: Arc<ImageStore>,
        cmd: HelperCommand,
        registry_config_dir: Option<PathBuf>,
        opts: PullOptions,
    ) -> Puller {
        let helper = PullHelper::new(
            cmd,
            store.content().clone(),
            store.root().to_path_buf(),
            registry_config_dir,
            opts,
        );
        Puller::with_engine(store, Engine::Helper(helper))
    }

    fn with_engine(store: Arc<ImageStore>, engine: Engine) -> Puller {
        Puller {
            store,
            engine,
            pulls: KeyedLocks::default(),
            downloads: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            downloaded_bytes: AtomicU64::new(0),
        }
    }

    /// Pulls `name` and records it; returns the record. `auth` is the
    /// request's credentials; with `Anonymous` the node's auth file (if
    /// configured and present) supplies them.
    pub async fn pull(
        &self,
        name: &ImageName,
        auth: &RegistryAuth,
    ) -> Result<ImageRecord, ImageError> {
        let _same_name = self.pulls.lock(&name.to_string()).await;
        let _gc_hold = self.store.begin_pull();
        let (fetched, stats) = match &self.engine {
            Engine::InProcess(f) => f.fetch(name, auth).await,
            Engine::Helper(h) => h.fetch(name, auth).await,
        };
        self.count(stats);
        self.store.add(fetched?)
    }

    fn count(&self, s: FetchStats) {
        self.downloads.fetch_add(s.downloads, Ordering::Relaxed);
        self.resumes.fetch_add(s.resumes, Ordering::Relaxed);
        self.downloaded_bytes.fetch_add(s.bytes, Ordering::Relaxed);
    }

    /// Number of blob downloads started so far (for tests and metrics).
    pub fn downloads(&self) -> u64 {
        self.downloads.load(Ordering::Relaxed)
    }

    /// Bytes of blobs downloaded and verified so far (for metrics).
    pub fn downloaded_bytes(&self) -> u64 {
        self.downloaded_bytes.load(Ordering::Relaxed)
    }

    /// Blob downloads continued from where they broke (a registry answering
    /// a range request past byte 0 with 206), for tests and metrics.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }

    /// The largest peak resident memory of a pull helper so far, KiB (0
    /// when fetches run in this process or none ran yet).
    pub fn helper_peak_rss_kib(&self) -> u64 {
        match &self.engine {
            Engine::Helper(h) => h.peak_rss_kib(),
            Engine::InProcess(_) => 0,
        }
    }
}
