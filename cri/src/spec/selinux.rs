//! SELinux labels of a container, as containerd's CRI plugin computes them
//! (go-selinux's `InitLabels`): the node policy's container contexts
//! (`lxc_contexts`: `process`, `file`) give the defaults; the request's
//! `selinux_options` replace their user, role, type and level; the level
//! is the pod's — every container of a pod shares one MCS level, allocated
//! at RunPodSandbox unless the pod names it — unless the container names
//! its own. The process label goes to the container's processes (switched
//! to on `execve`), the mount label (the file context with the same
//! level) to its rootfs and tmpfs/devpts mounts, and to the volumes that
//! ask for a relabel (done by the caller). A privileged container
//! gets neither, as with containerd. Where SELinux is not enabled, options
//! are ignored (as containerd ignores them there).

use super::{invalid, SpecError};
use crate::proto;

const SC: &str = "config.linux.security_context.selinux_options";

/// The node policy's container contexts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelinuxDefaults {
    /// The process context (`lxc_contexts` `process`).
    pub process: String,
    /// The file context (`lxc_contexts` `file`).
    pub file: String,
}

impl SelinuxDefaults {
    /// This node's, read once: `/etc/selinux/<SELINUXTYPE>/contexts/lxc_contexts`,
    /// else containerd's fallbacks (`container_t`, `container_file_t`).
    pub fn node() -> &'static SelinuxDefaults {
        static NODE: std::sync::OnceLock<SelinuxDefaults> = std::sync::OnceLock::new();
        NODE.get_or_init(|| {
            let (process, file) = berth_core::security::selinux::container_contexts();
            SelinuxDefaults { process, file }
        })
    }
}

/// What a container takes from its pod for SELinux (`None` in
/// [`super::PodContext`]: SELinux is not enabled on the node).
#[derive(Debug, Clone, Copy)]
pub struct PodSelinux<'a> {
    /// The pod's MCS level (`s0:c12,c345`).
    pub level: &'a str,
    /// The node's defaults.
    pub defaults: &'a SelinuxDefaults,
}

/// The pod's level: the one its `selinux_options` name, else
/// `s0:c<a>,c<b>` from two random numbers (`a` < `b` below 1024).
pub fn pod_level(
    options: Option<&proto::SeLinuxOption>,
    random: [u16; 2],
) -> Result<String, SpecError> {
    if let Some(l) = options.map(|o| o.level.as_str()).filter(|l| !l.is_empty()) {
        check_part(
            "config.linux.security_context.selinux_options.level",
            l,
            true,
        )?;
        return Ok(l.to_string());
    }
    let (mut a, mut b) = (random[0] % 1024, random[1] % 1024);
    if a == b {
        b = (b + 1) % 1024;
    }
    if a > b {
        std::mem::swap(&mut a, &mut b);
    }
    Ok(format!("s0:c{a},c{b}"))
}

fn check_part(field: &str, v: &str, level: bool) -> Result<(), SpecError> {
    let ok = !v.is_empty()
        && v.len() < 256
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || c == '_'
                || c == '.'
                || (level && matches!(c, ':' | ',' | '-'))
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} is not an SELinux context part"),
        ))
    }
}

/// `(process label, mount label)` of a container in `pod` (`None`: none).
pub(super) fn labels(
    sc: &proto::LinuxContainerSecurityContext,
    pod: Option<PodSelinux<'_>>,
) -> Result<Option<(String, String)>, SpecError> {
    let Some(pod) = pod else {
        return Ok(None);
    };
    if sc.privileged {
        return Ok(None);
    }
    let none = proto::SeLinuxOption::default();
    let o = sc.selinux_options.as_ref().unwrap_or(&none);
    let split = |ctx: &str| -> Result<[String; 4], SpecError> {
        let p: Vec<&str> = ctx.splitn(4, ':').collect();
        match p.as_slice() {
            [u, r, t, l] => Ok([u, r, t, l].map(|s| s.to_string())),
            [u, r, t] => Ok([u.to_string(), r.to_string(), t.to_string(), "s0".into()]),
            _ => Err(invalid(
                SC,
                format!("the node's SELinux container context {ctx:?} is malformed"),
            )),
        }
    };
    let [pu, pr, pt, _] = split(&pod.defaults.process)?;
    let [fu, fr, ft, _] = split(&pod.defaults.file)?;
    let pick = |field: &str, asked: &str, default: String, level: bool| {
        if asked.is_empty() {
            Ok(default)
        } else {
            check_part(&format!("{SC}.{field}"), asked, level).map(|()| asked.to_string())
        }
    };
    let level = pick("level", &o.level, pod.level.to_string(), true)?;
    let process = format!(
        "{}:{}:{}:{level}",
        pick("user", &o.user, pu, false)?,
        pick("role", &o.role, pr, false)?,
        pick("type", &o.r#type, pt, false)?
    );
    Ok(Some((process, format!("{fu}:{fr}:{ft}:{level}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> SelinuxDefaults {
        SelinuxDefaults {
            process: "system_u:system_r:container_t:s0".into(),
            file: "system_u:object_r:container_file_t:s0".into(),
        }
    }

    fn sc(o: Option<proto::SeLinuxOption>) -> proto::LinuxContainerSecurityContext {
        proto::LinuxContainerSecurityContext {
            selinux_options: o,
            ..Default::default()
        }
    }

    #[test]
    fn the_pod_level_is_shared_and_options_replace_parts() {
        let d = defaults();
        let pod = Some(PodSelinux {
            level: "s0:c1,c2",
            defaults: &d,
        });
        assert_eq!(
            labels(&sc(None), None).unwrap(),
            None,
            "no SELinux: nothing"
        );
        assert_eq!(
            labels(&sc(None), pod).unwrap(),
            Some((
                "system_u:system_r:container_t:s0:c1,c2".into(),
                "system_u:object_r:container_file_t:s0:c1,c2".into()
            ))
        );
        let o = proto::SeLinuxOption {
            r#type: "spc_t".into(),
            level: "s0:c7,c9".into(),
            ..Default::default()
        };
        assert_eq!(
            labels(&sc(Some(o)), pod).unwrap(),
            Some((
                "system_u:system_r:spc_t:s0:c7,c9".into(),
                "system_u:object_r:container_file_t:s0:c7,c9".into()
            ))
        );
        let mut privileged = sc(None);
        privileged.privileged = true;
        assert_eq!(labels(&privileged, pod).unwrap(), None);
        let bad = proto::SeLinuxOption {
            user: "a:b".into(),
            ..Default::default()
        };
        let err = labels(&sc(Some(bad)), pod).unwrap_err().to_string();
        assert!(
            err.starts_with("config.linux.security_context.selinux_options.user"),
            "{err}"
        );
    }

    #[test]
    fn pod_levels_are_named_or_allocated() {
        let o = proto::SeLinuxOption {
            level: "s0:c3,c4".into(),
            ..Default::default()
        };
        assert_eq!(pod_level(Some(&o), [0, 0]).unwrap(), "s0:c3,c4");
        assert_eq!(pod_level(None, [900, 5]).unwrap(), "s0:c5,c900");
        assert_eq!(pod_level(None, [1030, 6]).unwrap(), "s0:c6,c7");
        let bad = proto::SeLinuxOption {
            level: "s0 c1".into(),
            ..Default::default()
        };
        assert!(pod_level(Some(&bad), [1, 2]).is_err());
    }
}
