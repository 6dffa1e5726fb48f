//! Resolving `user[:group]` against the container's own `/etc/passwd` and `/etc/group`.
//!
//! The rules are runc's (and so Docker's): a name must exist in the file; a number is used as
//! is, with the passwd entry's group and home when it has one (group 0 and `/` when not); an
//! explicit group replaces the user's primary group and drops the supplementary groups, which
//! otherwise are every group that lists the user's name.

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// From the passwd entry, for `HOME`.
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        let _gecos = fields.next();
        let home = fields.next().unwrap_or("");
        Some(PasswdEntry { name, uid, gid, home })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let gid = fields.next()?.parse().ok()?;
        let members =
            fields.next().unwrap_or("").split(',').map(str::trim).filter(|m| !m.is_empty()).collect();
        Some(GroupEntry { name, gid, members })
    })
}

/// Resolves `spec` (`""`, `name`, `uid`, `name:group`, `uid:gid`, …) with the contents of the
/// container's passwd and group files (empty when the image has none).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<User, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError::NoUser(user_part.to_owned()))?,
        ),
    };
    let mut user = match &entry {
        Some(e) => User { uid: e.uid, gid: e.gid, groups: Vec::new(), home: e.home.to_owned() },
        None => {
            User { uid: user_part.parse().unwrap_or(0), gid: 0, groups: Vec::new(), home: "/".to_owned() }
        }
    };
    if user.home.is_empty() {
        user.home = "/".to_owned();
    }

    match group_part.filter(|g| !g.is_empty()) {
        Some(g) => {
            user.gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => group_entries(group)
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .ok_or_else(|| UserError::NoGroup(g.to_owned()))?,
            };
        }
        None => {
            if let Some(e) = &entry {
                for g in group_entries(group).filter(|g| g.members.contains(&e.name)) {
                    if !user.groups.contains(&g.gid) {
                        user.groups.push(g.gid);
                    }
                }
            }
        }
    }
    Ok(user)
}

/// The name of `uid` in the passwd file, or the number.
pub fn name_of(uid: u32, passwd: &str) -> String {
    passwd_entries(passwd).find(|e| e.uid == uid).map_or_else(|| uid.to_string(), |e| e.name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
        bob:x:1001:1001::/home/bob:/bin/sh\n\
        broken line\n\
        nohome:x:1002:1002:::\n";
    const GROUP: &str = "root:x:0:\n\
        alice:x:1000:\n\
        bob:x:1001:\n\
        wheel:x:10:alice, root\n\
        audio:x:29:alice,bob\n\
        bad:x:notanumber:alice\n";

    fn user(uid: u32, gid: u32, groups: &[u32], home: &str) -> User {
        User { uid, gid, groups: groups.to_vec(), home: home.into() }
    }

    #[test]
    fn names_get_their_passwd_entry_and_supplementary_groups() {
        assert_eq!(resolve("alice", PASSWD, GROUP), Ok(user(1000, 1000, &[10, 29], "/home/alice")));
        assert_eq!(resolve("bob", PASSWD, GROUP), Ok(user(1001, 1001, &[29], "/home/bob")));
        assert_eq!(resolve("", PASSWD, GROUP), Ok(user(0, 0, &[10], "/root")));
        assert_eq!(resolve("root", PASSWD, GROUP), Ok(user(0, 0, &[10], "/root")));
        assert_eq!(resolve("nohome", PASSWD, GROUP), Ok(user(1002, 1002, &[], "/")));
    }

    #[test]
    fn numbers_use_the_entry_when_there_is_one() {
        assert_eq!(resolve("1000", PASSWD, GROUP), Ok(user(1000, 1000, &[10, 29], "/home/alice")));
        assert_eq!(resolve("4242", PASSWD, GROUP), Ok(user(4242, 0, &[], "/")));
        assert_eq!(resolve("4242", "", ""), Ok(user(4242, 0, &[], "/")));
    }

    #[test]
    fn an_explicit_group_replaces_primary_and_supplementary_groups() {
        assert_eq!(resolve("alice:audio", PASSWD, GROUP), Ok(user(1000, 29, &[], "/home/alice")));
        assert_eq!(resolve("1000:77", PASSWD, GROUP), Ok(user(1000, 77, &[], "/home/alice")));
        assert_eq!(resolve("4242:4343", "", ""), Ok(user(4242, 4343, &[], "/")));
        assert_eq!(resolve(":29", PASSWD, GROUP), Ok(user(0, 29, &[], "/root")));
    }

    #[test]
    fn unknown_names_are_errors_in_docker_words() {
        let err = resolve("mallory", PASSWD, GROUP).unwrap_err();
        assert_eq!(err.to_string(), "unable to find user mallory: no matching entries in passwd file");
        let err = resolve("alice:nogroup", PASSWD, GROUP).unwrap_err();
        assert_eq!(err.to_string(), "unable to find group nogroup: no matching entries in group file");
        assert!(resolve("bad", PASSWD, GROUP).is_err());
    }

    #[test]
    fn uids_are_named_from_passwd() {
        assert_eq!(name_of(1001, PASSWD), "bob");
        assert_eq!(name_of(5, PASSWD), "5");
    }
}
