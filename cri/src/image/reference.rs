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
        let parts = grammar::split(name).map_err(|e| bad(e.to_string()))?;
        let digest = parts.digest.map(Digest::parse).transpose()?;
        let tag = match (parts.tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(ImageName {
            registry: parts.registry,
            repository: parts.repository,
            tag,
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

/// The distribution reference grammar (github.com/distribution/reference:
/// what Docker, containerd and CRI-O accept), checked by hand. The regular
/// expression oci-spec compiles for it (Unicode `\w`, a 20 MiB size limit)
/// kept 12 MiB of heap for the life of the daemon after its first parse —
/// more than the rest of the idle daemon.
mod grammar {
    /// A name taken apart and normalised (Docker Hub's defaults applied).
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct Parts<'a> {
        pub registry: String,
        pub repository: String,
        pub tag: Option<&'a str>,
        pub digest: Option<&'a str>,
    }

    /// Longest repository path (after normalisation), as Docker's.
    const MAX_REPOSITORY: usize = 255;
    /// Longest tag.
    const MAX_TAG: usize = 128;

    /// `[domain/]path[:tag][@digest]`, normalised: a first component that
    /// is not a host (no `.` or `:`, not `localhost`) is part of a Docker
    /// Hub path; a Docker Hub path of one component is under `library/`.
    pub(super) fn split(name: &str) -> Result<Parts<'_>, &'static str> {
        let (rest, digest) = match name.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (name, None),
        };
        if let Some(d) = digest {
            check_digest(d)?;
        }
        // The tag follows the last ':' after the last '/' (a port's ':'
        // comes before a '/').
        let last = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last..].rfind(':') {
            Some(i) => (&rest[..last + i], Some(&rest[last + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            check_tag(t)?;
        }
        let components: Vec<&str> = path.split('/').collect();
        let host_like = |c: &str| c.contains('.') || c.contains(':') || c == "localhost";
        let (mut registry, path) = match components.as_slice() {
            [first, _, ..] if host_like(first) => {
                check_domain(first)?;
                (first.to_string(), &components[1..])
            }
            _ => ("docker.io".to_string(), &components[..]),
        };
        for c in path {
            check_path_component(c)?;
        }
        if registry == "index.docker.io" {
            registry = "docker.io".into();
        }
        let mut repository = path.join("/");
        if registry == "docker.io" && path.len() == 1 {
            repository = format!("library/{repository}");
        }
        if repository.len() > MAX_REPOSITORY {
            return Err("repository name longer than 255 characters");
        }
        Ok(Parts {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `host[:port]`: dot-separated labels of letters, digits and inner
    /// hyphens; a port of digits.
    fn check_domain(d: &str) -> Result<(), &'static str> {
        let (host, port) = match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        };
        if let Some(p) = port {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err("invalid registry port");
            }
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        match host.split('.').all(label_ok) {
            true => Ok(()),
            false => Err("invalid registry host"),
        }
    }

    /// `[a-z0-9]+` runs joined by `.`, `_`, `__` or one or more `-`.
    fn check_path_component(c: &str) -> Result<(), &'static str> {
        if c.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err("repository name must be lowercase");
        }
        const BAD: &str = "invalid repository path component (lower-case letters and digits, \
                           joined by '.', '_', '__' or '-')";
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let b = c.as_bytes();
        let mut i = 0;
        loop {
            // A run of letters and digits...
            let start = i;
            while i < b.len() && alnum(b[i]) {
                i += 1;
            }
            if i == start {
                return Err(BAD);
            }
            if i == b.len() {
                return Ok(());
            }
            // ...then a separator before the next run.
            match (b[i], b.get(i + 1)) {
                (b'_', Some(b'_')) => i += 2,
                (b'.' | b'_', _) => i += 1,
                (b'-', _) => {
                    while i < b.len() && b[i] == b'-' {
                        i += 1;
                    }
                }
                _ => return Err(BAD),
            }
        }
    }

    /// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    fn check_tag(t: &str) -> Result<(), &'static str> {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let ok = t.len() <= MAX_TAG
            && t.bytes().next().is_some_and(word)
            && t.bytes().all(|b| word(b) || b == b'.' || b == b'-');
        match ok {
            true => Ok(()),
            false => Err("invalid tag (letters, digits, '_', '.', '-'; at most 128)"),
        }
    }

    /// `algorithm:hex`: the algorithm's `[A-Za-z][A-Za-z0-9]*` parts joined
    /// by `-`, `_`, `+` or `.`, then at least 32 hex digits. (Which
    /// algorithms berth takes is [`super::Digest::parse`]'s business.)
    fn check_digest(d: &str) -> Result<(), &'static str> {
        const BAD: &str = "invalid digest (algorithm:hex)";
        let (algorithm, hex) = d.split_once(':').ok_or(BAD)?;
        let part_ok = |p: &str| {
            p.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && p.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(part_ok);
        match algorithm_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            true => Ok(()),
            false => Err(BAD),
        }
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
    fn the_distribution_grammar_and_docker_hub_defaults() {
        // Cases of distribution/reference's and oci-spec's own tests.
        for (given, want) in [
            ("test.com:tag", "docker.io/library/test.com:tag"),
            ("test.com:5000", "docker.io/library/test.com:5000"),
            ("test.com/repo:tag", "test.com/repo:tag"),
            ("test:5000/repo", "test:5000/repo:latest"),
            (
                "lowercase:Uppercase",
                "docker.io/library/lowercase:Uppercase",
            ),
            (
                "sub-dom1.foo.com/bar/baz/quux",
                "sub-dom1.foo.com/bar/baz/quux:latest",
            ),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com",
                "b.gcr.io/test.example.com/my-app:test.example.com",
            ),
            (
                "xn--n3h.com/myimage:xn--n3h.com",
                "xn--n3h.com/myimage:xn--n3h.com",
            ),
            ("foo_bar.com:8080", "docker.io/library/foo_bar.com:8080"),
            ("foo/foo_bar.com:8080", "docker.io/foo/foo_bar.com:8080"),
            ("opensuse/leap:15.3", "docker.io/opensuse/leap:15.3"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("a__b/c---d/e.f_g:_x", "docker.io/a__b/c---d/e.f_g:_x"),
        ] {
            assert_eq!(
                ImageName::parse(given).unwrap().to_string(),
                want,
                "{given}"
            );
        }
        let long_tag = format!("a:{}", "t".repeat(129));
        let long_name = "a".repeat(256);
        let no_name = format!("@{D}");
        for bad in [
            ":justtag",
            &no_name,
            "Uppercase:tag",
            "test:5000/Uppercase/lowercase:tag",
            "Uppercase/lowercase:tag",
            "aa/asdf$$^/aa",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "a//b",
            "a/",
            "-host.com/a",
            "host.com:/a",
            "host.com:50x/a",
            "a:-tag",
            "a:t\u{e9}g",
            &long_tag,
            &long_name,
            "a@sha256:ffff",
            "a@1sha:0123456789abcdef0123456789abcdef",
            "a@sha256:0123456789abcdef0123456789abcdeX",
            "a@sha512:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(ImageName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            ImageName::parse("Up/x").unwrap_err().to_string(),
            "invalid image reference \"Up/x\": repository name must be lowercase"
        );
        let longest = format!("{}:{}", "a".repeat(247), "t".repeat(128));
        assert!(ImageName::parse(&longest).is_ok());
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
