//! The figures CRI stats carry beyond CPU and memory use, read from a
//! container that really worked: pressure (PSI, cgroup v2 only), block I/O
//! bytes and the swap still available. Part of `tests/cgroups.rs` (so the
//! cgroup v2 QEMU guest runs it too); kept in its own file to keep that one
//! from growing further.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use berth_core::cgroups::{parse_pressure, IoThrottle, Psi};

use super::*;

/// A loop device over a 16 MiB file in a temporary directory, detached on
/// drop: a real block device the test may write to without touching any
/// disk of the machine (on the guest, the file is in its tmpfs).
struct LoopDev {
    dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDev {
    fn attach() -> Result<Self, String> {
        if !Path::new("/dev/loop-control").exists() {
            return Err("no /dev/loop-control (the kernel has no loop driver loaded)".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let file = dir.path().join("disk");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(16 << 20))
            .map_err(|e| format!("backing file: {e}"))?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .map_err(|e| format!("losetup cannot run: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup --find failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(LoopDev { dev, _dir: dir })
    }

    /// The device's major and minor numbers.
    fn numbers(&self) -> (u32, u32) {
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        (
            nix::sys::stat::major(rdev) as u32,
            nix::sys::stat::minor(rdev) as u32,
        )
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Checks what the parser guarantees plus what the kernel always gives
/// for `what`: a `full` line for memory and I/O.
fn assert_shape(what: &str, psi: Option<Psi>) -> Psi {
    let p = psi.unwrap_or_else(|| panic!("{what}: no pressure figures on cgroup v2"));
    for d in std::iter::once(p.some).chain(p.full) {
        for avg in [d.avg10, d.avg60, d.avg300] {
            assert!((0.0..=100.0).contains(&avg), "{what}: {p:?}");
        }
    }
    if what != "cpu" {
        assert!(p.full.is_some(), "{what} has a full line: {p:?}");
    }
    p
}

/// Totals never go back.
fn assert_grew(what: &str, before: Psi, after: Psi) {
    assert!(
        after.some.total_us >= before.some.total_us,
        "{what}: {before:?} -> {after:?}"
    );
    if let (Some(b), Some(a)) = (before.full, after.full) {
        assert!(a.total_us >= b.total_us, "{what}: {before:?} -> {after:?}");
    }
}

#[test]
fn pressure_io_and_swap_figures_of_a_working_container() {
    let test = "pressure_io_and_swap_figures_of_a_working_container";
    let Some(h) = need(test, &["memory", "cpu", "cpuacct", "pids"]) else {
        return;
    };
    let disk = match LoopDev::attach() {
        Ok(d) => Some(d),
        Err(why) => skip::<LoopDev>(test, &format!("the block I/O part: {why}")),
    };
    let numbers = disk.as_ref().map(LoopDev::numbers);
    let mut resources = Resources {
        memory_limit: Some(64 * MIB),
        // Memory plus swap: a swap limit of 32 MiB where swap is accounted.
        memory_swap: Some(96 * MIB),
        ..Default::default()
    };
    if let (Version::V1, Some((major, minor))) = (h.version, numbers) {
        // v1's blkio files count nothing for a device no cgroup has a
        // throttle rule for (recent kernels set blk-throttle up lazily):
        // a rule far above anything the test does turns counting on.
        resources.io_throttle.push(IoThrottle {
            major,
            minor,
            read_bps: Some(1 << 40),
            write_bps: Some(1 << 40),
            ..Default::default()
        });
    }
    let (mut c, g) = container(&h, "figures", resources, |config| {
        config
            .mounts
            .push(berth_core::Mount::fs("tmpfs", "/scratch", &["size=64m"]));
    });
    // One more CPU burner than there are CPUs, so some of them wait for a
    // CPU (that is CPU pressure); 16 MiB of tmpfs; then 1 MiB written to
    // and 256 KiB read from the loop device with O_DIRECT (the bios are
    // issued by the container's own process, charged to its cgroup).
    let io = match numbers {
        Some((major, minor)) => format!(
            "mknod /dev/blk b {major} {minor} && \
             dd if=/dev/zero of=/dev/blk bs=64k count=16 oflag=direct conv=fsync 2>/dev/null && \
             dd if=/dev/blk of=/dev/null bs=64k count=4 iflag=direct 2>/dev/null && echo io-done; "
        ),
        None => String::new(),
    };
    let script = format!(
        "read go; n=$(nproc); i=0; \
         while [ $i -le $n ]; do (j=0; while [ $j -lt 20000 ]; do j=$((j+1)); done) & i=$((i+1)); done; \
         wait; dd if=/dev/zero of=/scratch/f bs=1M count=16 2>/dev/null; {io}\
         echo worked; exec sleep 600"
    );
    let mut p = Process::new(["sh", "-c", script.as_str()]);
    let (r, w) = pipe();
    p.stdin = Stdio::Fd(r);
    let (o, _e) = capture(&mut p);
    let init = c.run(p).unwrap();
    let lines = Lines::new(o);
    let s0 = stats(&c);
    std::fs::File::from(w).write_all(b"go\n").unwrap();
    if disk.is_some() {
        lines.wait_for("io-done");
    }
    lines.wait_for("worked");
    let s1 = stats(&c);
    assert!(s1.cpu.usage_ns > s0.cpu.usage_ns, "{:?}", s1.cpu);
    println!(
        "figures on {:?}: cpu psi {:?}; memory psi {:?}; io psi {:?}; io {}/{} bytes read/written; swap {} used, {:?} available",
        h.version,
        s1.cpu.psi,
        s1.memory.psi,
        s1.io.psi,
        s1.io.read_bytes,
        s1.io.write_bytes,
        s1.memory.swap,
        s1.memory.swap_available
    );

    // Pressure: on v2 present, well formed, growing, for the container and
    // its parent (a pod cgroup); on v1 absent.
    let parent = cgroups::read_stats(h.version, &h.root, Path::new(&g.top));
    match h.version {
        Version::V2 => {
            let cpu = assert_shape("cpu", s1.cpu.psi);
            let mem = assert_shape("memory", s1.memory.psi);
            let io = assert_shape("io", s1.io.psi);
            assert_grew("cpu", assert_shape("cpu", s0.cpu.psi), cpu);
            assert_grew("memory", assert_shape("memory", s0.memory.psi), mem);
            assert_grew("io", assert_shape("io", s0.io.psi), io);
            assert!(
                cpu.some.total_us > 0,
                "more burners than CPUs: some waited ({cpu:?})"
            );
            // The kernel's own file, read after: same shape, no less.
            let raw = std::fs::read_to_string(h.root.join(&g.rel).join("cpu.pressure")).unwrap();
            let raw = parse_pressure(&raw).unwrap();
            assert_eq!(raw.full.is_some(), cpu.full.is_some(), "{raw:?}");
            assert_grew("cpu (kernel file)", cpu, raw);
            // The parent (a pod's cgroup) held the same waiting burners.
            // (Not ">= the container's": the kernel keeps each group's
            // per-CPU times apart and may skip ancestors on a task switch,
            // so a parent read later can still show a little less.)
            let pod_cpu = assert_shape("cpu of the parent", parent.cpu.psi);
            assert!(pod_cpu.some.total_us > 0, "{pod_cpu:?}");
            assert_shape("memory of the parent", parent.memory.psi);
            assert_shape("io of the parent", parent.io.psi);
        }
        Version::V1 => {
            for s in [&s1, &parent] {
                assert_eq!(
                    (s.cpu.psi, s.memory.psi, s.io.psi),
                    (None, None, None),
                    "no pressure on v1"
                );
            }
            let _ = skip::<()>(
                test,
                "the PSI figures: cgroup v1 has no *.pressure files (asserted None)",
            );
        }
    }

    // Block I/O bytes, from io.stat (v2) or blkio.throttle.* (v1).
    if disk.is_some() {
        let io = &s1.io;
        assert!(io.write_bytes >= 1 << 20, "1 MiB written: {io:?}");
        assert!(io.read_bytes >= 256 << 10, "256 KiB read: {io:?}");
        assert!(io.write_ops >= 1 && io.read_ops >= 1, "{io:?}");
        assert!(parent.io.write_bytes >= io.write_bytes, "{:?}", parent.io);
    }

    // Swap still available: the swap limit minus what is in use.
    let m = &s1.memory;
    let swap_file = h.file(
        &g.rel,
        "memory",
        "memory.memsw.limit_in_bytes",
        "memory.swap.max",
    );
    if swap_file.exists() {
        match h.version {
            Version::V2 => assert_eq!(
                m.swap_available,
                Some((32u64 << 20) - m.swap),
                "memory.swap.max - memory.swap.current: {m:?}"
            ),
            // v1's counter is memory plus swap: 96 MiB less what the
            // container holds (16 MiB of tmpfs at least).
            Version::V1 => {
                let a = m.swap_available.expect("a memsw limit");
                assert!(a > 0 && a <= (96 << 20) - (16 << 20), "{m:?}");
            }
        }
    } else {
        assert_eq!(m.swap_available, None, "no swap accounting: {m:?}");
        let _ = skip::<()>(
            test,
            "the swap part: the kernel has no swap accounting (asserted None)",
        );
    }
    c.destroy().unwrap();
    let _ = init.wait();
    assert_gone(&h, &g);
}
