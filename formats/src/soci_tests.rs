// Test layers are a few MiB: sizes and offsets fit every integer type.
#![allow(clippy::cast_possible_truncation)]

use super::*;
use crate::zran::tests::noise;
use std::io::{Cursor, Write};

/// A gzip tar with directories, files of many sizes (some spanning several spans), a symlink
/// and a hardlink; returns the blob and each regular file's (name, content).
fn layer() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut files = Vec::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "usr/lib/", &[][..]).unwrap();
    for (i, size) in [0usize, 1, 511, 4096, 100_000, 1 << 20, 2_500_000, 70_000]
        .into_iter()
        .enumerate()
    {
        let name = format!("usr/lib/f{i}");
        let data = noise(size, i as u64 + 11);
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(size as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, &name, &data[..]).unwrap();
        files.push((name, data));
    }
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Symlink);
    l.set_size(0);
    b.append_link(&mut l, "usr/lib/link", "f1").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "usr/hard", "usr/lib/f3").unwrap();
    let tar = b.into_inner().unwrap();
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    w.write_all(&tar).unwrap();
    (w.finish().unwrap(), files)
}

const SPAN: u64 = 256 << 10;

#[test]
fn every_file_reads_back_from_verified_spans() {
    let (blob, files) = layer();
    let z = build_ztoc(Cursor::new(&blob), SPAN).unwrap();
    assert_eq!(z.compressed_size, blob.len() as u64);
    assert!(z.span_digests.len() > 4, "{} spans", z.span_digests.len());
    let again = Ztoc::parse(&z.to_bytes()).unwrap();
    assert_eq!(again, z);
    for (name, data) in &files {
        let f = z.files.iter().find(|f| f.name == name.as_bytes()).unwrap();
        let range = f.uncompressed_offset..f.uncompressed_offset + f.uncompressed_size;
        let (_, blob_range) = z.spans_for(range.clone());
        let got = z
            .read(
                &blob[blob_range.start as usize..blob_range.end as usize],
                blob_range.start,
                range,
            )
            .unwrap();
        assert!(got == *data, "{name}: {} bytes differ", data.len());
    }
}

#[test]
fn layer_index_chunks_are_span_pieces_that_read_back() {
    let (blob, files) = layer();
    let z = build_ztoc(Cursor::new(&blob), SPAN).unwrap();
    let index = z.layer_index().unwrap();
    let link = index
        .entries
        .iter()
        .find(|e| e.path == b"usr/hard")
        .unwrap();
    assert_eq!(
        (link.kind, &link.link[..]),
        (Kind::Hardlink, &b"usr/lib/f3"[..])
    );
    for (name, data) in &files {
        let e = index
            .entries
            .iter()
            .find(|e| e.path == name.as_bytes())
            .unwrap();
        assert_eq!(e.size, data.len() as u64);
        let mut got = Vec::new();
        for c in &e.chunks {
            let ChunkLoc::Zran { start, end, inner } = c.loc else {
                panic!("{name}: chunk at {} is not in a span", c.file_offset)
            };
            let span = &blob[start as usize..end as usize];
            assert_eq!(c.digest, Some(Digest::of(span)));
            let i = z
                .span_digests
                .iter()
                .position(|d| Some(*d) == c.digest)
                .unwrap();
            let p = &z.zinfo.checkpoints[i];
            got.extend(zran::extract(span, p, p.uncompressed + inner, c.len as usize).unwrap());
        }
        assert!(got == *data, "{name}");
        assert!(e.chunks.len() <= (data.len() as u64 / SPAN) as usize + 2);
    }
}

#[test]
fn a_flipped_byte_in_a_span_is_an_error_not_data() {
    let (mut blob, files) = layer();
    let z = build_ztoc(Cursor::new(&blob), SPAN).unwrap();
    let f = z
        .files
        .iter()
        .find(|f| f.name == files[6].0.as_bytes())
        .unwrap();
    let range = f.uncompressed_offset..f.uncompressed_offset + f.uncompressed_size;
    let (spans, r) = z.spans_for(range.clone());
    let flip = z.zinfo.span_range(spans.end - 1, blob.len() as u64).start as usize + 7;
    blob[flip] ^= 0x40;
    let err = z
        .read(&blob[r.start as usize..r.end as usize], r.start, range)
        .unwrap_err();
    assert!(matches!(err, SociError::SpanDigest { .. }), "{err}");
    assert!(err.to_string().contains("the ztoc says"), "{err}");
}

#[test]
fn short_data_and_wrong_layers_are_errors() {
    let (blob, _) = layer();
    let z = build_ztoc(Cursor::new(&blob), SPAN).unwrap();
    let range = 0..z.uncompressed_size;
    let (_, r) = z.spans_for(range.clone());
    let err = z.read(&blob[..r.end as usize - 1], 0, range).unwrap_err();
    assert!(matches!(err, SociError::ShortSpan { .. }), "{err}");
    let other = Digest::of(b"another layer");
    let err = z.check_layer(&other, blob.len() as u64 + 1).unwrap_err();
    assert!(err.to_string().contains("ztoc indexes a"), "{err}");
    z.check_layer(&other, blob.len() as u64).unwrap();
}

#[test]
fn a_toc_past_the_layer_end_is_refused() {
    let (blob, _) = layer();
    let mut z = build_ztoc(Cursor::new(&blob), SPAN).unwrap();
    z.files[3].uncompressed_offset = z.uncompressed_size - 10;
    let err = Ztoc::parse(&z.to_bytes()).unwrap_err();
    assert!(err.to_string().contains("past the end"), "{err}");
}

/// The fuzz property, over every truncation and many corruptions of a real ztoc: parsing
/// never panics, a truncated ztoc is always an error, and whatever parses is self-consistent.
#[test]
fn damaged_ztocs_never_panic() {
    let (blob, _) = layer();
    let bytes = build_ztoc(Cursor::new(&blob), 1 << 20).unwrap().to_bytes();
    for len in (0..bytes.len())
        .step_by(97)
        .chain(bytes.len() - 64..bytes.len())
    {
        assert!(
            Ztoc::parse(&bytes[..len]).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = bytes.clone();
        for k in 0..(x % 4 + 1) {
            let at = ((x >> (8 * k)) as usize) % b.len();
            b[at] = b[at].wrapping_add((x >> 40) as u8 | 1);
        }
        if let Ok(z) = Ztoc::parse(&b) {
            assert_eq!(z.span_digests.len(), z.zinfo.checkpoints.len());
            let _ = z.layer_index();
        }
    }
}

/// Found by the ztoc fuzzer: a first checkpoint past offset 0 left the tar's first bytes in no
/// span, and cutting a file there underflowed.
#[test]
fn a_first_checkpoint_past_the_start_is_refused() {
    let (blob, _) = layer();
    let mut z = build_ztoc(Cursor::new(&blob), SPAN).unwrap();
    assert!(z.zinfo.checkpoints.len() > 1);
    z.zinfo.checkpoints[0].uncompressed = 1;
    let err = Ztoc::parse(&z.to_bytes()).unwrap_err();
    assert!(err.to_string().contains("first checkpoint"), "{err}");
}
