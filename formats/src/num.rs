//! Conversions between the TOC's signed integers and the unsigned sizes and offsets of memory
//! and files, failing or clamping explicitly instead of wrapping (the cast lints).

use std::fmt::Display;
use std::io;

/// `n`, an offset or size of the entry `name`, as a TOC integer (`i64`); past `i64::MAX` it is
/// an error naming the entry rather than a negative number in the TOC.
pub(crate) fn toc_int<T: TryInto<i64> + Copy + Display>(n: T, name: &str) -> io::Result<i64> {
    n.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name}: {n} is past the largest TOC offset"),
        )
    })
}

/// A TOC offset as an unsigned offset, negative ones read as 0.
pub(crate) fn clamp_offset(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `n` bytes, but at most `cap` (a buffer's length): a count too large for `usize` is larger
/// than any buffer.
pub(crate) fn up_to(n: u64, cap: usize) -> usize {
    usize::try_from(n).map_or(cap, |n| n.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_without_wrapping() {
        assert_eq!(toc_int(5u64, "f").unwrap(), 5);
        let err = toc_int(u64::MAX, "etc/f").unwrap_err();
        assert!(err.to_string().starts_with("etc/f: "), "{err}");
        assert_eq!(clamp_offset(-3), 0);
        assert_eq!(clamp_offset(7), 7);
        assert_eq!(up_to(u64::MAX, 10), 10);
        assert_eq!(up_to(4, 10), 4);
    }
}
