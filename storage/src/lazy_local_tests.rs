//! A streamed gzip layer whose cached chunks are gone reads them back by range through the
//! local ztoc made while it streamed.

use super::*;
use crate::plain_ztoc::index_gzip_with_ztoc;
use strata_formats::index::{LayerIndex, Locations};
use strata_formats::soci_local::locate_chunks;

/// The layer as a first stream left it (local TOC, local ztoc), and a fetcher over a fresh
/// cache that knows the ztoc.
fn streamed_then_fresh(
    blob: &[u8],
    dir: &tempfile::TempDir,
    fake: &Arc<Fake>,
) -> (Arc<ChunkFetcher>, LayerIndex, LayerSource) {
    streamed_then_fresh_in(blob, dir, fake, 1 << 30)
}

/// [`streamed_then_fresh`] with a chunk cache of `limit` bytes.
fn streamed_then_fresh_in(
    blob: &[u8],
    dir: &tempfile::TempDir,
    fake: &Arc<Fake>,
    limit: u64,
) -> (Arc<ChunkFetcher>, LayerIndex, LayerSource) {
    let (indexed, ztoc) = {
        let d = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(d.path(), 1 << 30).unwrap();
        index_gzip_with_ztoc(blob, &cache, 256 << 10).unwrap()
    };
    let ztoc = Arc::new(ztoc.unwrap());
    let index = LayerIndex::from_toc(&indexed.toc, Locations::Local).unwrap();
    let cache = Arc::new(ChunkCache::open(&dir.path().join("cache"), limit).unwrap());
    let blobs = dir.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let f = Arc::new(ChunkFetcher::new(fake.clone(), cache, blobs));
    let mut layer = source(LayerFormat::Plain {
        compression: Compression::Gzip,
    });
    layer.blob = Digest::of(blob);
    f.register_local_ztoc(
        layer.blob,
        &ztoc,
        locate_chunks(&indexed.toc, &ztoc).unwrap(),
    );
    (f, index, layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_chunks_of_a_streamed_layer_come_back_by_range_not_by_stream() {
    let (blob, files) = gzip_tar_layer();
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(blob.clone(), false);
    let (f, index, layer) = streamed_then_fresh(&blob, &dir, &fake);
    assert!(f.has_local_ztoc(&layer.blob));
    let chunks_of = |name: &str| {
        let e = index.entries.iter().find(|e| e.path == name.as_bytes());
        e.unwrap().chunks.clone()
    };
    let got = read(&f, &layer, &chunks_of("f1"), 5000, 100).await.unwrap();
    assert_eq!(got, &files[1].1[5000..5100]);
    let fetched: u64 = fake.requests().iter().map(|r| r.end - r.start).sum();
    assert!(
        fetched < blob.len() as u64 / 3,
        "{fetched} of {}",
        blob.len()
    );
    assert_eq!(fake.streams.load(Ordering::SeqCst), 0);
    for (name, data) in &files {
        let chunks = chunks_of(name);
        let got = read(&f, &layer, &chunks, 0, data.len() as u64)
            .await
            .unwrap();
        assert!(got == *data, "{name}");
        let mut again = vec![0; data.len()];
        assert_eq!(
            f.read_cached_into(&chunks, 0, &mut again).unwrap(),
            Some(data.len())
        );
    }
    assert_eq!(fake.streams.load(Ordering::SeqCst), 0, "never streamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_span_of_a_streamed_layer_is_an_error_and_nothing_is_cached() {
    let (blob, files) = gzip_tar_layer();
    let dir = tempfile::tempdir().unwrap();
    let mut bad = blob.clone();
    let at = bad.len() / 2;
    bad[at] ^= 1;
    let fake = Fake::new(bad, false);
    let (f, index, layer) = streamed_then_fresh(&blob, &dir, &fake);
    let mut failed = 0;
    for (e, (_, data)) in index.entries.iter().zip(&files) {
        match read(&f, &layer, &e.chunks, 0, data.len() as u64).await {
            Ok(got) => assert!(got == *data),
            Err(err) => {
                assert!(err.to_string().contains("digest"), "{err}");
                failed += 1;
                for c in &e.chunks {
                    let d = c.digest.unwrap();
                    let mut buf = vec![0u8; c.len as usize];
                    if f.cache().read_into(&d, 0, &mut buf).unwrap() {
                        assert_eq!(Digest::of(&buf), d);
                    }
                }
            }
        }
    }
    assert!(failed > 0, "no read met the flipped byte");
    assert_eq!(fake.streams.load(Ordering::SeqCst), 0);
}

/// A fetch of more than the cache holds (a sequential reader's window): its spans come in
/// batches that fit, each cut into chunks before the next, instead of all at once and evicted
/// before they are cut (which fell back to streaming the whole layer again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_larger_than_the_cache_goes_by_range_in_batches() {
    let (blob, files) = gzip_tar_layer();
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(blob.clone(), false);
    let (f, index, layer) = streamed_then_fresh_in(&blob, &dir, &fake, 1 << 20);
    let (name, data) = files.last().unwrap();
    assert!(data.len() > 2 << 20);
    let e = index.entries.iter().find(|e| e.path == name.as_bytes());
    let chunks = e.unwrap().chunks.clone();
    f.ensure(&layer, &chunks).await.unwrap();
    assert_eq!(fake.streams.load(Ordering::SeqCst), 0, "streamed");
    assert!(fake.requests().len() > 1, "{:?}", fake.requests());
    // Read as the kernel does, 128 KiB at a time: what the small cache lost comes back by range.
    let mut got = Vec::new();
    while got.len() < data.len() {
        let len = (data.len() - got.len()).min(128 << 10) as u64;
        got.extend(
            read(&f, &layer, &chunks, got.len() as u64, len)
                .await
                .unwrap(),
        );
    }
    assert!(got == *data, "{name} read wrong");
    assert_eq!(fake.streams.load(Ordering::SeqCst), 0, "never streamed");
}
