//! The attributes the kernel sees for a node of the tree.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use strata_formats::index::{ChunkLoc, Kind};

use crate::tree::Node;

/// The FUSE file type of a node kind.
pub fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::Reg | Kind::Hardlink => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Char => FileType::CharDevice,
        Kind::Block => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
    }
}

/// The kernel's `new_encode_dev`.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn time_of((secs, nanos): (i64, u32)) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// The attributes the kernel sees for `ino` (computed once per inode when the tree is ready).
pub fn attr_of(ino: u64, n: &Node) -> FileAttr {
    let t = time_of(n.mtime);
    let blocks = match &n.content {
        Some(c) => c
            .chunks
            .iter()
            .filter(|c| c.loc != ChunkLoc::Zeros)
            .map(|c| c.len)
            .sum::<u64>()
            .div_ceil(512),
        None => 0,
    };
    FileAttr {
        ino: INodeNo(ino),
        size: n.size,
        blocks,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: file_type(n.kind),
        perm: (n.mode & 0o7777) as u16,
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        rdev: if matches!(n.kind, Kind::Char | Kind::Block) {
            encode_dev(n.rdev.0, n.rdev.1)
        } else {
            0
        },
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_encode_like_the_kernel() {
        // glibc's makedev agrees with the kernel encoding for 32-bit device numbers.
        for (ma, mi) in [(1, 3), (8, 0x1234), (259, 70000)] {
            assert_eq!(encode_dev(ma, mi) as u64, libc::makedev(ma, mi));
        }
    }
}
