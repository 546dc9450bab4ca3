//! Open descriptors of cached chunk files, so that a read of a cached chunk is one `pread`
//! rather than open, read, close. The lock guards only the map: files are opened and read
//! outside it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use strata_oci::digest::Digest;

/// At most this many chunk files are kept open (well below the usual 1024 descriptors limit).
const MAX_OPEN: usize = 256;

/// Open chunk files by digest.
#[derive(Debug, Default)]
pub(crate) struct Descriptors {
    open: Mutex<HashMap<Digest, Arc<File>>>,
}

impl Descriptors {
    /// The open file of chunk `d` at `path`, opening it if needed; `None` if there is no file.
    pub(crate) fn get(&self, d: &Digest, path: &Path) -> io::Result<Option<Arc<File>>> {
        if let Some(f) = self.lock().get(d) {
            return Ok(Some(f.clone()));
        }
        let f = match File::open(path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut open = self.lock();
        if open.len() >= MAX_OPEN {
            // Any half will do: a chunk read again is only opened again.
            let drop: Vec<Digest> = open.keys().take(MAX_OPEN / 2).copied().collect();
            for k in drop {
                open.remove(&k);
            }
        }
        Ok(Some(open.entry(*d).or_insert(f).clone()))
    }

    /// Closes every kept descriptor (after chunk files were removed, so their space is freed).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<File>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}
