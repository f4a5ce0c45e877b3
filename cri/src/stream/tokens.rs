//! The streaming URLs issued and not yet used, as kubelet's streaming
//! server keeps them (`pkg/kubelet/cri/streaming/request_cache.go`): each
//! valid for a TTL (1 minute), at most 1000 at once — more requests are
//! refused with `ResourceExhausted` rather than evicting the oldest, so a
//! URL kubelet already handed to a client never disappears under it — and
//! here also at most [`Limits::max_pending_bytes`] of requests (an Exec
//! carries its command and the container's environment).
//!
//! Unlike kubelet's cache, which forgets an expired request only when the
//! next one comes, a sweeper drops a request as soon as its TTL is over
//! (see [`Tokens::sweep`]); its token is remembered for one more TTL,
//! without the request, so that a late client gets 410 Gone rather than
//! 404.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Limits, StreamRequest};

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Never issued, or already used.
    Unknown,
    /// Issued, but its TTL is over.
    Expired,
}

/// Why no URL was issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// No randomness for the token.
    #[error("generating a streaming token: {0}")]
    Random(#[source] std::io::Error),
    /// As many URLs as allowed are waiting for their client.
    #[error("{limit} streaming URLs are already waiting to be used (kubelet's limit); retry when they are used or expire")]
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// The waiting URLs' requests hold as much memory as allowed.
    #[error("the waiting streaming URLs' requests already hold {held} bytes; this one ({cost} bytes) would exceed the limit of {limit}")]
    TooLarge {
        /// What this request would hold.
        cost: usize,
        /// What the waiting ones hold.
        held: usize,
        /// The limit.
        limit: usize,
    },
}

struct Entry {
    /// `None` once expired (kept only to answer 410).
    req: Option<StreamRequest>,
    cost: usize,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Entries with a request.
    live: usize,
    /// Their costs.
    bytes: usize,
}

/// The outstanding tokens.
pub struct Tokens {
    inner: Mutex<Inner>,
    limits: Limits,
}

impl Tokens {
    /// An empty cache with `limits`' TTL and caps.
    pub fn new(limits: Limits) -> Tokens {
        Tokens {
            inner: Mutex::default(),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `req` under `token` for the TTL, unless that exceeds a limit.
    pub fn insert(
        &self,
        token: String,
        req: StreamRequest,
        now: Instant,
    ) -> Result<(), IssueError> {
        let cost = req.cost();
        let mut inner = self.lock();
        sweep_locked(&mut inner, self.limits.token_ttl, now);
        if inner.live >= self.limits.max_pending {
            return Err(IssueError::TooMany {
                limit: self.limits.max_pending,
            });
        }
        if inner.bytes.saturating_add(cost) > self.limits.max_pending_bytes {
            return Err(IssueError::TooLarge {
                cost,
                held: inner.bytes,
                limit: self.limits.max_pending_bytes,
            });
        }
        let expires = crate::util::saturating_add(now, self.limits.token_ttl);
        if let Some(old) = inner.map.insert(
            token,
            Entry {
                req: Some(req),
                cost,
                expires,
            },
        ) {
            // 256 random bits do not collide; were it to happen, the
            // counts stay right.
            if old.req.is_some() {
                inner.live -= 1;
                inner.bytes -= old.cost;
            }
        }
        inner.live += 1;
        inner.bytes += cost;
        Ok(())
    }

    /// Takes the request of `token` for a URL of `kind` (once).
    pub fn take(&self, kind: &str, token: &str, now: Instant) -> Result<StreamRequest, TokenError> {
        let mut inner = self.lock();
        let Some(e) = inner.map.get(token) else {
            return Err(TokenError::Unknown);
        };
        match &e.req {
            Some(r) if r.kind() != kind => return Err(TokenError::Unknown),
            None => return Err(TokenError::Expired),
            Some(_) => {}
        }
        let expired = e.expires <= now;
        let Some(e) = inner.map.remove(token) else {
            return Err(TokenError::Unknown);
        };
        inner.live -= 1;
        inner.bytes -= e.cost;
        if expired {
            // Not swept yet: the same answer as after the sweep.
            inner.map.insert(
                token.to_string(),
                Entry {
                    req: None,
                    cost: 0,
                    expires: e.expires,
                },
            );
            return Err(TokenError::Expired);
        }
        e.req.ok_or(TokenError::Unknown)
    }

    /// Drops the requests whose TTL is over (their tokens stay one more
    /// TTL, to answer 410), and forgets those tokens after that. Returns
    /// the bytes the dropped requests held.
    pub fn sweep(&self, now: Instant) -> usize {
        sweep_locked(&mut self.lock(), self.limits.token_ttl, now)
    }

    /// (requests waiting, the bytes they hold).
    pub fn pending(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.live, inner.bytes)
    }

    /// How often the sweeper should run: a tenth of the TTL, between 50 ms
    /// and 5 s (a request outlives its TTL by at most that much).
    pub fn sweep_interval(&self) -> Duration {
        (self.limits.token_ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }
}

fn sweep_locked(inner: &mut Inner, ttl: Duration, now: Instant) -> usize {
    let (mut live, mut bytes) = (inner.live, inner.bytes);
    inner.map.retain(|_, e| {
        if e.expires > now {
            return true;
        }
        if e.req.take().is_some() {
            live -= 1;
            bytes -= e.cost;
            e.cost = 0;
        }
        crate::util::saturating_add(e.expires, ttl) > now
    });
    let freed = inner.bytes - bytes;
    (inner.live, inner.bytes) = (live, bytes);
    // A burst of requests leaves a large table behind; give it back.
    if inner.map.capacity() > 64 && inner.map.capacity() > 4 * inner.map.len() {
        inner.map.shrink_to_fit();
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::portforward;

    fn pf(ports: usize) -> StreamRequest {
        StreamRequest::PortForward(portforward::Target {
            netns: "/run/netns/x".into(),
            ports: vec![80; ports],
        })
    }

    fn limits(ttl_ms: u64, max: usize, bytes: usize) -> Limits {
        Limits {
            token_ttl: Duration::from_millis(ttl_ms),
            max_pending: max,
            max_pending_bytes: bytes,
            ..Limits::default()
        }
    }

    #[test]
    fn single_use_and_kind_checked() {
        let t = Tokens::new(limits(60_000, 10, 1 << 20));
        let now = Instant::now();
        t.insert("a".into(), pf(1), now).unwrap();
        assert_eq!(t.take("exec", "a", now).unwrap_err(), TokenError::Unknown);
        assert!(t.take("portforward", "a", now).is_ok());
        assert_eq!(
            t.take("portforward", "a", now).unwrap_err(),
            TokenError::Unknown
        );
        assert_eq!(t.pending(), (0, 0));
    }

    #[test]
    fn expired_requests_are_dropped_by_the_sweep_and_answer_gone_for_a_ttl() {
        let t = Tokens::new(limits(1000, 10, 1 << 20));
        let t0 = Instant::now();
        t.insert("a".into(), pf(1), t0).unwrap();
        t.insert("b".into(), pf(1), t0).unwrap();
        assert_eq!(t.pending().0, 2);
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(t.sweep(later), 2 * pf(1).cost());
        // The requests (and their memory) are gone...
        assert_eq!(t.pending(), (0, 0));
        // ... their tokens answer 410 ...
        assert_eq!(
            t.take("portforward", "a", later).unwrap_err(),
            TokenError::Expired
        );
        // ... until one more TTL has passed.
        t.sweep(t0 + Duration::from_millis(2500));
        let gone = t0 + Duration::from_millis(2500);
        assert_eq!(
            t.take("portforward", "b", gone).unwrap_err(),
            TokenError::Unknown
        );
        assert!(t.lock().map.is_empty());
    }

    #[test]
    fn an_expired_token_not_yet_swept_is_gone_too() {
        let t = Tokens::new(limits(1000, 10, 1 << 20));
        let t0 = Instant::now();
        t.insert("a".into(), pf(1), t0).unwrap();
        let late = t0 + Duration::from_millis(1001);
        assert_eq!(
            t.take("portforward", "a", late).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            t.take("portforward", "a", late).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(t.pending(), (0, 0));
    }

    #[test]
    fn count_and_bytes_are_capped_and_freed_by_use_or_expiry() {
        let t = Tokens::new(limits(1000, 2, 1 << 20));
        let t0 = Instant::now();
        t.insert("a".into(), pf(1), t0).unwrap();
        t.insert("b".into(), pf(1), t0).unwrap();
        let e = t.insert("c".into(), pf(1), t0).unwrap_err();
        assert!(matches!(e, IssueError::TooMany { limit: 2 }), "{e}");
        // A use frees a place.
        t.take("portforward", "a", t0).unwrap();
        t.insert("c".into(), pf(1), t0).unwrap();
        // Expiry frees them all (the insert sweeps).
        let later = t0 + Duration::from_secs(2);
        t.insert("d".into(), pf(1), later).unwrap();
        t.insert("e".into(), pf(1), later).unwrap();

        let one = pf(1000).cost();
        let t = Tokens::new(limits(1000, 100, one * 2));
        t.insert("a".into(), pf(1000), t0).unwrap();
        t.insert("b".into(), pf(1000), t0).unwrap();
        let e = t.insert("c".into(), pf(1), t0).unwrap_err();
        assert!(matches!(e, IssueError::TooLarge { .. }), "{e}");
        assert_eq!(t.pending(), (2, one * 2));
    }
}
