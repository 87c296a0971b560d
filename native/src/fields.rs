//! Which column a document's field goes to, found without comparing every name.
//!
//! Agents write a snapshot's fields in the same order every time, the order the columns
//! are declared in, so the field after the last one matched is nearly always the next
//! one read: trying it first makes the common lookup one name comparison, where a search
//! down the list costs one per earlier column. Any other order (or an unknown key) falls
//! back to that search, so the result is the same for every document. The walker
//! compares the expected name with the key's bytes where they lie (`walk::Key`).

use crate::walk::Key;

/// A node's field: its leaf (column) or its child object, by index.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    Leaf(usize),
    Child(usize),
}

/// A node's field names, leaves then children, with a cursor on the field expected next.
pub(crate) struct Fields {
    /// The names in slot order; None for a name an earlier slot already has, which a
    /// search down the list never reaches either, and for one with a NUL byte, which no
    /// BSON key has (compared in place, it would run past the key's terminator).
    names: Vec<Option<Box<str>>>,
    leaves: usize,
    next: usize,
}

impl Fields {
    pub(crate) fn new<'a>(
        leaves: impl ExactSizeIterator<Item = &'a str>,
        children: impl Iterator<Item = &'a str>,
    ) -> Fields {
        let count = leaves.len();
        let mut names: Vec<Option<Box<str>>> = Vec::new();
        for name in leaves.chain(children) {
            let seen = names.iter().flatten().any(|n| &**n == name);
            names.push((!seen && !name.contains('\0')).then(|| name.into()));
        }
        Fields { names, leaves: count, next: 0 }
    }

    /// Start a document: its first field is expected to be the first one declared.
    pub(crate) fn rewind(&mut self) {
        self.next = 0;
    }

    /// The name of the field expected next, for the walker to compare in place.
    pub(crate) fn expected(&self) -> Option<&[u8]> {
        self.names.get(self.next).and_then(Option::as_deref).map(str::as_bytes)
    }

    /// The slot of `key` (None: not a column of this node); the slot after it is
    /// expected next.
    pub(crate) fn find(&mut self, key: Key) -> Option<Slot> {
        let index = match key {
            Key::Expected => self.next,
            Key::Other(key) => self.names.iter().position(|n| n.as_deref() == Some(key))?,
        };
        self.next = index + 1;
        Some(if index < self.leaves { Slot::Leaf(index) } else { Slot::Child(index - self.leaves) })
    }
}
