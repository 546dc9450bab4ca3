//! The registry client as the lazy fetch's [`BlobSource`].

use std::ops::Range;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};

use strata_distribution::{self as distribution, RegistryClient};
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;
use strata_storage::source::{BlobSource, BlobStream, RangeReply, SourceError};

/// Layer blobs from registries, by HTTP range.
#[derive(Debug, Clone)]
pub struct RegistryBlobs(pub Arc<RegistryClient>);

impl BlobSource for RegistryBlobs {
    fn range<'a>(
        &'a self,
        repo: &'a Reference,
        blob: &'a Digest,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<RangeReply, SourceError>> {
        async move {
            match self.0.get_blob_range(repo, blob, range).await {
                Ok(distribution::RangeReply::Partial(b)) => Ok(RangeReply::Partial(b)),
                Ok(distribution::RangeReply::Whole(b)) => Ok(RangeReply::Whole(b)),
                Err(e) => Err(SourceError::new(e)),
            }
        }
        .boxed()
    }

    fn stream<'a>(
        &'a self,
        repo: &'a Reference,
        blob: &'a Digest,
    ) -> BoxFuture<'a, Result<BlobStream, SourceError>> {
        async move {
            let body = self
                .0
                .blob_stream(repo, blob)
                .await
                .map_err(SourceError::new)?;
            Ok(body.map_err(SourceError::new).boxed())
        }
        .boxed()
    }
}
