//! Registry authentication: `WWW-Authenticate` challenges, and credentials from `strata login`
//! and `~/.docker/config.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm=...,service=...,scope=...`: get a token from the realm.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// Service name to pass along.
        service: Option<String>,
        /// Scope the registry asked for.
        scope: Option<String>,
    },
    /// `Basic realm=...`: send the credentials with every request.
    Basic,
}

/// Parses a `WWW-Authenticate` header value.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// A username and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}, ***)", self.username)
    }
}

impl Credential {
    /// The value of a `Basic` Authorization header.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            B64.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

/// Errors reading or writing a credentials file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read or written.
    #[error("credentials file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not the docker config JSON shape.
    #[error("credentials file {path}: not docker's config.json")]
    Format {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

fn registry_keys(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == "docker.io" {
        keys.push("https://index.docker.io/v1/".into());
        keys.push("index.docker.io".into());
        keys.push("registry-1.docker.io".into());
    }
    keys
}

fn read_auth_file(path: &Path) -> Result<AuthFile, AuthError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| AuthError::Format {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AuthFile::default()),
        Err(source) => Err(AuthError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Looks credentials up in strata's own file first, then in the docker config files.
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    /// Files to search, first match wins; the first is the one `login` writes.
    pub files: Vec<PathBuf>,
}

impl CredentialStore {
    /// strata's `auth.json` under `root`, then `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub fn standard(root: &Path) -> Self {
        let mut files = vec![root.join("auth.json")];
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            files.push(PathBuf::from(dir).join("config.json"));
        } else if let Some(home) = std::env::var_os("HOME") {
            files.push(PathBuf::from(home).join(".docker/config.json"));
        }
        Self { files }
    }

    /// The credential for `registry`, if any file has one.
    pub fn get(&self, registry: &str) -> Option<Credential> {
        for f in &self.files {
            let Ok(file) = read_auth_file(f) else {
                continue;
            };
            for key in registry_keys(registry) {
                if let Some(c) = file.auths.get(&key).and_then(decode_entry) {
                    return Some(c);
                }
            }
        }
        None
    }

    /// Stores a credential in the first file (written atomically, mode 0600).
    pub fn store(&self, registry: &str, cred: &Credential) -> Result<(), AuthError> {
        self.update(|f| {
            f.auths.insert(
                registry.to_string(),
                AuthEntry {
                    auth: Some(B64.encode(format!("{}:{}", cred.username, cred.password))),
                    ..AuthEntry::default()
                },
            );
            true
        })
    }

    /// Removes the credential for `registry` from the first file; false when there was none.
    pub fn remove(&self, registry: &str) -> Result<bool, AuthError> {
        let mut removed = false;
        self.update(|f| {
            removed = f.auths.remove(registry).is_some();
            removed
        })?;
        Ok(removed)
    }

    fn update(&self, change: impl FnOnce(&mut AuthFile) -> bool) -> Result<(), AuthError> {
        let Some(path) = self.files.first() else {
            return Ok(());
        };
        let mut file = read_auth_file(path)?;
        if !change(&mut file) {
            return Ok(());
        }
        let io = |source| AuthError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|source| AuthError::Format {
            path: path.clone(),
            source,
        })?;
        write_private(path, &bytes).map_err(io)
    }
}

/// Writes `bytes` to `path` atomically (temp file in the same directory, then rename), readable
/// by its owner only: credentials never exist half-written or world-readable.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // tempfile creates the file with mode 0600.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn decode_entry(e: &AuthEntry) -> Option<Credential> {
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return Some(Credential {
            username: u.clone(),
            password: p.clone(),
        });
    }
    let raw = B64.decode(e.auth.as_ref()?.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some(Credential {
        username: u.to_string(),
        password: p.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
            }
        );
        assert_eq!(parse_challenge("Basic realm=\"x\""), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[test]
    fn store_get_remove() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker.json");
        std::fs::write(
            &docker,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"}},"credsStore":"x"}"#,
        )
        .unwrap();
        let store = CredentialStore {
            files: vec![dir.path().join("auth.json"), docker],
        };
        assert_eq!(store.get("docker.io").unwrap().username, "u");
        assert!(store.get("127.0.0.1:5000").is_none());
        let cred = Credential {
            username: "me".into(),
            password: "secret:with:colons".into(),
        };
        store.store("127.0.0.1:5000", &cred).unwrap();
        assert_eq!(store.get("127.0.0.1:5000").unwrap(), cred);
        assert!(store.remove("127.0.0.1:5000").unwrap());
        assert!(!store.remove("127.0.0.1:5000").unwrap());
        assert!(store.get("127.0.0.1:5000").is_none());
    }
}
