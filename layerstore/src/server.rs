//! The store server: mounts the store, adds images' layers as clients ask, and ends when it
//! has had no user for a while and no overlay mount still stacks its layers.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_formats::profile::Prefetch;
use strata_image::{Images, source_ref};
use strata_lazyfs::layer_dirs::layer_dir_name;
use strata_lazyfs::mount::{MountOptions, spawn};
use strata_lazyfs::{LazyFs, StoreTree};
use strata_oci::Digest;
use strata_storage::store::ImageRecord;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::protocol::{Reply, Request, Status};
use crate::{StoreError, StorePaths};

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long the store stays up with no user before it ends.
    pub idle: Duration,
}

/// The server's state.
struct Server {
    images: Images,
    tree: StoreTree,
    paths: StorePaths,
    /// Open connections.
    users: watch::Sender<usize>,
    /// Images whose prefetch has been started.
    prefetched: Mutex<HashSet<Digest>>,
}

/// Serves the store of state root `root` until it ends (see the crate's docs): mounts it,
/// listens on its socket, and returns once it is unmounted.
///
/// Errors: the mount or the socket cannot be made.
pub fn serve(
    images: Images,
    rt: &tokio::runtime::Runtime,
    root: &Path,
    opts: ServeOptions,
) -> Result<(), StoreError> {
    let paths = StorePaths::new(root);
    strata_lazyfs::stale::clear(&paths.mount);
    std::fs::create_dir_all(&paths.mount).map_err(StoreError::io(&paths.mount))?;
    let (fs, tree) = LazyFs::store(images.fetcher().clone(), rt.handle().clone());
    let session = spawn(
        fs.with_passthrough(true),
        &paths.mount,
        &MountOptions::default(),
    )
    .map_err(StoreError::io(&paths.mount))?;
    let _ = std::fs::remove_file(&paths.socket);
    let listener = {
        let _in_runtime = rt.enter();
        UnixListener::bind(&paths.socket).map_err(StoreError::io(&paths.socket))?
    };
    info!(mount = %paths.mount.display(), pid = std::process::id(), "layer store serving");
    let server = Arc::new(Server {
        images,
        tree,
        paths,
        users: watch::channel(0).0,
        prefetched: Mutex::new(HashSet::new()),
    });
    rt.block_on(server.clone().run(listener, opts.idle));
    drop(session);
    info!("layer store ended");
    Ok(())
}

impl Server {
    async fn run(self: Arc<Self>, listener: UnixListener, idle: Duration) {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        self.users.send_modify(|n| *n += 1);
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.connection(stream).await;
                            me.users.send_modify(|n| *n -= 1);
                        });
                    }
                    Err(e) => warn!(error = %e, "accepting a layer store client"),
                },
                _ = idle_for(self.users.subscribe(), idle) => {
                    let me = self.clone();
                    let stopped = tokio::task::spawn_blocking(move || me.try_stop())
                        .await
                        .unwrap_or(false);
                    if stopped {
                        return;
                    }
                }
            }
        }
    }

    /// Ends the store if nobody uses it: under the start lock (so no client is connecting),
    /// with no connection, and the unmount succeeding (it fails while an overlay mount stacks
    /// one of its layers).
    fn try_stop(&self) -> bool {
        let Ok(_lock) = crate::client::take_lock(&self.paths.lock, Duration::from_secs(10)) else {
            return false;
        };
        if *self.users.borrow() != 0 {
            return false;
        }
        match nix::mount::umount2(&self.paths.mount, nix::mount::MntFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {
                let _ = std::fs::remove_file(&self.paths.socket);
                true
            }
            Err(e) => {
                info!(error = %e, "layer store idle but still in use; staying");
                false
            }
        }
    }

    async fn connection(&self, stream: UnixStream) {
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let reply = match serde_json::from_str::<Request>(&line) {
                Ok(Request::Add { image, prefetch }) => {
                    let prefetch = prefetch.parse().unwrap_or(Prefetch::None);
                    match self.add(image, prefetch).await {
                        Ok(lowers) => Reply::Lowers(lowers),
                        Err(e) => Reply::Error(e),
                    }
                }
                Ok(Request::Status) => Reply::Status(self.status()),
                Err(e) => Reply::Error(format!("bad request: {e}")),
            };
            let mut out = serde_json::to_vec(&reply).unwrap_or_default();
            out.push(b'\n');
            if w.write_all(&out).await.is_err() {
                break;
            }
        }
    }

    fn status(&self) -> Status {
        Status {
            pid: std::process::id(),
            users: *self.users.borrow(),
            layers: self.tree.layers(),
            inodes: self.tree.inodes(),
        }
    }

    /// Serves `img`'s layers; returns their `diff` directories, bottom first.
    async fn add(&self, img: ImageRecord, prefetch: Prefetch) -> Result<Vec<String>, String> {
        let started = Instant::now();
        let profile_done = self.start_profile(&img, prefetch);
        self.images
            .puller()
            .ensure_indexed(&img, &|_| {})
            .await
            .map_err(|e| with_causes(&e))?;
        let layers = self
            .images
            .catalog()
            .open_layers(&img)
            .map_err(|e| with_causes(&e))?;
        let mut lowers = Vec::with_capacity(layers.len());
        for l in &layers {
            let name = layer_dir_name(&l.source.blob);
            let info = serde_json::json!({
                "compressed-diff-digest": l.source.blob.to_string(),
                "entries": l.index.entries.len(),
            });
            let (tree, layer) = (self.tree.clone(), l.clone());
            let added = tokio::task::spawn_blocking(move || {
                let info = info.to_string().into_bytes();
                tree.add_layer(&name, &layer.index, layer.source.clone(), info)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("layer {}: {e}", l.source.blob))?;
            if added {
                info!(layer = %l.source.blob, "layer added");
            }
            let dir = self.paths.mount.join(layer_dir_name(&l.source.blob));
            lowers.push(dir.join("diff").to_string_lossy().into_owned());
        }
        let lowers = topmost_once(lowers);
        info!(
            image = %img.manifest,
            layers = layers.len(),
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "image served"
        );
        if let Some(rest) = profile_done {
            let prefetcher = self.images.prefetcher();
            tokio::spawn(async move {
                if let Some(h) = rest.0 {
                    let _ = h.await;
                }
                if rest.1 {
                    prefetcher.fetch_rest(&layers).await;
                }
            });
        }
        Ok(lowers)
    }

    /// Starts fetching `img`'s prefetch profile (once per image, if `prefetch` asks for it);
    /// returns the profile's task and whether the rest should follow, or `None` when this
    /// image's prefetch had been started already.
    fn start_profile(&self, img: &ImageRecord, prefetch: Prefetch) -> Option<ProfileTask> {
        let first = self
            .prefetched
            .lock()
            .map(|mut s| s.insert(img.manifest))
            .unwrap_or(false);
        if !first || prefetch == Prefetch::None {
            return None;
        }
        let profile = self.images.profiles().profile_of(img);
        let rest = prefetch.rest(profile.is_some());
        let task = match (profile, source_ref(img)) {
            (Some(p), Ok(repo)) => {
                let (pf, blobs) = (self.images.prefetcher(), img.layers.clone());
                Some(tokio::spawn(async move {
                    pf.prefetch_profile(&repo, &blobs, &p).await
                }))
            }
            _ => None,
        };
        Some((task, rest))
    }
}

/// `lowers` (bottom first) with each directory kept only where it is topmost: overlayfs
/// refuses a directory twice, and a layer applied again on top makes its lower occurrence
/// invisible (every entry, whiteout and opaque directory of it is repeated above).
fn topmost_once(lowers: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out: Vec<String> = lowers
        .into_iter()
        .rev()
        .filter(|l| seen.insert(l.clone()))
        .collect();
    out.reverse();
    out
}

/// The profile prefetch under way, and whether the rest of the image follows it.
type ProfileTask = (Option<tokio::task::JoinHandle<()>>, bool);

/// Resolves once nobody has used the store for `idle`.
async fn idle_for(mut users: watch::Receiver<usize>, idle: Duration) {
    loop {
        if users.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        if tokio::time::timeout(idle, users.wait_for(|n| *n > 0))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// An error and its causes on one line, a cause left out when the text already says it.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_layer_is_kept_where_it_is_topmost() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            topmost_once(l(&["a", "e", "b", "e", "c"])),
            l(&["a", "b", "e", "c"])
        );
        assert_eq!(topmost_once(l(&["a", "b"])), l(&["a", "b"]));
    }
}
