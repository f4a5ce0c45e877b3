//! What a container takes from its image: an overlay root filesystem (the
//! image's unpacked layers plus a fresh writable upper dir) and the image
//! config that CreateContainer merges with the request.

use std::collections::BTreeMap;
use std::path::PathBuf;

use berth_core::config::OverlayRootfs;
use berth_core::ContainerId;
use serde::Deserialize;

use super::error::ImageError;
use super::store::{ImageRecord, ImageStore};
use crate::store::{grant_traversal, make_dir, modes};

/// The parts of an OCI image config (`config` object) a container uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=value` strings.
    pub env: Vec<String>,
    /// `WorkingDir` (empty: `/`).
    pub working_dir: String,
    /// `User`: `uid`, `uid:gid`, `name` or `name:group`.
    pub user: String,
    /// `StopSignal` (e.g. `SIGTERM`), empty when unset.
    pub stop_signal: String,
    /// `Volumes` keys.
    pub volumes: Vec<String>,
    /// `ExposedPorts` keys (`8080/tcp`).
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct RawConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    stop_signal: Option<String>,
    volumes: Option<BTreeMap<String, serde_json::Value>>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawImage {
    #[serde(default)]
    config: Option<RawConfig>,
}

impl ImageConfig {
    /// Parses an image config blob.
    pub fn parse(blob: &[u8]) -> Result<ImageConfig, ImageError> {
        let raw: RawImage = serde_json::from_slice(blob).map_err(|e| {
            ImageError::Internal(format!("stored image config does not parse: {e}"))
        })?;
        let c = raw.config.unwrap_or_default();
        Ok(ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            stop_signal: c.stop_signal.unwrap_or_default(),
            volumes: c.volumes.unwrap_or_default().into_keys().collect(),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
            labels: c.labels.unwrap_or_default(),
        })
    }

    /// The numeric uid of `User` when it is numeric (CRI `Image.uid`), or the
    /// user name (CRI `Image.username`).
    pub fn uid_or_name(&self) -> (Option<i64>, String) {
        uid_or_name(&self.user)
    }
}

/// [`ImageConfig::uid_or_name`] for a `User` string.
pub fn uid_or_name(user: &str) -> (Option<i64>, String) {
    let user = user.split(':').next().unwrap_or("");
    match user.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

/// A container's share of an image.
#[derive(Debug, Clone)]
pub struct ContainerImage {
    /// The image record.
    pub image: ImageRecord,
    /// The overlay for runtime-core's `Config::overlay`.
    pub rootfs: OverlayRootfs,
    /// The image config to merge with the CRI request.
    pub config: ImageConfig,
}

impl ImageStore {
    /// The config of a stored image.
    pub fn image_config(&self, rec: &ImageRecord) -> Result<ImageConfig, ImageError> {
        ImageConfig::parse(&self.blobs().read(&rec.id)?)
    }

    /// Prepares `container`'s root filesystem from `image` (id, tag or
    /// digest): leases the image so its layers stay, and creates a fresh
    /// `upper` and `work` under `<root>/containers/<id>/`.
    pub fn prepare_container(
        &self,
        image: &str,
        container: &ContainerId,
    ) -> Result<ContainerImage, ImageError> {
        let rec = self
            .resolve(image)
            .ok_or_else(|| ImageError::NotPresent(image.to_string()))?;
        let config = self.image_config(&rec)?;
        let dir = self.container_dir(container);
        if dir.exists() {
            // Left by a create that crashed before it was recorded.
            std::fs::remove_dir_all(&dir).map_err(|e| ImageError::io(&dir, e))?;
        }
        // The container's writable layer is root's alone (what a root
        // container writes there, setuid binaries included, must not be
        // usable by host users); its `/` is the upper dir's mode, as an
        // image's usual root.
        make_dir(&dir, modes::PRIVATE).map_err(|e| ImageError::io(&dir, e))?;
        let upperdir = dir.join("upper");
        let workdir = dir.join("work");
        for (d, mode) in [(&upperdir, 0o755), (&workdir, modes::PRIVATE)] {
            make_dir(d, mode).map_err(|e| ImageError::io(d, e))?;
        }
        let mut lowerdirs = self.layer_dirs(&rec);
        if lowerdirs.is_empty() {
            // overlayfs needs a lower dir; an image without layers gets an empty one.
            let empty = dir.join("empty");
            std::fs::create_dir_all(&empty).map_err(|e| ImageError::io(&empty, e))?;
            lowerdirs.push(empty);
        }
        self.lease(&rec.id, container)?;
        Ok(ContainerImage {
            image: rec,
            rootfs: OverlayRootfs {
                lowerdirs,
                upperdir,
                workdir,
            },
            config,
        })
    }

    /// `<root>/containers/<id>`: the container's `upper` (its writable
    /// layer) and `work` dirs.
    /// Lets the init of a user-namespaced container (whose root is host gid
    /// `gid`) look up its upper and work dirs: the container's dir becomes
    /// group-searchable by `gid` alone (0710).
    pub fn grant_traversal(&self, container: &ContainerId, gid: u32) -> Result<(), ImageError> {
        let dir = self.container_dir(container);
        grant_traversal(&dir, gid).map_err(|e| ImageError::io(&dir, e))
    }

    pub fn container_dir(&self, container: &ContainerId) -> PathBuf {
        self.root().join("containers").join(container.as_str())
    }

    /// Deletes a container's writable layer and ends its lease on the image.
    pub fn remove_container(&self, container: &ContainerId) -> Result<(), ImageError> {
        let dir = self.container_dir(container);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ImageError::io(&dir, e))
            }
            _ => {}
        }
        self.release(container)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_are_read() {
        let blob = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["A=1"],"WorkingDir":"/tmp",
            "User":"65534:65534","StopSignal":"SIGQUIT","Volumes":{"/data":{}},"ExposedPorts":{"80/tcp":{}},
            "Labels":{"k":"v"}}}"#;
        let c = ImageConfig::parse(blob).unwrap();
        assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(c.cmd, ["echo hi"]);
        assert_eq!(c.working_dir, "/tmp");
        assert_eq!(c.stop_signal, "SIGQUIT");
        assert_eq!(c.volumes, ["/data"]);
        assert_eq!(c.exposed_ports, ["80/tcp"]);
        assert_eq!(c.uid_or_name(), (Some(65534), String::new()));
        let none = ImageConfig::parse(br#"{"rootfs":{"diff_ids":[]}}"#).unwrap();
        assert_eq!(none, ImageConfig::default());
        let named = ImageConfig {
            user: "nginx:nginx".into(),
            ..Default::default()
        };
        assert_eq!(named.uid_or_name(), (None, "nginx".into()));
    }
}
