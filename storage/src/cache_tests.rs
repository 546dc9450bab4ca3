//! Unit tests of the chunk cache.

use super::*;

#[test]
fn put_verifies_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let c = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let d = Digest::of(b"chunk bytes");
    assert!(!c.contains(&d));
    assert!(c.read_at(&d, 0, 5).unwrap().is_none());
    assert!(c.put(&d, b"other bytes").is_err());
    assert!(!c.contains(&d), "a bad chunk must not be stored");
    assert!(c.put(&d, b"chunk bytes").unwrap());
    assert!(!c.put(&d, b"chunk bytes").unwrap());
    assert_eq!(c.read_at(&d, 6, 100).unwrap().unwrap(), b"bytes");
}

#[test]
fn a_chunk_damaged_on_disk_reads_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Digest::of(b"precious");
    {
        let c = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        c.put(&d, b"precious").unwrap();
    }
    let hex = d.hex();
    std::fs::write(
        dir.path().join("chunks").join(&hex[..2]).join(&hex),
        b"precioux",
    )
    .unwrap();
    // A new process (a new cache) checks the chunk before serving it.
    let c = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    assert!(c.read_at(&d, 0, 8).unwrap().is_none());
    assert!(!c.contains(&d), "the damaged chunk is dropped");
}

#[test]
fn read_into_fills_the_callers_buffer_or_says_missing() {
    let dir = tempfile::tempdir().unwrap();
    let c = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let d = Digest::of(b"0123456789");
    let mut buf = [0u8; 4];
    assert!(!c.read_into(&d, 0, &mut buf).unwrap());
    c.put(&d, b"0123456789").unwrap();
    for _ in 0..2 {
        // The second time through the kept descriptor.
        assert!(c.read_into(&d, 3, &mut buf).unwrap());
        assert_eq!(&buf, b"3456");
    }
    assert!(
        !c.read_into(&d, 8, &mut buf).unwrap(),
        "past the chunk's end"
    );
    // A new process checks the chunk on its first read.
    let fresh = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    assert!(fresh.read_into(&d, 6, &mut buf).unwrap());
    assert_eq!(&buf, b"6789");
}

#[test]
fn the_limit_holds_as_chunks_are_added_but_hot_chunks_stay() {
    let dir = tempfile::tempdir().unwrap();
    let c = ChunkCache::open(dir.path(), 10_000).unwrap();
    let chunk = |i: u32| {
        let data = i.to_le_bytes().repeat(250);
        (Digest::of(&data), data)
    };
    // A reader asked for chunk 5 (a miss) before the stream brought it.
    let (wanted, _) = chunk(5);
    assert!(c.read_at(&wanted, 0, 10).unwrap().is_none());
    for i in 0..100 {
        let (d, data) = chunk(i);
        c.put_streamed(&d, &data).unwrap();
        let used = c.usage().unwrap().1;
        // The missed chunk and the run after it (half the limit) stay, past the limit.
        if i < 5 {
            assert!(used <= 10_000, "after chunk {i}: {used} bytes cached");
        }
    }
    assert!(
        c.contains(&wanted),
        "the chunk a reader waits for was evicted"
    );
    assert_eq!(
        c.read_at(&wanted, 0, 4).unwrap().unwrap(),
        5u32.to_le_bytes()
    );
    // Read once, it is an ordinary chunk again: the limit takes it.
    for i in 100..130 {
        let (d, data) = chunk(i);
        c.put_streamed(&d, &data).unwrap();
    }
    assert!(!c.contains(&wanted));
    assert!(c.usage().unwrap().1 <= 10_000);
    // Nobody asked: plain FIFO within the limit, checked at every put.
    let dir = tempfile::tempdir().unwrap();
    let c = ChunkCache::open(dir.path(), 10_000).unwrap();
    for i in 0..100 {
        let (d, data) = chunk(i);
        c.put_streamed(&d, &data).unwrap();
        let used = c.usage().unwrap().1;
        assert!(used <= 10_000, "after chunk {i}: {used} bytes cached");
    }
    let (last, _) = chunk(99);
    assert!(c.contains(&last));
}

#[test]
fn fetched_chunks_are_kept_for_their_reader_up_to_half_the_limit_more() {
    let dir = tempfile::tempdir().unwrap();
    let c = ChunkCache::open(dir.path(), 10_000).unwrap();
    let mut ds = Vec::new();
    for i in 0..40u32 {
        let data = i.to_le_bytes().repeat(250);
        let d = Digest::of(&data);
        c.put(&d, &data).unwrap();
        ds.push(d);
        let used = c.usage().unwrap().1;
        assert!(used <= 15_000, "after chunk {i}: {used} bytes cached");
    }
    // The newest (fetched for a read, not read yet) are there.
    assert!(ds[35..].iter().all(|d| c.contains(d)));
    // Read, they go as other chunks do.
    for d in &ds[30..] {
        c.read_at(d, 0, 1).unwrap();
    }
    let data = 99u32.to_le_bytes().repeat(250);
    c.put_streamed(&Digest::of(&data), &data).unwrap();
    assert!(c.usage().unwrap().1 <= 10_000);
}

#[test]
fn evicts_oldest_over_limit() {
    let dir = tempfile::tempdir().unwrap();
    let c = ChunkCache::open(dir.path(), 3000).unwrap();
    let mut ds = Vec::new();
    for i in 0..5u8 {
        let data = vec![i; 1000];
        let d = Digest::of(&data);
        c.put_streamed(&d, &data).unwrap();
        ds.push(d);
        std::thread::sleep(std::time::Duration::from_millis(15));
    }
    // Evicted as they were added: nothing left to do.
    assert_eq!(c.enforce_limit().unwrap(), 0);
    assert!(!c.contains(&ds[0]));
    assert!(c.contains(&ds[4]));
    assert!(c.usage().unwrap().1 <= 3000);
}

#[test]
fn a_changed_assembled_file_is_rebuilt_not_served() {
    use strata_formats::index::{Chunk, ChunkLoc};
    let dir = tempfile::tempdir().unwrap();
    let c = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let (a, b) = (b"first chunk ".to_vec(), b"second chunk".to_vec());
    let chunk = |at: u64, bytes: &[u8]| Chunk {
        file_offset: at,
        len: bytes.len() as u64,
        digest: Some(Digest::of(bytes)),
        loc: ChunkLoc::Local,
    };
    let chunks = [chunk(0, &a), chunk(12, &b)];
    c.put(&Digest::of(&a), &a).unwrap();
    c.put(&Digest::of(&b), &b).unwrap();
    let path = c.assemble(&chunks, 24).unwrap().unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        [a.clone(), b.clone()].concat()
    );
    // A byte changes on disk; a new process (a new cache handle) must not hand it out.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[14] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let fresh = ChunkCache::open(dir.path(), 1 << 20).unwrap();
    let again = fresh.assemble(&chunks, 24).unwrap().unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), [a, b].concat());
}
