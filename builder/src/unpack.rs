//! ADD's local archives: a tar file, plain or compressed with gzip, bzip2, xz or zstd, is
//! unpacked; which one it is comes from its first bytes (as docker's archive package decides),
//! never from its name. A file that is not such an archive is copied as it is.

use std::io::Read;
use std::path::Path;

/// How a local ADD source is compressed, from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// Not compressed (perhaps a plain tar).
    Plain,
    /// gzip (`1f 8b 08`).
    Gzip,
    /// bzip2 (`BZh`).
    Bzip2,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

/// The packing the bytes `head` start with.
pub fn sniff(head: &[u8]) -> Packing {
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Packing::Gzip
    } else if head.starts_with(b"BZh") {
        Packing::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Packing::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Packing::Zstd
    } else {
        Packing::Plain
    }
}

/// `r` decompressed as `p` says.
pub fn unpacked<'a>(r: impl Read + 'a, p: Packing) -> std::io::Result<Box<dyn Read + 'a>> {
    Ok(match p {
        Packing::Plain => Box::new(r),
        Packing::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Packing::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        Packing::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        Packing::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// Whether a 512-byte block is a tar header: the "ustar" magic, or (v7) a checksum that
/// matches.
fn is_tar_header(block: &[u8; 512]) -> bool {
    if &block[257..262] == b"ustar" {
        return true;
    }
    let field = String::from_utf8_lossy(&block[148..156]);
    let stored = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok();
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == Some(sum) && block[0] != 0
}

/// The tar stream of the archive at `path`, decompressed; `None` if the file is not a
/// (possibly compressed) tar archive and so is copied as it is.
pub fn archive_reader(path: &Path) -> Option<Box<dyn Read>> {
    let mut head = [0u8; 6];
    let mut f = std::fs::File::open(path).ok()?;
    let n = f.read(&mut head).ok()?;
    let packing = sniff(&head[..n]);
    let mut r = unpacked(std::fs::File::open(path).ok()?, packing).ok()?;
    let mut block = [0u8; 512];
    r.read_exact(&mut block).ok()?;
    if !is_tar_header(&block) {
        return None;
    }
    unpacked(std::fs::File::open(path).ok()?, packing).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_with(name: &str, body: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, body).unwrap();
        b.into_inner().unwrap()
    }

    fn packed(p: Packing, raw: &[u8]) -> Vec<u8> {
        match p {
            Packing::Plain => raw.to_vec(),
            Packing::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                e.write_all(raw).unwrap();
                e.finish().unwrap()
            }
            Packing::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
                e.write_all(raw).unwrap();
                e.finish().unwrap()
            }
            Packing::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(raw).unwrap();
                e.finish().unwrap()
            }
            Packing::Zstd => zstd::encode_all(raw, 3).unwrap(),
        }
    }

    #[test]
    fn every_packing_is_detected_by_content_and_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        let raw = tar_with("inner/f", b"payload\n");
        for p in [
            Packing::Plain,
            Packing::Gzip,
            Packing::Bzip2,
            Packing::Xz,
            Packing::Zstd,
        ] {
            let bytes = packed(p, &raw);
            assert_eq!(sniff(&bytes), p);
            // The name says nothing: content decides.
            let path = dir.path().join(format!("{p:?}.bin"));
            std::fs::write(&path, &bytes).unwrap();
            let mut out = Vec::new();
            archive_reader(&path)
                .unwrap_or_else(|| panic!("{p:?} not taken for an archive"))
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, raw, "{p:?}");
            // Compressed bytes that are not a tar are not an archive.
            let not_tar = packed(p, &[b'x'; 2048]);
            std::fs::write(&path, &not_tar).unwrap();
            assert!(archive_reader(&path).is_none(), "{p:?} of a non-tar");
        }
        let fake = dir.path().join("fake.tar.bz2");
        std::fs::write(&fake, b"just text, named like an archive\n").unwrap();
        assert!(archive_reader(&fake).is_none());
    }
}
