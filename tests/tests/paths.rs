//! Paths from outside stay inside their root (issue 11): build context symlinks, image
//! symlinks under `-v` and `-w`; a private state root under umask 000. And from issue 22:
//! names that are not UTF-8 are bytes from the context to the image, its mount, commit and
//! export; ADD unpacks local tar archives by content (plain, gzip, bzip2, xz, zstd) but not
//! downloads; WORKDIR under a non-root USER is owned by that user. The expected behaviour is
//! BuildKit's (docker 29's default builder): in-root symlink resolution for COPY sources,
//! content-sniffed archives, WORKDIR created as the current user.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_tests::fixtures::runnable_layers;
use strata_tests::layers::{Comp, dir, file, push_blob, symlink, tar_of};
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, bin, ok, run};
use strata_tests::world::World;

fn write(dir: &Path, files: &[(&str, &[u8])]) {
    for (p, content) in files {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

fn build(root: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    let out = run(root, &all);
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    println!("--- strata build {args:?}\n{o}{e}");
    (out.status.success(), o, e)
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn names(dir: &Path) -> BTreeSet<Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect()
}

#[test]
fn context_symlinks_that_leave_the_context_fail_and_nothing_of_the_host_is_copied() {
    if !require_root_fuse("context_symlinks_that_leave_the_context_fail") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    let root = &w.root;
    let ctx = w.state.path().join("ctx");
    write(&ctx, &[("sub/file.txt", b"inside\n"), ("ok.txt", b"ok\n")]);
    for (link, target) in [
        ("etc", "/etc"),
        ("pw", "/etc/passwd"),
        ("up", "../../../../../../etc/hostname"),
        ("in_rel", "sub/file.txt"),
        ("in_abs", "/sub/file.txt"),
    ] {
        std::os::unix::fs::symlink(target, ctx.join(link)).unwrap();
    }
    let b = &w.base;
    // Each reads through a link that points out of the context: docker's error, naming it.
    for (line, named) in [
        ("COPY etc/shadow /x", "etc/shadow"),
        ("COPY etc/passwd /x", "etc/passwd"),
        ("COPY etc /x/", "etc"),
        ("COPY pw /x", "pw"),
        ("ADD pw /x", "pw"),
        ("COPY up /x", "up"),
        ("COPY p? /x/", "pw"),
    ] {
        std::fs::write(ctx.join("Dockerfile"), format!("FROM {b}\n{line}\n")).unwrap();
        let (okay, stdout, err) = build(root, &["-t", "leak:1", ctx.to_str().unwrap()]);
        assert!(!okay, "{line} built");
        let last = err.lines().last().unwrap_or("");
        // docker's classic builder: the failing step's "Step 2/2 : ..." line, then the cause.
        assert!(
            stdout.contains(&format!("Step 2/2 : {line}"))
                && last.contains(&format!(
                    "forbidden path outside the build context: {named}"
                )),
            "{line}: {err}"
        );
        assert!(!run(root, &["inspect", "leak:1"]).status.success());
    }
    // The context's own Dockerfile is not read through a link out of it either.
    std::fs::remove_file(ctx.join("Dockerfile")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", ctx.join("Dockerfile")).unwrap();
    let (okay, _, err) = build(root, &["-t", "leak:1", ctx.to_str().unwrap()]);
    assert!(
        !okay && err.contains("Dockerfile") && !err.contains("root:x:0:0"),
        "{err}"
    );
    std::fs::remove_file(ctx.join("Dockerfile")).unwrap();
    // Links that stay inside resolve inside (an absolute one against the context root, as
    // BuildKit does); a whole-context copy keeps the outward links as links, reads nothing.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {b}\nCOPY in_rel /a.txt\nCOPY in_abs /b.txt\nCOPY . /all/\n"),
    )
    .unwrap();
    let (okay, _, err) = build(root, &["-t", "fine:1", ctx.to_str().unwrap()]);
    assert!(okay, "{err}");
    let m = Mounted::new(root, "fine:1", &w.state.path().join("mnt"));
    let d = &m.dir;
    assert_eq!(std::fs::read(d.join("a.txt")).unwrap(), b"inside\n");
    assert_eq!(std::fs::read(d.join("b.txt")).unwrap(), b"inside\n");
    for (link, target) in [("etc", "/etc"), ("pw", "/etc/passwd")] {
        let p = d.join("all").join(link);
        assert!(
            std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{link} copied as more than a link"
        );
        assert_eq!(std::fs::read_link(&p).unwrap(), Path::new(target));
    }
    let host_passwd = std::fs::read("/etc/passwd").unwrap();
    let mut stack = vec![d.clone()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && e.metadata().unwrap().len() < 1 << 20 {
                assert_ne!(std::fs::read(e.path()).unwrap(), host_passwd, "{e:?}");
            }
        }
    }
}

#[test]
fn image_symlinks_keep_binds_workdirs_and_copies_inside_the_container_root() {
    if !require_root_fuse("image_symlinks_keep_binds_workdirs_and_copies_inside") {
        return;
    }
    let pid = std::process::id();
    let target = format!("srv/target-{pid}");
    let mut layers = runnable_layers();
    layers.push(vec![
        dir("srv"),
        dir(&target),
        symlink("escape", &format!("/{target}")),
        symlink("dangling", &format!("/nowhere-{pid}")),
        // As in images with systemd-resolved: a dangling link where strata binds a file.
        symlink("etc/resolv.conf", &format!("/run/stub-{pid}/resolv.conf")),
    ]);
    let w = World::start(&layers, Comp::Native);
    let root = &w.root;
    let host = w.state.path().join("host");
    write(&host, &[("f", b"from the host\n")]);
    let bind = format!("{}:/escape/x", host.display());
    let out = ok(
        root,
        &[
            "run",
            "--rm",
            "-v",
            &bind,
            "-w",
            "/escape/work",
            &w.base,
            "sh",
            "-c",
            &format!(
                "cat /{target}/x/f; pwd -P; grep -q nameserver /run/stub-{pid}/resolv.conf && echo stub"
            ),
        ],
    );
    assert_eq!(out, format!("from the host\n/{target}/work\nstub\n"));
    assert!(!Path::new(&format!("/{target}")).exists(), "host touched");
    assert!(
        !Path::new(&format!("/run/stub-{pid}")).exists(),
        "host touched"
    );
    // A bind target through a link to nowhere makes the link's target inside the root.
    let bind = format!("{}:/dangling/x", host.display());
    let out = ok(
        root,
        &[
            "run",
            "--rm",
            "-v",
            &bind,
            &w.base,
            "cat",
            &format!("/nowhere-{pid}/x/f"),
        ],
    );
    assert_eq!(out, "from the host\n");
    assert!(
        !Path::new(&format!("/nowhere-{pid}")).exists(),
        "host touched"
    );
    // COPY's destination through the image's link lands inside the image.
    let ctx = w.state.path().join("ctx");
    write(
        &ctx,
        &[
            ("f.txt", b"copied\n"),
            (
                "Dockerfile",
                format!("FROM {}\nCOPY f.txt /escape/f.txt\n", w.base).as_bytes(),
            ),
        ],
    );
    let (okay, _, err) = build(root, &["-t", "through:1", ctx.to_str().unwrap()]);
    assert!(okay, "{err}");
    assert!(
        !Path::new(&format!("/{target}/f.txt")).exists(),
        "host touched"
    );
    let m = Mounted::new(root, "through:1", &w.state.path().join("mnt"));
    assert_eq!(
        std::fs::read(m.dir.join(&target).join("f.txt")).unwrap(),
        b"copied\n"
    );
}

/// The names (as bytes) and link targets of an exported container.
fn exported(root: &Path, container: &str, scratch: &Path) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let tar_path = scratch.join(format!("{container}.tar"));
    ok(
        root,
        &["export", "-o", tar_path.to_str().unwrap(), container],
    );
    let mut ar = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.path_bytes().trim_ascii_end().to_vec();
            let name = name.strip_suffix(b"/").unwrap_or(&name).to_vec();
            let name = name.strip_prefix(b"./").unwrap_or(&name).to_vec();
            (name, e.link_name_bytes().map(|l| l.to_vec()))
        })
        .collect()
}

#[test]
fn names_that_are_not_utf8_stay_bytes_through_build_mount_commit_and_export() {
    if !require_root_fuse("names_that_are_not_utf8_stay_bytes") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    let root = &w.root;
    let ctx = w.state.path().join("ctx");
    let data = ctx.join("data");
    std::fs::create_dir_all(data.join(os(b"dir-\xe9"))).unwrap();
    std::fs::write(data.join(os(b"file-\xe4")), b"latin1\n").unwrap();
    std::fs::write(data.join(os(b"dir-\xe9/inner-\xff")), b"deep\n").unwrap();
    std::os::unix::fs::symlink(os(b"file-\xe4"), data.join(os(b"link-\xfc"))).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nADD data /latin\nCOPY data/ /copied/\nRUN for f in /latin/file-*; do cp \"$f\" \"$f.bak\"; done\n",
            w.base
        ),
    )
    .unwrap();
    let (okay, _, err) = build(root, &["-t", "latin:1", ctx.to_str().unwrap()]);
    assert!(okay, "{err}");
    let want: BTreeSet<Vec<u8>> = [
        b"file-\xe4".to_vec(),
        b"file-\xe4.bak".to_vec(),
        b"dir-\xe9".to_vec(),
        b"link-\xfc".to_vec(),
    ]
    .into();
    {
        let m = Mounted::new(root, "latin:1", &w.state.path().join("mnt"));
        let d = &m.dir;
        assert_eq!(names(&d.join("latin")), want);
        let mut copied = want.clone();
        copied.remove(b"file-\xe4.bak".as_slice());
        assert_eq!(names(&d.join("copied")), copied);
        assert_eq!(
            std::fs::read(d.join("latin").join(os(b"file-\xe4"))).unwrap(),
            b"latin1\n"
        );
        assert_eq!(
            std::fs::read(d.join("latin").join(os(b"dir-\xe9/inner-\xff"))).unwrap(),
            b"deep\n"
        );
        assert_eq!(
            std::fs::read_link(d.join("latin").join(os(b"link-\xfc")))
                .unwrap()
                .as_os_str()
                .as_bytes(),
            b"file-\xe4"
        );
    }
    // A container makes such names; commit and export keep them.
    ok(
        root,
        &[
            "run",
            "--name",
            "maker",
            "latin:1",
            "sh",
            "-c",
            "touch \"$(printf '/made-\\344')\" && ln -s \"$(printf 'made-\\344')\" \"$(printf '/ln-\\374')\"",
        ],
    );
    ok(root, &["commit", "maker", "made:1"]);
    {
        let m = Mounted::new(root, "made:1", &w.state.path().join("mnt2"));
        let top = names(&m.dir);
        assert!(top.contains(b"made-\xe4".as_slice()), "{top:?}");
        assert_eq!(
            std::fs::read_link(m.dir.join(os(b"ln-\xfc")))
                .unwrap()
                .as_os_str()
                .as_bytes(),
            b"made-\xe4"
        );
        assert_eq!(names(&m.dir.join("latin")), want);
    }
    let entries = exported(root, "maker", w.state.path());
    let has = |n: &[u8]| entries.iter().any(|(e, _)| e == n);
    for n in [
        b"made-\xe4".as_slice(),
        b"latin/file-\xe4",
        b"latin/file-\xe4.bak",
        b"latin/dir-\xe9/inner-\xff",
    ] {
        assert!(has(n), "{} not exported", String::from_utf8_lossy(n));
    }
    let link = entries
        .iter()
        .find(|(e, _)| e == b"latin/link-\xfc")
        .unwrap();
    assert_eq!(link.1.as_deref(), Some(b"file-\xe4".as_slice()));
    // Through the registry: the TOC's nameRaw/linkNameRaw carry the bytes to a fresh root.
    let pushed = format!("{}/me/made:1", w.reg.addr);
    ok(root, &["tag", "made:1", &pushed]);
    ok(root, &["push", &pushed]);
    let fresh = w.state.path().join("fresh");
    let m = Mounted::new(&fresh, &pushed, &w.state.path().join("mnt3"));
    assert!(names(&m.dir).contains(b"made-\xe4".as_slice()));
    assert_eq!(names(&m.dir.join("latin")), want);
    assert_eq!(
        std::fs::read(m.dir.join(os(b"latin/dir-\xe9/inner-\xff"))).unwrap(),
        b"deep\n"
    );
    assert_eq!(
        std::fs::read_link(m.dir.join(os(b"latin/link-\xfc")))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"file-\xe4"
    );
}

fn compressed(tool: &str, raw: &[u8], scratch: &Path) -> Vec<u8> {
    let p = scratch.join(format!("in-{tool}"));
    std::fs::write(&p, raw).unwrap();
    let out = Command::new(tool).arg("-c").arg(&p).output().unwrap();
    assert!(out.status.success(), "{tool}: {:?}", out);
    out.stdout
}

/// Kind 6 of issue 22. Matched by hand against dockerd v2.0.0-beta.24 (classic builder,
/// containerd 2.2.3): `ADD a.tar.bz2 /t/` and `ADD a.tar.xz /x/` unpack, `ADD fake.tar.gz /y/`
/// (text named like an archive) copies the file as it is — the same trees as strata's.
#[test]
fn add_unpacks_local_archives_by_content_and_copies_downloads_and_lookalikes() {
    if !require_root_fuse("add_unpacks_local_archives_by_content") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    let root = &w.root;
    let ctx = w.state.path().join("ctx");
    let scratch = w.state.path();
    std::fs::create_dir_all(&ctx).unwrap();
    let tar_for = |name: &str| -> Vec<u8> {
        tar_of(&[
            dir("inner"),
            file(&format!("inner/{name}.txt"), format!("{name}\n").as_bytes()),
        ])
    };
    let mut kinds: Vec<(&str, Vec<u8>)> = vec![("a.tar", tar_for("plain"))];
    for (name, tool, inner) in [
        ("a.tar.gz", "gzip", "gz"),
        ("a.tar.bz2", "bzip2", "bz2"),
        ("a.tar.xz", "xz", "xz"),
        ("a.tar.zst", "zstd", "zst"),
        ("weird.bin", "bzip2", "sniffed"),
    ] {
        kinds.push((name, compressed(tool, &tar_for(inner), scratch)));
    }
    let fake = b"just text, named like an archive\n".to_vec();
    let notar = compressed("xz", b"compressed, but not a tar\n", scratch);
    kinds.push(("fake.tar.bz2", fake.clone()));
    kinds.push(("notar.tar.xz", notar.clone()));
    for (name, bytes) in &kinds {
        std::fs::write(ctx.join(name), bytes).unwrap();
    }
    // From a URL an archive is a file: a gzip tar served by the registry as a blob.
    let tgz = compressed("gzip", &tar_for("url"), scratch);
    let digest = push_blob(&w.reg.addr, "t/base", &tgz, scratch);
    let url = format!("http://{}/v2/t/base/blobs/{digest}", w.reg.addr);
    let dockerfile = format!(
        "FROM {}\nADD a.tar /plain/\nADD a.tar.gz /gz/\nADD a.tar.bz2 /bz2/\nADD a.tar.xz /xz/\nADD a.tar.zst /zst/\nADD weird.bin /sniffed/\nADD fake.tar.bz2 /fake/\nADD notar.tar.xz /notar/\nADD {url} /url/\n",
        w.base
    );
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let (okay, _, err) = build(root, &["-t", "unpacked:1", ctx.to_str().unwrap()]);
    assert!(okay, "{err}");
    let m = Mounted::new(root, "unpacked:1", &w.state.path().join("mnt"));
    let d = &m.dir;
    for (dest, inner) in [
        ("plain", "plain"),
        ("gz", "gz"),
        ("bz2", "bz2"),
        ("xz", "xz"),
        ("zst", "zst"),
        ("sniffed", "sniffed"),
    ] {
        let p = d.join(dest).join("inner").join(format!("{inner}.txt"));
        assert_eq!(
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            format!("{inner}\n")
        );
        assert_eq!(names(&d.join(dest)).len(), 1, "{dest}");
    }
    assert_eq!(std::fs::read(d.join("fake/fake.tar.bz2")).unwrap(), fake);
    assert_eq!(std::fs::read(d.join("notar/notar.tar.xz")).unwrap(), notar);
    assert_eq!(std::fs::read(d.join("url").join(&digest)).unwrap(), tgz);
}

#[test]
fn workdir_under_a_user_is_created_owned_by_that_user() {
    if !require_root_fuse("workdir_under_a_user_is_created_owned_by_that_user") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    let root = &w.root;
    let ctx = w.state.path().join("ctx");
    let dockerfile = format!(
        "FROM {}\nRUN echo 'app:x:1000:1001::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1001:' >> /etc/group && mkdir -p /home\nUSER app\nWORKDIR /home/app/public\nRUN touch x && id -u > uid.txt\nWORKDIR /home/app\nWORKDIR /home/app/public/deeper\nUSER root\nWORKDIR /rootdir\nRUN touch y\n",
        w.base
    );
    write(&ctx, &[("Dockerfile", dockerfile.as_bytes())]);
    let (okay, _, err) = build(root, &["-t", "wd:1", ctx.to_str().unwrap()]);
    assert!(okay, "{err}");
    let m = Mounted::new(root, "wd:1", &w.state.path().join("mnt"));
    let d = &m.dir;
    let owner = |p: &str| {
        let m = std::fs::metadata(d.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        (m.uid(), m.gid())
    };
    assert_eq!(owner("home/app"), (1000, 1001));
    assert_eq!(owner("home/app/public"), (1000, 1001));
    assert_eq!(owner("home/app/public/deeper"), (1000, 1001));
    assert_eq!(owner("home/app/public/x"), (1000, 1001));
    assert_eq!(owner("home"), (0, 0));
    assert_eq!(
        std::fs::read_to_string(d.join("home/app/public/uid.txt")).unwrap(),
        "1000\n"
    );
    assert_eq!(owner("rootdir"), (0, 0));
    assert_eq!(owner("rootdir/y"), (0, 0));
}

/// Runs strata under umask 000.
fn loose(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Every regular file under `dir` on its filesystem (mounts below are not entered).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let dev = std::fs::metadata(dir).unwrap().dev();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() && m.dev() == dev {
                stack.push(e.path());
            } else if m.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn under_umask_000_no_file_holding_an_env_value_is_readable_by_others() {
    if !require_root_fuse("under_umask_000_no_file_holding_an_env_value_is_readable") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    let root = &w.root;
    let secret = format!("hunter2-{}", std::process::id());
    let o = loose(
        root,
        &[
            "run",
            "--name",
            "s1",
            "-e",
            &format!("DB_PASSWORD={secret}"),
            &w.base,
            "sh",
            "-c",
            "exit 0",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let holding: Vec<PathBuf> = files_under(root)
        .into_iter()
        .filter(|p| {
            let mut b = Vec::new();
            std::fs::File::open(p)
                .and_then(|f| f.take(4 << 20).read_to_end(&mut b))
                .is_ok()
                && b.windows(secret.len()).any(|w| w == secret.as_bytes())
        })
        .collect();
    assert!(
        !holding.is_empty(),
        "the -e value is nowhere under the root"
    );
    let nobody_reads = |p: &Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(p)
            .output()
            .unwrap()
            .status
            .success()
    };
    for p in &holding {
        assert_eq!(mode(p) & 0o077, 0, "{} is {:o}", p.display(), mode(p));
        assert!(!nobody_reads(p), "nobody read {}", p.display());
    }
    let ids: Vec<_> = std::fs::read_dir(root.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("container.json").exists())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let cdir = ids[0].clone();
    for d in [root.clone(), root.join("containers"), cdir.clone()] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    assert_eq!(mode(&cdir.join("spec.json")), 0o600);
    // A root left loose (by an older strata) is tightened by the next command.
    for d in [root.clone(), root.join("containers"), cdir.clone()] {
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    std::fs::set_permissions(
        cdir.join("spec.json"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    assert!(nobody_reads(&cdir.join("spec.json")));
    assert!(loose(root, &["ps", "-a"]).status.success());
    for d in [root.clone(), root.join("containers"), cdir.clone()] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    assert_eq!(mode(&cdir.join("spec.json")), 0o600);
    assert!(!nobody_reads(&cdir.join("spec.json")));
}
