//! Local ztocs: the SOCI index strata built for a gzip layer while streaming it (it had none of
//! its own). The ztoc is a blob of the store (checked against its digest whenever it is read);
//! `ztocs/<layer hex>` names it for its layer.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::{Store, StoreError, io_err};
use crate::atomic;
use strata_oci::digest::Digest;

impl Store {
    fn local_ztoc_path(&self, layer: &Digest) -> PathBuf {
        self.root.join("ztocs").join(layer.hex())
    }

    /// Keeps `bytes`, a ztoc built here for `layer`; returns its digest.
    pub fn put_local_ztoc(&self, layer: &Digest, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        self.put_blob(&d, bytes)?;
        let p = self.local_ztoc_path(layer);
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        atomic::write_file(&p, d.to_string().as_bytes()).map_err(io_err(&p))?;
        Ok(d)
    }

    /// The digest of the ztoc built here for `layer`, if there is one.
    pub fn local_ztoc_digest(&self, layer: &Digest) -> Result<Option<Digest>, StoreError> {
        let p = self.local_ztoc_path(layer);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&p)(e)),
        };
        text.trim()
            .parse()
            .map(Some)
            .map_err(|e: strata_oci::digest::DigestError| StoreError::Corrupt {
                path: p,
                reason: e.to_string(),
            })
    }

    /// The ztoc built here for `layer` (its digest and bytes, verified), if there is one.
    pub fn local_ztoc(&self, layer: &Digest) -> Result<Option<(Digest, Vec<u8>)>, StoreError> {
        match self.local_ztoc_digest(layer)? {
            Some(d) if self.has_blob(&d) => Ok(Some((d, self.get_blob(&d)?))),
            _ => Ok(None),
        }
    }

    /// Forgets the ztoc built here for `layer` (its blob goes with the next collection).
    pub fn remove_local_ztoc(&self, layer: &Digest) -> Result<(), StoreError> {
        let p = self.local_ztoc_path(layer);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&p)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_ztoc_is_kept_by_layer_and_checked_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let layer = Digest::of(b"layer");
        assert!(s.local_ztoc(&layer).unwrap().is_none());
        let d = s.put_local_ztoc(&layer, b"ztoc bytes").unwrap();
        assert_eq!(
            s.local_ztoc(&layer).unwrap(),
            Some((d, b"ztoc bytes".to_vec()))
        );
        fs::write(dir.path().join("blobs/sha256").join(d.hex()), b"ztoc bytez").unwrap();
        assert!(s.local_ztoc(&layer).is_err());
        s.remove_local_ztoc(&layer).unwrap();
        assert!(s.local_ztoc(&layer).unwrap().is_none());
    }
}
