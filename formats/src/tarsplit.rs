//! tar-split records (JSON lines), so that podman and containers/storage can rebuild the exact
//! tar stream of a zstd:chunked layer from its files.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crc::{CRC_64_GO_ISO, Crc, Table};
use serde::Serialize;

/// The CRC-64 tar-split stores for each file's content (slice-by-16 tables: several times the
/// byte-at-a-time speed, which made it a quarter of a commit's time).
pub const CRC64: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&CRC_64_GO_ISO);

#[derive(Serialize)]
struct Record<'a> {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name_raw: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<i64>,
    payload: Option<String>,
    position: u64,
}

/// Builds the tar-split JSON lines of one layer.
#[derive(Debug, Default)]
pub struct TarSplit {
    out: Vec<u8>,
    position: u64,
}

impl TarSplit {
    /// Raw bytes that are not file payload.
    pub fn segment(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.push(&Record {
            kind: 2,
            name: None,
            name_raw: None,
            size: None,
            payload: Some(B64.encode(bytes)),
            position: self.position,
        });
    }

    /// One entry; `crc` is the CRC-64 of a regular file's content (absent for other entries).
    pub fn file(&mut self, name: &str, name_raw: Option<&str>, size: i64, crc: Option<u64>) {
        self.push(&Record {
            kind: 1,
            name: Some(name),
            name_raw,
            size: (size > 0).then_some(size),
            payload: crc.map(|c| B64.encode(c.to_be_bytes())),
            position: self.position,
        });
    }

    fn push(&mut self, r: &Record<'_>) {
        // Serializing plain structs of strings and numbers cannot fail.
        if let Ok(line) = serde_json::to_vec(r) {
            self.out.extend_from_slice(&line);
            self.out.push(b'\n');
        }
        self.position += 1;
    }

    /// The JSON lines.
    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines() {
        let mut t = TarSplit::default();
        t.segment(b"hdr");
        t.file("etc/x", None, 3, Some(CRC64.checksum(b"abc")));
        t.file("etc/", None, 0, None);
        let s = String::from_utf8(t.into_bytes()).unwrap();
        let lines: Vec<serde_json::Value> = s
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["type"], 2);
        assert_eq!(lines[0]["payload"], "aGRy");
        assert_eq!(lines[1]["position"], 1);
        assert_eq!(lines[1]["size"], 3);
        assert!(lines[2]["payload"].is_null());
    }
}
