//! The OCI distribution API client: manifests, blobs, ranges, uploads, with bearer/basic auth,
//! retries with backoff on 5xx/429/transport errors, timeouts, and digest verification of every
//! manifest and whole blob it returns.

pub mod auth;
mod error;
#[cfg(test)]
mod fake_tests;
mod misc;
mod response;
mod retry;
mod stall;
mod upload;

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tracing::{debug, info};

use self::auth::{Challenge, CredentialStore, parse_challenge};
pub use self::error::RegistryError;
use self::response::{read_json, read_limited, status_error};
pub use self::retry::{RateLimited, parse_retry_after};
use self::stall::Progress;
pub use self::stall::{DEFAULT_STALL_SECS, STALL_TIMEOUT_ENV, Stalled};
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;

/// Media types a manifest request accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Blobs larger than this are uploaded in PATCH chunks of this size.
pub const UPLOAD_CHUNK_BYTES: u64 = 16 << 20;

/// Largest manifest accepted (the distribution spec's recommended limit is 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Settings of a [`RegistryClient`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Registries (`host[:port]`) to reach over plain HTTP besides localhost and 127.0.0.0/8.
    pub insecure_registries: Vec<String>,
    /// Time allowed to connect; default 10 s.
    pub connect_timeout_secs: u64,
    /// Time allowed for a whole small request (manifests, HEAD, tokens); default 60 s.
    pub request_timeout_secs: u64,
    /// Attempts for a request that fails with 5xx, 429 or a transport error; default 4.
    pub attempts: u32,
    /// Longest total time one request may spend waiting as a registry's `Retry-After` asks
    /// (429 and 503 answers); default 60 s. Waits that would go past it fail the request.
    pub rate_limit_wait_secs: u64,
    /// Longest time a request may make no progress (no answer, no byte of its answer's body,
    /// no byte of its upload taken) before it fails, not retried; default
    /// [`DEFAULT_STALL_SECS`].
    pub stall_timeout_secs: u64,
    /// Where credentials come from.
    pub credentials: CredentialStore,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            connect_timeout_secs: 10,
            request_timeout_secs: 60,
            attempts: 4,
            rate_limit_wait_secs: 60,
            stall_timeout_secs: DEFAULT_STALL_SECS,
            credentials: CredentialStore::default(),
        }
    }
}

/// A fetched manifest: raw bytes, media type and digest (verified).
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes, as hashed.
    pub bytes: Vec<u8>,
    /// Content-Type the registry reported, or the document's own `mediaType`.
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

/// The answer to a range request.
#[derive(Debug)]
pub enum RangeReply {
    /// 206: exactly the bytes asked for.
    Partial(Bytes),
    /// 200: the registry ignored the range and sent the whole blob (already verified).
    Whole(Bytes),
}

/// A client for OCI registries. Cheap to share; holds a connection pool and a token cache.
#[derive(Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    opts: ClientOptions,
    /// Bearer tokens by (registry, scope).
    tokens: Mutex<HashMap<(String, String), String>>,
    /// Registries that asked for Basic auth.
    basic: Mutex<std::collections::HashSet<String>>,
}

fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(registry)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl RegistryClient {
    /// A client with `opts`.
    pub fn new(opts: ClientOptions) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(opts.connect_timeout_secs))
            // A stalled transfer is caught by the stall deadline (`stall.rs`), which, unlike
            // a read timeout, lets an upload that keeps moving take as long as it needs.
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| RegistryError::Transport {
                method: "INIT".into(),
                url: String::new(),
                source,
            })?;
        Ok(Self {
            http,
            opts,
            tokens: Mutex::new(HashMap::new()),
            basic: Mutex::new(Default::default()),
        })
    }

    /// `http` for loopback and `--insecure-registry` hosts, else `https`.
    pub fn scheme(&self, registry: &str) -> &'static str {
        if is_loopback_host(registry) || self.opts.insecure_registries.iter().any(|r| r == registry)
        {
            "http"
        } else {
            "https"
        }
    }

    fn base(&self, r: &Reference) -> String {
        let host = if r.registry == strata_oci::reference::DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            &r.registry
        };
        format!("{}://{host}/v2/{}", self.scheme(&r.registry), r.repository)
    }

    /// Sends a request built by `build`, authenticating and retrying as needed, each attempt
    /// within `timeout` (if any) and the stall deadline.
    async fn send(
        &self,
        r: &Reference,
        actions: &str,
        method: Method,
        url: &str,
        timeout: Option<Duration>,
        build: &(dyn Fn(RequestBuilder) -> RequestBuilder + Sync),
    ) -> Result<Response, RegistryError> {
        let watch = Watch {
            timeout,
            progress: None,
        };
        self.send_watched(r, actions, method, url, watch, build)
            .await
    }

    /// [`Self::send`] for an upload whose body (built by `build`) marks `progress` as it is
    /// taken: the stall deadline counts from the last piece taken.
    async fn send_upload(
        &self,
        r: &Reference,
        method: Method,
        url: &str,
        progress: &Progress,
        build: &(dyn Fn(RequestBuilder) -> RequestBuilder + Sync),
    ) -> Result<Response, RegistryError> {
        let watch = Watch {
            timeout: None,
            progress: Some(progress.clone()),
        };
        self.send_watched(r, "pull,push", method, url, watch, build)
            .await
    }

    async fn send_watched(
        &self,
        r: &Reference,
        actions: &str,
        method: Method,
        url: &str,
        watch: Watch,
        build: &(dyn Fn(RequestBuilder) -> RequestBuilder + Sync),
    ) -> Result<Response, RegistryError> {
        let timeout = watch.timeout;
        let request = self.request(&r.registry, &method, url);
        let scope = format!("repository:{}:{actions}", r.repository);
        let mut authed_retry = false;
        let mut re_resolved = false;
        let mut attempt = 0u32;
        let mut waited = Duration::ZERO;
        loop {
            attempt += 1;
            let mut req = build(self.http.request(method.clone(), url));
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(h) = self.auth_header(&r.registry, &scope) {
                req = req.header(AUTHORIZATION, h);
            }
            let progress = watch.progress.clone().unwrap_or_default();
            progress.mark();
            let result = tokio::select! {
                result = req.send() => result,
                () = progress.stalled(request.limit) => return Err(request.stalled()),
            };
            if let Ok(resp) = &result
                && let Some(wait) = retry::rate_limit_wait(
                    &self.opts,
                    &r.registry,
                    &method,
                    url,
                    resp,
                    &mut waited,
                )?
            {
                tokio::time::sleep(wait).await;
                continue;
            }
            if let Some(wait) = retry::transient_wait(&result, attempt, self.opts.attempts, url) {
                tokio::time::sleep(wait).await;
                continue;
            }
            let resp = result.map_err(|source| RegistryError::Transport {
                method: method.to_string(),
                url: url.to_string(),
                source,
            })?;
            // A redirect to storage whose signed URL expired (403/401 from where it led):
            // ask the registry again for a fresh one, once.
            if !re_resolved
                && resp.url().as_str() != url
                && matches!(
                    resp.status(),
                    StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED
                )
            {
                re_resolved = true;
                info!(%url, to = %resp.url(), status = %resp.status(), "redirect expired, asking the registry again");
                continue;
            }
            if resp.status() == StatusCode::UNAUTHORIZED && !authed_retry {
                authed_retry = true;
                if self.authenticate(r, &scope, resp.headers()).await? {
                    attempt = 0;
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    fn auth_header(&self, registry: &str, scope: &str) -> Option<String> {
        if let Some(t) = self
            .tokens
            .lock()
            .ok()?
            .get(&(registry.to_string(), scope.to_string()))
        {
            return Some(format!("Bearer {t}"));
        }
        if self.basic.lock().ok()?.contains(registry) {
            return self
                .opts
                .credentials
                .get(registry)
                .map(|c| c.basic_header());
        }
        None
    }

    /// Handles a 401: returns true when a retry may now succeed.
    async fn authenticate(
        &self,
        r: &Reference,
        scope: &str,
        headers: &HeaderMap,
    ) -> Result<bool, RegistryError> {
        let challenge = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_challenge);
        let cred = self.opts.credentials.get(&r.registry);
        match challenge {
            Some(Challenge::Basic) => {
                if cred.is_none() {
                    return Ok(false);
                }
                if let Ok(mut b) = self.basic.lock() {
                    b.insert(r.registry.clone());
                }
                Ok(true)
            }
            Some(Challenge::Bearer { realm, service, .. }) => {
                let token = self
                    .fetch_token(r, scope, &realm, service, cred.as_ref())
                    .await?;
                debug!(registry = %r.registry, scope, "got bearer token");
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert((r.registry.clone(), scope.to_string()), token);
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Asks the token endpoint `realm` for a bearer token for `scope` (with `cred` as basic
    /// auth if there is one), waiting out rate limits as other requests do.
    async fn fetch_token(
        &self,
        r: &Reference,
        scope: &str,
        realm: &str,
        service: Option<String>,
        cred: Option<&auth::Credential>,
    ) -> Result<String, RegistryError> {
        let mut req = self
            .http
            .get(realm)
            .timeout(Duration::from_secs(self.opts.request_timeout_secs));
        let mut query = vec![("scope", scope.to_string())];
        if let Some(s) = service {
            query.push(("service", s));
        }
        req = req.query(&query);
        if let Some(c) = cred {
            req = req.header(AUTHORIZATION, c.basic_header());
        }
        let mut waited = Duration::ZERO;
        let resp = loop {
            let attempt = req.try_clone().ok_or_else(|| RegistryError::Protocol {
                registry: r.registry.clone(),
                reason: "token request cannot be repeated".into(),
            })?;
            let resp = attempt
                .send()
                .await
                .map_err(|source| RegistryError::Transport {
                    method: "GET".into(),
                    url: realm.to_string(),
                    source,
                })?;
            match retry::rate_limit_wait(
                &self.opts,
                &r.registry,
                &Method::GET,
                realm,
                &resp,
                &mut waited,
            )? {
                Some(wait) => tokio::time::sleep(wait).await,
                None => break resp,
            }
        };
        if !resp.status().is_success() {
            return Err(status_error("GET", realm, resp).await);
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = read_json(resp, realm).await?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| RegistryError::Protocol {
                registry: r.registry.clone(),
                reason: format!("token endpoint {realm} returned no token"),
            })
    }

    fn small_timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs(self.opts.request_timeout_secs))
    }

    /// Fetches the manifest (or index) that `r` names, verified against its digest.
    pub async fn get_manifest(&self, r: &Reference) -> Result<FetchedManifest, RegistryError> {
        self.get_manifest_by(r, &r.manifest_reference()).await
    }

    /// Fetches the manifest `reference` (a tag or digest) of `r`'s repository.
    pub async fn get_manifest_by(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let url = format!("{}/manifests/{reference}", self.base(r));
        let resp = self
            .send(r, "pull", Method::GET, &url, self.small_timeout(), &|b| {
                b.header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("GET", &url, resp).await);
        }
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
            .unwrap_or_default();
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok());
        let request = self.request(&r.registry, &Method::GET, &url);
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES, &request).await?;
        let digest = Digest::of(&bytes);
        let expected = reference.parse::<Digest>().ok().or(header_digest);
        if let Some(expected) = expected {
            expected.verify(&bytes)?;
        }
        Ok(FetchedManifest {
            bytes: bytes.to_vec(),
            media_type,
            digest,
        })
    }

    /// Fetches a whole blob into memory, verified. For small blobs (configs).
    pub async fn get_blob(&self, r: &Reference, digest: &Digest) -> Result<Bytes, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base(r));
        let resp = self
            .send(r, "pull", Method::GET, &url, None, &|b| b)
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("GET", &url, resp).await);
        }
        let bytes = self
            .request(&r.registry, &Method::GET, &url)
            .read_all(resp, None)
            .await?;
        digest.verify(&bytes)?;
        Ok(bytes)
    }

    /// Streams a blob. The caller must verify the digest of what it reads before trusting it.
    pub async fn blob_stream(
        &self,
        r: &Reference,
        digest: &Digest,
    ) -> Result<impl Stream<Item = Result<Bytes, RegistryError>> + Send + use<>, RegistryError>
    {
        let url = format!("{}/blobs/{digest}", self.base(r));
        let resp = self
            .send(r, "pull", Method::GET, &url, None, &|b| b)
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("GET", &url, resp).await);
        }
        Ok(self.request(&r.registry, &Method::GET, &url).stream(resp))
    }

    /// Downloads a foreign layer (docker's `foreign.diff`, OCI non-distributable) from one of
    /// the `urls` its descriptor lists; only http and https. The caller verifies the digest.
    pub async fn get_url(&self, url: &str) -> Result<Bytes, RegistryError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(RegistryError::Protocol {
                registry: url.to_string(),
                reason: "foreign layer URL is not http or https".into(),
            });
        }
        let (resp, request) = self.get_plain(url).await?;
        if !resp.status().is_success() {
            return Err(status_error("GET", url, resp).await);
        }
        request.read_all(resp, None).await
    }

    /// Reads `range` of a blob. A registry that ignores ranges sends the whole blob, which is
    /// verified against `digest` and returned as [`RangeReply::Whole`].
    pub async fn get_blob_range(
        &self,
        r: &Reference,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<RangeReply, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base(r));
        let header = format!("bytes={}-{}", range.start, range.end.saturating_sub(1));
        let resp = self
            .send(r, "pull", Method::GET, &url, None, &|b| {
                b.header(RANGE, header.as_str())
            })
            .await?;
        let status = resp.status();
        let request = self.request(&r.registry, &Method::GET, &url);
        let read = |resp: Response| request.read_all(resp, None);
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let b = read(resp).await?;
                if b.len() as u64 != range.end - range.start {
                    return Err(RegistryError::Protocol {
                        registry: r.registry.clone(),
                        reason: format!(
                            "range {header} of {digest} returned {} bytes, expected {}",
                            b.len(),
                            range.end - range.start
                        ),
                    });
                }
                Ok(RangeReply::Partial(b))
            }
            StatusCode::OK => {
                let b = read(resp).await?;
                digest.verify(&b)?;
                Ok(RangeReply::Whole(b))
            }
            _ => Err(status_error("GET", &url, resp).await),
        }
    }

    /// The blob's size if the repository has it.
    pub async fn blob_exists(
        &self,
        r: &Reference,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base(r));
        let resp = self
            .send(r, "pull", Method::HEAD, &url, self.small_timeout(), &|b| b)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.content_length().unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error("HEAD", &url, resp).await),
        }
    }
}

/// How one request is bounded: a total time (small requests), and the stall deadline counted
/// from the attempt's start or from the last progress of its upload.
struct Watch {
    timeout: Option<Duration>,
    progress: Option<Progress>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_insecure() {
        let c = RegistryClient::new(ClientOptions {
            insecure_registries: vec!["reg.lan:5000".into()],
            ..ClientOptions::default()
        })
        .unwrap();
        assert_eq!(c.scheme("127.0.0.1:5000"), "http");
        assert_eq!(c.scheme("127.5.6.7"), "http");
        assert_eq!(c.scheme("localhost:5000"), "http");
        assert_eq!(c.scheme("[::1]:5000"), "http");
        assert_eq!(c.scheme("reg.lan:5000"), "http");
        assert_eq!(c.scheme("quay.io"), "https");
        assert_eq!(c.scheme("10.0.0.1:5000"), "https");
    }
}
