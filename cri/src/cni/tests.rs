//! `Cni::setup` with a plugin written for the test: what it is asked for.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::*;

/// A plugin that logs `<command> <CNI_ARGS>` and, on ADD, fails when asked
/// for 10.0.0.9 (taken) and otherwise gives the asked-for IP or 10.0.0.2.
const PLUGIN: &str = r#"#!/bin/sh
cat > /dev/null
echo "$CNI_COMMAND $CNI_ARGS" >> "$(dirname "$0")/calls"
[ "$CNI_COMMAND" = ADD ] || exit 0
ip=10.0.0.2
case ";$CNI_ARGS;" in
  *";IP=10.0.0.9;"*) printf '{"code":11,"msg":"10.0.0.9 is taken"}'; exit 1 ;;
  *";IP="*) ip=$(echo "$CNI_ARGS" | tr ';' '\n' | sed -n 's/^IP=//p') ;;
esac
printf '{"cniVersion":"1.0.0","ips":[{"address":"%s/24"}]}' "$ip"
"#;

fn cni(dir: &Path) -> Arc<Cni> {
    let (conf, bin) = (dir.join("net.d"), dir.join("bin"));
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let plugin = bin.join("fake");
    std::fs::write(&plugin, PLUGIN).unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        conf.join("10-fake.conflist"),
        r#"{"cniVersion":"1.0.0","name":"fake","plugins":[{"type":"fake"}]}"#,
    )
    .unwrap();
    Cni::start(
        CniSettings {
            conf_dir: conf,
            bin_dirs: vec![bin],
            plugin_timeout: Duration::from_secs(10),
            check_on_status: false,
        },
        dir.join("cache"),
    )
}

fn setup(cni: &Cni, dir: &Path, id: &str, preferred: &[&str]) -> Vec<String> {
    let config = proto::PodSandboxConfig {
        metadata: Some(proto::PodSandboxMetadata {
            name: "p".into(),
            namespace: "ns".into(),
            uid: "u".into(),
            attempt: 0,
        }),
        ..Default::default()
    };
    let preferred: Vec<IpAddr> = preferred.iter().map(|s| s.parse().unwrap()).collect();
    cni.setup(PodRef {
        id,
        netns: &dir.join("netns"),
        config: &config,
        preferred_ips: &preferred,
    })
    .unwrap()
    .iter()
    .map(ToString::to_string)
    .collect()
}

fn calls(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("bin/calls")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let (cmd, args) = l.split_once(' ').unwrap_or((l, ""));
            let ip = args.split(';').find(|a| a.starts_with("IP="));
            format!("{cmd} {}", ip.unwrap_or("-"))
        })
        .collect()
}

#[test]
fn preferred_ips_are_asked_for_and_dropped_when_they_cannot_be_had() {
    let d = tempfile::tempdir().unwrap();
    let cni = cni(d.path());
    // Nothing preferred: no IP argument.
    assert_eq!(setup(&cni, d.path(), "a", &[]), ["10.0.0.2"]);
    assert_eq!(calls(d.path()), ["ADD -"]);
    // Preferred and free: given.
    assert_eq!(setup(&cni, d.path(), "b", &["10.0.0.7"]), ["10.0.0.7"]);
    assert_eq!(calls(d.path())[1..], ["ADD IP=10.0.0.7"]);
    // Preferred and taken: the failed ADD is undone (DEL), then any.
    assert_eq!(setup(&cni, d.path(), "c", &["10.0.0.9"]), ["10.0.0.2"]);
    assert_eq!(
        calls(d.path())[2..],
        ["ADD IP=10.0.0.9", "DEL IP=10.0.0.9", "ADD -"]
    );
}
