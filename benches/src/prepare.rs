//! The benchmark image (Debian bookworm minbase + python3 by debootstrap, cached; two gzip
//! layers made with GNU tar, pushed with skopeo, converted with strata), the link check, the
//! working set (strace), and the micro-benchmarks.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};
use strata_tests::registry::Registry;

use crate::shaper::{Profile, Shaper};
use crate::{drop_caches, sh, strata};

const ROOTFS: &str = "/var/cache/strata-bench/rootfs";
/// What goes into the second layer.
const PYTHON_PATHS: [&str; 5] = [
    "usr/lib/python3.11",
    "usr/lib/python3",
    "usr/bin/python3.11",
    "usr/bin/python3",
    "usr/share/python3",
];

/// The image in the registry.
pub struct Image {
    pub registry: Registry,
    pub rootfs: PathBuf,
    pub gzip_bytes: u64,
    pub native_bytes: u64,
    pub uncompressed_bytes: u64,
    pub files: u64,
    largest_gzip_layer: (String, u64),
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            f(&p, &m);
            if m.is_dir() {
                walk(&p, f);
            }
        }
    }
}

fn layer_sizes(root: &Path, image: &str) -> Vec<(String, u64)> {
    let out = sh(strata(root).args(["inspect", image]));
    let v: Value = serde_json::from_str(&out).expect("inspect json");
    let v = if v.is_array() { v[0].clone() } else { v };
    v["Strata"]["Layers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    (
                        l["Digest"].as_str().unwrap_or("").to_string(),
                        l["Size"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = strata_tests::layers::sha(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join(digest.trim_start_matches("sha256:")), bytes).expect("write blob");
    (digest, bytes.len())
}

/// An OCI layout of two gzip layers made by GNU tar and gzip: the base system, then python3.
fn write_layout(rootfs: &Path, layout: &Path) {
    let _ = std::fs::remove_dir_all(layout);
    std::fs::create_dir_all(layout).expect("mkdir");
    let tar = |args: &[String]| -> Vec<u8> {
        let out = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args(["--numeric-owner", "--xattrs", "-cf", "-"])
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .expect("tar");
        assert!(out.status.success(), "tar {args:?}");
        out.stdout
    };
    let present: Vec<&str> = PYTHON_PATHS
        .iter()
        .copied()
        .filter(|p| rootfs.join(p).symlink_metadata().is_ok())
        .collect();
    let mut a1: Vec<String> = present.iter().map(|p| format!("--exclude=./{p}")).collect();
    a1.extend([
        "--exclude=./var/cache/apt/archives/*.deb".into(),
        "--exclude=./var/lib/apt/lists/*".into(),
        ".".into(),
    ]);
    let mut a2: Vec<String> = vec!["--no-recursion".into()];
    a2.extend(["./usr", "./usr/lib", "./usr/bin", "./usr/share"].map(String::from));
    a2.push("--recursion".into());
    a2.extend(present.iter().map(|p| format!("./{p}")));
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for t in [tar(&a1), tar(&a2)] {
        diff_ids.push(strata_tests::layers::sha(&t));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &t).expect("gzip");
        let (d, n) = blob(layout, &gz.finish().expect("gzip"));
        layers.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n}));
    }
    let config = json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["python3"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": [{"created_by": "debootstrap --variant=minbase bookworm"}, {"created_by": "python3"}]});
    let (cd, cn) = blob(layout, &serde_json::to_vec(&config).expect("json"));
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn}, "layers": layers});
    let (md, mn) = blob(layout, &serde_json::to_vec(&manifest).expect("json"));
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn, "annotations": {"org.opencontainers.image.ref.name": "py"}}]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
}

/// Builds (once) and pushes the image.
pub fn image(work: &Path) -> Image {
    let rootfs = PathBuf::from(ROOTFS);
    if !rootfs.join("usr/bin/python3").exists() {
        let tmp = PathBuf::from(format!("{ROOTFS}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        eprintln!("debootstrap bookworm minbase + python3 into {ROOTFS} (once)");
        sh(Command::new("debootstrap")
            .args(["--variant=minbase", "--include=python3", "bookworm"])
            .arg(&tmp)
            .arg("http://deb.debian.org/debian")
            .stdout(Stdio::null()));
        std::fs::rename(&tmp, &rootfs).expect("rename rootfs");
    }
    let layout = work.join("layout");
    if !layout.join("index.json").exists() {
        write_layout(&rootfs, &layout);
    }
    let registry = Registry::start();
    let reg = &registry.addr;
    sh(Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:py", layout.display()))
        .arg(format!("docker://{reg}/bench/py:gzip")));
    let croot = work.join("convert-root");
    let _ = std::fs::remove_dir_all(&croot);
    push_soci_indexed(work, reg);
    sh(strata(&croot)
        .args(["convert", "-q"])
        .arg(format!("{reg}/bench/py:gzip"))
        .arg(format!("{reg}/bench/py:native"))
        .stdout(Stdio::null()));
    sh(strata(&croot)
        .args(["pull", "-q"])
        .arg(format!("{reg}/bench/py:gzip"))
        .stdout(Stdio::null()));
    let gzip = layer_sizes(&croot, &format!("{reg}/bench/py:gzip"));
    sh(strata(&croot)
        .args(["pull", "-q"])
        .arg(format!("{reg}/bench/py:native"))
        .stdout(Stdio::null()));
    let native = layer_sizes(&croot, &format!("{reg}/bench/py:native"));
    let _ = std::fs::remove_dir_all(&croot);
    let (mut bytes, mut files) = (0, 0);
    walk(&rootfs, &mut |_, m| {
        files += 1;
        if m.is_file() {
            bytes += m.len();
        }
    });
    let img = Image {
        registry,
        rootfs,
        gzip_bytes: gzip.iter().map(|l| l.1).sum(),
        native_bytes: native.iter().map(|l| l.1).sum(),
        uncompressed_bytes: bytes,
        files,
        largest_gzip_layer: gzip.iter().max_by_key(|l| l.1).cloned().unwrap_or_default(),
    };
    println!(
        "image: {} layers, gzip {:.1} MB, native {:.1} MB, {:.1} MB uncompressed in {} entries",
        gzip.len(),
        img.gzip_bytes as f64 / 1e6,
        img.native_bytes as f64 / 1e6,
        img.uncompressed_bytes as f64 / 1e6,
        img.files
    );
    img
}

/// Pushes the gzip image again as `bench/py:gzip-soci`, with a SOCI v2 index strata wrote
/// (SOCI's defaults: 10 MiB minimum layer, 4 MiB spans): the row beside `soci convert`'s under
/// the SOCI snapshotter.
fn push_soci_indexed(work: &Path, reg: &str) {
    sh(Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg("--dest-tls-verify=false")
        .arg(format!("docker://{reg}/bench/py:gzip"))
        .arg(format!("docker://{reg}/bench/py:gzip-soci")));
    let root = work.join("index-root");
    let _ = std::fs::remove_dir_all(&root);
    sh(strata(&root)
        .args(["index", "-q"])
        .arg(format!("{reg}/bench/py:gzip-soci"))
        .stdout(Stdio::null()));
    let _ = std::fs::remove_dir_all(&root);
}

/// Downloads the largest layer through the shaper with curl and prints it against the
/// profile's expectation.
pub fn check_link(shaper: &Shaper, p: &Profile, img: &Image) {
    let (digest, size) = &img.largest_gzip_layer;
    let out = sh(Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{time_connect} %{time_starttransfer} %{time_total} %{size_download}",
        ])
        .arg(format!("http://{}/v2/bench/py/blobs/{digest}", shaper.addr)));
    let f: Vec<f64> = out
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let expected = *size as f64 * 8.0 / p.bits_per_sec as f64 + 2.0 * p.rtt.as_secs_f64();
    println!(
        "link {}: curl of {:.1} MB: connect {:.3} s, first byte {:.3} s, total {:.2} s (expected ≈ {:.2} s)",
        p.name,
        f.get(3).copied().unwrap_or(0.0) / 1e6,
        f.first().copied().unwrap_or(0.0),
        f.get(1).copied().unwrap_or(0.0),
        f.get(2).copied().unwrap_or(0.0),
        expected
    );
}

/// Bytes of the regular files the workload opens or executes, by strace in a chroot.
pub fn working_set(img: &Image, code: &str) -> WorkingSet {
    let trace = std::env::temp_dir().join("strata-bench.strace");
    sh(Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=open,openat,execve", "-o"])
        .arg(&trace)
        .arg("chroot")
        .arg(&img.rootfs)
        .args(["python3", "-c", code])
        .stdout(Stdio::null()));
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    // The ELF interpreter, loaded by the kernel (strace does not show it).
    seen.insert("/lib64/ld-linux-x86-64.so.2".to_string());
    for l in text.lines() {
        let ok = l.rsplit(" = ").next().is_some_and(|r| {
            r.split_whitespace()
                .next()
                .is_some_and(|n| n.parse::<i64>().is_ok_and(|n| n >= 0))
        });
        if !ok {
            continue;
        }
        if let Some(start) = l.find('"')
            && let Some(len) = l[start + 1..].find('"')
        {
            seen.insert(l[start + 1..start + 1 + len].to_string());
        }
    }
    let mut ws = WorkingSet::default();
    for p in seen {
        let path = img.rootfs.join(p.trim_start_matches('/'));
        if let Ok(data) = std::fs::read(&path)
            && std::fs::metadata(&path).is_ok_and(|m| m.is_file())
        {
            ws.files += 1;
            ws.bytes += data.len() as u64;
            // What these bytes cost in the native format: 128 KiB chunks, zstd level 3.
            ws.native_bytes += data
                .chunks(128 << 10)
                .map(|c| {
                    zstd::bulk::compress(c, 3)
                        .map(|z| z.len())
                        .unwrap_or(c.len()) as u64
                })
                .sum::<u64>();
        }
    }
    ws
}

/// The files a workload opens (strace), whole.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkingSet {
    pub files: u64,
    /// Uncompressed.
    pub bytes: u64,
    /// In strata's native format (each file cut in 128 KiB chunks, zstd level 3).
    pub native_bytes: u64,
}

/// Records a prefetch profile of `code` on the native image and pushes it as
/// `bench/py:profiled-NAME`.
pub fn profiled_image(work: &Path, img: &Image, name: &str, code: &str) -> String {
    let reg = &img.registry.addr;
    let root = work.join("profile-root");
    let _ = std::fs::remove_dir_all(&root);
    let tag = format!("bench/py:profiled-{name}");
    sh(strata(&root)
        .args(["profile", "--tag"])
        .arg(format!("{reg}/{tag}"))
        .arg(format!("{reg}/bench/py:native"))
        .args(["python3", "-c", code])
        .stdout(Stdio::null()));
    sh(strata(&root)
        .args(["push", "-q"])
        .arg(format!("{reg}/{tag}"))
        .stdout(Stdio::null()));
    crate::stop_store(&root);
    let _ = std::fs::remove_dir_all(&root);
    tag
}

/// Copies the native image to `bench/learned-NAME:native` (same manifest, a repository of
/// its own, so no other scenario finds its referrer) and lets a first cold `run --learn` of
/// `code` publish its learned profile there.
pub fn learned_image(work: &Path, img: &Image, name: &str, code: &str) -> String {
    let reg = &img.registry.addr;
    let tag = format!("bench/learned-{name}:native");
    sh(Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("docker://{reg}/bench/py:native"))
        .arg(format!("docker://{reg}/{tag}")));
    let root = work.join("learn-root");
    let _ = std::fs::remove_dir_all(&root);
    sh(strata(&root)
        .args(["run", "--rm", "--learn"])
        .arg(format!("{reg}/{tag}"))
        .args(["python3", "-c", code])
        .stdout(Stdio::null()));
    crate::stop_store(&root);
    let _ = std::fs::remove_dir_all(&root);
    tag
}

fn read_all(p: &Path) -> (u64, f64) {
    let t = Instant::now();
    let mut f = std::fs::File::open(p).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = std::io::Read::read(&mut f, &mut buf).expect("read");
        if r == 0 {
            break;
        }
        n += r as u64;
    }
    (n, t.elapsed().as_secs_f64())
}

fn stat_walk(dir: &Path) -> (u64, f64) {
    let t = Instant::now();
    let mut n = 0;
    walk(dir, &mut |_, _| n += 1);
    (n, t.elapsed().as_secs_f64())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pids_naming(root: &Path) -> Vec<u32> {
    let want = root.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmd).contains(&want).then_some(pid)
        })
        .collect()
}

/// Warm sequential read of 1 GiB, cold metadata walk, commit of 1 GiB, memory of a mount.
pub fn micro(work: &Path, img: &Image, shaper: &Shaper, p: &Profile) -> Value {
    let root = work.join("micro-root");
    let _ = std::fs::remove_dir_all(&root);
    let native = format!("{}/bench/py:native", img.registry.addr);
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let (n_mnt, t_mnt, n_loc, t_loc, rss) = micro_walk(&root, &mnt, &native, img);
    let big = micro_big_image(work, &root);
    let (t_lazy, n_lazy, t_download, blob_size) =
        micro_sustained(work, &root, &mnt, img, shaper, p);
    let (n, t_ext4, t_assemble, t_mount) = micro_warm(&root, &mnt, &big);
    let _ = std::fs::remove_dir_all(big.parent().and_then(Path::parent).expect("big dir"));
    let t_commit = micro_commit(&root, &native);
    let _ = std::fs::remove_dir_all(&root);

    let mbs = |b: u64, t: f64| b as f64 / t / 1e6;
    json!({
        "sustained_cold_read_1GiB": {"link": p.name, "strata_s": t_lazy, "file_bytes": n_lazy,
            "download_s": t_download, "blob_bytes": blob_size, "ratio": t_download / t_lazy},
        "warm_sequential_read_1GiB": {"mount_MBps": mbs(n, t_mount), "ext4_MBps": mbs(n, t_ext4), "ratio": t_ext4 / t_mount,
            "first_passthrough_read_with_assembly_MBps": mbs(n, t_assemble)},
        "cold_metadata_walk": {"entries": n_mnt, "mount_s": t_mnt, "local_entries": n_loc, "local_s": t_loc, "ratio": t_mnt / t_loc},
        "commit_1GiB": {"seconds": t_commit, "MBps": mbs(1 << 30, t_commit)},
        "mount_memory": {"rss_MiB": rss as f64 / 1024.0, "files": img.files, "budget_MiB": 32.0 + img.files as f64 / 1024.0},
    })
}

/// Cold metadata walk: mount (pull is lazy), drop caches, walk; vs the local rootfs. Returns
/// entries and seconds of both, and the mount's RSS in KiB.
fn micro_walk(root: &Path, mnt: &Path, native: &str, img: &Image) -> (u64, f64, u64, f64, u64) {
    let s = |args: &[&str]| sh(strata(root).args(args));
    // Cold metadata walk: mount (pull is lazy), drop caches, walk; vs the local rootfs.
    s(&["mount", "--detach", native, mnt.to_str().expect("utf8")]);
    drop_caches();
    let (n_mnt, t_mnt) = stat_walk(mnt);
    drop_caches();
    let (n_loc, t_loc) = stat_walk(&img.rootfs);
    // The mount's own process and the layer store (holder and server) that serves it.
    let rss = pids_naming(root).into_iter().map(rss_kib).sum();
    s(&["umount", mnt.to_str().expect("utf8")]);

    (n_mnt, t_mnt, n_loc, t_loc, rss)
}

/// A 1 GiB file of random bytes, imported as `bench/big:1`; returns the file's local path.
fn micro_big_image(work: &Path, root: &Path) -> PathBuf {
    let s = |args: &[&str]| sh(strata(root).args(args));
    let big_dir = work.join("big");
    let _ = std::fs::remove_dir_all(&big_dir);
    std::fs::create_dir_all(big_dir.join("data")).expect("mkdir");
    let big = big_dir.join("data/big.bin");
    sh(Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=1024", "status=none"])
        .arg(format!("of={}", big.display())));
    let tar = work.join("big.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&big_dir)
        .arg("-cf")
        .arg(&tar)
        .arg("data"));
    s(&["import", tar.to_str().expect("utf8"), "bench/big:1"]);

    let _ = std::fs::remove_file(&tar);
    big
}

/// Sustained cold read over the shaped link: `bench/big:1` pushed, read lazily from an empty
/// root vs a plain download of its layer blob with curl. Returns (strata s, file bytes, curl
/// s, blob bytes).
fn micro_sustained(
    work: &Path,
    root: &Path,
    mnt: &Path,
    img: &Image,
    shaper: &Shaper,
    p: &Profile,
) -> (f64, u64, f64, u64) {
    let s = |args: &[&str]| sh(strata(root).args(args));
    let remote = format!("{}/bench/big:1", img.registry.addr);
    s(&["tag", "bench/big:1", &remote]);
    s(&["push", "-q", &remote]);
    let (blob, blob_size) = layer_sizes(root, &remote)
        .into_iter()
        .next()
        .expect("a layer");
    drop_caches();
    let t = Instant::now();
    sh(Command::new("curl")
        .args(["-sf", "-o", "/dev/null"])
        .arg(format!("http://{}/v2/bench/big/blobs/{blob}", shaper.addr)));
    let t_download = t.elapsed().as_secs_f64();
    let cold_root = work.join("sustained-root");
    let _ = std::fs::remove_dir_all(&cold_root);
    let via_link = format!("{}/bench/big:1", shaper.addr);
    sh(strata(&cold_root)
        .args(["mount", "--detach", "--prefetch", "none", &via_link])
        .arg(mnt));
    drop_caches();
    let (n_lazy, t_lazy) = read_all(&mnt.join("data/big.bin"));
    sh(strata(&cold_root).arg("umount").arg(mnt));
    let _ = std::fs::remove_dir_all(&cold_root);
    println!(
        "sustained cold read over {}: strata {:.1} s for {:.0} MB, curl of the {:.0} MB blob {:.1} s",
        p.name,
        t_lazy,
        n_lazy as f64 / 1e6,
        blob_size as f64 / 1e6,
        t_download
    );

    (t_lazy, n_lazy, t_download, blob_size)
}

/// Warm sequential read of the 1 GiB file: local ext4 vs through the mount with every chunk
/// cached. Returns (bytes, ext4 s, first passthrough read with assembly s, later read s).
/// Pairs of warm reads (ext4, then through the mount) whose medians are compared.
const WARM_PAIRS: usize = 5;

fn micro_warm(root: &Path, mnt: &Path, big: &Path) -> (u64, f64, f64, f64) {
    let s = |args: &[&str]| sh(strata(root).args(args));
    drop_caches();
    let (n, t_ext4) = read_all(big);
    s(&[
        "mount",
        "--detach",
        "bench/big:1",
        mnt.to_str().expect("utf8"),
    ]);
    // First read: every chunk into the cache (through FUSE reads).
    let _ = read_all(&mnt.join("data/big.bin"));
    s(&["umount", mnt.to_str().expect("utf8")]);
    // Each later read of the complete file is passed through to an assembled local copy; the
    // first such open assembles it (timed separately), later ones only read it.
    let remount_read = || {
        s(&[
            "mount",
            "--detach",
            "bench/big:1",
            mnt.to_str().expect("utf8"),
        ]);
        drop_caches();
        let (_, t) = read_all(&mnt.join("data/big.bin"));
        s(&["umount", mnt.to_str().expect("utf8")]);
        t
    };
    let t_assemble = remount_read();
    // The VM's disk swings by 2-3x between minutes, so one read of each proves nothing: the
    // plain ext4 file and the passed-through one are read alternately, caches dropped before
    // each, and the median of the pairs' times is kept for both.
    let mut ext4 = vec![t_ext4];
    let mut through = Vec::new();
    for _ in 0..WARM_PAIRS {
        through.push(remount_read());
        drop_caches();
        ext4.push(read_all(big).1);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    (n, median(&mut ext4), t_assemble, median(&mut through))
}

/// Commit of a 1 GiB upper layer, in seconds.
fn micro_commit(root: &Path, native: &str) -> f64 {
    let s = |args: &[&str]| sh(strata(root).args(args));
    s(&[
        "run",
        "--name",
        "cbench",
        native,
        "dd",
        "if=/dev/urandom",
        "of=/big",
        "bs=1M",
        "count=1024",
        "status=none",
    ]);
    let t = Instant::now();
    s(&["commit", "cbench", "bench/committed:1"]);
    let t_commit = t.elapsed().as_secs_f64();
    s(&["rm", "cbench"]);

    t_commit
}
