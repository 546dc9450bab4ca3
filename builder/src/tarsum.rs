//! The source hashes docker's classic builder writes into a COPY/ADD step's history
//! (`COPY dir:HASH in /app`, `file:HASH`, `multi:HASH`): moby's `tarsum` (version 1) of each
//! entry of the context tar docker's CLI sends (owner 0:0, user and group names and times
//! left out), and for a directory the SHA-256 of the sorted sums of everything below it,
//! joined by commas (moby `builder/dockerfile/copy.go`, `walkSource`, `hashStringSlice`).

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// The tarsum of one context entry: `rel` (its name in the context), read at `host`.
pub fn entry_sum(rel: &Path, host: &Path) -> std::io::Result<String> {
    let meta = std::fs::symlink_metadata(host)?;
    let ft = meta.file_type();
    let mut name = rel.as_os_str().as_bytes().to_vec();
    let (typeflag, size, mut linkname) = if ft.is_dir() {
        name.push(b'/');
        ('5', 0, Vec::new())
    } else if ft.is_symlink() {
        let t = std::fs::read_link(host)?;
        ('2', 0, t.as_os_str().as_bytes().to_vec())
    } else if ft.is_char_device() {
        ('3', 0, Vec::new())
    } else if ft.is_block_device() {
        ('4', 0, Vec::new())
    } else if ft.is_fifo() {
        ('6', 0, Vec::new())
    } else {
        ('0', meta.len(), Vec::new())
    };
    let (major, minor) = if ft.is_char_device() || ft.is_block_device() {
        (
            nix::sys::stat::major(meta.rdev()),
            nix::sys::stat::minor(meta.rdev()),
        )
    } else {
        (0, 0)
    };
    let mut h = Sha256::new();
    let mut field = |k: &str, v: &[u8]| {
        h.update(k.as_bytes());
        h.update(v);
    };
    field("name", &name);
    field("mode", (meta.mode() & 0o7777).to_string().as_bytes());
    field("uid", b"0");
    field("gid", b"0");
    field("size", size.to_string().as_bytes());
    field("typeflag", &[typeflag as u8]);
    field("linkname", &std::mem::take(&mut linkname));
    field("uname", b"");
    field("gname", b"");
    field("devmajor", major.to_string().as_bytes());
    field("devminor", minor.to_string().as_bytes());
    if typeflag == '0' {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(host)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// moby's `hashStringSlice`: `prefix:` and the SHA-256 of the items joined by commas.
pub fn hash_strings(prefix: &str, items: &[String]) -> String {
    format!(
        "{prefix}:{}",
        hex::encode(Sha256::digest(items.join(",").as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sums_its_header_fields_and_content_as_moby_tarsum_v1() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        std::fs::write(&p, b"a\n").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let mut h = Sha256::new();
        h.update(b"namea.txtmode420uid0gid0size2typeflag0linknameunamegnamedevmajor0devminor0a\n");
        assert_eq!(
            entry_sum(Path::new("a.txt"), &p).unwrap(),
            hex::encode(h.finalize())
        );
        assert_eq!(
            hash_strings("dir", &["b".into(), "a".into()]),
            format!("dir:{}", hex::encode(Sha256::digest(b"b,a")))
        );
    }
}
