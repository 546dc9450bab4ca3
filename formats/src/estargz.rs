//! eStargz layers (containerd/stargz-snapshotter): gzip members, one per file payload or chunk;
//! the TOC is the tar entry `stargz.index.json` in the last member before a 51-byte footer.

use std::collections::BTreeSet;
use std::io::Read;

use crate::index::{IndexError, LayerIndex, Locations};
use crate::toc::{Toc, TocError};

/// Annotation holding the sha256 of the uncompressed TOC JSON.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Size of the footer.
pub const FOOTER_LEN: u64 = 51;
/// Name of the TOC entry.
pub const TOC_NAME: &str = "stargz.index.json";
/// Marker files that only order the prefetch region; never shown in the tree.
const LANDMARKS: [&str; 2] = [".prefetch.landmark", ".no.prefetch.landmark"];

/// Reads the TOC offset from the footer (an empty gzip member whose extra field is
/// `SG` + `%016x` offset + `STARGZ`).
pub fn parse_footer(footer: &[u8]) -> Result<u64, TocError> {
    let bad = TocError::Footer;
    if footer.len() as u64 != FOOTER_LEN || footer[0] != 0x1f || footer[1] != 0x8b {
        return Err(bad("eStargz footer is not a gzip member"));
    }
    if footer[3] & 0x04 == 0 {
        return Err(bad("eStargz footer has no extra field"));
    }
    // header (10) + XLEN (2) + subfield id "SG" (2) + subfield length (2), then the payload.
    if &footer[12..14] != b"SG" {
        return Err(bad("eStargz footer extra field is not SG"));
    }
    let payload = &footer[16..38];
    if &payload[16..22] != b"STARGZ" {
        return Err(bad("eStargz footer has no STARGZ magic"));
    }
    let hex =
        std::str::from_utf8(&payload[..16]).map_err(|_| bad("eStargz TOC offset is not hex"))?;
    u64::from_str_radix(hex, 16).map_err(|_| bad("eStargz TOC offset is not hex"))
}

/// Extracts the TOC JSON from the bytes between the TOC offset and the footer.
pub fn extract_toc_json(member: &[u8]) -> Result<Vec<u8>, TocError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(member));
    let entries = archive
        .entries()
        .map_err(|e| TocError::Parse(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| TocError::Parse(e.to_string()))?;
        let is_toc = entry.path_bytes().as_ref() == TOC_NAME.as_bytes();
        if is_toc {
            let mut json = Vec::new();
            entry
                .by_ref()
                .take(1 << 30)
                .read_to_end(&mut json)
                .map_err(|e| TocError::Parse(e.to_string()))?;
            return Ok(json);
        }
    }
    Err(TocError::Parse(format!("no {TOC_NAME} in the TOC member")))
}

/// Builds the index of an eStargz TOC; `toc_offset` ends the last chunk's member range.
pub fn index(json: &[u8], toc_offset: u64) -> Result<LayerIndex, IndexError> {
    let parse_err = |e: String| IndexError::Entry {
        name: TOC_NAME.into(),
        reason: e,
    };
    let mut toc: Toc = serde_json::from_slice(json).map_err(|e| parse_err(e.to_string()))?;
    toc.entries
        .retain(|e| !LANDMARKS.contains(&e.name.trim_start_matches("./")));
    // A member ends where the next distinct member starts (or at the TOC).
    let mut starts: BTreeSet<i64> = toc
        .entries
        .iter()
        .filter(|e| (e.kind == "reg" && e.size > 0) || e.kind == "chunk")
        .map(|e| e.offset)
        .collect();
    let toc_at = i64::try_from(toc_offset)
        .map_err(|_| parse_err(format!("TOC offset {toc_offset} out of range")))?;
    starts.insert(toc_at);
    for e in &mut toc.entries {
        if (e.kind == "reg" && e.size > 0) || e.kind == "chunk" {
            e.end_offset = starts
                .range(e.offset + 1..)
                .next()
                .copied()
                .ok_or_else(|| parse_err(format!("entry {} starts after the TOC", e.name)))?;
        }
    }
    LayerIndex::from_toc(&toc, Locations::Gzip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ChunkLoc;

    fn footer(offset: u64) -> Vec<u8> {
        let mut extra = b"SG".to_vec();
        extra.extend_from_slice(&22u16.to_le_bytes());
        extra.extend_from_slice(format!("{offset:016x}STARGZ").as_bytes());
        let gz = flate2::GzBuilder::new()
            .extra(extra)
            .write(Vec::new(), flate2::Compression::none());
        gz.finish().unwrap()
    }

    #[test]
    fn reads_footer_and_index() {
        let f = footer(0x1234);
        assert_eq!(f.len() as u64, FOOTER_LEN);
        assert_eq!(parse_footer(&f).unwrap(), 0x1234);
        assert!(parse_footer(&[0u8; 51]).is_err());

        let json = br#"{"version":1,"entries":[
          {"name":"bin/","type":"dir","mode":493},
          {"name":"bin/a","type":"reg","size":10,"offset":100,"digest":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","chunkDigest":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"},
          {"name":".prefetch.landmark","type":"reg","size":1,"offset":150,"chunkDigest":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"},
          {"name":"bin/b","type":"reg","size":8,"offset":200,"chunkSize":4,"chunkDigest":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"},
          {"name":"bin/b","type":"chunk","offset":250,"chunkOffset":4,"chunkDigest":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}
        ]}"#;
        let err = index(json, u64::MAX).unwrap_err().to_string();
        assert!(
            err.contains("TOC offset 18446744073709551615 out of range"),
            "{err}"
        );
        let idx = index(json, 300).unwrap();
        assert_eq!(idx.entries.len(), 3, "landmark hidden");
        let a = &idx.entries[1];
        assert_eq!(
            a.chunks[0].loc,
            ChunkLoc::Gzip {
                start: 100,
                end: 200,
                inner: 0
            }
        );
        let b = &idx.entries[2];
        assert_eq!(b.chunks.len(), 2);
        assert_eq!(b.chunks[1].len, 4);
        assert_eq!(
            b.chunks[1].loc,
            ChunkLoc::Gzip {
                start: 250,
                end: 300,
                inner: 0
            }
        );
    }
}
