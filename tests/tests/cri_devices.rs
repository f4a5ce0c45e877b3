//! CDI devices end to end: a CDI spec on the node (as a GPU or DRA driver
//! writes one), a container asking for its device by `CDI_devices` or by
//! a `cdi.k8s.io/*` annotation, and what the container then has: the
//! device node (usable: its cgroup rule), the env, the mount, and the
//! spec's hooks run with the container's state.

mod common;

use std::collections::HashMap;

use berth_cri::proto;
use common::*;
use tonic::Code;

/// A CDI spec for `example.com/dev=null` (the host's /dev/null as
/// /dev/example-null), with env, a read-only mount of `dir/share`, and a
/// createContainer and a poststop hook that leave their state in `dir`.
fn spec(dir: &std::path::Path, kind: &str) -> String {
    let d = dir.display();
    format!(
        r#"{{
  "cdiVersion": "0.6.0",
  "kind": "{kind}",
  "devices": [{{
    "name": "null",
    "containerEdits": {{
      "deviceNodes": [{{"path": "/dev/example-null", "hostPath": "/dev/null"}}],
      "env": ["EXAMPLE_VISIBLE=null"]
    }}
  }}],
  "containerEdits": {{
    "mounts": [{{"hostPath": "{d}/share", "containerPath": "/opt/example", "options": ["ro", "bind"]}}],
    "hooks": [
      {{"hookName": "createContainer", "path": "/bin/sh",
        "args": ["sh", "-c", "cat > {d}/created.$$; echo >> {d}/created.$$; readlink /proc/self/ns/mnt >> {d}/created.$$"]}},
      {{"hookName": "poststop", "path": "/bin/sh", "args": ["sh", "-c", "cat > {d}/stopped.$$"]}}
    ]
  }}
}}"#
    )
}

/// The states the hooks of `prefix` left in `dir`.
fn hook_states(dir: &std::path::Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            e.file_name()
                .to_string_lossy()
                .starts_with(prefix)
                .then(|| std::fs::read_to_string(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_devices_get_their_nodes_env_mounts_and_hooks() {
    let cdi = tempfile::tempdir().unwrap();
    std::fs::create_dir(cdi.path().join("share")).unwrap();
    std::fs::write(cdi.path().join("share/file"), "from the host\n").unwrap();
    std::fs::write(
        cdi.path().join("example.json"),
        spec(cdi.path(), "example.com/dev"),
    )
    .unwrap();
    // A broken vendor file is skipped, not fatal.
    std::fs::write(cdi.path().join("broken.yaml"), "cdiVersion: [").unwrap();
    let config = format!(
        "[runtime]\ncdi_spec_dirs = [{:?}]\n",
        cdi.path().display().to_string()
    );
    let test = "cdi_devices_get_their_nodes_env_mounts_and_hooks";
    let Some(mut env) = env_with_config(test, &config).await else {
        return;
    };
    let check = "stat -c '%F %t:%T' /dev/example-null; echo x > /dev/example-null && echo wrote; \
                 echo $EXAMPLE_VISIBLE; cat /opt/example/file; touch /opt/example/x 2>/dev/null || echo ro";
    let expected = "character special file 1:3\nwrote\nnull\nfrom the host\nro\n";

    // By the CRI field.
    let mut c = container(&env, "cdi-field", &["sleep", "300"], &[]);
    c.cdi_devices = vec![proto::CdiDevice {
        name: "example.com/dev=null".into(),
    }];
    let id = create(&mut env, c).await.unwrap();
    let created = hook_states(cdi.path(), "created.");
    assert_eq!(created.len(), 1, "the createContainer hook ran at create");
    let state: serde_json::Value =
        serde_json::from_str(created[0].lines().next().unwrap()).unwrap();
    assert_eq!(state["id"], id.as_str());
    assert_eq!(state["status"], "creating");
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(
        created[0].lines().nth(1).unwrap(),
        host_mnt.to_str().unwrap(),
        "in the container's mount namespace"
    );
    start(&mut env.rt, &id).await.unwrap();
    assert_eq!(sh_in(&mut env.rt, &id, check).await, expected);

    // By a device plugin's annotation.
    let mut c = container(&env, "cdi-annotation", &["sleep", "300"], &[]);
    c.annotations = HashMap::from([(
        "cdi.k8s.io/example-plugin_dev0".to_string(),
        "example.com/dev=null".to_string(),
    )]);
    let id2 = create(&mut env, c).await.unwrap();
    start(&mut env.rt, &id2).await.unwrap();
    assert_eq!(sh_in(&mut env.rt, &id2, check).await, expected);

    // A spec a driver writes after the daemon started is seen.
    std::fs::write(
        cdi.path().join("later.json"),
        spec(cdi.path(), "example.com/late"),
    )
    .unwrap();
    let mut c = container(&env, "cdi-later", &["sleep", "300"], &[]);
    c.cdi_devices = vec![proto::CdiDevice {
        name: "example.com/late=null".into(),
    }];
    create(&mut env, c).await.unwrap();

    // An unknown device is refused by name, and nothing is created.
    let mut c = container(&env, "cdi-unknown", &["true"], &[]);
    c.cdi_devices = vec![proto::CdiDevice {
        name: "example.com/dev=gpu9".into(),
    }];
    let err = create(&mut env, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("config.CDI_devices")
            && err.message().contains("example.com/dev=gpu9"),
        "{}",
        err.message()
    );
    let mut c = container(&env, "cdi-unqualified", &["true"], &[]);
    c.cdi_devices = vec![proto::CdiDevice {
        name: "gpu9".into(),
    }];
    let err = create(&mut env, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("config.CDI_devices[0].name"),
        "{}",
        err.message()
    );

    // Removing the container runs its poststop hook.
    stop_and_remove(&mut env.rt, &id).await;
    let stopped = hook_states(cdi.path(), "stopped.");
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    let state: serde_json::Value = serde_json::from_str(&stopped[0]).unwrap();
    assert_eq!(
        (state["id"].as_str(), state["status"].as_str()),
        (Some(id.as_str()), Some("stopped"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_disabled_refuses_cdi_devices() {
    let test = "cdi_disabled_refuses_cdi_devices";
    let Some(mut env) = env_with_config(test, "[runtime]\nenable_cdi = false\n").await else {
        return;
    };
    let mut c = container(&env, "cdi-off", &["true"], &[]);
    c.cdi_devices = vec![proto::CdiDevice {
        name: "example.com/dev=null".into(),
    }];
    let err = create(&mut env, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("enable_cdi"), "{}", err.message());
}
