//! ADD from a URL: the file is downloaded (not extracted) and hashed for the cache.

use std::path::Path;

use sha2::{Digest as _, Sha256};

/// Downloads `url` to `to` with `images`' registry client (so within its stall deadline);
/// returns the sha256 of its bytes.
pub fn download(
    rt: &tokio::runtime::Handle,
    images: &strata_image::Images,
    url: &str,
    to: &Path,
) -> Result<String, String> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let fail = |e: &dyn std::fmt::Display| format!("downloading {url}: {e}");
    rt.block_on(images.client().download(url, to))
        .map_err(|e| fail(&strata_oci::causes::with_causes(&e)))?;
    let mut file = std::fs::File::open(to).map_err(|e| fail(&e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).map_err(|e| fail(&e))?;
    Ok(hex::encode(h.finalize()))
}
