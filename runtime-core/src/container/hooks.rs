//! The container's side of the OCI hooks ([`crate::hooks`]): its state as
//! hooks see it, its bundle, and the hooks the runtime runs after start and
//! at destroy.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{Container, State};
use crate::hooks::{self, HookState};

/// The bundle's config file, for hooks that read the container's spec
/// from `<bundle>/config.json` (GPU toolkits find the rootfs there).
pub(crate) const BUNDLE_CONFIG: &str = "config.json";

/// Writes `<dir>/config.json` when the container has hooks: the OCI
/// version, `root` (the rootfs on the host), its annotations and hooks.
/// Private (0600), like the rest of the state.
pub(super) fn write_bundle(dir: &Path, state: &State) -> std::io::Result<()> {
    let c = &state.config;
    if c.hooks.is_empty() {
        return Ok(());
    }
    let spec = serde_json::json!({
        "ociVersion": hooks::OCI_VERSION,
        "root": {"path": c.rootfs, "readonly": c.readonly_rootfs},
        "hostname": c.hostname,
        "annotations": c.annotations,
        "hooks": c.hooks,
    });
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(BUNDLE_CONFIG))?;
    f.write_all(spec.to_string().as_bytes())
}

impl Container {
    /// The container's state for its hooks: `status`, and `pid` as the
    /// hook sees it.
    pub(super) fn hook_state(&self, status: &str, pid: Option<i32>) -> HookState {
        let mut s = HookState::new(self.state.id.as_str(), &self.dir, status, pid);
        s.annotations = self.state.config.annotations.clone();
        s
    }

    /// The `poststart` hooks, once the process runs. Their failures are
    /// logged, as the runtime spec says, and change nothing.
    pub(super) fn poststart_hooks(&self) {
        let pid = self.state.init.as_ref().map(|i| i.pid);
        self.report_hooks(
            "poststart",
            &self.state.config.hooks.poststart,
            "running",
            pid,
        );
    }

    /// The `poststop` hooks, when the container is destroyed; logged too.
    pub(super) fn poststop_hooks(&self) {
        self.report_hooks(
            "poststop",
            &self.state.config.hooks.poststop,
            "stopped",
            None,
        );
    }

    #[inline(never)]
    #[cold]
    fn report_hooks(
        &self,
        point: &'static str,
        list: &[hooks::Hook],
        status: &str,
        pid: Option<i32>,
    ) {
        if list.is_empty() {
            return;
        }
        let state = self.hook_state(status, pid);
        for e in hooks::run_reporting(list.iter().map(|h| (point, h)), &state) {
            tracing::warn!(container = %self.state.id, error = %e, "{point} hook failed");
        }
    }
}
