//! Test images: layers written by the test from an item list with the `tar` crate, compressed
//! with gzip, zstd or not at all, and pushed to the registry with curl (not with strata).

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

/// One thing in a layer.
#[derive(Debug, Clone)]
pub enum Item {
    /// A directory.
    Dir {
        /// Its path in the layer.
        path: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file with owner and xattrs.
    File {
        /// Its path in the layer.
        path: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Its content.
        data: Vec<u8>,
        /// Owner.
        uid: u64,
        /// Group.
        gid: u64,
        /// Extended attributes, name and value.
        xattrs: Vec<(String, Vec<u8>)>,
    },
    /// A symlink.
    Symlink {
        /// Its path in the layer.
        path: Vec<u8>,
        /// What it points to.
        target: Vec<u8>,
    },
    /// A hardlink to `target` (a path in the image).
    Hardlink {
        /// Its path in the layer.
        path: Vec<u8>,
        /// The path it links to.
        target: Vec<u8>,
    },
    /// A character (`c`) or block (`b`) device.
    Device {
        /// Its path in the layer.
        path: Vec<u8>,
        /// `c` or `b`.
        kind: char,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo {
        /// Its path in the layer.
        path: Vec<u8>,
    },
    /// `.wh.NAME`: hides `path` of the layers below.
    Whiteout {
        /// The path hidden.
        path: Vec<u8>,
    },
    /// `.wh..wh..opq` in `dir`.
    Opaque {
        /// The directory made opaque.
        dir: Vec<u8>,
    },
}

/// Shorthands.
pub fn dir(p: &str) -> Item {
    Item::Dir {
        path: p.into(),
        mode: 0o755,
    }
}
/// A 0644 root-owned file.
pub fn file(p: &str, data: &[u8]) -> Item {
    Item::File {
        path: p.into(),
        mode: 0o644,
        data: data.to_vec(),
        uid: 0,
        gid: 0,
        xattrs: vec![],
    }
}
/// A symlink.
pub fn symlink(p: &str, t: &str) -> Item {
    Item::Symlink {
        path: p.into(),
        target: t.into(),
    }
}

const MTIME: u64 = 1_700_000_000;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn os(p: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(p)
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = dir.to_vec();
    if !v.is_empty() && !v.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn with_wh(path: &[u8]) -> Vec<u8> {
    let (d, n) = match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b""[..], path),
    };
    join(d, &[b".wh.", n].concat())
}

/// The uncompressed tar of a layer.
pub fn tar_of(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for it in items {
        match it {
            Item::Dir { path, mode } => {
                let mut h = header(tar::EntryType::Directory, *mode, 0);
                b.append_data(&mut h, os(path), std::io::empty()).unwrap();
            }
            Item::File {
                path,
                mode,
                data,
                uid,
                gid,
                xattrs,
            } => {
                if !xattrs.is_empty() {
                    let pax: Vec<(String, Vec<u8>)> = xattrs
                        .iter()
                        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone()))
                        .collect();
                    b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                        .unwrap();
                }
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                h.set_uid(*uid);
                h.set_gid(*gid);
                b.append_data(&mut h, os(path), &data[..]).unwrap();
            }
            Item::Symlink { path, target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, os(path), os(target)).unwrap();
            }
            Item::Hardlink { path, target } => {
                let mut h = header(tar::EntryType::Link, 0o644, 0);
                b.append_link(&mut h, os(path), os(target)).unwrap();
            }
            Item::Device {
                path,
                kind,
                major,
                minor,
            } => {
                let t = if *kind == 'c' {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                let mut h = header(t, 0o660, 0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                b.append_data(&mut h, os(path), std::io::empty()).unwrap();
            }
            Item::Fifo { path } => {
                let mut h = header(tar::EntryType::Fifo, 0o644, 0);
                b.append_data(&mut h, os(path), std::io::empty()).unwrap();
            }
            Item::Whiteout { path } => {
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, os(&with_wh(path)), std::io::empty())
                    .unwrap();
            }
            Item::Opaque { dir } => {
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, os(&join(dir, b".wh..wh..opq")), std::io::empty())
                    .unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    /// tar+gzip.
    Gzip,
    /// tar+zstd (plain, no TOC).
    Zstd,
    /// zstd:chunked, written by strata's layer writer, with its annotations.
    Native,
    /// eStargz, written by the test's own writer, with its TOC digest annotation.
    Estargz,
}

pub use crate::sha;

fn compress(tar: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            gz.finish().unwrap()
        }
        Comp::Zstd => zstd::bulk::compress(tar, 3).unwrap(),
        Comp::Native | Comp::Estargz => {
            unreachable!("lazy layers are written with their annotations")
        }
    }
}

fn curl(auth: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("curl");
    if let Some(a) = auth {
        cmd.arg("-u").arg(a);
    }
    let out = cmd
        .arg("-sS")
        .arg("--fail-with-body")
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Uploads a blob with the distribution API (POST, then PUT with the digest).
pub fn push_blob(registry: &str, repo: &str, data: &[u8], scratch: &Path) -> String {
    push_blob_auth(registry, None, repo, data, scratch)
}

/// [`push_blob`] with `user:password` Basic credentials.
pub fn push_blob_auth(
    registry: &str,
    auth: Option<&str>,
    repo: &str,
    data: &[u8],
    scratch: &Path,
) -> String {
    let digest = sha(data);
    let headers = curl(
        auth,
        &[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            &format!("http://{registry}/v2/{repo}/blobs/uploads/"),
        ],
    );
    let loc = headers
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .expect("upload location")
        .trim()
        .to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("http://{registry}{loc}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let path = scratch.join(digest.trim_start_matches("sha256:"));
    std::fs::write(&path, data).unwrap();
    curl(
        auth,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", path.display()),
            &format!("{url}{sep}digest={digest}"),
        ],
    );
    let _ = std::fs::remove_file(path);
    digest
}

/// A pushed test image.
pub struct Pushed {
    /// `127.0.0.1:PORT/repo:tag`.
    pub reference: String,
    /// The uncompressed tar of each layer, bottom first.
    pub tars: Vec<Vec<u8>>,
    /// Compressed blob sizes.
    pub blob_bytes: u64,
}

/// Builds an image from `layers`, compresses each with `comp`, and pushes it as `repo:tag`.
pub fn push_image(
    registry: &str,
    repo: &str,
    tag: &str,
    layers: &[Vec<Item>],
    comp: Comp,
) -> Pushed {
    push_image_auth(registry, None, repo, tag, layers, comp)
}

/// [`push_image`] with `user:password` Basic credentials.
pub fn push_image_auth(
    registry: &str,
    auth: Option<&str>,
    repo: &str,
    tag: &str,
    layers: &[Vec<Item>],
    comp: Comp,
) -> Pushed {
    let tars: Vec<Vec<u8>> = layers.iter().map(|items| tar_of(items)).collect();
    push_tars_auth(registry, auth, repo, tag, tars, comp)
}

/// Pushes an image whose layers are the given uncompressed tars, compressed with `comp`.
pub fn push_tars(
    registry: &str,
    repo: &str,
    tag: &str,
    layers: Vec<Vec<u8>>,
    comp: Comp,
) -> Pushed {
    push_tars_auth(registry, None, repo, tag, layers, comp)
}

fn push_tars_auth(
    registry: &str,
    auth: Option<&str>,
    repo: &str,
    tag: &str,
    layers: Vec<Vec<u8>>,
    comp: Comp,
) -> Pushed {
    let scratch = tempfile::tempdir().unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut tars = Vec::new();
    let mut blob_bytes = 0;
    for tar in layers {
        diff_ids.push(sha(&tar));
        let (blob, annotations) = match comp {
            Comp::Native => {
                let mut out = Vec::new();
                let w = strata_formats::chunked::write_chunked(&tar[..], &mut out, 3).unwrap();
                (out, serde_json::to_value(&w.annotations).unwrap())
            }
            Comp::Estargz => {
                let (blob, toc, diff_id) = crate::estargz::estargz(&tar);
                *diff_ids.last_mut().unwrap() = diff_id;
                (
                    blob,
                    serde_json::json!({"containerd.io/snapshot/stargz/toc.digest": toc}),
                )
            }
            _ => (compress(&tar, comp), serde_json::json!({})),
        };
        blob_bytes += blob.len() as u64;
        let digest = push_blob_auth(registry, auth, repo, &blob, scratch.path());
        let mt = match comp {
            Comp::Gzip | Comp::Estargz => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd | Comp::Native => "application/vnd.oci.image.layer.v1.tar+zstd",
        };
        descs.push(serde_json::json!({"mediaType": mt, "digest": digest, "size": blob.len(), "annotations": annotations}));
        tars.push(tar);
    }
    push_manifest(registry, auth, repo, tag, descs, &diff_ids, scratch.path());
    Pushed {
        reference: format!("{registry}/{repo}:{tag}"),
        tars,
        blob_bytes,
    }
}

/// A layer blob made elsewhere (by a foreign writer), ready to push.
pub struct Blob {
    /// The compressed bytes.
    pub data: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// Its descriptor annotations.
    pub annotations: serde_json::Value,
    /// The digest of its uncompressed tar.
    pub diff_id: String,
}

impl Blob {
    /// `tar` as a gzip layer at the default level (deflate blocks end often enough for SOCI
    /// checkpoints), as most registries' images are written.
    pub fn gzip(tar: &[u8]) -> Blob {
        use std::io::Write;
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        w.write_all(tar).unwrap();
        Blob {
            data: w.finish().unwrap(),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            annotations: serde_json::json!({}),
            diff_id: crate::sha(tar),
        }
    }
}

/// Pushes `layers` (already written) as `repo:tag`; returns the reference.
pub fn push_blobs(registry: &str, repo: &str, tag: &str, layers: &[Blob]) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let digest = push_blob(registry, repo, &l.data, scratch.path());
        descs.push(serde_json::json!({"mediaType": l.media_type, "digest": digest, "size": l.data.len(), "annotations": l.annotations}));
        diff_ids.push(l.diff_id.clone());
    }
    push_manifest(registry, None, repo, tag, descs, &diff_ids, scratch.path());
    format!("{registry}/{repo}:{tag}")
}

fn push_manifest(
    registry: &str,
    auth: Option<&str>,
    repo: &str,
    tag: &str,
    descs: Vec<serde_json::Value>,
    diff_ids: &[String],
    scratch: &Path,
) {
    let config = serde_json::to_vec(&serde_json::json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": diff_ids.iter().map(|_| serde_json::json!({"created_by": "strata test"})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let cdigest = push_blob_auth(registry, auth, repo, &config, scratch);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let mpath = scratch.join("manifest.json");
    std::fs::write(&mpath, &manifest).unwrap();
    curl(
        auth,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            &format!("@{}", mpath.display()),
            &format!("http://{registry}/v2/{repo}/manifests/{tag}"),
        ],
    );
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
