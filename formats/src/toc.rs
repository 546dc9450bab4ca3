//! The zstd:chunked table of contents (the JSON schema of containers/storage), its footer and
//! its layer annotations. strata writes this schema for its native layers and, as its local index,
//! for layers that came without one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use strata_oci::digest::Digest;

/// zstd skippable-frame magic used for the TOC, tar-split and footer frames.
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// Magic that ends the current (64-byte) footer.
pub const FOOTER_MAGIC: &[u8; 8] = b"GNUlInUx";
/// Magic that ends the older (40-byte) footer.
pub const FOOTER_MAGIC_V1: &[u8; 8] = b"GnUlInUx";
/// Size of the current footer's content.
pub const FOOTER_LEN: usize = 64;
/// Size of the older footer's content.
pub const FOOTER_LEN_V1: usize = 40;

/// Annotation prefixes of the two generations of the format.
pub const ANNOTATION_PREFIXES: [&str; 2] = [
    "io.github.containers.zstd-chunked.",
    "io.containers.zstd-chunked.",
];
/// Annotation key: digest of the compressed TOC.
pub const ANNOTATION_TOC_CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
/// Annotation key: `offset:compressed:uncompressed:type` of the TOC.
pub const ANNOTATION_TOC_POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
/// The older generation's name of [`ANNOTATION_TOC_CHECKSUM`] (podman 4.3 reads only this).
pub const ANNOTATION_TOC_CHECKSUM_V1: &str = "io.containers.zstd-chunked.manifest-checksum";
/// The older generation's name of [`ANNOTATION_TOC_POSITION`].
pub const ANNOTATION_TOC_POSITION_V1: &str = "io.containers.zstd-chunked.manifest-position";
/// Annotation key: `offset:compressed:uncompressed` of the tar-split.
pub const ANNOTATION_TARSPLIT_POSITION: &str =
    "io.github.containers.zstd-chunked.tarsplit-position";
/// Annotation key: digest of the compressed tar-split.
pub const ANNOTATION_TARSPLIT_CHECKSUM: &str =
    "io.github.containers.zstd-chunked.tarsplit-checksum";

/// Errors reading a TOC or footer.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    /// The footer's magic or lengths are wrong.
    #[error("malformed zstd:chunked footer: {0}")]
    Footer(&'static str),
    /// A position annotation is not `a:b:c[:d]` numbers.
    #[error("malformed zstd:chunked annotation {key}={value:?}")]
    Annotation {
        /// The annotation key.
        key: String,
        /// Its value.
        value: String,
    },
    /// The TOC did not decompress or parse.
    #[error("malformed table of contents: {0}")]
    Parse(String),
}

/// The whole TOC document.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Toc {
    /// Always 1.
    pub version: i32,
    /// One entry per tar entry, plus `chunk` entries after chunked files.
    #[serde(default)]
    pub entries: Vec<TocEntry>,
    /// Digest of the compressed tar-split frame.
    #[serde(
        rename = "tarSplitDigest",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tar_split_digest: Option<String>,
}

/// One TOC entry (field names as containers/storage writes them).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct TocEntry {
    /// reg, dir, symlink, hardlink, char, block, fifo, chunk.
    #[serde(rename = "type")]
    pub kind: String,
    /// Path inside the layer, as in the tar header.
    #[serde(default)]
    pub name: String,
    /// strata extension: base64 of the raw name when it is not UTF-8 (other readers ignore it).
    #[serde(rename = "nameRaw", default, skip_serializing_if = "Option::is_none")]
    pub name_raw: Option<String>,
    /// Symlink target or hardlink target path.
    #[serde(rename = "linkName", default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    /// strata extension: base64 of the raw link name when it is not UTF-8.
    #[serde(
        rename = "linkNameRaw",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub link_name_raw: Option<String>,
    /// Permission bits plus setuid/setgid/sticky.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: i64,
    /// Uncompressed size of the file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: i64,
    /// Owner.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: i64,
    /// Group.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: i64,
    /// Modification time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modtime: Option<String>,
    /// Device major number.
    #[serde(rename = "devMajor", default, skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    /// Device minor number.
    #[serde(rename = "devMinor", default, skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    /// Extended attributes, values base64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// Digest of the whole uncompressed file content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Start of the compressed frame(s) in the blob.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: i64,
    /// End (exclusive) of the compressed frame(s) in the blob.
    #[serde(rename = "endOffset", default, skip_serializing_if = "is_zero")]
    pub end_offset: i64,
    /// Uncompressed size of this chunk.
    #[serde(rename = "chunkSize", default, skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    /// Offset of this chunk in the file.
    #[serde(rename = "chunkOffset", default, skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    /// Digest of this chunk's uncompressed bytes.
    #[serde(
        rename = "chunkDigest",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub chunk_digest: Option<String>,
    /// `zeros` for a hole that needs no fetch.
    #[serde(rename = "chunkType", default, skip_serializing_if = "Option::is_none")]
    pub chunk_type: Option<String>,
    /// eStargz: where the chunk starts in the decompressed gzip member.
    #[serde(rename = "innerOffset", default, skip_serializing_if = "is_zero")]
    pub inner_offset: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Where a compressed frame sits in the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Offset of the frame's data (after the skippable-frame header).
    pub offset: u64,
    /// Compressed length.
    pub compressed: u64,
    /// Uncompressed length.
    pub uncompressed: u64,
}

/// The footer's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// The TOC frame.
    pub toc: Position,
    /// The tar-split frame, absent in the older generation.
    pub tar_split: Option<Position>,
}

impl Footer {
    /// The 64 bytes of the current footer.
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let ts = self.tar_split.unwrap_or(Position {
            offset: 0,
            compressed: 0,
            uncompressed: 0,
        });
        let fields = [
            self.toc.offset,
            self.toc.compressed,
            self.toc.uncompressed,
            1,
            ts.offset,
            ts.compressed,
            ts.uncompressed,
        ];
        let mut out = [0u8; FOOTER_LEN];
        for (i, f) in fields.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
        }
        out[56..].copy_from_slice(FOOTER_MAGIC);
        out
    }

    /// Parses the tail of a blob (at least the last 40 bytes; 64 for the current generation).
    pub fn decode(tail: &[u8]) -> Result<Self, TocError> {
        let u = |b: &[u8], i: usize| {
            u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]))
        };
        if tail.len() >= FOOTER_LEN && &tail[tail.len() - 8..] == FOOTER_MAGIC {
            let b = &tail[tail.len() - FOOTER_LEN..];
            if u(b, 3) != 1 {
                return Err(TocError::Footer("TOC type is not 1"));
            }
            return Ok(Self {
                toc: Position {
                    offset: u(b, 0),
                    compressed: u(b, 1),
                    uncompressed: u(b, 2),
                },
                tar_split: Some(Position {
                    offset: u(b, 4),
                    compressed: u(b, 5),
                    uncompressed: u(b, 6),
                }),
            });
        }
        if tail.len() >= FOOTER_LEN_V1 && &tail[tail.len() - 8..] == FOOTER_MAGIC_V1 {
            let b = &tail[tail.len() - FOOTER_LEN_V1..];
            return Ok(Self {
                toc: Position {
                    offset: u(b, 0),
                    compressed: u(b, 1),
                    uncompressed: u(b, 2),
                },
                tar_split: None,
            });
        }
        Err(TocError::Footer(
            "no GNUlInUx/GnUlInUx magic at the end of the blob",
        ))
    }
}

/// What the layer descriptor's annotations say about the TOC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocAnnotations {
    /// Where the compressed TOC is.
    pub toc: Position,
    /// sha256 of the compressed TOC, when annotated.
    pub toc_digest: Option<Digest>,
}

impl TocAnnotations {
    /// Reads either generation's annotations; `None` when the layer carries none.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Option<Self>, TocError> {
        for prefix in ANNOTATION_PREFIXES {
            let key = format!("{prefix}manifest-position");
            let Some(value) = annotations.get(&key) else {
                continue;
            };
            let bad = || TocError::Annotation {
                key: key.clone(),
                value: value.clone(),
            };
            let nums: Vec<u64> = value
                .split(':')
                .map(|p| p.parse::<u64>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?;
            if nums.len() < 3 || nums.get(3).is_some_and(|t| *t != 1) {
                return Err(bad());
            }
            let ck = format!("{prefix}manifest-checksum");
            let toc_digest = match annotations.get(&ck) {
                Some(d) => Some(d.parse::<Digest>().map_err(|_| TocError::Annotation {
                    key: ck.clone(),
                    value: d.clone(),
                })?),
                None => None,
            };
            return Ok(Some(Self {
                toc: Position {
                    offset: nums[0],
                    compressed: nums[1],
                    uncompressed: nums[2],
                },
                toc_digest,
            }));
        }
        Ok(None)
    }
}

/// Decompresses and parses a TOC frame, refusing one larger than announced.
pub fn decode_toc(compressed: &[u8], uncompressed_len: u64) -> Result<Toc, TocError> {
    const MAX_TOC: u64 = 1 << 30;
    if uncompressed_len > MAX_TOC {
        return Err(TocError::Parse(format!(
            "TOC claims {uncompressed_len} bytes, more than the 1 GiB limit"
        )));
    }
    let capacity = usize::try_from(uncompressed_len.max(1))
        .map_err(|_| TocError::Parse(format!("TOC of {uncompressed_len} bytes")))?;
    let json = zstd::bulk::decompress(compressed, capacity)
        .map_err(|e| TocError::Parse(format!("zstd: {e}")))?;
    let toc: Toc = serde_json::from_slice(&json).map_err(|e| TocError::Parse(e.to_string()))?;
    if toc.version != 1 {
        return Err(TocError::Parse(format!(
            "unsupported version {}",
            toc.version
        )));
    }
    Ok(toc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_round_trip_and_v1() {
        let f = Footer {
            toc: Position {
                offset: 100,
                compressed: 20,
                uncompressed: 80,
            },
            tar_split: Some(Position {
                offset: 128,
                compressed: 5,
                uncompressed: 9,
            }),
        };
        let mut blob = vec![7u8; 10];
        blob.extend_from_slice(&f.encode());
        assert_eq!(Footer::decode(&blob).unwrap(), f);

        let mut v1 = vec![0u8; 40];
        v1[..8].copy_from_slice(&100u64.to_le_bytes());
        v1[8..16].copy_from_slice(&20u64.to_le_bytes());
        v1[16..24].copy_from_slice(&80u64.to_le_bytes());
        v1[24..32].copy_from_slice(&1u64.to_le_bytes());
        v1[32..].copy_from_slice(FOOTER_MAGIC_V1);
        let old = Footer::decode(&v1).unwrap();
        assert_eq!(old.toc, f.toc);
        assert_eq!(old.tar_split, None);

        assert!(Footer::decode(&[0u8; 64]).is_err());
    }

    #[test]
    fn annotations_both_generations() {
        let mut a = BTreeMap::new();
        assert_eq!(TocAnnotations::parse(&a).unwrap(), None);
        a.insert(
            "io.containers.zstd-chunked.manifest-position".into(),
            "10:20:30:1".into(),
        );
        let t = TocAnnotations::parse(&a).unwrap().unwrap();
        assert_eq!(t.toc.offset, 10);
        assert_eq!(t.toc_digest, None);
        a.insert(ANNOTATION_TOC_POSITION.into(), "1:2:x".into());
        assert!(TocAnnotations::parse(&a).is_err());
    }

    #[test]
    fn rejects_bad_toc() {
        let c = zstd::bulk::compress(b"{\"version\":2,\"entries\":[]}", 3).unwrap();
        assert!(decode_toc(&c, 100).is_err());
        let c = zstd::bulk::compress(b"not json", 3).unwrap();
        assert!(decode_toc(&c, 100).is_err());
        assert!(decode_toc(b"garbage", 100).is_err());
        let c = zstd::bulk::compress(b"{\"version\":1,\"entries\":[]}", 3).unwrap();
        assert!(decode_toc(&c, 100).is_ok());
    }
}
