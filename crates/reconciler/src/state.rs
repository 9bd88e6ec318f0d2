//! The state store: its layout, the changes staged until commit, ledgers loaded once per batch,
//! offsets, and opening it safely (waiting for a closing handle's lock); the cases read back
//! unchanged for a report.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tillbridge_core::store::StateStore;

use crate::error::Error;
use crate::model::{Case, CouponState, ProfileState};

/// The state layout version; another value makes the store rebuild from the topics.
const FORMAT: &str = "tillbridge-reconciler-v3";
/// The marker key `StateStore` writes; checked by [`read_cases`], which must not move a store
/// aside.
const FORMAT_KEY: &[u8] = b"__tillbridge_format";
const PREFIX_OFFSET: &str = "off/";
const PREFIX_COUPON: &str = "cpn/";
const PREFIX_PROFILE: &str = "pro/";
const PREFIX_CASE: &str = "case/";
/// Present while a restore has begun and not finished (it survives a crash in between).
const RESTORE_MARKER: &[u8] = b"restore/pending";
/// Present while a process has the state open: written at open, removed by a clean close. Found
/// at open, it says the last process died with outputs possibly sent beyond its last commit.
const OPEN_MARKER: &[u8] = b"life/open";

fn decode_json<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::corrupt(what, e))
}

fn encode_json<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::corrupt(what, e))
}

/// A stored offset: eight bytes, big-endian.
fn decode_offset(v: &[u8]) -> Result<i64, Error> {
    let bytes: [u8; 8] = v
        .try_into()
        .map_err(|_| Error::corrupt("offset", format!("{} bytes, expected 8", v.len())))?;
    Ok(i64::from_be_bytes(bytes))
}

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    tillbridge_core::store::position_key(PREFIX_OFFSET.as_bytes(), topic, partition)
}

/// A ledger kept in the store: one entry per key (coupon code or profile id) under its prefix.
pub(crate) trait Ledger: Serialize + DeserializeOwned {
    const PREFIX: &'static str;
    /// The kind of entry, as errors name it.
    const WHAT: &'static str;
    /// The ledger of a key not seen before.
    fn fresh(key: &str) -> Self;
}

impl Ledger for CouponState {
    const PREFIX: &'static str = PREFIX_COUPON;
    const WHAT: &'static str = "coupon ledger";

    fn fresh(code: &str) -> Self {
        CouponState {
            code: code.to_owned(),
            ..CouponState::default()
        }
    }
}

impl Ledger for ProfileState {
    const PREFIX: &'static str = PREFIX_PROFILE;
    const WHAT: &'static str = "profile ledger";

    fn fresh(profile: &str) -> Self {
        ProfileState {
            profile_id: profile.to_owned(),
            ..ProfileState::default()
        }
    }
}

/// The reconciler's state: the sled store and the changes staged for the next commit.
pub(crate) struct State {
    store: StateStore,
    /// State changes of processed batches not yet committed: key to new value (`None` deletes).
    staged: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Whether the last process to hold this (existing) state did not close it cleanly.
    unclean: bool,
}

impl State {
    /// Opens (or creates) the state in `dir`. `StateStore::open` waits for a closing handle's
    /// lock, and never takes a held lock for damage.
    ///
    /// The open marker is made durable before anything else happens, so that a process killed
    /// at any later point leaves it behind (see [`State::unclean`]).
    pub(crate) fn open(dir: &Path) -> Result<State, Error> {
        let store = StateStore::open(dir, FORMAT)?;
        let db = store.db();
        let unclean = !store.fresh() && db.contains_key(OPEN_MARKER).map_err(|e| store.err(e))?;
        db.insert(OPEN_MARKER, &[])
            .and_then(|_| db.flush())
            .map_err(|e| store.err(e))?;
        Ok(State {
            store,
            staged: BTreeMap::new(),
            unclean,
        })
    }

    /// Whether the process that held the state before this one died without closing it: its
    /// last outputs may have gone out after its last commit, so the state may not know of
    /// compensations it issued.
    pub(crate) fn unclean(&self) -> bool {
        self.unclean
    }

    /// Records that a restore brought the state up to the topics (see [`State::unclean`]).
    pub(crate) fn set_restored(&mut self) {
        self.unclean = false;
    }

    /// Closes the state cleanly when every change is committed (nothing was processed, and so
    /// nothing sent, since the last commit) and it was not found unclean without being restored
    /// since; otherwise leaves it marked unclean. Whether it was closed cleanly.
    pub(crate) async fn close(&mut self) -> Result<bool, Error> {
        if self.unclean || !self.staged.is_empty() {
            return Ok(false);
        }
        self.store
            .db()
            .remove(OPEN_MARKER)
            .map_err(|e| self.store.err(e))?;
        self.store.flush().await?;
        Ok(true)
    }

    /// Whether the store was created empty by this opening.
    pub(crate) fn fresh(&self) -> bool {
        self.store.fresh()
    }

    /// Whether the store was found damaged and recreated empty.
    pub(crate) fn rebuilt(&self) -> bool {
        self.store.rebuilt()
    }

    /// A handle on the store for reading its committed cases beside the stage
    /// (`ReportReader` in the report module).
    pub(crate) fn db(&self) -> sled::Db {
        self.store.db().clone()
    }

    /// How many changes are staged.
    pub(crate) fn staged_len(&self) -> usize {
        self.staged.len()
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if let Some(v) = self.staged.get(key) {
            return Ok(v.clone());
        }
        let v = self.store.db().get(key).map_err(|e| self.store.err(e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    /// Whether a restore began and did not finish.
    pub(crate) fn restore_pending(&self) -> Result<bool, Error> {
        Ok(self.get(RESTORE_MARKER)?.is_some())
    }

    /// Stages the restore marker (`true`) or its removal.
    pub(crate) fn set_restore_pending(&mut self, pending: bool) {
        self.staged
            .insert(RESTORE_MARKER.to_vec(), pending.then(Vec::new));
    }

    /// The offset of the last record of `topic`/`partition` the state reflects.
    pub(crate) fn stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, Error> {
        let Some(v) = self.get(&offset_key(topic, partition))? else {
            return Ok(None);
        };
        decode_offset(&v).map(Some)
    }

    /// Stages `offset` as the last record of `topic`/`partition` the state reflects.
    pub(crate) fn stage_offset(&mut self, topic: &str, partition: i32, offset: i64) {
        self.staged.insert(
            offset_key(topic, partition),
            Some(offset.to_be_bytes().to_vec()),
        );
    }

    /// The committed positions: the next offset to read per topic and partition.
    pub(crate) fn positions(&self) -> Result<BTreeMap<(String, i32), i64>, Error> {
        let mut out = BTreeMap::new();
        for item in self.store.db().scan_prefix(PREFIX_OFFSET.as_bytes()) {
            let (k, v) = item.map_err(|e| self.store.err(e))?;
            let Some((topic, partition)) =
                tillbridge_core::store::parse_position_key(&k[PREFIX_OFFSET.len()..])
            else {
                continue;
            };
            out.insert((topic, partition), decode_offset(&v)? + 1);
        }
        Ok(out)
    }

    /// The ledger stored under `key`, loaded once per batch into `cache`; fresh when there is
    /// none yet.
    pub(crate) fn ledger<'a, L: Ledger>(
        &self,
        cache: &'a mut BTreeMap<String, L>,
        key: &str,
    ) -> Result<&'a mut L, Error> {
        match cache.entry(key.to_owned()) {
            Entry::Occupied(o) => Ok(o.into_mut()),
            Entry::Vacant(v) => {
                let st = match self.get(format!("{}{key}", L::PREFIX).as_bytes())? {
                    Some(bytes) => decode_json(L::WHAT, &bytes)?,
                    None => L::fresh(key),
                };
                Ok(v.insert(st))
            }
        }
    }

    /// The keys of every ledger of type `L`, stored or staged (a key may appear twice).
    pub(crate) fn ledger_keys<L: Ledger>(&self) -> Vec<String> {
        let prefix = L::PREFIX;
        self.store
            .db()
            .scan_prefix(prefix.as_bytes())
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .chain(
                self.staged
                    .keys()
                    .filter(|k| k.starts_with(prefix.as_bytes()))
                    .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned()),
            )
            .collect()
    }

    /// Stages the ledger `st` under `key`.
    pub(crate) fn stage_ledger<L: Ledger>(&mut self, key: &str, st: &L) -> Result<(), Error> {
        let value = encode_json(L::WHAT, st)?;
        self.staged
            .insert(format!("{}{key}", L::PREFIX).into_bytes(), Some(value));
        Ok(())
    }

    /// Stages the case `case_id`, or its removal when there is no case.
    pub(crate) fn stage_case(&mut self, case_id: &str, case: Option<&Case>) -> Result<(), Error> {
        let key = format!("{PREFIX_CASE}{case_id}").into_bytes();
        let value = case.map(|c| encode_json("case", c)).transpose()?;
        self.staged.insert(key, value);
        Ok(())
    }

    /// Writes the staged changes in one atomic batch and flushes.
    pub(crate) async fn commit(&mut self) -> Result<(), Error> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, v) in std::mem::take(&mut self.staged) {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.store
            .db()
            .apply_batch(batch)
            .map_err(|e| self.store.err(e))?;
        self.store.flush().await?;
        Ok(())
    }
}

/// Reads the persisted cases of the reconciler's state in `state_dir`, leaving it unchanged.
pub(crate) fn read_cases(state_dir: &Path) -> Result<Vec<Case>, Error> {
    if !state_dir.exists() {
        return Err(Error::NoState(state_dir.to_owned()));
    }
    // Opened directly rather than through `StateStore::open`, which would move a store of another
    // layout aside: a report must never change the state it reads.
    let db = tillbridge_core::store::open_unchanged(state_dir).map_err(|e| match e {
        tillbridge_core::store::Unopened::Held => Error::Held(state_dir.to_owned()),
        tillbridge_core::store::Unopened::Failed(detail) => Error::corrupt("state store", detail),
    })?;
    match db.get(FORMAT_KEY)? {
        Some(v) if v.as_ref() == FORMAT.as_bytes() => {}
        _ => {
            return Err(Error::corrupt(
                "state format",
                format!(
                    "{} is not a reconciler state of layout {FORMAT}",
                    state_dir.display()
                ),
            ))
        }
    }
    cases_in(&db)
}

/// The committed cases of the reconciler's store `db` (a commit is one atomic sled batch, so a
/// scan sees whole commits).
pub(crate) fn cases_in(db: &sled::Db) -> Result<Vec<Case>, Error> {
    let mut cases = Vec::new();
    for item in db.scan_prefix(PREFIX_CASE.as_bytes()) {
        let (_, v) = item?;
        cases.push(decode_json::<Case>("case", &v)?);
    }
    Ok(cases)
}
