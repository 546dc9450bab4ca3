//! Native layers are ordinary `tar+zstd` to every other client: skopeo inspects and copies a
//! converted image, `zstd -dc | tar -t` lists each layer, and each layer decompresses to
//! exactly the tar its diff_id names.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::process::Command;

use strata_tests::fixtures::rich_layers;
use strata_tests::layers::{Comp, push_image, sha};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::ok;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn converted_image_is_ordinary_to_skopeo_zstd_and_tar() {
    if !require_root_fuse("converted_image_is_ordinary_to_skopeo_zstd_and_tar") {
        return;
    }
    let reg = Registry::start();
    let src = push_image(
        &reg.addr,
        "t/interop",
        "gzip",
        &rich_layers(false),
        Comp::Gzip,
    );
    let dst = format!("{}/t/interop:lazy", reg.addr);
    let state = tempfile::tempdir().unwrap();
    ok(
        &state.path().join("root"),
        &["convert", &src.reference, &dst],
    );

    let inspect = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{dst}")));
    let manifest: serde_json::Value = serde_json::from_slice(&inspect).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for l in layers {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert!(
            l["annotations"]["io.github.containers.zstd-chunked.manifest-checksum"].is_string()
        );
    }

    let layout = state.path().join("oci");
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{dst}"))
        .arg(format!("oci:{}:copied", layout.display())));
    for (i, l) in layers.iter().enumerate() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let blob = layout.join("blobs/sha256").join(hex);
        let tar = run(Command::new("zstd").arg("-dc").arg(&blob));
        assert_eq!(
            sha(&tar),
            sha(&src.tars[i]),
            "layer {i} does not decompress to its diff_id"
        );
        let list = String::from_utf8(run(Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | tar -t", blob.display()))))
        .unwrap();
        assert!(list.lines().count() > 3, "layer {i} lists: {list}");
    }
    let first = String::from_utf8(run(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc {} | tar -t",
        layout
            .join("blobs/sha256")
            .join(
                layers[1]["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:")
            )
            .display()
    ))))
    .unwrap();
    assert!(
        first.contains("etc/.wh.passwd") && first.contains("var/lib/old/.wh..wh..opq"),
        "{first}"
    );
}
