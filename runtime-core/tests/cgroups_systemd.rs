//! The systemd cgroup driver with a real systemd: containers as transient
//! scopes in a slice, their limits as unit properties and in the cgroup
//! files, live updates, OOM, and removal through systemd. Needs systemd as
//! PID 1 on cgroup v2 — the Debian guest of `scripts/cgroup2-guest/`
//! (`run-systemd.sh`) provides one; elsewhere each test prints `skipped:`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_core::cgroups::{self, Driver, Version};
use berth_core::config::{CgroupConfig, Resources};
use berth_core::{Container, Process};
use common::*;

const ROOT: &str = "/sys/fs/cgroup";

/// `Some(())` when this is a systemd machine on cgroup v2, else prints why
/// (or fails, in guest B, which sets `BERTH_TEST_NO_SKIP`).
fn systemd_v2(test: &str) -> Option<()> {
    if privileged(test).is_none() {
        assert!(
            !no_skip(),
            "{test} would be skipped (BERTH_TEST_NO_SKIP is set)"
        );
        return None;
    }
    if !Path::new("/run/systemd/system").is_dir() {
        return skip(
            test,
            "systemd is not PID 1 here (run it in the guest: scripts/cgroup2-guest/run-systemd.sh)",
        );
    }
    if cgroups::detect(Path::new(ROOT)) != Version::V2 {
        return skip(test, "the systemd driver needs cgroup v2");
    }
    Some(())
}

/// A unit property as systemd reports it.
fn unit_property(unit: &str, prop: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", unit, "-p", prop, "--value"])
        .output()
        .expect("systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn a_container_is_a_scope_with_its_limits_and_goes_with_it() {
    let test = "a_container_is_a_scope_with_its_limits_and_goes_with_it";
    let Some(()) = systemd_v2(test) else {
        return;
    };
    let name = unique_id("sd").replace('-', "_");
    let mut config = base_config(rootfs());
    config.cgroup = Some(CgroupConfig {
        path: format!("berthtest-pod1.slice:berth:{name}").into(),
        driver: Driver::Systemd,
        resources: Resources {
            memory_limit: Some(64 << 20),
            pids_limit: Some(40),
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            ..Default::default()
        },
    });
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("sdc"), config)
        .unwrap()
        .with_init_binary(init_binary());
    let h = c.run(Process::new(["sleep", "100"])).unwrap();
    let unit = format!("berth-{name}.scope");
    let dir = Path::new(ROOT).join(format!("berthtest.slice/berthtest-pod1.slice/{unit}"));
    // The init is in the scope, in the slice kubelet named.
    let own = read(Path::new(&format!("/proc/{}/cgroup", h.pid())));
    assert!(
        own.ends_with(&format!("/berthtest.slice/berthtest-pod1.slice/{unit}")),
        "{own}"
    );
    assert_eq!(unit_property(&unit, "ActiveState"), "active");
    assert_eq!(unit_property(&unit, "Delegate"), "yes");
    // Limits: systemd knows them, and the kernel files say the same.
    assert_eq!(unit_property(&unit, "MemoryMax"), (64u64 << 20).to_string());
    assert_eq!(read(&dir.join("memory.max")), (64u64 << 20).to_string());
    assert_eq!(unit_property(&unit, "TasksMax"), "40");
    assert_eq!(read(&dir.join("pids.max")), "40");
    assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
    assert_eq!(read(&dir.join("cpu.weight")), "20");

    // A live update reaches both.
    let cg = c.state().cgroup.clone().unwrap();
    cg.apply(&Resources {
        memory_limit: Some(128 << 20),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        unit_property(&unit, "MemoryMax"),
        (128u64 << 20).to_string()
    );
    assert_eq!(read(&dir.join("memory.max")), (128u64 << 20).to_string());

    // Stats through cgroupfs.
    let stats = cg.stats();
    assert!(stats.pids.current >= 1, "{stats:?}");

    c.destroy().unwrap();
    let _ = h.wait();
    assert!(!dir.exists(), "the scope's cgroup is gone");
    let load = unit_property(&unit, "LoadState");
    assert!(
        load == "not-found" || unit_property(&unit, "ActiveState") == "inactive",
        "{load}"
    );
    // The slices are systemd's own: it keeps or collects them.
}

#[test]
fn an_allocation_past_the_scope_limit_is_oom_killed() {
    let test = "an_allocation_past_the_scope_limit_is_oom_killed";
    let Some(()) = systemd_v2(test) else {
        return;
    };
    let name = unique_id("oom").replace('-', "_");
    let mut config = base_config(rootfs());
    config.cgroup = Some(CgroupConfig {
        path: format!("berthtest.slice:berth:{name}").into(),
        driver: Driver::Systemd,
        resources: Resources {
            memory_limit: Some(32 << 20),
            memory_swap: Some(32 << 20),
            ..Default::default()
        },
    });
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("oomc"), config)
        .unwrap()
        .with_init_binary(init_binary());
    let h = c
        .run(Process::new([
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived; sleep 100",
        ]))
        .unwrap();
    let cg = c.state().cgroup.clone().unwrap();
    let mut killed = 0;
    for _ in 0..400 {
        killed = cg.stats().memory.oom_kills;
        if killed > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(killed > 0, "no oom_kill counted: {:?}", cg.stats().memory);
    c.destroy().unwrap();
    let _ = h.wait();
}

#[test]
fn the_systemd_driver_is_refused_without_v2() {
    let test = "the_systemd_driver_is_refused_without_v2";
    let Some(()) = privileged(test) else {
        return;
    };
    if cgroups::detect(Path::new(ROOT)) == Version::V2 {
        println!("skipped: {test}: this machine has cgroup v2");
        return;
    }
    let mut config = base_config(rootfs());
    config.cgroup = Some(CgroupConfig {
        path: "berthtest.slice:berth:x".into(),
        driver: Driver::Systemd,
        resources: Resources::default(),
    });
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("v1sd"), config)
        .unwrap()
        .with_init_binary(init_binary());
    let e = c.run(Process::new(["true"])).unwrap_err();
    let err = chain(&e);
    assert!(
        err.contains("systemd driver needs the unified cgroup v2"),
        "{err}"
    );
}
