//! Interface counters of a pod's network namespace.
//!
//! A berth pod has no pause process whose `/proc/<pid>/net/dev` could be
//! read, so a short-lived thread joins the pinned netns and reads
//! `/proc/thread-self/net/dev` (which shows the reading thread's netns, not
//! the process's). The thread ends afterwards, so no thread of the daemon is
//! ever left in a pod's namespace.

use std::path::{Path, PathBuf};

/// Counters of one interface (`/proc/net/dev`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Sent packets dropped.
    pub tx_dropped: u64,
}

/// Parses `/proc/net/dev` (two header lines, then `name: 16 counters`).
pub fn parse_net_dev(text: &str) -> Vec<IfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            if v.len() < 12 {
                return None;
            }
            Some(IfaceCounters {
                name: name.trim().to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

/// The counters of every interface but `lo` in the netns pinned at `ns`.
pub fn read_in_netns(ns: &Path) -> std::io::Result<Vec<IfaceCounters>> {
    let ns: PathBuf = ns.to_path_buf();
    std::thread::Builder::new()
        .name("berth-netstats".into())
        .spawn(move || {
            let f = std::fs::File::open(&ns)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
            Ok(parse_net_dev(&text)
                .into_iter()
                .filter(|i| i.name != "lo")
                .collect())
        })?
        .join()
        .map_err(|_| std::io::Error::other("the netns reader thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0
";
        let v = parse_net_dev(text);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].name, "lo");
        assert_eq!(
            v[1],
            IfaceCounters {
                name: "eth0".into(),
                rx_bytes: 1000,
                rx_packets: 10,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 2000,
                tx_packets: 20,
                tx_errors: 3,
                tx_dropped: 4,
            }
        );
    }

    #[test]
    fn reads_its_own_netns() {
        // The thread joins the netns it is already in (setns needs root),
        // so it must see what /proc/net/dev shows.
        let got: Vec<String> = read_in_netns(Path::new("/proc/self/ns/net"))
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        let want: Vec<String> = parse_net_dev(&std::fs::read_to_string("/proc/net/dev").unwrap())
            .into_iter()
            .map(|i| i.name)
            .filter(|n| n != "lo")
            .collect();
        assert_eq!(got, want, "the same interfaces, lo left out");
    }
}
