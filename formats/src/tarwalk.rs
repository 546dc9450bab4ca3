//! Walks a tar stream byte-exactly: every byte is either part of a header segment (headers,
//! padding, end-of-archive blocks) or part of a regular file's payload. The layer writer and the
//! plain-layer indexer are both visitors of this walk, so both see the same entries.

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::rc::Rc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tar::EntryType;

use crate::sparse::{DataOnly, Expand, PaxSparse, SparseMap, gnu_map, pairs, read_map_1_0};
use crate::toc::TocEntry;
use strata_oci::digest::{Digest, Hasher};
use strata_oci::timefmt::format_rfc3339;

/// Errors walking a tar stream.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// Reading the stream failed (including a corrupt compressed stream).
    #[error("reading layer tar: {0}")]
    Io(#[from] io::Error),
    /// A tar entry strata cannot represent.
    #[error("unsupported tar entry {name:?}: {reason}")]
    Unsupported {
        /// The entry's name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The visitor failed.
    #[error("{0}")]
    Visitor(String),
}

/// Receives the pieces of a tar stream in order.
pub trait TarVisitor {
    /// Raw bytes that are not file payload: headers, padding, the end-of-archive blocks.
    fn segment(&mut self, bytes: &[u8]) -> Result<(), WalkError>;
    /// One entry; `payload` yields exactly `meta.size` bytes for a regular file, none otherwise.
    fn entry(&mut self, meta: TocEntry, payload: &mut dyn Read) -> Result<(), WalkError>;
    /// A sparse regular file of `meta.size` bytes: `data` yields the archive's bytes of the
    /// segments of `map` one after the other (exactly `map.data_bytes()`). By default the file
    /// is expanded (zeros in the holes) and given to [`TarVisitor::entry`].
    fn sparse(
        &mut self,
        meta: TocEntry,
        map: &SparseMap,
        data: &mut dyn Read,
    ) -> Result<(), WalkError> {
        self.entry(meta, &mut Expand::new(map, data))
    }
}

struct Tap<R> {
    inner: R,
    recorded: Rc<RefCell<Vec<u8>>>,
    recording: Rc<Cell<bool>>,
    hasher: Rc<RefCell<Hasher>>,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        if self.recording.get() {
            self.recorded.borrow_mut().extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// Encodes a raw name for the TOC: the string, plus base64 of the bytes when they are not UTF-8.
pub fn encode_name(raw: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(raw) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (
            String::from_utf8_lossy(raw).into_owned(),
            Some(B64.encode(raw)),
        ),
    }
}

/// Walks `reader` as a tar stream, calling `visitor` for each piece. Returns the sha256 of all
/// the bytes read (the layer's diff_id) and their count. A stream that is not a tar archive
/// fails with a plain message: never the raw header bytes the tar crate quotes.
pub fn walk_tar<R: Read>(
    reader: R,
    visitor: &mut impl TarVisitor,
) -> Result<(Digest, u64), WalkError> {
    walk_tar_raw(reader, visitor).map_err(|e| match e {
        WalkError::Io(io) => WalkError::Io(clean_io_error(io)),
        other => other,
    })
}

/// An I/O error of the tar crate, said plainly: what it means for an archive, and no bytes of
/// the broken header (which it quotes, binary and all).
pub fn clean_io_error(e: io::Error) -> io::Error {
    let mut text = e.to_string();
    // The tar crate's "failed to iterate over archive" says nothing: its cause does.
    if let Some(inner) = e.get_ref().and_then(|i| i.source()) {
        text = format!("{text}: {inner}");
    }
    let said = if text.contains("failed to read entire block") {
        "not a tar archive, or a truncated one (its last header block is incomplete)".to_string()
    } else if text.contains("cksum") || text.contains("checksum") {
        "not a tar archive, or a corrupt one (a header fails its checksum)".to_string()
    } else {
        printable(&text)
    };
    io::Error::new(e.kind(), said)
}

/// `s` with its binary tail (from the tar crate's " when getting ... for <bytes>") cut and any
/// character that is not printable replaced, at most 200 characters.
pub fn printable(s: &str) -> String {
    let s = s.split(" when getting").next().unwrap_or(s);
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_control() || c == char::REPLACEMENT_CHARACTER {
                '?'
            } else {
                c
            }
        })
        .take(200)
        .collect();
    if s.chars().count() > 200 {
        out.push_str("...");
    }
    out
}

fn walk_tar_raw<R: Read>(
    reader: R,
    visitor: &mut impl TarVisitor,
) -> Result<(Digest, u64), WalkError> {
    let recorded = Rc::new(RefCell::new(Vec::new()));
    let recording = Rc::new(Cell::new(true));
    let hasher = Rc::new(RefCell::new(Hasher::default()));
    let tap = Tap {
        inner: reader,
        recorded: recorded.clone(),
        recording: recording.clone(),
        hasher: hasher.clone(),
    };
    let mut archive = tar::Archive::new(tap);
    let mut total = 0u64;
    {
        let entries = archive.entries()?;
        for entry in entries {
            let mut entry = entry?;
            let seg = std::mem::take(&mut *recorded.borrow_mut());
            total += seg.len() as u64;
            visitor.segment(&seg)?;
            let meta = toc_entry_of(&mut entry)?;
            let Some(mut meta) = meta else {
                // Global PAX headers and other pseudo-entries: their payload is header bytes.
                io::copy(&mut entry, &mut io::sink())?;
                continue;
            };
            if meta.kind == "reg"
                && let Some(n) = walk_sparse(&mut entry, &mut meta, &seg, &recording, visitor)?
            {
                total += n;
                continue;
            }
            if meta.kind == "reg" && meta.size > 0 {
                recording.set(false);
                let mut counted = CountingRead {
                    inner: &mut entry,
                    n: 0,
                };
                let r = visitor.entry(meta.clone(), &mut counted);
                recording.set(true);
                r?;
                if u64::try_from(meta.size) != Ok(counted.n) {
                    return Err(WalkError::Visitor(format!(
                        "payload of {} not fully consumed",
                        meta.name
                    )));
                }
                total += counted.n;
            } else {
                visitor.entry(meta, &mut io::empty())?;
            }
        }
    }
    let mut tap = archive.into_inner();
    io::copy(&mut tap, &mut io::sink())?;
    let trailer = std::mem::take(&mut *recorded.borrow_mut());
    total += trailer.len() as u64;
    visitor.segment(&trailer)?;
    let digest = std::mem::take(&mut *hasher.borrow_mut()).finish();
    Ok((digest, total))
}

/// Hands a sparse file (any dialect) to the visitor; returns the archive bytes of its data, or
/// `None` when the entry is not sparse. A map that does not fit its data refuses the layer.
fn walk_sparse<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    meta: &mut TocEntry,
    recorded: &[u8],
    recording: &Cell<bool>,
    visitor: &mut impl TarVisitor,
) -> Result<Option<u64>, WalkError> {
    let refuse = |name: &str, reason: crate::sparse::SparseError| {
        WalkError::Visitor(format!("sparse file {name:?} in layer tar: {reason}"))
    };
    let gnu_old = entry.header().entry_type() == EntryType::GNUSparse;
    let pax = match entry.pax_extensions() {
        Ok(Some(exts)) => {
            let records: Vec<(Vec<u8>, Vec<u8>)> = exts
                .flatten()
                .map(|e| (e.key_bytes().to_vec(), e.value_bytes().to_vec()))
                .collect();
            PaxSparse::from_records(records.iter().map(|(k, v)| (&k[..], &v[..])))
                .map_err(|r| refuse(&meta.name, r))?
        }
        _ => PaxSparse::default(),
    };
    if !gnu_old && !pax.any {
        return Ok(None);
    }
    if let Some(raw) = &pax.name {
        let (name, name_raw) = encode_name(raw);
        meta.name = name;
        meta.name_raw = name_raw;
    }
    let name = meta.name.clone();
    let stored = entry.header().entry_size().unwrap_or(0);
    recording.set(false);
    let result = (|| {
        let (map, map_raw) = read_sparse_map(entry, &pax, gnu_old, recorded, &name)?;
        map.check().map_err(|r| refuse(&name, r))?;
        let data_len = stored - map_raw.len() as u64;
        if map.data_bytes() != data_len {
            return Err(refuse(
                &name,
                format!(
                    "its map holds {} bytes of data, the archive {data_len}",
                    map.data_bytes()
                )
                .into(),
            ));
        }
        visitor.segment(&map_raw)?;
        meta.size = i64::try_from(map.real_size)
            .map_err(|_| refuse(&name, "its real size is out of range".into()))?;
        let mut counted = CountingRead { inner: entry, n: 0 };
        if gnu_old {
            // tar's reader already expands old GNU entries: take the data back out of it.
            let mut data = DataOnly::new(&map, &mut counted);
            let mut limited = (&mut data).take(data_len);
            visitor.sparse(meta.clone(), &map, &mut limited)?;
            // The trailing hole is not read: tar skips to the next header by archive offsets.
        } else {
            let mut limited = (&mut counted).take(data_len);
            visitor.sparse(meta.clone(), &map, &mut limited)?;
            if counted.n != data_len {
                return Err(refuse(&name, "data not fully consumed".into()));
            }
        }
        Ok(map_raw.len() as u64 + data_len)
    })();
    recording.set(true);
    result.map(Some)
}

/// The sparse map of an entry: from an old GNU header (`recorded` holds its extension
/// headers), or from PAX records (format 1.0 keeps it at the start of the data; returned raw,
/// as it must be replayed into the tar-split).
fn read_sparse_map<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    pax: &PaxSparse,
    gnu_old: bool,
    recorded: &[u8],
    name: &str,
) -> Result<(SparseMap, Vec<u8>), WalkError> {
    let refuse = |name: &str, reason: crate::sparse::SparseError| {
        WalkError::Visitor(format!("sparse file {name:?} in layer tar: {reason}"))
    };
    let mut map_raw = Vec::new();
    let map = if gnu_old {
        let segments = gnu_map(entry.header(), recorded).map_err(|r| refuse(name, r))?;
        SparseMap {
            real_size: entry.size(),
            segments,
        }
    } else {
        let in_data = pax.map_in_data().map_err(|r| refuse(name, r))?;
        let segments = if in_data {
            let (raw, segs) = read_map_1_0(entry).map_err(|r| refuse(name, r))?;
            map_raw = raw;
            segs
        } else {
            pairs(pax.map.as_deref().unwrap_or_default()).map_err(|r| refuse(name, r))?
        };
        let real_size = pax
            .real_size
            .ok_or_else(|| refuse(name, "no GNU.sparse.realsize/size".into()))?;
        SparseMap {
            real_size,
            segments,
        }
    };
    Ok((map, map_raw))
}

struct CountingRead<'a, R> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for CountingRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

fn toc_entry_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<TocEntry>, WalkError> {
    let header = entry.header();
    let raw_name = entry.path_bytes().into_owned();
    let (name, name_raw) = encode_name(&raw_name);
    let unsupported = |reason| WalkError::Unsupported {
        name: String::from_utf8_lossy(&raw_name).into_owned(),
        reason,
    };
    let kind = match header.entry_type() {
        EntryType::Regular | EntryType::Continuous => "reg",
        EntryType::Directory => "dir",
        EntryType::Symlink => "symlink",
        EntryType::Link => "hardlink",
        EntryType::Char => "char",
        EntryType::Block => "block",
        EntryType::Fifo => "fifo",
        EntryType::XGlobalHeader => return Ok(None),
        EntryType::GNUSparse => "reg",
        _ => return Err(unsupported("unknown tar entry type")),
    };
    // Empty (all-NUL) numeric fields read as 0, as GNU tar reads them.
    let int = |v: u64, reason| i64::try_from(v).map_err(|_| unsupported(reason));
    let mode = i64::from(header.mode().unwrap_or(0)) & 0o7777;
    let uid = int(header.uid().unwrap_or(0), "uid out of range")?;
    let gid = int(header.gid().unwrap_or(0), "gid out of range")?;
    let mtime = signed_time(header.mtime().unwrap_or(0));
    let mut meta = TocEntry {
        kind: kind.to_string(),
        name,
        name_raw,
        mode,
        uid,
        gid,
        modtime: Some(format_rfc3339(mtime, 0)),
        ..TocEntry::default()
    };
    if kind == "reg" {
        meta.size = int(entry.size(), "size out of range")?;
    }
    if kind == "char" || kind == "block" {
        meta.dev_major = header.device_major().ok().flatten().unwrap_or(0) as i64;
        meta.dev_minor = header.device_minor().ok().flatten().unwrap_or(0) as i64;
    }
    if let Some(link) = entry.link_name_bytes() {
        let (l, raw) = encode_name(&link);
        meta.link_name = l;
        meta.link_name_raw = raw;
    }
    if let Ok(Some(pax)) = entry.pax_extensions() {
        for ext in pax.flatten() {
            let key = ext.key_bytes();
            if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                meta.xattrs.insert(
                    String::from_utf8_lossy(attr).into_owned(),
                    B64.encode(ext.value_bytes()),
                );
            }
            if key == b"mtime"
                && let Some((s, ns)) = std::str::from_utf8(ext.value_bytes())
                    .ok()
                    .and_then(parse_pax_time)
            {
                meta.modtime = Some(format_rfc3339(s, ns));
            }
        }
    }
    Ok(Some(meta))
}

/// A tar time field: GNU tar stores times before 1970 in base-256 two's complement, which the
/// tar crate returns as the bits of a `u64`; read back as `i64` they are the signed time.
#[allow(clippy::cast_possible_wrap)]
fn signed_time(v: u64) -> i64 {
    v as i64
}

fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (s, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs = s.parse::<i64>().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    Some((secs, digits.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_that_is_not_tar_fails_without_its_bytes() {
        let elf: Vec<u8> = b"\x7fELF\x02\x01\x01\0"
            .iter()
            .copied()
            .chain((0..3000u32).map(|i| (i * 7 % 251) as u8))
            .collect();
        for (input, want) in [
            (elf, "a header fails its checksum"),
            (b"hello world\n".to_vec(), "truncated"),
        ] {
            let e = walk_tar(&input[..], &mut Collect::default()).unwrap_err();
            let s = e.to_string();
            assert!(s.contains(want), "{s}");
            assert!(
                s.chars()
                    .all(|c| !c.is_control() && c != char::REPLACEMENT_CHARACTER),
                "{s:?}"
            );
        }
    }

    #[derive(Default)]
    struct Collect {
        bytes: Vec<u8>,
        entries: Vec<TocEntry>,
    }

    impl TarVisitor for Collect {
        fn segment(&mut self, bytes: &[u8]) -> Result<(), WalkError> {
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }
        fn entry(&mut self, meta: TocEntry, payload: &mut dyn Read) -> Result<(), WalkError> {
            payload.read_to_end(&mut self.bytes)?;
            self.entries.push(meta);
            Ok(())
        }
    }

    #[test]
    fn walk_sees_every_byte_once() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o4755);
        h.set_entry_type(EntryType::Regular);
        b.append_data(&mut h, "a/very/".repeat(40) + "long-name", &b"hello"[..])
            .unwrap();
        let mut d = tar::Header::new_ustar();
        d.set_entry_type(EntryType::Directory);
        d.set_size(0);
        d.set_mode(0o755);
        b.append_data(&mut d, "dir/", io::empty()).unwrap();
        let tar = b.into_inner().unwrap();

        let mut c = Collect::default();
        let (digest, n) = walk_tar(&tar[..], &mut c).unwrap();
        assert_eq!(c.bytes, tar);
        assert_eq!(n, tar.len() as u64);
        assert_eq!(digest, Digest::of(&tar));
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.entries[0].kind, "reg");
        assert_eq!(c.entries[0].mode, 0o4755);
        assert!(c.entries[0].name.ends_with("long-name"));
        assert_eq!(c.entries[1].kind, "dir");
    }

    #[test]
    fn truncated_tar_is_an_error() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1000);
        b.append_data(&mut h, "f", &[1u8; 1000][..]).unwrap();
        let tar = b.into_inner().unwrap();
        let mut c = Collect::default();
        assert!(walk_tar(&tar[..700], &mut c).is_err());
    }
}
