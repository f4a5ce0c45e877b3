//! The container's log file, shared by its stdout and stderr.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Mode of a new log file, as containerd's `openLogFile`
/// (`O_CREATE|O_APPEND|O_WRONLY`, `0640`); the process umask still applies.
const LOG_FILE_MODE: u32 = 0o640;

/// The log file at the CRI `log_path`, opened for appending.
///
/// Both streams of a container write through one `LogFile`, and each
/// [`write_records`](Self::write_records) (or `write`) is one `write_all` of
/// whole records, so a stdout record never lands in the middle of a stderr
/// one. `O_APPEND` keeps writes at the end even if something else (a log
/// shipper truncating the file, `copytruncate`) moves it.
///
/// Rotation: kubelet renames the file, then calls `ReopenContainerLog`;
/// until [`reopen`](Self::reopen) this `LogFile` keeps writing to the renamed
/// file through its open descriptor.
///
/// ```no_run
/// use berth_cri::logs::LogFile;
/// use std::path::Path;
///
/// let mut log = LogFile::open(Path::new("/var/log/pods/ns_pod_uid/app/0.log"))?;
/// log.write_records(b"2016-10-06T00:17:09.669794202Z stdout F hello\n")?;
/// // kubelet: rename 0.log → 0.log.20161006-001709, then ReopenContainerLog.
/// log.reopen()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
}

impl LogFile {
    /// Opens (creating it, mode `0640`) the log file at `path` for appending;
    /// `O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC` (std always adds `O_CLOEXEC`,
    /// so the container's processes never inherit the descriptor). The
    /// directory must exist: kubelet creates it.
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_owned(),
            file: open_for_append(path)?,
        })
    }

    /// Opens the file at [`path`](Self::path) again, creating it if kubelet
    /// has renamed the old one away, and writes there from now on.
    ///
    /// The new file is opened before the old one is closed: if opening
    /// fails, the error is returned and records keep going to the old file
    /// rather than being dropped.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open_for_append(&self.path)?;
        Ok(())
    }

    /// Appends `buf`, which should hold whole records, with one `write_all`.
    pub fn write_records(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    /// The path the file was opened at (what [`reopen`](Self::reopen) opens).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// So a `LogFile` can be the sink of a [`LineSplitter`](super::LineSplitter)
/// directly. Every `write` is a [`write_records`](LogFile::write_records):
/// it writes all of `buf` or fails.
impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_records(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // No user-space buffer: every write is already a write(2).
        Ok(())
    }
}

fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_FILE_MODE)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{LineSplitter, Stream};
    use std::fs;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    use std::time::UNIX_EPOCH;

    /// The `flags:` line of /proc/self/fdinfo/<fd>, in octal.
    fn open_flags(file: &File) -> u32 {
        let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .expect("flags line");
        u32::from_str_radix(flags.trim(), 8).unwrap()
    }

    #[test]
    fn open_creates_an_append_only_cloexec_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(&path).unwrap();
        assert_eq!(log.path(), path);
        log.write_records(b"one\n").unwrap();
        log.write_records(b"two\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one\ntwo\n");

        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode & !LOG_FILE_MODE, 0, "mode {mode:o} is at most 0640");

        const O_WRONLY: u32 = 0o1;
        const O_APPEND: u32 = 0o2000;
        const O_CLOEXEC: u32 = 0o2000000;
        let flags = open_flags(&log.file);
        assert_eq!(flags & 0o3, O_WRONLY, "flags {flags:o}");
        assert_ne!(flags & O_APPEND, 0, "flags {flags:o}");
        assert_ne!(flags & O_CLOEXEC, 0, "flags {flags:o}");
    }

    #[test]
    fn open_appends_to_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        fs::write(&path, b"earlier\n").unwrap();
        let mut log = LogFile::open(&path).unwrap();
        log.write_records(b"later\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"earlier\nlater\n");
    }

    #[test]
    fn reopen_after_rename_writes_to_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let rotated = dir.path().join("0.log.20161006-001709");
        let mut log = LogFile::open(&path).unwrap();
        log.write_records(b"before\n").unwrap();

        fs::rename(&path, &rotated).unwrap();
        // Until the reopen, records follow the descriptor to the old file.
        log.write_records(b"in between\n").unwrap();
        assert!(!path.exists());

        log.reopen().unwrap();
        log.write_records(b"after\n").unwrap();
        assert_eq!(fs::read(&rotated).unwrap(), b"before\nin between\n");
        assert_eq!(fs::read(&path).unwrap(), b"after\n");
    }

    #[test]
    fn failed_reopen_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        fs::create_dir(&logs).unwrap();
        let mut log = LogFile::open(&logs.join("0.log")).unwrap();
        // The directory goes away: the path cannot be opened again.
        let moved = dir.path().join("moved");
        fs::rename(&logs, &moved).unwrap();
        let err = log.reopen().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        log.write_records(b"still written\n").unwrap();
        assert_eq!(fs::read(moved.join("0.log")).unwrap(), b"still written\n");
    }

    #[test]
    fn both_streams_through_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(&path).unwrap();
        let mut out = LineSplitter::new(Stream::Stdout, Some(16 * 1024));
        let mut err = LineSplitter::new(Stream::Stderr, Some(16 * 1024));
        out.feed(b"out 1\nout ", UNIX_EPOCH, &mut log).unwrap();
        err.feed(b"err 1\n", UNIX_EPOCH, &mut log).unwrap();
        out.feed(b"2\n", UNIX_EPOCH, &mut log).unwrap();
        err.finish(UNIX_EPOCH, &mut log).unwrap();
        out.finish(UNIX_EPOCH, &mut log).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "1970-01-01T00:00:00Z stdout F out 1\n\
             1970-01-01T00:00:00Z stderr F err 1\n\
             1970-01-01T00:00:00Z stdout F out 2\n"
        );
    }
}
