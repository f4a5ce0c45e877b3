//! Users and groups: `uid:gid` or names resolved from the container's own
//! `/etc/passwd` and `/etc/group` (never the host's).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A user or group given by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IdOrName {
    /// A numeric id.
    Id(u32),
    /// A name looked up in the container's `/etc/passwd` or `/etc/group`.
    Name(String),
}

impl IdOrName {
    fn parse(s: &str) -> Self {
        match s.parse::<u32>() {
            Ok(id) => IdOrName::Id(id),
            Err(_) => IdOrName::Name(s.to_string()),
        }
    }
}

impl fmt::Display for IdOrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdOrName::Id(id) => write!(f, "{id}"),
            IdOrName::Name(n) => f.write_str(n),
        }
    }
}

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user.
    pub user: IdOrName,
    /// The primary group; `None`: the user's group from `/etc/passwd` (or the
    /// uid's number when the user is numeric and unknown).
    #[serde(default)]
    pub group: Option<IdOrName>,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Also the groups of the container's `/etc/group` that list a named
    /// user as a member, when no group is given (Docker's and Kubernetes'
    /// `Merge`); `false`: only `additional_gids` and the primary group
    /// (Kubernetes' `supplementalGroupsPolicy: Strict`).
    #[serde(default = "yes")]
    pub image_groups: bool,
}

fn yes() -> bool {
    true
}

impl Default for User {
    fn default() -> Self {
        Self::root()
    }
}

impl User {
    /// uid 0, gid 0.
    pub fn root() -> Self {
        Self::ids(0, 0)
    }

    /// Numeric uid and gid.
    pub fn ids(uid: u32, gid: u32) -> Self {
        Self {
            user: IdOrName::Id(uid),
            group: Some(IdOrName::Id(gid)),
            additional_gids: Vec::new(),
            image_groups: true,
        }
    }
}

/// `user`, `user:group`, `uid:gid` ... as in `docker run --user`.
impl FromStr for User {
    type Err = UserError;
    fn from_str(s: &str) -> Result<Self, UserError> {
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let bad = |x: &str| x.is_empty() || x.contains(['\n', ':', '\0']);
        if bad(u) || g.is_some_and(bad) {
            return Err(UserError::Syntax(s.to_string()));
        }
        Ok(Self {
            user: IdOrName::parse(u),
            group: g.map(IdOrName::parse),
            additional_gids: Vec::new(),
            image_groups: true,
        })
    }
}

/// Resolving a user failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// A user spec that does not parse.
    #[error("invalid user {0:?}: expected user[:group]")]
    Syntax(String),
    /// A user name that is not in the container's /etc/passwd.
    #[error("no user named {0:?} in the container's /etc/passwd")]
    UnknownUser(String),
    /// A group name that is not in the container's /etc/group.
    #[error("no group named {0:?} in the container's /etc/group")]
    UnknownGroup(String),
}

/// A user resolved to numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary gids: those given plus the user's groups in `/etc/group`.
    pub additional_gids: Vec<u32>,
    /// Home directory (`/` when unknown).
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Largest /etc/passwd or /etc/group read from a container.
const MAX_ID_FILE: u64 = 4 << 20;

/// Reads `path` (`/etc/passwd`, `/etc/group`) of the container whose root is
/// `root`, resolving every component inside it and never through magic
/// links, only if it is a regular file, and at most [`MAX_ID_FILE`] bytes: a
/// FIFO or `/dev/zero` in its place cannot block or exhaust the reader.
/// Missing or odd files read as empty.
pub fn read_id_file(root: std::os::fd::BorrowedFd<'_>, path: &str) -> String {
    use nix::fcntl::OFlag;
    use std::io::Read;
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let Ok(fd) = crate::rootfs::resolve::open_in_root_with(root, std::path::Path::new(path), flags)
    else {
        return String::new();
    };
    let f = std::fs::File::from(fd);
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut s = String::new();
    let _ = f.take(MAX_ID_FILE).read_to_string(&mut s);
    s
}

/// Resolves `user` against the `/etc/passwd` and `/etc/group` of the root
/// filesystem open as `root` (read with [`read_id_file`]: inside it, never
/// through a symlink out of it), for a caller that hands the container to
/// another runtime and must give it numbers.
pub fn resolve_in_root(
    user: &User,
    root: std::os::fd::BorrowedFd<'_>,
) -> Result<ResolvedUser, UserError> {
    resolve(
        user,
        &read_id_file(root, "/etc/passwd"),
        &read_id_file(root, "/etc/group"),
    )
}

/// Resolves `user` against the contents of the container's `/etc/passwd` and
/// `/etc/group` (either may be empty when the files are missing).
pub fn resolve(user: &User, passwd: &str, group: &str) -> Result<ResolvedUser, UserError> {
    let entry = match &user.user {
        IdOrName::Id(uid) => passwd_entries(passwd).find(|e| e.uid == *uid),
        IdOrName::Name(name) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == name)
                .ok_or_else(|| UserError::UnknownUser(name.clone()))?,
        ),
    };
    let uid = match (&user.user, &entry) {
        (IdOrName::Id(uid), _) => *uid,
        (_, Some(e)) => e.uid,
        (IdOrName::Name(n), None) => return Err(UserError::UnknownUser(n.clone())),
    };
    let gid = match &user.group {
        Some(IdOrName::Id(gid)) => *gid,
        Some(IdOrName::Name(name)) => group_entries(group)
            .find(|(n, _, _)| n == name)
            .map(|(_, gid, _)| gid)
            .ok_or_else(|| UserError::UnknownGroup(name.clone()))?,
        // A uid without a passwd entry gets group 0, as runc and containerd
        // give it (and Kubernetes documents).
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    let mut additional_gids = user.additional_gids.clone();
    // Like docker/containerd: a user named in /etc/passwd also gets the groups
    // that list it as a member, when no group was given explicitly.
    if let (Some(e), None, true) = (&entry, &user.group, user.image_groups) {
        for (_, g, members) in group_entries(group) {
            if members.contains(&e.name) && g != gid && !additional_gids.contains(&g) {
                additional_gids.push(g);
            }
        }
    }
    // The primary group is also a supplementary one (containerd and moby do
    // this since CVE-2023-25173): otherwise a process that drops to its
    // supplementary groups, or checks them, loses its own group.
    if !additional_gids.contains(&gid) {
        additional_gids.insert(0, gid);
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: entry.map_or("/", |e| e.home).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:alice\nalice:x:1000:\nnogroup:x:65534:\n";

    #[test]
    fn parse_specs() {
        assert_eq!("1000:1000".parse::<User>().unwrap(), User::ids(1000, 1000));
        let u: User = "alice".parse().unwrap();
        assert_eq!(u.user, IdOrName::Name("alice".into()));
        assert_eq!(u.group, None);
        assert!("".parse::<User>().is_err());
        assert!("a:".parse::<User>().is_err());
    }

    #[test]
    fn resolves_names_from_container_files() {
        let r = resolve(&"alice".parse().unwrap(), PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(r.additional_gids, vec![1000, 100], "primary group first");
        let r = resolve(&"nobody:users".parse().unwrap(), PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid), (65534, 100));
        assert_eq!(r.additional_gids, vec![100], "only the primary group");
    }

    #[test]
    fn strict_leaves_out_the_image_groups() {
        let mut u: User = "alice".parse().unwrap();
        u.image_groups = false;
        let r = resolve(&u, PASSWD, GROUP).unwrap();
        assert_eq!(r.additional_gids, vec![1000], "the primary group only");
    }

    #[test]
    fn numeric_unknown_user_gets_group_0() {
        let r = resolve(&"4242".parse().unwrap(), PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (4242, 0, "/"));
        let r = resolve(&"1000".parse().unwrap(), PASSWD, GROUP).unwrap();
        assert_eq!(r.gid, 1000);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve(&"bob".parse().unwrap(), PASSWD, GROUP),
            Err(UserError::UnknownUser("bob".into()))
        );
        assert_eq!(
            resolve(&"alice:wheel".parse().unwrap(), PASSWD, GROUP),
            Err(UserError::UnknownGroup("wheel".into()))
        );
    }
}
