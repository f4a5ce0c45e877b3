//! The CRI security context, checked from inside the container: each probe
//! runs a shell script as the container's init (output read from its CRI
//! log) and the same script through ExecSync, and the two must agree.
//! Capabilities (default set, add, drop, ALL), privileged, no_new_privs,
//! seccomp (RuntimeDefault, Unconfined, Localhost, the deprecated path),
//! readonly_rootfs, run_as_user/run_as_group/supplemental_groups,
//! run_as_username, masked and read-only paths, the image's USER and the
//! pod's hostname.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use berth_cri::proto::security_profile::ProfileType;
use berth_cri::proto::{self, Int64Value, LinuxContainerSecurityContext as Sc, SecurityProfile};
use tonic::Code;

mod common;
use common::*;

/// containerd's default capability set: CHOWN, DAC_OVERRIDE, FSETID,
/// FOWNER, MKNOD, NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP,
/// NET_BIND_SERVICE, SYS_CHROOT, KILL, AUDIT_WRITE.
const DEFAULT_CAPS: u64 = 0x0000_0000_a804_25fb;
const CAP_CHOWN: u64 = 1 << 0;
const CAP_NET_ADMIN: u64 = 1 << 12;

/// The lines of /proc/self/status a probe compares.
const STATUS: &str = "grep -E '^(Cap|NoNewPrivs|Seccomp|Groups)' /proc/self/status";

/// What the init prints once its script is done.
const DONE: &str = "__probe_done__";

/// What one script printed (stdout and stderr merged), as the container's
/// init and through ExecSync.
struct Probe {
    init: String,
}

impl Probe {
    /// The value of a `/proc/self/status` line (`CapEff`, `Seccomp`, ...).
    fn field(&self, key: &str) -> &str {
        let prefix = format!("{key}:");
        self.init
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.init))
            .trim()
    }

    /// A capability mask line as a number.
    fn caps(&self, key: &str) -> u64 {
        u64::from_str_radix(self.field(key), 16).unwrap()
    }

    /// The supplementary groups (`Groups:`).
    fn groups(&self) -> BTreeSet<u32> {
        self.field("Groups")
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect()
    }

    /// The line after `key=` (`root=ro` → `ro`).
    fn kv(&self, key: &str) -> &str {
        let prefix = format!("{key}=");
        self.init
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.init))
    }

    fn lines(&self) -> Vec<&str> {
        self.init.lines().collect()
    }
}

fn uid(v: i64) -> Option<Int64Value> {
    Some(Int64Value { value: v })
}

/// Root, so capabilities stay effective after the init's execve.
fn root() -> Sc {
    Sc {
        run_as_user: uid(0),
        ..Default::default()
    }
}

fn caps(add: &[&str], drop: &[&str]) -> Option<proto::Capability> {
    Some(proto::Capability {
        add_capabilities: add.iter().map(|s| s.to_string()).collect(),
        drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
        add_ambient_capabilities: Vec::new(),
    })
}

fn seccomp(ty: ProfileType, localhost_ref: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: ty as i32,
        localhost_ref: localhost_ref.into(),
    })
}

/// The container config of a probe: `script`'s output (stderr merged), then
/// `DONE`, then a long sleep so ExecSync can run the script again.
fn probe_config(env: &Env, name: &str, sc: Sc, script: &str) -> proto::ContainerConfig {
    let init = format!("{{\n{script}\n}} 2>&1; echo {DONE}; exec sleep 1000");
    let mut cfg = container(env, name, &["sh", "-c", &init], &[]);
    cfg.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(sc),
        ..Default::default()
    });
    cfg
}

/// Runs `script` in a new container with security context `sc` (and the
/// request's `mounts`): as its init, then through ExecSync; asserts both
/// printed the same, stops and removes the container.
async fn probe(
    env: &mut Env,
    name: &str,
    sc: Sc,
    mounts: Vec<proto::Mount>,
    script: &str,
) -> Result<Probe, tonic::Status> {
    let mut cfg = probe_config(env, name, sc, script);
    cfg.mounts = mounts;
    let id = create(env, cfg).await?;
    start(&mut env.rt, &id).await?;
    let log = status(&mut env.rt, &id).await.log_path;
    let deadline = Instant::now() + Duration::from_secs(20);
    let init = loop {
        let texts: Vec<String> = log_records(&log).into_iter().map(|r| r.2).collect();
        if let Some(i) = texts.iter().position(|t| t == DONE) {
            break texts[..i].join("\n");
        }
        let st = status(&mut env.rt, &id).await;
        assert!(
            st.state != proto::ContainerState::ContainerExited as i32 && Instant::now() < deadline,
            "{name}: the script did not finish: {st:?} output {texts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = env
        .rt
        .exec_sync(proto::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), format!("{{\n{script}\n}} 2>&1")],
            timeout: 20,
        })
        .await?
        .into_inner();
    let exec = String::from_utf8_lossy(&r.stdout);
    assert_eq!(
        init,
        exec.strip_suffix('\n').unwrap_or(&exec),
        "{name}: the init and an ExecSync process see the same"
    );
    env.rt
        .stop_container(proto::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await?;
    env.rt
        .remove_container(proto::RemoveContainerRequest { container_id: id })
        .await?;
    println!("{name}:\n{init}");
    Ok(Probe { init })
}

/// A `/proc/<pid>/status` capability line of a host process.
fn host_caps(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap()
        .trim();
    u64::from_str_radix(v, 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_capabilities_are_containerds() {
    let Some(mut env) = env("default_capabilities_are_containerds").await else {
        return;
    };
    let script = format!("{STATUS}; touch /tmp/f; chown 1:1 /tmp/f && echo chown=ok");
    let p = probe(&mut env, "default", root(), vec![], &script)
        .await
        .unwrap();
    for key in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(p.caps(key), DEFAULT_CAPS, "{key}");
    }
    assert_eq!((p.caps("CapInh"), p.caps("CapAmb")), (0, 0));
    assert_eq!(p.kv("chown"), "ok", "CAP_CHOWN works");
    // Nothing asked: no_new_privs off (allowPrivilegeEscalation defaults to
    // true) and no seccomp filter (CRI: "" is unconfined).
    assert_eq!(p.field("NoNewPrivs"), "0");
    assert_eq!(p.field("Seccomp"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_added_and_dropped() {
    let Some(mut env) = env("capabilities_are_added_and_dropped").await else {
        return;
    };
    let script = format!(
        "{STATUS}; touch /tmp/f; chown 1:1 /tmp/f && echo chown=ok || echo chown=denied; \
         ip link set lo mtu 1400 && echo netadmin=ok || echo netadmin=denied"
    );
    // (name, add, drop, expected set)
    let cases: [(&str, &[&str], &[&str], u64); 5] = [
        (
            "add-net-admin",
            &["NET_ADMIN"],
            &[],
            DEFAULT_CAPS | CAP_NET_ADMIN,
        ),
        (
            "drop-all-add-net-admin",
            &["NET_ADMIN"],
            &["ALL"],
            CAP_NET_ADMIN,
        ),
        ("drop-all", &[], &["ALL"], 0),
        ("drop-chown", &[], &["CHOWN"], DEFAULT_CAPS & !CAP_CHOWN),
        (
            "prefixed-lowercase",
            &["cap_net_admin"],
            &["CAP_CHOWN"],
            (DEFAULT_CAPS | CAP_NET_ADMIN) & !CAP_CHOWN,
        ),
    ];
    for (name, add, drop, want) in cases {
        let sc = Sc {
            capabilities: caps(add, drop),
            ..root()
        };
        let p = probe(&mut env, name, sc, vec![], &script).await.unwrap();
        for key in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(p.caps(key), want, "{name}: {key} {:#x}", p.caps(key));
        }
        assert_eq!((p.caps("CapInh"), p.caps("CapAmb")), (0, 0), "{name}");
        let ok = |bit: u64| if want & bit != 0 { "ok" } else { "denied" };
        assert_eq!(p.kv("chown"), ok(CAP_CHOWN), "{name}: chown");
        assert_eq!(p.kv("netadmin"), ok(CAP_NET_ADMIN), "{name}: ip link set");
    }
    // An unknown name is refused at create.
    let cfg = probe_config(
        &env,
        "bad-cap",
        Sc {
            capabilities: caps(&["FLY"], &[]),
            ..root()
        },
        "true",
    );
    let err = create(&mut env, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("add_capabilities[0]"),
        "{}",
        err.message()
    );
}

/// Privileged: every capability the runtime itself holds (containerd's
/// `WithAllCurrentCapabilities`, `cap.Current()`), no seccomp, no masked or
/// read-only paths, /sys read-write; the requested drop, seccomp and masks
/// are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn privileged_gets_every_capability_no_seccomp_and_no_masks() {
    let Some(mut env) = env("privileged_gets_every_capability_no_seccomp_and_no_masks").await
    else {
        return;
    };
    let daemon = env.daemon.child.id();
    let (host_prm, host_bnd) = (host_caps(daemon, "CapPrm"), host_caps(daemon, "CapBnd"));
    let sc = Sc {
        privileged: true,
        capabilities: caps(&[], &["ALL"]),
        seccomp: seccomp(ProfileType::RuntimeDefault, ""),
        masked_paths: vec!["/proc/timer_list".into(), "/sys/firmware".into()],
        readonly_paths: vec!["/proc/sys".into()],
        ..root()
    };
    let script = format!(
        "{STATUS}; echo timer_list=$(head -c 64 /proc/timer_list | wc -c); \
         cut -d' ' -f5,6 /proc/self/mountinfo | grep -E '^/(sys|proc/sys|proc/timer_list|sys/firmware) '"
    );
    let p = probe(&mut env, "privileged", sc, vec![], &script)
        .await
        .unwrap();
    assert_eq!(
        p.caps("CapEff"),
        host_prm,
        "all of the runtime's capabilities"
    );
    assert_eq!(p.caps("CapPrm"), host_prm);
    assert_eq!(p.caps("CapBnd"), host_bnd);
    assert_eq!(
        p.field("Seccomp"),
        "0",
        "no seccomp for a privileged container"
    );
    assert_ne!(p.kv("timer_list"), "0", "not masked");
    let mounts: Vec<&str> = p
        .lines()
        .into_iter()
        .filter(|l| l.starts_with('/'))
        .collect();
    assert_eq!(
        mounts.len(),
        1,
        "only /sys, nothing masked or read-only: {mounts:?}"
    );
    assert!(
        mounts[0].starts_with("/sys rw,"),
        "/sys read-write: {mounts:?}"
    );
}

/// add_capabilities ["ALL"] (minus a drop): containerd's `allCaps`, the
/// runtime's own current set (`cap.Current()`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn add_all_is_every_capability_the_runtime_holds() {
    let Some(mut env) = env("add_all_is_every_capability_the_runtime_holds").await else {
        return;
    };
    let daemon = env.daemon.child.id();
    let (host_prm, host_bnd) = (host_caps(daemon, "CapPrm"), host_caps(daemon, "CapBnd"));
    let sc = Sc {
        capabilities: caps(&["ALL"], &["CHOWN"]),
        ..root()
    };
    let p = probe(&mut env, "add-all", sc, vec![], STATUS)
        .await
        .unwrap();
    assert_eq!(p.caps("CapEff"), host_prm & !CAP_CHOWN);
    assert_eq!(p.caps("CapBnd"), host_bnd & !CAP_CHOWN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_new_privs_is_set_when_asked() {
    let Some(mut env) = env("no_new_privs_is_set_when_asked").await else {
        return;
    };
    for (name, nnp, want) in [("nnp-off", false, "0"), ("nnp-on", true, "1")] {
        let sc = Sc {
            no_new_privs: nnp,
            ..Default::default()
        };
        let p = probe(&mut env, name, sc, vec![], STATUS).await.unwrap();
        assert_eq!(p.field("NoNewPrivs"), want, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)] // seccomp_profile_path: still sent by older kubelets
async fn seccomp_profiles_are_applied() {
    let Some(mut env) = env("seccomp_profiles_are_applied").await else {
        return;
    };
    // A node-local profile that refuses mkdir with EACCES.
    let local = env.dir.path().join("no-mkdir.json");
    std::fs::write(
        &local,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )
    .unwrap();
    let local = local.to_string_lossy().into_owned();
    let script = format!(
        "{STATUS}; unshare -U true && echo unshare=ok || echo unshare=denied; \
         mkdir -p /tmp/d && echo mkdir=ok || echo mkdir=denied"
    );
    // (name, profile, deprecated path, Seccomp:, unshare, mkdir)
    let cases = [
        ("nothing", None, "", "0", "ok", "ok"),
        (
            "runtime-default",
            seccomp(ProfileType::RuntimeDefault, ""),
            "",
            "2",
            "denied",
            "ok",
        ),
        (
            "unconfined",
            seccomp(ProfileType::Unconfined, ""),
            "runtime/default",
            "0",
            "ok",
            "ok",
        ),
        (
            "path-runtime-default",
            None,
            "runtime/default",
            "2",
            "denied",
            "ok",
        ),
        ("path-unconfined", None, "unconfined", "0", "ok", "ok"),
        (
            "localhost",
            seccomp(ProfileType::Localhost, &local),
            "",
            "2",
            "ok",
            "denied",
        ),
    ];
    for (name, profile, path, mode, unshare, mkdir) in cases {
        let sc = Sc {
            seccomp: profile,
            seccomp_profile_path: path.into(),
            ..root()
        };
        let p = probe(&mut env, name, sc, vec![], &script).await.unwrap();
        assert_eq!(p.field("Seccomp"), mode, "{name}");
        if mode == "2" {
            assert_eq!(p.field("Seccomp_filters"), "1", "{name}");
        }
        assert_eq!(p.kv("unshare"), unshare, "{name}: unshare(CLONE_NEWUSER)");
        assert_eq!(p.kv("mkdir"), mkdir, "{name}: mkdir");
        if mkdir == "denied" {
            assert!(
                p.init.contains("Permission denied"),
                "{name}: EACCES: {}",
                p.init
            );
        }
    }
    // A Localhost profile that is not there fails the create.
    let cfg = probe_config(
        &env,
        "missing-profile",
        Sc {
            seccomp: seccomp(ProfileType::Localhost, "/nonexistent/profile.json"),
            ..root()
        },
        "true",
    );
    let err = create(&mut env, cfg).await.unwrap_err();
    assert!(
        err.message().contains("/nonexistent/profile.json"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_leaves_mounts_writable() {
    let Some(mut env) = env("readonly_rootfs_leaves_mounts_writable").await else {
        return;
    };
    // An emptyDir-like volume: a host dir of the test's own.
    let vol = env.dir.path().join("empty-dir");
    std::fs::create_dir_all(&vol).unwrap();
    let mounts = vec![proto::Mount {
        container_path: "/data".into(),
        host_path: vol.to_string_lossy().into_owned(),
        ..Default::default()
    }];
    let script = "touch /x && echo root=rw || echo root=ro; \
                  touch /tmp/x && echo tmp=rw || echo tmp=ro; \
                  echo hello > /data/f && echo data=rw || echo data=ro; \
                  touch /dev/shm/x && echo shm=rw || echo shm=ro; \
                  touch /etc/hosts && echo hosts=rw || echo hosts=ro";
    let sc = Sc {
        readonly_rootfs: true,
        ..root()
    };
    let p = probe(&mut env, "ro", sc, mounts.clone(), script)
        .await
        .unwrap();
    // Berth (like containerd) mounts nothing on /tmp: it is part of the
    // read-only rootfs.
    for (key, want) in [
        ("root", "ro"),
        ("tmp", "ro"),
        ("data", "rw"),
        ("shm", "rw"),
        ("hosts", "ro"),
    ] {
        assert_eq!(p.kv(key), want, "{key}: {}", p.init);
    }
    let erofs = p
        .lines()
        .into_iter()
        .filter(|l| l.contains("Read-only file system"))
        .count();
    assert_eq!(erofs, 3, "EROFS for /x, /tmp/x, /etc/hosts: {}", p.init);
    assert_eq!(std::fs::read_to_string(vol.join("f")).unwrap(), "hello\n");

    let p = probe(&mut env, "rw", root(), mounts, script).await.unwrap();
    for key in ["root", "tmp", "data", "shm", "hosts"] {
        assert_eq!(p.kv(key), "rw", "{key} without readonly_rootfs");
    }
}

/// containerd (and CRI-O) give an image's `Volumes` a writable directory of
/// their own, so `/data` of `configured_image` stays writable with a
/// read-only rootfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volumes_are_writable_under_a_readonly_rootfs() {
    let Some(mut env) = env("image_volumes_are_writable_under_a_readonly_rootfs").await else {
        return;
    };
    let sc = Sc {
        readonly_rootfs: true,
        ..root()
    };
    let p = probe(
        &mut env,
        "image-volume",
        sc,
        vec![],
        "touch /data/x && echo data=rw || echo data=ro",
    )
    .await
    .unwrap();
    assert_eq!(p.kv("data"), "rw", "{}", p.init);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_user_group_and_supplemental_groups() {
    let Some(mut env) = env("run_as_user_group_and_supplemental_groups").await else {
        return;
    };
    let script = format!("echo uid=$(id -u); echo gid=$(id -g); {STATUS}");
    let sc = Sc {
        run_as_user: uid(1000),
        run_as_group: uid(3000),
        supplemental_groups: vec![5000, 4000, 5000],
        ..Default::default()
    };
    let p = probe(&mut env, "ids", sc, vec![], &script).await.unwrap();
    assert_eq!((p.kv("uid"), p.kv("gid")), ("1000", "3000"));
    let groups = p.groups();
    assert!(
        groups.contains(&4000) && groups.contains(&5000),
        "supplemental groups: {groups:?}"
    );
    assert!(
        groups.is_subset(&BTreeSet::from([3000, 4000, 5000])),
        "{groups:?}"
    );
    // A non-root user keeps no capabilities across execve (no ambient set);
    // the bounding set is still the default one.
    assert_eq!((p.caps("CapEff"), p.caps("CapPrm")), (0, 0));
    assert_eq!(p.caps("CapBnd"), DEFAULT_CAPS);

    // A uid in the image's /etc/passwd, without run_as_group: its group
    // there (not the image's USER group).
    let sc = Sc {
        run_as_user: uid(65534),
        ..Default::default()
    };
    let p = probe(&mut env, "nobody-uid", sc, vec![], &script)
        .await
        .unwrap();
    assert_eq!((p.kv("uid"), p.kv("gid")), ("65534", "65534"));
    let p = probe(&mut env, "root-uid", root(), vec![], &script)
        .await
        .unwrap();
    assert_eq!((p.kv("uid"), p.kv("gid")), ("0", "0"));

    // run_as_group alone: "the runtime MUST error".
    let cfg = probe_config(
        &env,
        "group-only",
        Sc {
            run_as_group: uid(3000),
            ..Default::default()
        },
        "true",
    );
    let err = create(&mut env, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("run_as_group"), "{}", err.message());
}

/// Kubernetes: "If runAsGroup is omitted, the primary group ID of the
/// containers will be root(0)" — for a uid without an /etc/passwd entry,
/// containerd's `WithUserID` (and runc's `GetExecUser`) use gid 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_uid_without_a_passwd_entry_gets_gid_0() {
    let Some(mut env) = env("a_uid_without_a_passwd_entry_gets_gid_0").await else {
        return;
    };
    let sc = Sc {
        run_as_user: uid(1234),
        ..Default::default()
    };
    let p = probe(
        &mut env,
        "unknown-uid",
        sc,
        vec![],
        "echo uid=$(id -u); echo gid=$(id -g)",
    )
    .await
    .unwrap();
    assert_eq!((p.kv("uid"), p.kv("gid")), ("1234", "0"));
}

/// containerd puts the primary gid into the supplementary groups
/// (`ensureAdditionalGids`, since GHSA-hmfx-3pcx-653p / CVE-2023-25173), so
/// dropping to a secondary group cannot shed the primary group's
/// restrictions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn the_primary_gid_is_a_supplementary_group() {
    let Some(mut env) = env("the_primary_gid_is_a_supplementary_group").await else {
        return;
    };
    let sc = Sc {
        run_as_user: uid(1000),
        run_as_group: uid(3000),
        supplemental_groups: vec![4000],
        ..Default::default()
    };
    let p = probe(&mut env, "primary", sc, vec![], STATUS)
        .await
        .unwrap();
    assert_eq!(p.groups(), BTreeSet::from([3000, 4000]));
    // The image's USER 65534:65534.
    let p = probe(&mut env, "image", Sc::default(), vec![], STATUS)
        .await
        .unwrap();
    assert_eq!(p.groups(), BTreeSet::from([65534]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_username_is_resolved_in_the_image() {
    let Some(mut env) = env("run_as_username_is_resolved_in_the_image").await else {
        return;
    };
    let script = format!("echo uid=$(id -u); echo gid=$(id -g); {STATUS}");
    for (name, user, ids) in [
        ("nobody", "nobody", ("65534", "65534")),
        ("root", "root", ("0", "0")),
    ] {
        let sc = Sc {
            run_as_username: user.into(),
            ..Default::default()
        };
        let p = probe(&mut env, name, sc, vec![], &script).await.unwrap();
        assert_eq!((p.kv("uid"), p.kv("gid")), ids, "{name}");
        let eff = if user == "root" { DEFAULT_CAPS } else { 0 };
        assert_eq!(p.caps("CapEff"), eff, "{name}");
    }
    // A name the image does not have: "the runtime MUST error" (at create
    // or at start).
    let cfg = probe_config(
        &env,
        "ghost",
        Sc {
            run_as_username: "ghost".into(),
            ..Default::default()
        },
        "true",
    );
    let r = match create(&mut env, cfg).await {
        Ok(id) => start(&mut env.rt, &id).await,
        Err(e) => Err(e),
    };
    let err = r.expect_err("an unknown run_as_username is refused");
    assert!(err.message().contains("ghost"), "{err:?}");
    // Both a uid and a name: refused.
    let cfg = probe_config(
        &env,
        "both",
        Sc {
            run_as_username: "nobody".into(),
            run_as_user: uid(1),
            ..Default::default()
        },
        "true",
    );
    let err = create(&mut env, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_user_and_pod_hostname_apply() {
    let Some(mut env) = env("image_user_and_pod_hostname_apply").await else {
        return;
    };
    let script = format!(
        "echo uid=$(id -u); echo gid=$(id -g); {STATUS}; echo hostname=$(hostname); \
         echo uts=$(cat /proc/sys/kernel/hostname); echo file=$(cat /etc/hostname); \
         echo env=$HOSTNAME"
    );
    let p = probe(&mut env, "image-user", Sc::default(), vec![], &script)
        .await
        .unwrap();
    assert_eq!((p.kv("uid"), p.kv("gid")), ("65534", "65534"), "image USER");
    assert_eq!((p.caps("CapEff"), p.caps("CapPrm")), (0, 0));
    assert_eq!(p.caps("CapBnd"), DEFAULT_CAPS);
    for key in ["hostname", "uts", "file", "env"] {
        assert_eq!(p.kv(key), "pod-host", "{key}");
    }
}

/// kubelet's default masked paths (a subset that this kernel has, plus one
/// it does not): a masked file is /dev/null (reads empty), a masked
/// directory an empty read-only tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_paths_hide_files_and_directories() {
    let Some(mut env) = env("masked_paths_hide_files_and_directories").await else {
        return;
    };
    // Those this kernel has (the container's /proc and /sys are the
    // host kernel's); this one has no /proc/kcore.
    let exists = |p: &&str| std::path::Path::new(p).exists();
    let files: Vec<&str> = ["/proc/kcore", "/proc/keys", "/proc/timer_list"]
        .into_iter()
        .filter(exists)
        .collect();
    let dirs: Vec<&str> = ["/proc/acpi", "/sys/firmware"]
        .into_iter()
        .filter(exists)
        .collect();
    assert!(!files.is_empty() && !dirs.is_empty());
    let mut script = String::new();
    for f in &files {
        script += &format!("echo {f}=$(stat -c %t:%T {f}),$(head -c 4096 {f} | wc -c)\n");
    }
    for d in &dirs {
        script += &format!(
            "echo {d}=$(stat -f -c %T {d}),$(ls -A {d} | wc -l),\
             $(touch {d}/x 2>/dev/null && echo rw || echo ro)\n"
        );
    }
    // kubelet's list also has paths a kernel may lack (/proc/scsi,
    // /proc/kcore here): skipped, no error.
    let mut masked: Vec<String> = files.iter().chain(&dirs).map(|s| s.to_string()).collect();
    masked.extend(["/proc/scsi".into(), "/proc/kcore".into()]);
    let sc = Sc {
        masked_paths: masked,
        ..root()
    };
    let p = probe(&mut env, "masked", sc, vec![], &script)
        .await
        .unwrap();
    for f in &files {
        assert_eq!(p.kv(f), "1:3,0", "{f}: the null device, empty");
    }
    for d in &dirs {
        assert_eq!(p.kv(d), "tmpfs,0,ro", "{d}: an empty read-only tmpfs");
    }
    // The contrast: with no list (kubelet's `procMount: Unmasked`), nothing
    // is masked.
    let p = probe(&mut env, "unmasked", root(), vec![], &script)
        .await
        .unwrap();
    let timer_list = p.kv("/proc/timer_list");
    assert!(
        timer_list.starts_with("0:0,") && timer_list != "0:0,0",
        "{timer_list}"
    );
    if std::fs::read_dir("/sys/firmware").is_ok_and(|mut d| d.next().is_some()) {
        assert!(
            p.kv("/sys/firmware").starts_with("sysfs,"),
            "{}",
            p.kv("/sys/firmware")
        );
    }
}

/// kubelet's default read-only paths: writing fails with EROFS, and each is
/// a read-only mount inside the container. (/proc/sysrq-trigger is only
/// checked through mountinfo: a write would act on the host.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_paths_cannot_be_written() {
    let Some(mut env) = env("readonly_paths_cannot_be_written").await else {
        return;
    };
    let ro = [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ];
    let script =
        "echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start && echo sys=rw || echo sys=ro; \
                  cut -d' ' -f5,6 /proc/self/mountinfo | grep '^/proc/' | sed 's/ /=/'";
    let sc = Sc {
        readonly_paths: ro.iter().map(|s| s.to_string()).collect(),
        ..root()
    };
    let p = probe(&mut env, "readonly", sc, vec![], script)
        .await
        .unwrap();
    assert_eq!(p.kv("sys"), "ro");
    assert!(p.init.contains("Read-only file system"), "{}", p.init);
    for path in ro {
        if std::path::Path::new(path).exists() {
            assert!(p.kv(path).starts_with("ro,"), "{path}: {}", p.kv(path));
        }
    }
    let p = probe(&mut env, "writable", root(), vec![], script)
        .await
        .unwrap();
    assert_eq!(p.kv("sys"), "rw", "without readonly_paths: {}", p.init);
}

/// runc's `readonlyPath` remounts with the source's nosuid/nodev/noexec
/// kept (`statfs` flags), so /proc/sys stays as hardened as /proc
/// (`ro,nosuid,nodev,noexec` in a Docker or containerd container).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn readonly_paths_keep_nosuid_nodev_noexec() {
    let Some(mut env) = env("readonly_paths_keep_nosuid_nodev_noexec").await else {
        return;
    };
    let sc = Sc {
        readonly_paths: vec!["/proc/sys".into()],
        ..root()
    };
    let script = "cut -d' ' -f5,6 /proc/self/mountinfo | grep -E '^/proc(/sys)? ' | sed 's/ /=/'";
    let p = probe(&mut env, "flags", sc, vec![], script).await.unwrap();
    let flags =
        |path: &str| -> BTreeSet<String> { p.kv(path).split(',').map(str::to_string).collect() };
    let proc_flags = flags("/proc");
    assert!(proc_flags.contains("noexec"), "{proc_flags:?}");
    let sys_flags = flags("/proc/sys");
    for f in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(sys_flags.contains(f), "/proc/sys lacks {f}: {sys_flags:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supplemental_groups_policies_and_the_reported_user() {
    let Some(mut env) = env("supplemental_groups_policies_and_the_reported_user").await else {
        return;
    };
    // nobody (65534) is listed in the image's group staff (50).
    let merge = Sc {
        run_as_user: uid(65534),
        supplemental_groups: vec![4000],
        ..Default::default()
    };
    let p = probe(&mut env, "merge", merge.clone(), vec![], STATUS)
        .await
        .unwrap();
    assert_eq!(p.groups(), BTreeSet::from([50, 4000, 65534]), "Merge");
    let strict = Sc {
        supplemental_groups_policy: proto::SupplementalGroupsPolicy::Strict as i32,
        ..merge
    };
    let p = probe(&mut env, "strict", strict.clone(), vec![], STATUS)
        .await
        .unwrap();
    assert_eq!(p.groups(), BTreeSet::from([4000, 65534]), "Strict");

    // ContainerStatus reports the identity the process really has.
    let cfg = probe_config(&env, "reported", strict, "true");
    let id = create(&mut env, cfg).await.unwrap();
    start(&mut env.rt, &id).await.unwrap();
    let user = status(&mut env.rt, &id)
        .await
        .user
        .and_then(|u| u.linux)
        .expect("a running container reports its user");
    assert_eq!((user.uid, user.gid), (65534, 65534));
    let mut groups = user.supplemental_groups;
    groups.sort();
    assert_eq!(groups, vec![4000, 65534]);
    let features = runtime_status(&mut env.rt).await.features.unwrap();
    assert!(features.supplemental_groups_policy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_cgroup_denies_nodes_a_container_makes() {
    let Some(mut env) = env("the_device_cgroup_denies_nodes_a_container_makes").await else {
        return;
    };
    if !std::path::Path::new("/sys/fs/cgroup/devices").is_dir()
        && !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        println!(
            "skipped: the_device_cgroup_...: neither a v1 devices controller nor cgroup v2 here"
        );
        return;
    }
    // Root with CAP_MKNOD may create any node, but open only what the
    // device cgroup allows: /dev/kmsg's numbers are not on the list.
    let script = "rm -f /tmp/k /tmp/z; mknod /tmp/k c 1 11 && echo made; \
                  { echo berth-device-cgroup-test > /tmp/k; } 2>/dev/null && echo opened || echo denied; \
                  mknod /tmp/z c 1 5 && head -c 1 /tmp/z >/dev/null && echo zero-ok";
    let p = probe(&mut env, "devices", root(), vec![], script)
        .await
        .unwrap();
    let lines: Vec<&str> = p.init.lines().collect();
    assert_eq!(lines, ["made", "denied", "zero-ok"], "{}", p.init);
    // A privileged container may use every device.
    let privileged = Sc {
        privileged: true,
        ..root()
    };
    let p = probe(&mut env, "devices-privileged", privileged, vec![], script)
        .await
        .unwrap();
    let lines: Vec<&str> = p.init.lines().collect();
    assert_eq!(lines, ["made", "opened", "zero-ok"], "{}", p.init);
}

/// AppArmor as the node allows it. Without AppArmor (this host): a
/// profile other than Unconfined is refused at create, the field named,
/// never dropped (containerd refuses the same requests there). With it
/// (`scripts/test.sh` runs this test in QEMU guest A, Debian's kernel):
/// RuntimeDefault, and no request, run under berth-default, a loaded
/// Localhost profile under itself, Unconfined and privileged containers
/// under none — the init and ExecSync alike (`probe` compares them) — and
/// an unloaded Localhost profile is refused at create naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)] // apparmor_profile: still sent by older kubelets
async fn apparmor_profiles_are_applied_or_refused_never_dropped() {
    let test = "apparmor_profiles_are_applied_or_refused_never_dropped";
    let Some(mut env) = env(test).await else {
        return;
    };
    let profile = |t: ProfileType, r: &str| {
        Some(SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        })
    };
    let label = "tr -d '\\0' < /proc/self/attr/current 2>/dev/null || echo none";
    let confined = |p: &str| format!("{p} (enforce)");
    let host = berth_cri::spec::lsm::HostLsm::detect();
    if std::env::var_os("BERTH_TEST_NO_SKIP").is_some() {
        assert!(host.apparmor, "{test}: AppArmor must be enabled here");
    }
    if !host.apparmor {
        for (name, sc, field) in [
            (
                "aa-default",
                Sc {
                    apparmor: profile(ProfileType::RuntimeDefault, ""),
                    ..root()
                },
                "security_context.apparmor",
            ),
            (
                "aa-local",
                Sc {
                    apparmor: profile(ProfileType::Localhost, "k8s-deny-write"),
                    ..root()
                },
                "security_context.apparmor.localhost_ref",
            ),
            (
                "aa-string",
                Sc {
                    apparmor_profile: "runtime/default".into(),
                    ..root()
                },
                "security_context.apparmor_profile",
            ),
        ] {
            let cfg = probe_config(&env, name, sc, "true");
            let err = create(&mut env, cfg).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
            assert!(err.message().contains(field), "{name}: {}", err.message());
            assert!(
                err.message().contains("AppArmor"),
                "{name}: {}",
                err.message()
            );
        }
        let sc = Sc {
            apparmor: profile(ProfileType::Unconfined, ""),
            ..root()
        };
        let p = probe(&mut env, "aa-unconfined", sc, vec![], "echo done=1")
            .await
            .unwrap();
        assert_eq!(p.kv("done"), "1");
        return;
    }
    use berth_core::security::apparmor;
    let name = "k8s-deny-write";
    apparmor::load(
        name,
        &format!(
            "profile {name} flags=(attach_disconnected,mediate_deleted) {{\n  file,\n  \
             capability,\n  signal (receive) peer=unconfined,\n  deny /tmp/denied/** w,\n}}\n"
        ),
    )
    .unwrap();
    let default = confined(apparmor::DEFAULT_PROFILE);
    for (case, sc, want) in [
        ("aa-nothing", root(), default.clone()),
        (
            "aa-default",
            Sc {
                apparmor: profile(ProfileType::RuntimeDefault, ""),
                ..root()
            },
            default.clone(),
        ),
        (
            "aa-string",
            Sc {
                apparmor_profile: format!("localhost/{name}"),
                ..root()
            },
            confined(name),
        ),
        (
            "aa-unconfined",
            Sc {
                apparmor: profile(ProfileType::Unconfined, ""),
                ..root()
            },
            "unconfined".to_string(),
        ),
        (
            "aa-privileged",
            Sc {
                privileged: true,
                apparmor: profile(ProfileType::RuntimeDefault, ""),
                ..root()
            },
            "unconfined".to_string(),
        ),
    ] {
        let p = probe(&mut env, case, sc, vec![], label).await.unwrap();
        assert_eq!(p.init.trim(), want, "{case}");
    }
    // The loaded profile's rule holds in the container.
    let sc = Sc {
        apparmor: profile(ProfileType::Localhost, name),
        ..root()
    };
    let script = format!(
        "{label}; mkdir -p /tmp/denied /tmp/ok; \
         {{ echo x > /tmp/denied/f; }} 2>/dev/null && echo WROTE || echo denied; \
         echo x > /tmp/ok/f && echo allowed"
    );
    let p = probe(&mut env, "aa-local", sc, vec![], &script)
        .await
        .unwrap();
    assert_eq!(
        p.init.trim(),
        format!("{}\ndenied\nallowed", confined(name))
    );
    // A Localhost profile the node has not loaded is refused at create.
    let sc = Sc {
        apparmor: profile(ProfileType::Localhost, "berth-never-loaded"),
        ..root()
    };
    let cfg = probe_config(&env, "aa-missing", sc, "true");
    let err = create(&mut env, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("apparmor.localhost_ref") && err.message().contains("not loaded"),
        "{}",
        err.message()
    );
}
