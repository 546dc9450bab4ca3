//! Handing an async byte stream to blocking code that reads it as `std::io::Read` (tar walks,
//! decompressors), without holding the whole stream in memory.

use std::io::Read;

use bytes::Bytes;
use futures_util::TryStreamExt;

/// A blocking reader over byte buffers sent from an async task (use it off the runtime).
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    /// Reads what `rx` receives until its sender is dropped.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Errors of [`feed_blocking`]; `E` is the stream's own error.
#[derive(Debug, thiserror::Error)]
pub enum FeedError<E: std::error::Error + 'static> {
    /// The byte stream failed.
    #[error(transparent)]
    Source(E),
    /// The blocking consumer panicked or was cancelled.
    #[error("stream consumer failed: {0}")]
    Worker(String),
}

/// Feeds a blob's byte stream to `consume`, which runs on a blocking thread and reads it as
/// `std::io::Read`; `on_bytes` sees the size of each piece as it arrives.
pub async fn feed_blocking<T: Send + 'static, E: std::error::Error + 'static>(
    body: impl futures_util::Stream<Item = Result<Bytes, E>>,
    mut on_bytes: impl FnMut(u64),
    consume: impl FnOnce(ChannelReader) -> T + Send + 'static,
) -> Result<T, FeedError<E>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let work = tokio::task::spawn_blocking(move || consume(ChannelReader::new(rx)));
    let pump = async move {
        let mut body = std::pin::pin!(body);
        while let Some(piece) = body.try_next().await? {
            on_bytes(piece.len() as u64);
            if tx.send(piece).await.is_err() {
                break;
            }
        }
        Ok::<(), E>(())
    };
    let (pumped, done) = tokio::join!(pump, work);
    let done = done.map_err(|e| FeedError::Worker(e.to_string()))?;
    pumped.map_err(FeedError::Source)?;
    Ok(done)
}
