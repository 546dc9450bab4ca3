//! A layer streamed once (no TOC of its own) has two indexes made in the same pass: strata's
//! local TOC (its chunks live in the cache, named by the sha256 of their content) and a ztoc
//! (checkpoints and span digests of the gzip blob). [`locate_chunks`] joins them: where in the
//! blob's spans each cached chunk lies, so a chunk the cache lost is fetched by range and
//! inflated from its span's checkpoint instead of streaming the whole layer again.

use std::collections::HashMap;

use crate::index::Chunk;
use crate::soci::raw_name;
use crate::toc::{Toc, TocEntry};
use crate::ztoc::Ztoc;
use strata_oci::digest::Digest;

/// The local TOC and the ztoc of one layer disagree (they were not made from one stream).
#[derive(Debug, thiserror::Error)]
#[error("local ztoc does not match the layer's local TOC: {0}")]
pub struct Mismatch(pub String);

fn content_chunk(e: &TocEntry) -> Result<Option<(Digest, u64, u64)>, Mismatch> {
    if e.chunk_type.as_deref() == Some("zeros") {
        return Ok(None);
    }
    let Some(d) = &e.chunk_digest else {
        return Ok(None);
    };
    let d: Digest = d
        .parse()
        .map_err(|e| Mismatch(format!("chunk digest {d:?}: {e}")))?;
    let at = u64::try_from(e.chunk_offset).map_err(|_| Mismatch("negative offset".into()))?;
    let len = u64::try_from(e.chunk_size).map_err(|_| Mismatch("negative size".into()))?;
    Ok(Some((d, at, len)))
}

/// Each content chunk of `toc` (by its digest) as pieces of `ztoc`'s spans (`ChunkLoc::Zran`,
/// offsets from the chunk's start). The two must list the same entries in the same order.
pub fn locate_chunks(toc: &Toc, ztoc: &Ztoc) -> Result<HashMap<Digest, Vec<Chunk>>, Mismatch> {
    let mut out = HashMap::new();
    let mut files = ztoc.files.iter();
    let mut current = None;
    for e in &toc.entries {
        if e.kind != "chunk" {
            let f = files
                .next()
                .ok_or_else(|| Mismatch(format!("{} is not in the ztoc", e.name)))?;
            if f.name != raw_name(&e.name, &e.name_raw) || f.kind != e.kind {
                return Err(Mismatch(format!(
                    "entry {} is {:?} in the ztoc",
                    e.name,
                    String::from_utf8_lossy(&f.name)
                )));
            }
            current = Some(f);
        }
        let Some((d, at, len)) = content_chunk(e)? else {
            continue;
        };
        let f = current.ok_or_else(|| Mismatch(format!("chunk of {} has no file", e.name)))?;
        if at
            .checked_add(len)
            .is_none_or(|end| end > f.uncompressed_size)
        {
            return Err(Mismatch(format!(
                "chunk at {at} of {} lies past its end",
                e.name
            )));
        }
        let start = f.uncompressed_offset + at;
        out.entry(d)
            .or_insert_with(|| ztoc.pieces(start..start + len));
    }
    if files.next().is_some() {
        return Err(Mismatch("the ztoc has more entries".into()));
    }
    Ok(out)
}
