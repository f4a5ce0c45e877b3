//! Image-defined volumes (`Volumes` in the image config), as containerd
//! makes them: each gets a directory of its own under the container's
//! directory, filled with what the image has at that path, and is bind
//! mounted read-write there — so it is writable even under a read-only
//! root filesystem, and what the image ships there is still seen.
//!
//! The copy reads the image's unpacked layers (top first) with overlayfs'
//! rules: a whiteout (char device 0:0) hides a name in the layers below, an
//! opaque directory (`trusted.overlay.opaque=y`) hides the lower layers'
//! directory of that name, and the first layer to have a name decides what
//! it is. Symlinks are copied as symlinks, never followed; a volume path
//! that reaches a symlink in a layer is not copied from that layer on (the
//! merged view would follow it: better empty than outside the layer).
//! Device nodes, fifos and sockets are not copied.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// What a name is once a layer has decided it.
enum Decided {
    /// A directory, merged from these layer dirs (top first); `open` while
    /// lower layers may still add to it.
    Dir { sources: Vec<PathBuf>, open: bool },
    /// A file, symlink or whiteout: lower layers do not matter.
    Done,
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let mut v = [0u8; 1];
    matches!(
        rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut v),
        Ok(1)
    ) && v[0] == b'y'
}

/// Copies what the merged view of `layers` (top first) has at `path` (an
/// absolute path in the container) into the existing directory `dest`.
/// Nothing at `path`, or not a directory there: nothing is copied.
pub fn copy_up(layers: &[PathBuf], path: &Path, dest: &Path) -> io::Result<()> {
    merge(&layer_dirs(layers, path)?, dest)
}

/// The directories that make up `path` (absolute in the container, or
/// relative) in the merged view of `layers` (top first): `<layer>/<path>`
/// of each layer that has it as a directory reached without a symlink,
/// top first, down to the first opaque one or the first layer where a
/// file, whiteout or symlink hides it.
pub fn layer_dirs(layers: &[PathBuf], path: &Path) -> io::Result<Vec<PathBuf>> {
    let rel: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let mut dirs = Vec::new();
    for layer in layers {
        match resolve(layer, &rel)? {
            Found::Dir(d) => {
                let opaque = is_opaque(&d);
                dirs.push(d);
                if opaque {
                    break;
                }
            }
            Found::Missing => continue,
            Found::Hidden => break,
        }
    }
    Ok(dirs)
}

/// What a path is in one layer.
enum Found {
    /// A directory, reached without a symlink.
    Dir(PathBuf),
    /// Not there.
    Missing,
    /// A file, whiteout or symlink at or above it.
    Hidden,
}

/// `rel` inside one layer, component by component, never through a
/// symlink.
fn resolve(layer: &Path, rel: &[OsString]) -> io::Result<Found> {
    let mut cur = layer.to_path_buf();
    for name in rel {
        cur.push(name);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(Found::Hidden),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Missing),
            Err(e) => return Err(e),
        }
    }
    Ok(Found::Dir(cur))
}

/// Copies the merged content of `sources` (the same directory in several
/// layers, top first) into `dest`.
fn merge(sources: &[PathBuf], dest: &Path) -> io::Result<()> {
    let mut decided: HashMap<OsString, Decided> = HashMap::new();
    let mut order: Vec<OsString> = Vec::new();
    for src in sources {
        let mut names: Vec<_> = fs::read_dir(src)?.collect::<Result<Vec<_>, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let name = entry.file_name();
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)?;
            match decided.get_mut(&name) {
                Some(Decided::Dir { sources, open }) => {
                    if *open && meta.is_dir() {
                        sources.push(path.clone());
                        *open = !is_opaque(&path);
                    }
                    continue;
                }
                Some(Decided::Done) => continue,
                None => {}
            }
            order.push(name.clone());
            if is_whiteout(&meta) {
                decided.insert(name, Decided::Done);
                continue;
            }
            let target = dest.join(&name);
            if meta.is_dir() {
                fs::create_dir(&target)?;
                decided.insert(
                    name,
                    Decided::Dir {
                        sources: vec![path.clone()],
                        open: !is_opaque(&path),
                    },
                );
            } else if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&path)?, &target)?;
                decided.insert(name, Decided::Done);
            } else if meta.is_file() {
                fs::copy(&path, &target)?;
                decided.insert(name, Decided::Done);
            } else {
                decided.insert(name, Decided::Done);
                continue; // devices, fifos, sockets
            }
            std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()))?;
            if !meta.file_type().is_symlink() {
                fs::set_permissions(&target, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            }
        }
    }
    for name in order {
        if let Some(Decided::Dir { sources, .. }) = decided.get(&name) {
            merge(sources, &dest.join(&name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whiteout(p: &Path) {
        nix::sys::stat::mknod(
            p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
    }

    #[test]
    fn merges_layers_with_whiteouts_opaque_dirs_and_symlinks() {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: merges_layers...: needs root (whiteouts, trusted xattrs)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (top, low, dest) = (
            t.path().join("top"),
            t.path().join("low"),
            t.path().join("dest"),
        );
        for d in [
            low.join("v/sub"),
            low.join("v/opq"),
            top.join("v/sub"),
            top.join("v/opq"),
            dest.clone(),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(low.join("v/keep"), "keep").unwrap();
        fs::write(low.join("v/gone"), "gone").unwrap();
        fs::write(low.join("v/sub/low"), "low").unwrap();
        fs::write(low.join("v/opq/old"), "old").unwrap();
        fs::write(low.join("v/file-then-dir"), "f").unwrap();
        whiteout(&top.join("v/gone"));
        fs::write(top.join("v/sub/top"), "top").unwrap();
        rustix::fs::setxattr(
            top.join("v/opq"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        fs::write(top.join("v/opq/new"), "new").unwrap();
        std::os::unix::fs::symlink("/etc", top.join("v/escape")).unwrap();
        fs::create_dir(top.join("v/file-then-dir")).unwrap();
        fs::set_permissions(low.join("v/keep"), fs::Permissions::from_mode(0o640)).unwrap();

        copy_up(&[top.clone(), low.clone()], Path::new("/v"), &dest).unwrap();
        let mut got: Vec<String> = walk(&dest);
        got.sort();
        assert_eq!(
            got,
            [
                "escape -> /etc",
                "file-then-dir/",
                "keep",
                "opq/",
                "opq/new",
                "sub/",
                "sub/low",
                "sub/top"
            ]
        );
        assert_eq!(
            fs::metadata(dest.join("keep")).unwrap().mode() & 0o777,
            0o640
        );
        // A path through a symlink, or missing: nothing copied, no error.
        let empty = t.path().join("empty");
        fs::create_dir(&empty).unwrap();
        copy_up(std::slice::from_ref(&top), Path::new("/v/escape"), &empty).unwrap();
        copy_up(&[top], Path::new("/nope"), &empty).unwrap();
        assert!(fs::read_dir(&empty).unwrap().next().is_none());
    }

    fn walk(d: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.file_type().is_symlink() {
                out.push(format!(
                    "{name} -> {}",
                    fs::read_link(e.path()).unwrap().display()
                ));
            } else if m.is_dir() {
                out.push(format!("{name}/"));
                out.extend(walk(&e.path()).into_iter().map(|s| format!("{name}/{s}")));
            } else {
                out.push(name);
            }
        }
        out
    }
}
