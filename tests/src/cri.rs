//! Connecting a CRI client to a daemon's unix socket.

use std::path::Path;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

/// A tonic channel over the unix socket at `sock` (the URI is a placeholder
/// that tonic requires; every connection goes to the socket).
pub async fn connect(sock: &Path) -> Result<Channel, tonic::transport::Error> {
    let sock = sock.to_path_buf();
    Endpoint::from_static("http://[::1]:1")
        .connect_with_connector(tower::service_fn(move |_| {
            let sock = sock.clone();
            async move {
                let s = tokio::net::UnixStream::connect(sock).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
}

/// Waits (up to `timeout`) until something accepts on `sock`, then connects.
pub async fn wait_and_connect(sock: &Path, timeout: Duration) -> Result<Channel, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::UnixStream::connect(sock).await.is_ok() {
            return connect(sock).await.map_err(|e| e.to_string());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "nothing accepted on {} within {timeout:?}",
                sock.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
