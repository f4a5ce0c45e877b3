//! The running kernel's version, for features that depend on it.

/// Whether the running kernel is at least `major.minor` (false when its
/// release cannot be read, as containerd does).
pub fn at_least(major: u32, minor: u32) -> bool {
    nix::sys::utsname::uname()
        .ok()
        .and_then(|uts| uts.release().to_str().and_then(parse_release))
        .is_some_and(|version| version >= (major, minor))
}

/// The running kernel's release string (`6.18.0-1-amd64`); empty when it
/// cannot be read.
pub fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `(major, minor)` of a kernel release string such as `6.18.0-1-amd64`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split('.');
    let number = |part: Option<&str>| -> Option<u32> {
        let part = part?;
        let end = part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(part.len());
        part[..end].parse().ok()
    };
    let major = number(parts.next())?;
    let minor = number(parts.next())?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::parse_release;

    #[test]
    fn kernel_release_parsing() {
        assert_eq!(parse_release("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_release("4.8"), Some((4, 8)));
        assert_eq!(parse_release("5.10.0+"), Some((5, 10)));
        assert_eq!(parse_release("5.4-rc1"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
        assert_eq!(parse_release("6"), None);
    }
}
