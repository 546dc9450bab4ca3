//! A bounds-checked reader of FlatBuffers tables, enough for SOCI's ztoc schema: every offset is
//! checked before it is followed, so a damaged or hostile buffer is an error, never a panic or
//! an out-of-bounds read (the generated Rust readers need `unsafe` and a verifier pass for the
//! same). Writing uses the `flatbuffers` crate's builder.

/// A malformed buffer: what was being read and where.
#[derive(Debug, thiserror::Error)]
#[error("flatbuffer: {what} at byte {at} is out of bounds or malformed")]
pub struct FbsError {
    /// What was being read.
    pub what: &'static str,
    /// Where.
    pub at: usize,
}

/// A table inside a buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
    vtable: usize,
    vlen: usize,
}

fn read<const N: usize>(buf: &[u8], at: usize, what: &'static str) -> Result<[u8; N], FbsError> {
    at.checked_add(N)
        .and_then(|end| buf.get(at..end))
        .map(|b| {
            let mut a = [0u8; N];
            a.copy_from_slice(b);
            a
        })
        .ok_or(FbsError { what, at })
}

fn u32_at(buf: &[u8], at: usize, what: &'static str) -> Result<usize, FbsError> {
    Ok(u32::from_le_bytes(read(buf, at, what)?) as usize)
}

/// Follows the unsigned offset stored at `at` (relative to `at`).
fn follow(buf: &[u8], at: usize, what: &'static str) -> Result<usize, FbsError> {
    let off = u32_at(buf, at, what)?;
    at.checked_add(off)
        .filter(|p| *p < buf.len())
        .ok_or(FbsError { what, at })
}

impl<'a> Table<'a> {
    /// The root table of `buf`.
    pub(crate) fn root(buf: &'a [u8]) -> Result<Self, FbsError> {
        let pos = follow(buf, 0, "root offset")?;
        Self::at(buf, pos)
    }

    fn at(buf: &'a [u8], pos: usize) -> Result<Self, FbsError> {
        let soff = i64::from(i32::from_le_bytes(read(buf, pos, "table")?));
        let vtable = i64::try_from(pos)
            .ok()
            .and_then(|p| p.checked_sub(soff))
            .and_then(|v| usize::try_from(v).ok())
            .ok_or(FbsError {
                what: "vtable",
                at: pos,
            })?;
        let vlen = usize::from(u16::from_le_bytes(read(buf, vtable, "vtable")?));
        if vlen < 4 || vlen % 2 != 0 || vtable + vlen > buf.len() {
            return Err(FbsError {
                what: "vtable",
                at: vtable,
            });
        }
        Ok(Self {
            buf,
            pos,
            vtable,
            vlen,
        })
    }

    /// Where field `id` is, if present.
    fn field(&self, id: usize) -> Result<Option<usize>, FbsError> {
        let slot = 4 + 2 * id;
        if slot + 2 > self.vlen {
            return Ok(None);
        }
        let off = u16::from_le_bytes(read(self.buf, self.vtable + slot, "vtable entry")?);
        Ok((off != 0).then(|| self.pos + usize::from(off)))
    }

    /// An `i64` field (`long`).
    pub(crate) fn i64(&self, id: usize, what: &'static str) -> Result<i64, FbsError> {
        self.field(id)?.map_or(Ok(0), |at| {
            Ok(i64::from_le_bytes(read(self.buf, at, what)?))
        })
    }

    /// An `i32` field (`int`).
    pub(crate) fn i32(&self, id: usize, what: &'static str) -> Result<i32, FbsError> {
        self.field(id)?.map_or(Ok(0), |at| {
            Ok(i32::from_le_bytes(read(self.buf, at, what)?))
        })
    }

    /// A `u32` field (`uint32`).
    pub(crate) fn u32(&self, id: usize, what: &'static str) -> Result<u32, FbsError> {
        self.field(id)?.map_or(Ok(0), |at| {
            Ok(u32::from_le_bytes(read(self.buf, at, what)?))
        })
    }

    /// An `i8` field (`byte`), `default` when absent.
    pub(crate) fn i8(&self, id: usize, default: i8, what: &'static str) -> Result<i8, FbsError> {
        self.field(id)?.map_or(Ok(default), |at| {
            Ok(i8::from_le_bytes(read(self.buf, at, what)?))
        })
    }

    /// A string field as bytes (empty when absent).
    pub(crate) fn bytes(&self, id: usize, what: &'static str) -> Result<&'a [u8], FbsError> {
        match self.field(id)? {
            None => Ok(&[]),
            Some(at) => string_bytes(self.buf, follow(self.buf, at, what)?, what),
        }
    }

    /// A `[ubyte]` field (empty when absent).
    pub(crate) fn byte_vector(&self, id: usize, what: &'static str) -> Result<&'a [u8], FbsError> {
        match self.field(id)? {
            None => Ok(&[]),
            Some(at) => vector_bytes(self.buf, follow(self.buf, at, what)?, 1, what),
        }
    }

    /// A string field (lossy UTF-8, empty when absent).
    pub(crate) fn string(&self, id: usize, what: &'static str) -> Result<String, FbsError> {
        Ok(String::from_utf8_lossy(self.bytes(id, what)?).into_owned())
    }

    /// A table field.
    pub(crate) fn table(&self, id: usize, what: &'static str) -> Result<Option<Self>, FbsError> {
        match self.field(id)? {
            None => Ok(None),
            Some(at) => Self::at(self.buf, follow(self.buf, at, what)?).map(Some),
        }
    }

    /// A vector of offsets (tables or strings): the positions of its elements' offsets.
    fn offsets(&self, id: usize, what: &'static str) -> Result<Vec<usize>, FbsError> {
        let Some(at) = self.field(id)? else {
            return Ok(Vec::new());
        };
        let start = follow(self.buf, at, what)?;
        let len = vector_bytes(self.buf, start, 4, what)?.len() / 4;
        Ok((0..len).map(|i| start + 4 + 4 * i).collect())
    }

    /// A vector of tables.
    pub(crate) fn tables(&self, id: usize, what: &'static str) -> Result<Vec<Self>, FbsError> {
        self.offsets(id, what)?
            .into_iter()
            .map(|at| Self::at(self.buf, follow(self.buf, at, what)?))
            .collect()
    }

    /// A vector of strings.
    pub(crate) fn strings(&self, id: usize, what: &'static str) -> Result<Vec<String>, FbsError> {
        self.offsets(id, what)?
            .into_iter()
            .map(|at| {
                let s = string_bytes(self.buf, follow(self.buf, at, what)?, what)?;
                Ok(String::from_utf8_lossy(s).into_owned())
            })
            .collect()
    }
}

/// The bytes of the string whose length word is at `start` (its NUL terminator required, as
/// the FlatBuffers verifier does).
fn string_bytes<'a>(buf: &'a [u8], start: usize, what: &'static str) -> Result<&'a [u8], FbsError> {
    let s = vector_bytes(buf, start, 1, what)?;
    match buf.get(start + 4 + s.len()) {
        Some(0) => Ok(s),
        _ => Err(FbsError { what, at: start }),
    }
}

/// The element bytes of the vector (or string) whose length word is at `start`.
fn vector_bytes<'a>(
    buf: &'a [u8],
    start: usize,
    elem: usize,
    what: &'static str,
) -> Result<&'a [u8], FbsError> {
    let len = u32_at(buf, start, what)?;
    len.checked_mul(elem)
        .and_then(|n| (start + 4).checked_add(n))
        .and_then(|end| buf.get(start + 4..end))
        .ok_or(FbsError { what, at: start })
}
