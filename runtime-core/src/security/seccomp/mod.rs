//! Seccomp: OCI-style profiles compiled to BPF with libseccomp (Debian's
//! `libseccomp-dev`, through the `libseccomp` crate — no hand-written syscall
//! tables), the built-in `RuntimeDefault` profile, and `Localhost` profiles
//! loaded from files.
//!
//! The filter is installed by the init as late as it can be: right before
//! `execve` when `no_new_privs` is set; otherwise right before the final
//! capability set is applied (loading a filter without `no_new_privs` needs
//! CAP_SYS_ADMIN, which the container usually lacks) — the profile must then
//! allow `capset`, `prctl` and `execve`, as runc's does. A failure to
//! install it is fatal.

mod default_profile;
pub mod profile;

use std::path::Path;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

pub use profile::{Action, ArgCondition, Op, SeccompProfile, SyscallRule};

use crate::security::capabilities::Capability;

/// A profile that cannot be compiled or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// An architecture name libseccomp does not know.
    #[error("seccomp: unknown architecture {0:?}")]
    Arch(String),
    /// A filter flag that is not supported.
    #[error("seccomp: unsupported flag {0:?}")]
    Flag(String),
    /// An argument index above 5.
    #[error("seccomp: syscall {name}: argument index {index} is out of range 0-5")]
    ArgIndex {
        /// Syscall.
        name: String,
        /// Index.
        index: u32,
    },
    /// An errno that does not fit.
    #[error("seccomp: errno {0} is out of range")]
    Errno(u32),
    /// `SCMP_ACT_NOTIFY` needs a seccomp agent, which berth does not run yet.
    #[error("seccomp: SCMP_ACT_NOTIFY needs a seccomp agent listener, which is not supported")]
    NotifyUnsupported,
    /// libseccomp refused something.
    #[error("seccomp: {step}: {message}")]
    Lib {
        /// What was being done.
        step: String,
        /// libseccomp's message.
        message: String,
    },
    /// A profile file could not be read or parsed.
    #[error("seccomp profile {path}: {reason}")]
    File {
        /// File.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

fn lib(step: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let step = step.into();
    move |e| SeccompError::Lib {
        step,
        message: e.to_string(),
    }
}

impl SeccompProfile {
    /// The built-in `RuntimeDefault` profile (containerd's default), for a
    /// container whose bounding set is `caps`.
    pub fn runtime_default(caps: &[Capability]) -> Self {
        default_profile::runtime_default(caps)
    }

    /// A `Localhost` profile: the JSON file at `path` (OCI `linux.seccomp`
    /// shape, as Kubernetes and Docker profiles are).
    pub fn from_file(path: &Path) -> Result<Self, SeccompError> {
        let err = |reason: String| SeccompError::File {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))
    }

    /// Checks that the profile compiles (and is loadable by berth).
    pub fn validate(&self) -> Result<(), SeccompError> {
        if self.uses_notify() {
            return Err(SeccompError::NotifyUnsupported);
        }
        compile(self).map(drop)
    }

    fn uses_notify(&self) -> bool {
        self.default_action == Action::Notify
            || self.syscalls.iter().any(|r| r.action == Action::Notify)
    }
}

fn action(a: Action, errno: Option<u32>, default_errno: u32) -> Result<ScmpAction, SeccompError> {
    let errno = errno.unwrap_or(default_errno);
    Ok(match a {
        Action::Allow => ScmpAction::Allow,
        Action::Errno => {
            let e = i32::try_from(errno)
                .ok()
                .filter(|e| *e <= i32::from(u16::MAX))
                .ok_or(SeccompError::Errno(errno))?;
            ScmpAction::Errno(e)
        }
        Action::Kill => ScmpAction::KillThread,
        Action::KillProcess => ScmpAction::KillProcess,
        Action::Trap => ScmpAction::Trap,
        Action::Log => ScmpAction::Log,
        Action::Notify => ScmpAction::Notify,
        Action::Trace => {
            ScmpAction::Trace(u16::try_from(errno).map_err(|_| SeccompError::Errno(errno))?)
        }
    })
}

fn compare(c: &ArgCondition, name: &str) -> Result<ScmpArgCompare, SeccompError> {
    if c.index > 5 {
        return Err(SeccompError::ArgIndex {
            name: name.to_string(),
            index: c.index,
        });
    }
    let (op, datum) = match c.op {
        Op::NotEqual => (ScmpCompareOp::NotEqual, c.value),
        Op::LessThan => (ScmpCompareOp::Less, c.value),
        Op::LessOrEqual => (ScmpCompareOp::LessOrEqual, c.value),
        Op::Equal => (ScmpCompareOp::Equal, c.value),
        Op::GreaterOrEqual => (ScmpCompareOp::GreaterEqual, c.value),
        Op::GreaterThan => (ScmpCompareOp::Greater, c.value),
        Op::MaskedEqual => (ScmpCompareOp::MaskedEqual(c.value), c.value_two),
    };
    Ok(ScmpArgCompare::new(c.index, op, datum))
}

/// Compiles `p` into a libseccomp filter context (not loaded).
pub(crate) fn compile(p: &SeccompProfile) -> Result<ScmpFilterContext, SeccompError> {
    let default_errno = p.default_errno_ret.unwrap_or(libc::EPERM as u32);
    let mut ctx = ScmpFilterContext::new(action(p.default_action, None, default_errno)?)
        .map_err(lib("create the filter"))?;
    for arch in &p.architectures {
        let a: ScmpArch = arch.parse().map_err(|_| SeccompError::Arch(arch.clone()))?;
        ctx.add_arch(a)
            .map_err(lib(format!("add architecture {arch}")))?;
    }
    for flag in &p.flags {
        match flag.as_str() {
            "SECCOMP_FILTER_FLAG_LOG" => ctx.set_ctl_log(true).map(drop),
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => ctx.set_ctl_ssb(true).map(drop),
            "SECCOMP_FILTER_FLAG_TSYNC" => ctx.set_ctl_tsync(true).map(drop),
            other => return Err(SeccompError::Flag(other.to_string())),
        }
        .map_err(lib(format!("set flag {flag}")))?;
    }
    // no_new_privs is the runtime's business (the config's flag), not libseccomp's.
    ctx.set_ctl_nnp(false)
        .map_err(lib("leave no_new_privs to the runtime"))?;
    for rule in &p.syscalls {
        let act = action(rule.action, rule.errno_ret, default_errno)?;
        if act == action(p.default_action, None, default_errno)? {
            continue; // libseccomp refuses rules equal to the default action
        }
        for name in &rule.names {
            // Names this libseccomp/architecture does not know are skipped,
            // as runc and crun do, so one profile serves several kernels.
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let conds = rule
                .args
                .iter()
                .map(|c| compare(c, name))
                .collect::<Result<Vec<_>, _>>()?;
            let res = if conds.is_empty() {
                ctx.add_rule(act, sc)
            } else {
                ctx.add_rule_conditional(act, sc, &conds)
            };
            res.map_err(lib(format!("add rule for {name}")))?;
        }
    }
    Ok(ctx)
}

/// Compiles and loads `p` into the calling thread (the init, right before exec).
pub(crate) fn install(p: &SeccompProfile) -> Result<(), SeccompError> {
    if p.uses_notify() {
        return Err(SeccompError::NotifyUnsupported);
    }
    compile(p)?.load().map_err(lib("load the filter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> SeccompProfile {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn parses_and_compiles_every_action_and_condition() {
        let p = profile(
            r#"{
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
              {"names": ["read", "write", "no_such_syscall_xyz"], "action": "SCMP_ACT_ALLOW"},
              {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
              {"names": ["ptrace"], "action": "SCMP_ACT_KILL"},
              {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS"},
              {"names": ["acct"], "action": "SCMP_ACT_TRAP"},
              {"names": ["getpid"], "action": "SCMP_ACT_LOG"},
              {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
              {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
              {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}
            ]}"#,
        );
        let ctx = compile(&p).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        ctx.export_bpf(&f).unwrap();
        let len = std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)).unwrap();
        assert!(len > 8 * 10, "a real BPF program: {len} bytes");
        p.validate().unwrap();
    }

    #[test]
    fn notify_compiles_but_is_refused_at_load() {
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}"#,
        );
        assert!(compile(&p).is_ok());
        assert!(matches!(p.validate(), Err(SeccompError::NotifyUnsupported)));
    }

    #[test]
    fn bad_profiles_are_clear_errors() {
        let p =
            profile(r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PDP11"]}"#);
        assert!(matches!(compile(&p), Err(SeccompError::Arch(_))));
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]}"#,
        );
        assert!(matches!(compile(&p), Err(SeccompError::Flag(_))));
        let p = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
               "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(matches!(
            compile(&p),
            Err(SeccompError::ArgIndex { index: 6, .. })
        ));
        assert!(
            serde_json::from_str::<SeccompProfile>(r#"{"defaultAction": "SCMP_ACT_FLY"}"#).is_err()
        );
        let e = SeccompProfile::from_file(Path::new("/nonexistent/profile.json")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/profile.json"));
    }
}
