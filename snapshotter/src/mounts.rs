//! The mounts an active snapshot or a view is used through, as containerd's overlayfs
//! snapshotter returns them: a bind mount when there is one directory, overlayfs otherwise.

use std::path::{Path, PathBuf};

use containerd_snapshots::api::types::Mount;

/// The mounts of a writable snapshot: its own `fs` (upper) and `work` directories over
/// `lowers` (top first).
pub fn active(fs: &Path, work: &Path, lowers: &[PathBuf]) -> Vec<Mount> {
    if lowers.is_empty() {
        return vec![bind(fs, false)];
    }
    vec![Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options: vec![
            format!("workdir={}", work.display()),
            format!("upperdir={}", fs.display()),
            lowerdir(lowers),
        ],
    }]
}

/// The mounts of a read-only view of `lowers` (top first); `empty` is an empty directory
/// (the view of no layer, or overlayfs' second lower when there is one layer).
pub fn view(empty: &Path, lowers: &[PathBuf]) -> Vec<Mount> {
    match lowers {
        [] => vec![bind(empty, true)],
        [one] => vec![bind(one, true)],
        _ => vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![lowerdir(lowers)],
        }],
    }
}

fn bind(dir: &Path, readonly: bool) -> Mount {
    Mount {
        r#type: "bind".into(),
        source: dir.display().to_string(),
        target: String::new(),
        options: vec![if readonly { "ro" } else { "rw" }.into(), "rbind".into()],
    }
}

fn lowerdir(lowers: &[PathBuf]) -> String {
    let dirs: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    format!("lowerdir={}", dirs.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dir_binds_and_more_stack_top_first() {
        let (fs, work) = (Path::new("/s/1/fs"), Path::new("/s/1/work"));
        let m = active(fs, work, &[]);
        assert_eq!(
            (m[0].r#type.as_str(), m[0].source.as_str()),
            ("bind", "/s/1/fs")
        );
        assert!(m[0].options.contains(&"rw".to_string()));
        let lowers = [PathBuf::from("/l/top"), PathBuf::from("/l/base")];
        let m = active(fs, work, &lowers);
        assert_eq!(m[0].r#type, "overlay");
        assert_eq!(
            m[0].options,
            [
                "workdir=/s/1/work",
                "upperdir=/s/1/fs",
                "lowerdir=/l/top:/l/base"
            ]
        );
        let v = view(Path::new("/e"), &lowers[..1]);
        assert_eq!(
            (v[0].source.as_str(), v[0].options[0].as_str()),
            ("/l/top", "ro")
        );
        let v = view(Path::new("/e"), &lowers);
        assert_eq!(v[0].options, ["lowerdir=/l/top:/l/base"]);
    }
}
