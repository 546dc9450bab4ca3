//! The store server: mounts the store, adds images' layers as clients ask, and ends when it
//! has had no user for a while and no overlay mount still stacks its layers.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_formats::profile::Prefetch;
use strata_image::{Images, OpenLayer, source_ref};
use strata_lazyfs::mount::{MountOptions, spawn};
use strata_lazyfs::open_journal::OpenJournal;
use strata_lazyfs::takeover::serve_fd;
use strata_lazyfs::{LazyFs, StoreTree};
use strata_oci::Digest;
use strata_oci::causes::with_causes;
use strata_storage::store::ImageRecord;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::protocol::{Reply, Request, Status};
use crate::{StoreError, StorePaths};

/// How the server behaves.
#[derive(Debug)]
pub struct ServeOptions {
    /// How long the store stays up with no user before it ends.
    pub idle: Duration,
    /// The FUSE connection a holder keeps (see [`strata_lazyfs::takeover`]); without one the
    /// server mounts the store itself, and nobody can take over if it dies.
    pub connection: Option<Connection>,
    /// The settings it serves with, reported to users ([`crate::client::settings_of`]).
    pub settings: String,
}

/// A FUSE connection, mounted on the store's mount point, handed to the server.
#[derive(Debug)]
pub struct Connection {
    /// The `/dev/fuse` descriptor.
    pub fd: std::os::fd::OwnedFd,
    /// Whether a previous server served it (and died): then the layers it had added are
    /// added again in the same order, and unanswered requests are resent.
    pub resume: bool,
}

/// One line of the journal: layer `layer` of `image` was added.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Added {
    image: ImageRecord,
    layer: usize,
    /// Inodes it took: what a successor reserves if it cannot add the layer again.
    #[serde(default)]
    inodes: usize,
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
    /// The last read that failed.
    last_failure: Arc<strata_lazyfs::LastFailure>,
    settings: String,
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
    let (fs, tree) = LazyFs::store(images.fetcher().clone(), rt.handle().clone());
    let fs = fs.with_passthrough(true);
    let last_failure = fs.last_failure();
    let mount_opts = MountOptions {
        clone_fd: false,
        ..MountOptions::default()
    };
    let drains = opts.connection.is_some();
    let session = match opts.connection {
        Some(c) if c.resume => {
            let _in_runtime = rt.enter();
            replay(&images, &tree, &paths.journal);
            let (journal, open) = OpenJournal::resumed(&paths.opens);
            let fs = fs.with_open_journal(journal, open);
            serve_fd(fs, c.fd, &paths.mount, true, &mount_opts)
        }
        Some(c) => {
            let _ = std::fs::remove_file(&paths.journal);
            let fs = fs.with_open_journal(OpenJournal::fresh(&paths.opens), Default::default());
            serve_fd(fs, c.fd, &paths.mount, false, &mount_opts)
        }
        None => {
            let _ = std::fs::remove_file(&paths.journal);
            strata_lazyfs::stale::clear(&paths.mount);
            std::fs::create_dir_all(&paths.mount).map_err(StoreError::io(&paths.mount))?;
            spawn(fs, &paths.mount, &mount_opts)
        }
    }
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
        last_failure,
        settings: opts.settings,
    });
    rt.block_on(server.clone().run(listener, opts.idle));
    if drains {
        // Unmounted, but overlay mounts this server cannot see (podman's, whose lower layers
        // are named through its own links) may still stack private clones of the store: keep
        // serving them until the kernel ends the connection with the last of them (ENODEV).
        // A new store can be mounted at the same place meanwhile.
        info!("layer store unmounted; serving what still stacks it until it goes");
        let _ = session.join();
    } else {
        drop(session);
    }
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
            info!("layer store idle but its start lock is held; staying");
            return false;
        };
        if *self.users.borrow() != 0 {
            info!(
                users = *self.users.borrow(),
                "layer store has users again; staying"
            );
            return false;
        }
        // overlayfs stacks private clones of its lower mounts, so unmounting the store would
        // succeed under a container and leave its reads to nobody: look for such stacks.
        let stacked = stacked_on(&self.paths.mount);
        if stacked > 0 {
            info!(
                overlays = stacked,
                "layer store idle but stacked on; staying"
            );
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
                    // A client that goes away (killed) while its image is added is no user:
                    // what it asked for is dropped rather than holding the store up.
                    let added = tokio::select! {
                        added = self.add(image, prefetch) => added,
                        _ = lines.next_line() => {
                            info!("a client left while its image was added");
                            break;
                        }
                    };
                    match added {
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
            last_failure: self.last_failure.last(),
            settings: self.settings.clone(),
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
        let chains = chain_names(&img);
        let mut lowers = Vec::with_capacity(layers.len());
        for (i, l) in layers.iter().enumerate() {
            let (tree, layer) = (self.tree.clone(), l.clone());
            let journal = self.paths.journal.clone();
            let image = img.clone();
            let (name, below) = (chains[i].clone(), below(&chains, i));
            let added = tokio::task::spawn_blocking(move || {
                let info = info_of(&layer, &name);
                let source = layer.source.clone();
                tree.add_layer_then(&name, &below, &layer.index, source, info, |inodes| {
                    let line = Added {
                        image,
                        layer: i,
                        inodes,
                    };
                    note_added(&journal, &line)
                })
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("image {}, layer {i} ({}): {e}", img.manifest, l.source.blob))?;
            if added > 0 {
                info!(layer = %l.source.blob, chain = %chains[i], "layer added");
            }
            let dir = self.paths.mount.join(&chains[i]);
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

/// What a layer directory's `info` file says.
fn info_of(l: &OpenLayer, chain: &str) -> Vec<u8> {
    serde_json::json!({
        "compressed-diff-digest": l.source.blob.to_string(),
        "chain": chain,
        "entries": l.index.entries.len(),
    })
    .to_string()
    .into_bytes()
}

/// The store directory name of each layer of `img`, bottom first: the layer on its lower
/// layers, as the image-spec's ChainID (`config.md`) but over blob digests: the first layer's
/// digest, then `sha256(chain below + " " + layer digest)`, as 64 hex digits (no `:`, which
/// overlayfs' `lowerdir` option uses as its separator).
pub fn chain_names(img: &ImageRecord) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(img.layers.len());
    for d in &img.layers {
        let name = match out.last() {
            None => d.hex(),
            Some(below) => Digest::of(format!("sha256:{below} {d}").as_bytes()).hex(),
        };
        out.push(name);
    }
    out
}

/// The names of the layers below layer `i`, top first.
fn below(chains: &[String], i: usize) -> Vec<String> {
    chains[..i].iter().rev().cloned().collect()
}

/// Appends `line` to the journal (a failure is logged: a successor would then number inodes
/// differently from the layer on).
fn note_added(journal: &Path, line: &Added) {
    use std::io::Write;
    let mut text = serde_json::to_vec(line).unwrap_or_default();
    text.push(b'\n');
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal)
        .and_then(|mut f| f.write_all(&text));
    if let Err(e) = written {
        warn!(journal = %journal.display(), error = %e, "layer not journaled");
    }
}

/// Adds again, in their order, the layers the journal lists (a predecessor's), so that every
/// inode has the number the kernel knows. A layer that cannot be added again (its image was
/// removed since) keeps its place: as many unreachable inodes as it had are reserved.
fn replay(images: &Images, tree: &StoreTree, journal: &Path) {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    let catalog = images.catalog();
    let mut opened: std::collections::HashMap<Digest, Vec<OpenLayer>> = Default::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(a) = serde_json::from_str::<Added>(line) else {
            warn!(line, "journal line unreadable; replay stopped");
            return;
        };
        let result = (|| {
            let layers = match opened.entry(a.image.manifest) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(catalog.open_layers(&a.image).map_err(|e| with_causes(&e))?)
                }
            };
            let l = layers
                .get(a.layer)
                .ok_or_else(|| format!("no layer {} in {}", a.layer, a.image.manifest))?;
            let chains = chain_names(&a.image);
            let name = chains.get(a.layer).ok_or("chain out of range")?;
            let lowers = below(&chains, a.layer);
            tree.add_layer(name, &lowers, &l.index, l.source.clone(), info_of(l, name))
                .map_err(|e| e.to_string())
        })();
        match result {
            Ok(n) if n != a.inodes && a.inodes != 0 => {
                warn!(
                    added = n,
                    journaled = a.inodes,
                    "a replayed layer took other inodes"
                );
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, inodes = a.inodes, "layer not replayed; its inodes are reserved");
                tree.reserve(a.inodes);
            }
        }
    }
    info!(layers = tree.layers(), "journal replayed");
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

/// How many overlay mounts (of this mount namespace) have a lower directory in `store`.
fn stacked_on(store: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", store.display());
    info.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            (fields.get(sep + 1) == Some(&"overlay")).then(|| fields.get(sep + 3).copied())?
        })
        .filter(|opts| {
            opts.split(',')
                .filter_map(|o| o.strip_prefix("lowerdir="))
                .flat_map(split_lowers)
                .any(|l| l.starts_with(&prefix))
        })
        .count()
}

/// overlayfs' `lowerdir` value as mountinfo shows it, split into paths: `:` separates them
/// unless escaped (`\:`), `\NNN` octal escapes are decoded.
fn split_lowers(value: &str) -> Vec<String> {
    let b = value.as_bytes();
    let (mut parts, mut cur, mut i) = (Vec::new(), Vec::new(), 0);
    let done = |cur: &mut Vec<u8>| unescape_octal(&String::from_utf8_lossy(&std::mem::take(cur)));
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() && !b[i + 1].is_ascii_digit() {
            cur.push(b[i + 1]);
            i += 2;
        } else if b[i] == b':' {
            parts.push(done(&mut cur));
            i += 1;
        } else {
            cur.push(b[i]);
            i += 1;
        }
    }
    parts.push(done(&mut cur));
    parts
}

/// A mountinfo field with its `\NNN` octal escapes (space, tab, newline, backslash) decoded.
fn unescape_octal(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_values_split_on_unescaped_colons() {
        assert_eq!(split_lowers(r"/a\:b/l:/c\072d"), ["/a:b/l", "/c:d"]);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_octal(r"/a\040b\134c\012d"), "/a b\\c\nd");
        assert_eq!(unescape_octal(r"/x\09"), r"/x\09");
    }

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
