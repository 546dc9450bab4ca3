//! SOCI ztocs (flatbuffers): parsed, checked, and turned into a layer index.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_formats::zran::Zinfo;
use strata_formats::ztoc::Ztoc;

fuzz_target!(|data: &[u8]| {
    if let Ok(z) = Ztoc::parse(data) {
        let _ = z.layer_index();
        let end = z.uncompressed_size;
        let _ = z.spans_for(0..end);
        let _ = z.spans_for(end / 2..end);
        // What strata writes back must parse again.
        Ztoc::parse(&z.to_bytes()).expect("re-encoded ztoc parses");
    }
    let _ = Zinfo::from_blob(data);
});
