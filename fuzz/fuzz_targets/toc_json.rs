//! TOC JSON (zstd:chunked and eStargz schemas) turned into a layer index: the first input byte
//! picks where chunks live and the data end, the rest is the JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_formats::estargz;
use strata_formats::index::{LayerIndex, Locations};
use strata_formats::toc::Toc;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, json)) = data.split_first() else {
        return;
    };
    let data_end = u64::from(sel >> 2) * 4096;
    if sel & 1 == 0 {
        let _ = estargz::index(json, data_end);
        return;
    }
    let Ok(toc) = serde_json::from_slice::<Toc>(json) else {
        return;
    };
    let locs = match (sel >> 1) % 3 {
        0 => Locations::Zstd,
        1 => Locations::Local,
        _ => Locations::Gzip,
    };
    let _ = LayerIndex::from_toc_bounded(&toc, locs, (sel & 2 != 0).then_some(data_end));
    let _ = LayerIndex::from_toc(&toc, locs);
});
