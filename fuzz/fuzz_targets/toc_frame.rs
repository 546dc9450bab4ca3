//! The zstd:chunked footer and compressed TOC frame of a blob's tail: the footer says how big
//! the TOC is, the frame is decompressed and parsed under that bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_formats::index::{LayerIndex, Locations};
use strata_formats::toc::{Footer, decode_toc};

fuzz_target!(|data: &[u8]| {
    let _ = Footer::decode(data);
    if data.len() < 2 {
        return;
    }
    // The announced uncompressed size: small ones mostly, sometimes anything.
    let (len, frame) = data.split_at(2);
    let announced = u64::from(u16::from_le_bytes([len[0], len[1]]));
    if let Ok(toc) = decode_toc(frame, announced) {
        let _ = LayerIndex::from_toc(&toc, Locations::Zstd);
    }
});
