//! Writes the native lazy layer format: a zstd:chunked layer (see DESIGN.md §2). The blob is
//! ordinary `tar+zstd`: zstd frames over the exact bytes of the input tar, where tar headers sit
//! in their own frames and every file chunk starts a new frame; then three skippable frames hold
//! the zstd-compressed TOC, the zstd-compressed tar-split and the footer.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use crate::num::{toc_int, up_to};
use crate::sparse::SparseMap;
use crate::tarsplit::{CRC64, TarSplit};
use crate::tarwalk::{TarVisitor, WalkError, walk_tar};
use crate::toc::{
    ANNOTATION_TARSPLIT_CHECKSUM, ANNOTATION_TARSPLIT_POSITION, ANNOTATION_TOC_CHECKSUM,
    ANNOTATION_TOC_CHECKSUM_V1, ANNOTATION_TOC_POSITION, ANNOTATION_TOC_POSITION_V1, Footer,
    Position, SKIPPABLE_MAGIC, Toc, TocEntry,
};
use strata_oci::digest::{Digest, Hasher, HashingWriter};

/// Uncompressed size of one chunk of a large file; smaller files are one chunk.
pub const CHUNK_BYTES: usize = 128 * 1024;
/// Zero runs shorter than this are compressed as ordinary data, longer ones are marked holes.
const MIN_ZERO_CHUNK: usize = 1024;

/// What writing a layer produced.
#[derive(Debug, Clone)]
pub struct WrittenLayer {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// Digest of the uncompressed tar (the config's diff_id).
    pub diff_id: Digest,
    /// Annotations to put on the layer descriptor.
    pub annotations: BTreeMap<String, String>,
    /// The TOC written into the blob.
    pub toc: Toc,
    /// Digest of the compressed TOC frame.
    pub toc_digest: Digest,
    /// The compressed TOC frame as written into the blob.
    pub toc_compressed: Vec<u8>,
    /// Where the compressed TOC sits in the blob.
    pub toc_position: Position,
}

/// Converts the tar stream `tar` into a zstd:chunked blob written to `out`.
pub fn write_chunked<R: Read, W: Write>(
    tar: R,
    out: W,
    level: i32,
) -> Result<WrittenLayer, WalkError> {
    let mut w = ChunkedWriter {
        out: HashingWriter::new(out),
        pending: Vec::new(),
        entries: Vec::new(),
        split: TarSplit::default(),
        compressor: zstd::bulk::Compressor::new(level)?,
    };
    let (diff_id, _) = walk_tar(tar, &mut w)?;
    w.flush_pending()?;

    let split = zstd::bulk::compress(&std::mem::take(&mut w.split).into_bytes(), level)?;
    let split_uncompressed = zstd::zstd_safe::get_frame_content_size(&split)
        .ok()
        .flatten()
        .unwrap_or(0);
    let split_digest = Digest::of(&split);
    let toc = Toc {
        version: 1,
        entries: std::mem::take(&mut w.entries),
        tar_split_digest: Some(split_digest.to_string()),
    };
    let toc_json = serde_json::to_vec(&toc).map_err(|e| WalkError::Visitor(e.to_string()))?;
    let toc_compressed = zstd::bulk::compress(&toc_json, level)?;
    let toc_digest = Digest::of(&toc_compressed);

    let toc_pos = Position {
        offset: w.out.written() + 8,
        compressed: toc_compressed.len() as u64,
        uncompressed: toc_json.len() as u64,
    };
    write_skippable(&mut w.out, &toc_compressed)?;
    let split_pos = Position {
        offset: w.out.written() + 8,
        compressed: split.len() as u64,
        uncompressed: split_uncompressed,
    };
    write_skippable(&mut w.out, &split)?;
    let footer = Footer {
        toc: toc_pos,
        tar_split: Some(split_pos),
    };
    write_skippable(&mut w.out, &footer.encode())?;
    let (mut out, digest, size) = w.out.finish();
    out.flush()?;

    let annotations = layer_annotations(&toc_pos, &toc_digest, &split_pos, &split_digest);
    Ok(WrittenLayer {
        digest,
        size,
        diff_id,
        annotations,
        toc,
        toc_digest,
        toc_compressed,
        toc_position: toc_pos,
    })
}

/// The layer descriptor's annotations that locate the TOC and the tar-split in the blob, under
/// both generations' names (containers/storage `pkg/chunked`): podman 4.3 (Debian 12) knows
/// only the older ones and pulls the layer whole without them.
fn layer_annotations(
    toc_pos: &Position,
    toc_digest: &Digest,
    split_pos: &Position,
    split_digest: &Digest,
) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::new();
    let position = format!(
        "{}:{}:{}:1",
        toc_pos.offset, toc_pos.compressed, toc_pos.uncompressed
    );
    for (key, old_key) in [
        (ANNOTATION_TOC_CHECKSUM, ANNOTATION_TOC_CHECKSUM_V1),
        (ANNOTATION_TOC_POSITION, ANNOTATION_TOC_POSITION_V1),
    ] {
        let value = if key == ANNOTATION_TOC_CHECKSUM {
            toc_digest.to_string()
        } else {
            position.clone()
        };
        annotations.insert(old_key.to_string(), value.clone());
        annotations.insert(key.to_string(), value);
    }
    annotations.insert(
        ANNOTATION_TARSPLIT_POSITION.to_string(),
        format!(
            "{}:{}:{}",
            split_pos.offset, split_pos.compressed, split_pos.uncompressed
        ),
    );
    annotations.insert(
        ANNOTATION_TARSPLIT_CHECKSUM.to_string(),
        split_digest.to_string(),
    );
    annotations
}

fn write_skippable<W: Write>(out: &mut W, data: &[u8]) -> io::Result<()> {
    out.write_all(&SKIPPABLE_MAGIC.to_le_bytes())?;
    let len = u32::try_from(data.len())
        .map_err(|_| io::Error::other("skippable frame larger than 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(data)
}

struct ChunkedWriter<W: Write> {
    out: HashingWriter<W>,
    /// Header bytes not yet written: consecutive entries without payload share one frame.
    pending: Vec<u8>,
    entries: Vec<TocEntry>,
    split: TarSplit,
    compressor: zstd::bulk::Compressor<'static>,
}

impl<W: Write> ChunkedWriter<W> {
    fn flush_pending(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let frame = self.compressor.compress(&self.pending)?;
            self.out.write_all(&frame)?;
            self.pending.clear();
        }
        Ok(())
    }
}

impl<W: Write> TarVisitor for ChunkedWriter<W> {
    fn segment(&mut self, bytes: &[u8]) -> Result<(), WalkError> {
        self.pending.extend_from_slice(bytes);
        self.split.segment(bytes);
        Ok(())
    }

    fn entry(&mut self, mut meta: TocEntry, payload: &mut dyn Read) -> Result<(), WalkError> {
        if meta.kind != "reg" || meta.size == 0 {
            self.split
                .file(&meta.name, meta.name_raw.as_deref(), 0, None);
            self.entries.push(meta);
            return Ok(());
        }
        self.flush_pending()?;
        let mut file_hash = Hasher::default();
        let mut crc = CRC64.digest();
        let mut chunks: Vec<TocEntry> = Vec::new();
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut file_offset = 0i64;
        loop {
            let n = read_full(payload, &mut buf)?;
            if n == 0 {
                break;
            }
            let data = &buf[..n];
            file_hash.update(data);
            crc.update(data);
            let start = toc_int(self.out.written(), &meta.name)?;
            let frame = self.compressor.compress(data)?;
            self.out.write_all(&frame)?;
            let zeros = n >= MIN_ZERO_CHUNK && data.iter().all(|b| *b == 0);
            chunks.push(TocEntry {
                kind: "chunk".into(),
                name: meta.name.clone(),
                name_raw: meta.name_raw.clone(),
                offset: start,
                end_offset: toc_int(self.out.written(), &meta.name)?,
                chunk_size: toc_int(n, &meta.name)?,
                chunk_offset: file_offset,
                chunk_digest: Some(Digest::of(data).to_string()),
                chunk_type: zeros.then(|| "zeros".to_string()),
                ..TocEntry::default()
            });
            file_offset += toc_int(n, &meta.name)?;
        }
        if file_offset != meta.size {
            return Err(WalkError::Visitor(format!(
                "{}: payload is {file_offset} bytes, header says {}",
                meta.name, meta.size
            )));
        }
        let first = &chunks[0];
        meta.digest = Some(file_hash.finish().to_string());
        meta.offset = first.offset;
        meta.end_offset = chunks[chunks.len() - 1].end_offset;
        if chunks.len() > 1 {
            meta.chunk_size = first.chunk_size;
            meta.chunk_digest = first.chunk_digest.clone();
            meta.chunk_type = first.chunk_type.clone();
        }
        self.split.file(
            &meta.name,
            meta.name_raw.as_deref(),
            meta.size,
            Some(crc.finalize()),
        );
        self.entries.push(meta);
        if chunks.len() > 1 {
            self.entries.extend(chunks.into_iter().skip(1));
        }
        Ok(())
    }

    /// The archive holds only the data segments: each becomes frames of its own, each hole a
    /// zeros chunk without a frame, so the blob still decompresses to the exact input tar.
    /// tar-split records the data as raw bytes (a file record of size 0), since the file on
    /// disk is not what the archive holds.
    fn sparse(
        &mut self,
        mut meta: TocEntry,
        map: &SparseMap,
        data: &mut dyn Read,
    ) -> Result<(), WalkError> {
        self.flush_pending()?;
        self.split
            .file(&meta.name, meta.name_raw.as_deref(), 0, None);
        let mut file_hash = Hasher::default();
        let mut chunks: Vec<TocEntry> = Vec::new();
        let mut at = 0u64;
        for &(off, len) in &map.segments {
            if off > at {
                let pos = toc_int(self.out.written(), &meta.name)?;
                chunks.push(hole(&meta, pos, at, off - at, &mut file_hash)?);
            }
            let off_toc = toc_int(off, &meta.name)?;
            self.data_frames(&meta, off_toc, len, data, &mut file_hash, &mut chunks)?;
            at = off + len;
        }
        if map.real_size > at {
            let pos = toc_int(self.out.written(), &meta.name)?;
            let len = map.real_size - at;
            chunks.push(hole(&meta, pos, at, len, &mut file_hash)?);
        }
        meta.digest = Some(file_hash.finish().to_string());
        if let Some(first) = chunks.first() {
            let mut frames = chunks.iter().filter(|c| c.chunk_type.is_none());
            meta.offset = frames.clone().next().map_or(first.offset, |c| c.offset);
            meta.end_offset = frames
                .next_back()
                .map_or(first.end_offset, |c| c.end_offset);
            meta.chunk_size = first.chunk_size;
            meta.chunk_digest = first.chunk_digest.clone();
            meta.chunk_type = first.chunk_type.clone();
        }
        self.entries.push(meta);
        self.entries.extend(chunks.into_iter().skip(1));
        Ok(())
    }
}

impl<W: Write> ChunkedWriter<W> {
    /// Writes `data` (part of a file at `file_offset`) as frames of at most [`CHUNK_BYTES`], one
    /// chunk entry each; returns the bytes written.
    fn data_frames(
        &mut self,
        meta: &TocEntry,
        mut file_offset: i64,
        len: u64,
        data: &mut dyn Read,
        file_hash: &mut Hasher,
        chunks: &mut Vec<TocEntry>,
    ) -> Result<(), WalkError> {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut left = len;
        while left > 0 {
            let want = up_to(left, CHUNK_BYTES);
            let n = read_full(data, &mut buf[..want])?;
            if n < want {
                return Err(WalkError::Visitor(format!(
                    "{}: sparse data ends early",
                    meta.name
                )));
            }
            let piece = &buf[..n];
            file_hash.update(piece);
            self.split.segment(piece);
            let start = toc_int(self.out.written(), &meta.name)?;
            let frame = self.compressor.compress(piece)?;
            self.out.write_all(&frame)?;
            chunks.push(TocEntry {
                kind: "chunk".into(),
                name: meta.name.clone(),
                name_raw: meta.name_raw.clone(),
                offset: start,
                end_offset: toc_int(self.out.written(), &meta.name)?,
                chunk_size: toc_int(n, &meta.name)?,
                chunk_offset: file_offset,
                chunk_digest: Some(Digest::of(piece).to_string()),
                ..TocEntry::default()
            });
            file_offset += toc_int(n, &meta.name)?;
            left -= n as u64;
        }
        Ok(())
    }
}

/// A hole of `len` bytes at `file_offset`: a zeros chunk with no frame (its digest is of zeros).
fn hole(
    meta: &TocEntry,
    at_blob: i64,
    file_offset: u64,
    len: u64,
    hash: &mut Hasher,
) -> io::Result<TocEntry> {
    let zeros = vec![0u8; CHUNK_BYTES];
    let mut chunk = Hasher::default();
    let mut left = len;
    while left > 0 {
        let n = up_to(left, CHUNK_BYTES);
        hash.update(&zeros[..n]);
        chunk.update(&zeros[..n]);
        left -= n as u64;
    }
    Ok(TocEntry {
        kind: "chunk".into(),
        name: meta.name.clone(),
        name_raw: meta.name_raw.clone(),
        offset: at_blob,
        end_offset: at_blob,
        chunk_size: toc_int(len, &meta.name)?,
        chunk_offset: toc_int(file_offset, &meta.name)?,
        chunk_digest: Some(chunk.finish().to_string()),
        chunk_type: Some("zeros".into()),
        ..TocEntry::default()
    })
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

// Test data and blobs are a few hundred KiB: their sizes and offsets fit every integer type.
#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]
mod tests {
    use super::*;
    use crate::toc::{TocAnnotations, decode_toc};

    fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("small.txt", b"hello world\n");
        let big: Vec<u8> = (0..(CHUNK_BYTES * 3 + 77))
            .map(|i| (i % 251) as u8)
            .collect();
        add("big.bin", &big);
        add("holes.bin", &vec![0u8; CHUNK_BYTES * 2]);
        add("empty", b"");
        b.into_inner().unwrap()
    }

    #[test]
    fn blob_is_plain_tar_zstd_and_toc_is_findable() {
        let tar = sample_tar();
        let mut blob = Vec::new();
        let w = write_chunked(&tar[..], &mut blob, 3).unwrap();
        assert_eq!(w.diff_id, Digest::of(&tar));
        assert_eq!(w.digest, Digest::of(&blob));
        assert_eq!(w.size, blob.len() as u64);

        // Any zstd decoder sees the exact original tar (skippable frames are skipped).
        let plain = zstd::stream::decode_all(&blob[..]).unwrap();
        assert_eq!(plain, tar);

        // Footer and annotations agree, and locate the TOC.
        let footer = Footer::decode(&blob).unwrap();
        let ann = TocAnnotations::parse(&w.annotations).unwrap().unwrap();
        assert_eq!(ann.toc, footer.toc);
        for (new, old) in [
            (ANNOTATION_TOC_CHECKSUM, ANNOTATION_TOC_CHECKSUM_V1),
            (ANNOTATION_TOC_POSITION, ANNOTATION_TOC_POSITION_V1),
        ] {
            assert_eq!(w.annotations[new], w.annotations[old], "{old}");
        }
        let p = footer.toc;
        let toc_bytes = &blob[p.offset as usize..(p.offset + p.compressed) as usize];
        assert_eq!(Digest::of(toc_bytes), ann.toc_digest.unwrap());
        let toc = decode_toc(toc_bytes, p.uncompressed).unwrap();
        assert_eq!(toc.entries.len(), w.toc.entries.len());

        // Every chunk's frame decompresses on its own to bytes matching its digest.
        let big = toc.entries.iter().find(|e| e.name == "big.bin").unwrap();
        assert_eq!(big.chunk_size, CHUNK_BYTES as i64);
        let chunks: Vec<_> = toc.entries.iter().filter(|e| e.kind == "chunk").collect();
        assert_eq!(
            chunks.len(),
            3 + 1,
            "big.bin: 3 more chunks; holes.bin: 1 more"
        );
        for c in &chunks {
            let frame = &blob[c.offset as usize..c.end_offset as usize];
            let data = zstd::bulk::decompress(frame, CHUNK_BYTES).unwrap();
            assert_eq!(data.len() as i64, c.chunk_size);
            assert_eq!(
                Digest::of(&data).to_string(),
                c.chunk_digest.clone().unwrap()
            );
        }
        let holes = toc.entries.iter().find(|e| e.name == "holes.bin").unwrap();
        assert_eq!(holes.chunk_type.as_deref(), Some("zeros"));
    }
}
