//! The most privilege a process of a container may hold, and the check of a
//! live task against it.
//!
//! A container restored from a checkpoint is not set up by berth's init:
//! CRIU recreates its tasks with the ids, capabilities, `no_new_privs` and
//! seccomp mode recorded in the checkpoint images, which whoever built the
//! images chose. Before such tasks run, each is compared with the ceiling of
//! what the same container would have been allowed had it been started
//! normally; any excess refuses the restore.
//!
//! The ceiling is what the container's processes can reach, not only what
//! its init gets at exec: with `CAP_SETUID` a process may become any user;
//! without `no_new_privs` a setuid-root or file-capability binary of the
//! image raises its ids and capabilities up to the bounding set. The
//! bounding set is the hard limit in every case.

use super::capabilities::{mask, Capabilities, Capability};
use super::user::ResolvedUser;

/// The credentials of one task, as `/proc/<pid>/task/<tid>/status` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCreds {
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Inheritable capabilities.
    pub inheritable: u64,
    /// Permitted capabilities.
    pub permitted: u64,
    /// Effective capabilities.
    pub effective: u64,
    /// Bounding set.
    pub bounding: u64,
    /// Ambient capabilities.
    pub ambient: u64,
    /// `no_new_privs`.
    pub no_new_privs: bool,
    /// Seccomp mode: 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
}

impl TaskCreds {
    /// Parses the text of a `status` file; `None` when a field is missing or
    /// malformed (an unreadable task is never taken as unprivileged).
    pub fn parse(status: &str) -> Option<TaskCreds> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let ids = |name: &str| -> Option<[u32; 4]> {
            let v: Vec<u32> = field(name)?
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            v.try_into().ok()
        };
        let caps = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
        Some(TaskCreds {
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            groups: field("Groups")?
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?,
            inheritable: caps("CapInh")?,
            permitted: caps("CapPrm")?,
            effective: caps("CapEff")?,
            bounding: caps("CapBnd")?,
            ambient: caps("CapAmb")?,
            no_new_privs: field("NoNewPrivs")?.parse::<u8>().ok()? != 0,
            seccomp: field("Seccomp")?.parse().ok()?,
        })
    }
}

/// The most privilege a container's processes may hold (ids as the
/// container sees them: a task of a user-namespace pod is compared with its
/// ids mapped back through the pod's maps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceiling {
    /// The only uid allowed; `None`: any (the container may change user).
    uid: Option<u32>,
    /// The only gid allowed and the allowed supplementary groups; `None`:
    /// any (the container may change group).
    groups: Option<(u32, Vec<u32>)>,
    /// Bounding set.
    bounding: u64,
    /// What permitted, effective and ambient may hold.
    permitted: u64,
    /// `no_new_privs` required.
    no_new_privs: bool,
    /// A seccomp filter required.
    seccomp: bool,
}

impl Ceiling {
    /// The ceiling of a container whose process gets `caps` as `user`, with
    /// `no_new_privs` and a seccomp filter as given — the values a normal
    /// start applies (see `init::setup`).
    pub fn new(
        caps: &Capabilities,
        user: &ResolvedUser,
        no_new_privs: bool,
        seccomp: bool,
    ) -> Self {
        let bounding = mask(&caps.bounding);
        // Without no_new_privs, exec of a setuid or file-capability binary
        // reaches the bounding set (and root's ids).
        let permitted = if no_new_privs {
            mask(&caps.permitted) & bounding
        } else {
            bounding
        };
        let holds = |c: Capability| permitted & (1u64 << c.index()) != 0;
        let escalates = !no_new_privs;
        let mut groups = user.additional_gids.clone();
        groups.push(user.gid);
        Ceiling {
            uid: (!escalates && !holds(Capability::CAP_SETUID)).then_some(user.uid),
            groups: (!escalates && !holds(Capability::CAP_SETGID)).then_some((user.gid, groups)),
            bounding,
            permitted,
            no_new_privs,
            seccomp,
        }
    }

    /// What `task` holds beyond the ceiling, one phrase each; empty when
    /// nothing.
    pub fn excess(&self, task: &TaskCreds) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(uid) = self.uid {
            if task.uids.iter().any(|u| *u != uid) {
                out.push(format!("uids {:?} where only {uid} is allowed", task.uids));
            }
        }
        if let Some((gid, groups)) = &self.groups {
            if task.gids.iter().any(|g| g != gid) {
                out.push(format!("gids {:?} where only {gid} is allowed", task.gids));
            }
            let extra: Vec<u32> = task
                .groups
                .iter()
                .copied()
                .filter(|g| !groups.contains(g))
                .collect();
            if !extra.is_empty() {
                out.push(format!("supplementary groups {extra:?} not requested"));
            }
        }
        for (set, held, limit) in [
            ("bounding", task.bounding, self.bounding),
            ("permitted", task.permitted, self.permitted),
            ("effective", task.effective, self.permitted),
            ("ambient", task.ambient, self.permitted),
            ("inheritable", task.inheritable, self.bounding),
        ] {
            let extra = held & !limit;
            if extra != 0 {
                out.push(format!("{set} capabilities {}", names(extra)));
            }
        }
        if self.no_new_privs && !task.no_new_privs {
            out.push("no no_new_privs".into());
        }
        if self.seccomp && task.seccomp != 2 {
            out.push(format!(
                "seccomp mode {} where a filter is required",
                task.seccomp
            ));
        }
        out
    }
}

/// The names of the capabilities in `bits` (`#N` for unknown ones).
fn names(bits: u64) -> String {
    let mut all: Vec<Capability> = caps::all().into_iter().collect();
    all.sort_by_key(|c| c.index());
    (0..64)
        .filter(|i| bits & (1u64 << i) != 0)
        .map(|i| {
            all.iter()
                .find(|c| u64::from(c.index()) == i)
                .map_or_else(|| format!("#{i}"), |c| c.to_string())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(uid: u32, caps: &str, nnp: u8, seccomp: u8) -> String {
        format!(
            "Name:\tsh\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\nGroups:\t0 10 \n\
             CapInh:\t0000000000000000\nCapPrm:\t{caps}\nCapEff:\t{caps}\nCapBnd:\t{caps}\n\
             CapAmb:\t0000000000000000\nNoNewPrivs:\t{nnp}\nSeccomp:\t{seccomp}\n"
        )
    }

    fn user(uid: u32, gid: u32) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: Vec::new(),
            home: "/".into(),
        }
    }

    #[test]
    fn status_files_parse_and_odd_ones_do_not() {
        let t = TaskCreds::parse(&status(0, "000001ffffffffff", 0, 2)).unwrap();
        assert_eq!(t.uids, [0; 4]);
        assert_eq!(t.groups, [0, 10]);
        assert_eq!(t.bounding, 0x1ff_ffff_ffff);
        assert!(!t.no_new_privs);
        assert_eq!(t.seccomp, 2);
        let empty_groups = status(5, "0", 1, 0).replace("Groups:\t0 10 ", "Groups:");
        assert!(TaskCreds::parse(&empty_groups).unwrap().groups.is_empty());
        assert!(TaskCreds::parse("Uid:\t0\t0\t0\n").is_none());
        assert!(TaskCreds::parse(&status(0, "zz", 0, 0)).is_none());
        assert!(TaskCreds::parse(&status(0, "0", 0, 0).replace("Seccomp", "X")).is_none());
    }

    #[test]
    fn a_root_task_with_sys_admin_exceeds_a_restricted_request() {
        let root = TaskCreds::parse(&status(0, "000001ffffffffff", 0, 0)).unwrap();
        let c = Ceiling::new(&Capabilities::none(), &user(1000, 1000), true, true);
        let e = c.excess(&root).join("; ");
        for want in [
            "uids [0, 0, 0, 0] where only 1000",
            "gids",
            "bounding capabilities CAP_CHOWN",
            "CAP_SYS_ADMIN",
            "no no_new_privs",
            "seccomp mode 0",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn a_task_within_the_request_passes() {
        let mut caps = Capabilities::default_set();
        caps.bounding.push(Capability::CAP_SYS_ADMIN);
        caps.permitted.push(Capability::CAP_SYS_ADMIN);
        let c = Ceiling::new(&caps, &user(0, 0), false, false);
        let m = format!("{:016x}", mask(&caps.bounding));
        let root = TaskCreds::parse(&status(0, &m, 0, 0)).unwrap();
        assert_eq!(c.excess(&root), Vec::<String>::new());
        // A worker that switched user (root holds CAP_SETUID) passes too.
        let worker = TaskCreds::parse(&status(33, "0", 0, 0)).unwrap();
        assert!(c.excess(&worker).is_empty());
        // But nothing beyond the bounding set.
        let more = TaskCreds::parse(&status(0, "000001ffffffffff", 0, 0)).unwrap();
        assert!(c.excess(&more).join(" ").contains("CAP_SYS_MODULE"));
    }

    #[test]
    fn without_setuid_or_escalation_the_ids_are_fixed() {
        let mut caps = Capabilities::default_set();
        caps.permitted.retain(|c| *c != Capability::CAP_SETUID);
        let c = Ceiling::new(&caps, &user(1000, 1000), true, false);
        let other = TaskCreds::parse(
            &status(1001, "0", 1, 0)
                .replace("Gid:\t0\t0\t0\t0", "Gid:\t1000\t1000\t1000\t1000")
                .replace("Groups:\t0 10 ", "Groups:\t1000"),
        )
        .unwrap();
        assert_eq!(
            c.excess(&other),
            ["uids [1001, 1001, 1001, 1001] where only 1000 is allowed"]
        );
        // Without no_new_privs a setuid binary could make it anyone.
        let c = Ceiling::new(&caps, &user(1000, 1000), false, false);
        assert!(c.excess(&other).is_empty());
    }
}
