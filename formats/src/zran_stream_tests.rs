// Test streams are a few MiB: sizes and offsets fit every integer type.
#![allow(clippy::cast_possible_truncation)]

use super::*;
use crate::zran::extract;
use crate::zran::tests::noise;
use std::io::Write;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

/// Reads `r` in uneven pieces, as a tar walker does.
fn read_unevenly(r: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let sizes = [512usize, 1, 70_000, 4096, 3];
    let mut i = 0;
    loop {
        let mut buf = vec![0u8; sizes[i % sizes.len()]];
        i += 1;
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn streamed_output_is_the_data_and_spans_hash_to_their_bytes() {
    let (a, b) = (noise(1_500_000, 5), noise(900_000, 6));
    let mut blob = gzip(&a);
    blob.extend_from_slice(&gzip(&b));
    let all = [a, b].concat();
    let mut gz = GzipIndexer::new(&blob[..], 200 << 10).unwrap();
    assert!(read_unevenly(&mut gz) == all);
    let done = gz.finish().unwrap();
    assert_eq!(done.compressed_size, blob.len() as u64);
    assert_eq!(done.uncompressed_size, all.len() as u64);
    let z = &done.zinfo;
    assert!(
        z.checkpoints.len() > 8,
        "{} checkpoints",
        z.checkpoints.len()
    );
    assert!(z.checkpoints.iter().any(|c| c.bits != 0));
    assert_eq!(done.span_digests.len(), z.checkpoints.len());
    for (i, d) in done.span_digests.iter().enumerate() {
        let r = z.span_range(i, blob.len() as u64);
        assert_eq!(
            *d,
            Digest::of(&blob[r.start as usize..r.end as usize]),
            "span {i}"
        );
        let out = z.span_output(i, all.len() as u64);
        let got = extract(
            &blob[r.start as usize..r.end as usize],
            &z.checkpoints[i],
            out.start,
            (out.end - out.start) as usize,
        )
        .unwrap();
        assert!(got == all[out.start as usize..out.end as usize], "span {i}");
    }
}

#[test]
fn a_truncated_stream_is_an_error_for_the_reader_and_finish() {
    let blob = gzip(&noise(300_000, 9));
    let mut gz = GzipIndexer::new(&blob[..blob.len() - 20], 64 << 10).unwrap();
    let err = std::io::copy(&mut gz, &mut std::io::sink()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let err = gz.finish().unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let mut bad = blob.clone();
    bad[blob.len() / 2] ^= 0x55;
    let mut gz = GzipIndexer::new(&bad[..], 64 << 10).unwrap();
    assert!(std::io::copy(&mut gz, &mut std::io::sink()).is_err());
}
