//! Choosing a manifest from an image index for a platform, by the rules of containerd's
//! `platforms` module (what docker uses): both sides are normalized (`x86_64` → `amd64`,
//! `aarch64` → `arm64`, `arm` → `arm/v7`, `arm64/v8` → `arm64`, ...), the wanted platform is
//! expanded into the ordered list of platforms it can run (`arm/v7` runs v7, v6, v5; `arm64`
//! runs arm64 then arm/v8..v5; `amd64` runs amd64 then 386), and the manifest matching the
//! earliest entry of that list wins, whatever the order of the index (ties: the first listed).

use oci_spec::image::ImageIndex;

use crate::digest::Digest;

/// Errors choosing a platform.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The `--platform` value does not parse.
    #[error("invalid platform {0:?}: expected os/arch[/variant]")]
    Invalid(String),
    /// No manifest of the index runs on the wanted platform.
    #[error(
        "no matching manifest for {wanted} in the manifest list entries (available: {available})"
    )]
    NoMatch {
        /// The wanted platform as given.
        wanted: String,
        /// The platforms the index lists, comma separated.
        available: String,
    },
}

/// A normalized platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// Architecture, e.g. `amd64`, `arm64`, `arm`.
    pub arch: String,
    /// Variant, e.g. `v7`; empty when none.
    pub variant: String,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl Platform {
    /// Builds a platform from its parts, normalized.
    pub fn new(os: &str, arch: &str, variant: &str) -> Self {
        let mut os = os.to_ascii_lowercase();
        if os == "macos" {
            os = "darwin".into();
        }
        let (arch, variant) = normalize_arch(arch, variant);
        Self { os, arch, variant }
    }

    /// Parses `os/arch[/variant]` (or `arch` alone, meaning linux), normalized.
    pub fn parse(s: &str) -> Result<Self, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || PlatformError::Invalid(s.to_string());
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        match parts[..] {
            [arch] => Ok(Self::new("linux", arch, "")),
            [os, arch] => Ok(Self::new(os, arch, "")),
            [os, arch, variant] => Ok(Self::new(os, arch, variant)),
            _ => Err(bad()),
        }
    }

    /// The platforms this one runs, best first (containerd's `Only`).
    pub fn compatible(&self) -> Vec<Platform> {
        let with = |arch: &str, variant: String| Platform {
            os: self.os.clone(),
            arch: arch.to_string(),
            variant,
        };
        let mut out = vec![self.clone()];
        match self.arch.as_str() {
            "amd64" => {
                if let Some(v) = version(&self.variant).filter(|v| *v > 1) {
                    out.extend((1..v).rev().map(|n| with("amd64", format!("v{n}"))));
                }
                out.push(with("386", String::new()));
            }
            "arm" => {
                if let Some(v) = version(&self.variant).filter(|v| *v > 5) {
                    out.extend((5..v).rev().map(|n| with("arm", format!("v{n}"))));
                }
            }
            "arm64" => {
                let variant = if self.variant.is_empty() {
                    "v8".to_string()
                } else {
                    self.variant.clone()
                };
                out.extend(arm64_minors(self, &variant));
                let arm = if variant.starts_with("v8.") || variant.starts_with("v9.") {
                    "v8".to_string()
                } else {
                    variant
                };
                out.extend(with("arm", arm).compatible());
            }
            _ => {}
        }
        out
    }
}

/// arm64 `vM.N` also runs `vM.(N-1)`..`vM`; v9.N runs v8.(N+5) and below.
fn arm64_minors(p: &Platform, variant: &str) -> Vec<Platform> {
    let with = |v: String| Platform {
        os: p.os.clone(),
        arch: "arm64".into(),
        variant: v,
    };
    let (major, minor) = variant.split_once('.').unwrap_or((variant, "0"));
    let (Some(mut major), Ok(mut minor)) = (version(major), minor.parse::<u32>()) else {
        return Vec::new();
    };
    let name = |major: u32, n: u32| {
        if n == 0 {
            format!("v{major}")
        } else {
            format!("v{major}.{n}")
        }
    };
    let mut out = Vec::new();
    if major == 9 {
        out.extend((0..minor).rev().map(|n| with(name(9, n))));
        minor += 5;
        major = 8;
        out.push(with(name(8, minor)));
    }
    if major == 8 {
        out.extend((0..minor).rev().map(|n| with(name(8, n))));
    }
    // `arm64/v8` is normalized to `arm64` (no variant).
    for q in &mut out {
        if q.variant == "v8" {
            q.variant.clear();
        }
    }
    out
}

fn version(v: &str) -> Option<u32> {
    v.strip_prefix('v').unwrap_or(v).parse().ok()
}

fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    match arch.as_str() {
        "i386" => ("386".into(), String::new()),
        "x86_64" | "x86-64" | "amd64" => {
            let v = if variant == "v1" {
                String::new()
            } else {
                variant
            };
            ("amd64".into(), v)
        }
        "aarch64" | "arm64" => {
            let v = match variant.as_str() {
                "8" | "v8" => String::new(),
                _ => variant,
            };
            ("arm64".into(), v)
        }
        "armhf" => ("arm".into(), "v7".into()),
        "armel" => ("arm".into(), "v6".into()),
        "arm" => {
            let v = match variant.as_str() {
                "" | "7" => "v7".into(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            };
            ("arm".into(), v)
        }
        _ => (arch, variant),
    }
}

/// Picks the manifest of `index` that best runs on `wanted` (`os/arch[/variant]`).
pub fn select(index: &ImageIndex, wanted: &str) -> Result<Digest, PlatformError> {
    let want = Platform::parse(wanted)?;
    let order = want.compatible();
    let mut best: Option<(usize, Digest)> = None;
    let mut available = Vec::new();
    for m in index.manifests() {
        // An artifact (a SOCI index, a signature) is not an image, whatever platform it names.
        if m.artifact_type().is_some() {
            continue;
        }
        // As containerd: an entry without a platform fits any, after every entry that has one.
        let rank = match m.platform() {
            None => {
                available.push("(no platform)".to_string());
                order.len()
            }
            Some(p) => {
                let cand = Platform::new(
                    &p.os().to_string(),
                    &p.architecture().to_string(),
                    p.variant().as_deref().unwrap_or(""),
                );
                available.push(cand.to_string());
                let Some(rank) = order.iter().position(|o| *o == cand) else {
                    continue;
                };
                rank
            }
        };
        let Ok(d) = m.digest().to_string().parse::<Digest>() else {
            continue;
        };
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, d));
        }
    }
    best.map(|(_, d)| d).ok_or_else(|| PlatformError::NoMatch {
        wanted: wanted.to_string(),
        available: if available.is_empty() {
            "none".into()
        } else {
            available.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[&str]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let parts: Vec<&str> = p.split('/').collect();
                let mut plat = serde_json::json!({"os": parts[0], "architecture": parts[1]});
                if let Some(v) = parts.get(2) {
                    plat["variant"] = serde_json::json!(v);
                }
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": Digest::of(&i.to_le_bytes()).to_string(),
                    "size": 1,
                    "platform": plat,
                })
            })
            .collect();
        let v = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        ImageIndex::from_reader(serde_json::to_vec(&v).unwrap().as_slice()).unwrap()
    }

    /// The position in `platforms` of the manifest chosen for `wanted`.
    fn pick(platforms: &[&str], wanted: &str) -> Result<usize, PlatformError> {
        let d = select(&index(platforms), wanted)?;
        Ok((0..platforms.len())
            .find(|i| Digest::of(&i.to_le_bytes()) == d)
            .unwrap())
    }

    // The first two cases were checked on dockerd v29 beta (moby v2.0.0-beta) with
    // containerd 2.2.3, as issue 22 reports; the rest follow containerd's platforms module.
    #[test]
    fn arm_variants_best_match_whatever_the_order() {
        assert_eq!(
            pick(&["linux/arm/v7", "linux/arm/v5"], "linux/arm/v6").unwrap(),
            1
        );
        let v567 = ["linux/arm/v5", "linux/arm/v6", "linux/arm/v7"];
        assert_eq!(pick(&v567, "linux/arm").unwrap(), 2);
        assert_eq!(pick(&v567, "linux/arm/v6").unwrap(), 1);
        assert_eq!(pick(&v567, "linux/arm/v8").unwrap(), 2);
        assert!(pick(&["linux/arm/v7"], "linux/arm/v6").is_err());
        // An entry without a variant is arm/v7.
        assert_eq!(
            pick(&["linux/arm/v6", "linux/arm"], "linux/arm/v7").unwrap(),
            1
        );
    }

    #[test]
    fn arm64_and_amd64_aliases() {
        assert_eq!(
            pick(&["linux/amd64", "linux/arm64/v8"], "linux/arm64").unwrap(),
            1
        );
        assert_eq!(
            pick(&["linux/amd64", "linux/arm64"], "linux/arm64/v8").unwrap(),
            1
        );
        assert_eq!(
            pick(&["linux/amd64", "linux/aarch64"], "linux/arm64").unwrap(),
            1
        );
        // arm64 runs 32-bit arm, but prefers arm64 wherever it is listed.
        let mixed = ["linux/arm/v7", "linux/arm64", "linux/arm/v8"];
        assert_eq!(pick(&mixed, "linux/arm64").unwrap(), 1);
        assert_eq!(
            pick(&["linux/arm/v6", "linux/arm/v7"], "linux/arm64").unwrap(),
            1
        );
        assert_eq!(
            pick(&["linux/arm64", "linux/x86_64"], "linux/amd64").unwrap(),
            1
        );
        assert_eq!(
            pick(&["linux/arm64", "linux/amd64"], "linux/x86_64").unwrap(),
            1
        );
        // amd64 falls back to 386, but only when there is no amd64.
        assert_eq!(
            pick(&["linux/386", "linux/amd64"], "linux/amd64").unwrap(),
            1
        );
        assert_eq!(
            pick(&["linux/386", "linux/arm64"], "linux/amd64").unwrap(),
            0
        );
        assert_eq!(
            pick(&["linux/amd64/v2", "linux/amd64"], "linux/amd64/v3").unwrap(),
            0
        );
        assert_eq!(
            pick(&["windows/amd64", "linux/amd64"], "linux/amd64").unwrap(),
            1
        );
        assert_eq!(pick(&["linux/amd64"], "amd64").unwrap(), 0);
    }

    #[test]
    fn no_match_names_what_is_there() {
        let err = pick(&["linux/amd64", "linux/arm/v7"], "linux/s390x").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("linux/s390x"), "{msg}");
        assert!(
            msg.contains("available: linux/amd64, linux/arm/v7"),
            "{msg}"
        );
        assert!(matches!(
            pick(&["linux/amd64"], "linux//v7"),
            Err(PlatformError::Invalid(_))
        ));
    }

    #[test]
    fn an_entry_without_platform_fits_any_but_comes_last() {
        let d = |n: u8| Digest::of(&[n]).to_string();
        let v = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d(0), "size": 1},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d(1), "size": 1,
             "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        let idx = ImageIndex::from_reader(serde_json::to_vec(&v).unwrap().as_slice()).unwrap();
        assert_eq!(select(&idx, "linux/amd64").unwrap(), Digest::of(&[1]));
        assert_eq!(select(&idx, "linux/s390x").unwrap(), Digest::of(&[0]));
    }
}
