//! How many decompressed bytes a pull may still unpack, shared by its
//! layers (which unpack concurrently): a gzip bomb is refused when it
//! passes the node's limit, before the disk fills.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What is left of a pull's unpack allowance (decompressed tar bytes).
#[derive(Debug, Clone)]
pub struct UnpackBudget {
    remaining: Arc<AtomicU64>,
    limit: u64,
}

/// The layer stream passed the limit.
#[derive(Debug, thiserror::Error)]
#[error(
    "the image unpacks to more than {limit} bytes, the node's limit ([image] max_unpacked_bytes)"
)]
pub struct OverBudget {
    /// The limit, bytes.
    pub limit: u64,
}

impl UnpackBudget {
    /// At most `limit` bytes; 0: no limit.
    pub fn new(limit: u64) -> UnpackBudget {
        let limit = if limit == 0 { u64::MAX } else { limit };
        UnpackBudget {
            remaining: Arc::new(AtomicU64::new(limit)),
            limit,
        }
    }

    /// No limit.
    pub fn unlimited() -> UnpackBudget {
        UnpackBudget::new(0)
    }

    /// Takes `n` bytes; `false` (nothing taken) when fewer are left.
    fn take(&self, n: u64) -> bool {
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }

    /// `inner`, failing once the budget is spent.
    pub(super) fn wrap<R: Read>(&self, inner: R) -> Budgeted<R> {
        Budgeted {
            inner,
            budget: self.clone(),
        }
    }
}

/// A decompressed stream that draws on an [`UnpackBudget`].
pub(super) struct Budgeted<R> {
    inner: R,
    budget: UnpackBudget,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.budget.take(n as u64) {
            return Err(io::Error::other(OverBudget {
                limit: self.budget.limit,
            }));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_share_the_budget_and_fail_past_it() {
        let b = UnpackBudget::new(10);
        let mut out = Vec::new();
        b.wrap(&[1u8; 6][..]).read_to_end(&mut out).unwrap();
        let e = b.wrap(&[2u8; 6][..]).read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().contains("more than 10 bytes"), "{e}");
        let mut all = Vec::new();
        UnpackBudget::unlimited()
            .wrap(&[0u8; 1 << 16][..])
            .read_to_end(&mut all)
            .unwrap();
        assert_eq!(all.len(), 1 << 16);
    }
}
