//! SOCI for gzip layers, as pure functions: build a ztoc from a layer blob (checkpoints, span
//! digests, the tar's entries), read bytes of the uncompressed tar from fetched compressed
//! spans (each span checked against its digest before it is inflated), and turn a ztoc into
//! a [`LayerIndex`] whose chunks are pieces of spans.

use std::io::{self, Read};
use std::ops::Range;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::index::{Chunk, ChunkLoc, IndexError, Kind, LayerIndex, entry_of};
use crate::tarwalk::{TarVisitor, WalkError, encode_name, walk_tar};
use crate::toc::TocEntry;
use crate::zran::{self, ZranError};
use crate::zran_stream::{GzipIndexer, Indexed};
use crate::ztoc::{FileMetadata, VERSION, Ztoc};
use strata_oci::digest::Digest;

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

/// The raw bytes of a TOC name (base64 in `raw` when they are not UTF-8).
pub(crate) fn raw_name(name: &str, raw: &Option<String>) -> Vec<u8> {
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

/// Wraps a tar visitor and notes every entry with the offset of its content in the
/// uncompressed stream: the TOC of a ztoc, built in the same pass as whatever `inner` does. A
/// sparse file (no contiguous content to point at) is passed on to `inner` and leaves no TOC.
pub struct ZtocFiles<V> {
    inner: V,
    at: u64,
    files: Vec<FileMetadata>,
    sparse: Option<String>,
}

impl<V: TarVisitor> ZtocFiles<V> {
    /// Wraps `inner`.
    pub fn new(inner: V) -> Self {
        Self {
            inner,
            at: 0,
            files: Vec::new(),
            sparse: None,
        }
    }

    /// The wrapped visitor, and the entries (or the error a sparse file makes of them).
    pub fn into_parts(self) -> (V, Result<Vec<FileMetadata>, WalkError>) {
        let files = match self.sparse {
            None => Ok(self.files),
            Some(name) => Err(WalkError::Unsupported {
                name,
                reason: "a sparse file has no contiguous content for a SOCI index",
            }),
        };
        (self.inner, files)
    }
}

/// Counts what a visitor reads of a payload.
struct Counted<'a> {
    inner: &'a mut dyn Read,
    n: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

impl<V: TarVisitor> TarVisitor for ZtocFiles<V> {
    fn segment(&mut self, bytes: &[u8]) -> Result<(), WalkError> {
        self.at += bytes.len() as u64;
        self.inner.segment(bytes)
    }

    fn entry(&mut self, meta: TocEntry, payload: &mut dyn Read) -> Result<(), WalkError> {
        self.files.push(metadata(meta.clone(), self.at));
        let mut counted = Counted {
            inner: payload,
            n: 0,
        };
        self.inner.entry(meta, &mut counted)?;
        self.at += counted.n;
        Ok(())
    }

    fn sparse(
        &mut self,
        meta: TocEntry,
        map: &crate::sparse::SparseMap,
        data: &mut dyn Read,
    ) -> Result<(), WalkError> {
        self.sparse.get_or_insert_with(|| meta.name.clone());
        self.inner.sparse(meta, map, data)
    }
}

/// A visitor that only reads the payloads.
struct Skip;

impl TarVisitor for Skip {
    fn segment(&mut self, _bytes: &[u8]) -> Result<(), WalkError> {
        Ok(())
    }

    fn entry(&mut self, _meta: TocEntry, payload: &mut dyn Read) -> Result<(), WalkError> {
        io::copy(payload, &mut io::sink())?;
        Ok(())
    }

    fn sparse(
        &mut self,
        _meta: TocEntry,
        _map: &crate::sparse::SparseMap,
        data: &mut dyn Read,
    ) -> Result<(), WalkError> {
        io::copy(data, &mut io::sink())?;
        Ok(())
    }
}

/// The ztoc of a layer from one pass of [`GzipIndexer`] and [`ZtocFiles`] over it.
pub fn ztoc_of(gz: Indexed, files: Vec<FileMetadata>) -> Ztoc {
    Ztoc {
        version: VERSION.into(),
        build_tool: BUILD_TOOL.into(),
        compressed_size: gz.compressed_size,
        uncompressed_size: gz.uncompressed_size,
        files,
        span_digests: gz.span_digests,
        zinfo: gz.zinfo,
    }
}

/// Builds the ztoc of a gzip layer blob in one pass: checkpoints and span digests as it
/// inflates, the tar's entries as it walks the output.
pub fn build_ztoc<R: Read>(blob: R, span_size: u64) -> Result<Ztoc, SociError> {
    let mut gz = GzipIndexer::new(io::BufReader::new(blob), span_size)?;
    let mut visitor = ZtocFiles::new(Skip);
    walk_tar(&mut gz, &mut visitor)?;
    let (_, files) = visitor.into_parts();
    let files = files?;
    Ok(ztoc_of(gz.finish()?, files))
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
        self.pieces(f.uncompressed_offset..f.uncompressed_offset + f.uncompressed_size)
    }

    /// Uncompressed bytes `range` of the tar as chunks, one per span it touches, each located
    /// at that span (`ChunkLoc::Zran`) with the span's digest; offsets from `range.start`.
    pub fn pieces(&self, range: Range<u64>) -> Vec<Chunk> {
        let mut out = Vec::new();
        let (mut at, end) = (range.start, range.end);
        while at < end {
            let span = self.zinfo.span_of(at);
            let output = self.zinfo.span_output(span, self.uncompressed_size);
            let piece_end = end.min(output.end.max(at + 1));
            let blob = self.zinfo.span_range(span, self.compressed_size);
            out.push(Chunk {
                file_offset: at - range.start,
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
