//! A small eStargz writer for tests: every file payload chunk is its own gzip member, the TOC
//! (`stargz.index.json`) is the last tar entry, then the 51-byte footer. Entry metadata comes from
//! strata's tar walk (the reader under test is the eStargz TOC and gzip-member path).

use std::io::{Read, Write};

use strata_formats::tarwalk::{TarVisitor, WalkError, walk_tar};
use strata_formats::toc::TocEntry;

use crate::sha;

/// Uncompressed size of a chunk (small, so that test files have several).
pub const CHUNK: usize = 64 * 1024;

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[derive(Default)]
struct Writer {
    out: Vec<u8>,
    pending: Vec<u8>,
    entries: Vec<TocEntry>,
    last_segment: usize,
    last_padding: usize,
}

impl Writer {
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let m = gz(&self.pending);
            self.out.extend_from_slice(&m);
            self.pending.clear();
        }
    }
}

impl TarVisitor for Writer {
    fn segment(&mut self, bytes: &[u8]) -> Result<(), WalkError> {
        self.pending.extend_from_slice(bytes);
        self.last_segment = bytes.len();
        Ok(())
    }

    fn entry(&mut self, mut meta: TocEntry, payload: &mut dyn Read) -> Result<(), WalkError> {
        self.last_padding = 0;
        if meta.kind != "reg" || meta.size == 0 {
            self.entries.push(meta);
            return Ok(());
        }
        self.flush();
        let mut data = Vec::new();
        payload.read_to_end(&mut data)?;
        meta.digest = Some(sha(&data));
        let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
        let mut extra = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let offset = i64::try_from(self.out.len()).unwrap();
            self.out.extend_from_slice(&gz(c));
            if i == 0 {
                meta.offset = offset;
                if chunks.len() > 1 {
                    meta.chunk_size = i64::try_from(c.len()).unwrap();
                    meta.chunk_digest = Some(sha(c));
                }
            } else {
                extra.push(TocEntry {
                    kind: "chunk".into(),
                    name: meta.name.clone(),
                    offset,
                    chunk_offset: i64::try_from(i * CHUNK).unwrap(),
                    // The last chunk says 0: "to the end of the file".
                    chunk_size: if i + 1 == chunks.len() {
                        0
                    } else {
                        i64::try_from(c.len()).unwrap()
                    },
                    chunk_digest: Some(sha(c)),
                    ..TocEntry::default()
                });
            }
        }
        self.last_padding = (512 - data.len() % 512) % 512;
        self.entries.push(meta);
        self.entries.extend(extra);
        Ok(())
    }
}

/// Converts a tar into an eStargz blob; returns the blob, the TOC digest annotation and the
/// diff_id (the eStargz tar includes the TOC entry, so it differs from the input's).
pub fn estargz(tar: &[u8]) -> (Vec<u8>, String, String) {
    let mut w = Writer::default();
    walk_tar(tar, &mut w).unwrap();
    // Drop the end-of-archive blocks: the TOC entry comes last, then new ones.
    let eof = w.last_segment - w.last_padding;
    w.pending.truncate(w.pending.len() - eof);
    w.flush();
    let toc_offset = w.out.len() as u64;
    let json =
        serde_json::to_vec(&serde_json::json!({"version": 1, "entries": w.entries})).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "stargz.index.json", &json[..])
        .unwrap();
    w.out.extend_from_slice(&gz(&b.into_inner().unwrap()));
    let mut extra = b"SG".to_vec();
    extra.extend_from_slice(&22u16.to_le_bytes());
    extra.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    let footer = flate2::GzBuilder::new()
        .extra(extra)
        .write(Vec::new(), flate2::Compression::none())
        .finish()
        .unwrap();
    assert_eq!(footer.len(), 51);
    w.out.extend_from_slice(&footer);
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(&w.out[..])
        .read_to_end(&mut plain)
        .unwrap();
    (w.out, sha(&json), sha(&plain))
}
