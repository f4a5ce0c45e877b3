//! Entry paths: split into components and held to the kernel's limits.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Linux's `PATH_MAX`, which counts the terminating NUL: an absolute path inside the
/// container, `/` + the entry path, may be at most 4095 bytes long. A longer path could not
/// be opened inside the container anyway, and the bound keeps every structure that holds
/// a path, and the depth of any directory recursion, small (at most 2,047 components).
pub(super) const PATH_MAX: usize = 4096;
/// Linux's `NAME_MAX`: the longest name of one directory entry.
pub(super) const NAME_MAX: usize = 255;

/// Why an entry path is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PathError {
    /// `..`, an absolute path or a NUL byte: it could name something outside `dest`.
    Unsafe(&'static str),
    /// Longer than the kernel allows; the length in bytes of the path as the container would
    /// see it (`/` + the normalised path), or of the one component over `NAME_MAX`.
    TooLong { what: &'static str, len: usize },
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathError::Unsafe(reason) => f.write_str(reason),
            PathError::TooLong { what: "name", len } => write!(
                f,
                "a path component of {len} bytes is longer than NAME_MAX ({NAME_MAX})"
            ),
            PathError::TooLong { len, .. } => write!(
                f,
                "the path is {len} bytes long; PATH_MAX ({PATH_MAX}, with its NUL) allows {}",
                PATH_MAX - 1
            ),
        }
    }
}

/// Splits an entry path into its components, dropping empty and `.` ones (so `./a//b/`
/// is `a/b`). Absolute paths, `..` and NUL bytes are refused, and so are paths the kernel
/// could not resolve: a component over `NAME_MAX`, or `/a/b` over `PATH_MAX` with its NUL.
pub(super) fn split_path(raw: &[u8]) -> Result<Vec<&OsStr>, PathError> {
    if raw.first() == Some(&b'/') {
        return Err(PathError::Unsafe("absolute path"));
    }
    if raw.contains(&0) {
        return Err(PathError::Unsafe("path contains a NUL byte"));
    }
    let mut comps = Vec::new();
    // The length of "/" + the components joined by "/".
    let mut len = 0usize;
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(PathError::Unsafe("path contains a `..` component")),
            _ if comp.len() > NAME_MAX => {
                return Err(PathError::TooLong {
                    what: "name",
                    len: comp.len(),
                })
            }
            _ => {
                len = len.saturating_add(1 + comp.len());
                comps.push(OsStr::from_bytes(comp));
            }
        }
    }
    if len >= PATH_MAX {
        return Err(PathError::TooLong { what: "path", len });
    }
    Ok(comps)
}

/// The components joined by `/`, lossily decoded, for messages.
pub(super) fn display_path(comps: &[&OsStr]) -> String {
    let joined: Vec<&[u8]> = comps.iter().map(|c| c.as_bytes()).collect();
    String::from_utf8_lossy(&joined.join(&b'/')).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_path_rules() {
        let ok = |p: &[u8]| split_path(p).map(|c| display_path(&c));
        assert_eq!(ok(b"./a//b/./c/").unwrap(), "a/b/c");
        assert_eq!(ok(b"./").unwrap(), "");
        assert!(ok(b"a/..").is_err());
        assert!(ok(b"/a").is_err());
        assert!(ok(b"a\0b").is_err());
    }

    #[test]
    fn kernel_length_limits() {
        // "/" + 4094 bytes + NUL is PATH_MAX: the longest path the kernel resolves.
        let mut p = vec![b'a'; 200];
        for _ in 0..19 {
            p.push(b'/');
            p.extend_from_slice(&[b'a'; 200]);
        }
        p.push(b'/');
        p.resize(4094, b'z');
        assert_eq!(split_path(&p).map(|c| c.len()), Ok(21));
        // ... and one byte more is refused, as open(2) would (ENAMETOOLONG).
        p.push(b'b');
        assert_eq!(
            split_path(&p),
            Err(PathError::TooLong {
                what: "path",
                len: 4096
            })
        );
        // "./" prefixes and doubled slashes do not count: they are not part of the path.
        let mut dotted = b"./".repeat(100);
        dotted.extend_from_slice(&p[..4094]);
        assert!(split_path(&dotted).is_ok());
        // The deepest path there is, 2047 one-byte components.
        let deep = b"a/".repeat(2047);
        assert_eq!(split_path(&deep).map(|c| c.len()), Ok(2047));
        assert!(split_path(&b"a/".repeat(2048)).is_err());
        // NAME_MAX per component.
        assert!(split_path(&[b'n'; 255]).is_ok());
        let e = split_path(&[b'n'; 256]).unwrap_err();
        assert!(e.to_string().contains("NAME_MAX"), "{e}");
    }
}
