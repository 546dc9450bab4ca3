//! Indexing a gzip stream while it is read once: [`GzipIndexer`] is the gzip decoder of a layer
//! being streamed (it yields the uncompressed tar) that also notes the checkpoints of
//! [`crate::zran`] and the sha256 of each compressed span between them, exactly as a ztoc holds
//! them, so a layer streamed once can be read by range afterwards with no second pass.

use std::io::{self, Read};

use crate::zlib::{Flush, Inflater, ZlibError};
use crate::zran::{Built, Checkpoint, Window, Zinfo, ZranError};
use strata_oci::digest::{Digest, Hasher};

/// What one pass over a gzip stream learned: its checkpoints, the span digests and sizes.
#[derive(Debug, Clone)]
pub struct Indexed {
    /// The checkpoints.
    pub zinfo: Zinfo,
    /// sha256 of each span's compressed bytes (SOCI's span boundaries).
    pub span_digests: Vec<Digest>,
    /// Compressed bytes read.
    pub compressed_size: u64,
    /// Uncompressed bytes produced.
    pub uncompressed_size: u64,
}

/// A gzip decoder (of one or more members) that checkpoints as it inflates.
pub struct GzipIndexer<R> {
    input: R,
    z: Inflater,
    inbuf: Box<[u8]>,
    pending: usize,
    have: usize,
    window: Window,
    span_size: u64,
    total_in: u64,
    total_out: u64,
    last: u64,
    checkpoints: Vec<Checkpoint>,
    digests: Vec<Digest>,
    /// The digest of the current span, from its first compressed byte on.
    span: Option<Hasher>,
    /// The last compressed byte inflate took (the first of a span whose point is inside it).
    last_byte: u8,
    /// A member ended; another may follow.
    ended: bool,
    eof: bool,
    failed: Option<String>,
}

impl<R: Read> GzipIndexer<R> {
    /// A decoder of `input` noting a checkpoint at the first block and then at the first block
    /// end after every `span_size` bytes of output.
    pub fn new(input: R, span_size: u64) -> Result<Self, ZranError> {
        Ok(Self {
            input,
            z: Inflater::new(47)?,
            inbuf: vec![0u8; 64 * 1024].into_boxed_slice(),
            pending: 0,
            have: 0,
            window: Window::new(),
            span_size,
            total_in: 0,
            total_out: 0,
            last: 0,
            checkpoints: Vec::new(),
            digests: Vec::new(),
            span: None,
            last_byte: 0,
            ended: false,
            eof: false,
            failed: None,
        })
    }

    /// Reads and inflates what is left of the stream, then returns what was learned.
    pub fn finish(mut self) -> Result<Indexed, ZranError> {
        let mut sink = vec![0u8; 64 * 1024];
        loop {
            match self.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    return Err(match e.downcast::<ZranError>() {
                        Ok(z) => z,
                        Err(e) => ZranError::Io(e),
                    });
                }
            }
        }
        if let Some(h) = self.span.take() {
            self.digests.push(h.finish());
        }
        let zinfo = Zinfo {
            span_size: self.span_size,
            checkpoints: self.checkpoints,
        };
        zinfo.check()?;
        Ok(Indexed {
            zinfo,
            span_digests: self.digests,
            compressed_size: self.total_in,
            uncompressed_size: self.total_out,
        })
    }

    fn fail(&mut self, e: ZranError) -> io::Error {
        self.failed = Some(e.to_string());
        io::Error::other(e)
    }

    /// One inflate call into `out`; `Ok(None)` at the end of the input.
    fn step(&mut self, out: &mut [u8]) -> Result<Option<usize>, ZranError> {
        if self.pending == self.have {
            if self.eof {
                return Ok(None);
            }
            self.have = self.input.read(&mut self.inbuf)?;
            self.pending = 0;
            if self.have == 0 {
                self.eof = true;
                if !self.ended {
                    return Err(ZranError::Zlib(ZlibError::Truncated));
                }
                return Ok(None);
            }
        }
        if self.ended {
            self.z.reset(47)?;
            self.ended = false;
        }
        let input = &self.inbuf[self.pending..self.have];
        let step = self.z.inflate(input, out, Flush::Block)?;
        let taken = &input[..step.consumed];
        if let Some(h) = self.span.as_mut() {
            h.update(taken);
        }
        if let Some(b) = taken.last() {
            self.last_byte = *b;
        }
        self.pending += step.consumed;
        self.total_in += step.consumed as u64;
        self.total_out += step.produced as u64;
        self.window.push(&out[..step.produced]);
        if step.stream_end {
            // Another member may follow (pigz, or appended layers).
            self.ended = true;
            return Ok(Some(step.produced));
        }
        let block_end = step.data_type & 128 != 0 && step.data_type & 64 == 0;
        if block_end && (self.checkpoints.is_empty() || self.total_out - self.last > self.span_size)
        {
            self.checkpoint(u8::try_from(step.data_type & 7).unwrap_or(0));
        }
        if step.consumed == 0 && step.produced == 0 && self.pending < self.have {
            return Err(ZlibError::Stalled.into());
        }
        Ok(Some(step.produced))
    }

    /// Notes a checkpoint here: the span before it ends, the next starts (one byte back when
    /// the point is inside a byte).
    fn checkpoint(&mut self, bits: u8) {
        if let Some(h) = self.span.take() {
            self.digests.push(h.finish());
        }
        let mut h = Hasher::default();
        if bits != 0 {
            h.update(&[self.last_byte]);
        }
        self.span = Some(h);
        self.checkpoints.push(Checkpoint {
            compressed: self.total_in,
            uncompressed: self.total_out,
            bits,
            window: self.window.snapshot(),
        });
        self.last = self.total_out;
    }
}

impl<R: Read> Read for GzipIndexer<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(f) = &self.failed {
            return Err(io::Error::other(f.clone()));
        }
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.step(out) {
                Ok(None) => return Ok(0),
                Ok(Some(0)) => {}
                Ok(Some(n)) => return Ok(n),
                Err(e) => return Err(self.fail(e)),
            }
        }
    }
}

/// Inflates a gzip stream (possibly several members) once and notes a checkpoint at the first
/// block and then at the first block end after every `span_size` bytes of output.
pub fn build(input: impl Read, span_size: u64) -> Result<Built, ZranError> {
    let done = GzipIndexer::new(input, span_size)?.finish()?;
    Ok(Built {
        zinfo: done.zinfo,
        compressed_size: done.compressed_size,
        uncompressed_size: done.uncompressed_size,
    })
}

#[cfg(test)]
#[path = "zran_stream_tests.rs"]
mod tests;
