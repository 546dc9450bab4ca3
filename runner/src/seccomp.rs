//! Seccomp profiles in docker's JSON format, docker's default profile (written here as tables of
//! the syscalls it allows and under which capability or architecture), and loading a profile
//! through libseccomp, which compiles it for the native architecture and its companions.

use std::collections::HashSet;

use caps::{Capability, CapsHashSet};
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};
use serde::Deserialize;

/// A profile as docker's `--security-opt seccomp=FILE` takes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// `SCMP_ACT_*` for syscalls no rule matches.
    pub default_action: String,
    /// Errno of an `SCMP_ACT_ERRNO` default action (EPERM when absent).
    #[serde(default)]
    pub default_errno_ret: Option<i32>,
    /// Architectures the filter covers, with their companions (x86_64 with x86 and x32).
    #[serde(default)]
    pub arch_map: Option<Vec<ArchMap>>,
    /// Plain list of architectures (older profiles).
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    /// The rules.
    #[serde(default)]
    pub syscalls: Option<Vec<Rule>>,
}

/// One entry of `archMap`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    /// `SCMP_ARCH_*`.
    pub architecture: String,
    /// Companion architectures.
    #[serde(default)]
    pub sub_architectures: Option<Vec<String>>,
}

/// A rule: an action for a list of syscalls, possibly only for some arguments, capabilities,
/// architectures or kernels.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Syscall names.
    #[serde(default)]
    pub names: Vec<String>,
    /// A single syscall name (older profiles).
    #[serde(default)]
    pub name: Option<String>,
    /// `SCMP_ACT_*`.
    pub action: String,
    /// Errno of an `SCMP_ACT_ERRNO` action.
    #[serde(default)]
    pub errno_ret: Option<i32>,
    /// Argument conditions, all of which must hold.
    #[serde(default)]
    pub args: Option<Vec<Arg>>,
    /// The rule applies only when all of these hold.
    #[serde(default)]
    pub includes: Condition,
    /// The rule does not apply when any of these holds.
    #[serde(default)]
    pub excludes: Condition,
}

/// A comparison of one syscall argument.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    /// Argument index.
    pub index: u32,
    /// Value (the mask for `SCMP_CMP_MASKED_EQ`).
    pub value: u64,
    /// Second value (what the masked argument must equal).
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_*`.
    pub op: String,
}

/// Conditions of `includes`/`excludes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Architectures in docker's (Go) names: amd64, x86, x32, arm64, ...
    #[serde(default)]
    pub arches: Option<Vec<String>>,
    /// Capabilities (`CAP_` names).
    #[serde(default)]
    pub caps: Option<Vec<String>>,
    /// Minimum kernel version (`major.minor`).
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// Errors compiling or loading a profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A field of the profile that libseccomp does not accept.
    #[error("seccomp profile: {what}: {source}")]
    Invalid {
        /// The field.
        what: String,
        /// The cause.
        #[source]
        source: libseccomp::error::SeccompError,
    },
}

impl Profile {
    /// Parses docker's JSON format.
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// Where the filter runs: the native architecture in docker's names, the capabilities the
/// container has and the kernel version.
#[derive(Debug, Clone)]
pub struct Target {
    /// docker's name of the architecture (amd64, arm64, ...).
    pub arch: String,
    /// The container's capabilities.
    pub caps: CapsHashSet,
    /// Kernel (major, minor).
    pub kernel: (u32, u32),
}

impl Target {
    /// This machine, for a container with `caps`.
    pub fn native(caps: CapsHashSet) -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "x86",
            "aarch64" => "arm64",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            arch: arch.to_string(),
            caps,
            kernel: kernel_version(&release).unwrap_or((0, 0)),
        }
    }
}

fn kernel_version(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

impl Condition {
    fn holds_all(&self, t: &Target) -> bool {
        self.arches.as_ref().is_none_or(|a| a.contains(&t.arch))
            && self
                .caps
                .as_ref()
                .is_none_or(|c| c.iter().all(|n| has(t, n)))
            && self
                .min_kernel
                .as_ref()
                .is_none_or(|k| kernel_version(k).is_some_and(|k| t.kernel >= k))
    }

    fn holds_any(&self, t: &Target) -> bool {
        self.arches.as_ref().is_some_and(|a| a.contains(&t.arch))
            || self
                .caps
                .as_ref()
                .is_some_and(|c| c.iter().any(|n| has(t, n)))
            || self
                .min_kernel
                .as_ref()
                .is_some_and(|k| kernel_version(k).is_some_and(|k| t.kernel >= k))
    }
}

fn has(t: &Target, name: &str) -> bool {
    name.parse::<Capability>()
        .is_ok_and(|c| t.caps.contains(&c))
}

impl Rule {
    /// Whether the rule is part of the filter for `t`.
    pub fn applies(&self, t: &Target) -> bool {
        self.includes.holds_all(t) && !self.excludes.holds_any(t)
    }

    fn all_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().chain(&self.name).map(String::as_str)
    }
}

fn action(name: &str, errno: Option<i32>) -> Result<ScmpAction, SeccompError> {
    let errno = errno.or(name.contains("ERRNO").then_some(libc::EPERM));
    ScmpAction::from_str(name, errno).map_err(|source| SeccompError::Invalid {
        what: format!("action {name}"),
        source,
    })
}

fn compare(a: &Arg) -> Result<ScmpArgCompare, SeccompError> {
    let op =
        a.op.parse::<ScmpCompareOp>()
            .map_err(|source| SeccompError::Invalid {
                what: format!("op {}", a.op),
                source,
            })?;
    Ok(match op {
        ScmpCompareOp::MaskedEqual(_) => {
            ScmpArgCompare::new(a.index, ScmpCompareOp::MaskedEqual(a.value), a.value_two)
        }
        op => ScmpArgCompare::new(a.index, op, a.value),
    })
}

fn arch(name: &str) -> Result<ScmpArch, SeccompError> {
    name.parse::<ScmpArch>()
        .map_err(|source| SeccompError::Invalid {
            what: format!("architecture {name}"),
            source,
        })
}

/// Compiles `profile` for `t` into a libseccomp filter (not yet loaded). The filter does not
/// set `no_new_privs` itself: whether it is set is the container's `no-new-privileges` option.
pub fn compile(profile: &Profile, t: &Target) -> Result<ScmpFilterContext, SeccompError> {
    let inv = |what: &str| {
        let what = what.to_string();
        move |source| SeccompError::Invalid { what, source }
    };
    let default = action(&profile.default_action, profile.default_errno_ret)?;
    let mut ctx = ScmpFilterContext::new(default).map_err(inv("creating the filter"))?;
    ctx.set_ctl_nnp(false)
        .map_err(inv("no_new_privs attribute"))?;
    let native = ScmpArch::native();
    let mut arches: Vec<ScmpArch> = Vec::new();
    for m in profile.arch_map.iter().flatten() {
        if arch(&m.architecture)? == native {
            for s in m.sub_architectures.iter().flatten() {
                arches.push(arch(s)?);
            }
        }
    }
    for a in profile.architectures.iter().flatten() {
        arches.push(arch(a)?);
    }
    for a in arches.into_iter().filter(|a| *a != native) {
        ctx.add_arch(a).map_err(inv("adding an architecture"))?;
    }
    let mut unconditional: HashSet<(String, String)> = HashSet::new();
    for rule in profile.syscalls.iter().flatten().filter(|r| r.applies(t)) {
        let act = action(&rule.action, rule.errno_ret)?;
        if act == default {
            continue;
        }
        let args = rule
            .args
            .iter()
            .flatten()
            .map(compare)
            .collect::<Result<Vec<_>, _>>()?;
        for name in rule.all_names() {
            // Names of other architectures (chown32 on x86_64) that libseccomp does not
            // know at all are skipped, as docker skips them.
            let Ok(sc) = libseccomp::ScmpSyscall::from_name(name) else {
                tracing::debug!(syscall = name, "unknown syscall in seccomp profile");
                continue;
            };
            if args.is_empty() && !unconditional.insert((name.to_string(), rule.action.clone())) {
                continue;
            }
            ctx.add_rule_conditional(act, sc, &args)
                .map_err(inv(&format!("rule for {name}")))?;
        }
    }
    Ok(ctx)
}

/// Compiles and loads `profile` into the calling process.
pub(crate) fn load(profile: &Profile, t: &Target) -> Result<(), SeccompError> {
    compile(profile, t)?
        .load()
        .map_err(|source| SeccompError::Invalid {
            what: "loading the filter".into(),
            source,
        })
}

/// Syscalls docker's default profile allows to every container.
const ALLOWED: &str = "\
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32 \
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64 \
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 \
dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait \
epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 \
fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchown fchown32 fchownat fcntl \
fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 \
fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_time64 futex_waitv \
futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid \
getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid \
getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list \
getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 \
getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl \
io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup \
io_submit io_uring_enter io_uring_register io_uring_setup ipc kill landlock_add_rule \
landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen \
listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier \
memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 \
mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend \
mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall \
munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open \
pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl \
pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev \
pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 \
recvmsg remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq \
rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend \
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr \
sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler \
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr \
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop \
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 \
setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority \
setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit \
set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32 setxattr \
shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn \
socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync \
sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun \
timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime \
timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit \
umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4 \
waitid waitpid write writev";

/// Syscalls allowed only to containers holding a capability.
const BY_CAPABILITY: &[(&str, &str)] = &[
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    (
        "CAP_SYS_ADMIN",
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount \
         mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname \
         sethostname setns syslog umount umount2 unshare",
    ),
    ("CAP_SYS_BOOT", "reboot"),
    ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module init_module finit_module"),
    ("CAP_SYS_PACCT", "acct"),
    (
        "CAP_SYS_PTRACE",
        "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    ),
    ("CAP_SYS_RAWIO", "iopl ioperm"),
    (
        "CAP_SYS_TIME",
        "settimeofday stime clock_settime clock_settime64",
    ),
    ("CAP_SYS_TTY_CONFIG", "vhangup"),
    (
        "CAP_SYS_NICE",
        "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    ),
    ("CAP_SYSLOG", "syslog"),
    ("CAP_BPF", "bpf"),
    ("CAP_PERFMON", "perf_event_open"),
];

/// Syscalls allowed only on some architectures (docker's names, space-separated).
const BY_ARCH: &[(&str, &str)] = &[
    ("ppc64le", "sync_file_range2 swapcontext"),
    (
        "arm arm64",
        "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls",
    ),
    ("amd64 x32", "arch_prctl"),
    ("amd64 x32 x86", "modify_ldt"),
    (
        "s390 s390x",
        "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr",
    ),
    ("riscv64", "riscv_flush_icache"),
];

/// `personality(2)` personas the default profile allows: PER_LINUX, UNAME26, PER_LINUX32,
/// UNAME26|PER_LINUX32, and the query 0xffffffff.
const PERSONAS: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Every CLONE_NEW* namespace flag: without CAP_SYS_ADMIN, clone may set none of them.
const CLONE_NAMESPACES: u64 = 0x7e02_0000;

/// AF_VSOCK, the one socket family the default profile refuses.
const AF_VSOCK: u64 = 40;

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn allow(names: &str) -> Rule {
    Rule {
        names: words(names),
        action: "SCMP_ACT_ALLOW".into(),
        ..Rule::default()
    }
}

fn arg(index: u32, op: &str, value: u64, value_two: u64) -> Option<Vec<Arg>> {
    Some(vec![Arg {
        index,
        value,
        value_two,
        op: op.into(),
    }])
}

fn only(arches: &[&str], caps: &[&str]) -> Condition {
    let list = |v: &[&str]| (!v.is_empty()).then(|| v.iter().map(|s| s.to_string()).collect());
    Condition {
        arches: list(arches),
        caps: list(caps),
        min_kernel: None,
    }
}

/// docker's default profile: ERRNO(EPERM) for everything not allowed.
pub fn default_profile() -> Profile {
    let mut rules = vec![allow(ALLOWED)];
    rules.push(Rule {
        includes: Condition {
            min_kernel: Some("4.8".into()),
            ..Condition::default()
        },
        ..allow("process_vm_readv process_vm_writev ptrace")
    });
    rules.push(Rule {
        args: arg(0, "SCMP_CMP_NE", AF_VSOCK, 0),
        ..allow("socket")
    });
    for p in PERSONAS {
        rules.push(Rule {
            args: arg(0, "SCMP_CMP_EQ", p, 0),
            ..allow("personality")
        });
    }
    for (arches, names) in BY_ARCH {
        rules.push(Rule {
            includes: only(&arches.split(' ').collect::<Vec<_>>(), &[]),
            ..allow(names)
        });
    }
    for (cap, names) in BY_CAPABILITY {
        rules.push(Rule {
            includes: only(&[], &[cap]),
            ..allow(names)
        });
    }
    // clone's flags are its first argument, except on s390 where they are the second.
    rules.push(Rule {
        args: arg(0, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACES, 0),
        excludes: only(&["s390", "s390x"], &["CAP_SYS_ADMIN"]),
        ..allow("clone")
    });
    rules.push(Rule {
        args: arg(1, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACES, 0),
        includes: only(&["s390", "s390x"], &[]),
        excludes: only(&[], &["CAP_SYS_ADMIN"]),
        ..allow("clone")
    });
    // clone3's flags are in memory a filter cannot read: ENOSYS makes libc fall back to clone.
    rules.push(Rule {
        names: words("clone3"),
        action: "SCMP_ACT_ERRNO".into(),
        errno_ret: Some(libc::ENOSYS),
        excludes: only(&[], &["CAP_SYS_ADMIN"]),
        ..Rule::default()
    });
    Profile {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno_ret: Some(libc::EPERM),
        arch_map: Some(vec![
            arch_map("SCMP_ARCH_X86_64", &["SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
            arch_map("SCMP_ARCH_AARCH64", &["SCMP_ARCH_ARM"]),
            arch_map("SCMP_ARCH_S390X", &["SCMP_ARCH_S390"]),
            arch_map("SCMP_ARCH_RISCV64", &[]),
        ]),
        architectures: None,
        syscalls: Some(rules),
    }
}

fn arch_map(main: &str, subs: &[&str]) -> ArchMap {
    ArchMap {
        architecture: main.into(),
        sub_architectures: Some(subs.iter().map(|s| s.to_string()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(p: &Profile, t: &Target) -> Vec<(String, bool)> {
        p.syscalls
            .iter()
            .flatten()
            .filter(|r| r.applies(t))
            .flat_map(|r| {
                let conditional = r.args.is_some();
                r.all_names()
                    .filter(move |_| r.action == "SCMP_ACT_ALLOW")
                    .map(move |n| (n.to_string(), conditional))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn target(caps: &[Capability]) -> Target {
        Target {
            arch: "amd64".into(),
            caps: caps.iter().copied().collect(),
            kernel: (6, 1),
        }
    }

    #[test]
    fn default_profile_conditions() {
        let p = default_profile();
        let plain = allowed(&p, &target(&crate::security::DEFAULT_CAPS));
        let has = |list: &[(String, bool)], n: &str, cond: bool| {
            list.iter().any(|(x, c)| x == n && *c == cond)
        };
        assert!(has(&plain, "read", false));
        assert!(has(&plain, "arch_prctl", false));
        assert!(has(&plain, "chroot", false), "CAP_SYS_CHROOT is a default");
        assert!(has(&plain, "ptrace", false), "kernel >= 4.8");
        assert!(has(&plain, "clone", true));
        assert!(!has(&plain, "clone", false));
        for refused in [
            "mount", "unshare", "setns", "keyctl", "add_key", "reboot", "syslog",
        ] {
            assert!(!plain.iter().any(|(n, _)| n == refused), "{refused}");
        }
        assert!(!plain.iter().any(|(n, _)| n == "set_tls"), "arm only");
        let admin = allowed(&p, &target(&[Capability::CAP_SYS_ADMIN]));
        assert!(has(&admin, "mount", false));
        assert!(has(&admin, "clone", false));
        assert!(!has(&admin, "clone", true));
        assert!(!has(&admin, "chroot", false));
        let old = Target {
            kernel: (4, 4),
            ..target(&[])
        };
        assert!(!allowed(&p, &old).iter().any(|(n, _)| n == "ptrace"));
    }

    #[test]
    fn parses_docker_format_and_versions() {
        let p = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
                "syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW",
                "args":[{"index":0,"value":3,"valueTwo":0,"op":"SCMP_CMP_EQ"}],
                "includes":{"minKernel":"5.1"},"excludes":{"caps":["CAP_SYS_ADMIN"]}}]}"#,
        )
        .unwrap();
        let r = &p.syscalls.as_ref().unwrap()[0];
        assert!(r.applies(&target(&[])));
        assert!(!r.applies(&target(&[Capability::CAP_SYS_ADMIN])));
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert!(Profile::parse(r#"{"syscalls":[]}"#).is_err());
    }

    #[test]
    fn default_profile_compiles() {
        let t = Target::native(crate::security::DEFAULT_CAPS.into_iter().collect());
        compile(&default_profile(), &t).unwrap();
        let all = Target::native(caps::all());
        compile(&default_profile(), &all).unwrap();
    }
}
