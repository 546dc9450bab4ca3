//! Writes eStargz layers (containerd/stargz-snapshotter's format) for `convert --format estargz`:
//! a `.no.prefetch.landmark` entry first, tar headers in their own gzip members, every payload
//! chunk its own gzip member, the TOC as the tar entry `stargz.index.json` in the last member,
//! then the 51-byte footer. The uncompressed stream is the input tar with the landmark and the
//! TOC entry added, so the diff_id changes.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use crate::chunked::CHUNK_BYTES;
use crate::estargz::{FOOTER_LEN, TOC_DIGEST_ANNOTATION, TOC_NAME};
use crate::num::toc_int;
use crate::tarwalk::{TarVisitor, WalkError, walk_tar};
use crate::toc::{Toc, TocEntry};
use strata_oci::digest::{Digest, Hasher, HashingWriter};

/// The landmark stargz-snapshotter writes when no files are prioritized.
const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// The landmark files' one byte of content.
const LANDMARK_CONTENT: u8 = 0x0f;

/// What writing an eStargz layer produced.
#[derive(Debug, Clone)]
pub struct WrittenEstargz {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// Digest of the uncompressed stream (the new diff_id).
    pub diff_id: Digest,
    /// sha256 of the uncompressed TOC JSON.
    pub toc_digest: Digest,
    /// Annotations to put on the layer descriptor.
    pub annotations: BTreeMap<String, String>,
}

struct Writer<W: Write> {
    out: HashingWriter<W>,
    diff: Hasher,
    level: flate2::Compression,
    /// Uncompressed bytes not yet in a member (headers, padding).
    pending: Vec<u8>,
    entries: Vec<TocEntry>,
    /// Bytes of segments since the last entry, and the payload padding among them.
    since_entry: usize,
    last_padding: usize,
}

impl<W: Write> Writer<W> {
    fn member(&mut self, data: &[u8]) -> io::Result<()> {
        self.diff.update(data);
        let mut gz = flate2::write::GzEncoder::new(&mut self.out, self.level);
        gz.write_all(data)?;
        gz.finish()?;
        Ok(())
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let p = std::mem::take(&mut self.pending);
            self.member(&p)?;
        }
        Ok(())
    }
}

impl<W: Write> TarVisitor for Writer<W> {
    fn segment(&mut self, bytes: &[u8]) -> Result<(), WalkError> {
        self.pending.extend_from_slice(bytes);
        self.since_entry += bytes.len();
        Ok(())
    }

    fn entry(&mut self, mut meta: TocEntry, payload: &mut dyn Read) -> Result<(), WalkError> {
        self.since_entry = 0;
        self.last_padding = 0;
        meta.offset = 0;
        meta.end_offset = 0;
        if meta.kind == "reg" && meta.size == 0 {
            // stargz-snapshotter's reader wants every regular file at its own member offset:
            // an empty file's is the member holding its header.
            meta.offset = toc_int(self.out.written(), &meta.name)?;
            self.flush_pending()?;
        }
        if meta.kind != "reg" || meta.size == 0 {
            self.entries.push(meta);
            return Ok(());
        }
        self.flush_pending()?;
        let mut file_hash = Hasher::default();
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut chunks: Vec<TocEntry> = Vec::new();
        let mut at = 0i64;
        loop {
            let n = read_full(payload, &mut buf)?;
            if n == 0 {
                break;
            }
            let data = &buf[..n];
            file_hash.update(data);
            chunks.push(TocEntry {
                kind: "chunk".into(),
                name: meta.name.clone(),
                name_raw: meta.name_raw.clone(),
                offset: toc_int(self.out.written(), &meta.name)?,
                chunk_offset: at,
                chunk_size: toc_int(n, &meta.name)?,
                chunk_digest: Some(Digest::of(data).to_string()),
                ..TocEntry::default()
            });
            self.member(data)?;
            at += toc_int(n, &meta.name)?;
        }
        if at != meta.size {
            return Err(WalkError::Visitor(format!(
                "{}: payload is {at} bytes, header says {}",
                meta.name, meta.size
            )));
        }
        // The last chunk says 0: "to the end of the file", as stargz-snapshotter writes it.
        if let Some(last) = chunks.last_mut() {
            last.chunk_size = 0;
        }
        let first = chunks.remove(0);
        meta.digest = Some(file_hash.finish().to_string());
        meta.offset = first.offset;
        meta.chunk_size = first.chunk_size;
        meta.chunk_digest = first.chunk_digest;
        self.entries.push(meta);
        self.entries.extend(chunks);
        let padding = (512 - at.rem_euclid(512)) % 512;
        self.last_padding = usize::try_from(padding).expect("tar padding is under 512 bytes");
        Ok(())
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One tar entry (header, content, padding) as bytes.
fn tar_entry(name: &str, content: &[u8]) -> io::Result<Vec<u8>> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    Ok(out)
}

/// The 51-byte footer: an empty gzip member whose extra field holds the TOC offset.
fn footer(toc_offset: u64) -> io::Result<Vec<u8>> {
    let mut extra = b"SG".to_vec();
    extra.extend_from_slice(&22u16.to_le_bytes());
    extra.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    let f = flate2::GzBuilder::new()
        .extra(extra)
        .write(Vec::new(), flate2::Compression::none())
        .finish()?;
    if f.len() as u64 != FOOTER_LEN {
        return Err(io::Error::other("eStargz footer is not 51 bytes"));
    }
    Ok(f)
}

/// Converts the tar stream `tar` into an eStargz blob written to `out`.
pub fn write_estargz<R: Read, W: Write>(
    tar: R,
    out: W,
    level: u32,
) -> Result<WrittenEstargz, WalkError> {
    let mut w = Writer {
        out: HashingWriter::new(out),
        diff: Hasher::default(),
        level: flate2::Compression::new(level.min(9)),
        pending: Vec::new(),
        entries: Vec::new(),
        since_entry: 0,
        last_padding: 0,
    };
    // The landmark: its header in one member, its byte starting the next (as every payload).
    let landmark = tar_entry(NO_PREFETCH_LANDMARK, &[LANDMARK_CONTENT])?;
    w.member(&landmark[..512])?;
    let landmark_at = toc_int(w.out.written(), NO_PREFETCH_LANDMARK)?;
    w.member(&landmark[512..513])?;
    w.pending.extend_from_slice(&landmark[513..]);
    w.entries.push(TocEntry {
        kind: "reg".into(),
        name: NO_PREFETCH_LANDMARK.into(),
        mode: 0o644,
        size: 1,
        offset: landmark_at,
        digest: Some(Digest::of(&[LANDMARK_CONTENT]).to_string()),
        chunk_digest: Some(Digest::of(&[LANDMARK_CONTENT]).to_string()),
        ..TocEntry::default()
    });
    walk_tar(tar, &mut w)?;
    // Keep the last payload's padding, drop the end-of-archive blocks: the TOC entry follows.
    let eof = w.since_entry.saturating_sub(w.last_padding);
    let keep = w.pending.len().saturating_sub(eof);
    w.pending.truncate(keep);
    w.flush_pending()?;

    let toc_offset = w.out.written();
    let toc = Toc {
        version: 1,
        entries: std::mem::take(&mut w.entries),
        tar_split_digest: None,
    };
    let json = serde_json::to_vec(&toc).map_err(|e| WalkError::Visitor(e.to_string()))?;
    let toc_digest = Digest::of(&json);
    let mut last = tar_entry(TOC_NAME, &json)?;
    last.extend_from_slice(&[0u8; 1024]);
    w.member(&last)?;
    let f = footer(toc_offset)?;
    w.out.write_all(&f)?;
    let (mut out, digest, size) = w.out.finish();
    out.flush()?;
    let mut annotations = BTreeMap::new();
    annotations.insert(TOC_DIGEST_ANNOTATION.to_string(), toc_digest.to_string());
    Ok(WrittenEstargz {
        digest,
        size,
        diff_id: w.diff.finish(),
        toc_digest,
        annotations,
    })
}

// Test data and blobs are a few hundred KiB: their sizes and offsets fit every integer type.
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::estargz::{extract_toc_json, index, parse_footer};
    use crate::index::ChunkLoc;

    #[test]
    fn blob_is_gzip_of_the_tar_and_indexes() {
        let mut b = tar::Builder::new(Vec::new());
        let big: Vec<u8> = (0..CHUNK_BYTES * 2 + 9).map(|i| (i % 13) as u8).collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(big.len() as u64);
        h.set_mode(0o755);
        b.append_data(&mut h, "bin/big", &big[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/small", &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/empty", &b""[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let mut blob = Vec::new();
        let w = write_estargz(&tar[..], &mut blob, 6).unwrap();
        assert_eq!(w.digest, Digest::of(&blob));

        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(w.diff_id, Digest::of(&plain));
        let names: Vec<String> = tar::Archive::new(&plain[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                NO_PREFETCH_LANDMARK,
                "bin/big",
                "etc/small",
                "etc/empty",
                TOC_NAME
            ]
        );

        let at = blob.len() - FOOTER_LEN as usize;
        let toc_offset = parse_footer(&blob[at..]).unwrap();
        let json = extract_toc_json(&blob[toc_offset as usize..at]).unwrap();
        assert_eq!(Digest::of(&json), w.toc_digest);
        let idx = index(&json, toc_offset).unwrap();
        assert_eq!(idx.entries.len(), 3, "landmark hidden");
        let f = &idx.entries[0];
        assert_eq!(f.chunks.len(), 3);
        for c in &f.chunks {
            let ChunkLoc::Gzip { start, end, inner } = c.loc else {
                panic!("not gzip")
            };
            let mut data = Vec::new();
            flate2::read::MultiGzDecoder::new(&blob[start as usize..end as usize])
                .read_to_end(&mut data)
                .unwrap();
            let data = &data[inner as usize..(inner + c.len) as usize];
            assert_eq!(
                data,
                &big[c.file_offset as usize..(c.file_offset + c.len) as usize]
            );
        }
    }
}
