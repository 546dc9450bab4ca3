//! podman (Debian's 4.3) on strata's additional layer store: `strata layer-store DIR` and
//! storage.conf's `additionallayerstores = ["DIR:ref"]`; podman runs a lazy image without
//! downloading its layers, and `podman rmi` leaves both stores usable.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::fixtures::rich_layers;
use strata_tests::layers::{Comp, push_tars, tar_of};
use strata_tests::podman::Podman;
use strata_tests::proxy::Proxy;
use strata_tests::registry::Registry;
use strata_tests::{mounts, require_root_fuse, strata};

/// `strata layer-store DIR`, stopped with SIGTERM when dropped.
struct LayerStore {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
}

impl LayerStore {
    fn start(root: &Path, registry: &str, dir: &Path, log: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new(strata::bin())
            .arg("--root")
            .arg(root)
            .args(["--insecure-registry", registry, "--log-level", "info"])
            .arg("layer-store")
            .arg(dir)
            .env_remove("STRATA_LOG")
            // The layer store it starts outlives a restart of this server by this much
            // (podman's overlay mounts do not name it, so they do not keep it up).
            .env("STRATA_LAYER_STORE_IDLE_SECS", "15")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut me = Self {
            child,
            dir: dir.to_path_buf(),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mounted = || {
            let dir = dir.canonicalize().unwrap();
            mounts()
                .iter()
                .any(|m| m.point == dir && m.source == "strata-layer-store")
        };
        while !mounted() {
            assert!(
                me.child.try_wait().unwrap().is_none(),
                "strata layer-store exited: {}",
                me.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "layer-store did not mount {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LayerStore {
    fn drop(&mut self) {
        let pid = nix_pid(self.child.id());
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Normally unmounted by the server already.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
    }
}

fn nix_pid(id: u32) -> i32 {
    i32::try_from(id).unwrap()
}

/// A layer with this machine's python3 (its libraries and standard library) and busybox.
fn python_layer(scratch: &Path) -> Vec<u8> {
    let py = std::fs::canonicalize("/usr/bin/python3")
        .expect("/usr/bin/python3 (apt-get install python3-minimal)");
    let ver = py.file_name().unwrap().to_string_lossy().into_owned();
    let r = scratch.join("pyroot");
    let tar = scratch.join("py.tar");
    let script = format!(
        r#"set -e; r={r}
mkdir -p $r/bin $r/usr/bin $r/usr/lib $r/etc $r/tmp
cp /bin/busybox $r/bin/busybox; ln -s busybox $r/bin/sh
cp {py} $r/usr/bin/{ver}; ln -s {ver} $r/usr/bin/python3
for l in $(ldd {py} | grep -o '/[^ ]*'); do mkdir -p $r$(dirname $l); cp -L $l $r$l; done
cp -a /usr/lib/{ver} $r/usr/lib/; rm -rf $r/usr/lib/{ver}/test
echo 'root:x:0:0:root:/root:/bin/sh' > $r/etc/passwd; echo 'root:x:0:' > $r/etc/group
tar -C $r -cf {tar} ."#,
        r = r.display(),
        py = py.display(),
        tar = tar.display()
    );
    let st = Command::new("sh").arg("-c").arg(&script).status().unwrap();
    assert!(st.success(), "building the python layer");
    std::fs::read(&tar).unwrap()
}

/// podman's layers whose `diff` is a symlink into `als` (c/storage's mark of a layer taken
/// from an additional layer store).
fn layers_from(podman_root: &Path, als: &Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(podman_root.join("overlay")) else {
        return 0;
    };
    dirs.filter_map(|d| std::fs::read_link(d.ok()?.path().join("diff")).ok())
        .filter(|target| target.starts_with(als))
        .count()
}

fn require_podman(test: &str) -> bool {
    if Command::new("podman").arg("--version").output().is_ok() {
        return true;
    }
    let msg = format!("{test}: needs podman (apt-get install podman)");
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{msg} (CI=true: a missing tool is a failure)"
    );
    eprintln!("SKIPPED {msg}");
    false
}

#[test]
fn podman_runs_a_lazy_image_from_the_additional_layer_store() {
    let name = "podman_runs_a_lazy_image_from_the_additional_layer_store";
    if !require_root_fuse(name) || !require_podman(name) {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    // Most of the image is never read (a 64 MiB file among the rich layers), as in real
    // images: what podman's container reads is what is fetched.
    let mut tars: Vec<Vec<u8>> = rich_layers(true).iter().map(|l| tar_of(l)).collect();
    tars.push(python_layer(state.path()));
    let img = push_tars(&reg.addr, "t/py", "1", tars, Comp::Native);
    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/t/py:1", proxy.addr);
    let root = state.path().join("root");
    let als = state.path().join("als");
    let store = LayerStore::start(&root, &proxy.addr, &als, &state.path().join("als.log"));
    let als = als.canonicalize().unwrap();

    let podman = Podman::new(&[&proxy.addr]);
    podman.set_storage_options(&format!(
        "additionallayerstores = [\"{}:ref\"]",
        als.display()
    ));
    let run = || {
        podman.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            &reference,
            "python3",
            "-c",
            "print(42)",
        ])
    };
    let out = run();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "42\n",
        "{}",
        store.log_text()
    );
    // c/storage warns when the store answers its use/release notes other than as expected.
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        !warned.contains("Additional Layer Store"),
        "podman warned: {warned}"
    );
    let (reqs, bytes) = proxy.counts();
    eprintln!(
        "podman run from the additional layer store: {reqs} requests, {bytes} bytes of a {} byte image ({:.2}%)",
        img.blob_bytes,
        bytes as f64 * 100.0 / img.blob_bytes as f64
    );
    assert!(
        bytes * 10 <= img.blob_bytes,
        "fetched {bytes} of {} bytes; podman: {}\nlayer-store: {}",
        img.blob_bytes,
        warned
            .lines()
            .filter(|l| l.contains("dditional") || l.contains("blob"))
            .collect::<Vec<_>>()
            .join("\n"),
        store.log_text()
    );
    assert_eq!(
        layers_from(&podman.root(), &als),
        img.tars.len(),
        "podman's layers are not the store's"
    );

    // rmi releases the layers: podman's store no longer has them, strata's still serves
    // them, and the image runs again (looked up again, nothing downloaded again whole).
    let out = podman.ok(&["rmi", &reference]);
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        !warned.contains("Additional Layer Store"),
        "podman warned: {warned}"
    );
    assert_eq!(layers_from(&podman.root(), &als), 0);
    let images = podman.ok(&["images", "-q"]);
    assert_eq!(String::from_utf8_lossy(&images.stdout).trim(), "");
    proxy.reset();
    assert_eq!(String::from_utf8_lossy(&run().stdout), "42\n");
    let (_, again) = proxy.counts();
    assert!(
        again * 10 <= img.blob_bytes,
        "the second run fetched {again} bytes"
    );
    assert_eq!(layers_from(&podman.root(), &als), img.tars.len());

    // A container keeps reading while the server is down (its overlayfs stacks the layer
    // store, not DIR); a restarted server finds podman's layers again, from strata's local
    // image (nothing is pulled again).
    let detached = podman.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        &reference,
        "python3",
        "-c",
        "import time; time.sleep(3); import json; print(json.dumps([42]))",
    ]);
    let id = String::from_utf8_lossy(&detached.stdout).trim().to_string();
    drop(store);
    assert!(
        !mounts().iter().any(|m| m.point == als),
        "layer-store left its mount"
    );
    let code = podman.ok(&["wait", &id]);
    assert_eq!(String::from_utf8_lossy(&code.stdout).trim(), "0");
    let logs = podman.ok(&["logs", &id]);
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "[42]\n");
    podman.ok(&["rm", &id]);
    let store = LayerStore::start(&root, &proxy.addr, &als, &state.path().join("als2.log"));
    proxy.reset();
    assert_eq!(
        String::from_utf8_lossy(&run().stdout),
        "42\n",
        "{}",
        store.log_text()
    );
    let (_, after_restart) = proxy.counts();
    assert!(
        after_restart * 10 <= img.blob_bytes,
        "after a restart: {after_restart} bytes"
    );
    check_layer_files(&podman.root(), &als, &reference);
    podman.ok(&["rmi", &reference]);
    assert_eq!(layers_from(&podman.root(), &als), 0);
    drop(store);
}

/// What podman's layers link to: `DIR/<base64 reference>/<digest>/diff`, beside an `info`
/// c/storage reads and a `blob` whose bytes have the layer's digest.
fn check_layer_files(podman_root: &Path, als: &Path, reference: &str) {
    let dirs = std::fs::read_dir(podman_root.join("overlay")).unwrap();
    let mut checked = 0;
    for target in dirs.filter_map(|d| std::fs::read_link(d.ok()?.path().join("diff")).ok()) {
        let Ok(rest) = target.strip_prefix(als) else {
            continue;
        };
        let parts: Vec<String> = rest.iter().map(|p| p.to_string_lossy().into()).collect();
        assert_eq!(parts.len(), 3, "{}", target.display());
        let encoded = std::process::Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(reference.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert_eq!(parts[0], String::from_utf8_lossy(&encoded.stdout));
        let layer = als.join(&parts[0]).join(&parts[1]);
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layer.join("info")).unwrap()).unwrap();
        assert_eq!(info["compressed-diff-digest"], parts[1].as_str());
        assert_eq!(info["compression"], 4);
        assert!(info["diff-digest"].as_str().unwrap().starts_with("sha256:"));
        let blob = std::fs::read(layer.join("blob")).unwrap();
        assert_eq!(info["compressed-size"], blob.len());
        assert_eq!(strata_tests::sha(&blob), parts[1]);
        checked += 1;
    }
    assert!(checked > 0, "no layer of podman's from {}", als.display());
}
