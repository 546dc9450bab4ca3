//! `Retry-After` (RFC 9110 §10.2.3): how long a rate-limited registry asks us to wait.

use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use reqwest::{Method, Response, StatusCode};
use tracing::info;

use super::{ClientOptions, RegistryError};

/// A request refused by a rate limit for longer than the allowed wait.
#[derive(Debug, thiserror::Error)]
#[error(
    "registry {registry}: {method} {url}: {status} (rate limited): still refused after waiting {waited_secs}s of at most {limit_secs}s (--rate-limit-wait); next wait {next_secs}s"
)]
pub struct RateLimited {
    /// The registry.
    pub registry: String,
    /// Request method.
    pub method: String,
    /// Request URL.
    pub url: String,
    /// The last status (429 or 503).
    pub status: StatusCode,
    /// Seconds already waited for this request.
    pub waited_secs: u64,
    /// The allowed total wait.
    pub limit_secs: u64,
    /// The next wait: what the last `Retry-After` asked for, or the back-off without one.
    pub next_secs: u64,
}

/// For a 429 answer, or a 503 carrying `Retry-After`: how long to wait before asking again,
/// added to `waited`; an error once the total would pass `rate_limit_wait_secs`. A 429
/// without a usable `Retry-After` (missing, negative, garbage) backs off 1 s, then as long as
/// already waited (doubling, at most 30 s a wait), within the same bound. `None` for other
/// answers (a 503 without the header is an ordinary server error and follows the ordinary
/// retry rules).
pub(super) fn rate_limit_wait(
    opts: &ClientOptions,
    registry: &str,
    method: &Method,
    url: &str,
    resp: &Response,
    waited: &mut Duration,
) -> Result<Option<Duration>, RegistryError> {
    let status = resp.status();
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return Ok(None);
    }
    let asked = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    let wait = match asked {
        Some(wait) => wait,
        None if status == StatusCode::TOO_MANY_REQUESTS => {
            (*waited).clamp(Duration::from_secs(1), Duration::from_secs(30))
        }
        None => return Ok(None),
    };
    // Never spin: a Retry-After of 0 (or a date in the past) still waits a little.
    let wait = wait.max(Duration::from_millis(100));
    let limit = Duration::from_secs(opts.rate_limit_wait_secs);
    if *waited + wait > limit {
        return Err(RegistryError::RateLimited(Box::new(RateLimited {
            registry: registry.to_string(),
            method: method.to_string(),
            url: url.to_string(),
            status,
            waited_secs: waited.as_secs(),
            limit_secs: limit.as_secs(),
            next_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        })));
    }
    *waited += wait;
    info!(%url, %status, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "registry asks to retry later");
    Ok(Some(wait))
}

/// The wait a `Retry-After` value asks for: delta-seconds, or an HTTP date (IMF-fixdate, e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`) relative to `now`. A date in the past means no wait.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, format)
        .ok()?
        .assume_utc();
    let at = std::time::SystemTime::from(at);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait before attempt `attempt + 1` of a request to `url` whose `result` was a transient
/// failure (a 5xx, a 429 not handled as a rate limit, a transport error), if attempts are left
/// of `attempts`: 100 ms doubling per attempt, at most 3.2 s. Logs the retry.
pub(crate) fn transient_wait(
    result: &reqwest::Result<reqwest::Response>,
    attempt: u32,
    attempts: u32,
    url: &str,
) -> Option<std::time::Duration> {
    let transient = match result {
        Ok(resp) => {
            let s = resp.status();
            s.is_server_error() || s == reqwest::StatusCode::TOO_MANY_REQUESTS
        }
        Err(e) => !e.is_builder(),
    };
    if !transient || attempt >= attempts {
        return None;
    }
    match result {
        Ok(resp) => {
            tracing::info!(%url, status = %resp.status(), attempt, "registry error, retrying")
        }
        Err(e) => tracing::info!(%url, error = %e, attempt, "transport error, retrying"),
    }
    Some(std::time::Duration::from_millis(
        100 * (1 << attempt.min(5)),
    ))
}
