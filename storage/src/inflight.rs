//! Bookkeeping of the lazy fetch: which chunks are being fetched (so that each is fetched once
//! however many readers want it), and whether any reader is waiting for the network (so that
//! background fetches hold back).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strata_formats::index::Chunk;
use strata_oci::digest::Digest;
use tokio::sync::watch;

/// How a fetch others wait for ended, as its waiters see it once their receiver wakes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It ended; the chunk is in the cache unless something went wrong that the fetcher
    /// reports to its own caller (the waiter looks in the cache).
    #[default]
    Done,
    /// It was abandoned (its reader passed its deadline or went away) before it ended: a waiter
    /// with time left may fetch the chunk itself.
    Abandoned,
    /// It failed for this reason (the error and its causes, one line), which the waiters
    /// report as their own cause.
    Failed(Arc<str>),
}

/// Chunks being fetched; the receiver of each wakes when its fetch ends, however it ends, and
/// then holds how ([`Ended`]).
#[derive(Debug, Default)]
pub(crate) struct Inflight {
    map: Mutex<HashMap<Digest, watch::Receiver<Ended>>>,
}

/// What [`Inflight::claim`] found.
pub(crate) struct Claimed<'a> {
    /// The claim on the chunks this caller fetches.
    pub(crate) claim: Claim<'a>,
    /// Those chunks.
    pub(crate) mine: Vec<Chunk>,
    /// Chunks someone else is fetching, with the receiver that wakes when that fetch ends.
    pub(crate) waits: Vec<(Digest, watch::Receiver<Ended>)>,
}

impl Inflight {
    /// Claims every chunk of `missing` (chunks with a digest, each once) that nobody is
    /// fetching yet. Only map operations run under the lock.
    pub(crate) fn claim(&self, missing: &[Chunk]) -> Claimed<'_> {
        let mut mine = Vec::new();
        let mut waits = Vec::new();
        let mut senders = HashMap::new();
        {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            for c in missing {
                let Some(d) = c.digest else { continue };
                if let Some(rx) = map.get(&d) {
                    waits.push((d, rx.clone()));
                    continue;
                }
                let (tx, rx) = watch::channel(Ended::Done);
                map.insert(d, rx);
                senders.insert(d, tx);
                mine.push(*c);
            }
        }
        Claimed {
            claim: Claim {
                map: &self.map,
                senders: Mutex::new(senders),
            },
            mine,
            waits,
        }
    }
}

/// Removes claimed chunks from the in-flight map when their fetch ends, however it ends;
/// dropping the senders wakes the waiters. Chunks still claimed when the claim is dropped were
/// abandoned (the fetch was cancelled): their waiters are told so.
pub(crate) struct Claim<'a> {
    map: &'a Mutex<HashMap<Digest, watch::Receiver<Ended>>>,
    senders: Mutex<HashMap<Digest, watch::Sender<Ended>>>,
}

impl Claim<'_> {
    /// Ends the claim on `digests` (their waiters wake and look in the cache).
    pub(crate) fn release(&self, digests: impl IntoIterator<Item = Digest>) {
        self.release_as(digests, Ended::Done);
    }

    /// Ends the claim on `digests` whose fetch failed with `cause`: their waiters fail with it.
    pub(crate) fn fail(&self, digests: impl IntoIterator<Item = Digest>, cause: &Arc<str>) {
        self.release_as(digests, Ended::Failed(cause.clone()));
    }

    /// Ends the claim on `digests` whose fetch gave up waiting (passed the deadline): their
    /// waiters may try themselves, within their own deadlines.
    pub(crate) fn abandon(&self, digests: impl IntoIterator<Item = Digest>) {
        self.release_as(digests, Ended::Abandoned);
    }

    fn release_as(&self, digests: impl IntoIterator<Item = Digest>, how: Ended) {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for d in digests {
            map.remove(&d);
            if let Some(tx) = senders.remove(&d)
                && how != Ended::Done
            {
                tx.send_replace(how.clone());
            }
        }
    }
}

impl Claim<'_> {
    /// Ends the claim on every chunk still claimed: their fetch ended, well or with the error
    /// `failed` (one line with its causes), which their waiters then report.
    pub(crate) fn finish(self, failed: Option<Arc<str>>) {
        let all: Vec<Digest> = self
            .senders
            .lock()
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default();
        match failed {
            Some(cause) => self.fail(all, &cause),
            None => self.release(all),
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let all: Vec<Digest> = self
            .senders
            .lock()
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default();
        self.abandon(all);
    }
}

/// How many reads wait for the network now.
#[derive(Debug)]
pub(crate) struct Foreground {
    waiting: watch::Sender<usize>,
}

impl Default for Foreground {
    fn default() -> Self {
        Self {
            waiting: watch::Sender::new(0),
        }
    }
}

/// Counts one read as waiting for as long as it lives.
pub(crate) struct Waiting<'a>(&'a watch::Sender<usize>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Foreground {
    /// Counts a read that waits for the network until the guard is dropped.
    pub(crate) fn enter(&self) -> Waiting<'_> {
        self.waiting.send_modify(|n| *n += 1);
        Waiting(&self.waiting)
    }

    /// Reads waiting now.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        *self.waiting.borrow()
    }

    /// Returns once no read is waiting (at once if none is); woken by the last waiting read,
    /// not by polling.
    pub(crate) async fn idle(&self) {
        let mut rx = self.waiting.subscribe();
        // The sender lives as long as `self`: this cannot fail while we borrow it.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}
