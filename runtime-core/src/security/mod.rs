//! Process security settings applied by the init before exec.

pub mod apparmor;
pub mod capabilities;
pub mod ceiling;
pub mod rlimits;
pub mod seccomp;
pub mod selinux;
pub mod user;

/// The first security-module label of `config` that cannot be one: its
/// field, value and what is wrong.
pub(crate) fn first_bad_label(
    config: &crate::Config,
) -> Option<(&'static str, String, &'static str)> {
    if let Some(p) = config
        .apparmor_profile
        .as_ref()
        .filter(|p| !apparmor::valid_name(p))
    {
        return Some((
            "apparmor_profile",
            p.clone(),
            "not an AppArmor profile name",
        ));
    }
    [
        ("selinux_label", &config.selinux_label),
        ("mount_label", &config.mount_label),
    ]
    .into_iter()
    .find_map(|(field, l)| {
        let l = l.as_ref().filter(|l| !selinux::valid_label(l))?;
        Some((
            field,
            l.clone(),
            "not an SELinux context (user:role:type[:level])",
        ))
    })
}
