//! The rich test image: every file type, whiteouts and opaque dirs across three layers,
//! hardlinks, xattrs, long and non-UTF-8 names, a sparse file and a 64 MiB file.

use crate::layers::{Item, dir, file, noise, symlink};

/// Size of the big file.
pub const BIG_BYTES: usize = 64 << 20;
/// Path of the big file.
pub const BIG_PATH: &str = "data/big.bin";

/// The content of the big file.
pub fn big() -> Vec<u8> {
    noise(BIG_BYTES, 42)
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Three layers exercising the union rules and every entry type.
pub fn rich_layers(with_big: bool) -> Vec<Vec<Item>> {
    let long_component = "l".repeat(250);
    let deep = format!("usr/share/{}/{}", "d".repeat(90), "f".repeat(60));
    let mut sparse = noise(300_000, 7);
    sparse.extend(std::iter::repeat_n(0u8, 4 << 20));
    sparse.extend(noise(100_000, 8));
    let mut l0 = vec![
        dir("bin"),
        dir("data"),
        dir("dev"),
        dir("etc"),
        dir("opt"),
        dir("opt/app"),
        dir("usr"),
        dir("usr/bin"),
        dir("usr/share"),
        dir(&format!("usr/share/{}", "d".repeat(90))),
        dir("var"),
        dir("var/lib"),
        dir("var/lib/old"),
        Item::Dir {
            path: b("tmp"),
            mode: 0o1777,
        },
        file("etc/os-release", b"ID=strata-test\nVERSION_ID=1\n"),
        file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        Item::File {
            path: b("bin/busybox"),
            mode: 0o755,
            data: noise(300_000, 1),
            uid: 0,
            gid: 0,
            xattrs: vec![],
        },
        Item::Hardlink {
            path: b("bin/ls"),
            target: b("bin/busybox"),
        },
        symlink("bin/sh", "busybox"),
        symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
        symlink("etc/dangling", "../nowhere"),
        Item::File {
            path: b("usr/bin/su"),
            mode: 0o4755,
            data: b"#!/bin/sh\n".to_vec(),
            uid: 0,
            gid: 0,
            xattrs: vec![],
        },
        Item::File {
            path: b("usr/bin/wall"),
            mode: 0o2755,
            data: b"wall".to_vec(),
            uid: 0,
            gid: 5,
            xattrs: vec![],
        },
        Item::File {
            path: b("data/owned"),
            mode: 0o600,
            data: b"mine".to_vec(),
            uid: 1000,
            gid: 1000,
            xattrs: vec![],
        },
        Item::File {
            path: b("data/attrs"),
            mode: 0o644,
            data: b"x".to_vec(),
            uid: 0,
            gid: 0,
            xattrs: vec![
                ("user.test".into(), b"hello".to_vec()),
                ("user.bin".into(), vec![0, 1, 2, 255]),
            ],
        },
        file("data/empty", b""),
        file("data/sparse", &sparse),
        file(&format!("data/{long_component}"), b"long name"),
        file(&deep, b"deep path"),
        Item::File {
            path: b"data/caf\xe9-\xff".to_vec(),
            mode: 0o644,
            data: b"latin1 name".to_vec(),
            uid: 0,
            gid: 0,
            xattrs: vec![],
        },
        Item::Device {
            path: b("dev/null"),
            kind: 'c',
            major: 1,
            minor: 3,
        },
        Item::Device {
            path: b("dev/sda"),
            kind: 'b',
            major: 8,
            minor: 0,
        },
        Item::Fifo {
            path: b("var/fifo"),
        },
        file("var/lib/old/a", b"a"),
        file("var/lib/old/b", b"b"),
        file("opt/app/x", b"x"),
    ];
    if with_big {
        l0.push(file(BIG_PATH, &big()));
    }
    let l1 = vec![
        dir("etc"),
        dir("opt"),
        dir("opt/app2"),
        dir("var"),
        dir("var/lib"),
        dir("var/lib/old"),
        Item::Whiteout {
            path: b("etc/passwd"),
        },
        file("etc/os-release", b"ID=strata-test\nVERSION_ID=2\n"),
        Item::Opaque {
            dir: b("var/lib/old"),
        },
        file("var/lib/old/c", b"c"),
        file("opt/app", b"a file replaces a directory"),
        file("opt/app2/y", b"y"),
    ];
    let l2 = vec![
        Item::Dir {
            path: b("etc"),
            mode: 0o700,
        },
        dir("var"),
        dir("var/lib"),
        dir("data"),
        Item::Whiteout {
            path: b("var/lib/old"),
        },
        file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nme:x:1000:1000::/home/me:/bin/sh\n",
        ),
        Item::File {
            path: b("data/tagged"),
            mode: 0o640,
            data: b"tagged".to_vec(),
            uid: 0,
            gid: 0,
            xattrs: vec![("user.layer".into(), b"2".to_vec())],
        },
        Item::Hardlink {
            path: b("data/tagged-link"),
            target: b("data/tagged"),
        },
    ];
    vec![l0, l1, l2]
}

/// A layer with the host's static busybox as `bin/busybox` (Debian's busybox-static).
pub fn busybox_layer() -> Vec<Item> {
    let bb = std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    vec![
        dir("bin"),
        Item::File {
            path: b("bin/busybox"),
            mode: 0o755,
            data: bb,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        },
        symlink("bin/sleep", "busybox"),
        symlink("bin/cat", "busybox"),
        symlink("bin/ls", "busybox"),
        symlink("bin/id", "busybox"),
    ]
}

/// The rich layers plus busybox: an image that can run a shell.
pub fn runnable_layers() -> Vec<Vec<Item>> {
    let mut layers = rich_layers(false);
    layers.push(busybox_layer());
    layers
}

/// [`runnable_layers`] without the non-UTF-8 name: the zstd:chunked TOC is JSON, and Go writers
/// replace invalid UTF-8 with U+FFFD, so no foreign TOC can name that file (strata streams such
/// a layer instead; see the index's tests).
pub fn foreign_layers() -> Vec<Vec<Item>> {
    let mut layers = runnable_layers();
    for l in &mut layers {
        l.retain(|it| match it {
            Item::File { path, .. } => std::str::from_utf8(path).is_ok(),
            _ => true,
        });
    }
    layers
}
