//! Placing fds into their final slots in a child without clobbering.
//!
//! The bug this avoids (runc#4294, golang/go#61751): when sources are moved
//! into target slots one by one, a source whose number equals a later target
//! is overwritten before it is moved, and an fd of the executable
//! (`/proc/self/fd/N`) can then name another file. Here every source — and the
//! executable — is first duplicated *above the highest target*, and only then
//! placed, so no placement can overwrite a source.

use std::os::fd::RawFd;

/// A plan for placing fds: `(source, target)` pairs plus the fd to keep for
/// `execveat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdPlan {
    /// `(source, target)` pairs.
    pub moves: Vec<(RawFd, RawFd)>,
    /// The lowest fd number that is above every target: the scratch area.
    pub scratch_base: RawFd,
}

impl FdPlan {
    /// Plans `moves`. Targets must be distinct.
    pub fn new(moves: Vec<(RawFd, RawFd)>) -> Result<Self, FdPlanError> {
        let mut targets: Vec<RawFd> = moves.iter().map(|m| m.1).collect();
        targets.sort_unstable();
        if targets.windows(2).any(|w| w[0] == w[1]) {
            return Err(FdPlanError::DuplicateTarget);
        }
        if moves.iter().any(|m| m.0 < 0 || m.1 < 0) {
            return Err(FdPlanError::Negative);
        }
        let scratch_base = targets.last().map_or(0, |t| t + 1);
        Ok(Self {
            moves,
            scratch_base,
        })
    }

    /// Whether `fd` is one of the targets.
    pub fn is_target(&self, fd: RawFd) -> bool {
        self.moves.iter().any(|m| m.1 == fd)
    }

    /// Simulates the plan on a table `fd → file` and returns the table after
    /// the moves (used by the tests; the child does the same with `fcntl` and
    /// `dup2`).
    pub fn simulate(
        &self,
        table: &std::collections::BTreeMap<RawFd, char>,
    ) -> std::collections::BTreeMap<RawFd, char> {
        let mut t = table.clone();
        let mut next = self.scratch_base;
        let mut lowest_free = |t: &std::collections::BTreeMap<RawFd, char>| {
            while t.contains_key(&next) {
                next += 1;
            }
            next
        };
        let mut tmp = Vec::new();
        for &(src, _) in &self.moves {
            let f = t[&src];
            let n = lowest_free(&t);
            t.insert(n, f);
            tmp.push(n);
        }
        for (i, &(_, dst)) in self.moves.iter().enumerate() {
            let f = t[&tmp[i]];
            t.insert(dst, f);
        }
        t
    }
}

/// An impossible plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FdPlanError {
    /// Two sources were given the same target.
    #[error("two fds share one target slot")]
    DuplicateTarget,
    /// A negative fd.
    #[error("negative fd number")]
    Negative,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn sources_sitting_on_other_targets_survive() {
        // The runc#4294 shape: the socket source is fd 4 (a target), the exe
        // is fd 3 (another target), stdio come from 5, 6, 7.
        let table: BTreeMap<RawFd, char> = [(3, 'x'), (4, 's'), (5, 'i'), (6, 'o'), (7, 'e')]
            .into_iter()
            .collect();
        let plan = FdPlan::new(vec![(5, 0), (6, 1), (7, 2), (4, 3), (3, 4)]).unwrap();
        let after = plan.simulate(&table);
        assert_eq!(after[&0], 'i');
        assert_eq!(after[&1], 'o');
        assert_eq!(after[&2], 'e');
        assert_eq!(after[&3], 's');
        assert_eq!(after[&4], 'x');
    }

    #[test]
    fn swapping_is_fine() {
        let table: BTreeMap<RawFd, char> = [(0, 'a'), (1, 'b')].into_iter().collect();
        let after = FdPlan::new(vec![(0, 1), (1, 0)]).unwrap().simulate(&table);
        assert_eq!((after[&0], after[&1]), ('b', 'a'));
    }

    #[test]
    fn scratch_is_above_all_targets() {
        let plan = FdPlan::new(vec![(9, 0), (0, 7)]).unwrap();
        assert_eq!(plan.scratch_base, 8);
        assert!(plan.is_target(7) && !plan.is_target(9));
        assert_eq!(
            FdPlan::new(vec![(1, 3), (2, 3)]),
            Err(FdPlanError::DuplicateTarget)
        );
    }
}
