//! What berth reads from manifests, indexes and image configs (the OCI image
//! spec's fields it uses), and the choice of this node's platform from an
//! index.

use serde::Deserialize;

use super::error::ImageError;
use super::reference::ImageName;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The manifest media types a pull asks for.
pub(crate) const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// A content descriptor (OCI image spec), the fields berth reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An index entry's platform.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, `v7`, ...
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform berth runs on, in OCI/Go terms.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// Whether an index entry for `other` runs here. A missing variant
    /// matches; arm64's default variant is v8 (containerd's platforms.Only).
    pub fn accepts(&self, other: &Platform) -> bool {
        let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_deref()) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_string),
        };
        self.os == other.os
            && self.architecture == other.architecture
            && (other.variant.is_none() || norm(self) == norm(other))
    }
}

/// An image manifest or an index (Docker's or OCI's), the fields berth
/// reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    #[serde(default)]
    pub(crate) media_type: Option<String>,
    #[serde(default)]
    pub(crate) config: Option<Descriptor>,
    #[serde(default)]
    pub(crate) layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub(crate) manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub(crate) annotations: std::collections::BTreeMap<String, String>,
}

/// An image config's `rootfs`.
#[derive(Debug, Deserialize)]
pub(crate) struct ConfigRootfs {
    #[serde(default)]
    pub(crate) diff_ids: Vec<String>,
}

/// An image config, the part a pull checks against the manifest.
#[derive(Debug, Deserialize)]
pub(crate) struct ImageConfigBlob {
    pub(crate) rootfs: ConfigRootfs,
}

/// The entry of `index` for `platform`, or NotFound naming the platforms
/// the index has. An entry for the platform wins; without one, the first
/// entry that has no platform and is itself an index (an index of indexes
/// need not repeat their platforms; containerd follows such entries too).
/// An image manifest without a platform is not taken: nothing says it runs
/// here.
pub(crate) fn choose_platform(
    name: &ImageName,
    index: &Manifest,
    platform: &Platform,
) -> Result<Descriptor, ImageError> {
    let entries = index.manifests.as_deref().unwrap_or_default();
    entries
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| platform.accepts(p)))
        .or_else(|| {
            entries
                .iter()
                .find(|m| m.platform.is_none() && is_index(Some(&m.media_type)))
        })
        .cloned()
        .ok_or_else(|| {
            let have: Vec<String> = entries
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect();
            ImageError::NotFound {
                image: name.to_string(),
                reason: format!(
                    "no manifest for platform {}/{} in the index (it has: {})",
                    platform.os,
                    platform.architecture,
                    have.join(", ")
                ),
            }
        })
}

pub(crate) fn is_index(media_type: Option<&str>) -> bool {
    matches!(media_type, Some(OCI_INDEX | DOCKER_LIST))
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    name: &ImageName,
    what: &str,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Manifest {
        image: name.to_string(),
        reason: format!("invalid {what}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str, v: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: v.map(str::to_string),
        }
    }

    #[test]
    fn platform_matching() {
        let amd = p("linux", "amd64", None);
        assert!(amd.accepts(&p("linux", "amd64", None)));
        assert!(!amd.accepts(&p("linux", "arm64", Some("v8"))));
        assert!(!amd.accepts(&p("windows", "amd64", None)));
        let arm = p("linux", "arm64", Some("v8"));
        assert!(arm.accepts(&p("linux", "arm64", None)));
        assert!(arm.accepts(&p("linux", "arm64", Some("v8"))));
        assert!(!arm.accepts(&p("linux", "arm64", Some("v9"))));
        assert_eq!(Platform::host().os, "linux");
    }

    fn entry(media_type: &str, digest: char, platform: Option<Platform>) -> serde_json::Value {
        serde_json::json!({
            "mediaType": media_type,
            "digest": format!("sha256:{}", digest.to_string().repeat(64)),
            "size": 10,
            "platform": platform.map(|p| serde_json::json!({
                "os": p.os, "architecture": p.architecture, "variant": p.variant,
            })),
        })
    }

    fn index(entries: Vec<serde_json::Value>) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
        }))
        .unwrap()
    }

    #[test]
    fn the_platform_entry_wins_then_a_platformless_nested_index() {
        let name = ImageName::parse("r.example/x:1").unwrap();
        let amd = p("linux", "amd64", None);
        let arm = p("linux", "arm64", Some("v8"));
        let chosen = |i: &Manifest| {
            choose_platform(&name, i, &amd).map(|d| d.digest.chars().last().unwrap_or('?'))
        };
        // The platform's entry, whether a manifest or a nested index, even
        // after an entry without a platform.
        let both = index(vec![
            entry(OCI_INDEX, 'a', None),
            entry(OCI_MANIFEST, 'b', Some(amd.clone())),
        ]);
        assert_eq!(chosen(&both).unwrap(), 'b');
        let nested = index(vec![
            entry(OCI_MANIFEST, 'a', Some(arm.clone())),
            entry(DOCKER_LIST, 'c', Some(amd.clone())),
        ]);
        assert_eq!(chosen(&nested).unwrap(), 'c');
        // No entry for the platform: an index without one is followed ...
        let untagged = index(vec![
            entry(OCI_MANIFEST, 'a', Some(arm.clone())),
            entry(OCI_INDEX, 'd', None),
        ]);
        assert_eq!(chosen(&untagged).unwrap(), 'd');
        // ... an image manifest without one is not.
        let bare = index(vec![
            entry(OCI_MANIFEST, 'a', Some(arm)),
            entry(OCI_MANIFEST, 'e', None),
        ]);
        let err = chosen(&bare).unwrap_err();
        assert!(
            matches!(&err, ImageError::NotFound { reason, .. }
                if reason.contains("linux/amd64") && reason.contains("linux/arm64/v8")),
            "{err}"
        );
    }
}
