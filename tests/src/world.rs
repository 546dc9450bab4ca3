//! A test world: a registry holding a base image, a counting proxy in front of it, and a
//! fresh state root.

use std::path::PathBuf;

use crate::layers::{Comp, Item, push_image};
use crate::proxy::Proxy;
use crate::registry::Registry;

/// What a test that builds on a base image starts from.
pub struct World {
    /// The registry.
    pub reg: Registry,
    /// The proxy in front of it.
    pub proxy: Proxy,
    /// Scratch space (holds `root`).
    pub state: tempfile::TempDir,
    /// strata's state root (not yet created).
    pub root: PathBuf,
    /// The base image `t/base:1`, through the proxy.
    pub base: String,
}

impl World {
    /// Pushes `layers` compressed with `comp` as `t/base:1` and puts a proxy in front.
    pub fn start(layers: &[Vec<Item>], comp: Comp) -> Self {
        let reg = Registry::start();
        push_image(&reg.addr, "t/base", "1", layers, comp);
        let proxy = Proxy::start(&reg.addr);
        let base = format!("{}/t/base:1", proxy.addr);
        let state = tempfile::tempdir().unwrap();
        let root = state.path().join("root");
        Self {
            reg,
            proxy,
            state,
            root,
            base,
        }
    }
}
