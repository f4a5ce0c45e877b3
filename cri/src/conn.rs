//! What every berth server does with the connections it accepts, so that a
//! client — or a flood of them — cannot exhaust the daemon:
//!
//! - [`AcceptBackoff`]: a failed `accept` (EMFILE, ENFILE, ENOBUFS) is
//!   retried after a pause that grows from 100 ms to 1 s. The pending
//!   connection stays in the backlog and the listener stays readable, so
//!   retrying at once spins a core at 100% for as long as the fds are
//!   gone — Go's `net/http` server sleeps the same way (5 ms doubling to
//!   1 s) for the same reason.
//! - [`Guarded`]: a connection that holds a slot of its server's
//!   connection limit (a semaphore permit, released when the connection —
//!   or the session it was upgraded to — is dropped) and fails its reads
//!   with `TimedOut` once nothing has moved either way for its idle
//!   timeout (kubelet's `streamingConnectionIdleTimeout`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

/// The pause after a failed `accept`: doubles from [`AcceptBackoff::MIN`]
/// to [`AcceptBackoff::MAX`], back to the minimum after a success.
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
    failures: u64,
    /// Failures until the next warning (one a minute at most while they
    /// last).
    until_warning: u32,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            next: AcceptBackoff::MIN,
            failures: 0,
            until_warning: 0,
        }
    }
}

impl AcceptBackoff {
    /// The first pause.
    pub const MIN: Duration = Duration::from_millis(100);
    /// The longest pause.
    pub const MAX: Duration = Duration::from_secs(1);

    /// Logs `e` (a warning for the first failure of a run, then one every
    /// 60 failures) and sleeps.
    pub async fn failed(&mut self, server: &str, e: &io::Error) {
        tokio::time::sleep(self.record_failure(server, e)).await;
    }

    /// Counts a failure: the pause to take before the next `accept`.
    fn record_failure(&mut self, server: &str, e: &io::Error) -> Duration {
        if self.until_warning == 0 {
            self.until_warning = 60;
            tracing::warn!(
                server,
                error = %e,
                retry_in_ms = u64::try_from(self.next.as_millis()).unwrap_or(u64::MAX),
                failures = self.failures + 1,
                "cannot accept connections (out of file descriptors?)"
            );
        }
        self.until_warning -= 1;
        self.failures += 1;
        let pause = self.next;
        self.next = (self.next * 2).min(AcceptBackoff::MAX);
        pause
    }

    /// A connection was accepted: the next failure starts a new run.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting connections again");
        }
        self.next = AcceptBackoff::MIN;
        self.failures = 0;
        self.until_warning = 0;
    }

    /// The pause the next failure will take.
    pub fn next_pause(&self) -> Duration {
        self.next
    }
}

/// `now + d`, or about a century from now when that overflows (a timeout
/// from a configuration file may be anything).
pub(crate) fn instant_after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

struct Idle {
    timeout: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Idle {
    /// Ready(TimedOut) once `timeout` has passed since the last activity;
    /// otherwise the timer is (re)armed for that moment.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = instant_after(self.last, self.timeout);
            if Instant::now() >= deadline {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no data either way for {:?}", self.timeout),
                ));
            }
            // Activity since the timer was armed: wait for the rest.
            self.timer.as_mut().reset(deadline);
        }
    }
}

/// A connection with its slot in the server's limit and an idle timeout.
pub struct Guarded<IO> {
    io: IO,
    _slot: Option<OwnedSemaphorePermit>,
    idle: Option<Idle>,
}

impl<IO> std::fmt::Debug for Guarded<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("idle_timeout", &self.idle.as_ref().map(|i| i.timeout))
            .finish_non_exhaustive()
    }
}

impl<IO> Guarded<IO> {
    /// `io`, holding `slot` until dropped; with `idle_timeout`, reads fail
    /// with `TimedOut` once nothing was read or written for that long.
    pub fn new(io: IO, slot: Option<OwnedSemaphorePermit>, idle_timeout: Option<Duration>) -> Self {
        let idle = idle_timeout.map(|timeout| {
            let now = Instant::now();
            Idle {
                timeout,
                last: now,
                timer: Box::pin(tokio::time::sleep_until(instant_after(now, timeout))),
            }
        });
        Guarded {
            io,
            _slot: slot,
            idle,
        }
    }

    /// The connection itself.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    fn touch(&mut self) {
        if let Some(i) = self.idle.as_mut() {
            i.last = Instant::now();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.idle.as_mut().map(|i| i.poll_expired(cx)) {
                Some(Poll::Ready(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn backoff_grows_to_a_second_and_resets() {
        let mut b = AcceptBackoff::default();
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        let ms: Vec<u128> = (0..6)
            .map(|_| b.record_failure("test", &e).as_millis())
            .collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.next_pause(), AcceptBackoff::MIN);
    }

    #[tokio::test]
    async fn an_idle_connection_times_out_and_activity_keeps_it() {
        let timeout = Duration::from_millis(300);
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut g = Guarded::new(ours, None, Some(timeout));
        let mut buf = [0u8; 8];
        // A read or a write every 100 ms for 1.2 s: never idle for 300.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            theirs.write_all(b"x").await.unwrap();
            assert_eq!(g.read(&mut buf).await.unwrap(), 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
            g.write_all(b"y").await.unwrap();
        }
        // Writes count too: the timeout runs from the last one.
        let start = Instant::now();
        let err = g.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(290) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn the_slot_is_held_until_the_connection_goes() {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let (ours, _theirs) = tokio::io::duplex(64);
        let g = Guarded::new(ours, Some(sem.clone().try_acquire_owned().unwrap()), None);
        assert!(sem.clone().try_acquire_owned().is_err());
        drop(g);
        assert!(sem.try_acquire_owned().is_ok());
    }
}
