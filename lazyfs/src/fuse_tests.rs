//! Unit tests of the FUSE file system's directory listing.

use super::*;
use strata_formats::index::{Entry, LayerIndex};
use strata_storage::cache::ChunkCache;
use strata_storage::source::NoSource;

fn entry(path: &str, kind: Kind) -> Entry {
    Entry {
        mode: 0o755,
        ..crate::tree::test_entry(path, kind)
    }
}

#[test]
fn readdir_resumes_at_any_offset_with_the_same_entries() {
    let mut entries = vec![entry("d", Kind::Dir), entry("d/sub", Kind::Dir)];
    entries.extend((0..7).map(|i| entry(&format!("d/f{}", 7 - i), Kind::Reg)));
    let tree = Tree::build([&LayerIndex { entries }]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(dir.path(), 1 << 20).unwrap());
    let fetcher = Arc::new(ChunkFetcher::new(
        Arc::new(NoSource),
        cache,
        dir.path().into(),
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = INodeNo(tree.resolve(b"d").unwrap());
    let fs = LazyFs::new(tree, Vec::new(), fetcher, rt.handle().clone());
    let list = |offset| -> Vec<(u64, String, u64)> {
        let ready = fs.snapshot().unwrap();
        let e = LazyFs::dir_entries(&ready, d, offset).unwrap();
        e.map(|(next, ino, attr, name)| {
            assert_eq!(attr.ino.0, ino);
            (next, String::from_utf8_lossy(name).into_owned(), ino)
        })
        .collect()
    };
    let all = list(0);
    let names: Vec<&str> = all.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        names,
        [".", "..", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "sub"]
    );
    assert!(all.iter().enumerate().all(|(i, e)| e.0 == i as u64 + 1));
    assert_eq!(all[0].2, d.0);
    assert_eq!(all[1].2, crate::tree::ROOT_INO);
    for offset in 0..=all.len() + 1 {
        assert_eq!(
            list(offset as u64),
            all[offset.min(all.len())..],
            "at {offset}"
        );
    }
}
