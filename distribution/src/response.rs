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

pub(crate) async fn read_limited(
    resp: Response,
    limit: usize,
    url: &str,
) -> Result<Bytes, RegistryError> {
    if resp
        .content_length()
        .is_some_and(|l| usize::try_from(l).map_or(true, |l| l > limit))
    {
        return Err(RegistryError::Protocol {
            registry: url.to_string(),
            reason: format!("manifest larger than {limit} bytes"),
        });
    }
    let b = resp
        .bytes()
        .await
        .map_err(|source| RegistryError::Transport {
            method: "GET".into(),
            url: url.to_string(),
            source,
        })?;
    if b.len() > limit {
        return Err(RegistryError::Protocol {
            registry: url.to_string(),
            reason: format!("manifest larger than {limit} bytes"),
        });
    }
    Ok(b)
}

pub(crate) async fn status_error(method: &str, url: &str, resp: Response) -> RegistryError {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
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
