//! `strata snapshotter`: containerd's snapshots API (gRPC on a unix socket, loaded by
//! containerd as a proxy plugin) over strata's layer store.
//!
//! A layer whose `Prepare` carries the remote-snapshot labels (`containerd.io/snapshot.ref`
//! and the CRI plugin's `containerd.io/snapshot/cri.image-ref` / `cri.layer-digest`, which
//! `ctr-remote rpull --use-containerd-labels` sends too) is resolved through strata's lazy
//! pull, served by the layer store, committed under its chain ID and answered "already
//! exists": containerd never downloads its blob. Any other snapshot is an ordinary overlay
//! snapshot under the snapshotter's directory (`snapshots/<id>/fs`, `work`), which
//! containerd unpacks into. Active snapshots mount as overlayfs over their parents' dirs.

mod error;
mod meta;
mod mounts;
mod remote;
mod server;
mod service;

pub use error::SnapError;
pub use server::{ServeError, serve};
pub use service::StrataSnapshotter;
