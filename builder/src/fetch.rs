//! ADD from a URL: the file is downloaded (not extracted) and hashed for the cache.

use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// Downloads `url` to `to`; returns the sha256 of its bytes.
pub fn download(rt: &tokio::runtime::Handle, url: &str, to: &Path) -> Result<String, String> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let fail = |e: &dyn std::fmt::Display| format!("downloading {url}: {e}");
    rt.block_on(async {
        let mut resp = reqwest::get(url).await.map_err(|e| fail(&e))?;
        if !resp.status().is_success() {
            return Err(fail(&resp.status()));
        }
        let mut out = std::fs::File::create(to).map_err(|e| fail(&e))?;
        let mut h = Sha256::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(&e))? {
            h.update(&chunk);
            out.write_all(&chunk).map_err(|e| fail(&e))?;
        }
        Ok(hex::encode(h.finalize()))
    })
}
