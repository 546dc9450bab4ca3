//! Sparse files as GNU tar writes them, in every dialect, through the tar walk (plain layers),
//! the native writer and its index (convert, import): the file read back is the original.
// Test files are 10 MiB: their sizes and offsets fit every integer type.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::io::Read;
use std::path::Path;
use std::process::Command;

use crate::chunked::write_chunked;
use crate::index::{ChunkLoc, LayerIndex, Locations};
use crate::tarwalk::{TarVisitor, WalkError, walk_tar};
use crate::toc::TocEntry;

const SIZE: u64 = 10 << 20;

/// A 10 MiB file with a few bytes at 5,000,000 and at its end; the rest holes.
fn sparse_source(dir: &Path) -> Vec<u8> {
    let mut want = vec![0u8; SIZE as usize];
    want[5_000_000..5_000_004].copy_from_slice(b"ABCD");
    want[SIZE as usize - 4..].copy_from_slice(b"END!");
    let f = std::fs::File::create(dir.join("big")).unwrap();
    f.set_len(SIZE).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(b"ABCD", 5_000_000).unwrap();
    f.write_at(b"END!", SIZE - 4).unwrap();
    want
}

/// `tar ARGS -S -cf - -C dir big`, with GNU tar.
fn gnu_tar(dir: &Path, format: &[&str]) -> Vec<u8> {
    let out = Command::new("tar")
        .args(format)
        .args(["-S", "-cf", "-", "-C"])
        .arg(dir)
        .arg("big")
        .output()
        .expect("GNU tar is needed");
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

const DIALECTS: [&[&str]; 4] = [
    &["--format=gnu"],
    &["--format=pax", "--sparse-version=0.0"],
    &["--format=pax", "--sparse-version=0.1"],
    &["--format=pax", "--sparse-version=1.0"],
];

#[derive(Default)]
struct Files {
    bytes: u64,
    files: Vec<(TocEntry, Vec<u8>)>,
}

impl TarVisitor for Files {
    fn segment(&mut self, b: &[u8]) -> Result<(), WalkError> {
        self.bytes += b.len() as u64;
        Ok(())
    }
    fn entry(&mut self, meta: TocEntry, payload: &mut dyn Read) -> Result<(), WalkError> {
        let mut v = Vec::new();
        payload.read_to_end(&mut v)?;
        self.files.push((meta, v));
        Ok(())
    }
}

#[test]
fn every_dialect_reads_back_the_original_file() {
    let dir = tempfile::tempdir().unwrap();
    let want = sparse_source(dir.path());
    for format in DIALECTS {
        let tar = gnu_tar(dir.path(), format);
        assert!(
            tar.len() < 1 << 20,
            "{format:?}: tar did not write a sparse entry"
        );

        // The walk (plain layers): one file, named as on disk, with the original bytes.
        let mut files = Files::default();
        let (diff_id, n) = walk_tar(&tar[..], &mut files).unwrap();
        assert_eq!(n, tar.len() as u64, "{format:?}");
        assert_eq!(diff_id, strata_oci::Digest::of(&tar));
        assert_eq!(files.files.len(), 1, "{format:?}");
        let (meta, content) = &files.files[0];
        assert_eq!(meta.name, "big", "{format:?}");
        assert_eq!(meta.size as u64, SIZE);
        assert!(content == &want, "{format:?}: content differs");

        // The native writer: the blob is still the exact tar; the index gives the file back
        // with its holes as zeros chunks.
        let mut blob = Vec::new();
        let w = write_chunked(&tar[..], &mut blob, 1).unwrap();
        assert_eq!(zstd::stream::decode_all(&blob[..]).unwrap(), tar);
        let idx = LayerIndex::from_toc(&w.toc, Locations::Zstd).unwrap();
        let f = &idx.entries[0];
        assert_eq!((f.path.as_slice(), f.size), (&b"big"[..], SIZE));
        let mut got = Vec::new();
        for c in &f.chunks {
            match c.loc {
                ChunkLoc::Zeros => got.resize(got.len() + c.len as usize, 0),
                ChunkLoc::Zstd { start, end } => {
                    let d = zstd::bulk::decompress(&blob[start as usize..end as usize], 1 << 20)
                        .unwrap();
                    assert_eq!(d.len() as u64, c.len);
                    assert_eq!(Some(strata_oci::Digest::of(&d)), c.digest);
                    got.extend_from_slice(&d);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(got == want, "{format:?}: native content differs");
        assert!(f.chunks.iter().any(|c| c.loc == ChunkLoc::Zeros));
    }
}

#[test]
fn a_map_that_does_not_fit_its_data_refuses_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    sparse_source(dir.path());
    let mut tar = gnu_tar(dir.path(), &["--format=pax", "--sparse-version=0.1"]);
    // Claim a segment of 8192 bytes where the archive holds 4096 (same record length).
    let needle = b"GNU.sparse.map=4997120,4096,";
    let at = tar
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("map record");
    tar[at + needle.len() - 5..at + needle.len() - 1].copy_from_slice(b"8192");
    let err = walk_tar(&tar[..], &mut Files::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("sparse file \"big\""), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}
