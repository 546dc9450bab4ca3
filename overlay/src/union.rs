//! The writable union of a container: kernel overlayfs with strata's read-only lazy FUSE mount
//! as its lower directory and a private upper directory on local disk (see ARCHITECTURE.md,
//! "Writable layer").

use std::io;
use std::path::Path;

/// Mounts overlayfs on `target`: `lowers` (read-only, bottom first) under `upper`, with `work`
/// beside it. Without overlayfs' inode index, as docker's overlay2 and containerd mount: the
/// index keys copied-up files by the lower's file handle, which names a layer store inode
/// number, and a store that ended and came back may number its inodes otherwise (a copied-up
/// hardlink then showed another file's bytes). So, as with docker, copying up one name of a
/// hardlinked lower file parts it from its other names.
///
/// Errors: the kernel's; `EINVAL` also when the options pass the kernel's one-page limit
/// (about 45 lowers of the layer store's paths).
pub fn mount_overlay_layers(
    lowers: &[impl AsRef<Path>],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    let lowerdir = lowerdir_option(lowers);
    let data = format!(
        "lowerdir={lowerdir},upperdir={},workdir={},index=off",
        escape_option(upper),
        escape_option(work)
    );
    overlay_mount("overlay", target, nix::mount::MsFlags::empty(), &data)
}

/// Mounts overlayfs read-only on `target` with `lowers` (at least two, bottom first) and no
/// upper, named `strata` in the mount table (what `strata umount` recognizes).
pub fn mount_overlay_readonly(lowers: &[impl AsRef<Path>], target: &Path) -> io::Result<()> {
    let data = format!("lowerdir={}", lowerdir_option(lowers));
    overlay_mount("strata", target, nix::mount::MsFlags::MS_RDONLY, &data)
}

/// Mounts overlayfs named `source` on `target` with options `data`, refused (`InvalidInput`)
/// past the kernel's one-page limit for options, which it would cut short silently.
fn overlay_mount(
    source: &str,
    target: &Path,
    flags: nix::mount::MsFlags,
    data: &str,
) -> io::Result<()> {
    if data.len() >= 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "overlay options of {} bytes pass the one-page limit",
                data.len()
            ),
        ));
    }
    nix::mount::mount(Some(source), target, Some("overlay"), flags, Some(data))
        .map_err(io::Error::from)
}

/// `lowers` (bottom first) as overlayfs' `lowerdir` value: top first, `:`-separated.
fn lowerdir_option(lowers: &[impl AsRef<Path>]) -> String {
    lowers
        .iter()
        .rev()
        .map(|l| escape_option(l.as_ref()))
        .collect::<Vec<_>>()
        .join(":")
}

/// A path as an overlayfs mount option value: `\\`, `:` and `,` escaped with a backslash.
fn escape_option(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Lazily unmounts `target` (it goes away when the last user lets go).
pub fn unmount_detached(target: &Path) -> io::Result<()> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// [`upper_to_tar`] streamed: the tar is written on another thread while `consume` reads it,
/// so making the tar and whatever reads it (compressing, hashing) use two cores and no
/// temporary file. If writing the tar fails, `consume`'s reads fail with that error before
/// the stream ends, so nothing half-read can pass for a whole tar.
pub fn upper_tar_stream<T>(
    upper: &Path,
    skip: &(dyn Fn(&Path, &std::fs::Metadata) -> bool + Sync),
    consume: impl FnOnce(&mut dyn io::Read) -> T,
) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
    std::thread::scope(|s| {
        s.spawn(move || {
            let w = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(STREAM_PIECE_BYTES),
            };
            let result = upper_to_tar(upper, skip, w).and_then(|mut w| io::Write::flush(&mut w));
            if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
        });
        let mut reader = ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        };
        consume(&mut reader)
    })
}

/// Bytes per piece handed from the tar writer to its reader.
const STREAM_PIECE_BYTES: usize = 1 << 20;

/// The writing end of [`upper_tar_stream`]: gathers the tar writer's small writes into pieces.
struct ChannelWriter {
    tx: std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl io::Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= STREAM_PIECE_BYTES {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(STREAM_PIECE_BYTES));
        self.tx
            .send(Ok(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "tar reader went away"))
    }
}

/// The reading end of [`upper_tar_stream`].
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(b)) => (self.buf, self.pos) = (b, 0),
                Ok(Err(e)) => return Err(e),
                // The writer finished (dropped its sender) after the last bytes.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes a container's upper layer as an OCI layer tar: overlayfs whiteouts (0/0 character
/// devices) become `.wh.NAME`, opaque directories (`trusted.overlay.opaque=y`) get a
/// `.wh..wh..opq` entry, overlayfs' own xattrs are dropped, hardlinks stay hardlinks. Entries
/// for which `skip(relative path, metadata)` is true are left out with everything below them.
pub fn upper_to_tar<W: io::Write>(
    upper: &Path,
    skip: &dyn Fn(&Path, &std::fs::Metadata) -> bool,
    out: W,
) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut seen = std::collections::HashMap::new();
    add_dir(&mut b, upper, Path::new(""), skip, &mut seen)?;
    b.into_inner()
}

fn header_for(meta: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
    use std::os::unix::fs::MetadataExt;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(meta.uid() as u64);
    h.set_gid(meta.gid() as u64);
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    h.set_size(0);
    h
}

fn xattrs_of(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    names
        .filter_map(|n| {
            let name = n.to_string_lossy().into_owned();
            if name.starts_with("trusted.overlay.") {
                return None;
            }
            xattr::get(path, &n).ok().flatten().map(|v| (name, v))
        })
        .collect()
}

fn add_dir<W: io::Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    skip: &dyn Fn(&Path, &std::fs::Metadata) -> bool,
    seen: &mut std::collections::HashMap<(u64, u64), std::path::PathBuf>,
) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let rel_path = rel.join(&name);
        let full = root.join(&rel_path);
        let meta = std::fs::symlink_metadata(&full)?;
        if skip(&rel_path, &meta) {
            continue;
        }
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            let mut wh = std::ffi::OsString::from(".wh.");
            wh.push(&name);
            let mut h = header_for(&meta, tar::EntryType::Regular);
            h.set_mode(0o644);
            b.append_data(&mut h, rel.join(wh), io::empty())?;
            continue;
        }
        let xattrs = xattrs_of(&full);
        if !xattrs.is_empty() {
            let pax: Vec<(String, Vec<u8>)> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone()))
                .collect();
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        if ft.is_dir() {
            let mut h = header_for(&meta, tar::EntryType::Directory);
            // `dir/`, as docker and GNU tar name directories.
            let mut dir_name = rel_path.clone().into_os_string();
            dir_name.push("/");
            b.append_data(&mut h, dir_name, io::empty())?;
            if xattr::get(&full, "trusted.overlay.opaque")
                .ok()
                .flatten()
                .as_deref()
                == Some(b"y")
            {
                let mut o = header_for(&meta, tar::EntryType::Regular);
                o.set_mode(0o644);
                b.append_data(&mut o, rel_path.join(".wh..wh..opq"), io::empty())?;
            }
            add_dir(b, root, &rel_path, skip, seen)?;
        } else if ft.is_symlink() {
            let mut h = header_for(&meta, tar::EntryType::Symlink);
            b.append_link(&mut h, &rel_path, std::fs::read_link(&full)?)?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = seen.get(&key) {
                    let mut h = header_for(&meta, tar::EntryType::Link);
                    b.append_link(&mut h, &rel_path, first)?;
                    continue;
                }
                seen.insert(key, rel_path.clone());
            }
            let mut h = header_for(&meta, tar::EntryType::Regular);
            h.set_size(meta.len());
            b.append_data(&mut h, &rel_path, std::fs::File::open(&full)?)?;
        } else {
            append_node(b, &meta, &rel_path)?;
        }
    }
    Ok(())
}

/// A device node or fifo of the upper layer as its tar entry (sockets cannot be stored in a
/// layer and are left out).
fn append_node<W: io::Write>(
    b: &mut tar::Builder<W>,
    meta: &std::fs::Metadata,
    rel_path: &Path,
) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        tar::EntryType::Char
    } else if ft.is_block_device() {
        tar::EntryType::Block
    } else if ft.is_fifo() {
        tar::EntryType::Fifo
    } else {
        return Ok(());
    };
    let mut h = header_for(meta, kind);
    let rdev = meta.rdev();
    let number = |n: u64| u32::try_from(n).map_err(io::Error::other);
    h.set_device_major(number(nix::sys::stat::major(rdev))?)?;
    h.set_device_minor(number(nix::sys::stat::minor(rdev))?)?;
    b.append_data(&mut h, rel_path, io::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_tar_is_the_written_tar_and_a_failure_reaches_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![7u8; 3 << 20]).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let none = |_: &Path, _: &std::fs::Metadata| false;
        let whole = upper_to_tar(dir.path(), &none, Vec::new()).unwrap();
        let streamed = upper_tar_stream(dir.path(), &none, |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        })
        .unwrap();
        assert_eq!(streamed, whole);
        let missing = dir.path().join("missing");
        let err = upper_tar_stream(&missing, &none, |r| r.read_to_end(&mut Vec::new()));
        assert!(
            err.is_err(),
            "a tar of a missing directory must not read as complete"
        );
    }

    #[test]
    fn directories_are_named_with_a_trailing_slash_as_docker_names_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("d/e")).unwrap();
        std::fs::write(dir.path().join("d/f"), b"x").unwrap();
        let none = |_: &Path, _: &std::fs::Metadata| false;
        let bytes = upper_to_tar(dir.path(), &none, Vec::new()).unwrap();
        let mut names = Vec::new();
        for e in tar::Archive::new(&bytes[..]).entries().unwrap() {
            let e = e.unwrap();
            names.push(String::from_utf8(e.path_bytes().to_vec()).unwrap());
        }
        assert_eq!(names, ["d/", "d/e/", "d/f"]);
    }
}
