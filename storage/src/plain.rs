//! Layers without a usable TOC (plain tar+gzip, tar+zstd, tar): streamed whole, once, to build
//! strata's local TOC (in the zstd:chunked schema) while every chunk goes into the cache. The
//! stream is checked against the blob digest before the TOC is trusted.

use std::io::{self, Read};

use flate2::read::MultiGzDecoder;

use crate::cache::ChunkCache;
use crate::store::Compression;
use strata_formats::chunked::CHUNK_BYTES;
use strata_formats::tarwalk::{TarVisitor, WalkError, walk_tar};
use strata_formats::toc::{Toc, TocEntry};
use strata_oci::digest::{Digest, Hasher};

/// A reader that hashes the compressed bytes passing through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Hasher::default(),
            count: 0,
        }
    }

    /// Reads what is left, then returns the digest and byte count of everything read.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.hasher.finish(), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Wraps a compressed layer stream in the matching decompressor.
pub fn decompress<'a, R: Read + 'a>(r: R, c: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::Gzip => Box::new(MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        Compression::None => Box::new(r),
    })
}

/// Sniffs the compression of a layer from its first bytes.
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Result of indexing a plain layer.
#[derive(Debug)]
pub struct Indexed {
    /// strata's local TOC for the layer.
    pub toc: Toc,
    /// Digest of the compressed blob as streamed.
    pub blob_digest: Digest,
    /// Its size.
    pub blob_size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
}

/// Streams `blob` (compressed with `c`), caching every chunk, and builds the local TOC.
pub fn index_plain<R: Read>(
    blob: R,
    c: Compression,
    cache: &ChunkCache,
) -> Result<Indexed, WalkError> {
    let mut hashing = HashingReader::new(blob);
    let mut v = Indexer::new(cache);
    let (diff_id, _) = {
        let tar = decompress(&mut hashing, c)?;
        walk_tar(tar, &mut v)?
    };
    let (blob_digest, blob_size) = hashing.finish()?;
    Ok(v.indexed(blob_digest, blob_size, diff_id))
}

/// Caches every chunk of the payloads it visits and notes the local TOC.
pub(crate) struct Indexer<'a> {
    cache: &'a ChunkCache,
    entries: Vec<TocEntry>,
}

impl<'a> Indexer<'a> {
    pub(crate) fn new(cache: &'a ChunkCache) -> Self {
        Self {
            cache,
            entries: Vec::new(),
        }
    }

    /// What indexing a blob of `blob_size` bytes hashing to `blob_digest` found.
    pub(crate) fn indexed(self, blob_digest: Digest, blob_size: u64, diff_id: Digest) -> Indexed {
        Indexed {
            toc: Toc {
                version: 1,
                entries: self.entries,
                tar_split_digest: None,
            },
            blob_digest,
            blob_size,
            diff_id,
        }
    }
}

impl TarVisitor for Indexer<'_> {
    fn segment(&mut self, _bytes: &[u8]) -> Result<(), WalkError> {
        Ok(())
    }

    fn entry(&mut self, mut meta: TocEntry, payload: &mut dyn Read) -> Result<(), WalkError> {
        if meta.kind != "reg" || meta.size == 0 {
            self.entries.push(meta);
            return Ok(());
        }
        let mut file_hash = Hasher::default();
        let mut chunks = Vec::new();
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut at = 0i64;
        loop {
            let mut n = 0;
            while n < buf.len() {
                let k = payload.read(&mut buf[n..])?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            if n == 0 {
                break;
            }
            let data = &buf[..n];
            file_hash.update(data);
            let d = Digest::of(data);
            let zeros = n >= 1024 && data.iter().all(|b| *b == 0);
            if !zeros {
                self.cache
                    .put_streamed(&d, data)
                    .map_err(|e| WalkError::Visitor(e.to_string()))?;
            }
            chunks.push(TocEntry {
                kind: "chunk".into(),
                name: meta.name.clone(),
                name_raw: meta.name_raw.clone(),
                chunk_size: i64::try_from(n).expect("a chunk is at most CHUNK_BYTES"),
                chunk_offset: at,
                chunk_digest: Some(d.to_string()),
                chunk_type: zeros.then(|| "zeros".into()),
                ..TocEntry::default()
            });
            at += i64::try_from(n).expect("a chunk is at most CHUNK_BYTES");
        }
        meta.digest = Some(file_hash.finish().to_string());
        let first = chunks.remove(0);
        meta.chunk_size = first.chunk_size;
        meta.chunk_digest = first.chunk_digest;
        meta.chunk_type = first.chunk_type;
        self.entries.push(meta);
        self.entries.extend(chunks);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // small test data
mod tests {
    use super::*;
    use std::io::Write;
    use strata_formats::index::{ChunkLoc, LayerIndex, Locations};

    #[test]
    fn indexes_gzip_layer_and_caches_chunks() {
        let mut b = tar::Builder::new(Vec::new());
        let data: Vec<u8> = (0..CHUNK_BYTES + 10).map(|i| (i % 13) as u8).collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, "f", &data[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        assert_eq!(sniff(&blob), Compression::Gzip);

        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        let ix = index_plain(&blob[..], Compression::Gzip, &cache).unwrap();
        assert_eq!(ix.blob_digest, Digest::of(&blob));
        assert_eq!(ix.diff_id, Digest::of(&tar));
        let idx = LayerIndex::from_toc(&ix.toc, Locations::Local).unwrap();
        let f = &idx.entries[0];
        assert_eq!(f.chunks.len(), 2);
        for c in &f.chunks {
            assert_eq!(c.loc, ChunkLoc::Local);
            let got = cache
                .read_at(&c.digest.unwrap(), 0, c.len as usize)
                .unwrap()
                .unwrap();
            assert_eq!(
                got,
                &data[c.file_offset as usize..(c.file_offset + c.len) as usize]
            );
        }
    }
}
