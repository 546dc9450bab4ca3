//! Containment end to end, checked from inside the container with busybox: docker's default
//! capabilities and seccomp filter, masked and read-only /proc paths, the devices cgroup,
//! `--privileged`, `--cap-add/--cap-drop`, `--security-opt`, and the `--memory` and
//! `--pids-limit` limits; a build's RUN step gets the same profile.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::process::Output;

use strata_tests::fixtures::runnable_layers;
use strata_tests::layers::Comp;
use strata_tests::require_root_fuse;
use strata_tests::strata::{ok, run};
use strata_tests::world::World;

const DEFAULT_CAPS: &str = "00000000a80425fb";

/// Reports, one `key=value` a line, what the container can see and do.
const PROBE: &str = r#"
b=busybox
$b grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|Seccomp|NoNewPrivs):' /proc/self/status | $b tr -d ' \t' | $b sed 's/:/=/'
v=$($b cat /proc/sys/kernel/core_pattern)
if echo "$v" > /proc/sys/kernel/core_pattern 2>/dev/null; then echo procsys=writable; else echo procsys=refused; fi
echo kcore=$($b head -c 64 /proc/kcore 2>/dev/null | $b wc -c)
echo masked=$($b cat /proc/interrupts /proc/timer_list /proc/sched_debug 2>/dev/null | $b wc -c)
$b mkdir -p /probe-mnt
if $b mount -t tmpfs probe /probe-mnt 2>/dev/null; then echo mount=ok; $b umount /probe-mnt; else echo mount=refused; fi
if $b mknod /probe-kmsg c 1 11 2>/dev/null; then
  if $b timeout 5 $b dd if=/probe-kmsg of=/dev/null bs=8192 count=1 2>/dev/null; then echo kmsg=read; else echo kmsg=refused; fi
else echo kmsg=nomknod; fi
if $b mknod /probe-fuse c 10 229 2>/dev/null; then
  if ( exec 3</probe-fuse ) 2>/dev/null; then echo fuse=opened; else echo fuse=refused; fi
else echo fuse=nomknod; fi
if $b unshare -U $b true 2>/dev/null; then echo userns=ok; else echo userns=refused; fi
if $b test -c /dev/kmsg; then echo hostdev=yes; else echo hostdev=no; fi
"#;

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn strata(w: &World, args: &[&str]) -> Output {
    let o = run(&w.root, args);
    println!(
        "--- strata {args:?} -> {:?}\n{}{}",
        o.status.code(),
        text(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Runs the probe in a container made with `flags`; returns its answers.
fn probe(w: &World, flags: &[&str]) -> BTreeMap<String, String> {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[&w.base, "sh", "-c", PROBE]);
    let o = strata(w, &args);
    assert_eq!(o.status.code(), Some(0), "probe failed");
    text(&o)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn own_status(key: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn default_container_is_confined_and_privileged_is_not() {
    if !require_root_fuse("default_container_is_confined_and_privileged_is_not") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    let p = probe(&w, &[]);
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(p[set], DEFAULT_CAPS, "{set}");
    }
    // Inheritable and ambient empty, as docker's (moby 20.10.14 on, CVE-2022-24769).
    assert_eq!(p["CapInh"], "0000000000000000");
    assert_eq!(p["CapAmb"], "0000000000000000");
    assert_eq!(p["Seccomp"], "2");
    assert_eq!(p["NoNewPrivs"], "0");
    assert_eq!(p["procsys"], "refused");
    assert_eq!(p["kcore"], "0");
    assert_eq!(p["masked"], "0");
    assert_eq!(p["mount"], "refused");
    // CAP_MKNOD and the device rules' "c *:* m" allow creating the nodes; opening them is
    // refused. (Reading kmsg also needs CAP_SYSLOG under kernel.dmesg_restrict=1; opening
    // /dev/fuse needs no capability, so only the device rules refuse it: tests/devices.rs.)
    assert_eq!(p["kmsg"], "refused");
    assert_eq!(p["fuse"], "refused");
    assert_eq!(p["userns"], "refused");
    assert_eq!(p["hostdev"], "no");

    let host_caps = own_status("CapBnd");
    let p = probe(&w, &["--privileged"]);
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(p[set], host_caps, "{set}");
    }
    assert_eq!(p["Seccomp"], "0");
    assert_eq!(p["procsys"], "writable");
    // (This machine's kernel has no /proc/kcore; the other masked files have content.)
    assert_ne!(p["masked"], "0");
    assert_eq!(p["mount"], "ok");
    assert_eq!(p["kmsg"], "read");
    assert_eq!(p["fuse"], "opened");
    assert_eq!(p["userns"], "ok");
    assert_eq!(
        p["hostdev"], "yes",
        "the host's devices are in a privileged /dev"
    );
}

#[test]
fn capabilities_and_security_options() {
    if !require_root_fuse("capabilities_and_security_options") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    let p = probe(&w, &["--cap-add", "NET_ADMIN"]);
    // CAP_NET_ADMIN is bit 12: exactly that bit more.
    assert_eq!(p["CapEff"], "00000000a80435fb");
    assert_eq!(p["CapBnd"], "00000000a80435fb");
    assert_eq!(p["Seccomp"], "2");
    let p = probe(&w, &["--cap-drop", "ALL"]);
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(p[set], "0000000000000000", "{set}");
    }
    let p = probe(&w, &["--cap-drop", "chown", "--cap-add", "CAP_SYS_ADMIN"]);
    assert_eq!(p["CapEff"], "00000000a82425fa");
    // With CAP_SYS_ADMIN the default profile allows mount(2) and unshare(2).
    assert_eq!(p["mount"], "ok");
    assert_eq!(p["procsys"], "refused");
    // A user other than root keeps the bounding set but no effective capabilities, as in docker.
    let p = probe(&w, &["-u", "1000"]);
    assert_eq!(p["CapBnd"], DEFAULT_CAPS);
    assert_eq!(p["CapEff"], "0000000000000000");
    assert_eq!(p["Seccomp"], "2");
    // `start` runs the saved spec again, with the same settings.
    let status = "busybox grep -E '^(CapEff|Seccomp):' /proc/self/status";
    let first = ok(
        &w.root,
        &[
            "run",
            "--name",
            "capless",
            "--cap-drop",
            "ALL",
            &w.base,
            "sh",
            "-c",
            status,
        ],
    );
    let again = ok(&w.root, &["start", "-a", "capless"]);
    assert_eq!(first, again);
    assert!(
        first.contains("CapEff:\t0000000000000000\nSeccomp:\t2\n"),
        "{first}"
    );
    ok(&w.root, &["rm", "capless"]);
    let p = probe(&w, &["--security-opt", "seccomp=unconfined"]);
    assert_eq!(p["Seccomp"], "0");
    assert_eq!(p["CapEff"], DEFAULT_CAPS);
    // Without the filter, CAP_SYS_ADMIN is still missing: mount stays refused.
    assert_eq!(p["mount"], "refused");
    let p = probe(&w, &["--security-opt", "no-new-privileges"]);
    assert_eq!(p["NoNewPrivs"], "1");
    assert_eq!(p["Seccomp"], "2");

    // A profile in docker's format: everything allowed but mkdir.
    let profile = w.state.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let o = strata(
        &w,
        &[
            "run",
            "--rm",
            "--security-opt",
            &opt,
            &w.base,
            "sh",
            "-c",
            "busybox touch /f && echo touched; busybox mkdir /d || echo mkdir-refused; busybox grep Seccomp: /proc/self/status",
        ],
    );
    let out = text(&o);
    assert!(
        out.contains("touched\n") && out.contains("mkdir-refused\n"),
        "{out}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied"));
    // Bad options fail before anything runs, naming what is wrong.
    let o = strata(
        &w,
        &[
            "run",
            "--rm",
            "--cap-add",
            "FLY",
            &w.base,
            "sh",
            "-c",
            "exit 0",
        ],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown capability: \"FLY\""));
    let o = strata(
        &w,
        &[
            "run",
            "--rm",
            "--security-opt",
            "seccomp=/nonexistent.json",
            &w.base,
            "sh",
            "-c",
            "exit 0",
        ],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.json"));
}

/// The memory cgroup this test runs in (v1), or its unified cgroup (v2).
fn own_memory_cgroup() -> std::path::PathBuf {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        return std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    }
    let path = own
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, p) = (f.next()?, f.next()?, f.next()?);
            c.split(',').any(|c| c == "memory").then(|| p.to_string())
        })
        .expect("a memory cgroup");
    std::path::Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'))
}

#[test]
fn memory_and_pids_limits_hold_and_inspect_shows_them() {
    if !require_root_fuse("memory_and_pids_limits_hold_and_inspect_shows_them") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    // tail keeps the whole newline-free 64 MiB in memory, looking for the last lines.
    let hog = "busybox head -c 64m /dev/zero | busybox tail >/dev/null";
    let o = strata(&w, &["run", "--rm", &w.base, "sh", "-c", hog]);
    assert_eq!(o.status.code(), Some(0));
    let o = strata(
        &w,
        &[
            "run", "--name", "hog", "--memory", "32m", "--cpus", "0.5", &w.base, "sh", "-c", hog,
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(137),
        "the OOM killer ends the pipeline"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&w.root, &["inspect", "hog"])).unwrap();
    let hc = &v[0]["HostConfig"];
    assert_eq!(hc["Memory"], 32 << 20);
    assert_eq!(hc["NanoCpus"], 500_000_000);
    assert_eq!(hc["Privileged"], false);
    let id = v[0]["Id"].as_str().unwrap();
    // Created beneath strata's own cgroup, and gone once the container ended.
    let cg = own_memory_cgroup().join(format!("strata-{id}"));
    assert!(!cg.exists(), "{} left behind", cg.display());
    ok(&w.root, &["rm", "hog"]);
    // Inside, the container's own memory cgroup is the new one beneath ours.
    let o = strata(
        &w,
        &[
            "run",
            "--name",
            "where",
            "--memory",
            "64m",
            &w.base,
            "sh",
            "-c",
            "busybox cat /proc/self/cgroup",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&w.root, &["inspect", "where"])).unwrap();
    let id = v[0]["Id"].as_str().unwrap();
    let inside = text(&o)
        .lines()
        .find(|l| l.contains(":memory:") || l.starts_with("0::"))
        .and_then(|l| l.splitn(3, ':').nth(2))
        .map(|p| p.to_string());
    let expected = own_memory_cgroup().join(format!("strata-{id}"));
    let mount = if expected.starts_with("/sys/fs/cgroup/memory") {
        "/sys/fs/cgroup/memory"
    } else {
        "/sys/fs/cgroup"
    };
    assert_eq!(
        inside.map(|p| std::path::Path::new(mount).join(p.trim_start_matches('/'))),
        Some(expected)
    );
    ok(&w.root, &["rm", "where"]);

    // A bounded fork bomb: 40 background sleeps, each numbered once it has started; busybox sh
    // gives up at the first fork the pids cgroup refuses.
    let bomb = "for i in $(busybox seq 40); do busybox sleep 5 & echo $i; done";
    let count = |flags: &[&str]| -> usize {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[&w.base, "sh", "-c", bomb]);
        let started = std::time::Instant::now();
        let o = strata(&w, &args);
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
        text(&o).lines().count()
    };
    let limited = count(&["--pids-limit", "20"]);
    assert!(
        (10..20).contains(&limited),
        "{limited} sleeps beside the shell under --pids-limit 20"
    );
    assert_eq!(count(&[]), 40, "without a limit all 40 start");
    let o = strata(
        &w,
        &[
            "run",
            "--name",
            "lim",
            "--pids-limit",
            "20",
            "--cap-add",
            "NET_ADMIN",
            "--cap-drop",
            "MKNOD",
            "--security-opt",
            "no-new-privileges",
            &w.base,
            "sh",
            "-c",
            "exit 0",
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&ok(&w.root, &["inspect", "lim"])).unwrap();
    let hc = &v[0]["HostConfig"];
    assert_eq!(hc["PidsLimit"], 20);
    assert_eq!(hc["CapAdd"], serde_json::json!(["CAP_NET_ADMIN"]));
    assert_eq!(hc["CapDrop"], serde_json::json!(["CAP_MKNOD"]));
    assert_eq!(hc["SecurityOpt"], serde_json::json!(["no-new-privileges"]));
    assert_eq!(hc["Memory"], 0);
}

#[test]
fn build_run_steps_get_the_default_profile() {
    if !require_root_fuse("build_run_steps_get_the_default_profile") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    let ctx = w.state.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN busybox grep -E '^(CapEff|CapBnd|Seccomp):' /proc/self/status > /status.txt\n",
            w.base
        ),
    )
    .unwrap();
    let o = strata(&w, &["build", "-t", "t/probe:1", ctx.to_str().unwrap()]);
    assert!(o.status.success());
    let out = ok(
        &w.root,
        &[
            "run",
            "--rm",
            "--privileged",
            "t/probe:1",
            "cat",
            "/status.txt",
        ],
    );
    let fields: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        fields,
        [
            format!("CapEff: {DEFAULT_CAPS}"),
            format!("CapBnd: {DEFAULT_CAPS}"),
            "Seccomp: 2".to_string()
        ]
    );
}

/// A Debian userland image made from this machine's own python3 (glibc, its libraries and the
/// standard library) plus busybox, imported with `strata import`.
fn import_debian_python(w: &World) -> String {
    let py = std::fs::canonicalize("/usr/bin/python3")
        .expect("/usr/bin/python3 (apt-get install python3-minimal)");
    let ver = py.file_name().unwrap().to_string_lossy().into_owned();
    let r = w.state.path().join("pyroot");
    let tar = w.state.path().join("py.tar");
    let script = format!(
        r#"set -e; r={r}
mkdir -p $r/bin $r/usr/bin $r/usr/lib $r/etc $r/tmp
cp /bin/busybox $r/bin/busybox; ln -s busybox $r/bin/sh
cp {py} $r/usr/bin/{ver}; ln -s {ver} $r/usr/bin/python3
for l in $(ldd {py} | grep -o '/[^ ]*'); do mkdir -p $r$(dirname $l); cp -L $l $r$l; done
cp -a /usr/lib/{ver} $r/usr/lib/; rm -rf $r/usr/lib/{ver}/test
echo 'root:x:0:0:root:/root:/bin/sh' > $r/etc/passwd; echo 'root:x:0:' > $r/etc/group
tar -C $r -cf {tar} ."#,
        r = r.display(),
        py = py.display(),
        tar = tar.display()
    );
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success(), "building the python rootfs");
    ok(&w.root, &["import", tar.to_str().unwrap(), "t/py:1"]);
    "t/py:1".to_string()
}

#[test]
fn debian_python_threads_and_subprocesses_run_under_the_default_profile() {
    if !require_root_fuse("debian_python_threads_and_subprocesses_run_under_the_default_profile") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    let img = import_debian_python(&w);
    // glibc starts threads and children with clone3, which the default profile answers with
    // ENOSYS so that glibc falls back to clone.
    let script = r#"
import os, socket, subprocess, threading
t = threading.Thread(target=lambda: print("thread"))
t.start(); t.join()
print("child", subprocess.run(["busybox", "echo", "hi"], capture_output=True, text=True).stdout.strip())
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); print("socket")
print(open("/proc/self/status").read().split("CapEff:")[1].split()[0])
"#;
    let out = ok(&w.root, &["run", "--rm", &img, "python3", "-c", script]);
    assert_eq!(out, format!("thread\nchild hi\nsocket\n{DEFAULT_CAPS}\n"));
    let out = ok(
        &w.root,
        &[
            "run",
            "--rm",
            "-u",
            "65534",
            &img,
            "python3",
            "-c",
            "import os; print(os.getuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])",
        ],
    );
    assert_eq!(out, "65534 0000000000000000\n");
}

/// `exec` into a running container gets that container's profile, as docker's exec does: the
/// default capabilities and seccomp filter, or none of them in a `--privileged` container.
#[test]
fn exec_gets_the_containers_profile() {
    if !require_root_fuse("exec_gets_the_containers_profile") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    let exec_probe = |flags: &[&str]| -> BTreeMap<String, String> {
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[&w.base, "sleep", "60"]);
        let id = text(&strata(&w, &args)).trim().to_string();
        let o = strata(&w, &["exec", &id, "sh", "-c", PROBE]);
        strata(&w, &["rm", "-f", &id]);
        assert_eq!(o.status.code(), Some(0), "exec probe failed");
        text(&o)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let p = exec_probe(&[]);
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(p[set], DEFAULT_CAPS, "exec {set}");
    }
    assert_eq!(p["CapInh"], "0000000000000000");
    assert_eq!(p["Seccomp"], "2");
    assert_eq!(p["mount"], "refused");
    assert_eq!(p["userns"], "refused");
    assert_eq!(p["procsys"], "refused");
    let p = exec_probe(&[
        "--cap-add",
        "NET_ADMIN",
        "--security-opt",
        "no-new-privileges",
    ]);
    assert_eq!(p["CapEff"], "00000000a80435fb");
    assert_eq!(p["NoNewPrivs"], "1");
    let p = exec_probe(&["--privileged"]);
    assert_eq!(p["CapEff"], own_status("CapBnd"));
    assert_eq!(p["Seccomp"], "0");
    assert_eq!(p["mount"], "ok");
}

/// What the breaker found (issue 11): the container's /dev nodes are its own (a bind of the
/// host's let root in the container chmod the host's /dev/null); SIGPIPE is not ignored (Rust's
/// runtime ignored it and exec kept that); a caller's umask 000 makes no world-writable `/` or
/// `/etc/hosts`.
#[test]
fn own_device_nodes_default_signals_and_modes_under_umask_000() {
    use std::os::unix::fs::MetadataExt;
    if !require_root_fuse("own_device_nodes_default_signals_and_modes_under_umask_000") {
        return;
    }
    let w = World::start(&runnable_layers(), Comp::Native);
    let script = "b=busybox; $b stat -c 'null=%d:%i' /dev/null; \
                  $b grep '^SigIgn:' /proc/self/status | $b tr -d ' \\t' | $b sed 's/:/=/'; \
                  $b stat -c 'root=%a' /; $b stat -c 'hosts=%a' /etc/hosts";
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"umask 000; exec "$@""#)
        .arg("sh")
        .arg(strata_tests::strata::bin())
        .arg("--root")
        .arg(&w.root)
        .args(["run", "--rm", &w.base, "sh", "-c", script])
        .output()
        .unwrap();
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let p: BTreeMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    let host = std::fs::metadata("/dev/null").unwrap();
    let host_id = format!("{}:{}", host.dev(), host.ino());
    assert_ne!(
        p["null"], host_id,
        "the container's /dev/null is not the host's node"
    );
    // SIGPIPE (bit 12) not ignored, as docker's; signals the C library reserves (32, 33) may
    // come ignored from whoever started strata and cannot be reset through it.
    let ign = u64::from_str_radix(p["SigIgn"], 16).unwrap();
    assert_eq!(ign & !(0b11 << 31), 0, "SigIgn {}", p["SigIgn"]);
    assert_eq!(p["root"], "755", "/ under umask 000");
    assert_eq!(p["hosts"], "644", "/etc/hosts under umask 000");
}
