//! Process security settings applied by the init before exec.

pub mod apparmor;
pub mod capabilities;
pub mod ceiling;
pub mod rlimits;
pub mod seccomp;
pub mod user;
