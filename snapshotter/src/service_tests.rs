//! The snapshots API's semantics on ordinary (unpacked) snapshots, as containerd's
//! snapshotter test suite states them: kinds, parents, mounts, commit, remove with children,
//! labels, walk filters, usage, cleanup, and metadata kept across a restart.

use std::collections::HashMap;

use containerd_snapshots::{Kind as ApiKind, Snapshotter};
use futures_util::StreamExt;
use strata_image::Images;

use super::StrataSnapshotter;
use crate::error::SnapError;

fn open(root: &std::path::Path) -> StrataSnapshotter {
    let images = Images::open(
        root,
        strata_distribution::ClientOptions::default(),
        64 << 20,
    )
    .unwrap();
    StrataSnapshotter::open(images).unwrap()
}

fn no_labels() -> HashMap<String, String> {
    HashMap::new()
}

async fn names(sn: &StrataSnapshotter, filter: &str) -> Vec<String> {
    let stream = sn
        .list(String::new(), vec![filter.to_string()])
        .await
        .unwrap();
    stream.map(|i| i.unwrap().name).collect().await
}

#[tokio::test]
async fn snapshots_stack_commit_and_remove_as_containerd_expects() {
    let dir = tempfile::tempdir().unwrap();
    let sn = open(dir.path());
    // A first layer: a writable bind mount of its own fs dir.
    let m = sn
        .prepare("a-active".into(), String::new(), no_labels())
        .await
        .unwrap();
    assert_eq!(m[0].r#type, "bind");
    let fs = std::path::PathBuf::from(&m[0].source);
    std::fs::write(fs.join("f"), b"12345").unwrap();
    let err = sn
        .prepare("a-active".into(), String::new(), no_labels())
        .await;
    assert!(matches!(err, Err(SnapError::AlreadyExists(_))));
    // A parent must be committed.
    let err = sn.prepare("b".into(), "a-active".into(), no_labels()).await;
    assert!(
        matches!(err, Err(SnapError::Precondition { .. })),
        "{err:?}"
    );
    sn.commit("a".into(), "a-active".into(), no_labels())
        .await
        .unwrap();
    assert!(matches!(
        sn.stat("a-active".into()).await,
        Err(SnapError::NotFound(_))
    ));
    assert_eq!(sn.stat("a".into()).await.unwrap().kind, ApiKind::Committed);
    let err = sn.mounts("a".into()).await;
    assert!(matches!(err, Err(SnapError::Precondition { .. })));
    let u = sn.usage("a".into()).await.unwrap();
    assert!(u.inodes >= 2 && u.size > 0, "{u:?}");
    // On a parent: overlayfs over the parent's fs dir.
    let m = sn
        .prepare("b".into(), "a".into(), no_labels())
        .await
        .unwrap();
    assert_eq!(m[0].r#type, "overlay");
    assert!(m[0].options.contains(&format!("lowerdir={}", fs.display())));
    // A view of one layer: a read-only bind mount of it.
    let v = sn.view("v".into(), "a".into(), no_labels()).await.unwrap();
    assert_eq!(
        (v[0].source.as_str(), v[0].options[0].as_str()),
        (fs.to_str().unwrap(), "ro")
    );
    assert_eq!(sn.stat("v".into()).await.unwrap().kind, ApiKind::View);
    let err = sn.commit("v2".into(), "v".into(), no_labels()).await;
    assert!(matches!(err, Err(SnapError::Precondition { .. })));
    // A parent with children stays.
    let err = sn.remove("a".into()).await;
    assert!(matches!(err, Err(SnapError::Precondition { .. })));
    assert_eq!(names(&sn, "parent==a").await, ["b", "v"]);
    assert_eq!(names(&sn, "kind==committed").await, ["a"]);
    for k in ["b", "v", "a"] {
        sn.remove(k.into()).await.unwrap();
    }
    assert!(!fs.exists());
    assert!(names(&sn, "").await.is_empty());
}

#[tokio::test]
async fn labels_update_and_everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let sn = open(dir.path());
        sn.prepare("x".into(), String::new(), no_labels())
            .await
            .unwrap();
        let labels: HashMap<String, String> = [
            ("k1".to_string(), "v1".to_string()),
            ("k2".to_string(), "v2".to_string()),
        ]
        .into();
        sn.commit("c".into(), "x".into(), labels).await.unwrap();
        let mut info = sn.stat("c".into()).await.unwrap();
        info.labels = [("k1".to_string(), "new".to_string())].into();
        // Only the masked label changes; k2, absent from the update, is removed by its path.
        let out = sn
            .update(info, Some(vec!["labels.k1".into(), "labels.k2".into()]))
            .await
            .unwrap();
        assert_eq!(out.labels, [("k1".to_string(), "new".to_string())].into());
        sn.prepare("top".into(), "c".into(), no_labels())
            .await
            .unwrap();
    }
    let sn = open(dir.path());
    let c = sn.stat("c".into()).await.unwrap();
    assert_eq!(c.labels.get("k1").map(String::as_str), Some("new"));
    assert_eq!(sn.stat("top".into()).await.unwrap().parent, "c");
    assert_eq!(names(&sn, r#"labels."k1"==new"#).await, ["c"]);
    // A directory no snapshot owns (a crash between metadata and removal) goes at cleanup.
    let stray = dir.path().join("snapshotter/snapshots/999");
    std::fs::create_dir_all(stray.join("fs")).unwrap();
    sn.clear().await.unwrap();
    assert!(!stray.exists());
    assert!(sn.mounts("top".into()).await.is_ok());
}

/// Two snapshotters on one state root would hand out the same ids: the second is refused,
/// naming the lock, and the root is free again once the first is gone.
#[test]
fn a_second_snapshotter_on_one_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let images = Images::open(
        dir.path(),
        strata_distribution::ClientOptions::default(),
        64 << 20,
    )
    .unwrap();
    let err = StrataSnapshotter::open(images).unwrap_err().to_string();
    assert!(err.contains("another strata snapshotter"), "{err}");
    assert!(err.contains("lock"), "{err}");
    drop(first);
    drop(open(dir.path()));
}
