//! Reading registry responses: JSON bodies, size-limited bodies, and error statuses with the
//! registry's own message.

use bytes::Bytes;
use reqwest::Response;

use crate::RegistryError;

/// The JSON body of a GET response.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    resp: Response,
    url: &str,
) -> Result<T, RegistryError> {
    resp.json()
        .await
        .map_err(|source| RegistryError::Transport {
            method: "GET".into(),
            url: url.to_string(),
            source,
        })
}

/// How long an error answer's body may take: its message is only a nicety.
const ERROR_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A manifest-sized body (at most `limit` bytes), read within the stall deadline.
pub(crate) async fn read_limited(
    resp: Response,
    limit: usize,
    request: &crate::stall::Request,
) -> Result<Bytes, RegistryError> {
    let url = &request.url;
    if resp
        .content_length()
        .is_some_and(|l| usize::try_from(l).map_or(true, |l| l > limit))
    {
        return Err(RegistryError::Protocol {
            registry: url.to_string(),
            reason: format!("manifest larger than {limit} bytes"),
        });
    }
    request.read_all(resp, Some(limit)).await
}

pub(crate) async fn status_error(method: &str, url: &str, resp: Response) -> RegistryError {
    let status = resp.status();
    let body = tokio::time::timeout(ERROR_BODY_WAIT, resp.bytes())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = v.get("errors")?.get(0)?;
            let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
            let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
            Some(format!("{code} {msg}").trim().to_string())
        })
        .unwrap_or_default();
    RegistryError::Status {
        method: method.to_string(),
        url: url.to_string(),
        status,
        message,
    }
}
