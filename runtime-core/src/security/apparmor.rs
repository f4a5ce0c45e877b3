//! AppArmor: whether the kernel has it, which profiles are loaded, loading
//! berth's default profile, and the switch of a container's processes to
//! their profile on `execve` (what runc's `apparmor.ApplyProfile` does).
//!
//! The switch is asked for by writing `exec <profile>` to the process's own
//! `attr/apparmor/exec` (or the older `attr/exec`): the kernel changes the
//! profile at the next `execve` and fails it when the profile is not
//! loaded. The init opens that file first thing, checked to be on procfs,
//! and writes it as the last step before `execve`, after the container's
//! hooks (which run unconfined, as runc runs them).

use std::io::Write;
use std::path::Path;

/// berth's default profile, what `RuntimeDefault` means (containerd's is
/// `cri-containerd.apparmor.d`).
pub const DEFAULT_PROFILE: &str = "berth-default";

/// Where the kernel lists loaded profiles (securityfs).
const PROFILES: &str = "/sys/kernel/security/apparmor/profiles";

/// An AppArmor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AppArmorError {
    /// The list of loaded profiles could not be read.
    #[error("read the loaded AppArmor profiles ({PROFILES}; securityfs mounted?)")]
    Profiles(#[source] std::io::Error),
    /// `apparmor_parser` could not be run.
    #[error("run apparmor_parser (Debian's apparmor package) to load {profile}")]
    Parser {
        /// The profile.
        profile: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `apparmor_parser` refused the profile.
    #[error("apparmor_parser could not load {profile}: {output}")]
    Load {
        /// The profile.
        profile: String,
        /// What it said.
        output: String,
    },
}

/// Whether AppArmor is enabled and usable on this host: the module is on
/// and securityfs shows it (runc's and containerd's test).
pub fn enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
        && Path::new("/sys/kernel/security/apparmor").is_dir()
}

/// Whether a profile named `name` is loaded (in any mode).
pub fn is_loaded(name: &str) -> Result<bool, AppArmorError> {
    let list = std::fs::read_to_string(PROFILES).map_err(AppArmorError::Profiles)?;
    Ok(list
        .lines()
        .filter_map(|l| l.rsplit_once(" ("))
        .any(|(n, _)| n == name))
}

/// Loads [`DEFAULT_PROFILE`] unless it is loaded already.
/// Once it was found or loaded, later calls read nothing: every
/// unprivileged container of an AppArmor node asks, and the list of loaded
/// profiles can be long. (If an administrator unloads it afterwards, the
/// container's start fails naming the profile.)
pub fn ensure_default_loaded() -> Result<(), AppArmorError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static READY: AtomicBool = AtomicBool::new(false);
    if READY.load(Ordering::Relaxed) {
        return Ok(());
    }
    if !is_loaded(DEFAULT_PROFILE)? {
        load(DEFAULT_PROFILE, &default_profile())?;
    }
    READY.store(true, Ordering::Relaxed);
    Ok(())
}

/// Loads (or replaces) the profile `text` named `name` with
/// `apparmor_parser -Kr` (the kernel's binary cache is left alone).
pub fn load(name: &str, text: &str) -> Result<(), AppArmorError> {
    let parser_err = |source| AppArmorError::Parser {
        profile: name.to_string(),
        source,
    };
    let mut child = std::process::Command::new(parser())
        .args(["-Kr", "--config-file=/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(parser_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).map_err(parser_err)?;
    }
    let out = child.wait_with_output().map_err(parser_err)?;
    if !out.status.success() {
        return Err(AppArmorError::Load {
            profile: name.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Where Debian puts `apparmor_parser`.
const PARSERS: [&str; 2] = ["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"];

/// `apparmor_parser` where Debian puts it, else from `PATH`.
fn parser() -> &'static str {
    PARSERS
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("apparmor_parser")
}

/// Whether `apparmor_parser` is installed where Debian puts it.
pub fn parser_installed() -> bool {
    PARSERS.iter().any(|p| Path::new(p).exists())
}

/// berth's default profile: the rules of containerd's
/// `cri-containerd.apparmor.d` (itself Docker's `docker-default`), written
/// without includes (`/proc` spelled out), so it loads on a host with no
/// `/etc/apparmor.d` abstractions too. Everything is allowed except: writes
/// to `/proc` outside a process's own directories and `/proc/sys/kernel/shm*`,
/// `sysrq-trigger` and `kcore`, mounting, writes to `/sys` outside
/// `/sys/fs/cgroup`, reading `/sys/firmware`, powercap and securityfs.
/// Signals from unconfined processes (berth's monitor) and among the
/// container's processes are received.
pub fn default_profile() -> String {
    // The host's abstractions when it has them (base needs the tunables'
    // variables), as containerd's template includes them.
    let (tunables, base) = if Path::new("/etc/apparmor.d/abstractions/base").exists()
        && Path::new("/etc/apparmor.d/tunables/global").exists()
    {
        (
            "#include <tunables/global>\n",
            "  #include <abstractions/base>\n",
        )
    } else {
        ("", "")
    };
    let p = DEFAULT_PROFILE;
    format!(
        r#"{tunables}profile {p} flags=(attach_disconnected,mediate_deleted) {{
{base}
  network,
  capability,
  file,
  umount,
  unix,
  signal (receive) peer=unconfined,
  signal (send,receive) peer={p},

  deny /proc/* w,
  deny /proc/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}}/** w,
  deny /proc/sys/[^k]** w,
  deny /proc/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny /proc/sysrq-trigger rwklx,
  deny /proc/kcore rwklx,

  deny mount,

  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,

  ptrace (trace,tracedby,read,readby) peer={p},
}}
"#
    )
}

/// The process's own "profile on exec" file, opened for writing and
/// checked to be on procfs: `/proc/thread-self/attr/apparmor/exec`, or the
/// older `/proc/thread-self/attr/exec`.
pub(crate) fn open_exec_attr() -> std::io::Result<std::fs::File> {
    crate::sys::open_proc_file("/proc/thread-self/attr/apparmor/exec")
        .or_else(|_| crate::sys::open_proc_file("/proc/thread-self/attr/exec"))
}

/// Asks for `profile` at the next `execve` through `attr` (from
/// [`open_exec_attr`]).
pub(crate) fn switch_on_exec(mut attr: &std::fs::File, profile: &str) -> std::io::Result<()> {
    attr.write_all(format!("exec {profile}").as_bytes())
}

/// Whether `name` can name a profile (no whitespace or control
/// characters, not a `:ns:` reference).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 4096
        && !name.starts_with(':')
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_is_self_contained_and_named() {
        let p = default_profile();
        assert!(p.contains("profile berth-default flags=(attach_disconnected,mediate_deleted) {"));
        assert!(
            !p.contains("@{PROC}"),
            "/proc spelled out: loads without tunables"
        );
        assert!(p.contains("deny mount,"));
        assert!(p.contains("signal (receive) peer=unconfined,"));
        assert_eq!(p.matches('{').count(), p.matches('}').count());
    }

    #[test]
    fn the_default_profile_compiles_where_apparmor_parser_is_installed() {
        let parser = parser();
        if !Path::new(parser).exists() {
            println!("skipped: the_default_profile_compiles: no apparmor_parser here");
            return;
        }
        // -Q: compile only, nothing is loaded into the kernel.
        let mut child = std::process::Command::new(parser)
            .args(["-QK", "--config-file=/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(default_profile().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn profile_names() {
        assert!(valid_name("berth-default") && valid_name("k8s-apparmor-example-deny-write"));
        assert!(
            !valid_name("") && !valid_name("a b") && !valid_name("a\nb") && !valid_name(":ns:x")
        );
    }
}
