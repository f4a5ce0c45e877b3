//! berth's directories as an unprivileged host user sees them: nothing an
//! image or a container wrote is reachable (no setuid binary to run, no
//! device node to open), no record is readable, and a secret passed in a
//! container's environment is found in no file such a user can read. The
//! test runs as root and drops to uid 65534 with `setpriv` for each probe.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_cri::proto;
use berth_e2e::images::{self, Entry, ImageSpec, Layer};
use common::*;

/// Runs `script` with `sh` as uid/gid 65534 and no groups: (exit code,
/// stdout + stderr).
fn as_nobody(script: &str) -> (i32, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "/bin/sh",
            "-c",
        ])
        .arg(script)
        .output()
        .expect("setpriv");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every regular file under `dir` (as root sees them), not following
/// symlinks.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path(), out),
            Ok(t) if t.is_file() => out.push(e.path()),
            _ => {}
        }
    }
}

/// The unpacked layer trees (`root/layers/<chain>/fs`).
fn layer_trees(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root.join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("fs"))
        .filter(|p| p.is_dir())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_users_reach_nothing_berth_stores() {
    let test = "host_users_reach_nothing_berth_stores";
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: {test}: no setpriv (util-linux)");
        return;
    }
    let Some(mut env) = env(test).await else {
        return;
    };
    // The test's directory stands for /var/lib and /run: traversable.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let (root, state) = (env.dir.path().join("root"), env.dir.path().join("state"));

    // An image with a setuid-root binary.
    let mut entries = images::busybox_entries().unwrap();
    let busybox = std::fs::read(berth_e2e::busybox().unwrap()).unwrap();
    entries.push(Entry::file("bin/suid", 0o4755, busybox));
    let spec = ImageSpec::new(
        vec![Layer::tar_gz(&entries).unwrap()],
        serde_json::json!({"config": {"Env": ["PATH=/bin"]}}),
    );
    let addr = env._reg.addr();
    images::push_image(&addr, "test/suid", "v1", &spec, None)
        .await
        .unwrap();
    let image = format!("{addr}/test/suid:v1");
    pull(env.daemon.channel().await, &image).await;

    // A root container with a secret in its environment that plants a
    // setuid copy of busybox and a world-writable device node in its
    // writable layer.
    let secret = format!("s3cr3t-{}", std::process::id());
    let mut cfg = container(
        &env,
        "planter",
        &["/bin/sh", "-c"],
        &[
            "cp /bin/busybox /tmp/planted && chmod 4755 /tmp/planted && \
           mknod -m 666 /tmp/zero c 1 5 && touch /tmp/ready; exec sleep 1000",
        ],
    );
    cfg.image = Some(proto::ImageSpec {
        image: image.clone(),
        ..Default::default()
    });
    cfg.envs = vec![proto::KeyValue {
        key: "SECRET".into(),
        value: secret.clone().into(),
    }];
    cfg.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            run_as_user: Some(proto::Int64Value { value: 0 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(&mut env, cfg).await.unwrap();
    start(&mut env.rt, &id).await.unwrap();
    let upper = root.join("containers").join(&id).join("upper");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !upper.join("tmp/ready").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container did not plant"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let trees = layer_trees(&root);
    let suid_in_layer = trees
        .iter()
        .map(|t| t.join("bin/suid"))
        .find(|p| p.exists())
        .expect("the image's setuid binary is in a layer");
    assert_eq!(
        mode(&suid_in_layer),
        0o4755,
        "the layer keeps the image's mode"
    );

    // Nothing listable, nothing of the image or the container reachable.
    for dir in [
        root.clone(),
        state.clone(),
        root.join("layers"),
        root.join("containers"),
        root.join("metadata/containers"),
        root.join("blobs"),
        state.join("containers"),
    ] {
        let (code, out) = as_nobody(&format!("ls {}", dir.display()));
        assert_ne!(code, 0, "uid 65534 lists {}: {out}", dir.display());
    }
    for exe in [&suid_in_layer, &upper.join("tmp/planted")] {
        let (code, out) = as_nobody(&format!("{} id -u", exe.display()));
        assert_ne!(code, 0, "uid 65534 ran {}: {out}", exe.display());
        assert!(out.contains("denied"), "{}: {out}", exe.display());
    }
    let (code, out) = as_nobody(&format!(
        "head -c 1 {} >/dev/null",
        upper.join("tmp/zero").display()
    ));
    assert_ne!(code, 0, "uid 65534 read the planted device: {out}");
    assert!(out.contains("denied"), "{out}");

    // The secret is in no file uid 65534 can read (it is in root's).
    let mut files = Vec::new();
    files_under(&root, &mut files);
    files_under(&state, &mut files);
    let with_secret: Vec<&PathBuf> = files
        .iter()
        .filter(|f| {
            std::fs::read(f).is_ok_and(|b| b.windows(secret.len()).any(|w| w == secret.as_bytes()))
        })
        .collect();
    assert!(!with_secret.is_empty(), "the secret is recorded somewhere");
    let list = env.dir.path().join("files.txt");
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    std::fs::write(&list, names.join("\n")).unwrap();
    std::fs::set_permissions(&list, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, readable) = as_nobody(&format!(
        "while read -r f; do [ -r \"$f\" ] && head -c 1 \"$f\" >/dev/null 2>&1 && echo \"$f\"; done < {}",
        list.display()
    ));
    // Only the pod's own /etc/hosts, resolv.conf and hostname, which every
    // user of its containers reads through their bind mounts.
    let pod_files = state.join("pods");
    let readable: Vec<&str> = readable
        .lines()
        .filter(|l| {
            let p = Path::new(l);
            let pod_file = p.starts_with(&pod_files)
                && p.file_name().is_some_and(|n| {
                    ["hosts", "resolv.conf", "hostname"].contains(&&*n.to_string_lossy())
                });
            !pod_file && *l != list.display().to_string()
        })
        .collect();
    assert!(readable.is_empty(), "uid 65534 reads: {readable:?}");
    let (_, out) = as_nobody(&format!("cat $(cat {}) 2>/dev/null", list.display()));
    assert!(!out.contains(&secret), "uid 65534 found the secret");

    // An install made with looser modes is tightened at start-up.
    env.daemon.crash();
    let loose = [
        root.clone(),
        state.clone(),
        root.join("layers"),
        root.join("containers"),
    ]
    .into_iter()
    .chain(trees.iter().cloned())
    .chain([
        root.join("containers").join(&id),
        root.join("metadata/containers"),
    ]);
    for d in loose {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let record = root.join(format!("metadata/containers/{id}.json"));
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o644)).unwrap();
    restart(&mut env).await;
    let _ = status(&mut env.rt, &id).await;
    for (d, want) in [
        (root.clone(), 0o711),
        (state.clone(), 0o711),
        (root.join("layers"), 0o711),
        (root.join("containers"), 0o711),
        (root.join("containers").join(&id), 0o700),
        (root.join("metadata/containers"), 0o700),
        (record, 0o600),
    ] {
        assert_eq!(mode(&d), want, "{}", d.display());
    }
    for t in &trees {
        assert_eq!(mode(t), 0o700, "{}", t.display());
    }
    let (code, out) = as_nobody(&format!("{} id -u", suid_in_layer.display()));
    assert_ne!(
        code, 0,
        "after the restart uid 65534 ran the layer's binary: {out}"
    );
}
