//! SELinux: the label a container's processes run with (switched to on
//! `execve`, as `setexeccon` does) and the label of the filesystems mounted
//! for it (the `context=` mount option), what runc does with a config's
//! `process.selinuxLabel` and `linux.mountLabel`.

use std::io::Write;
use std::path::Path;

/// Whether SELinux is enabled with a policy loaded (selinuxfs shows it).
pub fn enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// The node policy's contexts for containers: `process` and `file` of
/// `/etc/selinux/<SELINUXTYPE>/contexts/lxc_contexts` (what go-selinux
/// reads for containerd and CRI-O), each falling back to
/// `system_u:system_r:container_t:s0` and
/// `system_u:object_r:container_file_t:s0`.
pub fn container_contexts() -> (String, String) {
    let policy = std::fs::read_to_string("/etc/selinux/config")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("SELINUXTYPE=")
                    .map(|v| v.trim().to_string())
            })
        })
        .filter(|t| !t.is_empty() && !t.contains(['/', '.']))
        .unwrap_or_else(|| "targeted".into());
    let text = std::fs::read_to_string(format!("/etc/selinux/{policy}/contexts/lxc_contexts"))
        .unwrap_or_default();
    parse_lxc_contexts(&text)
}

fn parse_lxc_contexts(text: &str) -> (String, String) {
    let get = |key: &str, default: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().trim_matches('"').to_string())
            .filter(|v| valid_label(v))
            .unwrap_or_else(|| default.to_string())
    };
    (
        get("process", "system_u:system_r:container_t:s0"),
        get("file", "system_u:object_r:container_file_t:s0"),
    )
}

/// Whether `label` can be an SELinux context (`user:role:type[:level]`),
/// as far as can be told without the policy; the kernel checks the rest.
pub(crate) fn valid_label(label: &str) -> bool {
    label.split(':').count() >= 3
        && label.len() < 4096
        && !label
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '"')
}

/// Fs types whose mounts get the mount label (`context=`): the ones a
/// container writes to that have no labels of their own and take the
/// option (mqueue refuses it, as runc found: it keeps the policy's label).
pub(crate) fn labels_fs(fstype: &str) -> bool {
    matches!(fstype, "tmpfs" | "devpts")
}

/// `data` with the `context="<label>"` option added.
pub(crate) fn with_context(data: &str, label: &str) -> String {
    let ctx = format!("context=\"{label}\"");
    if data.is_empty() {
        ctx
    } else {
        format!("{data},{ctx}")
    }
}

/// The process's own `attr/exec` file, opened for writing and checked to
/// be on procfs.
pub(crate) fn open_exec_attr() -> std::io::Result<std::fs::File> {
    crate::sys::open_proc_file("/proc/thread-self/attr/exec")
}

/// Asks for `label` at the next `execve` through `attr`.
pub(crate) fn switch_on_exec(mut attr: &std::fs::File, label: &str) -> std::io::Result<()> {
    attr.write_all(label.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lxc_contexts_give_the_container_defaults() {
        let text = "process = \"system_u:system_r:container_t:s0\"\ncontent = \"x:y:z:s0\"\n\
                    file = \"system_u:object_r:container_file_t:s0\"\n";
        assert_eq!(
            parse_lxc_contexts(text),
            (
                "system_u:system_r:container_t:s0".to_string(),
                "system_u:object_r:container_file_t:s0".to_string()
            )
        );
        let custom = parse_lxc_contexts("process = \"u:r:svirt_t:s0\"\n");
        assert_eq!(custom.0, "u:r:svirt_t:s0");
        assert_eq!(
            custom.1, "system_u:object_r:container_file_t:s0",
            "the fallback"
        );
    }

    #[test]
    fn labels_and_mount_options() {
        assert!(valid_label("system_u:system_r:container_t:s0:c1,c2"));
        assert!(valid_label("system_u:system_r:container_t"));
        assert!(!valid_label("container_t") && !valid_label("a:b:c d") && !valid_label("a:b:\"c"));
        assert_eq!(
            with_context("mode=755", "u:r:t:s0:c1,c2"),
            "mode=755,context=\"u:r:t:s0:c1,c2\""
        );
        assert_eq!(with_context("", "u:r:t:s0"), "context=\"u:r:t:s0\"");
        assert!(labels_fs("tmpfs") && labels_fs("devpts"));
        assert!(!labels_fs("proc") && !labels_fs("sysfs") && !labels_fs("mqueue"));
    }
}
