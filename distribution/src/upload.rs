//! Uploads: blobs (monolithic, or in PATCH chunks when large), cross-repository mounts, and
//! manifests.

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};

use super::{Progress, RegistryClient, RegistryError, UPLOAD_CHUNK_BYTES, status_error};
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;

impl RegistryClient {
    /// Uploads a blob held in memory (monolithic POST + PUT); skips it when the registry has it.
    pub async fn put_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        data: Bytes,
    ) -> Result<bool, RegistryError> {
        if self.blob_exists(r, digest).await?.is_some() {
            return Ok(false);
        }
        let location = self.start_upload(r).await?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let resp = self
            .send(r, "pull,push", Method::PUT, &url, None, &|b| {
                b.header(CONTENT_TYPE, "application/octet-stream")
                    .body(data.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(status_error("PUT", &url, resp).await);
        }
        Ok(true)
    }

    /// Uploads a blob from a file; skips it when the registry has it. Blobs up to
    /// [`UPLOAD_CHUNK_BYTES`] go in one streamed PUT; larger ones in PATCH chunks of that size
    /// (`on_bytes` sees the running total), then the closing PUT with the digest.
    pub async fn put_blob_file(
        &self,
        r: &Reference,
        digest: &Digest,
        path: &std::path::Path,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<bool, RegistryError> {
        if self.blob_exists(r, digest).await?.is_some() {
            return Ok(false);
        }
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let location = self.start_upload(r).await?;
        let path = path.to_path_buf();
        if size > UPLOAD_CHUNK_BYTES {
            self.put_blob_chunked(r, digest, &path, size, location, on_bytes)
                .await
                .map_err(|e| e.about_blob(digest))?;
            return Ok(true);
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let progress = Progress::default();
        let resp = self
            .send_upload(r, Method::PUT, &url, &progress, &|b| {
                let body = match std::fs::File::open(&path) {
                    Ok(f) => progress.body_of_stream(tokio_util::io::ReaderStream::new(
                        tokio::fs::File::from_std(f),
                    )),
                    Err(_) => reqwest::Body::from(Vec::new()),
                };
                b.header(CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_LENGTH, size)
                    .body(body)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("PUT", &url, resp).await);
        }
        on_bytes(size);
        Ok(true)
    }

    /// A blob larger than [`UPLOAD_CHUNK_BYTES`] sent as a chunked upload (PATCH per chunk with
    /// its `Content-Range`, then the closing PUT with the digest), as the distribution spec's
    /// "chunked upload" describes; `on_bytes` is told the bytes sent after each chunk.
    async fn put_blob_chunked(
        &self,
        r: &Reference,
        digest: &Digest,
        path: &std::path::Path,
        size: u64,
        mut location: String,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<(), RegistryError> {
        use std::os::unix::fs::FileExt;
        let file_err = |source| RegistryError::File {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(file_err)?;
        let mut at = 0u64;
        while at < size {
            let len = UPLOAD_CHUNK_BYTES.min(size - at);
            // At most UPLOAD_CHUNK_BYTES, which fits any usize.
            let mut piece = vec![0u8; usize::try_from(len).expect("a chunk fits memory")];
            file.read_exact_at(&mut piece, at).map_err(file_err)?;
            let piece = Bytes::from(piece);
            let range = format!("{at}-{}", at + len - 1);
            let progress = Progress::default();
            let resp = self
                .send_upload(r, Method::PATCH, &location, &progress, &|b| {
                    b.header(CONTENT_TYPE, "application/octet-stream")
                        .header("Content-Range", range.as_str())
                        .header(reqwest::header::CONTENT_LENGTH, len)
                        .body(progress.body_of_bytes(piece.clone()))
                })
                .await?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(status_error("PATCH", &location, resp).await);
            }
            if let Some(next) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) {
                location = self.absolute(r, next);
            }
            at += len;
            on_bytes(at);
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let resp = self
            .send(r, "pull,push", Method::PUT, &url, None, &|b| {
                b.header(reqwest::header::CONTENT_LENGTH, 0)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("PUT", &url, resp).await);
        }
        Ok(())
    }

    /// Asks the registry to mount `digest` from repository `from` into `r`'s repository.
    /// Returns false when the registry started an ordinary upload instead.
    pub async fn mount_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        from: &str,
    ) -> Result<bool, RegistryError> {
        let url = format!("{}/blobs/uploads/?mount={digest}&from={from}", self.base(r));
        let resp = self
            .send(
                r,
                "pull,push",
                Method::POST,
                &url,
                self.small_timeout(),
                &|b| b,
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => Ok(false),
            _ => Err(status_error("POST", &url, resp).await),
        }
    }

    async fn start_upload(&self, r: &Reference) -> Result<String, RegistryError> {
        let url = format!("{}/blobs/uploads/", self.base(r));
        let resp = self
            .send(
                r,
                "pull,push",
                Method::POST,
                &url,
                self.small_timeout(),
                &|b| b,
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error("POST", &url, resp).await);
        }
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Protocol {
                registry: r.registry.clone(),
                reason: "upload started without a Location header".into(),
            })?;
        Ok(self.absolute(r, loc))
    }

    /// An upload `Location` as an absolute URL.
    fn absolute(&self, r: &Reference, loc: &str) -> String {
        if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else {
            let host = if r.registry == strata_oci::reference::DEFAULT_REGISTRY {
                "registry-1.docker.io"
            } else {
                &r.registry
            };
            format!("{}://{host}{loc}", self.scheme(&r.registry))
        }
    }

    /// Uploads a manifest under `r`'s tag (or digest); returns its digest.
    pub async fn put_manifest(
        &self,
        r: &Reference,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(&bytes);
        let url = format!(
            "{}/manifests/{}",
            self.base(r),
            r.tag.clone().unwrap_or_else(|| digest.to_string())
        );
        let resp = self
            .send(
                r,
                "pull,push",
                Method::PUT,
                &url,
                self.small_timeout(),
                &|b| b.header(CONTENT_TYPE, media_type).body(bytes.clone()),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("PUT", &url, resp).await);
        }
        Ok(digest)
    }
}
