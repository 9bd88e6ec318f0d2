//! How the state sits in sled: one entry per key, `{tag}/{key}`, so that a batch writes only the
//! entries it changed (the [`Dirty`] keys) and expiry removes entries one by one.
//!
//! Each part of the state is a [`Section`] under its own one-byte tag, declared by the file that
//! owns it (a rule's file declares its [`Keyed`] maps and their tags); `state` puts the sections
//! together with the meta entry. This module knows no rule.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::{Deref, DerefMut};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// State entries as written to sled: `(key, value)`.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The key of entry `k` of section `tag`: `{tag}/{k}`.
pub(crate) fn kv_key(tag: u8, k: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(k.len() + 2);
    v.extend_from_slice(&[tag, b'/']);
    v.extend_from_slice(k);
    v
}

pub(crate) fn bad_entry(what: &str) -> serde_json::Error {
    serde::de::Error::custom(format!("unreadable state entry: {what}"))
}

/// The state entries changed since the last commit (see `State::entry`).
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    pub keys: BTreeSet<Vec<u8>>,
}

impl Dirty {
    pub(crate) fn touch(&mut self, tag: u8, key: &[u8]) {
        self.keys.insert(kv_key(tag, key));
    }
}

/// One tagged part of the state, kept as one sled entry per key under `{tag}/`.
pub(crate) trait Section {
    fn tag(&self) -> u8;
    /// Every entry of the section.
    fn write_all(&self, out: &mut Entries) -> serde_json::Result<()>;
    /// The bytes of entry `name` as [`Section::write_all`] writes it, `None` when it is gone.
    fn encoded(&self, name: &[u8]) -> serde_json::Result<Option<Vec<u8>>>;
    /// Reads back one entry that [`Section::write_all`] wrote.
    fn load(&mut self, name: &[u8], value: &[u8]) -> serde_json::Result<()>;
}

/// What a rule keeps: its sections and how much they hold.
pub(crate) trait Sections {
    fn sections(&self) -> Vec<&dyn Section>;
    fn sections_mut(&mut self) -> Vec<&mut dyn Section>;
    /// Number of entries held (map keys plus list items), the figure that must stay flat.
    fn entries(&self) -> usize;
    /// Whether its sections are written in full at every commit instead of when marked dirty
    /// (for small state whose changes are not marked).
    fn written_in_full(&self) -> bool {
        false
    }
}

/// A map kept as one entry per key under section `TAG`, each value in JSON. Whoever changes a
/// value marks its key with [`Keyed::touch`]; the expiry helpers mark what they change.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Keyed<const TAG: u8, V>(BTreeMap<String, V>);

impl<const TAG: u8, V> Default for Keyed<TAG, V> {
    fn default() -> Self {
        Keyed(BTreeMap::new())
    }
}

impl<const TAG: u8, V> Deref for Keyed<TAG, V> {
    type Target = BTreeMap<String, V>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<const TAG: u8, V> DerefMut for Keyed<TAG, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<const TAG: u8, V> Keyed<TAG, V> {
    /// Marks the entry of `key` for the next commit.
    pub(crate) fn touch(&self, dirty: &mut Dirty, key: &str) {
        dirty.touch(TAG, key.as_bytes());
    }

    /// Runs `changed` on every value, marking the keys of the values it says it changed.
    pub(crate) fn update(&mut self, dirty: &mut Dirty, mut changed: impl FnMut(&mut V) -> bool) {
        for (k, v) in self.0.iter_mut() {
            if changed(v) {
                dirty.touch(TAG, k.as_bytes());
            }
        }
    }

    /// Keeps the values `keep` accepts, marking the keys dropped.
    pub(crate) fn retain(&mut self, dirty: &mut Dirty, mut keep: impl FnMut(&V) -> bool) {
        self.0.retain(|k, v| {
            let kept = keep(v);
            if !kept {
                dirty.touch(TAG, k.as_bytes());
            }
            kept
        });
    }
}

impl<const TAG: u8, T> Keyed<TAG, Vec<T>> {
    /// Keeps the items of each list that `keep` accepts and drops emptied lists, marking every
    /// key whose list changed.
    pub(crate) fn trim(&mut self, dirty: &mut Dirty, keep: impl Fn(&T) -> bool) {
        self.0.retain(|k, v| {
            let before = v.len();
            v.retain(&keep);
            if v.len() != before {
                dirty.touch(TAG, k.as_bytes());
            }
            !v.is_empty()
        });
    }

    /// Keys plus list items.
    pub(crate) fn entries(&self) -> usize {
        self.0.values().map(|v| 1 + v.len()).sum()
    }
}

impl<const TAG: u8, V: Serialize + DeserializeOwned> Section for Keyed<TAG, V> {
    fn tag(&self) -> u8 {
        TAG
    }

    fn write_all(&self, out: &mut Entries) -> serde_json::Result<()> {
        for (k, v) in &self.0 {
            out.push((kv_key(TAG, k.as_bytes()), serde_json::to_vec(v)?));
        }
        Ok(())
    }

    fn encoded(&self, name: &[u8]) -> serde_json::Result<Option<Vec<u8>>> {
        let name = std::str::from_utf8(name).map_err(|_| bad_entry("key is not UTF-8"))?;
        self.0.get(name).map(serde_json::to_vec).transpose()
    }

    fn load(&mut self, name: &[u8], value: &[u8]) -> serde_json::Result<()> {
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad_entry("key is not UTF-8"))?;
        self.0.insert(name, serde_json::from_slice(value)?);
        Ok(())
    }
}
