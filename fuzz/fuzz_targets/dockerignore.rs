//! `.dockerignore` files, and matching paths against them.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata_builder::context::Ignore;

fuzz_target!(|text: &str| {
    if let Ok(ig) = Ignore::parse(text) {
        for p in ["a", "a/b", "a/b/c.txt", ".git", "src/main.rs", "Dockerfile"] {
            let _ = ig.excluded(Path::new(p));
            let _ = ig.enter_excluded(Path::new(p));
        }
        // Each line's own text as a path, too.
        for line in text.lines().take(16) {
            let _ = ig.excluded(Path::new(line.trim_start_matches('!')));
        }
    }
});
