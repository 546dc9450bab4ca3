//! Manifests, indexes and image configs as a registry or an archive serves them, with the TOC
//! annotations of each layer descriptor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_formats::toc::TocAnnotations;
use strata_oci::config::ImageConfig;
use strata_oci::manifest::{Index, Manifest, media_type_of};

fuzz_target!(|data: &[u8]| {
    let _ = media_type_of(data);
    if let Ok(m) = Manifest::from_slice(data, "fuzz") {
        let _ = m.media_type_or_oci();
        for l in &m.layers {
            let _ = TocAnnotations::parse(&l.annotations());
        }
        // What strata writes back must parse again.
        Manifest::from_slice(&m.to_vec(), "again").expect("re-encoded manifest parses");
    }
    if let Ok(i) = Index::from_slice(data, "fuzz") {
        for d in &i.manifests {
            let _ = d.annotations();
        }
    }
    let _ = ImageConfig::from_slice(data, "fuzz");
});
