//! SEEK_DATA / SEEK_HOLE over a file's chunks.

use fuser::Errno;
use strata_formats::index::{Chunk, ChunkLoc};

/// SEEK_DATA / SEEK_HOLE over a file's chunks: holes are the `zeros` chunks (and a file
/// without content is one hole), so copy-up and `cp --sparse` keep them.
pub(crate) fn seek_data_hole(
    chunks: &[Chunk],
    size: u64,
    offset: i64,
    whence: i32,
) -> Result<i64, Errno> {
    let Ok(off) = u64::try_from(offset) else {
        return Err(Errno::EINVAL);
    };
    if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
        return Err(Errno::EINVAL);
    }
    if off >= size {
        return Err(Errno::ENXIO);
    }
    let want_data = whence == libc::SEEK_DATA;
    for c in chunks.iter().filter(|c| c.file_offset + c.len > off) {
        let is_data = c.loc != ChunkLoc::Zeros;
        if is_data == want_data {
            return Ok(i64::try_from(off.max(c.file_offset)).unwrap_or(i64::MAX));
        }
    }
    if want_data {
        Err(Errno::ENXIO)
    } else {
        Ok(i64::try_from(size).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seek_data_and_hole_follow_zero_chunks() {
        let c = |off, len, zeros: bool| Chunk {
            file_offset: off,
            len,
            digest: None,
            loc: if zeros {
                ChunkLoc::Zeros
            } else {
                ChunkLoc::Local
            },
        };
        let chunks = [c(0, 10, false), c(10, 10, true), c(20, 5, false)];
        let (d, h) = (libc::SEEK_DATA, libc::SEEK_HOLE);
        assert_eq!(seek_data_hole(&chunks, 25, 0, d), Ok(0));
        assert_eq!(seek_data_hole(&chunks, 25, 0, h), Ok(10));
        assert_eq!(seek_data_hole(&chunks, 25, 12, d), Ok(20));
        assert_eq!(seek_data_hole(&chunks, 25, 21, h), Ok(25));
        assert_eq!(seek_data_hole(&chunks, 25, 25, d), Err(Errno::ENXIO));
        assert_eq!(seek_data_hole(&[], 0, 0, d), Err(Errno::ENXIO));
    }
}
