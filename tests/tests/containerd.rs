//! containerd (Debian's 1.6, runc) with `strata snapshotter` as its proxy snapshotter: the
//! CRI plugin pulls as kubelet drives it and the layers are served lazily by strata's layer
//! store (never downloaded whole); `ctr run` and CRI containers run on them; a snapshotter
//! restart leaves a running container reading.
#![allow(clippy::print_stderr)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use strata_tests::containerd::{Containerd, Snapshotter, require_containerd, tail};
use strata_tests::layers::{Comp, push_tars};
use strata_tests::proxy::Proxy;
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use tonic::transport::{Channel, Endpoint, Uri};

/// Three layers, as a python image on a distribution has: busybox with `/bin/sh` and the
/// passwd files; the packages of this machine's distribution that a python start does not
/// read (its site packages, perl's library, the package docs: about 75 MB compressed); then
/// python3 with its libraries and standard library (of which `print(42)` reads a few MB).
fn python_tars(scratch: &Path) -> Vec<Vec<u8>> {
    let py = std::fs::canonicalize("/usr/bin/python3")
        .expect("/usr/bin/python3 (apt-get install python3-minimal)");
    let ver = py.file_name().unwrap().to_string_lossy().into_owned();
    let (a, b) = (scratch.join("base"), scratch.join("py"));
    let script = format!(
        r#"set -e; a={a}; b={b}
mkdir -p $a/bin $a/etc $a/tmp $a/proc $a/sys $a/dev $b/usr/bin $b/usr/lib
cp /bin/busybox $a/bin/busybox; ln -s busybox $a/bin/sh; ln -s busybox $a/bin/sleep
echo 'root:x:0:0:root:/root:/bin/sh' > $a/etc/passwd; echo 'root:x:0:' > $a/etc/group
cp {py} $b/usr/bin/{ver}; ln -s {ver} $b/usr/bin/python3
for l in $(ldd {py} | grep -o '/[^ ]*'); do mkdir -p $b$(dirname $l); cp -L $l $b$l; done
cp -a /usr/lib/{ver} $b/usr/lib/; rm -rf $b/usr/lib/{ver}/test
tar -C $a -cf {s}/base.tar .; tar -C $b -cf {s}/py.tar .
tar -cf {s}/dist.tar /usr/lib/python3 /usr/share/perl /usr/share/doc 2>/dev/null"#,
        a = a.display(),
        b = b.display(),
        py = py.display(),
        s = scratch.display()
    );
    let st = Command::new("sh").arg("-c").arg(&script).status().unwrap();
    assert!(st.success(), "building the python layers");
    ["base.tar", "dist.tar", "py.tar"]
        .iter()
        .map(|n| std::fs::read(scratch.join(n)).unwrap())
        .collect()
}

/// A registry with `t/py:1` (zstd:chunked, strata's lazy format) behind a counting proxy.
struct Setup {
    reg: Registry,
    proxy: Proxy,
    state: tempfile::TempDir,
    image: String,
    blob_bytes: u64,
}

/// A pod's pause image: its `/bin/sh` (the image's command) sleeps until killed.
fn pause_tar(scratch: &Path) -> Vec<u8> {
    let p = scratch.join("pause");
    let script = format!(
        r#"set -e; p={p}; mkdir -p $p/bin $p/proc $p/sys $p/dev $p/etc
cp /bin/busybox $p/bin/busybox
printf '#!/bin/busybox sh\nexec /bin/busybox sleep 100000\n' > $p/bin/sh; chmod 755 $p/bin/sh
tar -C $p -cf {s}/pause.tar ."#,
        p = p.display(),
        s = scratch.display()
    );
    let st = Command::new("sh").arg("-c").arg(&script).status().unwrap();
    assert!(st.success(), "building the pause layer");
    std::fs::read(scratch.join("pause.tar")).unwrap()
}

/// The registry with the pause image and (with `python`) `t/py:1`.
fn setup_with(python: bool) -> Setup {
    let reg = Registry::start();
    let state = tempfile::tempdir().unwrap();
    let blob_bytes = match python {
        true => {
            let tars = python_tars(state.path());
            push_tars(&reg.addr, "t/py", "1", tars, Comp::Native).blob_bytes
        }
        false => 0,
    };
    push_tars(
        &reg.addr,
        "t/pause",
        "1",
        vec![pause_tar(state.path())],
        Comp::Native,
    );
    let proxy = Proxy::start(&reg.addr);
    let image = format!("{}/t/py:1", proxy.addr);
    Setup {
        reg,
        proxy,
        state,
        image,
        blob_bytes,
    }
}

fn setup() -> Setup {
    setup_with(true)
}

impl Setup {
    fn start(&self) -> (Snapshotter, Containerd) {
        let p = self.state.path();
        let sn = Snapshotter::start(
            &p.join("root"),
            &self.proxy.addr,
            &p.join("s.sock"),
            &p.join("snapshotter.log"),
        );
        let pause = format!("{}/t/pause:1", self.proxy.addr);
        let ctd = Containerd::start(&p.join("ctd"), &sn.socket, &self.proxy.addr, &pause);
        (sn, ctd)
    }

    /// Body bytes the registry served, asserting that no layer blob was fetched whole.
    fn fetched(&self) -> u64 {
        let log = self.proxy.stats.log.lock().unwrap().clone();
        for line in &log {
            assert!(
                !(line.contains("/blobs/")
                    && line.starts_with("GET")
                    && !line.contains("Range:")
                    && self.is_layer(line)),
                "a layer blob was downloaded whole: {line}\nall requests:\n{}",
                log.join("\n")
            );
        }
        self.proxy.counts().1
    }

    /// Whether a request line names a layer blob (not the config: containerd fetches that).
    fn is_layer(&self, line: &str) -> bool {
        let blobs = self.state.path().join("layers.txt");
        std::fs::read_to_string(blobs)
            .is_ok_and(|t| t.lines().any(|d| !d.is_empty() && line.contains(d)))
    }
}

/// A CRI client on containerd's socket.
async fn channel(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            tokio::net::UnixStream::connect(path.clone())
        }))
        .await
        .expect("connecting to containerd's CRI")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Pulls `image` through the CRI plugin as kubelet does; returns its image ref.
async fn cri_pull(ch: Channel, image: &str) -> String {
    let mut images = ImageServiceClient::new(ch);
    let req = cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp = tokio::time::timeout(Duration::from_secs(300), images.pull_image(req))
        .await
        .expect("CRI PullImage within 300s")
        .expect("CRI PullImage");
    resp.into_inner().image_ref
}

/// Notes the image's layer digests (from the registry's manifest) so that
/// [`Setup::fetched`] can tell layer blobs from the config.
fn note_layers(s: &Setup) {
    let manifest = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!("http://{}/v2/t/py/manifests/1", s.reg.addr))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&manifest.stdout).unwrap();
    let digests: Vec<String> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    std::fs::write(s.state.path().join("layers.txt"), digests.join("\n")).unwrap();
}

#[test]
fn cri_pull_serves_layers_lazily_and_ctr_and_a_pod_run_python_on_them() {
    if !require_root_fuse("cri_pull_serves_layers_lazily_and_ctr_and_a_pod_run_python_on_them")
        || !require_containerd("cri_pull_serves_layers_lazily_and_ctr_and_a_pod_run_python_on_them")
    {
        return;
    }
    let s = setup();
    let (sn, ctd) = s.start();
    let rt = runtime();
    let ch = rt.block_on(channel(&ctd.socket));
    let image_ref = rt.block_on(cri_pull(ch.clone(), &s.image));
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    note_layers(&s);
    let pulled = s.fetched();
    assert!(
        pulled * 10 <= s.blob_bytes,
        "the pull fetched {pulled} of {} blob bytes\nsnapshotter log:\n{}",
        s.blob_bytes,
        tail(&sn.log)
    );
    // containerd committed every layer as strata's remote snapshots.
    let out = ctd.ctr_ok("k8s.io", &["snapshots", "--snapshotter", "strata", "ls"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(listing.matches("Committed").count(), 3, "{listing}");
    let out = ctd.ctr_ok(
        "k8s.io",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "strata",
            &s.image,
            "py42",
            "python3",
            "-c",
            "print(42)",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // A pod as kubelet runs one: a container of the same image on the same snapshots.
    let logs = s.state.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (code, log) = rt.block_on(run_pod(ch, &s.image, &logs, &ctd.log));
    assert_eq!(
        code,
        0,
        "container exit code; log:\n{log}\ncontainerd:\n{}",
        tail(&ctd.log)
    );
    assert!(log.contains(" stdout F 42"), "container log:\n{log}");
    let total = s.fetched();
    eprintln!(
        "registry bytes: pull {pulled}, pull+run+pod {total}, of {} blob bytes",
        s.blob_bytes
    );
    assert!(
        total * 10 <= s.blob_bytes,
        "pull, run and pod fetched {total} of {} blob bytes",
        s.blob_bytes
    );
    drop(ctd);
    drop(sn);
}

/// A pod on the host's network, its containers' logs in `logs`.
fn pod_config(logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "lazy".into(),
            uid: "u1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container of `image` printing 42, logging to `py.log`.
fn container_config(image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "py".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: vec!["python3".into(), "-c".into(), "print(42)".into()],
        log_path: "py.log".into(),
        ..Default::default()
    }
}

/// Waits (at most 120 s) for container `id` to exit; returns its exit code.
async fn wait_exited(rs: &mut RuntimeServiceClient<Channel>, id: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = rs
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .unwrap();
        if st.state == cri::ContainerState::ContainerExited as i32 {
            return st.exit_code;
        }
        assert!(
            Instant::now() < deadline,
            "the container did not exit within 120s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// RunPodSandbox (host network), CreateContainer, StartContainer, as kubelet does; waits for
/// the container to exit and returns its exit code and log; removes the pod.
async fn run_pod(ch: Channel, image: &str, logs: &Path, ctd_log: &Path) -> (i32, String) {
    let mut rs = RuntimeServiceClient::new(ch);
    let sandbox = pod_config(logs);
    let pod = rs
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", tail(ctd_log)))
        .into_inner()
        .pod_sandbox_id;
    let id = rs
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config(image)),
            sandbox_config: Some(sandbox),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", tail(ctd_log)))
        .into_inner()
        .container_id;
    rs.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", tail(ctd_log)));
    let code = wait_exited(&mut rs, &id).await;
    let log = std::fs::read_to_string(logs.join("py.log")).unwrap_or_default();
    let _ = rs
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await;
    let _ = rs
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await;
    (code, log)
}

#[test]
fn a_snapshotter_restart_leaves_a_running_container_reading() {
    if !require_root_fuse("a_snapshotter_restart_leaves_a_running_container_reading")
        || !require_containerd("a_snapshotter_restart_leaves_a_running_container_reading")
    {
        return;
    }
    let s = setup();
    let (mut sn, ctd) = s.start();
    let rt = runtime();
    let ch = rt.block_on(channel(&ctd.socket));
    rt.block_on(cri_pull(ch, &s.image));
    // The container waits for the restart, then reads modules it has not read yet (their
    // chunks come through the store after the snapshotter is back).
    let script = "import time; time.sleep(4); import json, email.parser, http.client, xml.dom.minidom; print('read', json.dumps([1]))";
    let mut run = ctd
        .ctr_args(
            "k8s.io",
            &[
                "run",
                "--rm",
                "--snapshotter",
                "strata",
                &s.image,
                "reader",
                "python3",
                "-c",
                script,
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    sn.kill();
    let sn = Snapshotter::start(
        &s.state.path().join("root"),
        &s.proxy.addr,
        &sn.socket.clone(),
        &sn.log.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while matches!(run.try_wait(), Ok(None)) {
        assert!(
            Instant::now() < deadline,
            "the container did not end within 120s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the container failed ({}): {}\nsnapshotter:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tail(&sn.log)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "read [1]");
    // The restarted snapshotter still knows the image's snapshots and starts another.
    let out = ctd.ctr_ok(
        "k8s.io",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "strata",
            &s.image,
            "again",
            "python3",
            "-c",
            "print(42)",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // Stopped with nothing running, its store ends; started again, it has the store serve
    // the image's layers anew before mounting them.
    let (root, socket, log) = (
        s.state.path().join("root"),
        sn.socket.clone(),
        sn.log.clone(),
    );
    drop(sn);
    let store = root.join("layers");
    let deadline = Instant::now() + Duration::from_secs(60);
    while strata_tests::mounts().iter().any(|m| m.point == store) {
        assert!(
            Instant::now() < deadline,
            "the layer store did not end within 60s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let sn = Snapshotter::start(&root, &s.proxy.addr, &socket, &log);
    // containerd redials a proxy plugin with a backoff (at most 3 s apart in 1.6): until it
    // has, its calls fail as unavailable.
    let run = [
        "run",
        "--rm",
        "--snapshotter",
        "strata",
        &s.image,
        "third",
        "python3",
        "-c",
        "print(43)",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = ctd.ctr_args("k8s.io", &run).output().unwrap();
    while !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("unavailable")
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(500));
        out = ctd.ctr_args("k8s.io", &run).output().unwrap();
    }
    assert!(
        out.status.success(),
        "ctr run after the restart: {}\nsnapshotter:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&sn.log)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "43");
    drop(ctd);
    drop(sn);
}

#[test]
fn without_labels_layers_are_unpacked_and_removed_with_their_image() {
    if !require_root_fuse("without_labels_layers_are_unpacked_and_removed_with_their_image")
        || !require_containerd("without_labels_layers_are_unpacked_and_removed_with_their_image")
    {
        return;
    }
    let s = setup_with(false);
    let layers = vec![
        strata_tests::fixtures::busybox_layer(),
        vec![strata_tests::layers::file(
            "hello.txt",
            b"from the top layer\n",
        )],
    ];
    strata_tests::layers::push_image(&s.reg.addr, "t/plain", "1", &layers, Comp::Gzip);
    let image = format!("{}/t/plain:1", s.proxy.addr);
    let (sn, ctd) = s.start();
    // ctr's own pull sends no image labels: containerd downloads and unpacks each layer into
    // an ordinary snapshot of strata's.
    ctd.ctr_ok(
        "default",
        &[
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            "strata",
            &image,
        ],
    );
    let dirs = s.state.path().join("root/snapshotter/snapshots");
    assert_eq!(std::fs::read_dir(&dirs).unwrap().count(), 2);
    let out = ctd.ctr_ok(
        "default",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "strata",
            &image,
            "plain",
            "/bin/cat",
            "/hello.txt",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the top layer\n");
    // Removing the image lets containerd's collector remove the snapshots, and their dirs.
    ctd.ctr_ok("default", &["image", "rm", "--sync", &image]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&dirs).unwrap().count() > 0 {
        assert!(
            Instant::now() < deadline,
            "snapshot dirs left: {:?}\nsnapshotter:\n{}",
            std::fs::read_dir(&dirs)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect::<Vec<_>>(),
            tail(&sn.log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let meta =
        std::fs::read_to_string(s.state.path().join("root/snapshotter/metadata.json")).unwrap();
    assert!(meta.contains("\"snaps\":{}"), "{meta}");
    drop(ctd);
    drop(sn);
}
