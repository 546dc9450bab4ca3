use super::*;
use strata_formats::index::{Chunk, ChunkLoc, Entry, Kind, LayerIndex};
use strata_storage::cache::ChunkCache;
use strata_storage::source::NoSource;

fn reg(path: &str) -> Entry {
    Entry {
        size: 10,
        chunks: vec![Chunk {
            file_offset: 0,
            len: 10,
            digest: None,
            loc: ChunkLoc::Zeros,
        }],
        ..crate::tree::test_entry(path, Kind::Reg)
    }
}

fn dir(path: &str) -> Entry {
    crate::tree::test_entry(path, Kind::Dir)
}

fn link(path: &str, to: &str) -> Entry {
    Entry {
        link: to.as_bytes().to_vec(),
        ..crate::tree::test_entry(path, Kind::Symlink)
    }
}

fn needs_of(interp: &str, needed: &[&str], search: &[&str]) -> Needs {
    Needs {
        interp: Some(interp.as_bytes().to_vec()),
        needed: needed.iter().map(|s| s.as_bytes().to_vec()).collect(),
        search: search.iter().map(|s| s.as_bytes().to_vec()).collect(),
    }
}

/// The container paths of what `n` of a file at `path` resolves to in `tree`, sorted.
fn found(tree: Tree, n: &Needs, path: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(dir.path(), 1 << 20).unwrap());
    let fetcher = Arc::new(ChunkFetcher::new(
        Arc::new(NoSource),
        cache,
        dir.path().into(),
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = Prefetch::new(
        Arc::new(Ready::new(tree, Vec::new())),
        fetcher,
        rt.handle().clone(),
    );
    let mut out: Vec<String> = p
        .candidates(n, path.as_bytes())
        .into_iter()
        .map(|ino| p.ready.tree.path_of(ino))
        .collect();
    out.sort();
    out
}

fn image() -> Vec<Entry> {
    vec![
        dir("usr"),
        dir("usr/lib"),
        dir("usr/lib/x86_64-linux-gnu"),
        dir("opt"),
        dir("opt/app"),
        dir("opt/app/bin"),
        dir("opt/app/lib"),
        link("lib", "usr/lib"),
        link("lib64", "/usr/lib64"),
        dir("usr/lib64"),
        link(
            "usr/lib64/ld-linux-x86-64.so.2",
            "../lib/x86_64-linux-gnu/ld.so",
        ),
        reg("usr/lib/x86_64-linux-gnu/ld.so"),
        reg("usr/lib/x86_64-linux-gnu/libc.so.6"),
        reg("usr/lib/libz.so.1"),
        reg("opt/app/lib/libapp.so"),
        reg("usr/lib/x86_64-linux-gnu/libapp.so"),
        reg("opt/app/bin/app"),
    ]
}

#[test]
fn names_resolve_like_the_loader_through_symlinks_and_origin() {
    let tree = Tree::build([&LayerIndex { entries: image() }]).unwrap();
    let n = needs_of(
        "/lib64/ld-linux-x86-64.so.2",
        &["libapp.so", "libc.so.6", "libz.so.1", "libmissing.so"],
        &["$ORIGIN/../lib"],
    );
    assert_eq!(
        found(tree, &n, "/opt/app/bin/app"),
        [
            "opt/app/lib/libapp.so",
            "usr/lib/libz.so.1",
            "usr/lib/x86_64-linux-gnu/ld.so",
            "usr/lib/x86_64-linux-gnu/libc.so.6",
        ]
    );
}

#[test]
fn in_the_layer_store_every_layers_diff_is_searched() {
    let mut lower = image();
    let upper = lower.split_off(11);
    let mut upper_dirs = vec![dir("usr"), dir("usr/lib"), dir("usr/lib/x86_64-linux-gnu")];
    upper_dirs.extend([
        dir("opt"),
        dir("opt/app"),
        dir("opt/app/bin"),
        dir("opt/app/lib"),
    ]);
    upper_dirs.extend(upper);
    let mut tree = Tree::store();
    let (a, b) = ("a".repeat(64), "b".repeat(64));
    tree.add_layer_dir(
        a.as_bytes(),
        &LayerIndex { entries: lower },
        0,
        b"{}".to_vec(),
        &[],
    )
    .unwrap();
    tree.add_layer_dir(
        b.as_bytes(),
        &LayerIndex {
            entries: upper_dirs,
        },
        1,
        b"{}".to_vec(),
        &[],
    )
    .unwrap();
    let n = needs_of("/lib64/ld-linux-x86-64.so.2", &["libc.so.6"], &[]);
    // The loader's symlinks are in the lower layer, the files they lead to in the upper one.
    assert_eq!(
        found(tree, &n, "/opt/app/bin/app"),
        [
            format!("{b}/diff/usr/lib/x86_64-linux-gnu/ld.so"),
            format!("{b}/diff/usr/lib/x86_64-linux-gnu/libc.so.6"),
        ]
    );
}

#[test]
fn a_symlink_loop_ends() {
    let entries = vec![link("lib", "/lib"), link("lib64", "lib")];
    let tree = Tree::build([&LayerIndex { entries }]).unwrap();
    let n = needs_of("/lib64/ld.so", &["libc.so.6"], &[]);
    assert!(found(tree, &n, "/bin/x").is_empty());
}

#[test]
fn origin_expands_to_the_files_directory() {
    assert_eq!(
        expand_origin(b"$ORIGIN/../lib:${ORIGIN}", b"/opt/app/bin"),
        b"/opt/app/bin/../lib:/opt/app/bin"
    );
    assert_eq!(b"/bin/x".rsplit_once_slash(), b"/bin");
    assert_eq!(b"/x".rsplit_once_slash(), b"/");
}

#[test]
fn the_same_symlink_in_many_layers_is_followed_once_per_path() {
    let mut tree = Tree::store();
    for i in 0..40 {
        let name = format!("{i:064x}");
        // A chain of six links, in every layer: followed per layer, 40^6 lookups.
        let mut entries: Vec<Entry> = (1..6)
            .map(|k| link(&format!("a{k}"), &format!("/a{}", k + 1)))
            .collect();
        entries.extend([link("a6", "/usr/lib"), dir("usr"), dir("usr/lib")]);
        tree.add_layer_dir(
            name.as_bytes(),
            &LayerIndex { entries },
            0,
            b"{}".to_vec(),
            &[],
        )
        .unwrap();
    }
    let last = format!("{:064x}", 40);
    let entries = vec![dir("usr"), dir("usr/lib"), reg("usr/lib/libc.so.6")];
    tree.add_layer_dir(
        last.as_bytes(),
        &LayerIndex { entries },
        0,
        b"{}".to_vec(),
        &[],
    )
    .unwrap();
    let n = needs_of("/a1/libc.so.6", &[], &[]);
    let started = std::time::Instant::now();
    assert_eq!(
        found(tree, &n, "/bin/x"),
        [format!("{last}/diff/usr/lib/libc.so.6")]
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
