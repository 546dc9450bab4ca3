//! Sparse files in tar layers, in every dialect GNU tar writes: the old GNU `S` entry (a map of
//! data segments in the header, continued in extension headers) and the PAX formats 0.0
//! (`GNU.sparse.offset`/`numbytes` pairs), 0.1 (`GNU.sparse.map`) and 1.0 (the map as decimal
//! lines at the start of the entry's data). In every dialect the archive stores only the data
//! segments, one after the other; the file is those segments at their offsets with zeros
//! between, `real_size` long.

use std::io::{self, Read};

use crate::num::up_to;

/// Errors reading a sparse file's map.
#[derive(Debug, thiserror::Error)]
pub enum SparseError {
    /// The map is malformed or does not fit the file.
    #[error("{0}")]
    Map(String),
    /// The map at the start of the data (format 1.0) could not be read.
    #[error("reading sparse map: {0}")]
    Io(#[source] io::Error),
}

impl From<String> for SparseError {
    fn from(s: String) -> Self {
        Self::Map(s)
    }
}

impl From<&str> for SparseError {
    fn from(s: &str) -> Self {
        Self::Map(s.to_string())
    }
}

/// Data segments `(offset in the file, length)`.
pub type Segments = Vec<(u64, u64)>;

/// A sparse file's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseMap {
    /// The file's length.
    pub real_size: u64,
    /// Data segments `(offset in the file, length)`, in order; their bytes follow each other in
    /// the archive.
    pub segments: Vec<(u64, u64)>,
}

impl SparseMap {
    /// Bytes of data the archive holds.
    pub fn data_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.1).sum()
    }

    /// Checks that the segments are ordered, do not overlap and fit in the file.
    pub fn check(&self) -> Result<(), SparseError> {
        let mut at = 0u64;
        for &(off, len) in &self.segments {
            if off < at {
                return Err(format!("sparse map out of order at offset {off}").into());
            }
            at = off
                .checked_add(len)
                .filter(|end| *end <= self.real_size)
                .ok_or_else(|| {
                    SparseError::Map(format!(
                        "sparse segment {off}+{len} is past the file's size {}",
                        self.real_size
                    ))
                })?;
        }
        Ok(())
    }
}

/// What the PAX records of an entry say about sparseness.
#[derive(Debug, Default)]
pub struct PaxSparse {
    /// `GNU.sparse.major`/`minor` (0.0 and 0.1 have none; 0.1 has `GNU.sparse.map`).
    pub version: Option<(String, String)>,
    /// `GNU.sparse.name`: the real name (the header has `GNUSparseFile.N/NAME`).
    pub name: Option<Vec<u8>>,
    /// `GNU.sparse.realsize` (1.0) or `GNU.sparse.size` (0.x).
    pub real_size: Option<u64>,
    /// The map of 0.0 (`offset`/`numbytes` pairs) or 0.1 (`map`).
    pub map: Option<Vec<u64>>,
    /// Whether any `GNU.sparse.*` record was seen.
    pub any: bool,
}

fn num(v: &[u8]) -> Result<u64, SparseError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("bad number {:?} in sparse map", String::from_utf8_lossy(v)).into())
}

impl PaxSparse {
    /// Collects the `GNU.sparse.*` records of `records` (in archive order).
    pub fn from_records<'a>(
        records: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Self, SparseError> {
        let mut p = Self::default();
        let (mut major, mut minor) = (None, None);
        for (k, v) in records {
            let Some(key) = k.strip_prefix(b"GNU.sparse.") else {
                continue;
            };
            p.any = true;
            match key {
                b"major" => major = Some(String::from_utf8_lossy(v).into_owned()),
                b"minor" => minor = Some(String::from_utf8_lossy(v).into_owned()),
                b"name" => p.name = Some(v.to_vec()),
                b"realsize" | b"size" => p.real_size = Some(num(v)?),
                b"offset" | b"numbytes" => p.map.get_or_insert_with(Vec::new).push(num(v)?),
                b"map" => {
                    let list = p.map.get_or_insert_with(Vec::new);
                    for n in v.split(|b| *b == b',').filter(|n| !n.is_empty()) {
                        list.push(num(n)?);
                    }
                }
                _ => {}
            }
        }
        if major.is_some() || minor.is_some() {
            p.version = Some((major.unwrap_or_default(), minor.unwrap_or_default()));
        }
        Ok(p)
    }

    /// Whether the map is at the start of the data (format 1.0); an error for versions GNU tar
    /// does not write.
    pub fn map_in_data(&self) -> Result<bool, SparseError> {
        match &self.version {
            None => Ok(false),
            Some((ma, mi)) if ma == "1" && mi == "0" => Ok(true),
            Some((ma, mi)) if ma == "0" && (mi == "0" || mi == "1") => Ok(false),
            Some((ma, mi)) => Err(format!("unknown sparse format {ma}.{mi}").into()),
        }
    }
}

/// Pairs a flat list of numbers into segments.
pub fn pairs(flat: &[u64]) -> Result<Segments, SparseError> {
    if !flat.len().is_multiple_of(2) {
        return Err("sparse map has an odd count of numbers".into());
    }
    Ok(flat.chunks(2).map(|c| (c[0], c[1])).collect())
}

/// Reads the map of format 1.0 from the start of the data: decimal numbers, one per line (the
/// count, then offset/length pairs), padded to a 512-byte block. Returns the raw bytes read
/// (whole blocks) and the segments.
pub fn read_map_1_0(r: &mut dyn Read) -> Result<(Vec<u8>, Segments), SparseError> {
    let mut raw = Vec::new();
    let mut numbers: Vec<u64> = Vec::new();
    let mut used = 0usize;
    let mut want: Option<usize> = None;
    loop {
        if let Some(w) = want
            && numbers.len() == 1 + 2 * w
        {
            break;
        }
        // Parse the complete lines we have.
        if let Some(nl) = raw[used..].iter().position(|b| *b == b'\n') {
            numbers.push(num(&raw[used..used + nl])?);
            used += nl + 1;
            if want.is_none() {
                let count = numbers[0];
                match usize::try_from(count) {
                    Ok(n) if n <= 1 << 24 => want = Some(n),
                    _ => return Err(format!("sparse map claims {count} segments").into()),
                }
            }
            continue;
        }
        let mut block = [0u8; 512];
        r.read_exact(&mut block).map_err(SparseError::Io)?;
        raw.extend_from_slice(&block);
    }
    Ok((raw, pairs(&numbers[1..])?))
}

/// The map of an old GNU `S` entry: the four slots of its header, then the extension blocks
/// (21 slots each) that follow it, which `recorded` (the raw bytes before the entry's data)
/// ends with.
pub fn gnu_map(header: &tar::Header, recorded: &[u8]) -> Result<Segments, SparseError> {
    let gnu = header.as_gnu().ok_or("sparse entry without a GNU header")?;
    let mut out = Vec::new();
    let mut add = |slot: &tar::GnuSparseHeader| -> Result<(), SparseError> {
        if slot.is_empty() {
            return Ok(());
        }
        let off = slot.offset().map_err(SparseError::Io)?;
        let len = slot.length().map_err(SparseError::Io)?;
        out.push((off, len));
        Ok(())
    };
    for s in &gnu.sparse {
        add(s)?;
    }
    if gnu.is_extended() {
        // The header block sits just before the extension blocks at the end of `recorded`.
        let hb = header.as_bytes();
        let n_ext = (1..=recorded.len() / 512)
            .find(|k| {
                let end = recorded.len() - 512 * k;
                end >= 512 && recorded[end - 512..end] == hb[..]
            })
            .ok_or("sparse extension headers not found")?;
        let start = recorded.len() - 512 * n_ext;
        for block in recorded[start..].chunks(512) {
            for i in 0..21 {
                let slot = &block[i * 24..(i + 1) * 24];
                let mut s = tar::GnuSparseHeader {
                    offset: [0; 12],
                    numbytes: [0; 12],
                };
                s.offset.copy_from_slice(&slot[..12]);
                s.numbytes.copy_from_slice(&slot[12..]);
                add(&s)?;
            }
        }
    }
    Ok(out)
}

/// Reads the data of a sparse file as the file: zeros in the holes.
pub struct Expand<'a> {
    data: &'a mut dyn Read,
    segments: std::vec::IntoIter<(u64, u64)>,
    /// Current position in the file.
    at: u64,
    /// The current segment (start, end) or the final hole up to the size.
    cur: Option<(u64, u64)>,
    size: u64,
}

impl<'a> Expand<'a> {
    /// Expands `data` (the concatenated segments of `map`).
    pub fn new(map: &SparseMap, data: &'a mut dyn Read) -> Self {
        let mut segments = map.segments.clone().into_iter();
        let cur = segments.next().map(|(o, l)| (o, o + l));
        Self {
            data,
            segments,
            at: 0,
            cur,
            size: map.real_size,
        }
    }
}

impl Read for Expand<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if buf.is_empty() || self.at >= self.size {
                return Ok(0);
            }
            let (start, end) = match self.cur {
                Some(c) => c,
                None => (self.size, self.size),
            };
            if self.at < start {
                let n = up_to(start - self.at, buf.len());
                buf[..n].fill(0);
                self.at += n as u64;
                return Ok(n);
            }
            if self.at < end {
                let want = up_to(end - self.at, buf.len());
                let n = self.data.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.at += n as u64;
                return Ok(n);
            }
            self.cur = self.segments.next().map(|(o, l)| (o, o + l));
        }
    }
}

/// Reads only the data segments out of an already expanded file (tar's reader expands old GNU
/// sparse entries itself).
pub struct DataOnly<'a> {
    file: &'a mut dyn Read,
    segments: std::vec::IntoIter<(u64, u64)>,
    at: u64,
    cur: Option<(u64, u64)>,
}

impl<'a> DataOnly<'a> {
    /// The data of `map` out of `file`.
    pub fn new(map: &SparseMap, file: &'a mut dyn Read) -> Self {
        let mut segments = map.segments.clone().into_iter();
        let cur = segments.next().map(|(o, l)| (o, o + l));
        Self {
            file,
            segments,
            at: 0,
            cur,
        }
    }
}

impl Read for DataOnly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some((start, end)) = self.cur else {
                return Ok(0);
            };
            if self.at < start {
                let skip = start - self.at;
                let n = io::copy(&mut (&mut self.file).take(skip), &mut io::sink())?;
                if n < skip {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.at = start;
            }
            if self.at < end {
                if buf.is_empty() {
                    return Ok(0);
                }
                let want = up_to(end - self.at, buf.len());
                let n = self.file.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.at += n as u64;
                return Ok(n);
            }
            self.cur = self.segments.next().map(|(o, l)| (o, o + l));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_and_back() {
        let map = SparseMap {
            real_size: 20,
            segments: vec![(2, 3), (10, 2), (20, 0)],
        };
        map.check().unwrap();
        let data = b"abcde";
        let mut d = &data[..];
        let mut file = Vec::new();
        Expand::new(&map, &mut d).read_to_end(&mut file).unwrap();
        assert_eq!(file, b"\0\0abc\0\0\0\0\0de\0\0\0\0\0\0\0\0");
        let mut f = &file[..];
        let mut back = Vec::new();
        DataOnly::new(&map, &mut f).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        let bad = SparseMap {
            real_size: 5,
            segments: vec![(2, 3), (1, 1)],
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn map_1_0_and_pax_records() {
        let mut text = b"2\n4997120\n4096\n10485760\n0\n".to_vec();
        text.resize(512, 0);
        text.extend_from_slice(b"DATA");
        let mut r = &text[..];
        let (raw, segs) = read_map_1_0(&mut r).unwrap();
        assert_eq!(raw.len(), 512);
        assert_eq!(segs, vec![(4997120, 4096), (10485760, 0)]);
        assert_eq!(r, b"DATA");

        let recs: Vec<(&[u8], &[u8])> = vec![
            (b"GNU.sparse.size", b"100"),
            (b"GNU.sparse.numblocks", b"2"),
            (b"GNU.sparse.offset", b"10"),
            (b"GNU.sparse.numbytes", b"5"),
            (b"GNU.sparse.offset", b"100"),
            (b"GNU.sparse.numbytes", b"0"),
        ];
        let p = PaxSparse::from_records(recs.into_iter()).unwrap();
        assert!(p.any && !p.map_in_data().unwrap());
        assert_eq!(p.real_size, Some(100));
        assert_eq!(pairs(&p.map.unwrap()).unwrap(), vec![(10, 5), (100, 0)]);
        let recs: Vec<(&[u8], &[u8])> =
            vec![(b"GNU.sparse.major", b"2"), (b"GNU.sparse.minor", b"0")];
        let p = PaxSparse::from_records(recs.into_iter()).unwrap();
        assert!(p.map_in_data().is_err());
    }
}
