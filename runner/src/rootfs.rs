//! Preparing a container's root filesystem: every privileged call goes through [`Kernel`], so
//! the sequence (what is mounted where, in which order, that targets stay inside the root) is
//! unit-tested without root against a recording fake. Plain file creation inside the rootfs
//! directory stays real: the fake runs it in a temporary directory.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::inroot::{InRoot, resolve_in};
use crate::kernel::{Fail, Kernel, ctx, fail, mount_at};
use crate::masks::DEFAULT_NODES;
use crate::{Network, Spec};

/// A file to bind something onto (created empty if missing), resolved inside `root`.
fn file_target(root: &Path, path: &str) -> Result<PathBuf, Fail> {
    let r = ctx(InRoot::open(root), || "opening the container root".into())?;
    ctx(r.make_file(Path::new(path)), || {
        format!("creating {path} in the container")
    })
}

/// The directory `path` inside `root`, created if missing.
fn dir_target(root: &Path, path: &str) -> Result<PathBuf, Fail> {
    ctx(resolve_in(root, Path::new(path), true), || {
        format!("creating {path} in the container")
    })
}

fn setup_dev(k: &mut impl Kernel, root: &Path, privileged: bool) -> Result<(), Fail> {
    let dev = dir_target(root, "dev")?;
    mount_at(
        k,
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    // Fresh nodes in the container's own tmpfs, as runc makes them: a bind of the host's
    // nodes let the container's root chmod or chown the host's /dev/null.
    for (name, major, minor) in DEFAULT_NODES {
        let rdev = nix::sys::stat::makedev(major, minor);
        ctx(
            k.mknod(&dev.join(name), libc::S_IFCHR | 0o666, rdev),
            || format!("creating /dev/{name}"),
        )?;
    }
    let pts = dev.join("pts");
    ctx(std::fs::create_dir(&pts), || "creating /dev/pts".into())?;
    mount_at(
        k,
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    ctx(std::fs::create_dir(&shm), || "creating /dev/shm".into())?;
    mount_at(
        k,
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(std::os::unix::fs::symlink(to, dev.join(link)), || {
            format!("creating /dev/{link}")
        })?;
    }
    if privileged {
        crate::masks::host_devices(k, Path::new("/dev"), &dev, 0)?;
    }
    Ok(())
}

/// Prepares the root filesystem of `spec` and pivots into it, through `k`.
pub(crate) fn setup_rootfs(k: &mut impl Kernel, spec: &Spec) -> Result<(), Fail> {
    let root = &spec.rootfs;
    mount_at(
        k,
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    mount_at(
        k,
        Some(&root.to_string_lossy()),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    mount_kernel_filesystems(k, root, spec.security.privileged)?;
    bind_etc_files(k, spec)?;
    for b in &spec.binds {
        bind_volume(k, root, b)?;
    }
    if spec.network == Network::None {
        ctx(k.loopback_up(), || "bringing up loopback".into())?;
    }
    ctx(k.sethostname(&spec.hostname), || {
        "setting the hostname".into()
    })?;
    pivot_into(k, root)
}

/// /proc, /dev and /sys in the container; without `privileged`, /sys read-only and docker's
/// masked paths hidden.
fn mount_kernel_filesystems(
    k: &mut impl Kernel,
    root: &Path,
    privileged: bool,
) -> Result<(), Fail> {
    let proc_dir = dir_target(root, "proc")?;
    mount_at(
        k,
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    setup_dev(k, root, privileged)?;
    let sys_dir = dir_target(root, "sys")?;
    let mut ro = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !privileged {
        ro |= MsFlags::MS_RDONLY;
    }
    if k.mount(Some("sysfs"), &sys_dir, Some("sysfs"), ro, None)
        .is_err()
    {
        // A new sysfs needs a network namespace of our own; otherwise bind the host's.
        mount_at(
            k,
            Some("/sys"),
            &sys_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        mount_at(
            k,
            None,
            &sys_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro,
            None,
        )?;
    }
    if !privileged {
        crate::masks::mask_paths(k, root)?;
    }
    Ok(())
}

/// /etc/hosts, /etc/resolv.conf and /etc/hostname written in the container's state directory
/// and bound over the image's files (as docker does).
fn bind_etc_files(k: &mut impl Kernel, spec: &Spec) -> Result<(), Fail> {
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
        spec.hostname
    );
    let resolv = match spec.network {
        Network::Host => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        Network::None => String::new(),
    };
    for (name, content) in [
        ("hosts", hosts),
        ("resolv.conf", resolv),
        ("hostname", format!("{}\n", spec.hostname)),
    ] {
        let host_file = spec.state_dir.join(name);
        ctx(std::fs::write(&host_file, content), || {
            format!("writing {}", host_file.display())
        })?;
        let target = file_target(&spec.rootfs, &format!("etc/{name}"))?;
        mount_at(
            k,
            Some(&host_file.to_string_lossy()),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    Ok(())
}

/// A `-v SRC:DST[:ro]` bind: a directory or a file, made read-only after binding if asked.
fn bind_volume(k: &mut impl Kernel, root: &Path, b: &crate::Bind) -> Result<(), Fail> {
    let is_dir = std::fs::metadata(&b.source)
        .map(|m| m.is_dir())
        .map_err(|e| fail(format!("bind source {}: {e}", b.source.display())))?;
    let target = if is_dir {
        dir_target(root, &b.target)?
    } else {
        file_target(root, &b.target)?
    };
    mount_at(
        k,
        Some(&b.source.to_string_lossy()),
        &target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    if b.readonly {
        mount_at(
            k,
            None,
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// pivot_root into `root` and detach the old root, leaving the process in the new `/`.
fn pivot_into(k: &mut impl Kernel, root: &Path) -> Result<(), Fail> {
    ctx(k.chdir(root), || format!("entering {}", root.display()))?;
    ctx(k.pivot_root_here(), || "pivot_root".into())?;
    ctx(k.umount_detach(Path::new(".")), || {
        "detaching the old root".into()
    })?;
    ctx(k.chdir(Path::new("/")), || "entering /".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every call as a line; mounts of `fail_on` fail.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail_on: Option<&'static str>,
    }

    impl Kernel for Recorder {
        fn mount(
            &mut self,
            src: Option<&str>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            _data: Option<&str>,
        ) -> nix::Result<()> {
            let ro = if flags.contains(MsFlags::MS_RDONLY) {
                " ro"
            } else {
                ""
            };
            let kind = match fstype {
                Some(t) => t.to_string(),
                None if flags.contains(MsFlags::MS_REMOUNT) => "remount".into(),
                None if flags.contains(MsFlags::MS_BIND) => "bind".into(),
                None => "propagation".into(),
            };
            self.calls.push(format!(
                "mount {kind} {} -> {}{ro}",
                src.unwrap_or("-"),
                target.display()
            ));
            if self.fail_on.is_some_and(|f| Some(f) == fstype) {
                return Err(nix::errno::Errno::EPERM);
            }
            Ok(())
        }
        fn umount_detach(&mut self, target: &Path) -> nix::Result<()> {
            self.calls.push(format!("umount {}", target.display()));
            Ok(())
        }
        fn pivot_root_here(&mut self) -> nix::Result<()> {
            self.calls.push("pivot_root".into());
            Ok(())
        }
        fn chdir(&mut self, dir: &Path) -> nix::Result<()> {
            self.calls.push(format!("chdir {}", dir.display()));
            Ok(())
        }
        fn sethostname(&mut self, name: &str) -> nix::Result<()> {
            self.calls.push(format!("hostname {name}"));
            Ok(())
        }
        fn loopback_up(&mut self) -> std::io::Result<()> {
            self.calls.push("lo up".into());
            Ok(())
        }
        fn mknod(&mut self, path: &Path, mode: u32, rdev: u64) -> nix::Result<()> {
            self.calls
                .push(format!("mknod {} {mode:o} {rdev}", path.display()));
            Ok(())
        }
    }

    fn spec(root: &Path, state: &Path, binds: Vec<crate::Bind>, network: Network) -> Spec {
        Spec {
            rootfs: root.to_path_buf(),
            args: vec!["sh".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            hostname: "box".into(),
            network,
            binds,
            state_dir: state.to_path_buf(),
            ..Spec::default()
        }
    }

    #[test]
    fn mount_sequence_in_order_and_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        let state = dir.path().join("state");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        // An image symlink that points outside: the bind must still land inside the root.
        std::os::unix::fs::symlink("/var/escape", root.join("data")).unwrap();
        let host = dir.path().join("host");
        std::fs::create_dir(&host).unwrap();
        let binds = vec![crate::Bind {
            source: host.clone(),
            target: "/data/x".into(),
            readonly: true,
        }];
        let mut k = Recorder::default();
        setup_rootfs(&mut k, &spec(&root, &state, binds, Network::None)).unwrap();
        let r = root.display().to_string();
        let h = host.display().to_string();
        let want = [
            "mount propagation - -> /".to_string(),
            format!("mount bind {r} -> {r}"),
            format!("mount proc proc -> {r}/proc"),
            format!("mount tmpfs tmpfs -> {r}/dev"),
        ];
        assert_eq!(&k.calls[..4], &want[..]);
        let pos = |s: &str| {
            k.calls
                .iter()
                .position(|c| c == s)
                .unwrap_or_else(|| panic!("no {s:?} in {:#?}", k.calls))
        };
        assert!(pos(&format!("mount devpts devpts -> {r}/dev/pts")) > 3);
        assert!(
            k.calls
                .contains(&format!("mount sysfs sysfs -> {r}/sys ro"))
        );
        assert!(k.calls.contains(&format!(
            "mount bind {}/hosts -> {r}/etc/hosts",
            state.display()
        )));
        let bind = pos(&format!("mount bind {h} -> {r}/var/escape/x"));
        assert_eq!(
            k.calls[bind + 1],
            format!("mount remount - -> {r}/var/escape/x ro")
        );
        assert!(!Path::new("/var/escape").exists());
        let tail: Vec<&str> = k.calls[k.calls.len() - 6..]
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            [
                "lo up",
                "hostname box",
                &format!("chdir {r}"),
                "pivot_root",
                "umount .",
                "chdir /"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(state.join("hostname")).unwrap(),
            "box\n"
        );
    }

    #[test]
    fn sysfs_falls_back_to_a_read_only_bind() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(&root).unwrap();
        let mut k = Recorder {
            fail_on: Some("sysfs"),
            ..Recorder::default()
        };
        setup_rootfs(&mut k, &spec(&root, dir.path(), vec![], Network::Host)).unwrap();
        let r = root.display().to_string();
        assert!(k.calls.contains(&format!("mount bind /sys -> {r}/sys")));
        assert!(k.calls.contains(&format!("mount remount - -> {r}/sys ro")));
        assert!(!k.calls.contains(&"lo up".to_string()));
    }

    #[test]
    fn masks_and_read_only_paths_unless_privileged() {
        let dir = tempfile::tempdir().unwrap();
        // Stand-ins for what the kernel's proc and sysfs hold.
        let fake = |name: &str| {
            let root = dir.path().join(name);
            std::fs::create_dir_all(root.join("proc/sys")).unwrap();
            std::fs::create_dir_all(root.join("proc/acpi")).unwrap();
            std::fs::create_dir_all(root.join("sys/firmware")).unwrap();
            std::fs::write(root.join("proc/kcore"), b"").unwrap();
            root
        };
        let root = fake("rootfs");
        let r = root.display().to_string();
        let mut k = Recorder::default();
        setup_rootfs(&mut k, &spec(&root, dir.path(), vec![], Network::Host)).unwrap();
        for want in [
            format!("mount bind {r}/dev/null -> {r}/proc/kcore"),
            format!("mount tmpfs tmpfs -> {r}/proc/acpi ro"),
            format!("mount tmpfs tmpfs -> {r}/sys/firmware ro"),
            format!("mount bind {r}/proc/sys -> {r}/proc/sys"),
            format!("mount remount - -> {r}/proc/sys ro"),
            format!("mount sysfs sysfs -> {r}/sys ro"),
        ] {
            assert!(k.calls.contains(&want), "{want} not in {:#?}", k.calls);
        }
        assert!(!k.calls.iter().any(|c| c.contains("/proc/keys")));
        // Only the default nodes, made fresh (never a bind of the host's): the host's other
        // devices only when privileged.
        let nodes: Vec<_> = k.calls.iter().filter(|c| c.starts_with("mknod")).collect();
        assert_eq!(nodes.len(), 6, "{nodes:#?}");
        assert!(nodes.iter().any(|c| c.contains("/dev/null")), "{nodes:#?}");
        assert!(
            !k.calls.iter().any(|c| c.starts_with("mount bind /dev/")),
            "no host node is bound into the container: {:#?}",
            k.calls
        );
        let pivot = k.calls.iter().position(|c| c == "pivot_root").unwrap();
        let last_mask = k
            .calls
            .iter()
            .rposition(|c| c.contains("/proc/sys"))
            .unwrap();
        assert!(last_mask < pivot);
        let root = fake("privileged");
        let r = root.display().to_string();
        let mut privileged = spec(&root, dir.path(), vec![], Network::Host);
        privileged.security.privileged = true;
        let mut k = Recorder::default();
        setup_rootfs(&mut k, &privileged).unwrap();
        assert!(
            !k.calls
                .iter()
                .any(|c| c.contains("/proc/kcore") || c.contains("/proc/sys"))
        );
        assert!(k.calls.contains(&format!("mount sysfs sysfs -> {r}/sys")));
        // The host's other devices are made in the container's /dev; null is made once.
        let mknod = |name: &str| format!("mknod {r}/dev/{name} ");
        if Path::new("/dev/kmsg").exists() {
            assert!(
                k.calls.iter().any(|c| c.starts_with(&mknod("kmsg"))),
                "{:#?}",
                k.calls
            );
        }
        let nulls = k.calls.iter().filter(|c| c.starts_with(&mknod("null")));
        assert_eq!(nulls.count(), 1, "{:#?}", k.calls);
        assert!(!k.calls.iter().any(|c| c.starts_with(&mknod("pts/"))));
    }
}
