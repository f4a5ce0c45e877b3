//! Attach: the monitor owns the container's stdin (a pipe, or the
//! terminal) and its output, so `kubectl attach` goes through it, as a
//! [`crate::task::proto::Request::Attach`] on a task connection. The
//! client passes plain pipe ends: the read end of its stdin pipe and the
//! write ends of its stdout and stderr pipes. It gets every output chunk as
//! it is logged, its stdin goes to the container, and
//! [`crate::task::proto::Request::Resize`] on the same connection resizes
//! the terminal. End of file on its stdin pipe is the end of its input;
//! closing the connection detaches it. `stdin_once`: the container's stdin
//! is closed when the first client that sent stdin ends its input or
//! detaches.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::logs::Stream;

/// Output queued for a slow client before it is dropped (a client must not
/// make the monitor's memory grow without bound).
const MAX_QUEUED: usize = 4 << 20;
/// stdin queued for the container before clients are read no further.
const MAX_STDIN_QUEUED: usize = 1 << 20;

/// One attached client, on task connection `slot`.
#[derive(Debug)]
struct Client {
    slot: usize,
    /// Its input (a pipe's read end; `None` once at end of file).
    stdin: Option<OwnedFd>,
    /// Where its stdout and stderr go (pipes' write ends; `None`: not
    /// wanted, or the reader has gone) and what is queued for each.
    out: [Option<OwnedFd>; 2],
    queued: [Vec<u8>; 2],
    sent_stdin: bool,
}

/// The ends an attaching client hands over (already checked against what
/// the container has).
#[derive(Debug, Default)]
pub struct AttachFds {
    /// The read end of the client's stdin pipe.
    pub stdin: Option<OwnedFd>,
    /// The write end of its stdout pipe.
    pub stdout: Option<OwnedFd>,
    /// The write end of its stderr pipe.
    pub stderr: Option<OwnedFd>,
}

/// The monitor's side: the attached clients and the container's stdin.
#[derive(Default)]
pub struct Attach {
    clients: Vec<Client>,
    /// The container's stdin (pipe write end or a dup of the terminal).
    stdin: Option<OwnedFd>,
    stdin_queue: Vec<u8>,
    stdin_once: bool,
    /// `stdin_once` closed the container's stdin, not yet passed on.
    stdin_closed: bool,
    /// The terminal, for resizes.
    pty: Option<OwnedFd>,
    /// Where clients' input is read to (on the heap, made with the first
    /// client: a buffer on the stack would be touched by every monitor's
    /// loop, attached or not).
    buf: Vec<u8>,
}

/// Bytes read from a client's input at a time.
const READ_SIZE: usize = 32 << 10;

impl std::fmt::Debug for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attach")
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

/// What to poll for.
#[derive(Debug)]
pub enum Want<'a> {
    /// The client on slot `.0` sent input (readable or hung up).
    Input(usize, BorrowedFd<'a>),
    /// Its output stream `.1` (0 stdout, 1 stderr) can take more.
    Output(usize, usize, BorrowedFd<'a>),
    /// The container's stdin is writable again.
    Stdin(BorrowedFd<'a>),
}

impl Attach {
    /// Attach for a container whose stdin is `stdin` (if it reads one) and
    /// terminal is `pty` (if it has one).
    pub fn new(
        stdin: Option<OwnedFd>,
        stdin_once: bool,
        pty: Option<OwnedFd>,
    ) -> std::io::Result<Attach> {
        if let Some(s) = &stdin {
            crate::util::set_nonblocking(s.as_fd())?;
        }
        Ok(Attach {
            clients: Vec::new(),
            stdin,
            stdin_queue: Vec::new(),
            stdin_once,
            stdin_closed: false,
            pty,
            buf: Vec::new(),
        })
    }

    /// Whether the container reads stdin (still).
    pub fn has_stdin(&self) -> bool {
        self.stdin.is_some()
    }

    /// Whether it has a terminal.
    pub fn has_terminal(&self) -> bool {
        self.pty.is_some()
    }

    /// Attaches the client of task connection `slot`.
    pub fn add(&mut self, slot: usize, fds: AttachFds) -> std::io::Result<()> {
        for fd in [&fds.stdin, &fds.stdout, &fds.stderr].into_iter().flatten() {
            crate::util::set_nonblocking(fd.as_fd())?;
        }
        self.remove(slot);
        self.buf.resize(READ_SIZE, 0);
        self.clients.push(Client {
            slot,
            stdin: fds.stdin,
            out: [fds.stdout, fds.stderr],
            queued: [Vec::new(), Vec::new()],
            sent_stdin: false,
        });
        Ok(())
    }

    /// The fds to poll and why.
    pub fn wants(&self) -> Vec<Want<'_>> {
        let mut w = Vec::new();
        let room = self.stdin_queue.len() < MAX_STDIN_QUEUED;
        for c in &self.clients {
            if let (Some(fd), true) = (&c.stdin, room) {
                w.push(Want::Input(c.slot, fd.as_fd()));
            }
            for (n, out) in c.out.iter().enumerate() {
                if let (Some(fd), false) = (out, c.queued[n].is_empty()) {
                    w.push(Want::Output(c.slot, n, fd.as_fd()));
                }
            }
        }
        if let (Some(s), false) = (&self.stdin, self.stdin_queue.is_empty()) {
            w.push(Want::Stdin(s.as_fd()));
        }
        w
    }

    /// An output chunk for every client that wants its stream.
    pub fn broadcast(&mut self, stream: Stream, data: &[u8]) {
        let n = usize::from(stream == Stream::Stderr);
        for c in &mut self.clients {
            if c.out[n].is_some() && !data.is_empty() {
                c.queued[n].extend_from_slice(data);
                flush(c, n);
            }
        }
    }

    /// Output stream `n` of the client on `slot` can take more.
    pub fn flush(&mut self, slot: usize, n: usize) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.slot == slot) {
            flush(c, n);
        }
    }

    /// Reads the input of the client on `slot`; at its end, `stdin_once`
    /// closes the container's stdin.
    pub fn read(&mut self, slot: usize) {
        let Some(c) = self.clients.iter_mut().find(|c| c.slot == slot) else {
            return;
        };
        let Some(input) = &c.stdin else { return };
        match nix::unistd::read(input.as_raw_fd(), &mut self.buf) {
            Ok(0) => {}
            Ok(n) => {
                if self.stdin.is_some() {
                    c.sent_stdin = true;
                    self.stdin_queue.extend_from_slice(&self.buf[..n]);
                    self.write_stdin();
                }
                return;
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return,
            // Treated as its end.
            Err(_) => {}
        }
        // The end of its input.
        c.stdin = None;
        if self.stdin_once {
            self.close_stdin();
        }
    }

    /// Moves queued stdin into the container.
    pub fn write_stdin(&mut self) {
        let Some(s) = &self.stdin else {
            self.stdin_queue.clear();
            return;
        };
        while !self.stdin_queue.is_empty() {
            match nix::unistd::write(s, &self.stdin_queue) {
                Ok(n) => {
                    self.stdin_queue.drain(..n);
                }
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    // The container closed its stdin.
                    self.stdin = None;
                    self.stdin_queue.clear();
                    return;
                }
            }
        }
    }

    /// Resizes the terminal (nothing without one).
    pub fn resize(&self, size: berth_core::process::ConsoleSize) -> nix::Result<()> {
        match &self.pty {
            Some(pty) => berth_core::process::resize_console(pty.as_fd(), size),
            None => Ok(()),
        }
    }

    fn close_stdin(&mut self) {
        self.write_stdin();
        if self.stdin.take().is_some() {
            self.stdin_closed = true;
        }
        self.stdin_queue.clear();
    }

    /// Whether `stdin_once` closed the container's stdin since the last
    /// call (an owner whose container reads its stdin through someone
    /// else, a shim, must pass that on).
    pub fn take_stdin_closed(&mut self) -> bool {
        std::mem::take(&mut self.stdin_closed)
    }

    /// The client on `slot` detached (its connection closed).
    pub fn remove(&mut self, slot: usize) {
        let Some(i) = self.clients.iter().position(|c| c.slot == slot) else {
            return;
        };
        let c = self.clients.remove(i);
        if c.sent_stdin && self.stdin_once {
            self.close_stdin();
        }
    }
}

/// Writes what is queued on `c`'s stream `n`; lets go of the stream when
/// its reader is gone or too far behind (the client still detaches by
/// closing its connection).
fn flush(c: &mut Client, n: usize) {
    let Some(fd) = &c.out[n] else {
        c.queued[n].clear();
        return;
    };
    while !c.queued[n].is_empty() {
        match nix::unistd::write(fd, &c.queued[n]) {
            Ok(w) => {
                c.queued[n].drain(..w);
            }
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                c.out[n] = None;
                c.queued[n] = Vec::new();
                return;
            }
        }
    }
    if c.queued[n].len() > MAX_QUEUED {
        c.out[n] = None;
        c.queued[n] = Vec::new();
    }
}
