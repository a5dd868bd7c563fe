//! Server names (SNI) to things: certificates on a TLS listener, clusters on a passthrough
//! one. Exact names first, then wildcards (`*.example.com` covers one label).

use std::collections::HashMap;

#[derive(Debug)]
pub struct NameTable<T> {
    entries: Vec<T>,
    exact: HashMap<String, usize>,
    /// `example.com` for `*.example.com`.
    wildcard: HashMap<String, usize>,
}

impl<T> NameTable<T> {
    /// `entries` in order with the names each serves. A name claimed twice stays with the
    /// first entry that claims it.
    pub fn new(entries: impl IntoIterator<Item = (T, Vec<String>)>) -> Self {
        let mut table = Self {
            entries: Vec::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (index, (entry, names)) in entries.into_iter().enumerate() {
            for name in names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(parent) => table.wildcard.entry(parent.to_owned()).or_insert(index),
                    None => table.exact.entry(name).or_insert(index),
                };
            }
            table.entries.push(entry);
        }
        table
    }

    /// The index of the entry for `name`, if one lists it.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        let name = name.to_ascii_lowercase();
        if let Some(index) = self.exact.get(&name) {
            return Some(*index);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).copied()
    }

    pub fn get(&self, name: &str) -> Option<&T> {
        self.entries.get(self.index_of(name)?)
    }

    pub fn entry(&self, index: usize) -> Option<&T> {
        self.entries.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_beat_wildcards_which_cover_one_label() {
        let table = NameTable::new([
            ("default", vec!["default.test".to_owned()]),
            ("api", vec!["api.test".to_owned(), "*.apps.test".to_owned()]),
            ("web", vec!["web.apps.test".to_owned()]),
        ]);
        assert_eq!(table.get("API.test"), Some(&"api"));
        assert_eq!(table.get("shop.apps.test"), Some(&"api"));
        assert_eq!(table.get("web.apps.test"), Some(&"web"));
        assert_eq!(table.get("a.b.apps.test"), None);
        assert_eq!(table.get("unknown.test"), None);
    }
}
