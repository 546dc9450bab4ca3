//! Issue 17's fault suite for whole-blob transfers and redirects, through the fault proxy: a
//! byte flipped in a pulled blob, in an upload, and storage redirects that have expired. Each
//! case ends in the right bytes or one clear error; nothing corrupt is stored or listed; the
//! same command works again once the fault is gone.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use strata_tests::faults::strata_env;
use strata_tests::fixtures::rich_layers;
use strata_tests::layers::{Comp, push_image};
use strata_tests::proxy::{Fault, Proxy};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, ok, run};
use strata_tests::walk::{ReferenceTree, assert_same, snapshot};

/// `strata ARGS` fails with a short error (no dump of bytes); its stderr.
fn fails(root: &Path, args: &[&str]) -> String {
    let out = run(root, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "strata {args:?} worked: {err}");
    assert!(
        err.trim().lines().count() <= 3 && err.chars().all(|c| !c.is_control() || c == '\n'),
        "{err}"
    );
    err
}

/// The image `reference` in `root`, mounted with its registry refused, equals `want`: every
/// byte came from what the pull stored.
fn assert_stored(root: &Path, proxy: &Proxy, reference: &str, want: &ReferenceTree, what: &str) {
    proxy.set(Fault::Refuse);
    let mnt = tempfile::tempdir().unwrap();
    let m = Mounted::new(root, reference, &mnt.path().join("m"));
    assert_same(what, &snapshot(&m.dir), &snapshot(&want.root));
    drop(m);
    proxy.set(Fault::None);
}

#[test]
fn flipped_bytes_and_expired_redirects_on_pull_convert_and_push() {
    if !require_root_fuse("flipped_bytes_and_expired_redirects_on_pull_convert_and_push") {
        return;
    }
    let reg = Registry::start();
    let img = push_image(&reg.addr, "t/whole", "1", &rich_layers(false), Comp::Gzip);
    let want = ReferenceTree::new(&img.tars);
    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/t/whole:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();

    // A byte flipped in every whole blob: the pull fails naming a digest, lists nothing.
    let root = state.path().join("flip");
    proxy.set(Fault::CorruptBlobs);
    let err = fails(&root, &["pull", "--all", &reference]);
    assert!(err.contains("sha256:"), "{err}");
    assert_eq!(
        ok(&root, &["images", "-q"]).trim(),
        "",
        "a corrupt pull was listed"
    );
    // Once the registry is right: the same pull works, and what it stored is right.
    proxy.set(Fault::None);
    ok(&root, &["pull", "--all", &reference]);
    assert_stored(&root, &proxy, &reference, &want, "pull after flipped bytes");

    // Storage redirects whose first URL per blob has expired: asked again, the pull works.
    let root = state.path().join("redirect");
    proxy.set(Fault::ExpiredRedirects);
    ok(&root, &["pull", "--all", &reference]);
    let (redirects, expired) = (
        proxy.stats.redirects.load(Ordering::Relaxed),
        proxy.stats.expired.load(Ordering::Relaxed),
    );
    assert!(expired > 0 && redirects > expired, "{redirects} {expired}");
    assert_stored(
        &root,
        &proxy,
        &reference,
        &want,
        "pull through expired redirects",
    );

    // convert reads whole blobs and pushes: a flipped byte on either side is one clear error,
    // and no converted image is listed; then it works, and its image is right.
    // (Before any zstd:chunked image of the same layers is in the registry.)
    let root = state.path().join("convert");
    let target = format!("{}/t/whole:converted", proxy.addr);
    proxy.set(Fault::CorruptBlobs);
    let err = fails(&root, &["convert", &reference, &target]);
    assert!(err.contains("sha256:"), "{err}");
    proxy.set(Fault::CorruptUploads);
    let err = fails(&root, &["convert", &reference, &target]);
    assert!(err.contains("DIGEST_INVALID"), "{err}");
    assert!(
        !ok(&root, &["images"]).contains("converted"),
        "a failed convert listed its image"
    );
    proxy.set(Fault::None);
    ok(&root, &["convert", &reference, &target]);
    let check = state.path().join("check");
    ok(&check, &["pull", "--all", &target]);
    assert_stored(&check, &proxy, &target, &want, "converted after faults");

    // Lazy reads of a mount through expired redirects: the right bytes.
    push_image(
        &reg.addr,
        "t/whole",
        "native",
        &rich_layers(false),
        Comp::Native,
    );
    let native = format!("{}/t/whole:native", proxy.addr);
    let root = state.path().join("lazy");
    ok(&root, &["pull", &native]);
    let m = Mounted::new(&root, &native, &state.path().join("lazy-mnt"));
    let before = proxy.stats.expired.load(Ordering::Relaxed);
    proxy.set(Fault::ExpiredRedirects);
    assert_eq!(
        std::fs::read(m.dir.join("bin/busybox")).unwrap(),
        strata_tests::layers::noise(300_000, 1)
    );
    assert!(proxy.stats.expired.load(Ordering::Relaxed) > before);
    proxy.set(Fault::None);
    drop(m);

    // push: a flipped upload is refused by the registry, the image stays; then it works. (An
    // imported image: its layer is in no registry yet.)
    let mut tar = tar::Builder::new(Vec::new());
    let data = strata_tests::layers::noise(200_000, 7);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "pushed.bin", &data[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let tar_path = state.path().join("pushed.tar");
    std::fs::write(&tar_path, &tar).unwrap();
    let pushed = format!("{}/t/pushed:1", proxy.addr);
    let root = state.path().join("push");
    ok(&root, &["import", tar_path.to_str().unwrap(), &pushed]);
    proxy.set(Fault::CorruptUploads);
    let err = fails(&root, &["push", &pushed]);
    assert!(err.contains("DIGEST_INVALID"), "{err}");
    assert!(
        ok(&root, &["images"]).contains("t/pushed"),
        "a failed push lost the image"
    );
    proxy.set(Fault::None);
    ok(&root, &["push", &pushed]);
    let check = state.path().join("check-push");
    ok(&check, &["pull", "--all", &pushed]);
    let want = ReferenceTree::new(&[tar]);
    assert_stored(&check, &proxy, &pushed, &want, "pushed after faults");
}

/// Whole blobs cut short and connections reset: pull fails with a short error and lists
/// nothing, lazy reads fail with EIO; once the registry is right the same pull works and
/// stores the right bytes, and the same mount reads them.
#[test]
fn truncated_and_reset_transfers_on_pull_and_mount_reads() {
    if !require_root_fuse("truncated_and_reset_transfers_on_pull_and_mount_reads") {
        return;
    }
    let reg = Registry::start();
    let img = push_image(&reg.addr, "t/cut", "1", &rich_layers(false), Comp::Gzip);
    push_image(
        &reg.addr,
        "t/cut",
        "native",
        &rich_layers(false),
        Comp::Native,
    );
    let want = ReferenceTree::new(&img.tars);
    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/t/cut:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();

    for (name, fault) in [("truncated", Fault::TruncateBlobs), ("reset", Fault::Reset)] {
        let root = state.path().join(name);
        if fault == Fault::Reset {
            // The manifest is there; the blobs' connections are reset.
            ok(&root, &["pull", &reference]);
        }
        proxy.set(fault);
        let err = fails(&root, &["pull", "--all", &reference]);
        eprintln!("{name}: {err}");
        assert!(err.contains(&proxy.addr), "{name}: {err}");
        if fault == Fault::TruncateBlobs {
            assert_eq!(ok(&root, &["images", "-q"]).trim(), "", "{name}: listed");
        }
        proxy.set(Fault::None);
        ok(&root, &["pull", "--all", &reference]);
        assert_stored(&root, &proxy, &reference, &want, name);
    }

    let native = format!("{}/t/cut:native", proxy.addr);
    let root = state.path().join("lazy");
    ok(&root, &["pull", &native]);
    let m = Mounted::new(&root, &native, &state.path().join("lazy-mnt"));
    proxy.set(Fault::Reset);
    let r = std::fs::read(m.dir.join("bin/busybox"));
    assert!(
        matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EIO)),
        "a reset read: {r:?}"
    );
    proxy.set(Fault::None);
    assert_eq!(
        std::fs::read(m.dir.join("bin/busybox")).unwrap(),
        strata_tests::layers::noise(300_000, 1)
    );
}

/// The stall deadline the stall test gives its commands (`STRATA_STALL_TIMEOUT_SECS`).
const STALL_ENV: &[(&str, &str)] = &[("STRATA_STALL_TIMEOUT_SECS", "3")];

/// At most this for a command whose registry stalls: the deadline and generous slack. (Before
/// the stall deadline a stalled request waited 60 s an attempt, four attempts; a body that
/// stopped, 60 s.)
const STALL_BOUND: Duration = Duration::from_secs(40);

/// `strata ARGS` on a stalled `registry`: fails within [`STALL_BOUND`] with one line naming
/// the registry, a digest and the deadline. Its stderr.
fn stalls(root: &Path, args: &[&str], registry: &str) -> String {
    let t = Instant::now();
    let out = strata_env(root, args, STALL_ENV);
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("strata {args:?} on a stalled registry: {took:?}: {err}");
    assert!(!out.status.success(), "strata {args:?} worked: {err}");
    assert!(took < STALL_BOUND, "strata {args:?} took {took:?}: {err}");
    assert!(
        err.contains("no progress within 3s") && err.contains(registry) && err.contains("sha256:"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

/// Issue 17: a registry that accepts and then goes quiet — before answering, half way through
/// a layer, or on an upload — during pull, `pull --all` of a plain gzip image, convert, push
/// and save. Each fails within the stall deadline (with slack) with one line naming the
/// registry and the blob, stores and lists nothing half done, and works once the registry
/// answers again.
#[test]
fn stalled_registries_bound_pull_convert_push_and_save() {
    if !require_root_fuse("stalled_registries_bound_pull_convert_push_and_save") {
        return;
    }
    let reg = Registry::start();
    let img = push_image(&reg.addr, "t/quiet", "1", &rich_layers(false), Comp::Gzip);
    let want = ReferenceTree::new(&img.tars);
    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/t/quiet:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();

    // pull: nothing at all comes back (the manifest's request): nothing listed.
    let root = state.path().join("pull");
    proxy.set(Fault::Stall);
    let t = Instant::now();
    let out = strata_env(&root, &["pull", &reference], STALL_ENV);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && t.elapsed() < STALL_BOUND, "{err}");
    assert!(
        err.contains("no progress within 3s") && err.contains(&proxy.addr),
        "{err}"
    );
    assert_eq!(
        ok(&root, &["images", "-q"]).trim(),
        "",
        "a stalled pull listed"
    );
    // pull --all streams the plain gzip layers whole: each stops half way.
    proxy.set(Fault::None);
    ok(&root, &["pull", &reference]);
    proxy.set(Fault::StallBlobsMidBody);
    stalls(&root, &["pull", "--all", &reference], &proxy.addr);
    proxy.set(Fault::None);
    ok(&root, &["pull", "--all", &reference]);
    assert_stored(&root, &proxy, &reference, &want, "pull --all after a stall");

    // save of a lazily pulled image fetches its layers whole: no archive, then the archive.
    let root = state.path().join("save");
    ok(&root, &["pull", &reference]);
    let archive = state.path().join("quiet.tar");
    let out_arg = archive.to_str().unwrap();
    proxy.set(Fault::StallBlobsMidBody);
    stalls(&root, &["save", "-o", out_arg, &reference], &proxy.addr);
    assert!(!archive.exists() && !archive.with_extension("partial").exists());
    proxy.set(Fault::None);
    ok(&root, &["save", "-o", out_arg, &reference]);
    assert!(std::fs::metadata(&archive).unwrap().len() > 0);

    // convert reads layers whole and uploads: a stall on either side, no converted image.
    let root = state.path().join("convert");
    let target = format!("{}/t/quiet:converted", proxy.addr);
    for fault in [Fault::StallBlobsMidBody, Fault::StallUploads] {
        proxy.set(fault);
        stalls(&root, &["convert", &reference, &target], &proxy.addr);
        proxy.set(Fault::None);
        assert!(
            !ok(&root, &["images"]).contains("converted"),
            "{fault:?}: a stalled convert listed its image"
        );
    }
    ok(&root, &["convert", &reference, &target]);
    let check = state.path().join("check");
    ok(&check, &["pull", "--all", &target]);
    assert_stored(&check, &proxy, &target, &want, "converted after stalls");

    // push: the registry takes the upload and never answers; the image stays, then it works.
    let root = state.path().join("push");
    // (An imported image: its layer is in no registry yet.)
    let mut tar = tar::Builder::new(Vec::new());
    let data = strata_tests::layers::noise(300_000, 11);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "quiet.bin", &data[..]).unwrap();
    let tar_path = state.path().join("quiet-import.tar");
    std::fs::write(&tar_path, tar.into_inner().unwrap()).unwrap();
    let imported = format!("{}/t/quiet-import:1", proxy.addr);
    ok(&root, &["import", tar_path.to_str().unwrap(), &imported]);
    proxy.set(Fault::StallUploads);
    stalls(&root, &["push", &imported], &proxy.addr);
    proxy.set(Fault::None);
    assert!(
        ok(&root, &["images"]).contains("t/quiet-import"),
        "a stalled push lost the image"
    );
    ok(&root, &["push", &imported]);
    let check = state.path().join("check-push");
    ok(&check, &["pull", "--all", &imported]);

    // build: ADD of a URL (a layer of the registry's) whose transfer stops half way.
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.v2+json";
    let url = format!("http://{}/v2/t/quiet/manifests/1", reg.addr);
    let got = std::process::Command::new("curl")
        .args(["-sf", "-H", accept, &url])
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let big = layers.iter().max_by_key(|l| l["size"].as_u64()).unwrap();
    let ctx = state.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let added = format!(
        "http://{}/v2/t/quiet/blobs/{}",
        proxy.addr,
        big["digest"].as_str().unwrap()
    );
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\nADD {added} /layer\n"),
    )
    .unwrap();
    let build = ["build", "-t", "quiet/built", ctx.to_str().unwrap()];
    proxy.set(Fault::StallBlobsMidBody);
    let t = Instant::now();
    let out = strata_env(&root, &build, STALL_ENV);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("build on a stalled registry: {:?}: {err}", t.elapsed());
    assert!(!out.status.success() && t.elapsed() < STALL_BOUND, "{err}");
    assert!(
        err.contains("no progress within 3s") && err.contains(&added),
        "{err}"
    );
    proxy.set(Fault::None);
    ok(&root, &build);
    assert!(ok(&root, &["images"]).contains("quiet/built"));
}
