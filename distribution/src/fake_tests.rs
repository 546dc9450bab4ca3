//! The client against an in-process fake registry and token service: the bearer-token dance,
//! token reuse, digest checks of manifests, and retries. (The real registry is exercised by the
//! end-to-end tests; the distribution registry has no token service to run here.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

#[derive(Default)]
struct Counters {
    tokens: AtomicU32,
    manifests: AtomicU32,
    fail_first: AtomicU32,
    /// Until then, answers (`/token` too when `limit_tokens`) are 429 with `retry_after`.
    limited_until: std::sync::Mutex<Option<std::time::Instant>>,
    retry_after: std::sync::Mutex<String>,
    limit_tokens: std::sync::atomic::AtomicBool,
    limited: AtomicU32,
}

impl Counters {
    fn limit_for(&self, d: Duration, retry_after: impl Into<String>, tokens: bool) {
        *self.limited_until.lock().unwrap() = Some(std::time::Instant::now() + d);
        *self.retry_after.lock().unwrap() = retry_after.into();
        self.limit_tokens.store(tokens, Ordering::SeqCst);
    }

    fn limited_now(&self, token: bool) -> Option<String> {
        if token && !self.limit_tokens.load(Ordering::SeqCst) {
            return None;
        }
        let until = (*self.limited_until.lock().unwrap())?;
        (std::time::Instant::now() < until).then(|| {
            self.limited.fetch_add(1, Ordering::SeqCst);
            self.retry_after.lock().unwrap().clone()
        })
    }
}

/// Serves: /token (bearer tokens), /v2/r/manifests/* (needs `Bearer T1`). `lie` sends a wrong
/// Docker-Content-Digest.
async fn fake(lie: bool, counters: Arc<Counters>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let me = addr.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (c, me) = (counters.clone(), me.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split(' ').nth(1).unwrap_or("").to_string();
                let authed = req
                    .lines()
                    .any(|l| l.eq_ignore_ascii_case("authorization: Bearer T1"));
                let limited = c.limited_now(path.starts_with("/token"));
                let (status, headers, body): (&str, String, Vec<u8>) = if let Some(ra) = limited {
                    (
                        "429 Too Many Requests",
                        format!("Retry-After: {ra}\r\n"),
                        Vec::new(),
                    )
                } else if path.starts_with("/token") {
                    c.tokens.fetch_add(1, Ordering::SeqCst);
                    assert!(path.contains("scope=repository%3Ar%3Apull"), "{path}");
                    (
                        "200 OK",
                        "Content-Type: application/json\r\n".into(),
                        br#"{"token":"T1"}"#.to_vec(),
                    )
                } else if !authed {
                    (
                        "401 Unauthorized",
                        format!(
                            "WWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"fake\",scope=\"repository:r:pull\"\r\n"
                        ),
                        Vec::new(),
                    )
                } else if c.fail_first.load(Ordering::SeqCst) > 0 {
                    c.fail_first.fetch_sub(1, Ordering::SeqCst);
                    ("503 Service Unavailable", String::new(), Vec::new())
                } else {
                    c.manifests.fetch_add(1, Ordering::SeqCst);
                    let d = if lie {
                        Digest::of(b"other")
                    } else {
                        Digest::of(MANIFEST)
                    };
                    (
                        "200 OK",
                        format!(
                            "Content-Type: application/vnd.oci.image.manifest.v1+json\r\nDocker-Content-Digest: {d}\r\n"
                        ),
                        MANIFEST.to_vec(),
                    )
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn bearer_token_is_fetched_once_and_reused() {
    let c = Arc::new(Counters::default());
    let addr = fake(false, c.clone()).await;
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let r: Reference = format!("{addr}/r:1").parse().unwrap();
    let m = client.get_manifest(&r).await.unwrap();
    assert_eq!(m.digest, Digest::of(MANIFEST));
    assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
    client.get_manifest(&r).await.unwrap();
    assert_eq!(c.tokens.load(Ordering::SeqCst), 1);
    assert_eq!(c.manifests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn manifest_with_a_lying_digest_is_refused() {
    let c = Arc::new(Counters::default());
    let addr = fake(true, c).await;
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let r: Reference = format!("{addr}/r:1").parse().unwrap();
    let err = client.get_manifest(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::Digest(_)), "{err}");
    // Pinned by digest: the bytes must hash to it.
    let pinned = r.with_digest(Digest::of(b"something else"));
    assert!(client.get_manifest(&pinned).await.is_err());
}

#[tokio::test]
async fn server_errors_are_retried() {
    let c = Arc::new(Counters::default());
    c.fail_first.store(2, Ordering::SeqCst);
    let addr = fake(false, c.clone()).await;
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let r: Reference = format!("{addr}/r:1").parse().unwrap();
    client.get_manifest(&r).await.unwrap();
    c.fail_first.store(10, Ordering::SeqCst);
    let err = client.get_manifest(&r).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
}

/// An HTTP date (IMF-fixdate) `secs` seconds from now.
fn http_date_in(secs: u64) -> String {
    let t = time::OffsetDateTime::now_utc() + Duration::from_secs(secs);
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(f).unwrap()
}

#[test]
fn retry_after_values() {
    let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
    assert_eq!(
        parse_retry_after(" 120 ", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:27 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-1", now), None);
}

#[tokio::test]
async fn rate_limits_wait_as_retry_after_asks() {
    let c = Arc::new(Counters::default());
    let addr = fake(false, c.clone()).await;
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let r: Reference = format!("{addr}/r:1").parse().unwrap();
    // Limited for 2.5 s, asking for 1 s each time: more than the 4 ordinary attempts (1.5 s).
    c.limit_for(Duration::from_millis(2500), "1", false);
    let t = std::time::Instant::now();
    client.get_manifest(&r).await.unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(2400), "{took:?}");
    assert!(c.limited.load(Ordering::SeqCst) >= 3);
    assert_eq!(c.manifests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn rate_limits_as_http_date_and_on_the_token_service() {
    let c = Arc::new(Counters::default());
    let addr = fake(false, c.clone()).await;
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let r: Reference = format!("{addr}/r:1").parse().unwrap();
    // The token service too is limited; its answers name a date 2 s ahead.
    c.limit_for(Duration::from_millis(1500), http_date_in(2), true);
    let t = std::time::Instant::now();
    client.get_manifest(&r).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(c.tokens.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn rate_limit_past_the_allowed_wait_fails_clearly() {
    let c = Arc::new(Counters::default());
    let addr = fake(false, c.clone()).await;
    let client = RegistryClient::new(ClientOptions {
        rate_limit_wait_secs: 2,
        ..ClientOptions::default()
    })
    .unwrap();
    let r: Reference = format!("{addr}/r:1").parse().unwrap();
    c.limit_for(Duration::from_secs(30), "1", false);
    let t = std::time::Instant::now();
    let err = client.get_manifest(&r).await.unwrap_err();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(matches!(err, RegistryError::RateLimited(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&addr) && msg.contains("rate limited"), "{msg}");
    assert!(msg.contains("429"), "{msg}");
    // A Retry-After longer than the whole allowance fails at once.
    c.limit_for(Duration::from_secs(30), "3600", false);
    let t = std::time::Instant::now();
    assert!(client.get_manifest(&r).await.is_err());
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn rate_limits_without_a_usable_retry_after_back_off_within_the_bound() {
    let c = Arc::new(Counters::default());
    let addr = fake(false, c.clone()).await;
    let client = RegistryClient::new(ClientOptions {
        rate_limit_wait_secs: 6,
        ..ClientOptions::default()
    })
    .unwrap();
    let r: Reference = format!("{addr}/r:1").parse().unwrap();
    // Limited for 2.5 s with an unusable Retry-After: more than the ordinary attempts (1.5 s);
    // the back-off (1 s, 1 s, 2 s) waits it out.
    for header in ["garbage", "-5", ""] {
        c.limit_for(Duration::from_millis(2500), header, false);
        let t = std::time::Instant::now();
        client.get_manifest(&r).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(2400), "{header:?}");
    }
    // A limit that outlasts the bound fails with the rate-limit line, within the bound.
    c.limit_for(Duration::from_secs(60), "", false);
    let t = std::time::Instant::now();
    let err = client.get_manifest(&r).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(matches!(err, RegistryError::RateLimited(_)), "{err}");
    assert!(err.to_string().contains("--rate-limit-wait"), "{err}");
}

/// A registry that accepts every connection (counted) and reads the request, then sends
/// nothing (`half_body` false) or a blob's head and half its body, and nothing more.
async fn stalling(half_body: bool, connections: Arc<AtomicU32>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                if half_body {
                    let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&[1u8; 500]).await;
                }
                tokio::time::sleep(Duration::from_secs(120)).await;
                drop(s);
            });
        }
    });
    addr
}

/// `f`, which must end within 20 s.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("a stalled request waited past 20s")
}

/// A registry that goes quiet, before answering or half way through a blob: the request fails
/// at the stall deadline with an error naming the registry and the blob, and is not retried.
#[tokio::test]
async fn stalled_requests_fail_at_the_stall_deadline_without_retries() {
    let d = Digest::of(b"a blob");
    for half_body in [false, true] {
        let connections = Arc::new(AtomicU32::new(0));
        let addr = stalling(half_body, connections.clone()).await;
        let client = RegistryClient::new(ClientOptions {
            stall_timeout_secs: 1,
            ..ClientOptions::default()
        })
        .unwrap();
        let r: Reference = format!("{addr}/r:1").parse().unwrap();
        let e = bounded(client.get_blob(&r, &d)).await.unwrap_err();
        assert!(e.is_stalled(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&addr) && msg.contains(&d.to_string()) && msg.contains("within 1s"),
            "{msg}"
        );
        let read = match bounded(client.blob_stream(&r, &d)).await {
            Ok(s) => bounded(s.try_collect::<Vec<_>>()).await.map(drop),
            Err(e) => Err(e),
        };
        assert!(read.is_err_and(|e| e.is_stalled()));
        assert_eq!(connections.load(Ordering::SeqCst), 2, "a stall was retried");
    }
}
