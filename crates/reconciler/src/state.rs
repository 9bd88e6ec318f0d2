//! The state store: its layout, ledgers loaded once per batch, offsets, and opening it safely
//! (waiting for a closing handle's lock); the report read from it.

use super::*;

pub(crate) fn decode_json<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        what,
        detail: e.to_string(),
    })
}

pub(crate) fn encode_json<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(|e| Error::Corrupt {
        what,
        detail: e.to_string(),
    })
}

/// Reads the reconciler's state in `state_dir` and builds the report. Call it while no
/// [`Reconciler`] has the state open (sled takes an exclusive lock).
pub fn report(state_dir: &Path, cfg: &ReconcilerConfig) -> Result<Report, Error> {
    if !state_dir.exists() {
        return Err(Error::NoState(state_dir.to_owned()));
    }
    // Opened directly rather than through `StateStore::open`, which would move a store of another
    // layout aside: a report must never change the state it reads.
    let db =
        tillbridge_core::store::open_unchanged(state_dir).map_err(|detail| Error::Corrupt {
            what: "state store",
            detail,
        })?;
    match db.get(FORMAT_KEY)? {
        Some(v) if v.as_ref() == FORMAT.as_bytes() => {}
        _ => {
            return Err(Error::Corrupt {
                what: "state format",
                detail: format!(
                    "{} is not a reconciler state of layout {FORMAT}",
                    state_dir.display()
                ),
            })
        }
    }
    let mut cases = Vec::new();
    for item in db.scan_prefix(PREFIX_CASE.as_bytes()) {
        let (_, v) = item?;
        cases.push(decode_json::<Case>("case", &v)?);
    }
    Ok(Report::build(cases, cfg))
}

impl Reconciler {
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if let Some(v) = self.staged.get(key) {
            return Ok(v.clone());
        }
        let v = self.store.db().get(key).map_err(|e| self.store.err(e))?;
        Ok(v.map(|v| v.to_vec()))
    }

    pub(crate) fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
        tillbridge_core::store::position_key(PREFIX_OFFSET.as_bytes(), topic, partition)
    }

    pub(crate) fn stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, Error> {
        let Some(v) = self.get(&Self::offset_key(topic, partition))? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| Error::Corrupt {
            what: "offset",
            detail: format!("{} bytes, expected 8", v.len()),
        })?;
        Ok(Some(i64::from_be_bytes(bytes)))
    }

    /// The ledger stored under `{prefix}{key}`, loaded once per batch into `cache`; `fresh`
    /// when there is none yet.
    pub(crate) fn cached<'a, T: DeserializeOwned>(
        &self,
        cache: &'a mut BTreeMap<String, T>,
        prefix: &str,
        key: &str,
        what: &'static str,
        fresh: impl FnOnce() -> T,
    ) -> Result<&'a mut T, Error> {
        match cache.entry(key.to_owned()) {
            std::collections::btree_map::Entry::Occupied(o) => Ok(o.into_mut()),
            std::collections::btree_map::Entry::Vacant(v) => {
                let st = match self.get(format!("{prefix}{key}").as_bytes())? {
                    Some(bytes) => decode_json(what, &bytes)?,
                    None => fresh(),
                };
                Ok(v.insert(st))
            }
        }
    }

    pub(crate) fn coupon<'a>(
        &self,
        cache: &'a mut BTreeMap<String, CouponState>,
        code: &str,
    ) -> Result<&'a mut CouponState, Error> {
        self.cached(cache, PREFIX_COUPON, code, "coupon ledger", || {
            CouponState {
                code: code.to_owned(),
                ..CouponState::default()
            }
        })
    }

    pub(crate) fn profile<'a>(
        &self,
        cache: &'a mut BTreeMap<String, ProfileState>,
        profile: &str,
    ) -> Result<&'a mut ProfileState, Error> {
        self.cached(cache, PREFIX_PROFILE, profile, "profile ledger", || {
            ProfileState {
                profile_id: profile.to_owned(),
                ..ProfileState::default()
            }
        })
    }
}
