//! What an ELF executable or library needs before it can run: its program interpreter
//! (`PT_INTERP`) and the shared libraries its dynamic section names (`DT_NEEDED`), with the
//! directories it asks the loader to search first (`DT_RUNPATH`, `DT_RPATH`). Parsed with the
//! `object` crate from as few bytes as those headers take: the data is a [`ReadRef`], so a
//! lazily fetched file is read only where the headers are.

use object::elf::{DT_NEEDED, DT_RPATH, DT_RUNPATH, DT_STRSZ, DT_STRTAB, PT_DYNAMIC, PT_LOAD};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::read::{ReadRef, StringTable};
use object::{FileKind, elf};

/// The run-time needs of one ELF file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// `PT_INTERP`: the loader's path.
    pub interp: Option<Vec<u8>>,
    /// `DT_NEEDED`: library names (or paths, if they contain a `/`).
    pub needed: Vec<Vec<u8>>,
    /// `DT_RUNPATH` and `DT_RPATH` directories, in that order (`$ORIGIN` not yet expanded).
    pub search: Vec<Vec<u8>>,
}

/// The needs of the ELF file `data`; `None` if it is not ELF or its headers do not parse.
pub fn needs<'data, R: ReadRef<'data>>(data: R) -> Option<Needs> {
    match FileKind::parse(data).ok()? {
        FileKind::Elf64 => needs_of::<elf::FileHeader64<object::Endianness>, R>(data),
        FileKind::Elf32 => needs_of::<elf::FileHeader32<object::Endianness>, R>(data),
        _ => None,
    }
}

fn needs_of<'data, H: FileHeader, R: ReadRef<'data>>(data: R) -> Option<Needs> {
    let header = H::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let segments = header.program_headers(endian, data).ok()?;
    let mut out = Needs::default();
    let mut dynamic: &[H::Dyn] = &[];
    for ph in segments {
        if let Ok(Some(interp)) = ph.interpreter(endian, data) {
            out.interp = Some(interp.to_vec());
        }
        if ph.p_type(endian) == PT_DYNAMIC {
            dynamic = ph.dynamic(endian, data).ok().flatten().unwrap_or(&[]);
        }
    }
    let value = |tag: u32| {
        dynamic
            .iter()
            .find(|d| d.tag32(endian) == Some(tag))
            .map(|d| d.d_val(endian).into())
    };
    let (Some(strtab), Some(strsz)) = (value(DT_STRTAB), value(DT_STRSZ)) else {
        return Some(out);
    };
    // DT_STRTAB is an address: the file offset is where a PT_LOAD segment maps it from.
    let Some(start) = segments.iter().find_map(|ph| {
        let (vaddr, filesz): (u64, u64) = (ph.p_vaddr(endian).into(), ph.p_filesz(endian).into());
        (ph.p_type(endian) == PT_LOAD && (vaddr..vaddr + filesz).contains(&strtab))
            .then(|| strtab - vaddr + ph.p_offset(endian).into())
    }) else {
        return Some(out);
    };
    let strings = StringTable::new(data, start, start.saturating_add(strsz));
    for d in dynamic {
        let Some(s) = d.val32(endian).and_then(|v| strings.get(v).ok()) else {
            continue;
        };
        match d.tag32(endian) {
            Some(DT_NEEDED) => out.needed.push(s.to_vec()),
            Some(DT_RUNPATH | DT_RPATH) => out.search.extend(
                s.split(|b| *b == b':')
                    .filter(|p| !p.is_empty())
                    .map(<[u8]>::to_vec),
            ),
            _ => {}
        }
    }
    // The loader searches DT_RUNPATH (when present, DT_RPATH is ignored); keep both, RUNPATH
    // first: a wrong extra candidate costs one prefetch, a missing one a cold miss.
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_names_its_loader_and_libraries() {
        // Any dynamically linked host binary will do; coreutils' ls is on every Debian.
        let data = std::fs::read("/bin/ls").expect("/bin/ls");
        let n = needs(&data[..]).expect("/bin/ls parses as ELF");
        let interp = n.interp.expect("a dynamic executable has PT_INTERP");
        assert!(interp.starts_with(b"/lib"), "{interp:?}");
        assert!(
            n.needed.iter().any(|l| l.starts_with(b"libc.so")),
            "{:?}",
            n.needed
        );
    }

    #[test]
    fn a_library_names_what_it_needs_and_text_is_not_elf() {
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/aarch64-linux-gnu/libc.so.6",
        ]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .expect("the host's libc");
        let n = needs(&libc[..]).expect("libc parses");
        // glibc's libc.so.6 runs as a program too, so it may name a loader; it needs one.
        assert!(
            n.needed.iter().any(|l| l.starts_with(b"ld-linux")),
            "{:?}",
            n.needed
        );
        assert_eq!(needs(&b"#!/bin/sh\necho hi\n"[..]), None);
        assert_eq!(needs(&libc[..64]), None, "truncated headers do not parse");
    }
}
