//! The decompressed layer stream as the tar reader sees it: hashed for the diff_id as it is
//! read, with enough bookkeeping to tell where it ended.
//!
//! Where a tar stream may end is Go's `archive/tar` rule, because that reader is what
//! containerd, CRI-O, skopeo and umoci use, and images are made to pass it: the end-of-archive
//! marker (two zero blocks) is optional, and so is the padding of the last entry's data to a
//! 512-byte block — `umoci insert` 0.4.7 writes layers that stop right after the last entry's
//! data. EOF at a header boundary (the `tar` crate already accepts it) or anywhere in the
//! padding after an entry's data is the end; EOF inside an entry's data or inside a header is
//! an error, as it is for Go (`io.ErrUnexpectedEOF`).
//! <https://cs.opensource.google/go/go/+/refs/tags/go1.22.0:src/archive/tar/reader.go;l=63>

use std::cell::Cell;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// Tar's block size: headers are one block, data is padded to a whole number of them.
const BLOCK: u64 = 512;

/// What the unpacker knows of the stream beneath the tar reader.
#[derive(Default)]
pub(super) struct Progress {
    /// The blob or the decompressor failed (an I/O error that is not the tar format's).
    failed: Cell<bool>,
    /// Bytes of the decompressed stream read so far.
    pos: Cell<u64>,
    /// The stream has ended.
    eof: Cell<bool>,
}

impl Progress {
    /// Whether the blob or decompressor failed, so a read error is reported as such.
    pub(super) fn failed(&self) -> bool {
        self.failed.get()
    }

    /// Whether a stream that failed to yield the next header simply ended in the padding
    /// after an entry whose data ends at `data_end`: cleanly, so the archive is complete.
    pub(super) fn ended_in_padding(&self, data_end: u64) -> bool {
        let padded = data_end.div_ceil(BLOCK).saturating_mul(BLOCK);
        !self.failed.get() && self.eof.get() && (data_end..padded).contains(&self.pos.get())
    }
}

/// Hashes everything read through it and keeps [`Progress`] up to date.
pub(super) struct Digesting<'a, R> {
    inner: R,
    hasher: Sha256,
    progress: &'a Progress,
}

impl<'a, R: Read> Digesting<'a, R> {
    pub(super) fn new(inner: R, progress: &'a Progress) -> Self {
        Digesting {
            inner,
            hasher: Sha256::new(),
            progress,
        }
    }

    /// The hex sha256 of everything read.
    pub(super) fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl<R: Read> Read for Digesting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let p = self.progress;
        match self.inner.read(buf) {
            Ok(n) => {
                let read = buf.get(..n).ok_or_else(|| {
                    p.failed.set(true);
                    io::Error::other("reader returned more bytes than its buffer holds")
                })?;
                self.hasher.update(read);
                p.pos.set(p.pos.get().saturating_add(n as u64));
                if n == 0 && !buf.is_empty() {
                    p.eof.set(true);
                }
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    p.failed.set(true);
                }
                Err(e)
            }
        }
    }
}
