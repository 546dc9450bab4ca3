//! Limits (issue 17): the chunk cache limit holds as chunks are added, and a plain gzip layer
//! larger than the whole cache still reads.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::Path;

use strata_tests::fixtures::{BIG_PATH, big, rich_layers, runnable_layers};
use strata_tests::layers::{Comp, file, noise, push_image};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, ok};

/// Bytes of cached chunks and assembled files.
fn cache_bytes(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => walk(&e.path()),
                        _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&root.join("cache/chunks")) + walk(&root.join("cache/files"))
}

fn drop_caches() {
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// `--cache-mb 8`: reading a 64 MiB file of a native image leaves at most the limit plus what
/// a reader was waiting for (half the limit) in the cache, not 35 MB.
#[test]
fn the_cache_limit_holds_as_chunks_are_added() {
    if !require_root_fuse("the_cache_limit_holds_as_chunks_are_added") {
        return;
    }
    let reg = Registry::start();
    let image = push_image(&reg.addr, "t/limit", "1", &rich_layers(true), Comp::Native).reference;
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &image]);
    let mnt = state.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    ok(
        &root,
        &[
            "--cache-mb",
            "8",
            "mount",
            "--detach",
            "--prefetch",
            "none",
            &image,
            mnt.to_str().unwrap(),
        ],
    );
    let m = Mounted::adopt(&root, &mnt);
    let got = std::fs::read(m.dir.join(BIG_PATH)).unwrap();
    assert!(got == big(), "the big file read wrong");
    let used = cache_bytes(&root);
    assert!(used <= 12 << 20, "{used} bytes cached with an 8 MiB limit");
}

/// `--cache-mb 8` and a plain gzip layer of 16 MiB: every read of its file works (it used to
/// give EIO with no message), and the cache gives the room back afterwards.
#[test]
fn a_gzip_layer_larger_than_the_cache_still_reads() {
    if !require_root_fuse("a_gzip_layer_larger_than_the_cache_still_reads") {
        return;
    }
    let reg = Registry::start();
    let data = noise(16 << 20, 11);
    let mut layers = runnable_layers();
    layers.push(vec![file("big/data", &data)]);
    let image = push_image(&reg.addr, "t/gzbig", "1", &layers, Comp::Gzip).reference;
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &image]);
    let mnt = state.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    ok(
        &root,
        &[
            "--cache-mb",
            "8",
            "mount",
            "--detach",
            &image,
            mnt.to_str().unwrap(),
        ],
    );
    let m = Mounted::adopt(&root, &mnt);
    let got = std::fs::read(m.dir.join("big/data")).unwrap_or_else(|e| {
        panic!("reading big/data: {e}\nlogs:\n{}", logs_of(&root));
    });
    assert!(got == data, "the file read wrong");
    drop_caches();
    // A read in the middle, cold again.
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(m.dir.join("big/data")).unwrap();
    let mut buf = vec![0u8; 100_000];
    f.read_exact_at(&mut buf, 11 << 20).unwrap();
    assert!(buf == data[11 << 20..(11 << 20) + 100_000]);
    assert_eq!(
        std::fs::read(m.dir.join("data/owned")).unwrap(),
        b"mine",
        "a small file of another layer"
    );
    let used = cache_bytes(&root);
    assert!(used <= 14 << 20, "{used} bytes cached with an 8 MiB limit");
}

/// A 64 MiB tmpfs mounted at `dir` (a file system that is full to the byte); unmounted when
/// dropped.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "strata-full"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "tmpfs mount failed");
        Self {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// A container that fills the state root's disk: `run` returns the container's own exit code
/// (not 125), the container and what it wrote are kept, and once it is removed the disk works.
#[test]
fn a_full_disk_keeps_the_container_and_its_exit_code() {
    if !require_root_fuse("a_full_disk_keeps_the_container_and_its_exit_code") {
        return;
    }
    let reg = Registry::start();
    let image = push_image(&reg.addr, "t/full", "1", &runnable_layers(), Comp::Native).reference;
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let disk = SmallDisk::new(&root);
    ok(&root, &["pull", &image]);
    let out = strata_tests::strata::run(
        &root,
        &[
            "run",
            "--name",
            "filler",
            &image,
            "sh",
            "-c",
            "busybox dd if=/dev/zero of=/fill bs=1M; exit 3",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let ps = ok(&root, &["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.contains("filler Exited (3)"), "{ps}");
    let id = ok(&root, &["ps", "-aq", "--no-trunc"]);
    let fill = root.join("containers").join(id.trim()).join("upper/fill");
    assert!(
        std::fs::metadata(&fill).unwrap().len() > 30 << 20,
        "what the container wrote is kept"
    );
    ok(&root, &["rm", "filler"]);
    assert_eq!(
        ok(&root, &["run", "--rm", &image, "cat", "/data/owned"]),
        "mine"
    );
    drop(disk);
}

/// A disk a container has filled: `pull --all` fails with one line naming the cause and lists
/// nothing; once the container is removed, reads work (the failed pull's chunks do not stand in
/// the way: the cache gives room back when the disk is full).
#[test]
fn a_pull_on_a_full_disk_fails_plainly_and_leaves_room() {
    if !require_root_fuse("a_pull_on_a_full_disk_fails_plainly_and_leaves_room") {
        return;
    }
    let reg = Registry::start();
    let small = push_image(&reg.addr, "t/small", "1", &runnable_layers(), Comp::Native).reference;
    let mut layers = runnable_layers();
    layers.push(vec![file("big/data", &noise(16 << 20, 5))]);
    let big = push_image(&reg.addr, "t/huge", "1", &layers, Comp::Gzip).reference;
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let disk = SmallDisk::new(&root);
    ok(&root, &["pull", &small]);
    let out = strata_tests::strata::run(
        &root,
        &[
            "run",
            "--name",
            "filler",
            &small,
            "sh",
            "-c",
            "busybox dd if=/dev/zero of=/fill bs=64k; exit 0",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = strata_tests::strata::run(&root, &["pull", "--all", &big]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(last.contains("No space left on device"), "{err}");
    assert!(!ok(&root, &["images"]).contains("t/huge"));
    ok(&root, &["rm", "filler"]);
    assert_eq!(
        ok(&root, &["run", "--rm", &small, "cat", "/data/owned"]),
        "mine"
    );
    ok(&root, &["pull", "--all", &big]);
    drop(disk);
}

/// Every `*.log` under `root` (the layer store's and the mount servers'), for a failure report.
fn logs_of(root: &std::path::Path) -> String {
    let mut out = String::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.join("diff").exists() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                out.push_str(&format!("== {}\n{text}\n", p.display()));
            }
        }
    }
    out
}
