//! Container logs in the CRI format, as kubelet reads them.
//!
//! Every line of a container's log file is one record:
//!
//! ```text
//! 2016-10-06T00:17:09.669794202Z stdout F a full line
//! 2016-10-06T00:17:09.6697942Z stderr P the first part of a long line
//! 2016-10-06T00:17:09.6697943Z stderr F and its end
//! ```
//!
//! `<RFC3339Nano timestamp> <stream> <tag> <content>\n`, where the tag is `F`
//! (the record ends a line) or `P` (the line goes on in the next record of
//! the same stream). This is what kubelet's `parseCRILog`
//! (`pkg/kubelet/kuberuntime/logs/logs.go`) parses and what containerd's CRI
//! logger (`internal/cri/io/logger.go`, formerly `pkg/cri/io/logger.go`)
//! writes; berth follows containerd byte for byte except that timestamps are
//! always UTC (`Z`) — containerd formats `time.Now()` in the node's local
//! zone, which is UTC on almost every node, and kubelet accepts any offset.
//!
//! - [`timestamp`]: Go's `time.RFC3339Nano` for a [`SystemTime`](std::time::SystemTime).
//! - [`record`]: one record formatted ([`format_record`]) or parsed back
//!   ([`parse_record`]); pure, no I/O.
//! - [`splitter`]: [`LineSplitter`], bytes from one of the container's pipes
//!   → records, with containerd's rules for long lines, `\r\n` and EOF.
//! - [`file`](mod@file): [`LogFile`], the append-only file both streams write to, and
//!   its reopen for `ReopenContainerLog`.
//!
//! Nothing here is async or spawns threads: the caller (the per-container
//! monitor) polls the pipes and feeds what it reads.
//!
//! ```
//! use std::time::SystemTime;
//! use berth_cri::logs::{LineSplitter, Stream};
//!
//! let mut out = Vec::new(); // or a `LogFile`
//! let mut stdout = LineSplitter::new(Stream::Stdout, Some(16 * 1024));
//! stdout.feed(b"hello\nwor", SystemTime::now(), &mut out)?;
//! stdout.feed(b"ld\n", SystemTime::now(), &mut out)?;
//! stdout.finish(SystemTime::now(), &mut out)?;
//! let text = String::from_utf8(out).unwrap();
//! let lines: Vec<&str> = text.lines().collect();
//! assert!(lines[0].ends_with(" stdout F hello"));
//! assert!(lines[1].ends_with(" stdout F world"));
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod file;
pub mod record;
pub mod splitter;
pub mod timestamp;

pub use file::LogFile;
pub use record::{format_record, parse_record};
pub use splitter::LineSplitter;
pub use timestamp::rfc3339_nano;

/// containerd's default `max_container_log_line_size`: 16 KiB of content
/// per record; longer lines are split into `P` records.
pub const DEFAULT_MAX_LINE_SIZE: usize = 16 * 1024;

/// Which of the container's pipes a record came from (CRI `LogStreamType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The container's standard output: `stdout` in the log.
    Stdout,
    /// The container's standard error: `stderr` in the log.
    Stderr,
}

impl Stream {
    /// The stream's name as written in a record (`runtimeapi.Stdout` /
    /// `runtimeapi.Stderr`).
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// The stream a record names; `None` for anything but `stdout` and
    /// `stderr`, which kubelet rejects too.
    pub fn from_bytes(name: &[u8]) -> Option<Stream> {
        match name {
            b"stdout" => Some(Stream::Stdout),
            b"stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip() {
        for s in [Stream::Stdout, Stream::Stderr] {
            assert_eq!(Stream::from_bytes(s.as_str().as_bytes()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(Stream::from_bytes(b"stdin"), None);
        assert_eq!(Stream::from_bytes(b"STDOUT"), None);
    }
}
