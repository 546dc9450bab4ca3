//! `strata cp`: files between a container's filesystem and the host, as docker's `cp`. Paths
//! inside the container are resolved by the in-root resolver (`strata_runner::resolve_in`) (its symlinks cannot lead outside its
//! root); what is copied out keeps symlinks as symlinks.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, lchown};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use strata_runner::state::{Containers, State};

use crate::global::{GlobalArgs, runtime};

/// Arguments of `cp`.
#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// Keep the owners of what is copied (by default what goes into the container is root's,
    /// what comes out is the caller's).
    #[arg(short = 'a', long)]
    pub archive: bool,
    /// CONTAINER:SRC_PATH or a host path.
    pub src: String,
    /// CONTAINER:DEST_PATH or a host path.
    pub dest: String,
}

/// `CONTAINER:PATH` split; a host path (absolute, or `./…`, or without a colon) gives `None`.
fn container_path(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    arg.split_once(':').filter(|(c, _)| !c.is_empty())
}

pub fn run_cp(a: CpArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let (key, inner, into_container) = match (container_path(&a.src), container_path(&a.dest)) {
        (Some((c, p)), None) => (c.to_string(), p.to_string(), false),
        (None, Some((c, p))) => (c.to_string(), p.to_string(), true),
        (Some(_), Some(_)) => bail!("copying between containers is not supported"),
        (None, None) => bail!("must specify at least one container source"),
    };
    let containers = Containers::new(&g.root());
    let c = containers
        .find(&key)
        .ok_or_else(|| crate::cmd::daemon(format!("No such container: {key}")))?;
    let dir = containers.dir_of(&c.id);
    let running = crate::cmd::ps::effective(&c).state == State::Running;
    // A running container's root is mounted by its own strata process; else mount it here.
    let (_mounted, root) = if running {
        (None, dir.join("rootfs"))
    } else {
        let ctx = g.context()?;
        let rt = runtime()?;
        let (img, _) = ctx
            .catalog()
            .resolve(&c.image_id)
            .with_context(|| format!("image {} of container {key}", c.image))?;
        let m = strata_overlay::root::mount_root(&ctx, rt.handle(), &img, &dir)?;
        let root = m.rootfs.clone();
        (Some((m, rt)), root)
    };
    if into_container {
        let src = PathBuf::from(&a.src);
        let owner = if a.archive { None } else { Some((0, 0)) };
        copy_in(&src, &root, &inner, owner)
    } else {
        let owner = if a.archive {
            None
        } else {
            Some((
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ))
        };
        copy_out(&root, (&key, &inner), Path::new(&a.dest), owner)
    }?;
    Ok(0)
}

/// The path inside the container: its parent resolved securely, its last component kept
/// (a symlink there is copied as a symlink). `contents` when the path ends in `/.`.
fn inside(root: &Path, path: &str, create: bool) -> anyhow::Result<(PathBuf, bool)> {
    let contents = path.ends_with("/.");
    let trimmed = path.trim_end_matches("/.").trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", trimmed),
    };
    let base = strata_runner::resolve_in(root, Path::new(parent), create)
        .with_context(|| format!("resolving {path} in the container"))?;
    if name.is_empty() || name == ".." {
        return Ok((
            strata_runner::resolve_in(root, Path::new(trimmed), false)?,
            contents,
        ));
    }
    Ok((base.join(name), contents))
}

/// Copies `path` of the container `key` (its root at `root`) to `dest`.
fn copy_out(
    root: &Path,
    (key, path): (&str, &str),
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<()> {
    let (src, contents) = inside(root, path, false)?;
    if std::fs::symlink_metadata(&src).is_err() {
        return Err(crate::cmd::daemon(format!(
            "Could not find the file {path} in container {key}"
        )));
    }
    place(&src, dest, contents, owner)
}

fn copy_in(src: &Path, root: &Path, path: &str, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(src).is_err() {
        bail!("could not find the file {} on the host", src.display());
    }
    let contents = src.to_string_lossy().ends_with("/.");
    let (dest, _) = inside(root, path, false)?;
    if let Some(parent) = dest.parent()
        && !parent.is_dir()
    {
        bail!("no such directory {path} in the container");
    }
    // A destination that is a symlink to a directory is followed, within the container.
    let dest = match std::fs::symlink_metadata(&dest) {
        Ok(m) if m.file_type().is_symlink() => {
            strata_runner::resolve_in(root, Path::new(path), false)?
        }
        _ => dest,
    };
    place(src, &dest, contents, owner)
}

/// docker's rules: into an existing directory under the source's name (or, with `SRC/.`, its
/// contents); else as `dest` itself.
fn place(src: &Path, dest: &Path, contents: bool, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    let src_meta = std::fs::symlink_metadata(src)?;
    let target = if contents && src_meta.is_dir() {
        dest.to_path_buf()
    } else if dest.is_dir() {
        let name = src
            .file_name()
            .with_context(|| format!("{} has no name", src.display()))?;
        dest.join(name)
    } else {
        if src_meta.is_dir() && dest.exists() {
            bail!("cannot copy a directory to a file: {}", dest.display());
        }
        dest.to_path_buf()
    };
    copy_tree(src, &target, owner)
        .with_context(|| format!("copying {} to {}", src.display(), target.display()))
}

fn copy_tree(src: &Path, dst: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let _ = std::fs::remove_file(dst);
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
    } else if ft.is_dir() {
        if !dst.is_dir() {
            std::fs::create_dir(dst)?;
        }
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()), owner)?;
        }
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    } else if ft.is_file() {
        std::fs::copy(src, dst)?;
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    } else {
        // Devices, fifos and sockets are left out, as a tar of them would not carry content.
        return Ok(());
    }
    let (uid, gid) = owner.unwrap_or((meta.uid(), meta.gid()));
    lchown(dst, Some(uid), Some(gid))
}
