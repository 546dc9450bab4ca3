//! Random access into a gzip stream, as zlib's `zran.c` and SOCI's `gzip_zinfo.c` do: while
//! inflating once, at the end of a deflate block every `span_size` bytes of output, note a
//! *checkpoint* (compressed offset, bit offset, uncompressed offset and the 32 KiB of output
//! before it). Later, any byte of the stream is reached by inflating from the nearest checkpoint
//! before it: raw inflate primed with the checkpoint's leftover bits and given its window as a
//! preset dictionary. The checkpoints are kept in SOCI's binary layout (its "zinfo" blob).

use crate::zlib::{Flush, Inflater, ZlibError};

/// The deflate window: a checkpoint keeps this much output before it.
pub const WINDOW: usize = 32 * 1024;
/// One packed checkpoint: compressed offset, uncompressed offset, bits, window.
const PACKED: usize = 8 + 8 + 1 + WINDOW;
/// The blob header: number of checkpoints (u32) and span size (u64).
const HEADER: usize = 4 + 8;
/// A gzip member's trailer (CRC32, ISIZE), which raw inflate does not read.
const GZIP_TRAILER: usize = 8;

/// Errors building or using checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum ZranError {
    /// The checkpoint blob's size does not match the number of checkpoints it claims.
    #[error("gzip checkpoints: {len} bytes do not hold the {count} checkpoints they claim")]
    BadBlob {
        /// Bytes in the blob.
        len: usize,
        /// Checkpoints claimed by its header.
        count: u64,
    },
    /// Checkpoints out of order or with an impossible bit count.
    #[error("gzip checkpoint {index}: {reason}")]
    BadCheckpoint {
        /// Which checkpoint.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// zlib refused the compressed bytes.
    #[error("inflating gzip: {0}")]
    Zlib(#[from] ZlibError),
    /// Reading the compressed stream failed.
    #[error("reading gzip stream: {0}")]
    Io(#[from] std::io::Error),
    /// The compressed bytes ended before the bytes asked for.
    #[error("gzip span ends {missing} bytes before the requested data")]
    Short {
        /// How many bytes were not produced.
        missing: usize,
    },
}

/// One access point into the stream.
#[derive(Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Offset of the first full compressed byte after the point.
    pub compressed: u64,
    /// Offset in the uncompressed stream.
    pub uncompressed: u64,
    /// Bits (0-7) of the byte before `compressed` that belong to the next block.
    pub bits: u8,
    /// The 32 KiB of output before the point (zeros where the stream is shorter).
    pub window: Box<[u8]>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("compressed", &self.compressed)
            .field("uncompressed", &self.uncompressed)
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// Where the span starting at this checkpoint starts in the blob (one byte earlier when
    /// the point is inside a byte).
    pub fn span_start(&self) -> u64 {
        self.compressed - u64::from(self.bits != 0)
    }
}

/// The checkpoints of one gzip stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zinfo {
    /// Uncompressed bytes between checkpoints (at least).
    pub span_size: u64,
    /// The checkpoints, in stream order; the first is after the first gzip header.
    pub checkpoints: Vec<Checkpoint>,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Zinfo {
    /// Parses SOCI's checkpoint blob (version 2, or version 1 which leaves out the first point).
    pub fn from_blob(blob: &[u8]) -> Result<Self, ZranError> {
        let len = blob.len();
        if len < HEADER {
            return Err(ZranError::BadBlob { len, count: 0 });
        }
        let count = u64::from(u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]));
        let span_size = u64_at(blob, 4);
        let body = (len - HEADER) as u64;
        let packed = PACKED as u64;
        let mut checkpoints = Vec::new();
        let stored = if body == count * packed {
            count
        } else if count > 0 && body == (count - 1) * packed {
            // Version 1: the first point (after a 10-byte header) is implied.
            checkpoints.push(Checkpoint {
                compressed: 10,
                uncompressed: 0,
                bits: 0,
                window: vec![0u8; WINDOW].into_boxed_slice(),
            });
            count - 1
        } else {
            return Err(ZranError::BadBlob { len, count });
        };
        for i in 0..strata_oci::usize_of(stored) {
            let at = HEADER + i * PACKED;
            checkpoints.push(Checkpoint {
                compressed: u64_at(blob, at),
                uncompressed: u64_at(blob, at + 8),
                bits: blob[at + 16],
                window: blob[at + 17..at + PACKED].to_vec().into_boxed_slice(),
            });
        }
        let z = Self {
            span_size,
            checkpoints,
        };
        z.check()?;
        Ok(z)
    }

    /// Checks that the points go forward and have possible bit counts.
    pub(crate) fn check(&self) -> Result<(), ZranError> {
        let bad = |index, reason: &str| ZranError::BadCheckpoint {
            index,
            reason: reason.into(),
        };
        if self.checkpoints.is_empty() {
            return Err(bad(0, "no checkpoints"));
        }
        for (i, c) in self.checkpoints.iter().enumerate() {
            if c.bits > 7 || (c.bits != 0 && c.compressed == 0) {
                return Err(bad(i, "impossible bit offset"));
            }
            if let Some(p) = i.checked_sub(1).map(|p| &self.checkpoints[p])
                && (c.compressed <= p.compressed || c.uncompressed < p.uncompressed)
            {
                return Err(bad(i, "does not follow the previous checkpoint"));
            }
        }
        Ok(())
    }

    /// SOCI's checkpoint blob (version 2).
    pub fn to_blob(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.checkpoints.len() * PACKED);
        let count = u32::try_from(self.checkpoints.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&self.span_size.to_le_bytes());
        for c in &self.checkpoints {
            out.extend_from_slice(&c.compressed.to_le_bytes());
            out.extend_from_slice(&c.uncompressed.to_le_bytes());
            out.push(c.bits);
            out.extend_from_slice(&c.window);
        }
        out
    }

    /// The span (checkpoint index) that holds uncompressed offset `at`.
    pub fn span_of(&self, at: u64) -> usize {
        self.checkpoints
            .partition_point(|c| c.uncompressed <= at)
            .saturating_sub(1)
    }

    /// Compressed range of span `i` in a blob of `blob_size` bytes (SOCI's span boundaries:
    /// from the byte holding the point's first bits to the next point's first full byte).
    pub fn span_range(&self, i: usize, blob_size: u64) -> std::ops::Range<u64> {
        let start = self.checkpoints[i].span_start();
        let end = self
            .checkpoints
            .get(i + 1)
            .map_or(blob_size, |n| n.compressed);
        start..end
    }

    /// Uncompressed range of span `i` in a stream of `total` uncompressed bytes.
    pub fn span_output(&self, i: usize, total: u64) -> std::ops::Range<u64> {
        let start = self.checkpoints[i].uncompressed;
        let end = self
            .checkpoints
            .get(i + 1)
            .map_or(total, |n| n.uncompressed);
        start..end
    }
}

/// What [`build`] learns from one pass over a gzip stream.
#[derive(Debug, Clone)]
pub struct Built {
    /// The checkpoints.
    pub zinfo: Zinfo,
    /// Compressed bytes read.
    pub compressed_size: u64,
    /// Uncompressed bytes produced.
    pub uncompressed_size: u64,
}

/// The sliding window of the last output, oldest byte first once full.
pub(crate) struct Window {
    buf: Box<[u8]>,
    /// Next write position.
    at: usize,
}

impl Window {
    pub(crate) fn new() -> Self {
        Self {
            buf: vec![0u8; WINDOW].into_boxed_slice(),
            at: 0,
        }
    }

    pub(crate) fn push(&mut self, mut out: &[u8]) {
        if out.len() >= WINDOW {
            out = &out[out.len() - WINDOW..];
        }
        let first = out.len().min(WINDOW - self.at);
        self.buf[self.at..self.at + first].copy_from_slice(&out[..first]);
        self.buf[..out.len() - first].copy_from_slice(&out[first..]);
        self.at = (self.at + out.len()) % WINDOW;
    }

    pub(crate) fn snapshot(&self) -> Box<[u8]> {
        let mut w = Vec::with_capacity(WINDOW);
        w.extend_from_slice(&self.buf[self.at..]);
        w.extend_from_slice(&self.buf[..self.at]);
        w.into_boxed_slice()
    }
}

/// Inflates `len` bytes at uncompressed offset `at` from `data`, the compressed bytes that
/// start at `point`'s span start (`point.span_start()`) and run at least to the end of the
/// requested bytes. Members that follow within `data` are read too.
pub fn extract(data: &[u8], point: &Checkpoint, at: u64, len: usize) -> Result<Vec<u8>, ZranError> {
    let mut skip = at
        .checked_sub(point.uncompressed)
        .ok_or(ZranError::Short { missing: len })?;
    let mut z = Inflater::new(-15)?;
    let mut data = data;
    if point.bits != 0 {
        let Some((&first, rest)) = data.split_first() else {
            return Err(ZranError::Short { missing: len });
        };
        z.prime(i32::from(point.bits), i32::from(first >> (8 - point.bits)))?;
        data = rest;
    }
    z.set_dictionary(&point.window)?;
    let mut out = vec![0u8; len];
    let mut discard = vec![0u8; WINDOW];
    let mut filled = 0usize;
    let mut raw = true;
    while filled < len {
        let step = if skip > 0 {
            let n = strata_oci::usize_of(skip.min(WINDOW as u64));
            let s = z.inflate(data, &mut discard[..n], Flush::None)?;
            skip -= s.produced as u64;
            s
        } else {
            let s = z.inflate(data, &mut out[filled..], Flush::None)?;
            filled += s.produced;
            s
        };
        data = &data[step.consumed..];
        if step.stream_end {
            if raw {
                // Raw inflate leaves the member's trailer; the next members are read as gzip.
                data = data.get(GZIP_TRAILER..).unwrap_or_default();
                raw = false;
            }
            if data.is_empty() {
                break;
            }
            z.reset(47)?;
        } else if step.consumed == 0 && step.produced == 0 {
            break;
        }
    }
    if filled < len {
        return Err(ZranError::Short {
            missing: len - filled,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[path = "zran_tests.rs"]
pub(crate) mod tests;
