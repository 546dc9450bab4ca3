//! The registry's less central endpoints: the repository catalog (`search`), the `/v2/` ping
//! (`login`) and plain downloads (`import URL`).

use futures_util::TryStreamExt;
use reqwest::Method;
use strata_oci::reference::Reference;

use crate::response::{read_json, status_error};
use crate::{RegistryClient, RegistryError};

impl RegistryClient {
    /// The registry's repositories (`GET /v2/_catalog`, following `Link` pages).
    pub async fn catalog(&self, r: &Reference) -> Result<Vec<String>, RegistryError> {
        let base = format!("{}://{}", self.scheme(&r.registry), r.registry);
        let mut url = format!("{base}/v2/_catalog?n=1000");
        let mut out = Vec::new();
        for _ in 0..100 {
            let resp = self
                .send(r, "pull", Method::GET, &url, self.small_timeout(), &|b| b)
                .await?;
            if !resp.status().is_success() {
                return Err(status_error("GET", &url, resp).await);
            }
            let next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split(';').next())
                .map(|l| {
                    l.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string()
                });
            #[derive(serde::Deserialize)]
            struct Catalog {
                #[serde(default)]
                repositories: Vec<String>,
            }
            let page: Catalog = read_json(resp, &url).await?;
            out.extend(page.repositories);
            match next {
                Some(n) if !n.is_empty() => {
                    url = if n.starts_with("http") {
                        n
                    } else {
                        format!("{base}{n}")
                    }
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// The referrers of manifest `digest` with artifact type `artifact_type`, through the OCI
    /// referrers API (`GET /v2/<name>/referrers/<digest>`): the image index's JSON, or `None`
    /// when the registry has no such API (404).
    pub async fn referrers(
        &self,
        r: &Reference,
        digest: &strata_oci::digest::Digest,
        artifact_type: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let url = format!(
            "{}/referrers/{digest}?artifactType={}",
            self.base(r),
            artifact_type.replace('+', "%2B")
        );
        let resp = self
            .send(r, "pull", Method::GET, &url, self.small_timeout(), &|b| b)
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(status_error("GET", &url, resp).await);
        }
        let request = self.request(&r.registry, &Method::GET, &url);
        let body = crate::response::read_limited(resp, crate::MAX_MANIFEST_BYTES, &request).await?;
        Ok(Some(body.to_vec()))
    }

    /// Downloads a plain URL (no registry auth) to `to` (for `import URL`).
    pub async fn download(&self, url: &str, to: &std::path::Path) -> Result<u64, RegistryError> {
        let (resp, request) = self.get_plain(url).await?;
        if !resp.status().is_success() {
            return Err(status_error("GET", url, resp).await);
        }
        let file_err = |source| RegistryError::File {
            path: to.to_path_buf(),
            source,
        };
        let mut f = std::fs::File::create(to).map_err(file_err)?;
        let mut body = std::pin::pin!(request.stream(resp));
        let mut n = 0u64;
        while let Some(piece) = body.try_next().await? {
            std::io::Write::write_all(&mut f, &piece).map_err(file_err)?;
            n += piece.len() as u64;
        }
        Ok(n)
    }

    /// `GET /v2/` — checks that the registry answers and the credentials work.
    pub async fn ping(&self, r: &Reference) -> Result<(), RegistryError> {
        let url = format!("{}://{}/v2/", self.scheme(&r.registry), r.registry);
        let resp = self
            .send(r, "pull", Method::GET, &url, self.small_timeout(), &|b| b)
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(status_error("GET", &url, resp).await)
        }
    }
}
