//! The layer store: every container and mount of a state root reads its layers through one
//! FUSE mount (one connection, one fetch per chunk), containers stack the store's per-layer
//! directories with overlayfs, and the store ends after its last user.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_tests::fixtures::runnable_layers;
use strata_tests::layers::{Comp, file, noise, push_image};
use strata_tests::proxy::Fault;
use strata_tests::strata::ok;
use strata_tests::world::World;
use strata_tests::{mounts, require_root_fuse};

/// Size of the file every container reads at once.
const SHARED_BYTES: usize = 24 << 20;

/// The store server's answer to `status`.
fn status(root: &Path) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(root.join("layers.sock")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"\"status\"\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    Some(v["status"].clone())
}

/// FUSE mounts at or below `root`.
fn fuse_mounts_under(root: &Path) -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse") && m.point.starts_with(root))
        .map(|m| m.point)
        .collect()
}

fn pid_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn containers_of_two_images_share_one_store_and_fetch_each_chunk_once() {
    if !require_root_fuse("containers_of_two_images_share_one_store_and_fetch_each_chunk_once") {
        return;
    }
    // Image A: a runnable base plus a layer with a big file; image B: A's layers plus one.
    let mut layers = runnable_layers();
    layers.push(vec![file("shared/big.bin", &noise(SHARED_BYTES, 9))]);
    let w = World::start(&layers, Comp::Native);
    let mut more = layers.clone();
    more.push(vec![file("extra", b"only in b\n")]);
    push_image(&w.reg.addr, "t/more", "1", &more, Comp::Native);
    let other = format!("{}/t/more:1", w.proxy.addr);
    let root = w.root.canonicalize().unwrap_or(w.root.clone());
    ok(&w.root, &["pull", &w.base]);
    ok(&w.root, &["pull", &other]);

    let mut ids = Vec::new();
    for image in [&w.base, &w.base, &w.base, &other, &other] {
        let out = ok(
            &w.root,
            &["run", "-d", image, "/bin/busybox", "sleep", "60"],
        );
        ids.push(out.trim().to_string());
    }
    let root = w.root.canonicalize().unwrap_or(root);
    assert_eq!(
        fuse_mounts_under(&root),
        [root.join("layers")],
        "one FUSE mount (the store) serves every container"
    );
    let st = status(&root).expect("the store answers");
    assert_eq!(st["layers"], more.len(), "each distinct layer once: {st}");
    assert!(st["users"].as_u64().unwrap() >= 5, "{st}");
    let rootfs: Vec<PathBuf> = ids
        .iter()
        .map(|id| root.join("containers").join(id).join("rootfs"))
        .collect();
    for r in &rootfs {
        let m = mounts().into_iter().rev().find(|m| &m.point == r).unwrap();
        assert_eq!(m.fstype, "overlay");
        let lower = format!("lowerdir={}", root.join("layers").display());
        assert!(m.options.contains(&lower), "{}: {}", r.display(), m.options);
    }
    assert_eq!(
        std::fs::read(rootfs[4].join("extra")).unwrap(),
        b"only in b\n"
    );
    assert!(!rootfs[0].join("extra").exists());

    // Every container reads the big file at once: each chunk crosses the network once.
    w.proxy.reset();
    let want = noise(SHARED_BYTES, 9);
    std::thread::scope(|s| {
        for r in &rootfs {
            let want = &want;
            s.spawn(move || {
                let got = std::fs::read(r.join("shared/big.bin")).unwrap();
                assert!(got == *want, "{}: content differs", r.display());
            });
        }
    });
    let (requests, bytes) = w.proxy.counts();
    eprintln!("5 concurrent readers: {requests} requests, {bytes} bytes");
    assert!(
        bytes <= SHARED_BYTES as u64 * 11 / 10,
        "{bytes} bytes fetched for one {SHARED_BYTES}-byte file read by 5 containers"
    );

    // The store ends once its last user has gone (the tests' idle time is 2 s).
    let pid = st["pid"].as_u64().unwrap();
    for id in &ids {
        ok(&w.root, &["rm", "-f", id]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (pid_alive(pid) || !fuse_mounts_under(&root).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!pid_alive(pid), "store server {pid} still running");
    assert!(fuse_mounts_under(&root).is_empty(), "store still mounted");
}

#[test]
fn a_layer_repeated_in_an_image_is_stacked_once() {
    if !require_root_fuse("a_layer_repeated_in_an_image_is_stacked_once") {
        return;
    }
    // Layers a, b, a: overlayfs refuses a directory twice; the top occurrence decides.
    let a = vec![file("f", b"from a\n"), file("g", b"a\n")];
    let b = vec![file("f", b"from b\n"), file(".wh.g", b"")];
    let mut layers = runnable_layers();
    layers.extend([a.clone(), b, a]);
    let w = World::start(&layers, Comp::Native);
    ok(&w.root, &["pull", &w.base]);
    let out = ok(
        &w.root,
        &["run", "--rm", &w.base, "/bin/busybox", "cat", "/f", "/g"],
    );
    assert_eq!(out, "from a\na\n");
}

/// `kill -9` of the store's server while a container reads a file: the holder starts a
/// successor that takes the live FUSE connection over, and the read finishes with the right
/// bytes (a short pause, not an error).
#[test]
fn a_killed_store_server_is_taken_over_while_a_container_reads() {
    if !require_root_fuse("a_killed_store_server_is_taken_over_while_a_container_reads") {
        return;
    }
    let mut layers = runnable_layers();
    layers.push(vec![file("shared/big.bin", &noise(SHARED_BYTES, 9))]);
    let w = World::start(&layers, Comp::Native);
    ok(&w.root, &["pull", &w.base]);
    let id = ok(
        &w.root,
        &["run", "-d", &w.base, "/bin/busybox", "sleep", "60"],
    );
    let root = w.root.canonicalize().unwrap();
    let rootfs = root.join("containers").join(id.trim()).join("rootfs");
    let before = status(&root).expect("the store answers");
    let pid = before["pid"].as_u64().unwrap();
    // Slow fetches, so that the kill lands while reads wait on the network.
    w.proxy.set(Fault::Delay(Duration::from_millis(40)));
    let file = rootfs.join("shared/big.bin");
    let reader = std::thread::spawn(move || std::fs::read(file));
    std::thread::sleep(Duration::from_millis(400));
    assert!(!reader.is_finished(), "the read should still be under way");
    // SAFETY: kill(2) on the store server this test's command started.
    unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
    let got = reader.join().unwrap().unwrap_or_else(|e| {
        let log = std::fs::read_to_string(root.join("layers.log")).unwrap_or_default();
        panic!("the read failed after the server's death: {e}\nstore log:\n{log}")
    });
    assert!(
        got == noise(SHARED_BYTES, 9),
        "content differs after the takeover"
    );
    w.proxy.set(Fault::None);
    let after = status(&root).expect("a successor answers");
    assert_ne!(after["pid"], before["pid"]);
    assert_eq!(after["layers"], before["layers"], "{after}");
    assert_eq!(fuse_mounts_under(&root), [root.join("layers")]);
    // The container still runs on the taken-over store.
    let out = ok(
        &w.root,
        &["exec", id.trim(), "/bin/busybox", "cat", "/etc/os-release"],
    );
    assert!(!out.is_empty());
    ok(&w.root, &["rm", "-f", id.trim()]);
}

/// A stopped container started again after the store ended and came back with other images
/// added first (so other inode numbers): its upper layer is stacked again and reads on.
#[test]
fn a_container_starts_again_on_a_new_store() {
    if !require_root_fuse("a_container_starts_again_on_a_new_store") {
        return;
    }
    use strata_tests::layers::Item;
    // Hardlinked pairs with other files between them: renumbered inodes must not make one
    // pair's copied-up file show up as the other's.
    let mut links = vec![file("x/a1", b"A-original")];
    links.push(Item::Hardlink {
        path: b"x/a2".to_vec(),
        target: b"x/a1".to_vec(),
    });
    links.extend((0..25).map(|i| file(&format!("x/fill{i}"), b"f")));
    links.push(file("x/b1", b"B-original"));
    links.push(Item::Hardlink {
        path: b"x/b2".to_vec(),
        target: b"x/b1".to_vec(),
    });
    let mut layers = runnable_layers();
    layers.push(links);
    let w = World::start(&layers, Comp::Native);
    let mut other = vec![vec![file("other", b"x\n")]];
    other.extend((0..26).map(|i| vec![file(&format!("o{i}"), b"o")]));
    other.extend(runnable_layers());
    push_image(&w.reg.addr, "t/other", "1", &other, Comp::Native);
    let other = format!("{}/t/other:1", w.proxy.addr);
    let root = w.root.clone();
    let script = "cat /kept 2>/dev/null; echo kept > /kept; cat /bin/busybox > /dev/null; \
        [ -e /x/marker ] || { echo -n B-MODIFIED > /x/b1; : > /x/marker; }; \
        for f in a1 a2 b1 b2; do echo $f=$(cat /x/$f); done";
    let run = [
        "run",
        "--name",
        "c",
        &w.base,
        "/bin/busybox",
        "sh",
        "-c",
        script,
    ];
    let first = ok(&root, &run);
    assert!(
        first.contains("a1=A-original\na2=A-original\nb1=B-MODIFIED\n"),
        "{first}"
    );
    // The store ends (idle), then serves another image first.
    let root_abs = root.canonicalize().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fuse_mounts_under(&root_abs).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        fuse_mounts_under(&root_abs).is_empty(),
        "the store did not end"
    );
    ok(
        &root,
        &["run", "--rm", &other, "/bin/busybox", "cat", "/other"],
    );
    let again = ok(&root, &["start", "-a", "c"]);
    assert_eq!(
        again,
        format!("kept\n{first}"),
        "the same files after the store came back"
    );
}

/// A container keeps reading after its store's server is killed even when an image added to
/// the store before its own was removed meanwhile: the successor keeps that image's inode
/// numbers free instead of renumbering the container's layers.
#[test]
fn a_takeover_after_an_earlier_image_was_removed_keeps_the_numbers() {
    if !require_root_fuse("a_takeover_after_an_earlier_image_was_removed_keeps_the_numbers") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    push_image(
        &w.reg.addr,
        "t/first",
        "1",
        &[vec![file("first/a", b"1"), file("first/b", b"2")]],
        Comp::Native,
    );
    let first = format!("{}/t/first:1", w.proxy.addr);
    let root = w.root.canonicalize().unwrap_or(w.root.clone());
    ok(&w.root, &["pull", &first]);
    // The first image's layers go into the store first (a mount of it), then a container.
    let mnt = w.state.path().join("m");
    let m = strata_tests::strata::Mounted::new(&w.root, &first, &mnt);
    let id = ok(
        &w.root,
        &["run", "-d", &w.base, "/bin/busybox", "sleep", "60"],
    );
    drop(m);
    ok(&w.root, &["rmi", &first]);
    ok(&w.root, &["system", "prune", "-a", "-f"]);
    let pid = status(&root).expect("the store answers")["pid"]
        .as_u64()
        .unwrap();
    // SAFETY: kill(2) on the store server this test's command started.
    unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    let out = ok(
        &w.root,
        &["exec", id.trim(), "/bin/busybox", "cat", "/etc/os-release"],
    );
    assert!(out.contains("strata-test"), "{out}");
    ok(&w.root, &["rm", "-f", id.trim()]);
}

/// Layers that do not list their parent directories or root, a whiteout of something nothing
/// below has, a layer whose root is opaque, and a hardlink to a file of a lower layer: `mount`
/// over the store shows what the per-container merged mount shows (the union rules'
/// reference), the hardlink as a copy with the same bytes.
#[test]
fn unlisted_parents_ghost_whiteouts_and_an_opaque_root_match_the_merged_mount() {
    if !require_root_fuse(
        "unlisted_parents_ghost_whiteouts_and_an_opaque_root_match_the_merged_mount",
    ) {
        return;
    }
    use strata_tests::layers::{Item, dir};
    use strata_tests::strata::{Mounted, bin};
    let sticky = Item::Dir {
        path: b"tmp".to_vec(),
        mode: 0o1777,
    };
    let private = Item::Dir {
        path: b"root".to_vec(),
        mode: 0o700,
    };
    let l0 = vec![
        sticky,
        private,
        dir("keep"),
        file("keep/x", b"x\n"),
        file("tmp/a", b"a\n"),
    ];
    let l1 = vec![
        file("tmp/cache.txt", b"c\n"),
        file("root/y", b"y\n"),
        Item::Whiteout {
            path: b"nodir/ghost".to_vec(),
        },
        Item::Whiteout {
            path: b"keep/gone".to_vec(),
        },
    ];
    let l2 = vec![Item::Hardlink {
        path: b"keep/lnk".to_vec(),
        target: b"keep/x".to_vec(),
    }];
    let l3 = vec![Item::Opaque { dir: Vec::new() }, file("newroot", b"n\n")];
    let w = World::start(&[l0.clone(), l1.clone(), l2.clone()], Comp::Native);
    push_image(&w.reg.addr, "t/opq", "1", &[l0, l1, l2, l3], Comp::Native);
    let opq = format!("{}/t/opq:1", w.proxy.addr);
    let snap = |image: &str, store: bool, name: &str| {
        let mnt = w.state.path().join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let mut cmd = std::process::Command::new(bin());
        cmd.arg("--root").arg(&w.root);
        if !store {
            cmd.env("STRATA_LAYER_STORE", "0");
        }
        let out = cmd
            .env("STRATA_LAYER_STORE_IDLE_SECS", "2")
            .args(["mount", "--detach", image, mnt.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = Mounted::adopt(&w.root, &mnt);
        let fstype = strata_tests::mount_type(&mnt).unwrap_or_default();
        assert_eq!(fstype == "overlay", store, "{fstype}");
        let mut s = strata_tests::walk::snapshot(&m.dir);
        // The lower layer's file and its link: one inode merged, a copy in the store.
        for meta in s.values_mut() {
            meta.hardlink_of = None;
        }
        s
    };
    let store = snap(&w.base, true, "a");
    let merged = snap(&w.base, false, "b");
    strata_tests::walk::assert_same("store vs merged", &store, &merged);
    assert_eq!(store[&b"tmp".to_vec()].mode & 0o7777, 0o1777);
    assert!(!store.contains_key(b"nodir/ghost".as_slice()));
    let lnk = &store[&b"keep/lnk".to_vec()];
    assert_eq!(lnk.content, store[&b"keep/x".to_vec()].content);
    let store = snap(&opq, true, "c");
    let merged = snap(&opq, false, "d");
    strata_tests::walk::assert_same("opaque root", &store, &merged);
    assert_eq!(
        store.keys().cloned().collect::<Vec<_>>(),
        [b"newroot".to_vec()]
    );
}

/// An overlay the store cannot recognise as stacking it (its lower directory named through a
/// symlink, as podman names its layers) keeps reading after the store idles out: the server
/// unmounts but serves until the kernel ends the connection with the last such overlay.
#[test]
fn an_overlay_named_through_links_keeps_reading_after_the_store_idles_out() {
    if !require_root_fuse("an_overlay_named_through_links_keeps_reading_after_the_store_idles_out")
    {
        return;
    }
    let late = noise(3 << 20, 41);
    let mut layers = runnable_layers();
    layers.push(vec![file("data/late.bin", &late)]);
    let w = World::start(&layers, Comp::Native);
    let root = w.root.clone();
    let mnt = w.state.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    ok(&root, &["mount", "-d", &w.base, mnt.to_str().unwrap()]);
    let store = root.canonicalize().unwrap().join("layers");
    let diff = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("diff"))
        .find(|d| d.join("data/late.bin").exists())
        .expect("a layer directory with data/late.bin");
    // The overlay: its lower directory is a symlink into the store.
    let x = w.state.path().join("x");
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(x.join(d)).unwrap();
    }
    std::os::unix::fs::symlink(&diff, x.join("l")).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        x.join("l").display(),
        x.join("upper").display(),
        x.join("work").display()
    );
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(x.join("merged"))
        .status()
        .unwrap();
    assert!(st.success(), "overlay mount failed");
    ok(&root, &["umount", mnt.to_str().unwrap()]);
    // The store ends: nothing it can see uses it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fuse_mounts_under(&root.canonicalize().unwrap()).contains(&store)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !fuse_mounts_under(&root.canonicalize().unwrap()).contains(&store),
        "the store did not unmount"
    );
    // A file never read before still reads, right, through the overlay.
    let got = std::fs::read(x.join("merged/data/late.bin"));
    let _ = std::process::Command::new("umount")
        .arg(x.join("merged"))
        .status();
    assert!(
        got.as_ref().is_ok_and(|g| *g == late),
        "read after the store ended: {:?}",
        got.map(|g| g.len())
    );
}

/// The store keeps the settings of the command that started it: a later command asking for
/// another cache size is told so, in one warning, and still runs.
#[test]
fn a_command_with_other_settings_is_told_the_store_keeps_its_own() {
    if !require_root_fuse("a_command_with_other_settings_is_told_the_store_keeps_its_own") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    let mnt = w.state.path().join("mnt");
    // A detached mount keeps the store (started with the default cache size) in use.
    let m = strata_tests::strata::Mounted::new(&w.root, &w.base, &mnt);
    let same =
        strata_tests::strata::run(&w.root, &["run", "--rm", &w.base, "/bin/busybox", "true"]);
    let err = String::from_utf8_lossy(&same.stderr);
    assert!(same.status.success(), "{err}");
    assert!(
        !err.contains("already runs with"),
        "same settings warned: {err}"
    );
    let other = strata_tests::strata::run(
        &w.root,
        &[
            "--cache-mb",
            "8",
            "run",
            "--rm",
            &w.base,
            "/bin/busybox",
            "true",
        ],
    );
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(other.status.success(), "{err}");
    assert!(
        err.contains("already runs with") && err.contains("--cache-mb"),
        "no warning: {err}"
    );
    drop(m);
}
