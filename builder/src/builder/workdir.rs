//! WORKDIR under a USER that is not root: as BuildKit does, the missing directories of the
//! path are created owned by that user (its uid and primary gid from the image's own
//! /etc/passwd), in a layer of their own, so `USER app` + `WORKDIR /home/app/public` +
//! `RUN touch x` works. For root the directory is made when a container first enters it.

use std::path::{Path, PathBuf};

use strata_runner::InRoot;

use super::{BuildError, Builder, Host, StageState, random_id, step_err};
use crate::dockerfile::Instruction;

/// Whether `user` (a config `User` value) is root.
pub(super) fn is_root(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or("");
    name.is_empty() || name == "root" || name == "0"
}

/// Creates the missing directories of `path` inside `root`, top down, each owned by `owner`;
/// returns how many it created.
fn make_owned(root: &InRoot, path: &Path, owner: (u32, u32)) -> std::io::Result<usize> {
    let mut made = 0;
    let mut at = PathBuf::from("/");
    for c in path.components().skip_while(|c| c.as_os_str() == "/") {
        at.push(c);
        match root.resolve(&at) {
            Ok(_) => continue,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let host = root.mkdir_all(&at)?;
        std::os::unix::fs::lchown(&host, Some(owner.0), Some(owner.1))?;
        made += 1;
    }
    Ok(made)
}

impl Builder<'_> {
    /// The WORKDIR step for a non-root `user`: a layer creating `dir`'s missing directories
    /// owned by the user, or a metadata step when the directory already exists.
    pub(super) fn workdir_as_user(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        dir: &str,
        user: &str,
        host: &mut dyn Host,
    ) -> Result<(), BuildError> {
        let shown = format!("WORKDIR {dir}");
        let created_by = format!("/bin/sh -c #(nop) {shown} (as {user})");
        let Some(k) = self.try_cache(st, ins, &created_by, host)? else {
            return Ok(());
        };
        let (state_dir, root, parent) = self.mount_step(st, ins, &random_id())?;
        let cleanup = |e: BuildError| {
            let _ = std::fs::remove_dir_all(&state_dir);
            e
        };
        let made = (|| {
            let u =
                strata_runner::user::resolve(&root.rootfs, user).map_err(|e| step_err(ins, e))?;
            let into = InRoot::open(&root.rootfs).map_err(|e| step_err(ins, e))?;
            make_owned(&into, Path::new(dir), (u.uid, u.gid))
                .map_err(|e| step_err(ins, format!("creating {dir}: {e}")))
        })();
        drop(root);
        let made = made.map_err(cleanup)?;
        if made == 0 {
            let _ = std::fs::remove_dir_all(&state_dir);
            return self.metadata(st, ins, &shown, host);
        }
        let img = self
            .commit_upper(st, ins, &state_dir, &parent, &created_by)
            .map_err(cleanup)?;
        let _ = std::fs::remove_dir_all(&state_dir);
        self.advance(st, ins, k, img)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn only_missing_directories_get_the_owner() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("home")).unwrap();
        let r = InRoot::open(d.path()).unwrap();
        let made = make_owned(&r, Path::new("/home/app/public"), (1000, 1001)).unwrap();
        assert_eq!(made, 2);
        let own = |p: &str| {
            let m = std::fs::metadata(d.path().join(p)).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(own("home/app"), (1000, 1001));
        assert_eq!(own("home/app/public"), (1000, 1001));
        assert_ne!(own("home"), (1000, 1001));
        assert_eq!(make_owned(&r, Path::new("/home/app"), (5, 5)).unwrap(), 0);
        assert!(is_root("") && is_root("root") && is_root("0:0") && !is_root("app"));
    }
}
