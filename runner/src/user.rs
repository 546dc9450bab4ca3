//! `user[:group]` resolved the way docker does: names through the image's own /etc/passwd and
//! /etc/group, numbers as they are. Supplementary groups as docker (runc and moby) sets them:
//! the user's /etc/group memberships when no group is named, none when one is, and the primary
//! gid always among them (`id` in a docker container shows `groups=0(root)` for root).

use std::path::Path;

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Home directory (for HOME).
    pub home: String,
}

/// Errors resolving a user.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No such user in the image.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    /// No such group in the image.
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
}

fn lines(root: &Path, file: &str) -> Vec<Vec<String>> {
    // The image's own file, never the host's: symlinks are resolved inside the root.
    crate::resolve_in(root, Path::new(file), false)
        .map_err(std::io::Error::from)
        .and_then(std::fs::read_to_string)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

/// Resolves `spec` (`""`, `user`, `uid`, `user:group`, `uid:gid`) against the image at `root`.
pub fn resolve(root: &Path, spec: &str) -> Result<User, UserError> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    // Both at once: on a lazily served image each may be a cold miss (a round trip).
    let (passwd, groups) = std::thread::scope(|s| {
        let groups = s.spawn(|| lines(root, "etc/group"));
        let passwd = lines(root, "etc/passwd");
        (passwd, groups.join().unwrap_or_default())
    });
    let entry = passwd
        .iter()
        .find(|f| f.len() >= 4 && (f[0] == u || f[2] == u));
    let (uid, mut gid, name, home) = match (entry, u.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse().unwrap_or(0),
            f[3].parse().unwrap_or(0),
            f[0].clone(),
            f.get(5).cloned().unwrap_or_else(|| "/".into()),
        ),
        (None, Ok(n)) => (n, 0, String::new(), "/".into()),
        (None, Err(_)) => return Err(UserError::NoUser(u.to_string())),
    };
    if let Some(g) = g {
        gid = match groups
            .iter()
            .find(|f| f.len() >= 3 && (f[0] == g || f[2] == g))
        {
            Some(f) => f[2].parse().unwrap_or(0),
            None => g.parse().map_err(|_| UserError::NoGroup(g.to_string()))?,
        };
    }
    let mut supplementary: Vec<u32> = groups
        .iter()
        .filter(|f| g.is_none() && f.len() >= 4 && !name.is_empty())
        .filter(|f| f[3].split(',').any(|m| m == name))
        .filter_map(|f| f[2].parse().ok())
        .collect();
    if !supplementary.contains(&gid) {
        supplementary.push(gid);
    }
    Ok(User {
        uid,
        gid,
        groups: supplementary,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_numbers_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nme:x:1000:1000::/home/me:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nme:x:1000:\nwheel:x:10:me,other\n",
        )
        .unwrap();
        let r = dir.path();
        assert_eq!(resolve(r, "").unwrap().uid, 0);
        let me = resolve(r, "me").unwrap();
        assert_eq!(
            (me.uid, me.gid, me.groups.clone(), me.home.as_str()),
            (1000, 1000, vec![10, 1000], "/home/me")
        );
        assert_eq!(resolve(r, "").unwrap().groups, [0]);
        // A named group drops the /etc/group memberships, as docker's `-u me:group`.
        let named = resolve(r, "me:me").unwrap();
        assert_eq!((named.gid, named.groups), (1000, vec![1000]));
        assert_eq!(resolve(r, "1000:wheel").unwrap().groups, [10]);
        assert_eq!(resolve(r, "1000:wheel").unwrap().gid, 10);
        assert_eq!(resolve(r, "4242:4343").unwrap().gid, 4343);
        assert!(matches!(resolve(r, "nobody"), Err(UserError::NoUser(_))));
        assert!(matches!(
            resolve(r, "me:nogroup"),
            Err(UserError::NoGroup(_))
        ));
    }
}
