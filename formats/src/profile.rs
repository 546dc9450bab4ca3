//! Prefetch profiles: the chunks a container's first run read, in the order it first read
//! them, stored with the image as a manifest annotation ([`ANNOTATION`]). A later cold start —
//! on any machine that pulls the image — fetches them in parallel as soon as it has the
//! manifest, before the layers' TOCs arrive and before the process asks, and then (by default)
//! fetches the rest of the image at low priority.
//!
//! Each chunk carries its place in the layer blob and the sha256 of its uncompressed bytes, so
//! it can be fetched and verified without the TOC; the cache is keyed by that digest, so a
//! wrong profile can only waste bytes, never change what a file reads.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::index::{Chunk, ChunkLoc};
use strata_oci::digest::Digest;

/// The manifest annotation that holds a profile (compact JSON).
pub const ANNOTATION: &str = "io.strata.prefetch.v1";
/// Largest chunk a profile may name (compressed or not): chunks are 128 KiB here, and other
/// writers' are smaller than this; it bounds what a bad profile can make us allocate.
const MAX_CHUNK_BYTES: u64 = 64 << 20;
/// Largest number of chunks a profile may name.
const MAX_CHUNKS: usize = 1 << 20;

/// Errors of profiles.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The annotation is not a profile.
    #[error("prefetch profile annotation {ANNOTATION}: {0}")]
    Malformed(String),
}

/// One chunk of a profile: `[blob start, blob end, uncompressed length, digest]`.
pub type ProfileChunk = (u64, u64, u64, Digest);

/// The chunks of one file that a run read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileFile {
    /// Path in the image, for people reading the profile.
    pub path: String,
    /// Index of the layer (in the manifest's order) whose blob holds the chunks.
    pub layer: usize,
    /// The chunks, in the order they were first read.
    pub chunks: Vec<ProfileChunk>,
}

/// What a run read, file by file in the order of first reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The files.
    pub files: Vec<ProfileFile>,
}

impl Profile {
    /// Parses and checks an annotation value against an image of `layers` layers.
    pub fn parse(value: &str, layers: usize) -> Result<Self, ProfileError> {
        let bad = |m: String| ProfileError::Malformed(m);
        let p: Profile = serde_json::from_str(value).map_err(|e| bad(e.to_string()))?;
        if p.chunk_count() > MAX_CHUNKS {
            return Err(bad(format!("more than {MAX_CHUNKS} chunks")));
        }
        for f in &p.files {
            if f.layer >= layers {
                return Err(bad(format!(
                    "{}: layer {} of an image of {layers}",
                    f.path, f.layer
                )));
            }
            for &(start, end, len, _) in &f.chunks {
                if end <= start || end - start > MAX_CHUNK_BYTES || len > MAX_CHUNK_BYTES {
                    return Err(bad(format!(
                        "{}: chunk {start}..{end} of {len} bytes",
                        f.path
                    )));
                }
            }
        }
        Ok(p)
    }

    /// The annotation value.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> usize {
        self.files.iter().map(|f| f.chunks.len()).sum()
    }

    /// Compressed bytes of the chunks (what a prefetch fetches).
    pub fn bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| &f.chunks)
            .map(|(s, e, _, _)| e - s)
            .sum()
    }

    /// The chunks in the order they were read, as batches of about `bytes` compressed bytes
    /// from one layer each: `(layer, chunks)`.
    pub fn batches(&self, bytes: u64) -> Vec<(usize, Vec<Chunk>)> {
        let chunks = self.files.iter().flat_map(|f| {
            f.chunks.iter().map(|&(start, end, len, digest)| {
                let chunk = Chunk {
                    file_offset: 0,
                    len,
                    digest: Some(digest),
                    loc: ChunkLoc::Zstd { start, end },
                };
                (f.layer, chunk)
            })
        });
        batches(chunks, bytes)
    }
}

/// Consecutive `(layer, chunk)` pairs grouped while the layer stays the same, each group closed
/// once it holds at least `bytes` bytes of the blob.
pub fn batches(
    chunks: impl IntoIterator<Item = (usize, Chunk)>,
    bytes: u64,
) -> Vec<(usize, Vec<Chunk>)> {
    let mut out: Vec<(usize, Vec<Chunk>, u64)> = Vec::new();
    for (layer, c) in chunks {
        let n = match c.loc {
            ChunkLoc::Zstd { start, end } | ChunkLoc::Gzip { start, end, .. } => end - start,
            _ => 0,
        };
        match out.last_mut() {
            Some((l, group, sum)) if *l == layer && *sum < bytes => {
                group.push(c);
                *sum += n;
            }
            _ => out.push((layer, vec![c], n)),
        }
    }
    out.into_iter().map(|(l, c, _)| (l, c)).collect()
}

/// What a cold start fetches before it is asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefetch {
    /// The image's profile, then the rest of an image that has one (the default).
    #[default]
    Auto,
    /// Only the profile.
    Profile,
    /// The profile if there is one, then the rest of the image.
    All,
    /// Nothing: every byte is fetched when it is first read.
    None,
}

impl FromStr for Prefetch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "profile" => Ok(Self::Profile),
            "all" => Ok(Self::All),
            "none" => Ok(Self::None),
            other => Err(format!(
                "prefetch mode {other:?} (want auto, profile, all or none)"
            )),
        }
    }
}

impl std::fmt::Display for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Profile => "profile",
            Self::All => "all",
            Self::None => "none",
        })
    }
}

impl Prefetch {
    /// Whether the rest of the image follows the profile.
    pub fn rest(self, has_profile: bool) -> bool {
        self == Self::All || (self == Self::Auto && has_profile)
    }
}

/// The profile in a manifest's annotations, if any; a malformed one is logged and ignored (a
/// profile only makes things faster).
pub fn profile_in(manifest: &[u8], layers: usize) -> Option<Profile> {
    let v: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let value = v.get("annotations")?.get(ANNOTATION)?.as_str()?;
    match Profile::parse(value, layers) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(error = %e, "ignoring the prefetch profile");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Profile {
        Profile {
            files: vec![ProfileFile {
                path: "usr/bin/python3.11".into(),
                layer: 1,
                chunks: vec![
                    (100, 200, 4096, Digest::of(b"a")),
                    (200, 260, 10, Digest::of(b"b")),
                ],
            }],
        }
    }

    #[test]
    fn profiles_round_trip_through_the_annotation() {
        let p = sample();
        let back = Profile::parse(&p.encode(), 2).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.bytes(), 160);
        assert_eq!(back.chunk_count(), 2);
        let batches = back.batches(1 << 20);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].0, 1);
        assert_eq!(
            batches[0].1[1].loc,
            ChunkLoc::Zstd {
                start: 200,
                end: 260
            }
        );
        // A batch closes once it holds the wanted bytes: here after each chunk.
        assert_eq!(back.batches(50).len(), 2);
    }

    #[test]
    fn malformed_profiles_name_what_is_wrong() {
        let p = sample();
        let e = Profile::parse(&p.encode(), 1).unwrap_err().to_string();
        assert!(e.contains("layer 1 of an image of 1"), "{e}");
        let mut huge = sample();
        huge.files[0].chunks[0].1 = 100 + (65 << 20);
        let e = Profile::parse(&huge.encode(), 2).unwrap_err().to_string();
        assert!(e.contains("usr/bin/python3.11: chunk 100.."), "{e}");
        assert!(Profile::parse("{\"files\": 3}", 2).is_err());
        let m = serde_json::json!({"annotations": { ANNOTATION: "not json" }});
        assert!(profile_in(m.to_string().as_bytes(), 2).is_none());
        let m = serde_json::json!({"annotations": { ANNOTATION: sample().encode() }});
        assert_eq!(profile_in(m.to_string().as_bytes(), 2), Some(sample()));
    }

    #[test]
    fn prefetch_modes() {
        for m in [
            Prefetch::Auto,
            Prefetch::Profile,
            Prefetch::All,
            Prefetch::None,
        ] {
            assert_eq!(m.to_string().parse::<Prefetch>(), Ok(m));
        }
        assert!(
            "sometimes"
                .parse::<Prefetch>()
                .unwrap_err()
                .contains("sometimes")
        );
        assert!(Prefetch::Auto.rest(true) && !Prefetch::Auto.rest(false));
        assert!(Prefetch::All.rest(false) && !Prefetch::Profile.rest(true));
        assert!(!Prefetch::None.rest(true));
    }
}
