//! SOCI for gzip layers, as pure functions: build a ztoc from a layer blob (checkpoints, span
//! digests, the tar's entries), read bytes of the uncompressed tar from fetched compressed
//! spans (each span checked against its digest before it is inflated), and turn a ztoc into
//! a [`LayerIndex`] whose chunks are pieces of spans.

use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::index::{Chunk, ChunkLoc, IndexError, Kind, LayerIndex, entry_of};
use crate::tarwalk::{TarVisitor, WalkError, encode_name, walk_tar};
use crate::toc::TocEntry;
use crate::zran::{self, ZranError};
use crate::ztoc::{FileMetadata, VERSION, Ztoc};
use strata_oci::digest::{Digest, Hasher};

/// SOCI's default span size (4 MiB of uncompressed output between checkpoints).
pub const DEFAULT_SPAN_SIZE: u64 = 4 << 20;
/// SOCI's default threshold: smaller layers get no ztoc and are fetched whole.
pub const DEFAULT_MIN_LAYER_SIZE: u64 = 10 << 20;
/// The prefix of PAX records that carry xattrs.
const XATTR_PREFIX: &str = "SCHILY.xattr.";
/// strata's build tool identifier in the ztocs it writes.
pub const BUILD_TOOL: &str = "strata";

/// Errors of SOCI layers.
#[derive(Debug, thiserror::Error)]
pub enum SociError {
    /// A span's compressed bytes do not hash to the ztoc's span digest.
    #[error(
        "span {span} ({start}..{end} of the layer) hashes to {actual}, the ztoc says {expected}"
    )]
    SpanDigest {
        /// Which span.
        span: usize,
        /// Its first byte in the blob.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The ztoc's digest.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// Fewer compressed bytes than the spans need.
    #[error("span {span} needs bytes {start}..{end} of the layer, got {got}")]
    ShortSpan {
        /// Which span.
        span: usize,
        /// Its first byte.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// How many bytes were given.
        got: u64,
    },
    /// Inflating or checkpointing failed.
    #[error(transparent)]
    Zran(#[from] ZranError),
    /// Walking the layer's tar failed.
    #[error("walking the layer tar: {0}")]
    Walk(#[from] WalkError),
    /// Reading the blob failed.
    #[error("reading the layer blob: {0}")]
    Io(#[from] io::Error),
    /// An entry of the ztoc cannot be indexed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The layer and the ztoc disagree.
    #[error("{0}")]
    Mismatch(String),
}

/// Records each tar entry with the offset of its content in the uncompressed stream.
#[derive(Default)]
struct Offsets {
    at: u64,
    files: Vec<FileMetadata>,
}

/// The raw bytes of a TOC name (base64 in `raw` when they are not UTF-8).
fn raw_name(name: &str, raw: &Option<String>) -> Vec<u8> {
    raw.as_ref()
        .and_then(|r| B64.decode(r).ok())
        .unwrap_or_else(|| name.as_bytes().to_vec())
}

fn metadata(meta: TocEntry, offset: u64) -> FileMetadata {
    let name = raw_name(&meta.name, &meta.name_raw);
    let linkname = raw_name(&meta.link_name, &meta.link_name_raw);
    let pax = meta
        .xattrs
        .iter()
        .map(|(k, v)| {
            let value = B64.decode(v).unwrap_or_default();
            (format!("{XATTR_PREFIX}{k}"), value)
        })
        .collect();
    FileMetadata {
        name,
        kind: meta.kind,
        uncompressed_offset: offset,
        uncompressed_size: u64::try_from(meta.size).unwrap_or(0),
        linkname,
        mode: meta.mode,
        uid: u32::try_from(meta.uid).unwrap_or(0),
        gid: u32::try_from(meta.gid).unwrap_or(0),
        uname: String::new(),
        gname: String::new(),
        mod_time: meta.modtime.unwrap_or_default(),
        devmajor: meta.dev_major,
        devminor: meta.dev_minor,
        pax,
    }
}

impl TarVisitor for Offsets {
    fn segment(&mut self, bytes: &[u8]) -> Result<(), WalkError> {
        self.at += bytes.len() as u64;
        Ok(())
    }

    fn entry(&mut self, meta: TocEntry, payload: &mut dyn Read) -> Result<(), WalkError> {
        self.files.push(metadata(meta, self.at));
        self.at += io::copy(payload, &mut io::sink())?;
        Ok(())
    }

    fn sparse(
        &mut self,
        meta: TocEntry,
        _map: &crate::sparse::SparseMap,
        _data: &mut dyn Read,
    ) -> Result<(), WalkError> {
        Err(WalkError::Unsupported {
            name: meta.name,
            reason: "a sparse file has no contiguous content for a SOCI index",
        })
    }
}

/// sha256 of each span's compressed bytes (spans overlap by one byte where a checkpoint lies
/// inside a byte).
fn span_digests<R: Read + Seek>(
    blob: &mut R,
    zinfo: &zran::Zinfo,
    size: u64,
) -> io::Result<Vec<Digest>> {
    let mut out = Vec::with_capacity(zinfo.checkpoints.len());
    let mut buf = vec![0u8; 1 << 16];
    for i in 0..zinfo.checkpoints.len() {
        let r = zinfo.span_range(i, size);
        blob.seek(SeekFrom::Start(r.start))?;
        let mut h = Hasher::default();
        let mut left = r.end - r.start;
        while left > 0 {
            let n = crate::num::up_to(left, buf.len());
            blob.read_exact(&mut buf[..n])?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        out.push(h.finish());
    }
    Ok(out)
}

/// Builds the ztoc of a gzip layer blob: one pass for checkpoints, one for the tar's entries,
/// one for the span digests.
pub fn build_ztoc<R: Read + Seek>(mut blob: R, span_size: u64) -> Result<Ztoc, SociError> {
    blob.seek(SeekFrom::Start(0))?;
    let built = zran::build(io::BufReader::new(&mut blob), span_size)?;
    blob.seek(SeekFrom::Start(0))?;
    let mut offsets = Offsets::default();
    let gz = flate2::read::MultiGzDecoder::new(io::BufReader::new(&mut blob));
    walk_tar(gz, &mut offsets)?;
    let span_digests = span_digests(&mut blob, &built.zinfo, built.compressed_size)?;
    Ok(Ztoc {
        version: VERSION.into(),
        build_tool: BUILD_TOOL.into(),
        compressed_size: built.compressed_size,
        uncompressed_size: built.uncompressed_size,
        files: offsets.files,
        span_digests,
        zinfo: built.zinfo,
    })
}

impl Ztoc {
    /// The spans that hold uncompressed bytes `range`, and the compressed range that covers
    /// them.
    pub fn spans_for(&self, range: Range<u64>) -> (Range<usize>, Range<u64>) {
        let first = self.zinfo.span_of(range.start);
        let last = self
            .zinfo
            .span_of(range.end.saturating_sub(1).max(range.start));
        let start = self.zinfo.span_range(first, self.compressed_size).start;
        let end = self.zinfo.span_range(last, self.compressed_size).end;
        (first..last + 1, start..end)
    }

    /// Checks span `i`'s compressed bytes against its digest. `data` holds the blob from
    /// offset `base`.
    pub fn verify_span(&self, i: usize, data: &[u8], base: u64) -> Result<(), SociError> {
        let r = self.zinfo.span_range(i, self.compressed_size);
        let got = base + data.len() as u64;
        let bytes = r
            .start
            .checked_sub(base)
            .and_then(|s| data.get(strata_oci::usize_of(s)..strata_oci::usize_of(r.end - base)))
            .ok_or(SociError::ShortSpan {
                span: i,
                start: r.start,
                end: r.end,
                got,
            })?;
        let actual = Digest::of(bytes);
        let expected = self.span_digests[i];
        if actual != expected {
            return Err(SociError::SpanDigest {
                span: i,
                start: r.start,
                end: r.end,
                expected,
                actual,
            });
        }
        Ok(())
    }

    /// Uncompressed bytes `range` of the tar, from `data`: the compressed bytes of the blob
    /// from `base` on, covering the spans [`Self::spans_for`] names. Every span is verified
    /// before anything is inflated.
    pub fn read(&self, data: &[u8], base: u64, range: Range<u64>) -> Result<Vec<u8>, SociError> {
        let (spans, _) = self.spans_for(range.clone());
        for i in spans.clone() {
            self.verify_span(i, data, base)?;
        }
        let point = &self.zinfo.checkpoints[spans.start];
        let from = strata_oci::usize_of(point.span_start() - base);
        let len = strata_oci::usize_of(range.end - range.start);
        Ok(zran::extract(&data[from..], point, range.start, len)?)
    }

    /// Checks the ztoc against the layer it is said to index.
    pub fn check_layer(&self, layer: &Digest, layer_size: u64) -> Result<(), SociError> {
        if self.compressed_size != layer_size {
            return Err(SociError::Mismatch(format!(
                "ztoc indexes a {}-byte layer, layer {layer} has {layer_size} bytes",
                self.compressed_size
            )));
        }
        Ok(())
    }

    /// The layer's index: entries as the tar has them, each regular file's content as chunks,
    /// one per span it touches, each located at that span (`ChunkLoc::Zran`) with the span's
    /// digest.
    pub fn layer_index(&self) -> Result<LayerIndex, SociError> {
        let mut entries = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let mut e = entry_of(&toc_entry(f))?;
            if e.kind == Kind::Reg {
                e.chunks = self.file_chunks(f);
            }
            entries.push(e);
        }
        Ok(LayerIndex { entries })
    }

    fn file_chunks(&self, f: &FileMetadata) -> Vec<Chunk> {
        let mut out = Vec::new();
        let (mut at, end) = (
            f.uncompressed_offset,
            f.uncompressed_offset + f.uncompressed_size,
        );
        while at < end {
            let span = self.zinfo.span_of(at);
            let output = self.zinfo.span_output(span, self.uncompressed_size);
            let piece_end = end.min(output.end.max(at + 1));
            let blob = self.zinfo.span_range(span, self.compressed_size);
            out.push(Chunk {
                file_offset: at - f.uncompressed_offset,
                len: piece_end - at,
                digest: Some(self.span_digests[span]),
                loc: ChunkLoc::Zran {
                    start: blob.start,
                    end: blob.end,
                    inner: at - output.start,
                },
            });
            at = piece_end;
        }
        out
    }
}

/// A ztoc entry in the shape of strata's TOC entries, to be checked by the one index builder.
fn toc_entry(f: &FileMetadata) -> TocEntry {
    let xattrs = f
        .pax
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(XATTR_PREFIX)
                .map(|name| (name.to_string(), B64.encode(v)))
        })
        .collect();
    let (name, name_raw) = encode_name(&f.name);
    let (link_name, link_name_raw) = encode_name(&f.linkname);
    TocEntry {
        kind: f.kind.clone(),
        name,
        name_raw,
        link_name,
        link_name_raw,
        mode: f.mode,
        size: i64::try_from(f.uncompressed_size).unwrap_or(i64::MAX),
        uid: i64::from(f.uid),
        gid: i64::from(f.gid),
        modtime: (!f.mod_time.is_empty()).then(|| f.mod_time.clone()),
        dev_major: f.devmajor,
        dev_minor: f.devminor,
        xattrs,
        ..TocEntry::default()
    }
}

#[cfg(test)]
#[path = "soci_tests.rs"]
mod tests;
