//! COPY and ADD: sources from the context, an earlier stage or an image, resolved and hashed
//! before anything is touched (the hashes key the build cache), then written into a fresh
//! upper layer over the stage's image inside the container root.

use std::path::{Path, PathBuf};

use strata_overlay::root::{RootMount, mount_root};
use strata_runner::InRoot;

use super::{BuildError, Builder, Built, Host, StageState, random_id, step_err};
use crate::config as cfgedit;
use crate::context::Sources;
use crate::copy::{self, Attrs};
use crate::dockerfile::{CopyArgs, Instruction};
use crate::unpack;

/// A COPY/ADD's expanded arguments.
struct Target {
    srcs: Vec<String>,
    /// Absolute destination; a trailing `/` means a directory.
    dest: String,
    chown: Option<String>,
    chmod: Option<u32>,
    /// ADD (extracts local archives, downloads URLs) rather than COPY.
    add: bool,
}

/// The sources of a COPY/ADD, resolved: context or stage paths per source, URL downloads (in
/// temporary files) and the hash naming each source (docker's `file:`/`dir:` names for the
/// build context's, strata's content hash for another stage's or image's).
#[derive(Default)]
struct Resolved {
    paths: Vec<Vec<PathBuf>>,
    downloads: Vec<(String, PathBuf)>,
    hashes: Vec<String>,
}

impl Resolved {
    fn remove_downloads(&self) {
        for (_, tmp) in &self.downloads {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Where a COPY/ADD reads from, with the mount of a stage or image it may need.
struct Origin {
    sources: Sources,
    mount: Option<(PathBuf, RootMount)>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some((dir, mount)) = self.mount.take() {
            drop(mount);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Builder<'_> {
    pub(super) fn copy(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        args: &CopyArgs,
        add: bool,
        built: &[Built],
        host: &mut dyn Host,
    ) -> Result<(), BuildError> {
        let word = if add { "ADD" } else { "COPY" };
        let target = self.copy_target(st, ins, args, add)?;
        let origin = self.copy_origin(st, ins, args, built, host)?;
        let from_context = args.from.is_none();
        let resolved =
            self.resolve_sources(ins, &target.srcs, &origin.sources, add, word, from_context)?;
        let mut flags = String::new();
        if let Some(c) = &target.chown {
            flags.push_str(&format!("--chown={c} "));
        }
        if let Some(m) = &args.chmod {
            flags.push_str(&format!("--chmod={m} "));
        }
        if let Some(f) = &args.from {
            flags.push_str(&format!("--from={f} "));
        }
        // As docker's classic builder names the sources: one `file:`/`dir:` hash, or the
        // `multi:` hash of several.
        let named = match resolved.hashes.as_slice() {
            [one] => one.clone(),
            many => crate::tarsum::hash_strings("multi", many),
        };
        let created_by = format!(
            "/bin/sh -c #(nop) {word} {flags}{named} in {} ",
            target.dest
        );
        let result = match self.try_cache(st, ins, &created_by, host) {
            Ok(Some(k)) => self
                .copy_layer(st, ins, &target, &origin.sources, &resolved, &created_by)
                .and_then(|img| self.advance(st, ins, k, img)),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        resolved.remove_downloads();
        drop(origin);
        result
    }

    /// The sources, destination (made absolute against WORKDIR) and flags, expanded.
    fn copy_target(
        &self,
        st: &StageState,
        ins: &Instruction,
        args: &CopyArgs,
        add: bool,
    ) -> Result<Target, BuildError> {
        let mut srcs = Vec::new();
        for s in &args.srcs {
            srcs.push(self.expand_in(st, ins, s)?);
        }
        let dest_raw = self.expand_in(st, ins, &args.dest)?;
        let workdir = st
            .container()
            .working_dir
            .get()
            .map_or("/", String::as_str)
            .to_string();
        let dest = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            let joined = cfgedit::workdir(Some(&workdir), &dest_raw);
            if dest_raw.ends_with('/') || dest_raw == "." {
                format!("{}/", joined.trim_end_matches('/'))
            } else {
                joined
            }
        };
        let chown = args
            .chown
            .as_deref()
            .map(|c| self.expand_in(st, ins, c))
            .transpose()?;
        let chmod = match &args.chmod {
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .map_err(|_| step_err(ins, format!("--chmod={m} is not an octal mode")))?,
            ),
            None => None,
        };
        Ok(Target {
            srcs,
            dest,
            chown,
            chmod,
            add,
        })
    }

    /// Where the sources come from: `--from` an earlier stage or an image (mounted lazily),
    /// or the build context.
    fn copy_origin(
        &self,
        st: &StageState,
        ins: &Instruction,
        args: &CopyArgs,
        built: &[Built],
        host: &mut dyn Host,
    ) -> Result<Origin, BuildError> {
        let Some(f) = &args.from else {
            let sources = Sources::context(&self.opts.context).map_err(|e| step_err(ins, e))?;
            return Ok(Origin {
                sources,
                mount: None,
            });
        };
        let f = self.expand_in(st, ins, f)?;
        let stage = built.iter().enumerate().find(|(i, b)| {
            b.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(&f))
                || i.to_string() == f
        });
        let img = match stage {
            Some((_, b)) => b.image.clone(),
            // Not an earlier stage (the current or a later one included): an image, as
            // docker's classic builder takes it; its message names the flag.
            None => host
                .image(&f, &self.opts.platform)
                .map_err(|e| step_err(ins, format!("invalid from flag value {f}: {e}")))?,
        };
        let dir = self.containers.dir_of(&random_id());
        let m = mount_root(self.ctx, &self.rt, &img, &dir).map_err(|e| step_err(ins, e))?;
        match Sources::image_root(&m.rootfs) {
            Ok(sources) => Ok(Origin {
                sources,
                mount: Some((dir, m)),
            }),
            Err(e) => {
                drop(m);
                let _ = std::fs::remove_dir_all(&dir);
                Err(step_err(ins, e))
            }
        }
    }

    /// Every source resolved and hashed (URLs of ADD downloaded) before anything is touched.
    fn resolve_sources(
        &self,
        ins: &Instruction,
        srcs: &[String],
        sources: &Sources,
        add: bool,
        word: &str,
        from_context: bool,
    ) -> Result<Resolved, BuildError> {
        let mut r = Resolved::default();
        let result = (|| {
            for s in srcs {
                if add && (s.starts_with("http://") || s.starts_with("https://")) {
                    // Named with our pid, so a later command removes it if we are killed.
                    let tmp = strata_storage::atomic::temp_path(
                        &self.ctx.layout().tmp().join(format!("add-{}", random_id())),
                    );
                    let digest = crate::fetch::download(&self.rt, self.ctx, s, &tmp)
                        .map_err(|e| step_err(ins, e))?;
                    r.hashes.push(format!("url:{digest}"));
                    r.downloads.push((s.clone(), tmp));
                    continue;
                }
                let rels = sources
                    .resolve(s)
                    .map_err(|e| step_err(ins, format!("{word} failed: {e}")))?;
                if from_context {
                    for rel in &rels {
                        r.hashes
                            .push(sources.docker_hash(rel).map_err(|e| step_err(ins, e))?);
                    }
                } else {
                    let h = sources.hash(&rels).map_err(|e| step_err(ins, e))?;
                    r.hashes.push(format!("sha256:{h}"));
                }
                r.paths.push(rels);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(r),
            Err(e) => {
                r.remove_downloads();
                Err(e)
            }
        }
    }

    /// The step's layer: the sources written over the stage's image in a fresh upper, then
    /// committed. The step's container directory is removed whatever happens.
    fn copy_layer(
        &self,
        st: &StageState,
        ins: &Instruction,
        target: &Target,
        sources: &Sources,
        resolved: &Resolved,
        created_by: &str,
    ) -> Result<strata_storage::store::ImageRecord, BuildError> {
        let id = random_id();
        let (dir, root, parent) = self.mount_step(st, ins, &id)?;
        let cleanup = |e: BuildError| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        let worked = (|| {
            let owner =
                owner_of(&root.rootfs, target.chown.as_deref()).map_err(|e| step_err(ins, e))?;
            let into = InRoot::open(&root.rootfs).map_err(|e| step_err(ins, e))?;
            let attrs = Attrs {
                owner,
                chmod: target.chmod,
            };
            write_sources(&into, sources, resolved, target, attrs).map_err(|e| step_err(ins, e))
        })();
        drop(root);
        worked.map_err(cleanup)?;
        let img = self
            .commit_upper(st, ins, &dir, &parent, created_by)
            .map_err(cleanup)?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(img)
    }
}

/// docker's `--chown`: no group means the group named like the user (`--chown=1001` is
/// 1001:1001), resolved in the image's passwd/group; root without the flag.
fn owner_of(rootfs: &Path, chown: Option<&str>) -> Result<(u32, u32), String> {
    let Some(c) = chown else {
        return Ok((0, 0));
    };
    let spec = match c.contains(':') {
        true => c.to_string(),
        false => format!("{c}:{c}"),
    };
    let u = strata_runner::user::resolve(rootfs, &spec).map_err(|e| e.to_string())?;
    Ok((u.uid, u.gid))
}

/// Writes every resolved source and download to the destination inside `into`: ADD of a local
/// archive extracts it; a directory's content goes into the destination; a file goes into it
/// when it is a directory (trailing `/`, several sources, or an existing directory).
fn write_sources(
    into: &InRoot,
    sources: &Sources,
    resolved: &Resolved,
    target: &Target,
    attrs: Attrs,
) -> Result<(), String> {
    let count = resolved.paths.iter().map(Vec::len).sum::<usize>() + resolved.downloads.len();
    let dest = Path::new(&target.dest);
    let dest_dir =
        target.dest.ends_with('/') || count > 1 || into.resolve(dest).is_ok_and(|h| h.is_dir());
    let base = |p: &Path| p.file_name().map(PathBuf::from).unwrap_or_default();
    for rel in resolved.paths.iter().flatten() {
        let host_path = sources.host_path(rel).map_err(|e| e.to_string())?;
        let is_dir = std::fs::metadata(&host_path).is_ok_and(|m| m.is_dir());
        if target.add
            && !is_dir
            && let Some(reader) = unpack::archive_reader(&host_path)
        {
            copy::extract(into, reader, dest).map_err(|e| e.to_string())?;
            continue;
        }
        let to = if is_dir || !dest_dir {
            dest.to_path_buf()
        } else {
            copy::join(dest, &base(rel))
        };
        copy::copy_source(into, sources, rel, &to, attrs).map_err(|e| e.to_string())?;
    }
    for (url, tmp) in &resolved.downloads {
        let name = url
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("download");
        let to = if dest_dir {
            copy::join(dest, Path::new(name))
        } else {
            dest.to_path_buf()
        };
        let mut f = std::fs::File::open(tmp).map_err(|e| e.to_string())?;
        copy::write_file(
            into,
            &to,
            &mut f,
            target.chmod.unwrap_or(0o600),
            attrs.owner,
            None,
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}
