//! Where the lazy fetch gets a layer's bytes: the [`BlobSource`] trait, implemented outside
//! storage (for the registry client by `strata-image`), so that storage needs no network code
//! and its fetch logic can be tested against a fake.

use std::fmt::Debug;
use std::ops::Range;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use strata_oci::digest::Digest;
use strata_oci::reference::Reference;

/// The error of a [`BlobSource`] (a registry error, say), kept as the cause of a fetch error.
#[derive(Debug)]
pub struct SourceError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl SourceError {
    /// Wraps the source's own error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }

    /// The source's own error, to look into (for example, to downcast it).
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A blob's bytes as they arrive.
pub type BlobStream = BoxStream<'static, Result<Bytes, SourceError>>;

/// The answer to a range request.
#[derive(Debug, Clone)]
pub enum RangeReply {
    /// Exactly the bytes asked for.
    Partial(Bytes),
    /// The source ignored the range and sent the whole blob, already checked against its digest.
    Whole(Bytes),
}

/// Layer blobs by digest, from one repository or another.
pub trait BlobSource: Send + Sync + Debug {
    /// The bytes `range` of blob `blob` in `repo`; a source that cannot serve ranges may answer
    /// with the whole (verified) blob instead.
    fn range<'a>(
        &'a self,
        repo: &'a Reference,
        blob: &'a Digest,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<RangeReply, SourceError>>;

    /// The whole blob as a stream (for layers without a TOC, whose chunks have no place in the
    /// blob); the reader checks the digest.
    fn stream<'a>(
        &'a self,
        repo: &'a Reference,
        blob: &'a Digest,
    ) -> BoxFuture<'a, Result<BlobStream, SourceError>>;
}

/// A source without blobs: every request fails (for caches used offline, and tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSource;

/// The error of [`NoSource`].
#[derive(Debug, thiserror::Error)]
#[error("blob {0} is not available offline")]
pub struct Offline(pub Digest);

impl BlobSource for NoSource {
    fn range<'a>(
        &'a self,
        _repo: &'a Reference,
        blob: &'a Digest,
        _range: Range<u64>,
    ) -> BoxFuture<'a, Result<RangeReply, SourceError>> {
        Box::pin(std::future::ready(Err(SourceError::new(Offline(*blob)))))
    }

    fn stream<'a>(
        &'a self,
        _repo: &'a Reference,
        blob: &'a Digest,
    ) -> BoxFuture<'a, Result<BlobStream, SourceError>> {
        Box::pin(std::future::ready(Err(SourceError::new(Offline(*blob)))))
    }
}
