//! Writes the seed corpora from real inputs: layers written by strata's own zstd:chunked,
//! eStargz and SOCI writers, so the fuzzers start from what registries actually serve.
//! Run from `fuzz/`: `cargo run --manifest-path seeds/Cargo.toml` (the hand-written seeds, references,
//! manifests, Dockerfiles and .dockerignore files, are committed as they are).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::fs;
use std::io::Cursor;
use std::path::Path;

use strata_formats::chunked::write_chunked;
use strata_formats::estargz::FOOTER_LEN;
use strata_formats::estargz_write::write_estargz;
use strata_formats::soci::build_ztoc;
use strata_formats::toc::{FOOTER_LEN as CHUNKED_FOOTER_LEN, Footer};

fn sample_tar(big: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_size(0);
    dir.set_mode(0o755);
    b.append_data(&mut dir, "etc/", &[][..]).unwrap();
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("etc/hostname", b"strata\n");
    let bytes: Vec<u8> = (0..big).map(|i| (i * 7 % 251) as u8).collect();
    add("usr/lib/big.bin", &bytes);
    add("holes.bin", &vec![0u8; 4096]);
    add(&format!("{}/long-name.txt", "d".repeat(120)), b"long\n");
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    b.append_link(&mut link, "etc/localtime", "/usr/share/zoneinfo/UTC")
        .unwrap();
    let mut hard = tar::Header::new_gnu();
    hard.set_entry_type(tar::EntryType::Link);
    hard.set_size(0);
    b.append_link(&mut hard, "etc/hostname.bak", "etc/hostname")
        .unwrap();
    b.into_inner().unwrap()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    println!("corpus/{target}/seed-{name}: {} bytes", bytes.len());
}

fn main() {
    // Three 128 KiB chunks in the big file: the TOC has chunk entries.
    let tar = sample_tar(3 * 128 * 1024 + 77);
    write("tar", "small.tar", &sample_tar(300));

    let mut blob = Vec::new();
    let w = write_chunked(&tar[..], &mut blob, 3).unwrap();
    let json = serde_json::to_vec(&w.toc).unwrap();
    for sel in [1u8, 3, 5] {
        write("toc_json", &format!("chunked-{sel}.json"), &[&[sel][..], &json].concat());
    }
    let announced = u16::try_from(w.toc_position.uncompressed).unwrap();
    let frame = [&announced.to_le_bytes()[..], &w.toc_compressed].concat();
    write("toc_frame", "chunked-toc", &frame);
    let tail = &blob[blob.len() - CHUNKED_FOOTER_LEN..];
    assert!(Footer::decode(tail).is_ok());
    write("toc_frame", "footer", tail);
    let ann = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
            "digest": w.digest.to_string(),
            "size": w.size,
            "annotations": w.annotations,
        }]
    });
    write("manifest", "chunked-manifest.json", &serde_json::to_vec_pretty(&ann).unwrap());

    let mut gz = Vec::new();
    write_estargz(&tar[..], &mut gz, 6).unwrap();
    let footer_len = usize::try_from(FOOTER_LEN).unwrap();
    let footer = &gz[gz.len() - footer_len..];
    let offset = strata_formats::estargz::parse_footer(footer).unwrap();
    let member = &gz[usize::try_from(offset).unwrap()..];
    write("estargz", "toc-and-footer", member);
    let toc = strata_formats::estargz::extract_toc_json(&member[..member.len() - footer_len]).unwrap();
    write("toc_json", "estargz.json", &[&[0u8][..], &toc].concat());

    // A plain gzip layer with two 64 KiB spans for SOCI.
    let small = sample_tar(40 * 1024);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    std::io::Write::write_all(&mut enc, &small).unwrap();
    let layer = enc.finish().unwrap();
    let ztoc = build_ztoc(Cursor::new(&layer), 32 * 1024).unwrap();
    write("ztoc", "two-spans.ztoc", &ztoc.to_bytes());
}
