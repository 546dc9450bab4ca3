//! Layer tars (every dialect: ustar, GNU, PAX, sparse) through the byte-exact walk the layer
//! writers and the plain-layer indexer share.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use strata_formats::sparse::SparseMap;
use strata_formats::tarwalk::{TarVisitor, WalkError, walk_tar};
use strata_formats::toc::TocEntry;

/// Reads what a visitor is given, like the writers do, but never more than a bound of a
/// sparse file's zeros (an archive of a few bytes may describe an exabyte of holes).
struct Visit {
    segments: u64,
}

impl TarVisitor for Visit {
    fn segment(&mut self, bytes: &[u8]) -> Result<(), WalkError> {
        self.segments += bytes.len() as u64;
        Ok(())
    }

    fn entry(&mut self, meta: TocEntry, payload: &mut dyn Read) -> Result<(), WalkError> {
        let _ = meta.name.len();
        io::copy(payload, &mut io::sink())?;
        Ok(())
    }

    fn sparse(
        &mut self,
        meta: TocEntry,
        map: &SparseMap,
        data: &mut dyn Read,
    ) -> Result<(), WalkError> {
        let _ = (meta.size, map.data_bytes());
        io::copy(data, &mut io::sink())?;
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = walk_tar(data, &mut Visit { segments: 0 });
});
