//! docker's default device list on cgroup v2: an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE`, attached to the container's v2 cgroup, that the kernel runs
//! on every open or mknod of a device node and that allows only the rules of
//! [`DEFAULT_DEVICES`] (the same lines the v1 devices cgroup gets).
//!
//! The program is generated from that table with `rbpf`'s instruction builder, as youki
//! does, and checked in unit tests by running it in `rbpf`'s interpreter. Loading and
//! attaching are three `bpf(2)` commands made here: the crates that wrap them (libbpf-sys,
//! aya) build a C library or load ELF objects, which is much more than three syscalls.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use rbpf::insn_builder::{Arch, BpfCode, Cond, Instruction, IntoBytes, MemSize, Source};

/// `bpf_cgroup_dev_ctx.access_type` bits (linux/bpf.h).
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;
const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;

/// bpf(2) commands, program and attach types (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Errors generating, loading or attaching the device program.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// A line of the device table is not `TYPE MAJOR:MINOR ACCESS`.
    #[error("device rule {0:?} is not of the form \"c|b MAJOR|*:MINOR|* [rwm]+\"")]
    Rule(String),
    /// The cgroup directory could not be opened.
    #[error("cgroup {path}: {source}")]
    Open {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused to load the program.
    #[error("loading the device program (bpf BPF_PROG_LOAD): {source}{log}")]
    Load {
        /// The verifier's last words, if any.
        log: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused to attach or list programs on the cgroup.
    #[error("cgroup {path}: device program (bpf {op}): {source}")]
    Bpf {
        /// The cgroup directory.
        path: PathBuf,
        /// `BPF_PROG_ATTACH` or `BPF_PROG_QUERY`.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// One allow rule: a device type, a major and minor (`None`: any) and the access it grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// [`DEV_CHAR`] or [`DEV_BLOCK`].
    pub kind: u32,
    /// Major number; `None` for `*`.
    pub major: Option<u32>,
    /// Minor number; `None` for `*`.
    pub minor: Option<u32>,
    /// `ACC_*` bits.
    pub access: u32,
}

impl Rule {
    /// Parses a devices cgroup v1 line such as `c 1:3 rwm` or `b *:* m`.
    pub fn parse(line: &str) -> Result<Self, DevicesError> {
        let bad = || DevicesError::Rule(line.to_string());
        let f: Vec<&str> = line.split_whitespace().collect();
        let [kind, numbers, access] = f[..] else {
            return Err(bad());
        };
        let kind = match kind {
            "c" => DEV_CHAR,
            "b" => DEV_BLOCK,
            _ => return Err(bad()),
        };
        let (major, minor) = numbers.split_once(':').ok_or_else(bad)?;
        let number = |s: &str| match s {
            "*" => Ok(None),
            s => s.parse::<u32>().map(Some).map_err(|_| bad()),
        };
        let mut bits = 0;
        for c in access.chars() {
            bits |= match c {
                'm' => ACC_MKNOD,
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                _ => return Err(bad()),
            };
        }
        if bits == 0 {
            return Err(bad());
        }
        Ok(Self {
            kind,
            major: number(major)?,
            minor: number(minor)?,
            access: bits,
        })
    }
}

/// The program allowing exactly `rules` (anything no rule allows is refused), as eBPF bytes.
///
/// On entry r1 points at `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`
/// with the device type in the low 16 bits of `access_type` and the requested access in the
/// high 16. Each rule is one block that jumps to the next on any mismatch and returns 1 (allow)
/// when all its tests pass; the program ends returning 0 (deny).
pub fn program(rules: &[Rule]) -> Vec<u8> {
    let mut p = BpfCode::new();
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    p.load_x(MemSize::Word)
        .set_dst(2)
        .set_src(1)
        .set_off(0)
        .push();
    p.bit_and(Source::Imm, Arch::X32)
        .set_dst(2)
        .set_imm(0xffff)
        .push();
    p.load_x(MemSize::Word)
        .set_dst(3)
        .set_src(1)
        .set_off(0)
        .push();
    p.right_shift(Source::Imm, Arch::X32)
        .set_dst(3)
        .set_imm(16)
        .push();
    p.load_x(MemSize::Word)
        .set_dst(4)
        .set_src(1)
        .set_off(4)
        .push();
    p.load_x(MemSize::Word)
        .set_dst(5)
        .set_src(1)
        .set_off(8)
        .push();
    for r in rules {
        rule_code(&mut p, r);
    }
    p.mov(Source::Imm, Arch::X32).set_dst(0).set_imm(0).push();
    p.exit().push();
    (&p).into_bytes().to_vec()
}

/// A 32-bit value as a BPF immediate: the kernel compares the bits, so reinterpreting the sign
/// is what is meant (device types, access bits and numbers are far below 2^31 anyway).
#[allow(clippy::cast_possible_wrap)]
fn imm(v: u32) -> i32 {
    v as i32
}

/// The instructions of one rule: compare the type, the access (unless the rule allows all)
/// and the fixed numbers, jumping to the next rule on a mismatch; on a match return 1 (allow).
fn rule_code(p: &mut BpfCode, r: &Rule) {
    let all = r.access == ACC_MKNOD | ACC_READ | ACC_WRITE;
    // Instructions after the type test: the access test (3), one per fixed number, and
    // the two that return; a mismatch jumps over what is left of them.
    let mut left = 2 + i16::from(r.major.is_some()) + i16::from(r.minor.is_some());
    if !all {
        left += 3;
    }
    p.jump_conditional(Cond::NotEquals, Source::Imm)
        .set_dst(2)
        .set_imm(imm(r.kind))
        .set_off(left)
        .push();
    if !all {
        // The request must be a subset of the rule's access: (r3 & access) == r3.
        left -= 3;
        p.mov(Source::Reg, Arch::X32).set_dst(1).set_src(3).push();
        p.bit_and(Source::Imm, Arch::X32)
            .set_dst(1)
            .set_imm(imm(r.access))
            .push();
        p.jump_conditional(Cond::NotEquals, Source::Reg)
            .set_dst(1)
            .set_src(3)
            .set_off(left)
            .push();
    }
    for (reg, number) in [(4, r.major), (5, r.minor)] {
        if let Some(n) = number {
            left -= 1;
            p.jump_conditional(Cond::NotEquals, Source::Imm)
                .set_dst(reg)
                .set_imm(imm(n))
                .set_off(left)
                .push();
        }
    }
    p.mov(Source::Imm, Arch::X32).set_dst(0).set_imm(1).push();
    p.exit().push();
}

/// docker's default device rules (devices cgroup v1 `devices.allow` lines): creating any node
/// (`m`), and reading/writing only null, zero, full, random, urandom, tty, console, ptmx, the
/// pseudo-terminals and tun.
pub const DEFAULT_DEVICES: [&str; 12] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

/// The rules of docker's default device list ([`DEFAULT_DEVICES`]).
pub fn default_rules() -> Vec<Rule> {
    DEFAULT_DEVICES
        .iter()
        .map(|l| Rule::parse(l).expect("the default device table parses"))
        .collect()
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    let size = libc::c_uint::try_from(std::mem::size_of::<T>()).expect("bpf_attr is small");
    // SAFETY: `attr` is a live, fully initialised `#[repr(C)]` prefix of `union bpf_attr` for
    // `cmd`, and its size is passed with it; the kernel copies at most that many bytes in and
    // writes only the fields of the command (query results) inside it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

fn load(code: &[u8]) -> Result<OwnedFd, DevicesError> {
    const LICENSE: &[u8] = b"Apache-2.0\0";
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(code.len() / 8).map_err(|_| DevicesError::Load {
            log: String::new(),
            source: std::io::Error::other("the program is longer than 2^32 instructions"),
        })?,
        insns: code.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        ..Default::default()
    };
    let first = bpf(BPF_PROG_LOAD, &mut attr);
    let err = match first {
        // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
        Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(raw_fd(fd)) }),
        Err(e) => e,
    };
    // Again with the verifier's log, to say why.
    let mut log = vec![0u8; 1 << 16];
    attr.log_level = 1;
    attr.log_size = u32::try_from(log.len()).expect("the log buffer is 64 KiB");
    attr.log_buf = log.as_mut_ptr() as u64;
    let _ = bpf(BPF_PROG_LOAD, &mut attr).map(|fd| {
        // SAFETY: as above; loaded the second time, closed again at once.
        drop(unsafe { OwnedFd::from_raw_fd(raw_fd(fd)) })
    });
    let text = String::from_utf8_lossy(&log);
    let last = text
        .trim_end_matches('\0')
        .trim()
        .lines()
        .last()
        .unwrap_or("");
    Err(DevicesError::Load {
        log: if last.is_empty() {
            String::new()
        } else {
            format!(" (verifier: {last})")
        },
        source: err,
    })
}

/// A descriptor the bpf syscall returned (a `long`) as the `int` it is.
fn raw_fd(fd: libc::c_long) -> RawFd {
    RawFd::try_from(fd).expect("the kernel returns descriptors as int")
}

/// An open descriptor as the `__u32` field of `union bpf_attr`.
fn fd_u32(fd: &impl AsRawFd) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("an open descriptor is not negative")
}

fn open_dir(dir: &Path) -> Result<std::fs::File, DevicesError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(|source| DevicesError::Open {
            path: dir.to_path_buf(),
            source,
        })
}

/// Loads the program allowing `rules` and attaches it to the v2 cgroup `dir`, as runc does,
/// with `BPF_F_ALLOW_MULTI`: a runtime nested beneath may attach its own programs, and the
/// kernel allows an access only when every program on the way up allows it, so they can
/// only narrow this list. It stays attached until the cgroup is removed.
pub fn attach(dir: &Path, rules: &[Rule]) -> Result<(), DevicesError> {
    let cgroup = open_dir(dir)?;
    let prog = load(&program(rules))?;
    let mut attr = ProgAttach {
        target_fd: fd_u32(&cgroup),
        attach_bpf_fd: fd_u32(&prog),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|source| DevicesError::Bpf {
        path: dir.to_path_buf(),
        op: "BPF_PROG_ATTACH",
        source,
    })?;
    tracing::debug!(cgroup = %dir.display(), rules = rules.len(), "device program attached");
    Ok(())
}

/// How many device programs are attached to the v2 cgroup `dir` itself.
pub fn attached(dir: &Path) -> Result<u32, DevicesError> {
    let cgroup = open_dir(dir)?;
    let mut attr = ProgQuery {
        target_fd: fd_u32(&cgroup),
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr).map_err(|source| DevicesError::Bpf {
        path: dir.to_path_buf(),
        op: "BPF_PROG_QUERY",
        source,
    })?;
    Ok(attr.prog_cnt)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `code` in rbpf's interpreter on a device context, as the kernel would.
    fn run(code: &[u8], kind: u32, major: u32, minor: u32, access: u32) -> u64 {
        let mut ctx = Vec::new();
        ctx.extend_from_slice(&(kind | access << 16).to_ne_bytes());
        ctx.extend_from_slice(&major.to_ne_bytes());
        ctx.extend_from_slice(&minor.to_ne_bytes());
        let vm = rbpf::EbpfVmRaw::new(Some(code)).unwrap();
        vm.execute_program(&mut ctx).unwrap()
    }

    #[test]
    fn parses_the_table_and_refuses_bad_lines() {
        assert_eq!(
            Rule::parse("c 136:* rwm").unwrap(),
            Rule {
                kind: DEV_CHAR,
                major: Some(136),
                minor: None,
                access: 7
            }
        );
        assert_eq!(Rule::parse("b *:* m").unwrap().access, ACC_MKNOD);
        for bad in [
            "a",
            "c 1:3",
            "x 1:3 rwm",
            "c 1-3 rwm",
            "c 1:3 rwx",
            "c a:3 r",
        ] {
            let e = Rule::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(default_rules().len(), DEFAULT_DEVICES.len());
    }

    #[test]
    fn default_program_allows_docker_list_only() {
        let code = program(&default_rules());
        let rw = ACC_READ | ACC_WRITE;
        // The allowed nodes, read and written.
        for (major, minor) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
            (136, 0),
            (136, 7),
            (10, 200),
        ] {
            assert_eq!(
                run(&code, DEV_CHAR, major, minor, rw),
                1,
                "c {major}:{minor}"
            );
            assert_eq!(run(&code, DEV_CHAR, major, minor, ACC_READ), 1);
        }
        // Making any node, character or block.
        assert_eq!(run(&code, DEV_CHAR, 1, 11, ACC_MKNOD), 1);
        assert_eq!(run(&code, DEV_BLOCK, 8, 0, ACC_MKNOD), 1);
        // Opening anything else: kmsg, mem, a disk, a neighbour of tun, null as a block device.
        for (kind, major, minor) in [
            (DEV_CHAR, 1, 11),
            (DEV_CHAR, 1, 1),
            (DEV_BLOCK, 8, 0),
            (DEV_CHAR, 10, 201),
            (DEV_CHAR, 4, 1),
            (DEV_BLOCK, 1, 3),
        ] {
            assert_eq!(
                run(&code, kind, major, minor, ACC_READ),
                0,
                "{major}:{minor}"
            );
            assert_eq!(run(&code, kind, major, minor, ACC_WRITE), 0);
        }
        // Reading kmsg together with making it: not a subset of "m".
        assert_eq!(run(&code, DEV_CHAR, 1, 11, ACC_MKNOD | ACC_READ), 0);
    }

    #[test]
    fn rules_match_on_every_field() {
        let r = |l: &str| Rule::parse(l).unwrap();
        let code = program(&[r("c 4:* r"), r("b 7:2 w")]);
        assert_eq!(run(&code, DEV_CHAR, 4, 99, ACC_READ), 1);
        assert_eq!(run(&code, DEV_CHAR, 4, 99, ACC_WRITE), 0);
        assert_eq!(run(&code, DEV_BLOCK, 4, 99, ACC_READ), 0);
        assert_eq!(run(&code, DEV_BLOCK, 7, 2, ACC_WRITE), 1);
        assert_eq!(run(&code, DEV_BLOCK, 7, 3, ACC_WRITE), 0);
        assert_eq!(run(&code, DEV_BLOCK, 8, 2, ACC_WRITE), 0);
        // No rules: nothing at all.
        assert_eq!(run(&program(&[]), DEV_CHAR, 1, 3, ACC_READ), 0);
    }
}
