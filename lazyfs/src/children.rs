//! The entries of one directory of the merged tree.

use std::collections::BTreeMap;

/// The entries of a directory by name: a map while the tree is built, then a list sorted by
/// name, so that a listing resumes at an index instead of skipping from the start.
#[derive(Debug, Clone)]
pub enum Children {
    /// While the tree is built.
    Building(BTreeMap<Vec<u8>, u64>),
    /// Once it is built.
    Sorted(Vec<(Vec<u8>, u64)>),
}

impl Default for Children {
    fn default() -> Self {
        Self::Building(BTreeMap::new())
    }
}

impl Children {
    /// The inode of entry `name`.
    pub fn get(&self, name: &[u8]) -> Option<u64> {
        match self {
            Self::Building(m) => m.get(name).copied(),
            Self::Sorted(v) => v
                .binary_search_by(|(n, _)| n.as_slice().cmp(name))
                .ok()
                .map(|i| v[i].1),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            Self::Building(m) => m.len(),
            Self::Sorted(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(name, inode)` of the entries from the `index`th on, by name.
    pub fn from(&self, index: usize) -> Box<dyn Iterator<Item = (&[u8], u64)> + '_> {
        match self {
            Self::Building(m) => Box::new(m.iter().skip(index).map(|(n, c)| (n.as_slice(), *c))),
            Self::Sorted(v) => Box::new(
                v.get(index..)
                    .unwrap_or_default()
                    .iter()
                    .map(|(n, c)| (n.as_slice(), *c)),
            ),
        }
    }

    /// `(name, inode)` of every entry, by name.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&[u8], u64)> + '_> {
        self.from(0)
    }

    fn map(&mut self) -> &mut BTreeMap<Vec<u8>, u64> {
        if let Self::Sorted(v) = self {
            *self = Self::Building(std::mem::take(v).into_iter().collect());
        }
        match self {
            Self::Building(m) => m,
            Self::Sorted(_) => unreachable!("just made a map"),
        }
    }

    pub(crate) fn insert(&mut self, name: Vec<u8>, ino: u64) {
        self.map().insert(name, ino);
    }

    pub(crate) fn remove(&mut self, name: &[u8]) {
        self.map().remove(name);
    }

    pub(crate) fn freeze(&mut self) {
        if let Self::Building(m) = self {
            *self = Self::Sorted(std::mem::take(m).into_iter().collect());
        }
    }
}
