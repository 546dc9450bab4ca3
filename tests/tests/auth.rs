//! Credentials against the real registry with htpasswd (Basic) auth: refused without them,
//! `strata login` checks and stores them, `~/.docker/config.json` is read, `logout` forgets.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::process::Command;

use strata_tests::layers::{Comp, file, push_image_auth};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, bin};

#[test]
fn basic_auth_login_docker_config_and_logout() {
    if !require_root_fuse("basic_auth_login_docker_config_and_logout") {
        return;
    }
    let reg = Registry::start_with_htpasswd("alice", "s3cret:x");
    let image = push_image_auth(
        &reg.addr,
        Some("alice:s3cret:x"),
        "t/private",
        "1",
        &[vec![file("secret.txt", b"hush")]],
        Comp::Native,
    );
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let no_docker = state.path().join("no-docker");
    let env = |c: &mut Command| {
        c.env("DOCKER_CONFIG", &no_docker);
    };
    let strata = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.arg("--root").arg(&root).args(args);
        env(&mut c);
        c.output().unwrap()
    };

    let out = strata(&["pull", &image.reference]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = strata(&["login", "-u", "alice", "-p", "wrong", &reg.addr]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !root.join("auth.json").exists()
            || !std::fs::read_to_string(root.join("auth.json"))
                .unwrap()
                .contains(&reg.addr)
    );

    let out = strata(&["login", "-u", "alice", "-p", "s3cret:x", &reg.addr]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Login Succeeded"));
    let out = strata(&["pull", &image.reference]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        let m = Mounted::new(&root, &image.reference, &state.path().join("mnt"));
        assert_eq!(std::fs::read(m.dir.join("secret.txt")).unwrap(), b"hush");
    }
    let out = strata(&["logout", &reg.addr]);
    assert!(out.status.success());

    // Credentials from a docker config.json work with a fresh state root.
    let docker = state.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"YWxpY2U6czNjcmV0Ong="}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let fresh = state.path().join("fresh");
    let out = Command::new(bin())
        .arg("--root")
        .arg(&fresh)
        .args(["pull", &image.reference])
        .env("DOCKER_CONFIG", &docker)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
