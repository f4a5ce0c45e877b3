//! Attach: the monitor owns the container's stdin (a pipe, or the
//! terminal) and its output, so `kubectl attach` goes through it. The
//! monitor listens on `<dir>/attach.sock` (in the container's private
//! directory); each connected client — the daemon's streaming server —
//! gets every output chunk as it is logged, and may send stdin, close
//! stdin, or resize the terminal.
//!
//! Frames both ways are `[kind: u8][length: u32 big endian][payload]`:
//! monitor → client [`OUT_STDOUT`]/[`OUT_STDERR`] with data; client →
//! monitor [`IN_STDIN`] data, [`IN_CLOSE_STDIN`], [`IN_RESIZE`] with rows
//! and columns as two big-endian u16. `stdin_once`: the container's stdin
//! is closed when the first client that sent stdin detaches or closes it.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Output on the container's stdout (or its terminal).
pub const OUT_STDOUT: u8 = 1;
/// Output on its stderr.
pub const OUT_STDERR: u8 = 2;
/// Bytes for the container's stdin.
pub const IN_STDIN: u8 = 0;
/// The client is done writing stdin.
pub const IN_CLOSE_STDIN: u8 = 1;
/// A terminal size: rows, columns.
pub const IN_RESIZE: u8 = 2;

/// The socket's name in the container's directory.
pub const SOCKET: &str = "attach.sock";

/// Bytes before a frame's payload: kind and length.
pub const HEADER_LEN: usize = 5;

/// A frame: `[kind][length: u32 big endian][payload]`.
pub fn encode_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_LEN + payload.len());
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The payload length a frame header (at least [`HEADER_LEN`] bytes) gives.
pub fn frame_len(header: &[u8]) -> usize {
    u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize
}

/// The payload of [`IN_RESIZE`]: rows and columns, big-endian u16 each.
pub fn resize_payload(size: berth_core::process::ConsoleSize) -> [u8; 4] {
    let [r0, r1] = size.rows.to_be_bytes();
    let [c0, c1] = size.cols.to_be_bytes();
    [r0, r1, c0, c1]
}

fn parse_resize(p: [u8; 4]) -> berth_core::process::ConsoleSize {
    berth_core::process::ConsoleSize {
        rows: u16::from_be_bytes([p[0], p[1]]),
        cols: u16::from_be_bytes([p[2], p[3]]),
    }
}

/// Output queued for a slow client before it is dropped (a client must not
/// make the monitor's memory grow without bound).
const MAX_QUEUED: usize = 4 << 20;
/// stdin queued for the container before clients are read no further.
const MAX_STDIN_QUEUED: usize = 1 << 20;

struct Client {
    sock: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    sent_stdin: bool,
    /// The client half-closed: it sends nothing more but still reads.
    done_sending: bool,
}

/// The monitor's side.
pub struct Attach {
    listener: UnixListener,
    clients: Vec<Client>,
    /// The container's stdin (pipe write end or a dup of the terminal).
    stdin: Option<OwnedFd>,
    stdin_queue: Vec<u8>,
    stdin_once: bool,
    /// The terminal, for resizes.
    pty: Option<OwnedFd>,
}

impl std::fmt::Debug for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attach")
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

/// What to poll for.
pub enum Want<'a> {
    /// New clients.
    Accept(BorrowedFd<'a>),
    /// Client `i`: readable, and writable when output is queued.
    Client(usize, BorrowedFd<'a>, bool, bool),
    /// The container's stdin is writable again.
    Stdin(BorrowedFd<'a>),
}

impl Attach {
    /// Listens on `dir/attach.sock` (mode 0600: root only).
    pub fn listen(
        dir: &Path,
        stdin: Option<OwnedFd>,
        stdin_once: bool,
        pty: Option<OwnedFd>,
    ) -> std::io::Result<Attach> {
        use std::os::unix::fs::PermissionsExt;
        let path = berth_core::ipc::socket_path(&dir.join(SOCKET))?;
        let _ = std::fs::remove_file(path.as_path());
        let listener = UnixListener::bind(path.as_path())?;
        std::fs::set_permissions(path.as_path(), std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        if let Some(s) = &stdin {
            crate::util::set_nonblocking(s.as_fd())?;
        }
        Ok(Attach {
            listener,
            clients: Vec::new(),
            stdin,
            stdin_queue: Vec::new(),
            stdin_once,
            pty,
        })
    }

    /// The fds to poll and why.
    pub fn wants(&self) -> Vec<Want<'_>> {
        let mut w = vec![Want::Accept(self.listener.as_fd())];
        let room = self.stdin_queue.len() < MAX_STDIN_QUEUED;
        for (i, c) in self.clients.iter().enumerate() {
            let read = room && !c.done_sending;
            w.push(Want::Client(i, c.sock.as_fd(), read, !c.output.is_empty()));
        }
        if let (Some(s), false) = (&self.stdin, self.stdin_queue.is_empty()) {
            w.push(Want::Stdin(s.as_fd()));
        }
        w
    }

    /// New connections.
    pub fn accept(&mut self) {
        while let Ok((sock, _)) = self.listener.accept() {
            if sock.set_nonblocking(true).is_ok() {
                self.clients.push(Client {
                    sock,
                    input: Vec::new(),
                    output: Vec::new(),
                    sent_stdin: false,
                    done_sending: false,
                });
            }
        }
    }

    /// An output chunk for every client.
    pub fn broadcast(&mut self, kind: u8, data: &[u8]) {
        if self.clients.is_empty() || data.is_empty() {
            return;
        }
        let frame = encode_frame(kind, data);
        for c in &mut self.clients {
            c.output.extend_from_slice(&frame);
        }
        for i in (0..self.clients.len()).rev() {
            self.flush(i);
        }
    }

    /// Writes what is queued for client `i`; drops it when it is gone or
    /// too far behind.
    pub fn flush(&mut self, i: usize) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        while !c.output.is_empty() {
            match c.sock.write(&c.output) {
                Ok(0) => return self.drop_client(i),
                Ok(n) => {
                    c.output.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return self.drop_client(i),
            }
        }
        if c.output.len() > MAX_QUEUED {
            self.drop_client(i);
        }
    }

    /// Reads from client `i` and acts on its complete frames.
    pub fn read(&mut self, i: usize) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        if c.done_sending {
            return;
        }
        let mut buf = [0u8; 32 << 10];
        match c.sock.read(&mut buf) {
            // A half-close: no more input (for `stdin_once`, the end of
            // stdin); the client still gets output until it goes.
            Ok(0) => {
                c.done_sending = true;
                if c.sent_stdin && self.stdin_once {
                    self.close_stdin();
                }
                return;
            }
            Ok(n) => c.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => return self.drop_client(i),
        }
        loop {
            let c = &mut self.clients[i];
            if c.input.len() < HEADER_LEN {
                return;
            }
            let len = frame_len(&c.input);
            if len > 1 << 20 {
                return self.drop_client(i);
            }
            if c.input.len() < HEADER_LEN + len {
                return;
            }
            let kind = c.input[0];
            let payload: Vec<u8> = c.input[HEADER_LEN..HEADER_LEN + len].to_vec();
            c.input.drain(..HEADER_LEN + len);
            match kind {
                IN_STDIN if self.stdin.is_some() => {
                    self.clients[i].sent_stdin = true;
                    self.stdin_queue.extend_from_slice(&payload);
                    self.write_stdin();
                }
                IN_CLOSE_STDIN if self.stdin_once => self.close_stdin(),
                IN_RESIZE => {
                    if let (Some(pty), Ok(p)) = (&self.pty, <[u8; 4]>::try_from(&payload[..])) {
                        let _ = berth_core::process::resize_console(pty.as_fd(), parse_resize(p));
                    }
                }
                _ => {}
            }
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

    fn close_stdin(&mut self) {
        self.write_stdin();
        self.stdin = None;
        self.stdin_queue.clear();
    }

    /// Client `i` hung up.
    pub fn detach(&mut self, i: usize) {
        if i < self.clients.len() {
            self.drop_client(i);
        }
    }

    fn drop_client(&mut self, i: usize) {
        let c = self.clients.remove(i);
        if c.sent_stdin && self.stdin_once {
            self.close_stdin();
        }
    }
}
