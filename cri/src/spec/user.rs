//! Who the init runs as.
//!
//! Names are not resolved here: runtime-core looks them up in the
//! container's own `/etc/passwd` and `/etc/group` ([`IdOrName::Name`]), and
//! fails the start when they are missing, as CRI requires for
//! `run_as_username`.

use std::str::FromStr;

use berth_core::security::user::{IdOrName, User};

use super::{invalid, SpecError};
use crate::proto;

const SC: &str = "config.linux.security_context";

fn id(field: &str, v: i64) -> Result<u32, SpecError> {
    u32::try_from(v).map_err(|_| invalid(field, format!("{v} is not a valid id (0 to 4294967295)")))
}

/// The user: the security context's `run_as_username` or `run_as_user`
/// (with `run_as_group`), else the image's `User` (`uid`, `uid:gid`, `name`,
/// `name:group`), else root; `supplemental_groups` become additional gids.
///
/// - Both `run_as_user` and `run_as_username`: refused (CRI: "only one ...
///   can be specified at a time"; containerd lets the name win).
/// - `run_as_group` without either: refused (CRI: "the runtime MUST error").
/// - A requested user without `run_as_group` takes the user's group from
///   the container's `/etc/passwd`; the image's group is not used
///   (containerd builds the user string from the request alone).
/// - `supplemental_groups_policy`: `Merge` adds the user's memberships in
///   the container's `/etc/group`; `Strict` only the listed groups (and the
///   primary one).
pub(super) fn user(
    sc: &proto::LinuxContainerSecurityContext,
    image_user: &str,
) -> Result<User, SpecError> {
    let requested = match (sc.run_as_username.as_str(), sc.run_as_user.as_ref()) {
        ("", None) => None,
        ("", Some(uid)) => Some(IdOrName::Id(id(&format!("{SC}.run_as_user"), uid.value)?)),
        (name, None) => {
            let field = format!("{SC}.run_as_username");
            let u = User::from_str(name).map_err(|e| invalid(&field, e.to_string()))?;
            if u.group.is_some() {
                return Err(invalid(field, "must be a user name, without ':group'"));
            }
            Some(u.user)
        }
        (_, Some(_)) => {
            return Err(invalid(
                format!("{SC}.run_as_username"),
                "only one of run_as_user and run_as_username may be set",
            ))
        }
    };
    let group = sc
        .run_as_group
        .as_ref()
        .map(|g| id(&format!("{SC}.run_as_group"), g.value))
        .transpose()?;
    let mut user = match requested {
        Some(user) => User {
            user,
            group: group.map(IdOrName::Id),
            additional_gids: Vec::new(),
            image_groups: true,
        },
        None if group.is_some() => {
            return Err(invalid(
                format!("{SC}.run_as_group"),
                "requires run_as_user or run_as_username",
            ))
        }
        None if image_user.is_empty() => User {
            user: IdOrName::Id(0),
            group: None,
            additional_gids: Vec::new(),
            image_groups: true,
        },
        None => {
            User::from_str(image_user).map_err(|e| invalid("image.config.User", e.to_string()))?
        }
    };
    match proto::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
        Ok(proto::SupplementalGroupsPolicy::Merge) => {}
        Ok(proto::SupplementalGroupsPolicy::Strict) => user.image_groups = false,
        Err(_) => {
            return Err(invalid(
                format!("{SC}.supplemental_groups_policy"),
                format!("unknown policy {}", sc.supplemental_groups_policy),
            ))
        }
    }
    let mut gids = sc
        .supplemental_groups
        .iter()
        .enumerate()
        .map(|(i, g)| id(&format!("{SC}.supplemental_groups[{i}]"), *g))
        .collect::<Result<Vec<u32>, _>>()?;
    gids.sort_unstable();
    gids.dedup();
    user.additional_gids = gids;
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fixture;
    use super::*;

    fn user_of(f: &Fixture) -> User {
        f.spec().process.user
    }

    fn named(s: &str) -> IdOrName {
        IdOrName::Name(s.into())
    }

    #[test]
    fn no_user_anywhere_is_root_with_passwd_group() {
        let f = Fixture::new();
        let u = user_of(&f);
        assert_eq!((u.user, u.group), (IdOrName::Id(0), None));
    }

    #[test]
    fn run_as_user() {
        let mut f = Fixture::new();
        f.sc().run_as_user = Some(proto::Int64Value { value: 1000 });
        let u = user_of(&f);
        assert_eq!((u.user, u.group), (IdOrName::Id(1000), None));
    }

    #[test]
    fn run_as_user_and_group() {
        let mut f = Fixture::new();
        f.sc().run_as_user = Some(proto::Int64Value { value: 1000 });
        f.sc().run_as_group = Some(proto::Int64Value { value: 3000 });
        let u = user_of(&f);
        assert_eq!(
            (u.user, u.group),
            (IdOrName::Id(1000), Some(IdOrName::Id(3000)))
        );
    }

    #[test]
    fn run_as_username() {
        let mut f = Fixture::new();
        f.sc().run_as_username = "www-data".into();
        assert_eq!(user_of(&f).user, named("www-data"));
    }

    #[test]
    fn request_user_wins_over_image_user_and_group() {
        let mut f = Fixture::new();
        f.image.user = "101:101".into();
        f.sc().run_as_user = Some(proto::Int64Value { value: 7 });
        let u = user_of(&f);
        assert_eq!((u.user, u.group), (IdOrName::Id(7), None));
    }

    #[test]
    fn image_uid_gid() {
        let mut f = Fixture::new();
        f.image.user = "1000:1000".into();
        let u = user_of(&f);
        assert_eq!(
            (u.user, u.group),
            (IdOrName::Id(1000), Some(IdOrName::Id(1000)))
        );
    }

    #[test]
    fn image_name() {
        let mut f = Fixture::new();
        f.image.user = "nginx".into();
        let u = user_of(&f);
        assert_eq!((u.user, u.group), (named("nginx"), None));
    }

    #[test]
    fn image_name_and_group() {
        let mut f = Fixture::new();
        f.image.user = "nginx:web".into();
        let u = user_of(&f);
        assert_eq!((u.user, u.group), (named("nginx"), Some(named("web"))));
    }

    #[test]
    fn run_as_group_without_user_is_invalid() {
        let mut f = Fixture::new();
        f.image.user = "nginx".into();
        f.sc().run_as_group = Some(proto::Int64Value { value: 3000 });
        assert_eq!(f.err_field(), "config.linux.security_context.run_as_group");
    }

    #[test]
    fn user_and_username_together_are_invalid() {
        let mut f = Fixture::new();
        f.sc().run_as_user = Some(proto::Int64Value { value: 1 });
        f.sc().run_as_username = "a".into();
        assert_eq!(
            f.err_field(),
            "config.linux.security_context.run_as_username"
        );
    }

    #[test]
    fn negative_uid_is_invalid() {
        let mut f = Fixture::new();
        f.sc().run_as_user = Some(proto::Int64Value { value: -1 });
        assert_eq!(f.err_field(), "config.linux.security_context.run_as_user");
    }

    #[test]
    fn bad_image_user_is_invalid() {
        let mut f = Fixture::new();
        f.image.user = "a:".into();
        assert_eq!(f.err_field(), "image.config.User");
    }

    #[test]
    fn supplemental_groups_sorted_and_deduplicated() {
        let mut f = Fixture::new();
        f.sc().supplemental_groups = vec![2000, 1000, 2000];
        assert_eq!(user_of(&f).additional_gids, vec![1000, 2000]);
    }

    #[test]
    fn supplemental_groups_policies() {
        let mut f = Fixture::new();
        assert!(user_of(&f).image_groups, "Merge is the default");
        f.sc().supplemental_groups_policy = proto::SupplementalGroupsPolicy::Strict as i32;
        assert!(!user_of(&f).image_groups);
        f.sc().supplemental_groups_policy = 7;
        assert!(matches!(f.run(), Err(SpecError::InvalidArgument { .. })));
    }
}
