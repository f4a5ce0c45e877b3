//! What every streaming job (exec, attach) works with, whatever the
//! transport: the client's side of the session and how it ended.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use berth_core::process::ConsoleSize;

/// The client side of a session, whatever the transport.
pub struct ExecIo {
    /// What the client types (EOF: it closed stdin).
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Where the process's output goes (the terminal's, with `tty`).
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Where its errors go.
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Terminal sizes as the client's window changes.
    pub resize: Option<mpsc::Receiver<ConsoleSize>>,
}

/// How the process ended, or why it could not run.
pub type Outcome = Result<berth_core::ExitStatus, String>;
