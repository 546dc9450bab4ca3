// Test streams are a few MiB: sizes and offsets fit every integer type.
#![allow(clippy::cast_possible_truncation)]

use super::*;
use crate::zran_stream::build;
use std::io::Write;

/// Bytes that compress somewhat (so blocks end at odd bit offsets) but not to nothing.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3 == 0 {
                b'a' + (x % 7) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

#[test]
fn every_offset_reads_back_from_its_checkpoint() {
    let data = noise(3 << 20, 7);
    let blob = gzip(&data);
    let built = build(&blob[..], 256 << 10).unwrap();
    assert_eq!(built.compressed_size, blob.len() as u64);
    assert_eq!(built.uncompressed_size, data.len() as u64);
    let z = &built.zinfo;
    assert!(
        z.checkpoints.len() > 5,
        "{} checkpoints",
        z.checkpoints.len()
    );
    assert!(z.checkpoints.iter().any(|c| c.bits != 0));
    for at in [0u64, 1, 100_000, 1 << 20, (3 << 20) - 10] {
        let i = z.span_of(at);
        let p = &z.checkpoints[i];
        let got = extract(&blob[p.span_start() as usize..], p, at, 10).unwrap();
        assert_eq!(got, &data[at as usize..at as usize + 10], "at {at}");
    }
    // A span alone holds its own output.
    for i in 0..z.checkpoints.len() {
        let r = z.span_range(i, blob.len() as u64);
        let out = z.span_output(i, data.len() as u64);
        let got = extract(
            &blob[r.start as usize..r.end as usize],
            &z.checkpoints[i],
            out.start,
            (out.end - out.start) as usize,
        )
        .unwrap();
        assert!(
            got == data[out.start as usize..out.end as usize],
            "span {i}"
        );
    }
}

#[test]
fn multi_member_streams_are_indexed_across_members() {
    let (a, b) = (noise(700 << 10, 1), noise(900 << 10, 2));
    let mut blob = gzip(&a);
    blob.extend_from_slice(&gzip(&b));
    let built = build(&blob[..], 128 << 10).unwrap();
    let all: Vec<u8> = [a.clone(), b].concat();
    assert_eq!(built.uncompressed_size, all.len() as u64);
    let z = &built.zinfo;
    // A read that starts in the first member and ends in the second.
    let at = a.len() as u64 - 1000;
    let p = &z.checkpoints[z.span_of(at)];
    let got = extract(&blob[p.span_start() as usize..], p, at, 5000).unwrap();
    assert_eq!(got, &all[at as usize..at as usize + 5000]);
}

#[test]
fn blob_round_trips_and_rejects_bad_sizes() {
    let blob = gzip(&noise(1 << 20, 3));
    let z = build(&blob[..], 100 << 10).unwrap().zinfo;
    let bytes = z.to_blob();
    assert_eq!(Zinfo::from_blob(&bytes).unwrap(), z);
    let err = Zinfo::from_blob(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(err.to_string().contains("do not hold"), "{err}");
    assert!(Zinfo::from_blob(&bytes[..5]).is_err());
}

#[test]
fn truncated_and_corrupt_streams_are_errors() {
    let blob = gzip(&noise(200 << 10, 4));
    let err = build(&blob[..blob.len() / 2], 64 << 10).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let built = build(&blob[..], 64 << 10).unwrap();
    let p = &built.zinfo.checkpoints[0];
    let err = extract(
        &blob[p.span_start() as usize..blob.len() / 4],
        p,
        0,
        200 << 10,
    )
    .unwrap_err();
    assert!(matches!(err, ZranError::Short { .. }), "{err}");
}

#[test]
fn incompressible_streams_get_checkpoints_too() {
    let mut x = 99u64;
    let data: Vec<u8> = (0..(2 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let blob = gzip(&data);
    let z = build(&blob[..], 256 << 10).unwrap().zinfo;
    assert!(
        z.checkpoints.len() >= 7,
        "{} checkpoints",
        z.checkpoints.len()
    );
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    w.write_all(&data).unwrap();
    let fast = w.finish().unwrap();
    // zlib-rs's fastest level writes few, long blocks: few places to checkpoint (SOCI's
    // limit as well), but still a sound index.
    let zf = build(&fast[..], 256 << 10).unwrap().zinfo;
    assert!(!zf.checkpoints.is_empty());
    let at = 1_500_000u64;
    let p = &z.checkpoints[z.span_of(at)];
    let got = extract(&blob[p.span_start() as usize..], p, at, 1000).unwrap();
    assert_eq!(got, &data[at as usize..at as usize + 1000]);
}
