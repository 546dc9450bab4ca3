//! Shaping range requests: which chunks go into one request, and turning a reply back into
//! verified chunks in the cache.

use std::io::Read;

use strata_formats::index::{Chunk, ChunkLoc};
use strata_oci::digest::Digest;

use crate::cache::ChunkCache;

/// A chunk of a range reply that did not decompress or did not match its digest.
#[derive(Debug, thiserror::Error)]
#[error("chunk {digest}: {reason}")]
pub(crate) struct BadChunk {
    /// The chunk's digest.
    pub(crate) digest: Digest,
    /// What went wrong.
    pub(crate) reason: String,
}

/// Two missing chunks closer than this in the blob are fetched in one request, gap included:
/// a second round trip costs more than a few hundred KiB of unwanted bytes.
pub const COALESCE_GAP_BYTES: u64 = 256 * 1024;
/// Largest single range request; a larger span is split so that requests run in parallel and
/// the first chunks reach their reader early.
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;
/// Range requests in flight at once for one fetch.
pub const PARALLEL_REQUESTS: usize = 8;

/// A chunk and its byte range in the blob.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Located {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) chunk: Chunk,
}

/// Chunks fetched with one range request.
#[derive(Debug)]
pub(crate) struct RangeGroup {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) items: Vec<Located>,
}

/// Sorts chunks by blob offset and merges neighbours into range requests of at most
/// [`MAX_REQUEST_BYTES`], neighbours being at most [`COALESCE_GAP_BYTES`] apart.
pub(crate) fn coalesce(chunks: &[Chunk]) -> Vec<RangeGroup> {
    let mut located: Vec<Located> = chunks
        .iter()
        .filter_map(|c| match c.loc {
            ChunkLoc::Zstd { start, end }
            | ChunkLoc::Gzip { start, end, .. }
            | ChunkLoc::Zran { start, end, .. } => Some(Located {
                start,
                end,
                chunk: *c,
            }),
            _ => None,
        })
        .collect();
    located.sort_by_key(|l| l.start);
    let mut groups: Vec<RangeGroup> = Vec::new();
    for item in located {
        match groups.last_mut() {
            Some(g)
                if item.start <= g.end + COALESCE_GAP_BYTES
                    && item.end.max(g.end) - g.start <= MAX_REQUEST_BYTES =>
            {
                g.end = g.end.max(item.end);
                g.items.push(item);
            }
            _ => groups.push(RangeGroup {
                start: item.start,
                end: item.end,
                items: vec![item],
            }),
        }
    }
    groups
}

/// Decompresses one chunk from its compressed bytes (which may run on past its end).
fn decompress(c: &Chunk, slice: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(strata_oci::usize_of(c.len));
    match c.loc {
        ChunkLoc::Zstd { .. } => {
            // The range may run on into the frames of following tar headers (when the TOC
            // gives no end, it ends where the next content starts): take only the chunk.
            zstd::stream::read::Decoder::new(slice)
                .and_then(|d| d.take(c.len).read_to_end(&mut out))
                .map_err(|e| format!("zstd: {e}"))?;
        }
        ChunkLoc::Gzip { inner, .. } => {
            let mut d = flate2::read::MultiGzDecoder::new(slice);
            std::io::copy(&mut (&mut d).take(inner), &mut std::io::sink())
                .map_err(|e| format!("gzip: {e}"))?;
            d.take(c.len)
                .read_to_end(&mut out)
                .map_err(|e| format!("gzip: {e}"))?;
        }
        ChunkLoc::Zran { .. } | ChunkLoc::Zeros | ChunkLoc::Local => {
            return Err("chunk has no place in the blob".into());
        }
    }
    Ok(out)
}

/// Decompresses and verifies each chunk of a fetched range (`data`, starting at blob offset
/// `base`) and stores it in the cache.
pub(crate) fn store_group(
    cache: &ChunkCache,
    base: u64,
    data: &[u8],
    items: &[Located],
) -> Result<(), BadChunk> {
    for Located {
        start,
        end,
        chunk: c,
    } in items
    {
        let Some(digest) = c.digest else { continue };
        let bad = |reason: String| BadChunk { digest, reason };
        let slice = data
            .get(strata_oci::usize_of(start - base)..strata_oci::usize_of(end - base))
            .ok_or_else(|| bad("range reply too short".into()))?;
        if let ChunkLoc::Zran { .. } = c.loc {
            // A SOCI span is cached as fetched: its digest is that of the compressed bytes.
            cache.put(&digest, slice).map_err(|e| bad(e.to_string()))?;
            continue;
        }
        let plain = decompress(c, slice).map_err(bad)?;
        if plain.len() as u64 != c.len {
            return Err(bad(format!(
                "decompressed to {} bytes, expected {}",
                plain.len(),
                c.len
            )));
        }
        cache.put(&digest, &plain).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_neighbours_but_not_distant_chunks() {
        let at = |start: u64, end: u64| Chunk {
            file_offset: 0,
            len: 1,
            digest: Some(Digest::of(&start.to_le_bytes())),
            loc: ChunkLoc::Zstd { start, end },
        };
        let groups = coalesce(&[
            at(5000, 6000),
            at(0, 1000),
            at(1000, 2000),
            at(10 << 20, (10 << 20) + 5),
        ]);
        assert_eq!(groups.len(), 2);
        assert_eq!(
            (groups[0].start, groups[0].end, groups[0].items.len()),
            (0, 6000, 3)
        );
        assert_eq!(groups[1].start, 10 << 20);
        let big: Vec<Chunk> = (0..40).map(|i| at(i << 20, (i + 1) << 20)).collect();
        assert!(
            coalesce(&big)
                .iter()
                .all(|g| g.end - g.start <= MAX_REQUEST_BYTES)
        );
    }

    #[test]
    fn bad_chunk_is_never_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        let good = b"the real content";
        let frame = zstd::bulk::compress(b"tampered content", 1).unwrap();
        let c = Chunk {
            file_offset: 0,
            len: good.len() as u64,
            digest: Some(Digest::of(good)),
            loc: ChunkLoc::Zstd {
                start: 0,
                end: frame.len() as u64,
            },
        };
        let item = |frame: &[u8]| Located {
            start: 0,
            end: frame.len() as u64,
            chunk: c,
        };
        let err = store_group(&cache, 0, &frame, &[item(&frame)]).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(!cache.contains(&Digest::of(good)));

        let frame = zstd::bulk::compress(good, 1).unwrap();
        store_group(&cache, 0, &frame, &[item(&frame)]).unwrap();
        assert!(cache.contains(&Digest::of(good)));
    }
}
