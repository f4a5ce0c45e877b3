//! Usage figures of a cgroup, v1 and v2: what CRI `ContainerStats` and the
//! cAdvisor-style metrics need.
//!
//! Reading never writes and never needs the cgroup to have been created by
//! berth, so it also serves kubelet's pod cgroups. A controller that is not
//! mounted, or a file the kernel does not have, reads as zero (or `None` for
//! limits): a stats call must not fail because one figure is missing.
//! Pressure ([`Psi`], cgroup v2 only) and the swap still available are
//! `None` where the kernel does not say.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::pressure::{read_pressure, Psi};
use super::Version;

/// Nanoseconds per USER_HZ tick (Linux reports `cpuacct.stat` in 1/100 s).
const NS_PER_TICK: u64 = 10_000_000;

/// CPU time used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuStats {
    /// Total CPU time, nanoseconds.
    pub usage_ns: u64,
    /// In user mode, nanoseconds.
    pub user_ns: u64,
    /// In kernel mode, nanoseconds.
    pub system_ns: u64,
    /// CFS enforcement periods elapsed.
    pub periods: u64,
    /// Periods in which the cgroup was throttled.
    pub throttled_periods: u64,
    /// Time throttled, nanoseconds.
    pub throttled_ns: u64,
    /// CPU pressure (v2 `cpu.pressure`).
    #[serde(default)]
    pub psi: Option<Psi>,
}

/// Memory use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Current usage (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub usage: u64,
    /// Usage minus inactive file pages: what kubelet evicts on.
    pub working_set: u64,
    /// Anonymous memory (v1 `rss`, v2 `anon`).
    pub rss: u64,
    /// Page cache (v1 `cache`, v2 `file`).
    pub cache: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
    /// The limit (`None`: unlimited).
    pub limit: Option<u64>,
    /// Times the limit was hit (v1 `memory.failcnt`, v2 `max` events).
    pub failcnt: u64,
    /// Processes the kernel's OOM killer killed in the cgroup.
    pub oom_kills: u64,
    /// Swap in use.
    pub swap: u64,
    /// Swap the cgroup may still use, where it has a swap limit: v2
    /// `memory.swap.max` − `memory.swap.current`; v1, which has only the
    /// combined memory+swap counter, `memory.memsw.limit_in_bytes` −
    /// `memory.memsw.usage_in_bytes` — what containerd 2 reports as CRI's
    /// `swap_available_bytes`. `None`: no limit, or no swap accounting.
    #[serde(default)]
    pub swap_available: Option<u64>,
    /// Memory pressure (v2 `memory.pressure`).
    #[serde(default)]
    pub psi: Option<Psi>,
}

/// Tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    /// Tasks now.
    pub current: u64,
    /// The limit (`None`: unlimited).
    pub limit: Option<u64>,
}

/// Block I/O, summed over devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IoStats {
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read operations.
    pub read_ops: u64,
    /// Write operations.
    pub write_ops: u64,
    /// I/O pressure (v2 `io.pressure`).
    #[serde(default)]
    pub psi: Option<Psi>,
}

/// All figures of one cgroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// CPU.
    pub cpu: CpuStats,
    /// Memory.
    pub memory: MemoryStats,
    /// Tasks.
    pub pids: PidsStats,
    /// Block I/O.
    pub io: IoStats,
}

fn read(path: PathBuf) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn read_u64(path: PathBuf) -> u64 {
    read(path).and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// A limit file: `max` (v2) or a value at or above `unlimited_from` (v1's
/// page-rounded `i64::MAX`) is no limit.
fn read_limit(path: PathBuf, unlimited_from: u64) -> Option<u64> {
    let s = read(path)?;
    let s = s.trim();
    if s == "max" {
        return None;
    }
    s.parse().ok().filter(|v| *v < unlimited_from)
}

/// `key value` lines (`memory.stat`, `cpu.stat`, `memory.events`, ...).
fn flat_keyed(path: PathBuf) -> HashMap<String, u64> {
    read(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Reads the figures of the cgroup at `rel` below `root` (v1: below each
/// `root/<controller>`).
pub fn read_stats(version: Version, root: &Path, rel: &Path) -> Stats {
    match version {
        Version::V1 => read_v1(root, rel),
        Version::V2 => read_v2(&root.join(rel)),
    }
}

fn read_v1(root: &Path, rel: &Path) -> Stats {
    let dir = |ctrl: &str| root.join(ctrl).join(rel);
    let acct = dir("cpuacct");
    let mut cpu = CpuStats {
        usage_ns: read_u64(acct.join("cpuacct.usage")),
        user_ns: read_u64(acct.join("cpuacct.usage_user")),
        system_ns: read_u64(acct.join("cpuacct.usage_sys")),
        ..Default::default()
    };
    if cpu.user_ns == 0 && cpu.system_ns == 0 {
        let t = flat_keyed(acct.join("cpuacct.stat"));
        cpu.user_ns = t.get("user").copied().unwrap_or(0) * NS_PER_TICK;
        cpu.system_ns = t.get("system").copied().unwrap_or(0) * NS_PER_TICK;
    }
    let throttling = flat_keyed(dir("cpu").join("cpu.stat"));
    cpu.periods = throttling.get("nr_periods").copied().unwrap_or(0);
    cpu.throttled_periods = throttling.get("nr_throttled").copied().unwrap_or(0);
    cpu.throttled_ns = throttling.get("throttled_time").copied().unwrap_or(0);

    let mem = dir("memory");
    let ms = flat_keyed(mem.join("memory.stat"));
    // `total_*` includes descendants (a pod cgroup's containers).
    let get = |k: &str| {
        ms.get(&format!("total_{k}"))
            .or_else(|| ms.get(k))
            .copied()
            .unwrap_or(0)
    };
    let usage = read_u64(mem.join("memory.usage_in_bytes"));
    let memsw = read_u64(mem.join("memory.memsw.usage_in_bytes"));
    let memory = MemoryStats {
        usage,
        working_set: usage.saturating_sub(get("inactive_file")),
        rss: get("rss"),
        cache: get("cache"),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        limit: read_limit(mem.join("memory.limit_in_bytes"), 1 << 62),
        failcnt: read_u64(mem.join("memory.failcnt")),
        oom_kills: flat_keyed(mem.join("memory.oom_control"))
            .get("oom_kill")
            .copied()
            .unwrap_or(0),
        swap: memsw.saturating_sub(usage),
        swap_available: read_limit(mem.join("memory.memsw.limit_in_bytes"), 1 << 62)
            .map(|limit| limit.saturating_sub(memsw)),
        psi: None,
    };
    let pids = PidsStats {
        current: read_u64(dir("pids").join("pids.current")),
        limit: read_limit(dir("pids").join("pids.max"), u64::MAX),
    };
    let blkio = dir("blkio");
    let (read_bytes, write_bytes) = blkio_v1(&blkio, "blkio.throttle.io_service_bytes");
    let (read_ops, write_ops) = blkio_v1(&blkio, "blkio.throttle.io_serviced");
    Stats {
        cpu,
        memory,
        pids,
        io: IoStats {
            read_bytes,
            write_bytes,
            read_ops,
            write_ops,
            psi: None,
        },
    }
}

/// A v1 blkio figure, `<file>_recursive` (with the descendants: a pod
/// cgroup's containers) where the kernel has it, else `<file>` (kernels
/// before 4.19 have no recursive throttle files; runc reads them the same
/// way). Read and write sums over devices.
///
/// Recent kernels (seen on 6.18) set blk-throttle up on a device only once
/// some cgroup configures a throttle rule for it, and count nothing in
/// these files before: v1 figures can then read zero for real I/O.
/// (cgroup v2's `io.stat` counts every bio.)
fn blkio_v1(dir: &Path, file: &str) -> (u64, u64) {
    let text = read(dir.join(format!("{file}_recursive"))).or_else(|| read(dir.join(file)));
    parse_blkio_v1(&text.unwrap_or_default())
}

/// v1 blkio files: `maj:min Read N` / `maj:min Write N` lines (and
/// `Sync`/`Async`/`Discard`/`Total` ones, and a last `Total` line, skipped).
fn parse_blkio_v1(text: &str) -> (u64, u64) {
    let (mut r, mut w) = (0u64, 0u64);
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(_dev), Some(op), Some(v)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let v: u64 = v.parse().unwrap_or(0);
        match op {
            "Read" => r += v,
            "Write" => w += v,
            _ => {}
        }
    }
    (r, w)
}

fn read_v2(dir: &Path) -> Stats {
    let cs = flat_keyed(dir.join("cpu.stat"));
    let c = |k: &str| cs.get(k).copied().unwrap_or(0);
    let cpu = CpuStats {
        usage_ns: c("usage_usec") * 1000,
        user_ns: c("user_usec") * 1000,
        system_ns: c("system_usec") * 1000,
        periods: c("nr_periods"),
        throttled_periods: c("nr_throttled"),
        throttled_ns: c("throttled_usec") * 1000,
        psi: read_pressure(&dir.join("cpu.pressure")),
    };
    let ms = flat_keyed(dir.join("memory.stat"));
    let m = |k: &str| ms.get(k).copied().unwrap_or(0);
    let events = flat_keyed(dir.join("memory.events"));
    let usage = read_u64(dir.join("memory.current"));
    let swap = read_u64(dir.join("memory.swap.current"));
    let memory = MemoryStats {
        usage,
        working_set: usage.saturating_sub(m("inactive_file")),
        rss: m("anon"),
        cache: m("file"),
        page_faults: m("pgfault"),
        major_page_faults: m("pgmajfault"),
        limit: read_limit(dir.join("memory.max"), u64::MAX),
        failcnt: events.get("max").copied().unwrap_or(0),
        // `oom_kill` counts processes killed; `oom` counts limit hits that
        // may not have killed anything.
        oom_kills: events.get("oom_kill").copied().unwrap_or(0),
        swap,
        swap_available: read_limit(dir.join("memory.swap.max"), u64::MAX)
            .map(|limit| limit.saturating_sub(swap)),
        psi: read_pressure(&dir.join("memory.pressure")),
    };
    let pids = PidsStats {
        current: read_u64(dir.join("pids.current")),
        limit: read_limit(dir.join("pids.max"), u64::MAX),
    };
    let io = IoStats {
        psi: read_pressure(&dir.join("io.pressure")),
        ..parse_io_stat(&read(dir.join("io.stat")).unwrap_or_default())
    };
    Stats {
        cpu,
        memory,
        pids,
        io,
    }
}

/// v2 `io.stat`: a `maj:min rbytes=N wbytes=N rios=N wios=N dbytes=N
/// dios=N` line per device (more keys with some I/O controllers), summed.
fn parse_io_stat(text: &str) -> IoStats {
    let mut io = IoStats::default();
    for line in text.lines() {
        for kv in line.split_whitespace().skip(1) {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" => io.read_bytes += v,
                "wbytes" => io.write_bytes += v,
                "rios" => io.read_ops += v,
                "wios" => io.write_ops += v,
                _ => {}
            }
        }
    }
    io
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, file: &str, body: &str) {
        let p = root.join(file);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    #[test]
    fn v1_figures() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        put(r, "cpuacct/k/c/cpuacct.usage", "5000000000\n");
        put(r, "cpuacct/k/c/cpuacct.stat", "user 300\nsystem 200\n");
        put(
            r,
            "cpu/k/c/cpu.stat",
            "nr_periods 10\nnr_throttled 3\nthrottled_time 777\n",
        );
        put(r, "memory/k/c/memory.usage_in_bytes", "10000\n");
        put(
            r,
            "memory/k/c/memory.stat",
            "cache 1\nrss 2\ntotal_cache 4000\ntotal_rss 5000\ntotal_inactive_file 1500\n\
             total_pgfault 9\ntotal_pgmajfault 1\n",
        );
        put(
            r,
            "memory/k/c/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        put(r, "memory/k/c/memory.failcnt", "2\n");
        put(r, "memory/k/c/memory.memsw.usage_in_bytes", "12000\n");
        put(r, "memory/k/c/memory.memsw.limit_in_bytes", "20000\n");
        put(
            r,
            "memory/k/c/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        put(r, "pids/k/c/pids.current", "4\n");
        put(r, "pids/k/c/pids.max", "max\n");
        put(
            r,
            "blkio/k/c/blkio.throttle.io_service_bytes_recursive",
            "8:0 Read 100\n8:0 Write 50\n8:0 Total 150\n8:16 Read 1\nTotal 151\n",
        );
        let s = read_stats(Version::V1, r, Path::new("k/c"));
        assert_eq!(s.cpu.usage_ns, 5_000_000_000);
        assert_eq!(s.cpu.user_ns, 3_000_000_000);
        assert_eq!(s.cpu.system_ns, 2_000_000_000);
        assert_eq!(
            (s.cpu.periods, s.cpu.throttled_periods, s.cpu.throttled_ns),
            (10, 3, 777)
        );
        assert_eq!(s.memory.usage, 10000);
        assert_eq!(s.memory.working_set, 8500);
        assert_eq!((s.memory.rss, s.memory.cache), (5000, 4000));
        assert_eq!((s.memory.page_faults, s.memory.major_page_faults), (9, 1));
        assert_eq!(s.memory.limit, None, "page-rounded i64::MAX is unlimited");
        assert_eq!((s.memory.failcnt, s.memory.oom_kills), (2, 1));
        assert_eq!(s.memory.swap, 2000, "memsw usage - usage");
        assert_eq!(
            s.memory.swap_available,
            Some(8000),
            "memsw limit - memsw usage, as containerd"
        );
        assert_eq!(
            (s.cpu.psi, s.memory.psi, s.io.psi),
            (None, None, None),
            "v1 has no pressure files"
        );
        assert_eq!(
            s.pids,
            PidsStats {
                current: 4,
                limit: None
            }
        );
        assert_eq!((s.io.read_bytes, s.io.write_bytes), (101, 50));
    }

    #[test]
    fn v2_figures() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        put(
            r,
            "k/c/cpu.stat",
            "usage_usec 2000\nuser_usec 1500\nsystem_usec 500\nnr_periods 4\n\
             nr_throttled 1\nthrottled_usec 30\n",
        );
        put(r, "k/c/memory.current", "8192\n");
        put(
            r,
            "k/c/memory.stat",
            "anon 4096\nfile 2048\ninactive_file 1024\npgfault 7\npgmajfault 2\n",
        );
        put(r, "k/c/memory.max", "65536\n");
        put(r, "k/c/memory.swap.current", "1024\n");
        put(r, "k/c/memory.swap.max", "4096\n");
        put(
            r,
            "k/c/cpu.pressure",
            "some avg10=1.50 avg60=0.75 avg300=0.20 total=123456\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=789\n",
        );
        put(
            r,
            "k/c/memory.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=2460\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=814\n",
        );
        put(
            r,
            "k/c/io.pressure",
            "some avg10=14.97 avg60=10.06 avg300=7.89 total=355200895\n\
             full avg10=0.00 avg60=0.00 avg300=1.57 total=139211831\n",
        );
        put(
            r,
            "k/c/memory.events",
            "low 0\nhigh 0\nmax 5\noom 3\noom_kill 2\n",
        );
        put(r, "k/c/pids.current", "2\n");
        put(r, "k/c/pids.max", "100\n");
        put(
            r,
            "k/c/io.stat",
            "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=0 rios=1 wios=0\n",
        );
        let s = read_stats(Version::V2, r, Path::new("k/c"));
        assert_eq!(
            (s.cpu.usage_ns, s.cpu.user_ns, s.cpu.system_ns),
            (2_000_000, 1_500_000, 500_000)
        );
        assert_eq!(s.cpu.throttled_ns, 30_000);
        assert_eq!(s.memory.working_set, 7168);
        assert_eq!(s.memory.limit, Some(65536));
        assert_eq!(s.memory.oom_kills, 2, "oom_kill, not oom");
        assert_eq!(s.memory.failcnt, 5);
        assert_eq!((s.memory.swap, s.memory.swap_available), (1024, Some(3072)));
        let cpu = s.cpu.psi.expect("cpu.pressure read");
        assert_eq!((cpu.some.total_us, cpu.some.avg10), (123_456, 1.5));
        assert_eq!(cpu.full.map(|f| f.total_us), Some(789));
        let mem = s.memory.psi.expect("memory.pressure read");
        assert_eq!((mem.some.total_us, mem.full.unwrap().total_us), (2460, 814));
        let io = s.io.psi.expect("io.pressure read");
        assert_eq!(io.full.unwrap().avg300, 1.57);
        assert_eq!(
            s.pids,
            PidsStats {
                current: 2,
                limit: Some(100)
            }
        );
        assert_eq!(
            (
                s.io.read_bytes,
                s.io.write_bytes,
                s.io.read_ops,
                s.io.write_ops
            ),
            (11, 20, 2, 2)
        );
    }

    #[test]
    fn v2_swap_without_a_limit_has_nothing_available() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "c/memory.swap.current", "0\n");
        put(t.path(), "c/memory.swap.max", "max\n");
        let s = read_stats(Version::V2, t.path(), Path::new("c"));
        assert_eq!(s.memory.swap_available, None, "no limit: unknown");
        put(t.path(), "c/memory.swap.current", "8192\n");
        put(t.path(), "c/memory.swap.max", "0\n");
        let s = read_stats(Version::V2, t.path(), Path::new("c"));
        assert_eq!(s.memory.swap_available, Some(0), "never below zero");
    }

    /// `io.stat` as cgroup-v2.rst shows it.
    #[test]
    fn io_stat_sums_devices() {
        let io = parse_io_stat(
            "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n\
             8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 dbytes=50331648 dios=3021\n",
        );
        assert_eq!(
            (io.read_bytes, io.write_bytes, io.read_ops, io.write_ops),
            (91_889_664, 613_781_504, 9142, 1605)
        );
        assert_eq!(parse_io_stat(""), IoStats::default());
    }

    /// `blkio.throttle.io_service_bytes` of a v1 cgroup that wrote 1 MiB to
    /// and read 256 KiB from a loop device with O_DIRECT (Linux 6.18).
    const BLKIO_BYTES: &str = "7:0 Read 262144\n7:0 Write 1048576\n7:0 Sync 1310720\n\
                               7:0 Async 0\n7:0 Discard 0\n7:0 Total 1310720\nTotal 1310720\n";

    #[test]
    fn v1_blkio_prefers_the_recursive_file_and_falls_back() {
        assert_eq!(parse_blkio_v1(BLKIO_BYTES), (262_144, 1_048_576));
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        // A kernel without the recursive throttle files.
        put(r, "blkio/c/blkio.throttle.io_service_bytes", BLKIO_BYTES);
        put(
            r,
            "blkio/c/blkio.throttle.io_serviced",
            "7:0 Read 4\n7:0 Write 16\n7:0 Total 20\nTotal 20\n",
        );
        let s = read_stats(Version::V1, r, Path::new("c"));
        assert_eq!(
            (
                s.io.read_bytes,
                s.io.write_bytes,
                s.io.read_ops,
                s.io.write_ops
            ),
            (262_144, 1_048_576, 4, 16)
        );
        // With it, the recursive figure (descendants included) wins.
        put(
            r,
            "blkio/c/blkio.throttle.io_service_bytes_recursive",
            "7:0 Read 1\n7:0 Write 2\nTotal 3\n",
        );
        let s = read_stats(Version::V1, r, Path::new("c"));
        assert_eq!((s.io.read_bytes, s.io.write_bytes), (1, 2));
    }

    #[test]
    fn a_missing_cgroup_reads_as_zero() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(
            read_stats(Version::V1, t.path(), Path::new("gone")),
            Stats::default()
        );
        assert_eq!(
            read_stats(Version::V2, t.path(), Path::new("gone")),
            Stats::default()
        );
    }
}
