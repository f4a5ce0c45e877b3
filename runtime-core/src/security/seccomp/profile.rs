//! Seccomp profiles in the OCI runtime-spec shape (`linux.seccomp`), which is
//! also what Kubernetes `Localhost` profiles and Docker's profile files use
//! for these fields.

use serde::{Deserialize, Serialize};

/// What happens when a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// `SCMP_ACT_ALLOW`
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
    /// `SCMP_ACT_ERRNO` (with the rule's or profile's errno, default EPERM)
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    /// `SCMP_ACT_KILL` (the thread)
    #[serde(rename = "SCMP_ACT_KILL", alias = "SCMP_ACT_KILL_THREAD")]
    Kill,
    /// `SCMP_ACT_KILL_PROCESS`
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    /// `SCMP_ACT_TRAP`
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    /// `SCMP_ACT_LOG`
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
    /// `SCMP_ACT_NOTIFY` (a seccomp agent answers through the notify fd)
    #[serde(rename = "SCMP_ACT_NOTIFY")]
    Notify,
    /// `SCMP_ACT_TRACE` (with the errno field as the trace message)
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
}

/// Comparison of an argument condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `!=`
    #[serde(rename = "SCMP_CMP_NE")]
    NotEqual,
    /// `<`
    #[serde(rename = "SCMP_CMP_LT")]
    LessThan,
    /// `<=`
    #[serde(rename = "SCMP_CMP_LE")]
    LessOrEqual,
    /// `==`
    #[serde(rename = "SCMP_CMP_EQ")]
    Equal,
    /// `>=`
    #[serde(rename = "SCMP_CMP_GE")]
    GreaterOrEqual,
    /// `>`
    #[serde(rename = "SCMP_CMP_GT")]
    GreaterThan,
    /// `(arg & value) == valueTwo`
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEqual,
}

/// A condition on one syscall argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgCondition {
    /// Argument index (0-5).
    pub index: u32,
    /// Value compared (the mask for `SCMP_CMP_MASKED_EQ`).
    pub value: u64,
    /// Second value (the expected masked value for `SCMP_CMP_MASKED_EQ`).
    #[serde(default)]
    pub value_two: u64,
    /// Comparison.
    pub op: Op,
}

/// A rule for a set of syscalls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    /// Syscall names (unknown names on this architecture are skipped, as
    /// runc and crun do).
    pub names: Vec<String>,
    /// Action when a call matches.
    pub action: Action,
    /// Errno for `SCMP_ACT_ERRNO` (default EPERM) or message for `TRACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Argument conditions (all must hold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgCondition>,
}

/// A whole profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompProfile {
    /// Action for calls no rule matches.
    pub default_action: Action,
    /// Errno of the default action when it is `SCMP_ACT_ERRNO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// Architectures the filter covers (`SCMP_ARCH_X86_64`, `SCMP_ARCH_X86`,
    /// ...); empty: the native one.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Filter flags (`SECCOMP_FILTER_FLAG_LOG`, `SECCOMP_FILTER_FLAG_SPEC_ALLOW`,
    /// `SECCOMP_FILTER_FLAG_TSYNC`).
    #[serde(default)]
    pub flags: Vec<String>,
    /// Rules, in order.
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
}
