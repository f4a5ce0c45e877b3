//! systemd's readiness protocol (`sd_notify(3)`): one datagram `READY=1`
//! to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace). A few lines, so no crate.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `READY=1` when run under systemd with `Type=notify`; does nothing
/// otherwise.
pub fn ready() -> std::io::Result<()> {
    notify("READY=1")
}

/// Sends `state` to `$NOTIFY_SOCKET`, if set.
pub fn notify(state: &str) -> std::io::Result<()> {
    notify_to(std::env::var_os("NOTIFY_SOCKET"), state)
}

/// Sends `state` to the socket `socket` names (`None`: nothing to do).
fn notify_to(socket: Option<std::ffi::OsString>, state: &str) -> std::io::Result<()> {
    let Some(path) = socket else {
        return Ok(());
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(&path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::notify_to(Some(path.into_os_string()), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        // Without a socket: nothing, no error.
        super::notify_to(None, "READY=1").unwrap();
    }
}
