//! Privileged integration tests of the OCI hooks: each point runs at its
//! moment, in its namespace, with the state the runtime spec gives it, and
//! a failing hook fails the step it belongs to (or is only logged).

mod common;

use std::path::Path;

use berth_core::config::{Hook, Mount};
use berth_core::{Container, ContainerError, ExitStatus, Process};
use common::*;

/// A host hook recording, under `out`, its point in `order`, the state it
/// read, and its mount and pid namespaces.
fn host_hook(out: &Path, point: &str) -> Hook {
    let o = out.display();
    let mut h = Hook::new("/bin/sh");
    h.args = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "cat > {o}/{point}.state; readlink /proc/self/ns/mnt > {o}/{point}.mnt; \
             echo {point} >> {o}/order"
        ),
    ];
    h
}

fn read(out: &Path, file: &str) -> String {
    std::fs::read_to_string(out.join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .trim()
        .to_string()
}

fn state(out: &Path, point: &str) -> serde_json::Value {
    serde_json::from_str(&read(out, &format!("{point}.state"))).unwrap()
}

#[test]
fn every_hook_point_runs_in_order_in_its_namespace_with_the_spec_state() {
    let Some(()) =
        privileged("every_hook_point_runs_in_order_in_its_namespace_with_the_spec_state")
    else {
        return;
    };
    let (_dir, rootfs) = private_rootfs("berth-hooks");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path();
    // The startContainer hook runs as the container's user (1000).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(out.join("order"), "").unwrap();
    std::fs::set_permissions(out.join("order"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut config = base_config(&rootfs);
    config.mounts.push(Mount::bind(out, "/hooks", &[]));
    config
        .annotations
        .insert("io.example/gpu".into(), "0".into());
    config.hooks.prestart.push(host_hook(out, "prestart"));
    config
        .hooks
        .create_runtime
        .push(host_hook(out, "createRuntime"));
    // Before pivot_root, in the container's mount namespace: host paths.
    config
        .hooks
        .create_container
        .push(host_hook(out, "createContainer"));
    // After pivot_root: the container's own sh, its view of the out dir,
    // as the container's user.
    let mut start = Hook::new("/bin/sh");
    start.args = vec![
        "sh".into(),
        "-c".into(),
        "cat > /hooks/startContainer.state; readlink /proc/self/ns/mnt > /hooks/startContainer.mnt; \
         id -u > /hooks/startContainer.uid; echo startContainer >> /hooks/order"
            .into(),
    ];
    config.hooks.start_container.push(start);
    config.hooks.poststart.push(host_hook(out, "poststart"));
    config.hooks.poststop.push(host_hook(out, "poststop"));

    let state_dir = state_root();
    let id = unique_id("hooks");
    let mut c = Container::create(state_dir.path(), &id, config)
        .unwrap()
        .with_init_binary(init_binary());
    let bundle = state_dir.path().join(&id);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["root"]["path"], rootfs.display().to_string());
    let mut p = Process::new(["sh", "-c", "readlink /proc/self/ns/mnt"]);
    p.spec.user = "1000:1000".parse().unwrap();
    let (o, e) = capture(&mut p);
    let h = c.start(p).unwrap();
    let host_pid = h.pid();
    assert_eq!(
        read(out, "order"),
        "prestart\ncreateRuntime\ncreateContainer"
    );
    assert!(
        !out.join("startContainer.state").exists(),
        "not before start"
    );
    c.release().unwrap();
    let (stdout, stderr) = collect(o, e);
    assert_eq!(h.wait().unwrap(), ExitStatus::Exited(0), "{stderr}");
    let container_mnt = stdout.trim().to_string();
    c.destroy().unwrap();
    assert!(!bundle.exists());

    assert_eq!(
        read(out, "order"),
        "prestart\ncreateRuntime\ncreateContainer\nstartContainer\npoststart\npoststop"
    );
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt")
        .unwrap()
        .display()
        .to_string();
    assert_ne!(container_mnt, host_mnt);
    for (point, mnt, status, pid) in [
        ("prestart", &host_mnt, "creating", Some(host_pid)),
        ("createRuntime", &host_mnt, "creating", Some(host_pid)),
        ("createContainer", &container_mnt, "creating", Some(1)),
        ("startContainer", &container_mnt, "created", Some(1)),
        ("poststart", &host_mnt, "running", Some(host_pid)),
        ("poststop", &host_mnt, "stopped", None),
    ] {
        assert_eq!(
            &read(out, &format!("{point}.mnt")),
            mnt,
            "{point}'s mount namespace"
        );
        let s = state(out, point);
        assert_eq!(s["ociVersion"], "1.2.0", "{point}");
        assert_eq!(s["id"], id.as_str(), "{point}");
        assert_eq!(s["status"], status, "{point}");
        assert_eq!(s["pid"].as_i64(), pid.map(i64::from), "{point}");
        assert_eq!(s["bundle"], bundle.display().to_string(), "{point}");
        assert_eq!(s["annotations"]["io.example/gpu"], "0", "{point}");
    }
    assert_eq!(
        read(out, "startContainer.uid"),
        "1000",
        "as the container's user"
    );
}

fn failing(point: &str) -> Hook {
    let mut h = Hook::new("/bin/sh");
    h.args = vec![
        "sh".into(),
        "-c".into(),
        format!("echo '{point} says no' >&2; exit 7"),
    ];
    h
}

#[test]
fn a_failing_create_or_start_hook_fails_that_step_and_leaves_nothing_running() {
    let Some(()) =
        privileged("a_failing_create_or_start_hook_fails_that_step_and_leaves_nothing_running")
    else {
        return;
    };
    let (_dir, rootfs) = private_rootfs("berth-hooks-fail");
    for point in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
    ] {
        let mut config = base_config(&rootfs);
        let list = match point {
            "prestart" => &mut config.hooks.prestart,
            "createRuntime" => &mut config.hooks.create_runtime,
            "createContainer" => &mut config.hooks.create_container,
            _ => &mut config.hooks.start_container,
        };
        list.push(failing(point));
        let state_dir = state_root();
        let mut c = Container::create(state_dir.path(), &unique_id("hookfail"), config)
            .unwrap()
            .with_init_binary(init_binary());
        let err = match c.start(Process::new(["sleep", "60"])) {
            Err(e) => e,
            Ok(h) => {
                assert_eq!(point, "startContainer", "{point} failed the create step");
                let e = c.release().unwrap_err();
                // The init exits instead of running the process.
                let st = h.wait().unwrap();
                assert_ne!(st, ExitStatus::Exited(0), "{point}");
                e
            }
        };
        let msg = chain(&err);
        assert!(msg.contains(&format!("{point} says no")), "{point}: {msg}");
        assert!(msg.contains("exited with status 7"), "{point}: {msg}");
        if matches!(point, "prestart" | "createRuntime") {
            assert!(matches!(err, ContainerError::Hook(_)), "{point}: {err:?}");
        }
        assert!(c.processes().is_empty(), "{point}: nothing left running");
        c.destroy().unwrap();
    }
}

#[test]
fn failing_poststart_and_poststop_hooks_are_only_reported() {
    let Some(()) = privileged("failing_poststart_and_poststop_hooks_are_only_reported") else {
        return;
    };
    let mut config = base_config(rootfs());
    config.hooks.poststart.push(failing("poststart"));
    config.hooks.poststop.push(failing("poststop"));
    let state_dir = state_root();
    let mut c = Container::create(state_dir.path(), &unique_id("hookpost"), config)
        .unwrap()
        .with_init_binary(init_binary());
    let h = c.run(Process::new(["true"])).unwrap();
    assert_eq!(h.wait().unwrap(), ExitStatus::Exited(0));
    c.destroy().unwrap();
}

#[test]
fn a_hook_with_a_relative_path_or_a_zero_timeout_is_refused_at_create() {
    let state_dir = state_root();
    for (hook, want) in [
        (Hook::new("bin/sh"), "absolute"),
        (
            Hook {
                timeout: Some(0),
                ..Hook::new("/bin/sh")
            },
            "timeout",
        ),
    ] {
        let mut config = base_config(rootfs());
        config.hooks.create_runtime.push(hook);
        let err = Container::create(state_dir.path(), &unique_id("hookbad"), config).unwrap_err();
        let msg = chain(&err);
        assert!(
            msg.contains("hooks.createRuntime") && msg.contains(want),
            "{msg}"
        );
    }
}
