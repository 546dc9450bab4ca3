//! The lazy fetch against a counting fake [`BlobSource`].
#![allow(clippy::cast_possible_truncation)] // small test data
#![allow(clippy::single_range_in_vec_init)] // one request is exactly the point

use super::*;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::source::BlobStream;
use crate::store::Compression;

/// Bytes of each test chunk.
const CHUNK: u64 = 1000;
/// Bound of every wait in these tests: a hang is a failure, not a stuck test.
const BOUND: Duration = Duration::from_secs(10);

/// A blob source that counts requests, can hold them at a gate, fail them, or ignore ranges.
#[derive(Debug)]
struct Fake {
    blob: Bytes,
    ranges: Mutex<Vec<Range<u64>>>,
    streams: AtomicUsize,
    /// Requests wait until this is true.
    gate: watch::Sender<bool>,
    /// How many of the next requests fail.
    fail: AtomicUsize,
    /// Answers every range request with the whole blob.
    whole: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("fake registry refused: 503 Service Unavailable")]
struct Refused;

impl Fake {
    fn new(blob: Vec<u8>, whole: bool) -> Arc<Self> {
        Arc::new(Self {
            blob: blob.into(),
            ranges: Mutex::new(Vec::new()),
            streams: AtomicUsize::new(0),
            gate: watch::Sender::new(true),
            fail: AtomicUsize::new(0),
            whole,
        })
    }

    fn requests(&self) -> Vec<Range<u64>> {
        self.ranges.lock().unwrap().clone()
    }

    async fn pass_gate(&self) -> Result<(), SourceError> {
        let _ = self.gate.subscribe().wait_for(|open| *open).await;
        let fail = self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match fail {
            Ok(_) => Err(SourceError::new(Refused)),
            Err(_) => Ok(()),
        }
    }
}

impl BlobSource for Fake {
    fn range<'a>(
        &'a self,
        _repo: &'a Reference,
        _blob: &'a Digest,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<RangeReply, SourceError>> {
        self.ranges.lock().unwrap().push(range.clone());
        async move {
            self.pass_gate().await?;
            Ok(if self.whole {
                RangeReply::Whole(self.blob.clone())
            } else {
                RangeReply::Partial(self.blob.slice(range.start as usize..range.end as usize))
            })
        }
        .boxed()
    }

    fn stream<'a>(
        &'a self,
        _repo: &'a Reference,
        _blob: &'a Digest,
    ) -> BoxFuture<'a, Result<BlobStream, SourceError>> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        async move {
            self.pass_gate().await?;
            let pieces: Vec<Result<Bytes, SourceError>> = self
                .blob
                .chunks(777)
                .map(|p| Ok(self.blob.slice_ref(p)))
                .collect();
            Ok(stream::iter(pieces).boxed())
        }
        .boxed()
    }
}

/// The content of test chunk `i`.
fn content(i: u64) -> Vec<u8> {
    (0..CHUNK).map(|j| (i * 7 + j * 13 % 251) as u8).collect()
}

/// A zstd:chunked-like blob of `n` chunks of one file, each its own frame, and those chunks.
fn chunked_layer(n: u64) -> (Vec<u8>, Vec<Chunk>) {
    let mut blob = Vec::new();
    let mut chunks = Vec::new();
    for i in 0..n {
        let data = content(i);
        let frame = zstd::bulk::compress(&data, 1).unwrap();
        let start = blob.len() as u64;
        blob.extend_from_slice(&frame);
        chunks.push(Chunk {
            file_offset: i * CHUNK,
            len: CHUNK,
            digest: Some(Digest::of(&data)),
            loc: ChunkLoc::Zstd {
                start,
                end: blob.len() as u64,
            },
        });
    }
    (blob, chunks)
}

fn source(format: LayerFormat) -> LayerSource {
    LayerSource {
        repo: "localhost:5000/test:latest".parse().unwrap(),
        blob: Digest::of(b"the blob"),
        format,
    }
}

fn fetcher(dir: &tempfile::TempDir, fake: &Arc<Fake>) -> Arc<ChunkFetcher> {
    let cache = Arc::new(ChunkCache::open(&dir.path().join("cache"), 1 << 30).unwrap());
    let blobs = dir.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    Arc::new(ChunkFetcher::new(fake.clone(), cache, blobs))
}

/// Reads `len` bytes at `offset` as a reader would (fetching only what it reads).
async fn read(
    f: &ChunkFetcher,
    layer: &LayerSource,
    chunks: &[Chunk],
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, FetchError> {
    let mut buf = vec![0; len as usize];
    let n = tokio::time::timeout(BOUND, f.read_into(layer, chunks, offset, &mut buf, len))
        .await
        .expect("read finished within the bound")?;
    buf.truncate(n);
    Ok(buf)
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Starts `n` readers of 100 bytes of chunk 1 held at the fake's closed gate, and returns once
/// all of them wait.
async fn held_readers(
    f: &Arc<ChunkFetcher>,
    fake: &Fake,
    chunks: &Arc<Vec<Chunk>>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<Vec<u8>, FetchError>>> {
    fake.gate.send_replace(false);
    let readers: Vec<_> = (0..n)
        .map(|_| {
            let (f, chunks) = (f.clone(), chunks.clone());
            tokio::spawn(async move {
                let layer = source(LayerFormat::ZstdChunked);
                read(&f, &layer, &chunks, CHUNK + 50, 100).await
            })
        })
        .collect();
    until("every reader waits for the fetch", || {
        f.foreground.count() == n && !fake.requests().is_empty()
    })
    .await;
    readers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_of_one_chunk_make_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let (blob, chunks) = chunked_layer(4);
    let fake = Fake::new(blob, false);
    let f = fetcher(&dir, &fake);
    let chunks = Arc::new(chunks);
    let readers = held_readers(&f, &fake, &chunks, 8).await;
    fake.gate.send_replace(true);
    for r in readers {
        let got = r.await.unwrap().unwrap();
        assert_eq!(got, content(1)[50..150]);
    }
    let ChunkLoc::Zstd { start, end } = chunks[1].loc else {
        unreachable!()
    };
    assert_eq!(fake.requests(), [start..end], "one request for the chunk");
    assert_eq!(f.foreground.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbouring_chunks_coalesce_into_one_range_request() {
    let dir = tempfile::tempdir().unwrap();
    let (blob, chunks) = chunked_layer(6);
    let fake = Fake::new(blob, false);
    let f = fetcher(&dir, &fake);
    let layer = source(LayerFormat::ZstdChunked);
    // Chunks 1, 2 and 3, partly.
    let got = read(&f, &layer, &chunks, CHUNK + 500, 2 * CHUNK)
        .await
        .unwrap();
    let want: Vec<u8> = [content(1), content(2), content(3)].concat();
    assert_eq!(got, want[500..500 + 2 * CHUNK as usize]);
    let (ChunkLoc::Zstd { start, .. }, ChunkLoc::Zstd { end, .. }) = (chunks[1].loc, chunks[3].loc)
    else {
        unreachable!()
    };
    assert_eq!(
        fake.requests(),
        [start..end],
        "one request for three chunks"
    );
    // Cached now: no more requests.
    read(&f, &layer, &chunks, CHUNK, 3 * CHUNK).await.unwrap();
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_wakes_its_waiters_and_the_next_read_retries() {
    let dir = tempfile::tempdir().unwrap();
    let (blob, chunks) = chunked_layer(3);
    let fake = Fake::new(blob, false);
    let f = fetcher(&dir, &fake);
    let chunks = Arc::new(chunks);
    fake.fail.store(1, Ordering::SeqCst);
    let readers = held_readers(&f, &fake, &chunks, 5).await;
    fake.gate.send_replace(true);
    // The reader whose request failed names the registry's answer, and so does every reader
    // that waited for that request: the cause reaches them, not just "it failed".
    for r in readers {
        let err = r.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::Source { .. } | FetchError::FailedElsewhere { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("503"), "{err}");
    }
    assert_eq!(
        fake.requests().len(),
        1,
        "the waiters did not fetch themselves"
    );
    let layer = source(LayerFormat::ZstdChunked);
    let got = read(&f, &layer, &chunks, CHUNK + 50, 100).await.unwrap();
    assert_eq!(got, content(1)[50..150]);
    assert_eq!(fake.requests().len(), 2, "the next read fetched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_fetch_waits_until_no_read_waits() {
    let dir = tempfile::tempdir().unwrap();
    let (blob, chunks) = chunked_layer(3);
    let fake = Fake::new(blob, false);
    let f = fetcher(&dir, &fake);
    let chunks = Arc::new(chunks);
    let readers = held_readers(&f, &fake, &chunks, 1).await;
    let background = {
        let (f, chunks) = (f.clone(), chunks.clone());
        tokio::spawn(async move {
            let layer = source(LayerFormat::ZstdChunked);
            f.ensure_when_idle(&layer, &chunks[2..]).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.requests().len(), 1, "the background fetch held back");
    fake.gate.send_replace(true);
    for r in readers {
        r.await.unwrap().unwrap();
    }
    tokio::time::timeout(BOUND, background)
        .await
        .expect("woken when the read ended")
        .unwrap()
        .unwrap();
    assert_eq!(fake.requests().len(), 2);
    assert!(f.cache().contains(&chunks[2].digest.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_ignores_ranges_is_read_from_the_kept_whole_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (blob, chunks) = chunked_layer(5);
    let fake = Fake::new(blob.clone(), true);
    let f = fetcher(&dir, &fake);
    let layer = source(LayerFormat::ZstdChunked);
    let got = read(&f, &layer, &chunks, CHUNK, CHUNK).await.unwrap();
    assert_eq!(got, content(1));
    assert_eq!(fake.requests().len(), 1);
    let kept = dir.path().join("blobs").join(layer.blob.hex());
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        blob,
        "the whole blob is kept"
    );
    let got = read(&f, &layer, &chunks, 4 * CHUNK + 1, 10).await.unwrap();
    assert_eq!(got, content(4)[1..11]);
    assert_eq!(
        fake.requests().len(),
        1,
        "later chunks come from the kept blob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_without_toc_is_streamed_whole_once() {
    let data: Vec<u8> = (0..3).flat_map(content).collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "f", &data[..]).unwrap();
    let tar = b.into_inner().unwrap();
    // The index as pull made it; then a fresh cache, as after eviction.
    let indexed = {
        let d = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(d.path(), 1 << 30).unwrap();
        index_plain(&tar[..], Compression::None, &cache).unwrap()
    };
    let index = strata_formats::index::LayerIndex::from_toc(
        &indexed.toc,
        strata_formats::index::Locations::Local,
    )
    .unwrap();
    let chunks = index.entries[0].chunks.clone();
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(tar.clone(), false);
    let f = fetcher(&dir, &fake);
    let mut layer = source(LayerFormat::Plain {
        compression: Compression::None,
    });
    layer.blob = Digest::of(&tar);
    let len = data.len() as u64;
    let got = read(&f, &layer, &chunks, 0, len).await.unwrap();
    assert_eq!(got, data);
    assert_eq!(fake.streams.load(Ordering::SeqCst), 1);
    assert!(
        fake.requests().is_empty(),
        "no range requests for a plain layer"
    );
}

#[test]
fn touching_selects_overlapping_chunks() {
    let chunk = |off, len| Chunk {
        file_offset: off,
        len,
        digest: None,
        loc: ChunkLoc::Zeros,
    };
    let cs = [chunk(0, 10), chunk(10, 10), chunk(20, 5)];
    assert_eq!(ChunkFetcher::touching(&cs, 0, 1).len(), 1);
    assert_eq!(ChunkFetcher::touching(&cs, 9, 2).len(), 2);
    assert_eq!(ChunkFetcher::touching(&cs, 10, 10).len(), 1);
    assert_eq!(ChunkFetcher::touching(&cs, 19, 100).len(), 2);
    assert_eq!(ChunkFetcher::touching(&cs, 25, 10).len(), 0);
}

/// A gzip tar of files of 0.3..2.6 MB of poorly compressible bytes, and the files.
fn gzip_tar_layer() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    use std::io::Write;
    let mut b = tar::Builder::new(Vec::new());
    let mut files = Vec::new();
    for i in 0..4u64 {
        let mut x = i * 0x9e37_79b9 + 1;
        let data: Vec<u8> = (0..300_000 + i * 770_000)
            .map(|j| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if j % 2 == 0 {
                    b'a' + (x % 5) as u8
                } else {
                    x as u8
                }
            })
            .collect();
        let name = format!("f{i}");
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, &name, &data[..]).unwrap();
        files.push((name, data));
    }
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    w.write_all(&b.into_inner().unwrap()).unwrap();
    (w.finish().unwrap(), files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soci_spans_are_fetched_verified_and_read_lazily() {
    let (blob, files) = gzip_tar_layer();
    let ztoc =
        Arc::new(strata_formats::soci::build_ztoc(std::io::Cursor::new(&blob), 256 << 10).unwrap());
    let index = ztoc.layer_index().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(blob.clone(), false);
    let f = fetcher(&dir, &fake);
    f.register_ztoc(&ztoc);
    let layer = source(LayerFormat::Soci);
    let chunks_of = |name: &str| {
        let e = index.entries.iter().find(|e| e.path == name.as_bytes());
        e.unwrap().chunks.clone()
    };
    // One small read of the first file fetches its span(s), not the layer.
    let first = chunks_of("f0");
    let got = read(&f, &layer, &first, 1000, 100).await.unwrap();
    assert_eq!(got, &files[0].1[1000..1100]);
    let fetched: u64 = fake.requests().iter().map(|r| r.end - r.start).sum();
    assert!(
        fetched < blob.len() as u64 / 3,
        "{fetched} of {} bytes",
        blob.len()
    );
    assert_eq!(fake.streams.load(Ordering::SeqCst), 0);
    // Every file reads back whole, from the cache once fetched.
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
        assert!(again == *data, "{name} from the cache");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_soci_span_is_an_error_and_never_cached() {
    let (mut blob, files) = gzip_tar_layer();
    let ztoc =
        Arc::new(strata_formats::soci::build_ztoc(std::io::Cursor::new(&blob), 256 << 10).unwrap());
    let index = ztoc.layer_index().unwrap();
    let chunks = index.entries[2].chunks.clone();
    let ChunkLoc::Zran { start, .. } = chunks[0].loc else {
        panic!("not a span chunk")
    };
    blob[start as usize + 100] ^= 1;
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(blob, false);
    let f = fetcher(&dir, &fake);
    f.register_ztoc(&ztoc);
    let layer = source(LayerFormat::Soci);
    let err = read(&f, &layer, &chunks, 0, files[2].1.len() as u64)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("digest"), "{err}");
    assert!(!f.cache().contains(&chunks[0].digest.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soci_span_too_large_to_keep_is_read_piece_by_piece() {
    let (blob, files) = gzip_tar_layer();
    // One span for the whole layer: more output than a span kept in memory may have.
    let ztoc =
        Arc::new(strata_formats::soci::build_ztoc(std::io::Cursor::new(&blob), 64 << 20).unwrap());
    assert_eq!(ztoc.span_digests.len(), 1);
    let index = ztoc.layer_index().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(blob.clone(), false);
    let f = fetcher(&dir, &fake);
    f.register_ztoc(&ztoc);
    let layer = source(LayerFormat::Soci);
    for (name, data) in &files {
        let e = index
            .entries
            .iter()
            .find(|e| e.path == name.as_bytes())
            .unwrap();
        let at = data.len() as u64 / 2;
        let got = read(&f, &layer, &e.chunks, at, 5000).await.unwrap();
        assert!(got == data[at as usize..at as usize + 5000], "{name}");
    }
    assert_eq!(fake.requests().len(), 1, "the one span is fetched once");
}

/// A stalled registry: a read and the reads waiting for its fetch fail past the deadline,
/// naming the layer, the chunk and the registry; once the registry answers, reads work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_source_fails_reads_and_their_waiters_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (blob, chunks) = chunked_layer(3);
    let fake = Fake::new(blob, false);
    let deadline = Duration::from_millis(400);
    let f = Arc::new(
        Arc::into_inner(fetcher(&dir, &fake))
            .unwrap()
            .with_read_deadline(deadline),
    );
    let chunks = Arc::new(chunks);
    let began = std::time::Instant::now();
    let readers = held_readers(&f, &fake, &chunks, 3).await;
    for r in readers {
        let err = r.await.unwrap().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::TimedOut { .. }), "{msg}");
        for part in [
            "localhost:5000",
            &source(LayerFormat::ZstdChunked).blob.to_string(),
            &chunks[1].digest.unwrap().to_string(),
            "no answer within 0.4s",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg}");
        }
    }
    let took = began.elapsed();
    assert!(took >= deadline && took < BOUND, "{took:?}");
    assert_eq!(f.foreground.count(), 0, "no read is left waiting");
    // The kernel's retry of the page right after: the same error, soon, marked as a repeat.
    let layer = source(LayerFormat::ZstdChunked);
    let again = read(&f, &layer, &chunks, CHUNK + 60, 10).await.unwrap_err();
    assert!(again.is_repeat(), "{again}");
    assert!(again.to_string().contains("no answer within"), "{again}");
    tokio::time::sleep(deadline).await;
    // A background fetch is bounded too: it gives its claim up at the deadline.
    let err = tokio::time::timeout(BOUND, f.ensure_when_idle(&layer, &chunks[2..]))
        .await
        .expect("the background fetch ended")
        .unwrap_err();
    assert!(err.to_string().contains("blob bytes"), "{err}");
    fake.gate.send_replace(true);
    let got = read(&f, &layer, &chunks, CHUNK + 50, 100).await.unwrap();
    assert_eq!(got, content(1)[50..150]);
}

#[path = "lazy_local_tests.rs"]
mod local_tests;
