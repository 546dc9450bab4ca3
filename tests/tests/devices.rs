//! Device access on cgroup v2, end to end: the eBPF device program strata attaches to a
//! container's v2 cgroup is what refuses opening a device outside docker's list.
//!
//! On a hybrid host (v1 controllers plus a v2 hierarchy, as this machine) the v1 devices cgroup
//! refuses too, so the test widens the container's v1 devices cgroup to `a *:* rwm` from the
//! host while the container waits, and only then lets it try: what still refuses is the v2
//! program. The program's presence is read with `BPF_PROG_QUERY` on the cgroup directly.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_tests::fixtures::runnable_layers;
use strata_tests::layers::Comp;
use strata_tests::require_root_fuse;
use strata_tests::strata::{ok, run};
use strata_tests::world::World;

/// Makes a kmsg and a fuse node, says it is ready, waits (bounded) for the host's go, then
/// tries them and the allowed nodes; ends with a `done` marker.
///
/// Reading /dev/kmsg also needs CAP_SYSLOG where `kernel.dmesg_restrict` is 1 (as here), so
/// its refusal alone proves nothing about device rules; opening /dev/fuse needs no capability,
/// so only a device rule can refuse it.
const PROBE: &str = r#"
b=busybox
$b mknod /probe-kmsg c 1 11 && $b mknod /probe-fuse c 10 229 && echo mknod=ok || echo mknod=refused
$b touch /shared/ready
i=0; while [ ! -e /shared/go ] && [ $i -lt 300 ]; do $b sleep 0.1; i=$((i+1)); done
if $b timeout 5 $b dd if=/probe-kmsg of=/dev/null bs=8192 count=1 2>/dev/null; then echo kmsg=read; else echo kmsg=refused; fi
if ( exec 3</probe-fuse ) 2>/dev/null; then echo fuse=opened; else echo fuse=refused; fi
if echo x > /dev/null; then echo null=ok; else echo null=refused; fi
$b mknod /probe-zero c 1 5
echo zero=$($b head -c 3 /probe-zero 2>/dev/null | $b wc -c)
echo cgroup=$($b grep '^0::' /proc/self/cgroup | $b cut -d: -f3)
$b touch /shared/done
"#;

/// The v2 hierarchy's mount point and this process's cgroup in it, if v2 is mounted.
fn own_v2() -> Option<(PathBuf, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mountinfo
        .lines()
        .filter(|l| l.contains(" - cgroup2 "))
        .map(|l| l.split(' ').nth(4).unwrap().to_string())
        .min_by_key(|m| m != "/sys/fs/cgroup")?;
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
    Some((PathBuf::from(mount), path))
}

/// This process's v1 devices cgroup directory, on a host with v1 controllers.
fn own_v1_devices() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, c, p) = (f.next()?, f.next()?, f.next()?);
        c.split(',').any(|c| c == "devices").then(|| p.to_string())
    })?;
    let mount = Path::new("/sys/fs/cgroup/devices");
    mount
        .exists()
        .then(|| mount.join(path.trim_start_matches('/')))
}

/// Device programs attached to the cgroup `dir`, by `BPF_PROG_QUERY` (`BPF_CGROUP_DEVICE`).
fn device_programs(dir: &Path) -> u32 {
    #[repr(C)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
    }
    let f = std::fs::File::open(dir).unwrap();
    let mut q = Query {
        target_fd: u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&f)).unwrap(),
        attach_type: 6,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: 0,
        prog_cnt: 0,
    };
    // SAFETY: BPF_PROG_QUERY (16) with a valid prefix of `union bpf_attr` and its size; no ids
    // are asked for (prog_ids is null), so the kernel writes only into `q`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            16,
            &mut q as *mut Query,
            std::mem::size_of::<Query>(),
        )
    };
    assert_eq!(r, 0, "BPF_PROG_QUERY {}", std::io::Error::last_os_error());
    q.prog_cnt
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the probe detached with `flags`; `meanwhile` gets the container's id and runs between
/// ready and go. Returns the probe's answers once the container has ended.
fn probe(w: &World, flags: &[&str], meanwhile: impl FnOnce(&str)) -> BTreeMap<String, String> {
    let shared = tempfile::tempdir().unwrap();
    let bind = format!("{}:/shared", shared.path().display());
    let mut args = vec!["run", "-d", "-v", &bind];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[&w.base, "sh", "-c", PROBE]);
    let o = run(&w.root, &args);
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    wait_for("the probe to be ready", || {
        shared.path().join("ready").exists()
    });
    meanwhile(&id);
    std::fs::write(shared.path().join("go"), "").unwrap();
    wait_for("the probe to finish", || {
        shared.path().join("done").exists()
    });
    let state = || {
        let v: serde_json::Value = serde_json::from_str(&ok(&w.root, &["inspect", &id])).unwrap();
        v[0]["State"].clone()
    };
    wait_for("the container to exit", || state()["Status"] == "exited");
    assert_eq!(state()["ExitCode"], 0);
    let logs = ok(&w.root, &["logs", &id]);
    println!("--- probe {flags:?}\n{logs}");
    ok(&w.root, &["rm", &id]);
    logs.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn v2_device_program_refuses_what_docker_refuses() {
    if !require_root_fuse("v2_device_program_refuses_what_docker_refuses") {
        return;
    }
    let Some((mount, own)) = own_v2() else {
        let msg = "v2_device_program_refuses_what_docker_refuses: needs a cgroup2 mount";
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{msg}");
        eprintln!("SKIPPED {msg}");
        return;
    };
    let own_dir = mount.join(own.trim_start_matches('/'));
    let w = World::start(&runnable_layers(), Comp::Native);
    let mut v2_dir = PathBuf::new();
    let p = probe(&w, &[], |id| {
        let name = format!("strata-{id}");
        v2_dir = own_dir.join(&name);
        // Beneath strata's own v2 cgroup, holding the container's processes and not ours.
        let procs = std::fs::read_to_string(v2_dir.join("cgroup.procs")).unwrap();
        assert!(!procs.is_empty(), "no process in {}", v2_dir.display());
        let me = std::process::id().to_string();
        assert!(!procs.lines().any(|p| p == me));
        assert_eq!(device_programs(&v2_dir), 1, "{}", v2_dir.display());
        assert_eq!(
            device_programs(&own_dir),
            0,
            "nothing on strata's own cgroup"
        );
        // Widen the v1 devices cgroup, where there is one: only the v2 program is left.
        if let Some(v1) = own_v1_devices() {
            let dir = v1.join(&name);
            std::fs::write(dir.join("devices.allow"), "a").unwrap();
            assert_eq!(
                std::fs::read_to_string(dir.join("devices.list")).unwrap(),
                "a *:* rwm\n",
                "{} widened",
                dir.display()
            );
        }
        // A process `exec` starts joins the same cgroups, so the program holds it too.
        let script = "if ( exec 3</probe-fuse ) 2>/dev/null; then echo opened; else echo refused; fi; \
                      busybox grep '^0::' /proc/self/cgroup";
        let out = ok(&w.root, &["exec", id, "sh", "-c", script]);
        let inside = Path::new(&own).join(&name);
        assert_eq!(out, format!("refused\n0::{}\n", inside.display()));
    });
    // "c *:* m": the nodes are made; opening them is refused; the listed nodes work.
    assert_eq!(p["mknod"], "ok");
    assert_eq!(
        p["fuse"], "refused",
        "the v2 device program refuses /dev/fuse"
    );
    assert_eq!(p["kmsg"], "refused");
    assert_eq!(p["null"], "ok");
    assert_eq!(p["zero"], "3");
    let inside = Path::new(&own).join(v2_dir.file_name().unwrap());
    assert_eq!(
        Path::new(&p["cgroup"]),
        inside,
        "PID 1 is in the new cgroup"
    );
    wait_for("the v2 cgroup to be removed", || !v2_dir.exists());

    // --privileged: no v2 cgroup, no program, and the same read succeeds.
    let p = probe(&w, &["--privileged"], |id| {
        assert!(!own_dir.join(format!("strata-{id}")).exists());
        assert_eq!(device_programs(&own_dir), 0);
    });
    assert_eq!(p["fuse"], "opened");
    assert_eq!(p["kmsg"], "read");
    assert_eq!(p["null"], "ok");
    assert_eq!(Path::new(&p["cgroup"]), Path::new(&own));
}
