//! Image references refused as docker/cli refuses them, in its words
//! (`reference.ParseNormalizedNamed`): "invalid reference format: repository name
//! (library/App) must be lowercase", or "invalid reference format".

use strata_oci::Reference;

/// Why docker refuses `name` as a reference.
pub fn docker_reason(name: &str) -> String {
    // docker's splitDockerDomain: the first component is a registry when it has a dot, a
    // colon or an upper-case letter, or is localhost; else the name is on Docker Hub, under
    // library/ when it has no slash.
    let repo = name.split('@').next().unwrap_or(name);
    let repo = match repo.rfind(':') {
        Some(i) if !repo[i..].contains('/') => &repo[..i],
        _ => repo,
    };
    let remainder = match repo.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            rest.to_string()
        }
        Some(_) => repo.to_string(),
        None => format!("library/{repo}"),
    };
    if remainder.bytes().any(|b| b.is_ascii_uppercase()) {
        format!("invalid reference format: repository name ({remainder}) must be lowercase")
    } else {
        "invalid reference format".to_string()
    }
}

/// Parses a reference; refused with docker's message.
pub fn parse(name: &str) -> anyhow::Result<Reference> {
    name.parse::<Reference>()
        .map_err(|_| anyhow::anyhow!(docker_reason(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_dockers() {
        let lower =
            |r: &str| format!("invalid reference format: repository name ({r}) must be lowercase");
        assert_eq!(docker_reason("BAD:1"), lower("library/BAD"));
        assert_eq!(docker_reason("BAD/Name:1"), lower("Name"));
        assert_eq!(docker_reason("x/App"), lower("x/App"));
        assert_eq!(
            docker_reason("127.0.0.1:5000/bb:-x"),
            "invalid reference format"
        );
        assert_eq!(
            docker_reason("reg:5000/bb@sha256:12"),
            "invalid reference format"
        );
        assert!(parse("BAD:1").is_err());
        assert!(parse("busybox:1").is_ok());
    }
}
