//! The few zlib calls random access into gzip needs and flate2 does not expose: inflate with
//! `Z_BLOCK` (to see block ends and the bit offset in `data_type`), `inflatePrime` and
//! `inflateSetDictionary`. They come from `libz-rs-sys`, the C API of the zlib-rs engine that
//! flate2 already uses here (pure Rust: no C zlib to build or link).

use std::ffi::c_int;

use libz_rs_sys as z;

/// Errors of zlib calls.
#[derive(Debug, thiserror::Error)]
pub enum ZlibError {
    /// zlib returned an error code.
    #[error("zlib {call} failed ({code}): {message}")]
    Call {
        /// Which call.
        call: &'static str,
        /// Its return code.
        code: i32,
        /// zlib's message, if any.
        message: String,
    },
    /// inflate made no progress with input left.
    #[error("inflate made no progress")]
    Stalled,
    /// The stream ended inside a gzip member.
    #[error("the gzip stream is truncated")]
    Truncated,
}

/// How much inflate should do per call.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Flush {
    /// Plain inflate.
    None,
    /// Return at the end of each deflate block (and after a gzip header).
    Block,
}

/// One inflate call's outcome.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    pub(crate) consumed: usize,
    pub(crate) produced: usize,
    /// zlib's `data_type` after the call: unused bits, last-block and block-end flags.
    pub(crate) data_type: i32,
    /// The end of a deflate stream (a gzip member) was reached.
    pub(crate) stream_end: bool,
}

/// An inflate stream. Boxed: zlib's state points back at its stream, which must not move.
pub(crate) struct Inflater {
    strm: Box<z::z_stream>,
}

fn message(strm: &z::z_stream) -> String {
    if strm.msg.is_null() {
        return String::new();
    }
    // SAFETY: zlib sets `msg` to null or to a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(strm.msg) }
        .to_string_lossy()
        .into_owned()
}

fn stream_size() -> c_int {
    c_int::try_from(std::mem::size_of::<z::z_stream>()).unwrap_or(c_int::MAX)
}

impl Inflater {
    /// A stream with zlib's `windowBits` (`-15` raw deflate, `47` gzip or zlib).
    pub(crate) fn new(window_bits: c_int) -> Result<Self, ZlibError> {
        let mut strm = Box::new(z::z_stream::default());
        // SAFETY: `strm` is a valid, default-initialized stream that stays at one address (boxed)
        // for its whole life; the version string is zlib's own.
        let code =
            unsafe { z::inflateInit2_(&mut *strm, window_bits, z::zlibVersion(), stream_size()) };
        let me = Self { strm };
        me.ok("inflateInit2", code)?;
        Ok(me)
    }

    fn ok(&self, call: &'static str, code: c_int) -> Result<(), ZlibError> {
        if code == z::Z_OK {
            return Ok(());
        }
        Err(ZlibError::Call {
            call,
            code,
            message: message(&self.strm),
        })
    }

    /// Starts a new member with `window_bits` (keeps the allocation).
    pub(crate) fn reset(&mut self, window_bits: c_int) -> Result<(), ZlibError> {
        // SAFETY: the stream was initialized by `new` and is not moved.
        let code = unsafe { z::inflateReset2(&mut *self.strm, window_bits) };
        self.ok("inflateReset2", code)
    }

    /// Feeds `bits` bits of `value` before the next input byte.
    pub(crate) fn prime(&mut self, bits: c_int, value: c_int) -> Result<(), ZlibError> {
        // SAFETY: the stream was initialized by `new` and is not moved.
        let code = unsafe { z::inflatePrime(&mut *self.strm, bits, value) };
        self.ok("inflatePrime", code)
    }

    /// Sets the output that came before (a raw stream's window).
    pub(crate) fn set_dictionary(&mut self, dict: &[u8]) -> Result<(), ZlibError> {
        let len = u32::try_from(dict.len()).unwrap_or(u32::MAX);
        // SAFETY: the stream was initialized by `new`; `dict` is valid for `len` bytes and is
        // copied by zlib before the call returns.
        let code = unsafe { z::inflateSetDictionary(&mut *self.strm, dict.as_ptr(), len) };
        self.ok("inflateSetDictionary", code)
    }

    /// One inflate call from `input` into `output`.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        flush: Flush,
    ) -> Result<Step, ZlibError> {
        let avail_in = u32::try_from(input.len()).unwrap_or(u32::MAX);
        let avail_out = u32::try_from(output.len()).unwrap_or(u32::MAX);
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = avail_in;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = avail_out;
        let flush = match flush {
            Flush::None => z::Z_NO_FLUSH,
            Flush::Block => z::Z_BLOCK,
        };
        // SAFETY: the stream was initialized by `new`; `next_in`/`next_out` point into `input`
        // and `output`, valid for `avail_in`/`avail_out` bytes during this call; the pointers
        // are cleared below before the borrows end.
        let code = unsafe { z::inflate(&mut *self.strm, flush) };
        let consumed = (avail_in - self.strm.avail_in) as usize;
        let produced = (avail_out - self.strm.avail_out) as usize;
        self.strm.next_in = std::ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = std::ptr::null_mut();
        self.strm.avail_out = 0;
        match code {
            z::Z_OK | z::Z_BUF_ERROR | z::Z_STREAM_END => Ok(Step {
                consumed,
                produced,
                data_type: self.strm.data_type,
                stream_end: code == z::Z_STREAM_END,
            }),
            _ => Err(ZlibError::Call {
                call: "inflate",
                code,
                message: message(&self.strm),
            }),
        }
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialized by `new` and is ended once, here.
        unsafe { z::inflateEnd(&mut *self.strm) };
    }
}
