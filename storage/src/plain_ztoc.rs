//! Streaming a gzip layer that has no TOC (as [`crate::plain::index_plain`] does) while also
//! building its ztoc in the same pass: the gzip decoder notes checkpoints and span digests as it
//! inflates ([`GzipIndexer`]), and the tar walk notes where each entry's content starts
//! ([`ZtocFiles`]). Kept under the state root, the ztoc lets this machine read the layer by
//! range later instead of streaming it again.

use std::io::{self, Read};

use crate::cache::ChunkCache;
use crate::plain::{HashingReader, Indexed, Indexer};
use strata_formats::soci::{ZtocFiles, ztoc_of};
use strata_formats::tarwalk::{WalkError, walk_tar};
use strata_formats::zran_stream::GzipIndexer;
use strata_formats::ztoc::Ztoc;

fn walk_err(e: strata_formats::zran::ZranError) -> WalkError {
    WalkError::Io(io::Error::other(e.to_string()))
}

/// Streams gzip `blob`, caching every chunk, and builds the local TOC and, unless the layer
/// holds something a ztoc cannot point at (a sparse file), its ztoc with spans of
/// `span_size` uncompressed bytes.
pub fn index_gzip_with_ztoc<R: Read>(
    blob: R,
    cache: &ChunkCache,
    span_size: u64,
) -> Result<(Indexed, Option<Ztoc>), WalkError> {
    let mut hashing = HashingReader::new(blob);
    let mut gz = GzipIndexer::new(&mut hashing, span_size).map_err(walk_err)?;
    let mut visitor = ZtocFiles::new(Indexer::new(cache));
    let (diff_id, _) = walk_tar(&mut gz, &mut visitor)?;
    let spans = gz.finish().map_err(walk_err)?;
    let (indexer, files) = visitor.into_parts();
    let (blob_digest, blob_size) = hashing.finish()?;
    let ztoc = match files {
        Ok(files) => Some(ztoc_of(spans, files)),
        Err(e) => {
            tracing::debug!(blob = %blob_digest, error = %e, "no local ztoc");
            None
        }
    };
    Ok((indexer.indexed(blob_digest, blob_size, diff_id), ztoc))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // small test data
mod tests {
    use super::*;
    use std::io::Write;
    use strata_formats::index::{LayerIndex, Locations};
    use strata_formats::soci_local::locate_chunks;
    use strata_oci::digest::Digest;

    #[test]
    fn one_pass_gives_the_local_toc_and_a_ztoc_that_finds_every_chunk() {
        let mut b = tar::Builder::new(Vec::new());
        let mut files = Vec::new();
        for (i, size) in [10usize, 300_000, 1_000_000, 0, 4097]
            .into_iter()
            .enumerate()
        {
            let mut x = i as u64 + 1;
            let data: Vec<u8> = (0..size)
                .map(|j| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if j % 3 == 0 { b'a' } else { x as u8 }
                })
                .collect();
            let mut h = tar::Header::new_gnu();
            h.set_size(size as u64);
            h.set_mode(0o644);
            let name = format!("d/f{i}");
            b.append_data(&mut h, &name, &data[..]).unwrap();
            files.push(data);
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        let (ix, ztoc) = index_gzip_with_ztoc(&blob[..], &cache, 128 << 10).unwrap();
        let ztoc = ztoc.unwrap();
        assert_eq!(ix.blob_digest, Digest::of(&blob));
        assert_eq!(ix.diff_id, Digest::of(&tar));
        assert_eq!(ztoc.compressed_size, blob.len() as u64);
        assert_eq!(ztoc.uncompressed_size, tar.len() as u64);
        assert!(ztoc.span_digests.len() > 3);
        let located = locate_chunks(&ix.toc, &ztoc).unwrap();
        let index = LayerIndex::from_toc(&ix.toc, Locations::Local).unwrap();
        let mut seen = 0;
        for c in index.entries.iter().flat_map(|e| e.chunks.iter()) {
            let Some(d) = c.digest else { continue };
            let pieces = &located[&d];
            let mut out = Vec::new();
            for p in pieces {
                let strata_formats::index::ChunkLoc::Zran { start, end, inner } = p.loc else {
                    panic!("{p:?}")
                };
                let i = ztoc
                    .span_digests
                    .iter()
                    .position(|s| Some(*s) == p.digest)
                    .unwrap();
                let output = ztoc.zinfo.span_output(i, ztoc.uncompressed_size);
                let got = ztoc
                    .read(
                        &blob[start as usize..end as usize],
                        start,
                        output.start + inner..output.start + inner + p.len,
                    )
                    .unwrap();
                out.extend_from_slice(&got);
            }
            assert_eq!(Digest::of(&out), d);
            seen += 1;
        }
        assert!(seen > 8, "{seen} chunks");
    }
}
