//! SOCI's per-layer index, the *ztoc* (schema `ztoc/fbs/ztoc.fbs` of soci-snapshotter): the
//! layer's tar entries with their offsets in the uncompressed stream, plus gzip checkpoints
//! (see [`crate::zran`]) and the sha256 of each compressed span between them. Parsed with the
//! bounds-checked reader of [`crate::fbs`] and checked as a whole before anything uses it.

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::fbs::{FbsError, Table};
use crate::zran::{Zinfo, ZranError};
use strata_oci::digest::Digest;

/// The ztoc version strata writes (soci-snapshotter's current one).
pub const VERSION: &str = "0.9";
/// `CompressionAlgorithm.Gzip` in the schema.
const GZIP: i8 = 1;

/// Errors reading a ztoc.
#[derive(Debug, thiserror::Error)]
pub enum ZtocError {
    /// The flatbuffer is malformed.
    #[error("ztoc: {0}")]
    Buffer(#[from] FbsError),
    /// The checkpoints are malformed.
    #[error("ztoc: {0}")]
    Checkpoints(#[from] ZranError),
    /// The ztoc contradicts itself or its layer.
    #[error("ztoc: {0}")]
    Invalid(String),
}

/// One tar entry as the ztoc has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileMetadata {
    /// Name as in the tar header (bytes: Go strings need not be UTF-8).
    pub name: Vec<u8>,
    /// reg, dir, symlink, hardlink, char, block or fifo.
    pub kind: String,
    /// Where the content starts in the uncompressed tar.
    pub uncompressed_offset: u64,
    /// Content bytes.
    pub uncompressed_size: u64,
    /// Link target.
    pub linkname: Vec<u8>,
    /// Mode bits as in the tar header.
    pub mode: i64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Owner name.
    pub uname: String,
    /// Group name.
    pub gname: String,
    /// Modification time, RFC 3339.
    pub mod_time: String,
    /// Device major.
    pub devmajor: i64,
    /// Device minor.
    pub devminor: i64,
    /// The entry's PAX records (key, value), xattrs among them as `SCHILY.xattr.NAME`.
    pub pax: Vec<(String, Vec<u8>)>,
}

/// A parsed, checked ztoc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ztoc {
    /// `major.minor`.
    pub version: String,
    /// Who built it.
    pub build_tool: String,
    /// Size of the layer blob.
    pub compressed_size: u64,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
    /// The entries, in tar order.
    pub files: Vec<FileMetadata>,
    /// sha256 of each compressed span.
    pub span_digests: Vec<Digest>,
    /// The checkpoints, one per span.
    pub zinfo: Zinfo,
}

fn size(v: i64, what: &str) -> Result<u64, ZtocError> {
    u64::try_from(v).map_err(|_| ZtocError::Invalid(format!("{what} {v} is negative")))
}

fn file_of(t: &Table<'_>) -> Result<FileMetadata, ZtocError> {
    let mut pax = Vec::new();
    for x in t.tables(13, "xattrs")? {
        pax.push((
            x.string(0, "xattr key")?,
            x.bytes(1, "xattr value")?.to_vec(),
        ));
    }
    let name = t.bytes(0, "name")?.to_vec();
    let shown = String::from_utf8_lossy(&name).into_owned();
    Ok(FileMetadata {
        kind: t.string(1, "type")?,
        uncompressed_offset: size(
            t.i64(2, "uncompressed_offset")?,
            &format!("offset of {shown}"),
        )?,
        uncompressed_size: size(t.i64(3, "uncompressed_size")?, &format!("size of {shown}"))?,
        linkname: t.bytes(4, "linkname")?.to_vec(),
        mode: t.i64(5, "mode")?,
        uid: t.u32(6, "uid")?,
        gid: t.u32(7, "gid")?,
        uname: t.string(8, "uname")?,
        gname: t.string(9, "gname")?,
        mod_time: t.string(10, "mod_time")?,
        devmajor: t.i64(11, "devmajor")?,
        devminor: t.i64(12, "devminor")?,
        pax,
        name,
    })
}

impl Ztoc {
    /// Parses and checks a ztoc.
    pub fn parse(buf: &[u8]) -> Result<Self, ZtocError> {
        let root = Table::root(buf)?;
        let toc = root.table(4, "toc")?;
        let info = root
            .table(5, "compression_info")?
            .ok_or_else(|| ZtocError::Invalid("no compression info".into()))?;
        if info.i8(0, GZIP, "compression_algorithm")? != GZIP {
            return Err(ZtocError::Invalid("only gzip layers are supported".into()));
        }
        let mut files = Vec::new();
        for t in toc
            .map(|t| t.tables(0, "metadata"))
            .transpose()?
            .unwrap_or_default()
        {
            files.push(file_of(&t)?);
        }
        let span_digests = info
            .strings(2, "span_digests")?
            .iter()
            .map(|s| {
                s.parse::<Digest>()
                    .map_err(|e| ZtocError::Invalid(format!("span digest {s:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_span = info.i32(1, "max_span_id")?;
        let z = Self {
            version: root.string(0, "version")?,
            build_tool: root.string(1, "build_tool_identifier")?,
            compressed_size: size(root.i64(2, "compressed_archive_size")?, "layer size")?,
            uncompressed_size: size(root.i64(3, "uncompressed_archive_size")?, "tar size")?,
            files,
            span_digests,
            zinfo: Zinfo::from_blob(info.byte_vector(3, "checkpoints")?)?,
        };
        z.check(max_span)?;
        Ok(z)
    }

    /// Checks spans and entries against each other and the sizes.
    fn check(&self, max_span: i32) -> Result<(), ZtocError> {
        let bad = |s: String| Err(ZtocError::Invalid(s));
        let spans = self.zinfo.checkpoints.len();
        if usize::try_from(max_span).ok().map(|m| m + 1) != Some(spans)
            || self.span_digests.len() != spans
        {
            return bad(format!(
                "{spans} checkpoints, {} span digests and max span id {max_span} disagree",
                self.span_digests.len()
            ));
        }
        // zran's first point is where the first deflate block starts: uncompressed offset 0.
        // Bytes before a later first point would belong to no span.
        if self
            .zinfo
            .checkpoints
            .first()
            .is_some_and(|c| c.uncompressed != 0)
        {
            return bad("the first checkpoint is not at the start of the tar".into());
        }
        if let Some(c) = self.zinfo.checkpoints.last()
            && (c.compressed > self.compressed_size || c.uncompressed > self.uncompressed_size)
        {
            return bad("a checkpoint lies past the end of the layer".into());
        }
        for f in &self.files {
            let end = f.uncompressed_offset.checked_add(f.uncompressed_size);
            if end.is_none_or(|e| e > self.uncompressed_size) {
                return bad(format!(
                    "entry {:?} ({} bytes at {}) lies past the end of the {}-byte tar",
                    String::from_utf8_lossy(&f.name),
                    f.uncompressed_size,
                    f.uncompressed_offset,
                    self.uncompressed_size
                ));
            }
        }
        Ok(())
    }

    /// Serializes the ztoc as soci-snapshotter does.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = FlatBufferBuilder::new();
        let version = b.create_string(&self.version);
        let tool = b.create_string(&self.build_tool);
        let metas: Vec<_> = self.files.iter().map(|f| write_file(&mut b, f)).collect();
        let metas = b.create_vector(&metas);
        let t = b.start_table();
        b.push_slot_always(4, metas);
        let toc = b.end_table(t);
        let checkpoints = b.create_vector(&self.zinfo.to_blob());
        let digests: Vec<_> = self
            .span_digests
            .iter()
            .map(|d| b.create_string(&d.to_string()))
            .collect();
        let digests = b.create_vector(&digests);
        let t = b.start_table();
        let max_span = i32::try_from(self.zinfo.checkpoints.len()).unwrap_or(i32::MAX) - 1;
        b.push_slot::<i32>(6, max_span, 0);
        b.push_slot_always(8, digests);
        b.push_slot_always(10, checkpoints);
        let info = b.end_table(t);
        let t = b.start_table();
        b.push_slot_always(4, version);
        b.push_slot_always(6, tool);
        b.push_slot::<i64>(
            8,
            i64::try_from(self.compressed_size).unwrap_or(i64::MAX),
            0,
        );
        b.push_slot::<i64>(
            10,
            i64::try_from(self.uncompressed_size).unwrap_or(i64::MAX),
            0,
        );
        b.push_slot_always(12, toc);
        b.push_slot_always(14, info);
        let root = b.end_table(t);
        b.finish(root, None);
        b.finished_data().to_vec()
    }
}

fn write_file<'b>(
    b: &mut FlatBufferBuilder<'b>,
    f: &FileMetadata,
) -> WIPOffset<flatbuffers::TableFinishedWIPOffset> {
    let name = b.create_byte_string(&f.name);
    let kind = b.create_string(&f.kind);
    let link = b.create_byte_string(&f.linkname);
    let uname = b.create_string(&f.uname);
    let gname = b.create_string(&f.gname);
    let mtime = b.create_string(&f.mod_time);
    let xattrs: Vec<_> = f
        .pax
        .iter()
        .map(|(k, v)| {
            let (k, v) = (b.create_string(k), b.create_byte_string(v));
            let t = b.start_table();
            b.push_slot_always(4, k);
            b.push_slot_always(6, v);
            b.end_table(t)
        })
        .collect();
    let xattrs = b.create_vector(&xattrs);
    let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let t = b.start_table();
    b.push_slot_always(4, name);
    b.push_slot_always(6, kind);
    b.push_slot::<i64>(8, big(f.uncompressed_offset), 0);
    b.push_slot::<i64>(10, big(f.uncompressed_size), 0);
    b.push_slot_always(12, link);
    b.push_slot::<i64>(14, f.mode, 0);
    b.push_slot::<u32>(16, f.uid, 0);
    b.push_slot::<u32>(18, f.gid, 0);
    b.push_slot_always(20, uname);
    b.push_slot_always(22, gname);
    b.push_slot_always(24, mtime);
    b.push_slot::<i64>(26, f.devmajor, 0);
    b.push_slot::<i64>(28, f.devminor, 0);
    b.push_slot_always(30, xattrs);
    b.end_table(t)
}
