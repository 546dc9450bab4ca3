//! Dockerfiles, and ONBUILD triggers read back from image configs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_builder::dockerfile::Dockerfile;

fuzz_target!(|text: &str| {
    let _ = Dockerfile::parse(text);
    let _ = Dockerfile::parse_trigger(text, '\\');
    let _ = Dockerfile::parse_trigger(text, '`');
});
