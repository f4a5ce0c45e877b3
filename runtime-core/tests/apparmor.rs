//! Privileged AppArmor tests: a container's processes (init and exec) run
//! under the profile of its config, switched to on `execve`. They need a
//! kernel with AppArmor enabled and Debian's `apparmor_parser`: this host
//! has neither enabled, so `scripts/test.sh` runs them in QEMU guest A
//! (Debian's kernel, AppArmor on by default) with `BERTH_TEST_NO_SKIP`.

mod common;

use berth_core::security::apparmor;
use berth_core::{Container, ExitStatus, Process};
use common::*;

/// `Some` when AppArmor can be used here, else prints why it skips
/// (fails under `BERTH_TEST_NO_SKIP`).
fn apparmor_here(test: &str) -> Option<()> {
    privileged(test)?;
    if !apparmor::enabled() {
        assert!(!no_skip(), "{test}: AppArmor is not enabled here");
        println!("skipped: {test}: AppArmor is not enabled on this kernel");
        return None;
    }
    Some(())
}

const DENY_PROFILE: &str = "berth-test-deny-write";

/// A profile that allows everything but writes under `/denied`.
fn load_deny_profile() {
    apparmor::load(
        DENY_PROFILE,
        &format!(
            "profile {DENY_PROFILE} flags=(attach_disconnected,mediate_deleted) {{\n  file,\n  \
             capability,\n  signal (receive) peer=unconfined,\n  deny /denied/** w,\n}}\n"
        ),
    )
    .unwrap();
    assert!(apparmor::is_loaded(DENY_PROFILE).unwrap());
}

fn run_as(rootfs: &std::path::Path, profile: Option<&str>, script: &str) -> Output {
    let mut config = base_config(rootfs);
    config.apparmor_profile = profile.map(str::to_string);
    run(config, &["sh", "-c", script])
}

#[test]
fn a_profile_confines_the_init_and_every_exec() {
    let Some(()) = apparmor_here("a_profile_confines_the_init_and_every_exec") else {
        return;
    };
    load_deny_profile();
    let (_dir, rootfs) = private_rootfs("berth-apparmor");
    std::fs::create_dir_all(rootfs.join("denied")).unwrap();
    std::fs::create_dir_all(rootfs.join("allowed")).unwrap();
    let script = "tr -d '\\0' < /proc/self/attr/current; \
                  echo x > /denied/f 2>/dev/null && echo WROTE-DENIED; \
                  echo x > /allowed/f && echo wrote-allowed";
    let out = run_as(&rootfs, Some(DENY_PROFILE), script);
    assert_eq!(out.status, ExitStatus::Exited(0), "{out:?}");
    assert_eq!(
        out.stdout,
        format!("{DENY_PROFILE} (enforce)\nwrote-allowed\n"),
        "{out:?}"
    );

    // An exec'd process gets the same profile.
    let mut config = base_config(&rootfs);
    config.apparmor_profile = Some(DENY_PROFILE.into());
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("aa-exec"), config)
        .unwrap()
        .with_init_binary(init_binary());
    let init = c.run(Process::new(["sleep", "60"])).unwrap();
    let mut p = Process::new(["sh", "-c", script]);
    let (o, e) = capture(&mut p);
    let h = c.exec(p).unwrap();
    let (stdout, stderr) = collect(o, e);
    assert_eq!(h.wait().unwrap(), ExitStatus::Exited(0), "{stderr}");
    assert_eq!(stdout, format!("{DENY_PROFILE} (enforce)\nwrote-allowed\n"));
    init.signal(libc::SIGKILL).unwrap();
    let _ = init.wait();
    c.destroy().unwrap();

    // No profile: unconfined, the write goes through.
    let out = run_as(&rootfs, None, script);
    assert_eq!(
        out.stdout, "unconfined\nWROTE-DENIED\nwrote-allowed\n",
        "{out:?}"
    );
}

#[test]
fn the_default_profile_loads_and_denies_mounts_even_with_cap_sys_admin() {
    let Some(()) =
        apparmor_here("the_default_profile_loads_and_denies_mounts_even_with_cap_sys_admin")
    else {
        return;
    };
    apparmor::ensure_default_loaded().unwrap();
    assert!(apparmor::is_loaded(apparmor::DEFAULT_PROFILE).unwrap());
    apparmor::ensure_default_loaded().unwrap();
    let script = "tr -d '\\0' < /proc/self/attr/current; mkdir -p /mnt/t; \
                  mount -t tmpfs none /mnt/t 2>/dev/null && echo MOUNTED || echo no-mount";
    let with_admin = |profile: Option<&str>| {
        let mut config = base_config(rootfs());
        config.apparmor_profile = profile.map(str::to_string);
        let admin = berth_core::config::Capability::CAP_SYS_ADMIN;
        for set in [
            &mut config.capabilities.bounding,
            &mut config.capabilities.effective,
            &mut config.capabilities.permitted,
        ] {
            set.push(admin);
        }
        run(config, &["sh", "-c", script])
    };
    let out = with_admin(Some(apparmor::DEFAULT_PROFILE));
    assert_eq!(
        out.stdout,
        format!("{} (enforce)\nno-mount\n", apparmor::DEFAULT_PROFILE),
        "{out:?}"
    );
    let out = with_admin(None);
    assert_eq!(out.stdout, "unconfined\nMOUNTED\n", "{out:?}");
}

#[test]
fn a_profile_that_is_not_loaded_fails_the_start() {
    let Some(()) = apparmor_here("a_profile_that_is_not_loaded_fails_the_start") else {
        return;
    };
    let mut config = base_config(rootfs());
    config.apparmor_profile = Some("berth-test-never-loaded".into());
    let state = state_root();
    let mut c = Container::create(state.path(), &unique_id("aa-none"), config)
        .unwrap()
        .with_init_binary(init_binary());
    let err = match c.run(Process::new(["true"])) {
        Err(e) => e.to_string(),
        Ok(h) => panic!("started: {:?}", h.wait()),
    };
    assert!(err.contains("berth-test-never-loaded"), "{err}");
    c.destroy().unwrap();
}
