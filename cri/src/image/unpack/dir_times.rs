//! Directory times, applied after the last entry: adding a child changes a directory's
//! mtime, so a directory can only be stamped once nothing more is created in it.
//!
//! They are kept as a tree of names, one node per distinct directory path, so memory follows
//! the directories that exist, not the entries that named them: a layer that declares the
//! same 2,000-deep directory 3,000 times holds 2,000 nodes, each one name and the last times
//! given, where a list of (path, times) per entry held six million names (+323 MiB).
//! Nodes of a directory that a later entry removes are freed and reused.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};

use rustix::fs::Timestamps;

/// The directories whose times are still to be set, by path beneath the layer root.
pub(super) struct DirTimes {
    /// `nodes[0]` is the layer root, which has no times of its own to set.
    nodes: Vec<Node>,
    /// Indexes of nodes freed by [`DirTimes::forget`], reused first.
    free: Vec<usize>,
    /// The most directories tracked at once.
    peak: usize,
}

#[derive(Default)]
struct Node {
    children: BTreeMap<OsString, usize>,
    /// The times of the last entry that declared this directory; `None` for a parent that
    /// was only created implicitly.
    times: Option<Timestamps>,
}

impl DirTimes {
    pub(super) fn new() -> Self {
        DirTimes {
            nodes: vec![Node::default()],
            free: Vec::new(),
            peak: 0,
        }
    }

    /// Number of directories tracked (those declared and their parents).
    pub(super) fn len(&self) -> usize {
        self.nodes.len().saturating_sub(1 + self.free.len())
    }

    /// The most directories tracked at once so far.
    pub(super) fn peak(&self) -> usize {
        self.peak
    }

    /// Records `times` for the directory `comps`; an earlier record of it is replaced.
    pub(super) fn record(&mut self, comps: &[&OsStr], times: Timestamps) {
        let mut cur = 0;
        for &comp in comps {
            cur = match self.nodes.get(cur).and_then(|n| n.children.get(comp)) {
                Some(&child) => child,
                None => self.add_child(cur, comp),
            };
        }
        if cur != 0 {
            if let Some(node) = self.nodes.get_mut(cur) {
                node.times = Some(times);
            }
        }
    }

    /// Forgets the directory `comps` and everything beneath it: a later entry replaced it,
    /// or whited it out, so there is nothing of it left to stamp.
    pub(super) fn forget(&mut self, comps: &[&OsStr]) {
        let Some((&name, parents)) = comps.split_last() else {
            return;
        };
        let mut cur = 0;
        for &comp in parents {
            match self.nodes.get(cur).and_then(|n| n.children.get(comp)) {
                Some(&child) => cur = child,
                None => return,
            }
        }
        let Some(removed) = self
            .nodes
            .get_mut(cur)
            .and_then(|n| n.children.remove(name))
        else {
            return;
        };
        let mut pending = vec![removed];
        while let Some(i) = pending.pop() {
            if let Some(node) = self.nodes.get_mut(i) {
                let node = std::mem::take(node);
                pending.extend(node.children.into_values());
                self.free.push(i);
            }
        }
    }

    /// Calls `f` with the path and times of every recorded directory, parents before their
    /// children (the order does not matter to the kernel: setting a directory's times does
    /// not touch its parent's). Iterative, so a deep tree needs no deep stack.
    pub(super) fn visit<E>(
        &self,
        mut f: impl FnMut(&[&OsStr], &Timestamps) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut path: Vec<&OsStr> = Vec::new();
        // (depth of the parent, name, node)
        let mut stack: Vec<(usize, &OsStr, usize)> = Vec::new();
        fn push<'a>(stack: &mut Vec<(usize, &'a OsStr, usize)>, depth: usize, node: &'a Node) {
            for (name, &child) in node.children.iter().rev() {
                stack.push((depth, name.as_os_str(), child));
            }
        }
        if let Some(root) = self.nodes.first() {
            push(&mut stack, 0, root);
        }
        while let Some((depth, name, i)) = stack.pop() {
            path.truncate(depth);
            path.push(name);
            let Some(node) = self.nodes.get(i) else {
                continue;
            };
            if let Some(times) = &node.times {
                f(&path, times)?;
            }
            push(&mut stack, depth + 1, node);
        }
        Ok(())
    }

    fn add_child(&mut self, parent: usize, name: &OsStr) -> usize {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.nodes.push(Node::default());
                self.nodes.len() - 1
            }
        };
        if let Some(p) = self.nodes.get_mut(parent) {
            p.children.insert(name.to_os_string(), i);
        }
        self.peak = self.peak.max(self.len());
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::Timespec;

    fn at(sec: i64) -> Timestamps {
        let t = Timespec {
            tv_sec: sec,
            tv_nsec: 0,
        };
        Timestamps {
            last_access: Timespec { ..t },
            last_modification: t,
        }
    }

    fn comps(p: &str) -> Vec<&OsStr> {
        p.split('/').map(OsStr::new).collect()
    }

    fn all(t: &DirTimes) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        t.visit(|p, times| {
            let p: Vec<_> = p.iter().map(|c| c.to_string_lossy()).collect();
            out.push((p.join("/"), times.last_modification.tv_sec));
            Ok::<(), ()>(())
        })
        .unwrap();
        out
    }

    #[test]
    fn repeated_records_keep_one_node_per_directory_and_the_last_times() {
        let mut t = DirTimes::new();
        let deep = "d/".repeat(500);
        let deep = deep.trim_end_matches('/');
        for i in 0..1000 {
            t.record(&comps(deep), at(i));
        }
        t.record(&comps("d"), at(7));
        assert_eq!(t.len(), 500);
        let got = all(&t);
        assert_eq!(got.len(), 2, "only declared directories are stamped");
        assert_eq!(got[0], ("d".to_string(), 7));
        assert_eq!(got[1], (deep.to_string(), 999));
    }

    #[test]
    fn forget_frees_a_subtree_for_reuse() {
        let mut t = DirTimes::new();
        t.record(&comps("a/b/c"), at(1));
        t.record(&comps("a/x"), at(2));
        t.record(&comps("a"), at(3));
        assert_eq!(t.len(), 4);
        t.forget(&comps("a/b"));
        t.forget(&comps("nothing/here"));
        assert_eq!(t.len(), 2);
        assert_eq!(all(&t), [("a".into(), 3), ("a/x".into(), 2)]);
        // Replaced and re-declared: the same nodes again, no growth.
        for i in 0..100 {
            t.record(&comps("a/b/c"), at(i));
            t.forget(&comps("a/b"));
        }
        assert_eq!(t.nodes.len(), 5);
        t.forget(&comps("a"));
        assert_eq!(t.len(), 0);
        assert!(all(&t).is_empty());
    }
}
