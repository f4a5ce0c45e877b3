//! The sealed copy of our own binary that runs as the container's init.
//!
//! CVE-2019-5736: a container process could open `/proc/self/exe` of the
//! runtime while it ran in the container and overwrite the host binary. The
//! init therefore runs from a memfd holding a copy of the binary, sealed
//! against any write, grow or shrink: nothing in the container can change it,
//! and nothing the container does reaches the file on the host. One copy is
//! made per binary and process, and reused (sealed memfds are immutable).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// Which binary runs as the container's init. It must call
/// [`crate::init::run_if_requested`] first thing in `main`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum InitBinary {
    /// The running executable (`/proc/self/exe`).
    #[default]
    SelfExe,
    /// Another executable.
    Path(PathBuf),
}

fn cache() -> &'static Mutex<HashMap<InitBinary, Arc<OwnedFd>>> {
    static CACHE: OnceLock<Mutex<HashMap<InitBinary, Arc<OwnedFd>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Drops this process's cached sealed copies. Each copy is a memfd as big
/// as the binary (tens of MB), kept so later starts are fast; a process that
/// starts one container and then only watches it (berth's per-container
/// monitor) calls this right after `start`, so the copy is freed as soon as
/// the container's init has exec'd its process. Containers already started
/// are unaffected: their init holds its own mapping.
pub fn forget_sealed_copies() {
    cache().lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The sealed copy of the running executable, made on first use: a daemon
/// can hand it (e.g. through `/proc/<pid>/fd/<n>`) to helper processes of
/// its own, which [`adopt_sealed_copy`] it instead of copying the binary
/// again — one copy for the node instead of one per container.
pub fn sealed_self() -> std::io::Result<Arc<OwnedFd>> {
    sealed_copy(&InitBinary::SelfExe)
}

/// The seals every adopted copy must carry: nothing can write, shrink or
/// grow it, and the seals themselves cannot change.
const REQUIRED_SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// Uses `fd` as this process's sealed copy of `bin` (see [`sealed_self`]).
/// Refused unless `fd` is a memfd carrying all of the write seals, so a
/// copy that anyone could still change is never exec'd as a container's
/// init (CVE-2019-5736).
pub fn adopt_sealed_copy(bin: InitBinary, fd: OwnedFd) -> std::io::Result<()> {
    let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS)?;
    if seals & REQUIRED_SEALS != REQUIRED_SEALS {
        return Err(std::io::Error::other(format!(
            "init binary copy is not sealed (seals {seals:#x})"
        )));
    }
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(bin, Arc::new(fd));
    Ok(())
}

/// Returns the sealed memfd copy of `bin`, making it on first use.
pub(crate) fn sealed_copy(bin: &InitBinary) -> std::io::Result<Arc<OwnedFd>> {
    let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(fd) = cache.get(bin) {
        return Ok(fd.clone());
    }
    let fd = Arc::new(make_sealed_copy(bin)?);
    cache.insert(bin.clone(), fd.clone());
    Ok(fd)
}

fn make_sealed_copy(bin: &InitBinary) -> std::io::Result<OwnedFd> {
    let path = match bin {
        InitBinary::SelfExe => PathBuf::from("/proc/self/exe"),
        InitBinary::Path(p) => p.clone(),
    };
    let memfd = memfd_create(
        c"berth-init",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let mut src = File::open(&path)?;
    let mut dst = File::from(memfd);
    // Only what `execve` loads: the debug sections after it (most of a
    // release binary built with line tables: 142 MB of 164) would be
    // memory the node never gets back while the copy lives.
    match loaded_len(&mut src)? {
        Some(len) => std::io::copy(&mut std::io::Read::take(&mut src, len), &mut dst)?,
        None => std::io::copy(&mut src, &mut dst)?,
    };
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(dst.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    Ok(OwnedFd::from(dst))
}

/// The length of the part of a 64-bit little-endian ELF file that the
/// kernel and the dynamic loader read: up to the end of the last segment
/// (and of the program header table). Section headers and the sections
/// that no segment covers (`.debug_*`, `.symtab`) lie after it and are
/// only read by debuggers. `None` for anything else (copied whole). Leaves
/// `f` at its start.
fn loaded_len(f: &mut File) -> std::io::Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut ehdr = [0u8; 64];
    let header = f.read_exact(&mut ehdr);
    f.seek(SeekFrom::Start(0))?;
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if header.is_err() || ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Ok(None);
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(v)
    };
    let (phoff, phentsize, phnum) = (
        u64_at(&ehdr, 0x20),
        u16_at(&ehdr, 0x36),
        u16_at(&ehdr, 0x38),
    );
    if phentsize < 56 || phnum == 0 {
        return Ok(None);
    }
    let table_len = u64::from(phentsize) * u64::from(phnum);
    let mut table = vec![0u8; table_len as usize];
    f.seek(SeekFrom::Start(phoff))?;
    let read = f.read_exact(&mut table);
    f.seek(SeekFrom::Start(0))?;
    if read.is_err() {
        return Ok(None);
    }
    // p_offset at 8, p_filesz at 32 of each 64-bit program header.
    let end = table
        .chunks_exact(usize::from(phentsize))
        .map(|ph| u64_at(ph, 8).saturating_add(u64_at(ph, 32)))
        .chain([phoff + table_len])
        .max();
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn only_sealed_copies_are_adopted() {
        let plain = memfd_create(c"unsealed", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        let err = adopt_sealed_copy(InitBinary::Path("/nonexistent-a".into()), plain).unwrap_err();
        assert!(err.to_string().contains("not sealed"), "{err}");
        let me = sealed_self().unwrap();
        let path = format!("/proc/self/fd/{}", me.as_raw_fd());
        let reopened = OwnedFd::from(File::open(path).unwrap());
        let key = InitBinary::Path("/nonexistent-b".into());
        adopt_sealed_copy(key.clone(), reopened).unwrap();
        assert!(
            sealed_copy(&key).is_ok(),
            "the adopted copy is used, not a new one"
        );
    }

    #[test]
    fn the_copy_holds_what_execve_loads_and_runs() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let mut f = File::open("/proc/self/exe").unwrap();
        let len = loaded_len(&mut f)
            .unwrap()
            .expect("our own binary is ELF64");
        assert!(len <= exe.len() as u64 && len > 4096, "{len}");
        // A copy of that much runs: the loader finds everything it maps.
        let fd = sealed_copy(&InitBinary::SelfExe).unwrap();
        assert_eq!(
            std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .unwrap()
                .len(),
            len
        );
        let out = std::process::Command::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .arg("--list")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // Not an ELF file: copied whole.
        let mut text = File::open("/proc/self/cmdline").unwrap();
        assert_eq!(loaded_len(&mut text).unwrap(), None);
    }

    #[test]
    fn copy_is_sealed_against_writes() {
        let fd = sealed_copy(&InitBinary::SelfExe).unwrap();
        let again = sealed_copy(&InitBinary::SelfExe).unwrap();
        assert!(Arc::ptr_eq(&fd, &again), "one copy per binary");
        let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS).unwrap();
        assert_ne!(seals & libc::F_SEAL_WRITE, 0);
        // Even a writable reopen through /proc cannot write.
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&*fd));
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(path) {
            assert!(f.write_all(b"x").is_err());
        }
    }
}
