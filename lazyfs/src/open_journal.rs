//! The open-mode journal of a connection that a successor may take over (see
//! [`crate::takeover`]): which inodes are open, and how (FUSE reads, or passthrough with a
//! backing id registered on the connection). A successor must keep serving those inodes the
//! same way — the kernel refuses a second backing file, or a mode change, for an inode that is
//! open — and may reuse the backing ids, which stay registered after their server died.
//!
//! One line per change: `INO f` (open through FUSE), `INO p ID` (open by passthrough to
//! backing `ID`), `INO -` (closed). A close is written before its backing id is released, so
//! the journal never names an id the kernel may have given to another file.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::warn;

/// How a predecessor had an inode open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenedAs {
    /// Through FUSE reads.
    Fuse,
    /// By passthrough to this backing id.
    Backing(u32),
}

/// The journal file.
#[derive(Debug)]
pub struct OpenJournal {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl OpenJournal {
    /// A journal at `path`, emptied.
    pub fn fresh(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        Self::open(path)
    }

    /// The journal at `path` and what it says is open (a predecessor's), rewritten to hold
    /// just that.
    pub fn resumed(path: &Path) -> (Self, HashMap<u64, OpenedAs>) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let open = parse(&text);
        let compact: String = open
            .iter()
            .map(|(ino, how)| line(*ino, Some(*how)))
            .collect();
        if let Err(e) = std::fs::write(path, compact) {
            warn!(path = %path.display(), error = %e, "open journal not rewritten");
        }
        (Self::open(path), open)
    }

    fn open(path: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| warn!(path = %path.display(), error = %e, "open journal unusable"))
            .ok();
        Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        }
    }

    /// Notes that `ino` is now open `how` (`None`: closed).
    pub fn note(&self, ino: u64, how: Option<OpenedAs>) {
        let mut g = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = g.as_mut()
            && let Err(e) = f.write_all(line(ino, how).as_bytes())
        {
            warn!(path = %self.path.display(), error = %e, "open journal write failed");
        }
    }
}

fn line(ino: u64, how: Option<OpenedAs>) -> String {
    match how {
        Some(OpenedAs::Fuse) => format!("{ino} f\n"),
        Some(OpenedAs::Backing(id)) => format!("{ino} p {id}\n"),
        None => format!("{ino} -\n"),
    }
}

/// The last state of each inode the journal names, closed ones left out.
fn parse(text: &str) -> HashMap<u64, OpenedAs> {
    let mut open = HashMap::new();
    for l in text.lines() {
        let mut f = l.split(' ');
        let Some(Ok(ino)) = f.next().map(str::parse::<u64>) else {
            continue;
        };
        match (f.next(), f.next().map(str::parse::<u32>)) {
            (Some("f"), None) => open.insert(ino, OpenedAs::Fuse),
            (Some("p"), Some(Ok(id))) => open.insert(ino, OpenedAs::Backing(id)),
            _ => open.remove(&ino),
        };
    }
    open
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_state_of_each_inode_counts() {
        let open = parse("5 p 1\n6 f\n5 -\n7 p 2\n9 f\n9 -\nbad\n8 p x\n");
        assert_eq!(open.len(), 2);
        assert_eq!(open[&6], OpenedAs::Fuse);
        assert_eq!(open[&7], OpenedAs::Backing(2));
    }

    #[test]
    fn a_resumed_journal_is_compacted_and_extended() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        let j = OpenJournal::fresh(&p);
        j.note(3, Some(OpenedAs::Backing(4)));
        j.note(8, Some(OpenedAs::Fuse));
        j.note(8, None);
        drop(j);
        let (j, open) = OpenJournal::resumed(&p);
        assert_eq!(open, HashMap::from([(3, OpenedAs::Backing(4))]));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "3 p 4\n");
        j.note(9, Some(OpenedAs::Fuse));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "3 p 4\n9 f\n");
    }
}
