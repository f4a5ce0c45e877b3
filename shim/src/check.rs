//! `berth check`: what this node has and lacks for berth, for an operator.
//!
//! Prints one line per item — `ok`, `warn` (works, with a limit) or
//! `MISSING` (berth cannot do its job) — and exits 1 when anything required
//! is missing. Reads only: files under /proc and /sys, the CNI config
//! directory, `criu --version` and `criu check`.

use std::path::Path;

use crate::config::Config;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// Ready.
    Ok,
    /// Usable, with a limit the operator should know.
    Warn,
    /// Required and absent.
    Missing,
}

/// A checked item.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub item: &'static str,
    pub detail: String,
}

fn finding(level: Level, item: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        level,
        item,
        detail: detail.into(),
    }
}

/// Every check, in order.
pub fn findings(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let release = berth_core::kernel::release();
    let at_least = berth_core::kernel::at_least;
    out.push(finding(
        if at_least(5, 4) {
            Level::Ok
        } else {
            Level::Warn
        },
        "kernel",
        format!("{release} (5.4 or newer is tested; pidfds need 5.3)"),
    ));
    for ns in ["mnt", "uts", "ipc", "pid", "net", "cgroup"] {
        let present = Path::new("/proc/self/ns").join(ns).exists();
        out.push(finding(
            if present { Level::Ok } else { Level::Missing },
            "namespace",
            format!(
                "{ns}{}",
                if present {
                    ""
                } else {
                    " namespaces are not available"
                }
            ),
        ));
    }
    let max_userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    out.push(finding(
        if max_userns > 0 {
            Level::Ok
        } else {
            Level::Warn
        },
        "user namespaces",
        if max_userns > 0 {
            format!("up to {max_userns} (pods with hostUsers: false)")
        } else {
            "disabled (user.max_user_namespaces = 0): pods with hostUsers: false fail".into()
        },
    ));
    out.push(finding(
        if at_least(5, 19) {
            Level::Ok
        } else {
            Level::Warn
        },
        "idmapped mounts",
        if at_least(5, 19) {
            "overlayfs over idmapped layers (kernel 5.19+)".to_string()
        } else {
            format!("kernel {release}: user-namespaced pods need 5.19+")
        },
    ));
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let has_fs = |name: &str| {
        filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(name))
    };
    let overlay_module = Path::new("/sys/module/overlay").exists()
        || Path::new(&format!("/lib/modules/{release}/kernel/fs/overlayfs")).exists();
    out.push(finding(
        if has_fs("overlay") || overlay_module {
            Level::Ok
        } else {
            Level::Missing
        },
        "overlayfs",
        if has_fs("overlay") {
            "available".to_string()
        } else if overlay_module {
            "as a module (loaded on first mount)".to_string()
        } else {
            "not in /proc/filesystems and no module: container root filesystems need it".into()
        },
    ));
    let seccomp = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Seccomp:"));
    out.push(finding(
        if seccomp { Level::Ok } else { Level::Missing },
        "seccomp",
        if seccomp {
            "filters supported (RuntimeDefault and Localhost profiles)"
        } else {
            "the kernel has no seccomp: profiles cannot be enforced"
        },
    ));
    out.extend(lsm_findings(berth_cri::spec::lsm::HostLsm::detect()));
    out.extend(cdi_findings(config));
    out.extend(cgroup_findings(config));
    out.push(criu_finding());
    out.extend(cni_findings(config));
    out
}

/// AppArmor and SELinux: what berth does with requests for them here. A
/// container that asks for confinement berth cannot give is refused, never
/// run unconfined.
fn lsm_findings(host: berth_cri::spec::lsm::HostLsm) -> Vec<Finding> {
    let parser = berth_core::security::apparmor::parser_installed();
    let apparmor = match (host.apparmor, parser) {
        (true, true) => finding(
            Level::Ok,
            "apparmor",
            "enabled: unprivileged containers run under berth-default (loaded on first use) \
             unless they ask for a Localhost profile (which must be loaded) or Unconfined",
        ),
        (true, false) => finding(
            Level::Warn,
            "apparmor",
            "enabled, but apparmor_parser is missing (Debian's apparmor package): containers \
             that get berth-default fail to create until it is installed or the profile loaded",
        ),
        (false, _) => finding(
            Level::Ok,
            "apparmor",
            "not enabled: containers asking for a profile other than Unconfined are refused \
             (as containerd does)",
        ),
    };
    let selinux = match host.selinux {
        true => {
            let d = berth_cri::spec::selinux::SelinuxDefaults::node();
            finding(
                Level::Ok,
                "selinux",
                format!(
                    "enabled: containers run as {} and their files are {} (the node's \
                     lxc_contexts), with a level per pod; volumes asking for a relabel are \
                     relabeled",
                    d.process, d.file
                ),
            )
        }
        false => finding(
            Level::Ok,
            "selinux",
            "not enabled: selinux_options are ignored (as containerd does)",
        ),
    };
    vec![apparmor, selinux]
}

/// CDI: whether it is on, the devices its specs define now, and each spec
/// file that fails to load (skipped by CreateContainer too).
fn cdi_findings(config: &Config) -> Vec<Finding> {
    let settings = berth_cri::cdi::CdiSettings {
        enabled: config.runtime.enable_cdi,
        spec_dirs: config.runtime.cdi_spec_dirs.clone(),
    };
    let dirs: Vec<String> = settings
        .spec_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    if !settings.enabled {
        return vec![finding(
            Level::Ok,
            "cdi",
            "disabled ([runtime] enable_cdi): containers asking for CDI devices are refused",
        )];
    }
    let (devices, errors) = berth_cri::cdi::Cdi::new(settings).scan();
    let mut out = vec![finding(
        Level::Ok,
        "cdi",
        format!(
            "{} device(s) in {}{}",
            devices.len(),
            dirs.join(", "),
            if devices.is_empty() {
                String::new()
            } else {
                format!(": {}", devices.join(", "))
            }
        ),
    )];
    for (path, e) in errors {
        out.push(finding(Level::Warn, "cdi", format!("{path} skipped: {e}")));
    }
    out
}

fn cgroup_findings(config: &Config) -> Vec<Finding> {
    use berth_core::cgroups::{self, Mode};
    let mut out = Vec::new();
    let root = Path::new(berth_core::container::DEFAULT_CGROUP_ROOT);
    let mode = cgroups::hierarchy_mode();
    let controllers: Vec<String> = match cgroups::detect(root) {
        cgroups::Version::V2 => std::fs::read_to_string(root.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        cgroups::Version::V1 => cgroups::v1_controllers(root)
            .into_iter()
            .map(str::to_string)
            .collect(),
    };
    out.push(finding(
        match mode {
            Mode::None => Level::Missing,
            Mode::Legacy | Mode::Hybrid => Level::Warn,
            Mode::Unified => Level::Ok,
        },
        "cgroups",
        match mode {
            Mode::Legacy | Mode::Hybrid => format!(
                "{}: works, but kubelet 1.35+ refuses v1 unless told to (failCgroupV1: false)",
                mode.describe()
            ),
            m => m.describe().to_string(),
        },
    ));
    let want = ["cpu", "memory", "pids"];
    let missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|c| !controllers.iter().any(|h| h == c))
        .collect();
    out.push(finding(
        if missing.is_empty() {
            Level::Ok
        } else {
            Level::Missing
        },
        "cgroup controllers",
        if missing.is_empty() {
            controllers.join(" ")
        } else {
            format!(
                "missing {} (have: {})",
                missing.join(" "),
                controllers.join(" ")
            )
        },
    ));
    let systemd_pid1 = Path::new("/run/systemd/system").is_dir();
    let driver = config.runtime.cgroup_driver;
    let (level, detail) = match driver {
        cgroups::Driver::Systemd if !systemd_pid1 => (
            Level::Missing,
            "cgroup_driver = systemd, but systemd is not PID 1 here".to_string(),
        ),
        cgroups::Driver::Systemd if mode != Mode::Unified => (
            Level::Missing,
            "cgroup_driver = systemd needs cgroup v2".to_string(),
        ),
        cgroups::Driver::Systemd => (Level::Ok, "systemd (transient scopes)".to_string()),
        cgroups::Driver::Cgroupfs if systemd_pid1 => (
            Level::Warn,
            "cgroupfs while systemd is PID 1: kubelet's cgroupDriver must say cgroupfs too (systemd is the usual choice here)".to_string(),
        ),
        cgroups::Driver::Cgroupfs => (Level::Ok, "cgroupfs".to_string()),
    };
    out.push(finding(level, "cgroup driver", detail));
    out
}

fn criu_finding() -> Finding {
    match std::process::Command::new("criu").arg("--version").output() {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let version = text
                .lines()
                .find_map(|l| l.strip_prefix("Version: "))
                .unwrap_or("unknown version")
                .trim()
                .to_string();
            // `criu check` says whether it works on this kernel (Debian's
            // 3.17 does not on 6.x kernels with a newer vDSO layout).
            let check = std::process::Command::new("criu").arg("check").output();
            match check {
                Ok(c) if c.status.success() => {
                    finding(Level::Ok, "criu", format!("{version} (criu check passes)"))
                }
                Ok(c) => {
                    let err = String::from_utf8_lossy(&c.stderr);
                    let first = err
                        .lines()
                        .find(|l| l.contains("Error"))
                        .unwrap_or("criu check failed")
                        .to_string();
                    finding(
                        Level::Warn,
                        "criu",
                        format!(
                            "{version} fails `criu check` ({first}): checkpoints will not work"
                        ),
                    )
                }
                Err(e) => finding(Level::Warn, "criu", format!("{version}: criu check: {e}")),
            }
        }
        _ => finding(
            Level::Warn,
            "criu",
            "not found: CheckpointContainer will not work",
        ),
    }
}

fn cni_findings(config: &Config) -> Vec<Finding> {
    use berth_cri::cni::config::{load_dir, Loaded};
    let dir = &config.network.cni_conf_dir;
    match load_dir(dir) {
        Loaded::NotReady(why) => vec![finding(
            Level::Warn,
            "cni",
            format!("{why}: NetworkReady stays false until a CNI plugin installs one (host-network pods still run)"),
        )],
        Loaded::Ready(list) => {
            let mut out = vec![finding(
                Level::Ok,
                "cni",
                format!(
                    "network {:?} (CNI {}) from {}",
                    list.name,
                    list.cni_version,
                    list.source.display()
                ),
            )];
            for p in &list.plugins {
                let ty = p.get("type").and_then(|t| t.as_str()).unwrap_or("");
                match berth_cri::cni::exec::find(ty, &config.network.cni_bin_dirs) {
                    Ok(path) => out.push(finding(
                        Level::Ok,
                        "cni plugin",
                        format!("{ty}: {}", path.display()),
                    )),
                    Err(e) => out.push(finding(Level::Missing, "cni plugin", e.to_string())),
                }
            }
            out
        }
    }
}

/// Prints the findings; the exit code is 1 when something required is
/// missing.
pub fn main(config_path: Option<&Path>) -> anyhow::Result<i32> {
    let config = Config::load(config_path)?;
    let all = findings(&config);
    for f in &all {
        let tag = match f.level {
            Level::Ok => "ok     ",
            Level::Warn => "warn   ",
            Level::Missing => "MISSING",
        };
        println!("{tag} {:<18} {}", f.item, f.detail);
    }
    let missing = all.iter().filter(|f| f.level == Level::Missing).count();
    if missing > 0 {
        println!("berth check: {missing} required item(s) missing");
        Ok(1)
    } else {
        println!("berth check: this node can run berth");
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cni_config_with_a_missing_plugin_is_reported() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("10.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"no-such-plugin"}]}"#,
        )
        .unwrap();
        let mut c = Config::default();
        c.network.cni_conf_dir = d.path().to_path_buf();
        c.network.cni_bin_dirs = vec![d.path().to_path_buf()];
        let f = cni_findings(&c);
        assert_eq!(f[0].level, Level::Ok);
        assert!(f
            .iter()
            .any(|f| f.level == Level::Missing && f.detail.contains("no-such-plugin")));
        c.network.cni_conf_dir = d.path().join("none");
        assert_eq!(cni_findings(&c)[0].level, Level::Warn);
    }

    #[test]
    fn the_security_modules_are_reported_with_what_berth_does() {
        use berth_cri::spec::lsm::HostLsm;
        let none = lsm_findings(HostLsm::default());
        assert!(none.iter().all(|f| f.level == Level::Ok), "{none:?}");
        assert!(none[0].detail.contains("refused"), "{none:?}");
        let both = lsm_findings(HostLsm {
            apparmor: true,
            selinux: true,
        });
        // Both applied (AppArmor Ok with the parser installed, as the test
        // dependencies install it).
        assert!(both[1].detail.contains("level per pod"), "{both:?}");
        assert!(both[0].detail.contains("berth-default"), "{both:?}");
        assert_eq!(
            both.iter().map(|f| f.item).collect::<Vec<_>>(),
            ["apparmor", "selinux"]
        );
    }

    #[test]
    fn this_machine_has_the_basics() {
        let all = findings(&Config::default());
        for item in [
            "kernel",
            "namespace",
            "overlayfs",
            "seccomp",
            "cgroups",
            "criu",
            "cni",
        ] {
            assert!(all.iter().any(|f| f.item == item), "{item} not checked");
        }
    }
}
