//! The normalized in-memory index of one layer, built from whichever TOC the layer has
//! (zstd:chunked, eStargz, or strata's local TOC of a plain layer). Paths are checked here, once:
//! nothing that leaves the image root gets past this module.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::num::clamp_offset;
use crate::toc::{Toc, TocEntry};
use strata_oci::digest::Digest;
use strata_oci::timefmt::parse_rfc3339;

/// Errors turning a TOC into an index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A name that would land outside the image, or is otherwise unusable.
    #[error("tar entry {name:?} rejected: {reason}")]
    Path {
        /// The name as the layer has it.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An entry whose fields contradict each other.
    #[error("malformed TOC entry {name:?}: {reason}")]
    Entry {
        /// The entry name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// What kind of file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file.
    Reg,
    /// Symbolic link; the target is in `link`.
    Symlink,
    /// Hard link to the path in `link`.
    Hardlink,
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

/// Where the bytes of one chunk come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkLoc {
    /// One or more zstd frames at `start..end` of the blob.
    Zstd {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// Gzip members at `start..end`; the chunk starts `inner` bytes into their output.
    Gzip {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// Offset into the decompressed members.
        inner: u64,
    },
    /// A piece of a SOCI span: the span's compressed bytes are `start..end` of the blob (the
    /// chunk's digest is theirs, the span digest of the ztoc); the piece starts `inner` bytes
    /// into the span's output, reached by inflating from the span's checkpoint.
    Zran {
        /// First byte of the span.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// Offset of the piece in the span's uncompressed output.
        inner: u64,
    },
    /// A hole: all zeros, nothing to fetch.
    Zeros,
    /// Only in the local chunk cache (the layer had no TOC and was indexed by streaming it).
    Local,
}

/// One chunk of a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Offset in the file.
    pub file_offset: u64,
    /// Uncompressed length.
    pub len: u64,
    /// sha256 of the uncompressed bytes (`None` only for holes).
    pub digest: Option<Digest>,
    /// Where to fetch it.
    pub loc: ChunkLoc,
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Normalized path relative to the image root, no leading or trailing `/`; empty for the root.
    pub path: Vec<u8>,
    /// Kind of file.
    pub kind: Kind,
    /// Permission bits plus setuid/setgid/sticky (07777).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Size of a regular file.
    pub size: u64,
    /// Symlink target (raw), or the normalized path a hardlink points to.
    pub link: Vec<u8>,
    /// Device numbers (major, minor).
    pub rdev: (u32, u32),
    /// Extended attributes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Content chunks of a regular file, in order, covering `0..size`.
    pub chunks: Vec<Chunk>,
}

/// The index of one layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerIndex {
    /// Entries in layer order.
    pub entries: Vec<Entry>,
}

impl LayerIndex {
    /// Bytes of regular file content in the layer.
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::Reg)
            .map(|e| e.size)
            .sum()
    }
}

/// Normalizes a layer path: strips `./` and a trailing `/`; rejects absolute paths and `..`.
pub fn normalize_path(raw: &[u8]) -> Result<Vec<u8>, IndexError> {
    let bad = |reason| IndexError::Path {
        name: String::from_utf8_lossy(raw).into_owned(),
        reason,
    };
    if raw.first() == Some(&b'/') {
        return Err(bad("absolute path"));
    }
    if raw.contains(&0) {
        return Err(bad("NUL byte in name"));
    }
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(bad("path contains '..'")),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// How chunk locations of a TOC in the zstd:chunked schema are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locations {
    /// Offsets point into the zstd:chunked blob.
    Zstd,
    /// strata's local TOC of a plain layer: chunks live only in the cache.
    Local,
    /// eStargz: offsets are gzip members, `endOffset` filled in from the next member.
    Gzip,
}

fn decode_name(s: &str, raw: &Option<String>) -> Vec<u8> {
    raw.as_ref()
        .and_then(|r| B64.decode(r).ok())
        .unwrap_or_else(|| s.as_bytes().to_vec())
}

fn parse_digest(name: &str, s: &Option<String>) -> Result<Option<Digest>, IndexError> {
    s.as_ref()
        .map(|d| {
            d.parse::<Digest>().map_err(|e| IndexError::Entry {
                name: name.to_string(),
                reason: e.to_string(),
            })
        })
        .transpose()
}

pub(crate) fn entry_of(e: &TocEntry) -> Result<Entry, IndexError> {
    // JSON writers in Go replace invalid UTF-8 with U+FFFD: such a TOC cannot name the file.
    if (e.name_raw.is_none() && e.name.contains('\u{fffd}'))
        || (e.link_name_raw.is_none() && e.link_name.contains('\u{fffd}'))
    {
        return Err(IndexError::Entry {
            name: e.name.clone(),
            reason: "name holds U+FFFD (a writer replaced bytes that were not UTF-8)".into(),
        });
    }
    let raw_name = decode_name(&e.name, &e.name_raw);
    let path = normalize_path(&raw_name)?;
    let bad = |reason: String| IndexError::Entry {
        name: e.name.clone(),
        reason,
    };
    let kind = match e.kind.as_str() {
        "dir" => Kind::Dir,
        "reg" => Kind::Reg,
        "symlink" => Kind::Symlink,
        "hardlink" => Kind::Hardlink,
        "char" => Kind::Char,
        "block" => Kind::Block,
        "fifo" => Kind::Fifo,
        other => return Err(bad(format!("unknown type {other:?}"))),
    };
    if path.is_empty() && kind != Kind::Dir {
        return Err(bad("the image root must be a directory".into()));
    }
    let link_raw = decode_name(&e.link_name, &e.link_name_raw);
    let link = match kind {
        Kind::Hardlink => normalize_path(&link_raw)?,
        Kind::Symlink if link_raw.is_empty() => return Err(bad("symlink without target".into())),
        _ => link_raw,
    };
    let mut xattrs = Vec::with_capacity(e.xattrs.len());
    for (k, v) in &e.xattrs {
        let value = B64
            .decode(v)
            .map_err(|_| bad(format!("xattr {k} is not base64")))?;
        xattrs.push((k.as_bytes().to_vec(), value));
    }
    let num =
        |v: i64, what: &str| u32::try_from(v).map_err(|_| bad(format!("{what} {v} out of range")));
    Ok(Entry {
        path,
        kind,
        mode: num(e.mode & 0o7777, "mode")?,
        uid: num(e.uid, "uid")?,
        gid: num(e.gid, "gid")?,
        mtime: e
            .modtime
            .as_deref()
            .and_then(parse_rfc3339)
            .unwrap_or((0, 0)),
        size: if kind == Kind::Reg {
            u64::try_from(e.size).map_err(|_| bad("negative size".into()))?
        } else {
            0
        },
        link,
        rdev: (num(e.dev_major, "devMajor")?, num(e.dev_minor, "devMinor")?),
        xattrs,
        chunks: Vec::new(),
    })
}

/// Checks that the chunks of `e` are contiguous and cover the file exactly.
fn check_chunks(e: &Entry) -> Result<(), IndexError> {
    let bad = |reason: String| IndexError::Entry {
        name: String::from_utf8_lossy(&e.path).into_owned(),
        reason,
    };
    let mut at = 0u64;
    for c in &e.chunks {
        if c.file_offset != at || c.len == 0 {
            return Err(bad(format!(
                "chunk at {} does not continue at {at}",
                c.file_offset
            )));
        }
        if c.loc != ChunkLoc::Zeros && c.digest.is_none() {
            return Err(bad(format!("chunk at {} has no digest", c.file_offset)));
        }
        if let ChunkLoc::Zstd { start, end }
        | ChunkLoc::Gzip { start, end, .. }
        | ChunkLoc::Zran { start, end, .. } = c.loc
            && end <= start
        {
            return Err(bad(format!(
                "chunk at {} has an empty blob range",
                c.file_offset
            )));
        }
        at += c.len;
    }
    if at != e.size {
        return Err(bad(format!("chunks cover {at} of {} bytes", e.size)));
    }
    Ok(())
}

/// One regular file's TOC entries: the file itself and the `chunk` entries after it.
struct FileGroup<'a> {
    main: &'a TocEntry,
    chunks: Vec<&'a TocEntry>,
}

/// Groups `chunk` entries with the regular file they follow.
fn group_entries(toc: &Toc) -> Result<Vec<FileGroup<'_>>, IndexError> {
    let mut groups: Vec<FileGroup<'_>> = Vec::with_capacity(toc.entries.len());
    for te in &toc.entries {
        if te.kind == "chunk" {
            match groups.last_mut().filter(|g| g.main.kind == "reg") {
                Some(g) => g.chunks.push(te),
                None => {
                    return Err(IndexError::Entry {
                        name: te.name.clone(),
                        reason: "chunk entry does not follow a regular file".into(),
                    });
                }
            }
        } else {
            groups.push(FileGroup {
                main: te,
                chunks: Vec::new(),
            });
        }
    }
    Ok(groups)
}

/// Where each group's frames end when its entries do not say. As containers/storage's reader
/// does: a chunk ends where the next chunk of its file starts; a file's last chunk ends at the
/// file's `endOffset`, or else where the next entry with content starts, or else at `data_end`.
fn fallback_ends(groups: &[FileGroup<'_>], data_end: Option<u64>) -> Vec<Option<u64>> {
    let mut out = vec![None; groups.len()];
    let mut next = data_end;
    for (i, g) in groups.iter().enumerate().rev() {
        out[i] = next;
        if let Ok(offset) = u64::try_from(g.main.offset)
            && offset > 0
        {
            next = Some(offset);
        }
    }
    out
}

impl LayerIndex {
    /// Builds the index of a TOC in the zstd:chunked schema.
    pub fn from_toc(toc: &Toc, locs: Locations) -> Result<Self, IndexError> {
        Self::from_toc_bounded(toc, locs, None)
    }

    /// Builds the index of a TOC in the zstd:chunked schema; `data_end` is where the content
    /// frames end (the TOC's skippable frame), for entries whose end must be derived.
    pub fn from_toc_bounded(
        toc: &Toc,
        locs: Locations,
        data_end: Option<u64>,
    ) -> Result<Self, IndexError> {
        let groups = group_entries(toc)?;
        let ends = fallback_ends(&groups, data_end);
        let mut entries: Vec<Entry> = Vec::with_capacity(groups.len());
        for (g, fallback) in groups.iter().zip(ends) {
            let mut e = entry_of(g.main)?;
            if e.kind == Kind::Reg && e.size > 0 {
                e.chunks = file_chunks(g, e.size, locs, fallback)?;
            }
            check_chunks(&e)?;
            entries.push(e);
        }
        Ok(Self { entries })
    }
}

/// The chunks of one regular file, with lengths and frame ends derived where the TOC omits them.
fn file_chunks(
    g: &FileGroup<'_>,
    size: u64,
    locs: Locations,
    fallback_end: Option<u64>,
) -> Result<Vec<Chunk>, IndexError> {
    let all: Vec<&TocEntry> = std::iter::once(g.main)
        .chain(g.chunks.iter().copied())
        .collect();
    let bad = |reason: String| IndexError::Entry {
        name: g.main.name.clone(),
        reason,
    };
    let end_of = |e: i64| u64::try_from(e).map_err(|_| bad(format!("endOffset {e} is negative")));
    // The last frame ends at the last entry's endOffset (chunk entries of older writers carry
    // none), else at the file's own endOffset, else where the next content starts.
    let last_start = all[all.len() - 1].offset;
    let file_end = [all[all.len() - 1].end_offset, g.main.end_offset]
        .into_iter()
        .find(|e| *e > last_start)
        .map(end_of)
        .transpose()?
        .or(fallback_end);
    let mut out = Vec::with_capacity(all.len());
    for (i, te) in all.iter().enumerate() {
        let file_offset = if i == 0 {
            0
        } else {
            clamp_offset(te.chunk_offset)
        };
        let next_offset = all.get(i + 1).map(|n| clamp_offset(n.chunk_offset));
        // chunkSize absent: up to the next chunk, or the end of the file (eStargz's rule too).
        let len = match u64::try_from(te.chunk_size) {
            Ok(n) if n > 0 => n,
            _ => next_offset.unwrap_or(size).saturating_sub(file_offset),
        };
        let single = all.len() == 1;
        let digest = match parse_digest(&te.name, &te.chunk_digest)? {
            Some(d) => Some(d),
            None if single && len == size => parse_digest(&te.name, &te.digest)?,
            None => None,
        };
        let start = clamp_offset(te.offset);
        let next_start = all[i + 1..]
            .iter()
            .map(|n| clamp_offset(n.offset))
            .find(|s| *s > start);
        let own_end = (te.end_offset > te.offset)
            .then(|| end_of(te.end_offset))
            .transpose()?;
        let end = match (own_end, next_start) {
            (Some(o), Some(n)) => Some(o.min(n)),
            (None, Some(n)) => Some(n),
            (o, None) => o.or(file_end),
        };
        let loc = chunk_loc(locs, te, start, end).ok_or_else(|| {
            bad(format!(
                "chunk at {file_offset}: no end of its compressed frames"
            ))
        })?;
        out.push(Chunk {
            file_offset,
            len,
            digest,
            loc,
        });
    }
    Ok(out)
}

/// Where a chunk's bytes are: zeros, the local cache, or compressed frames `start..end` of the
/// blob (`None` when the frames' end is unknown).
fn chunk_loc(locs: Locations, te: &TocEntry, start: u64, end: Option<u64>) -> Option<ChunkLoc> {
    Some(match (locs, te.chunk_type.as_deref()) {
        (_, Some("zeros")) => ChunkLoc::Zeros,
        (Locations::Local, _) => ChunkLoc::Local,
        (Locations::Gzip, _) => ChunkLoc::Gzip {
            start,
            end: end?,
            inner: clamp_offset(te.inner_offset),
        },
        (Locations::Zstd, _) => ChunkLoc::Zstd { start, end: end? },
    })
}

// Test data and blobs are a few hundred KiB: their sizes and offsets fit every integer type.
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::chunked::{CHUNK_BYTES, write_chunked};

    #[test]
    fn normalizes_and_rejects_paths() {
        assert_eq!(
            normalize_path(b"./etc/os-release").unwrap(),
            b"etc/os-release"
        );
        assert_eq!(normalize_path(b"etc//x/./y/").unwrap(), b"etc/x/y");
        assert_eq!(normalize_path(b"./").unwrap(), b"");
        assert!(normalize_path(b"../etc/passwd").is_err());
        assert!(normalize_path(b"a/../../b").is_err());
        assert!(normalize_path(b"/etc/passwd").is_err());
        assert_eq!(normalize_path(b"\xff\xfe/x").unwrap(), b"\xff\xfe/x");
    }

    #[test]
    fn index_of_written_layer_covers_files() {
        let mut b = tar::Builder::new(Vec::new());
        let big: Vec<u8> = (0..CHUNK_BYTES * 2 + 5).map(|i| (i % 7) as u8).collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(big.len() as u64);
        h.set_mode(0o755);
        b.append_data(&mut h, "./bin/big", &big[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Link);
        l.set_size(0);
        b.append_link(&mut l, "bin/again", "./bin/big").unwrap();
        let tar = b.into_inner().unwrap();
        let mut blob = Vec::new();
        let w = write_chunked(&tar[..], &mut blob, 1).unwrap();
        let idx = LayerIndex::from_toc(&w.toc, Locations::Zstd).unwrap();
        assert_eq!(idx.entries.len(), 2);
        let f = &idx.entries[0];
        assert_eq!(f.path, b"bin/big");
        assert_eq!(f.chunks.len(), 3);
        for c in &f.chunks {
            let ChunkLoc::Zstd { start, end } = c.loc else {
                panic!("not zstd")
            };
            let data =
                zstd::bulk::decompress(&blob[start as usize..end as usize], CHUNK_BYTES).unwrap();
            assert_eq!(
                &data[..],
                &big[c.file_offset as usize..(c.file_offset + c.len) as usize]
            );
            assert_eq!(Some(Digest::of(&data)), c.digest);
        }
        assert_eq!(idx.entries[1].kind, Kind::Hardlink);
        assert_eq!(idx.entries[1].link, b"bin/big");
    }

    #[test]
    fn rejects_escaping_and_inconsistent_entries() {
        let entry = |name: &str, kind: &str| TocEntry {
            kind: kind.into(),
            name: name.into(),
            ..TocEntry::default()
        };
        let toc = Toc {
            version: 1,
            entries: vec![entry("../../etc/shadow", "reg")],
            tar_split_digest: None,
        };
        let err = LayerIndex::from_toc(&toc, Locations::Zstd).unwrap_err();
        assert!(err.to_string().contains("'..'"), "{err}");

        let mut link = entry("x", "hardlink");
        link.link_name = "/etc/passwd".into();
        let toc = Toc {
            version: 1,
            entries: vec![link],
            tar_split_digest: None,
        };
        assert!(LayerIndex::from_toc(&toc, Locations::Zstd).is_err());

        let mut short = entry("f", "reg");
        short.size = 10;
        short.chunk_size = 4;
        short.digest = Some(Digest::of(b"x").to_string());
        short.chunk_digest = Some(Digest::of(b"x").to_string());
        short.offset = 1;
        short.end_offset = 9;
        let toc = Toc {
            version: 1,
            entries: vec![short],
            tar_split_digest: None,
        };
        let err = LayerIndex::from_toc(&toc, Locations::Zstd).unwrap_err();
        assert!(err.to_string().contains("cover 4 of 10"), "{err}");
    }

    /// The older containers/storage writer (skopeo 1.9, podman 4.3) and stargz-snapshotter's:
    /// chunk entries without `endOffset`, a file's `endOffset` only on its first entry, zeros
    /// chunks with an offset, single-chunk files without chunk fields.
    #[test]
    fn derives_ends_like_the_reference_reader() {
        let d = Digest::of(b"x").to_string();
        let toc: Toc = serde_json::from_value(serde_json::json!({"version": 1, "entries": [
            {"type": "dir", "name": "bin/", "mode": 493},
            {"type": "reg", "name": "bin/a", "size": 10, "offset": 100, "endOffset": 400,
             "chunkSize": 4, "chunkDigest": d, "digest": d},
            {"type": "chunk", "name": "bin/a", "offset": 200, "chunkSize": 3, "chunkOffset": 4,
             "chunkDigest": d, "chunkType": "zeros"},
            {"type": "chunk", "name": "bin/a", "offset": 250, "chunkOffset": 7, "chunkDigest": d},
            {"type": "hardlink", "name": "bin/b", "linkName": "bin/a"},
            {"type": "reg", "name": "one", "size": 5, "offset": 500, "digest": d},
            {"type": "reg", "name": "empty"},
            {"type": "symlink", "name": "l", "linkName": "one", "accesstime": "x"}
        ]}))
        .unwrap();
        let idx = LayerIndex::from_toc_bounded(&toc, Locations::Zstd, Some(900)).unwrap();
        let a = &idx.entries[1].chunks;
        assert_eq!(a.len(), 3);
        assert_eq!(
            a[0].loc,
            ChunkLoc::Zstd {
                start: 100,
                end: 200
            }
        );
        assert_eq!(a[1].loc, ChunkLoc::Zeros);
        assert_eq!((a[2].file_offset, a[2].len), (7, 3), "size derived");
        assert_eq!(
            a[2].loc,
            ChunkLoc::Zstd {
                start: 250,
                end: 400
            }
        );
        let one = &idx.entries[3].chunks;
        assert_eq!(
            one[0].loc,
            ChunkLoc::Zstd {
                start: 500,
                end: 900
            },
            "to the TOC"
        );
        assert_eq!(one[0].digest, Some(Digest::of(b"x")));
        // Without the file's endOffset, the last chunk runs to the next content.
        let mut toc2 = toc.clone();
        toc2.entries[1].end_offset = 0;
        let idx = LayerIndex::from_toc_bounded(&toc2, Locations::Zstd, Some(900)).unwrap();
        assert_eq!(
            idx.entries[1].chunks[2].loc,
            ChunkLoc::Zstd {
                start: 250,
                end: 500
            }
        );
        // A name a Go writer mangled (invalid UTF-8 became U+FFFD) cannot be trusted.
        let mut toc3 = toc.clone();
        toc3.entries[5].name = "caf\u{fffd}".into();
        assert!(LayerIndex::from_toc_bounded(&toc3, Locations::Zstd, Some(900)).is_err());
        // With no bound at all the last file cannot be located: an error, not a guess.
        assert!(LayerIndex::from_toc(&toc2, Locations::Zstd).is_err());
    }
}
