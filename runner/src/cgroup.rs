//! A container's cgroups: created beneath the cgroup strata itself runs in (per controller on
//! cgroup v1, in the unified tree on v2), with its memory, CPU and pids limits and docker's
//! default device list (the v1 devices cgroup; an eBPF program, [`crate::devices`], on the
//! container's v2 cgroup wherever a v2 hierarchy is mounted, hybrid hosts included). Only the container's own PID 1 ever joins them; strata's
//! processes stay where they started. Removed when the container ends.
//!
//! A small module rather than a crate: the crates that manage cgroups create them at paths
//! relative to the hierarchy's root, while strata's containers belong beneath each
//! controller's own cgroup of the calling process, which differ per controller on v1.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Resource limits, as docker's `HostConfig` names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Resources {
    /// Memory limit in bytes (`--memory`); 0: none.
    pub memory: i64,
    /// CPU quota in billionths of a CPU (`--cpus`); 0: none.
    pub nano_cpus: i64,
    /// Maximum number of processes (`--pids-limit`); 0 or negative: none.
    pub pids_limit: i64,
}

/// Errors creating or removing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be written or a directory made.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A controller a limit needs is not available.
    #[error("cgroup controller {0} is not available beneath strata's cgroup")]
    Missing(String),
    /// The v2 device program could not be attached.
    #[error(transparent)]
    Devices(#[from] crate::devices::DevicesError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where cgroups are: `/sys/fs/cgroup`, `/proc/self/cgroup`, `/proc/self/mountinfo` (tests
/// point these at fakes).
#[derive(Debug, Clone)]
pub struct Host {
    /// The cgroup mount root.
    pub root: PathBuf,
    /// Contents of /proc/self/cgroup.
    pub own: String,
    /// Contents of /proc/self/mountinfo.
    pub mountinfo: String,
}

impl Host {
    /// This process.
    pub fn current() -> Self {
        Self {
            root: PathBuf::from("/sys/fs/cgroup"),
            own: std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
            mountinfo: std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        }
    }

    fn unified(&self) -> bool {
        self.mountinfo.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&self.root.to_str().unwrap_or("")) && l.contains(" - cgroup2 ")
        })
    }

    /// The directory of `controller`'s cgroup this process is in (v1), or of its unified
    /// cgroup (`controller` ignored on a pure v2 host; `""` asks for the unified cgroup on a
    /// hybrid host too, where v2 is mounted beside the v1 controllers, e.g. at
    /// `/sys/fs/cgroup/unified`).
    pub fn own_dir(&self, controller: &str) -> Option<PathBuf> {
        if controller.is_empty() || self.unified() {
            return self.own_v2_dir();
        }
        let path = self.own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls.split(',').any(|c| c == controller).then_some(path)
        })?;
        // The v1 mount holding the controller, and the cgroup path its root corresponds to.
        let (mount_root, mount_point) = self.mountinfo.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut post = post.split(' ');
            if post.next()? != "cgroup" {
                return None;
            }
            let opts = post.nth(1)?;
            opts.split(',').any(|o| o == controller).then_some(())?;
            let f: Vec<&str> = pre.split(' ').collect();
            Some((f.get(3)?.to_string(), f.get(4)?.to_string()))
        })?;
        let rel = Path::new(path).strip_prefix(&mount_root).ok()?;
        Some(Path::new(&mount_point).join(rel))
    }

    /// This process's cgroup in the v2 hierarchy (`0::PATH`), beneath the hierarchy's mount:
    /// `root` itself on a pure v2 host, else the first cgroup2 mount.
    fn own_v2_dir(&self) -> Option<PathBuf> {
        let path = self.own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let root = self.root.to_str().unwrap_or("");
        let mounts = self.mountinfo.lines().filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            post.starts_with("cgroup2 ").then_some(())?;
            let f: Vec<&str> = pre.split(' ').collect();
            Some((*f.get(3)?, *f.get(4)?))
        });
        let (mount_root, mount_point) = mounts.min_by_key(|(_, point)| *point != root)?;
        let rel = Path::new(path).strip_prefix(mount_root).ok()?;
        Some(Path::new(mount_point).join(rel))
    }
}

/// The cgroups of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroups {
    /// Every directory created (PID 1 joins each).
    pub dirs: Vec<PathBuf>,
}

/// The name of a container's cgroup directories.
pub fn name_of(id: &str) -> String {
    format!("strata-{id}")
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(io(&path))
}

fn make(host: &Host, ctrl: &str, name: &str, made: &mut Cgroups) -> Result<PathBuf, CgroupError> {
    let own = host
        .own_dir(ctrl)
        .ok_or_else(|| CgroupError::Missing(ctrl.into()))?;
    make_in(&own, name, made)
}

fn make_in(own: &Path, name: &str, made: &mut Cgroups) -> Result<PathBuf, CgroupError> {
    let dir = own.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(&dir)(e)),
    }
    if !made.dirs.contains(&dir) {
        made.dirs.push(dir.clone());
    }
    Ok(dir)
}

/// Creates the cgroups of container `id` with `limits`; `devices` restricts device access to
/// [`DEFAULT_DEVICES`](crate::devices::DEFAULT_DEVICES): through the devices cgroup on v1 and, wherever a v2 hierarchy is
/// mounted (pure v2, or beside v1 on a hybrid host), an eBPF device program attached to the
/// container's v2 cgroup. The kernel enforces both on a hybrid host.
/// On failure whatever was created is removed again.
pub fn create(
    host: &Host,
    id: &str,
    limits: &Resources,
    devices: bool,
) -> Result<Cgroups, CgroupError> {
    let mut made = Cgroups::default();
    let name = name_of(id);
    let r = if host.unified() {
        create_v2(host, &name, limits, devices, &mut made)
    } else {
        create_v1(host, &name, limits, devices, &mut made).and_then(|()| {
            match (devices, host.own_dir("")) {
                (true, Some(own)) => attach_devices(&own, &name, &mut made),
                _ => Ok(()),
            }
        })
    };
    if let Err(e) = r {
        made.remove();
        return Err(e);
    }
    Ok(made)
}

/// Makes the container's v2 cgroup beneath `own` (if not made yet) and attaches the device
/// program for [`DEFAULT_DEVICES`](crate::devices::DEFAULT_DEVICES) to it.
fn attach_devices(own: &Path, name: &str, made: &mut Cgroups) -> Result<(), CgroupError> {
    let dir = make_in(own, name, made)?;
    crate::devices::attach(&dir, &crate::devices::default_rules())?;
    Ok(())
}

fn create_v1(
    host: &Host,
    name: &str,
    limits: &Resources,
    devices: bool,
    made: &mut Cgroups,
) -> Result<(), CgroupError> {
    if devices {
        let dir = make(host, "devices", name, made)?;
        write(&dir, "devices.deny", "a")?;
        for rule in crate::devices::DEFAULT_DEVICES {
            write(&dir, "devices.allow", rule)?;
        }
    }
    if limits.memory > 0 {
        let dir = make(host, "memory", name, made)?;
        write(&dir, "memory.limit_in_bytes", &limits.memory.to_string())?;
        // Swap as docker allows it by default (as much again) where swap is accounted.
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(
                &dir,
                "memory.memsw.limit_in_bytes",
                &limits.memory.saturating_mul(2).to_string(),
            )?;
        }
    }
    if limits.nano_cpus > 0 {
        let dir = make(host, "cpu", name, made)?;
        let (quota, period) = cpu_quota(limits.nano_cpus);
        write(&dir, "cpu.cfs_period_us", &period.to_string())?;
        write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
    }
    if limits.pids_limit > 0 {
        let dir = make(host, "pids", name, made)?;
        write(&dir, "pids.max", &limits.pids_limit.to_string())?;
    }
    Ok(())
}

/// `--cpus` as a CFS quota over docker's 100 ms period.
fn cpu_quota(nano_cpus: i64) -> (i64, i64) {
    let period = 100_000;
    ((nano_cpus * period / 1_000_000_000).max(1000), period)
}

fn create_v2(
    host: &Host,
    name: &str,
    limits: &Resources,
    devices: bool,
    made: &mut Cgroups,
) -> Result<(), CgroupError> {
    let own = host
        .own_dir("")
        .ok_or_else(|| CgroupError::Missing("cgroup2".into()))?;
    let mut wanted = Vec::new();
    if limits.memory > 0 {
        wanted.push("memory");
    }
    if limits.nano_cpus > 0 {
        wanted.push("cpu");
    }
    if limits.pids_limit > 0 {
        wanted.push("pids");
    }
    if devices {
        attach_devices(&own, name, made)?;
    }
    if wanted.is_empty() {
        return Ok(());
    }
    // Controllers must be enabled in our own cgroup's subtree for the child to have them; the
    // kernel refuses that while our cgroup holds processes, unless someone delegated them.
    let enabled = std::fs::read_to_string(own.join("cgroup.subtree_control")).unwrap_or_default();
    for c in &wanted {
        if !enabled.split_whitespace().any(|e| e == *c) {
            write(&own, "cgroup.subtree_control", &format!("+{c}"))
                .map_err(|_| CgroupError::Missing((*c).to_string()))?;
        }
    }
    let dir = make_in(&own, name, made)?;
    if limits.memory > 0 {
        write(&dir, "memory.max", &limits.memory.to_string())?;
        if dir.join("memory.swap.max").exists() {
            write(&dir, "memory.swap.max", &limits.memory.to_string())?;
        }
    }
    if limits.nano_cpus > 0 {
        let (quota, period) = cpu_quota(limits.nano_cpus);
        write(&dir, "cpu.max", &format!("{quota} {period}"))?;
    }
    if limits.pids_limit > 0 {
        write(&dir, "pids.max", &limits.pids_limit.to_string())?;
    }
    Ok(())
}

impl Cgroups {
    /// Moves the calling process (the container's PID 1, before it runs anything) into every
    /// cgroup of the container.
    pub fn join_self(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            write(d, "cgroup.procs", "0")?;
        }
        Ok(())
    }

    /// Removes the container's cgroups once its processes are gone: waits up to two seconds for
    /// the pid namespace to empty, killing stragglers.
    pub fn remove(&self) {
        for d in &self.dirs {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if std::time::Instant::now() > deadline => {
                        tracing::warn!(cgroup = %d.display(), "removing cgroup: {e}");
                        break;
                    }
                    Err(_) => {
                        kill_all(d);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
            }
        }
    }
}

fn kill_all(dir: &Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Removes the cgroups of container `id` wherever they exist (after a crash of the strata that
/// ran it).
pub fn remove_for(host: &Host, id: &str) {
    let name = name_of(id);
    let dirs = ["devices", "memory", "cpu", "pids", ""]
        .iter()
        .filter_map(|c| host.own_dir(c))
        .map(|d| d.join(&name))
        .filter(|d| d.is_dir())
        .collect();
    Cgroups { dirs }.remove();
}

/// Removes the cgroups of container `id` that no process is in, killing nothing: what a
/// container whose supervisor was killed leaves once its processes have ended. Returns how
/// many it removed.
pub fn remove_empty_for(host: &Host, id: &str) -> usize {
    let name = name_of(id);
    ["devices", "memory", "cpu", "pids", ""]
        .iter()
        .filter_map(|c| host.own_dir(c))
        .map(|d| d.join(&name))
        .filter(|d| {
            std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
        })
        .filter(|d| std::fs::remove_dir(d).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroups_per_controller() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:31 /process_api /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:33 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let host = Host {
            root: "/sys/fs/cgroup".into(),
            own: "8:pids:/\n4:memory:/process_api/abc\n1:cpu:/x\n0::/\n".into(),
            mountinfo: mountinfo.into(),
        };
        assert!(!host.unified());
        assert_eq!(
            host.own_dir("memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory/abc")
        );
        assert_eq!(
            host.own_dir("cpu").unwrap(),
            Path::new("/sys/fs/cgroup/cpu/x")
        );
        assert_eq!(
            host.own_dir("pids").unwrap(),
            Path::new("/sys/fs/cgroup/pids/")
        );
        assert!(host.own_dir("blkio").is_none());
        // Hybrid: the unified hierarchy beside the v1 controllers.
        assert_eq!(
            host.own_dir("").unwrap(),
            Path::new("/sys/fs/cgroup/unified/")
        );
        let v2 = Host {
            root: "/sys/fs/cgroup".into(),
            own: "0::/user.slice/s.scope\n".into(),
            mountinfo: "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n".into(),
        };
        assert!(v2.unified());
        assert_eq!(
            v2.own_dir("memory").unwrap(),
            Path::new("/sys/fs/cgroup/user.slice/s.scope")
        );
    }

    #[test]
    fn creates_v1_limits_beneath_a_fake_tree_and_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut mountinfo = String::new();
        for c in ["memory", "cpu", "pids", "devices"] {
            std::fs::create_dir_all(root.join(c).join("parent")).unwrap();
            mountinfo.push_str(&format!(
                "1 1 0:1 / {}/{c} rw - cgroup cgroup rw,{c}\n",
                root.display()
            ));
        }
        let host = Host {
            root: root.to_path_buf(),
            own: "1:memory:/parent\n2:cpu:/parent\n3:pids:/parent\n4:devices:/parent\n".into(),
            mountinfo,
        };
        let limits = Resources {
            memory: 32 << 20,
            nano_cpus: 1_500_000_000,
            pids_limit: 20,
        };
        let cg = create(&host, "abc", &limits, true).unwrap();
        assert_eq!(cg.dirs.len(), 4);
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(
            read("memory/parent/strata-abc/memory.limit_in_bytes"),
            "33554432"
        );
        assert_eq!(read("cpu/parent/strata-abc/cpu.cfs_quota_us"), "150000");
        assert_eq!(read("pids/parent/strata-abc/pids.max"), "20");
        // A plain file keeps only the last write: the allow list ends with tun.
        assert_eq!(
            read("devices/parent/strata-abc/devices.allow"),
            "c 10:200 rwm"
        );
        // Plain directories here (a real cgroup's files vanish with it): empty them first.
        for d in &cg.dirs {
            for f in std::fs::read_dir(d).unwrap() {
                std::fs::remove_file(f.unwrap().path()).unwrap();
            }
        }
        remove_for(&host, "abc");
        assert!(cg.dirs.iter().all(|d| !d.exists()));
        let none = create(&host, "def", &Resources::default(), false).unwrap();
        assert!(none.dirs.is_empty());
    }

    /// A fake pure v2 tree: `root` mounted as cgroup2, this process in `/parent`.
    fn fake_v2(root: &Path, subtree: &str) -> Host {
        let parent = root.join("parent");
        std::fs::create_dir_all(&parent).unwrap();
        std::fs::write(
            parent.join("cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap();
        std::fs::write(parent.join("cgroup.subtree_control"), subtree).unwrap();
        Host {
            root: root.to_path_buf(),
            own: "0::/parent\n".into(),
            mountinfo: format!("30 23 0:26 / {} rw - cgroup2 cgroup2 rw\n", root.display()),
        }
    }

    #[test]
    fn creates_v2_limits_beneath_a_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        let limits = Resources {
            memory: 32 << 20,
            nano_cpus: 500_000_000,
            pids_limit: 20,
        };
        // Controllers not yet enabled for our children: each is asked for (a plain file keeps
        // the last write).
        let host = fake_v2(root, "");
        assert!(host.unified());
        let cg = create(&host, "abc", &limits, false).unwrap();
        assert_eq!(cg.dirs, vec![root.join("parent/strata-abc")]);
        assert_eq!(read("parent/cgroup.subtree_control"), "+pids");
        assert_eq!(read("parent/strata-abc/memory.max"), "33554432");
        assert_eq!(read("parent/strata-abc/cpu.max"), "50000 100000");
        assert_eq!(read("parent/strata-abc/pids.max"), "20");
        assert!(!root.join("parent/strata-abc/memory.swap.max").exists());
        // Already enabled (delegated): left alone; swap limited where accounted.
        let host = fake_v2(root, "cpu memory pids\n");
        std::fs::write(root.join("parent/strata-abc/memory.swap.max"), "max").unwrap();
        create(&host, "abc", &limits, false).unwrap();
        assert_eq!(read("parent/cgroup.subtree_control"), "cpu memory pids\n");
        assert_eq!(read("parent/strata-abc/memory.swap.max"), "33554432");
        for f in std::fs::read_dir(root.join("parent/strata-abc")).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        remove_for(&host, "abc");
        assert!(!root.join("parent/strata-abc").exists());
        // No limits and no devices: no cgroup at all.
        assert!(
            create(&host, "def", &Resources::default(), false)
                .unwrap()
                .dirs
                .is_empty()
        );
        // A controller that cannot be enabled is named, and nothing is left behind.
        std::fs::remove_file(root.join("parent/cgroup.subtree_control")).unwrap();
        std::fs::create_dir(root.join("parent/cgroup.subtree_control")).unwrap();
        let only_pids = Resources {
            pids_limit: 5,
            ..Resources::default()
        };
        let e = create(&fake_v2_keep(root), "ghi", &only_pids, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cgroup controller pids is not available beneath strata's cgroup"
        );
        assert!(!root.join("parent/strata-ghi").exists());
    }

    fn fake_v2_keep(root: &Path) -> Host {
        Host {
            root: root.to_path_buf(),
            own: "0::/parent\n".into(),
            mountinfo: format!("30 23 0:26 / {} rw - cgroup2 cgroup2 rw\n", root.display()),
        }
    }

    #[test]
    fn device_program_failure_removes_the_cgroups() {
        // A plain directory is no cgroup: the program cannot be attached to it (or, without
        // root, not even loaded); the run fails and nothing it made stays.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let host = fake_v2(root, "");
        let e = create(&host, "abc", &Resources::default(), true).unwrap_err();
        assert!(matches!(e, CgroupError::Devices(_)), "{e}");
        assert!(!root.join("parent/strata-abc").exists());
        // Hybrid: v1 devices cgroup made first, then the v2 program fails: both gone.
        let v1 = root.join("devices/parent");
        std::fs::create_dir_all(&v1).unwrap();
        let hybrid = Host {
            root: root.to_path_buf(),
            own: "4:devices:/parent\n0::/parent\n".into(),
            mountinfo: format!(
                "1 1 0:1 / {0}/devices rw - cgroup cgroup rw,devices\n\
                 2 1 0:2 / {0}/unified rw - cgroup2 cgroup2 rw\n",
                root.display()
            ),
        };
        std::fs::create_dir_all(root.join("unified/parent")).unwrap();
        assert!(!hybrid.unified());
        assert_eq!(hybrid.own_dir("").unwrap(), root.join("unified/parent"));
        let e = create(&hybrid, "abc", &Resources::default(), true).unwrap_err();
        assert!(matches!(e, CgroupError::Devices(_)), "{e}");
        assert!(!root.join("unified/parent/strata-abc").exists());
        // (The fake v1 directory keeps the files written into it, so it stays; a real one goes.)
        assert_eq!(
            std::fs::read_to_string(v1.join("strata-abc/devices.allow")).unwrap(),
            "c 10:200 rwm"
        );
    }
}
