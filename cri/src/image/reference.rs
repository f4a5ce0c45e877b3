//! Image names and digests.
//!
//! Names are normalised the way Docker, containerd and CRI-O do, so that what
//! kubelet sends (`busybox`, `nginx:1.27`, `registry:5000/app@sha256:…`) maps
//! onto one canonical form: `docker.io/library/busybox:latest`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name or digest was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// The image name does not parse as a distribution reference.
    #[error("invalid image reference {name:?}: {reason}")]
    Name {
        /// The name as given.
        name: String,
        /// What the parser said.
        reason: String,
    },
    /// A digest that is not `sha256:` followed by 64 lower-case hex digits.
    #[error("invalid digest {0:?}: only sha256:<64 hex digits> is supported")]
    Digest(String),
}

/// A validated `sha256:<64 lower-case hex>` digest. Its hex part is safe to use
/// as a file name: nothing that could leave a directory is ever constructed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses and validates `sha256:<hex>`.
    pub fn parse(s: &str) -> Result<Digest, ReferenceError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| ReferenceError::Digest(s.to_string()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ReferenceError::Digest(s.to_string()));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_sha256(sha2::Sha256::digest(data).into())
    }

    /// From a finished sha256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hash)))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The whole `sha256:<hex>` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = ReferenceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

/// A normalised image name: registry, repository, and a tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageName {
    /// Parses and normalises a reference. A name with neither tag nor digest
    /// gets `:latest`; a name with both keeps both (the digest wins when pulling).
    pub fn parse(name: &str) -> Result<ImageName, ReferenceError> {
        let bad = |reason: String| ReferenceError::Name {
            name: name.to_string(),
            reason,
        };
        if name.trim() != name || name.is_empty() {
            return Err(bad("empty or surrounded by whitespace".into()));
        }
        let r = oci_client::Reference::try_from(name).map_err(|e| bad(e.to_string()))?;
        // Docker: "repository name must be lowercase" (the registry host may
        // have capitals; the path may not).
        if r.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase".into()));
        }
        let digest = r.digest().map(Digest::parse).transpose()?;
        Ok(ImageName {
            registry: r.registry().to_string(),
            repository: r.repository().to_string(),
            tag: r.tag().map(str::to_string),
            digest,
        })
    }

    /// The registry host (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, reported in `Image.repo_tags`.
    pub fn repo_tag(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.repo()))
    }

    /// `registry/repository@digest` for a manifest digest, reported in
    /// `Image.repo_digests`.
    pub fn repo_digest(&self, manifest: &Digest) -> String {
        format!("{}@{manifest}", self.repo())
    }

    /// The same name pinned to `digest` (tag dropped): what is pulled once a
    /// tag has been resolved, so every later request sees one manifest.
    pub fn with_digest(&self, digest: Digest) -> ImageName {
        ImageName {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The oci-client reference for this name.
    pub fn to_oci(&self) -> oci_client::Reference {
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => oci_client::Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
                d.to_string(),
            ),
            (_, Some(d)) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.to_string(),
            ),
            (t, None) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repo())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn short_names_normalise_like_docker() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("quay.io/coreos/etcd:v3", "quay.io/coreos/etcd:v3"),
            ("localhost/app", "localhost/app:latest"),
            ("127.0.0.1:5000/app:v1", "127.0.0.1:5000/app:v1"),
            ("user/app", "docker.io/user/app:latest"),
        ] {
            assert_eq!(
                ImageName::parse(given).unwrap().to_string(),
                want,
                "{given}"
            );
        }
    }

    #[test]
    fn digest_references() {
        let n = ImageName::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(n.tag(), None);
        assert_eq!(n.digest().unwrap().as_str(), D);
        assert_eq!(n.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(
            n.repo_digest(n.digest().unwrap()),
            format!("docker.io/library/busybox@{D}")
        );
        let both = ImageName::parse(&format!("busybox:1@{D}")).unwrap();
        assert_eq!(both.tag(), Some("1"));
        assert_eq!(both.to_oci().digest(), Some(D));
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            " busybox",
            "UPPER/case",
            "a@sha256:abc",
            "a:b:c",
            "a@md5:0123",
        ] {
            assert!(ImageName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn digests_are_validated() {
        assert!(Digest::parse(D).is_ok());
        assert!(Digest::parse("sha256:../../etc").is_err());
        assert!(Digest::parse(&D.to_uppercase()).is_err());
        assert!(Digest::parse(&D[..70]).is_err());
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
