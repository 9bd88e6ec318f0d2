//! Everything the stage remembers, and how it is written: the meta entry (offsets, watermark,
//! last expiry and SEQUENCE_GAP's read marks and open gaps), the event ids judged (section `s`),
//! the cool-down starts (section `a`) and each rule's own sections (declared in its file).
//!
//! Every structure here is bounded by time: the *horizon* is the newest event time seen minus
//! `max_lateness`. Events older than the horizon are not judged, so anything whose window ends
//! before the horizon can no longer matter and is dropped by the engine's expiry. With a stable
//! set of stores, tills and cashiers the state therefore stays flat however long the stage runs.
//! Coupon codes are never kept: coupons are keyed by their masked subject, which carries an HMAC
//! fingerprint.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::kv::{bad_entry, kv_key, Dirty, Entries, Keyed, Section, Sections};
use crate::rules::coupon_velocity::CouponVelocity;
use crate::rules::offline_exposure::OfflineExposure;
use crate::rules::override_rate::OverrideRate;
use crate::rules::return_after_redemption::ReturnAfterRedemption;
use crate::rules::sequence_gap::{OpenGap, SequenceGap};

const META_KEY: &[u8] = b"m";
const TAG_SEEN: u8 = b's';
const TAG_ALERTED: u8 = b'a';

/// Event ids judged, with their event time (for deduplication): one entry per id, the 16 bytes
/// of the id after the tag, the time as 8 bytes big-endian.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Seen(BTreeMap<Uuid, i64>);

impl Seen {
    pub(crate) fn contains(&self, id: &Uuid) -> bool {
        self.0.contains_key(id)
    }

    pub(crate) fn insert(&mut self, dirty: &mut Dirty, id: Uuid, ms: i64) {
        self.0.insert(id, ms);
        dirty.touch(TAG_SEEN, id.as_bytes());
    }

    /// Forgets the ids older than `horizon` (their events are too late to be judged anyway).
    pub(crate) fn expire(&mut self, horizon: i64, dirty: &mut Dirty) {
        self.0.retain(|id, ms| {
            let keep = *ms >= horizon;
            if !keep {
                dirty.touch(TAG_SEEN, id.as_bytes());
            }
            keep
        });
    }
}

impl Section for Seen {
    fn tag(&self) -> u8 {
        TAG_SEEN
    }

    fn write_all(&self, out: &mut Entries) -> serde_json::Result<()> {
        for (id, ms) in &self.0 {
            out.push((kv_key(TAG_SEEN, id.as_bytes()), ms.to_be_bytes().to_vec()));
        }
        Ok(())
    }

    fn encoded(&self, name: &[u8]) -> serde_json::Result<Option<Vec<u8>>> {
        let id = Uuid::from_slice(name).map_err(|_| bad_entry("event id"))?;
        Ok(self.0.get(&id).map(|ms| ms.to_be_bytes().to_vec()))
    }

    fn load(&mut self, name: &[u8], value: &[u8]) -> serde_json::Result<()> {
        let id = Uuid::from_slice(name).map_err(|_| bad_entry("event id"))?;
        let ms = <[u8; 8]>::try_from(value).map_err(|_| bad_entry("event time"))?;
        self.0.insert(id, i64::from_be_bytes(ms));
        Ok(())
    }
}

/// Everything the stage remembers, with the input offsets it reflects.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct State {
    /// Highest offset applied, per topic and partition.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Newest event time seen.
    pub watermark_ms: Option<i64>,
    /// The horizon of the last expiry.
    pub expired_at: Option<i64>,
    pub seen: Seen,
    /// Window starts of the alerts emitted, per `RULE|subject`, for the cool-down.
    pub alerted: Keyed<TAG_ALERTED, Vec<i64>>,
    pub coupon_velocity: CouponVelocity,
    pub offline_exposure: OfflineExposure,
    pub override_rate: OverrideRate,
    pub return_after_redemption: ReturnAfterRedemption,
    /// Kept on `till.events` (see `rules::sequence_gap`).
    pub sequence_gap: SequenceGap,
}

/// The meta entry of the state: what is not kept per key.
#[derive(Default, Serialize, Deserialize)]
struct Meta {
    offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    watermark_ms: Option<i64>,
    expired_at: Option<i64>,
    gap_read_ms: BTreeMap<i32, i64>,
    gap_open: Vec<OpenGap>,
}

impl State {
    fn rules(&self) -> [&dyn Sections; 5] {
        [
            &self.coupon_velocity,
            &self.offline_exposure,
            &self.override_rate,
            &self.return_after_redemption,
            &self.sequence_gap,
        ]
    }

    fn sections(&self) -> Vec<&dyn Section> {
        let mut all: Vec<&dyn Section> = vec![&self.seen, &self.alerted];
        all.extend(self.rules().into_iter().flat_map(|r| r.sections()));
        all
    }

    fn sections_mut(&mut self) -> Vec<&mut dyn Section> {
        let mut all: Vec<&mut dyn Section> = vec![&mut self.seen, &mut self.alerted];
        for r in [
            &mut self.coupon_velocity as &mut dyn Sections,
            &mut self.offline_exposure,
            &mut self.override_rate,
            &mut self.return_after_redemption,
            &mut self.sequence_gap,
        ] {
            all.extend(r.sections_mut());
        }
        all
    }

    /// Number of entries held (map keys plus list items), the figure that must stay flat.
    pub(crate) fn entries(&self) -> usize {
        self.offsets.values().map(BTreeMap::len).sum::<usize>()
            + self.seen.0.len()
            + self.alerted.entries()
            + self.rules().iter().map(|r| r.entries()).sum::<usize>()
    }

    fn meta(&self) -> serde_json::Result<(Vec<u8>, Vec<u8>)> {
        let meta = Meta {
            offsets: self.offsets.clone(),
            watermark_ms: self.watermark_ms,
            expired_at: self.expired_at,
            gap_read_ms: self.sequence_gap.read_ms.clone(),
            gap_open: self.sequence_gap.open.clone(),
        };
        Ok((META_KEY.to_vec(), serde_json::to_vec(&meta)?))
    }

    /// The state as one entry per key (a coupon, a till, a cashier, an event id...), so that a
    /// batch writes only the entries it changed and expiry removes entries one by one.
    pub(crate) fn to_kv(&self) -> serde_json::Result<Entries> {
        let mut out = vec![self.meta()?];
        for s in self.sections() {
            s.write_all(&mut out)?;
        }
        Ok(out)
    }

    /// The sections of the rules that mark nothing dirty (small ones), written in full.
    fn sections_in_full(&self) -> Vec<&dyn Section> {
        self.rules()
            .into_iter()
            .filter(|r| r.written_in_full())
            .flat_map(|r| r.sections())
            .collect()
    }

    /// The entries written in full at every commit: the meta entry (offsets, watermark, open
    /// sequence gaps) and the sections of the rules that mark nothing dirty.
    pub(crate) fn small_kv(&self) -> serde_json::Result<Entries> {
        let mut out = vec![self.meta()?];
        for s in self.sections_in_full() {
            s.write_all(&mut out)?;
        }
        Ok(out)
    }

    /// The tags of the sections written in full at every commit (an entry of theirs missing
    /// from [`State::small_kv`] is gone).
    pub(crate) fn tags_in_full(&self) -> Vec<u8> {
        self.sections_in_full().iter().map(|s| s.tag()).collect()
    }

    /// The bytes of the entry at `key` as [`State::to_kv`] writes it, `None` when it is gone.
    pub(crate) fn entry(&self, key: &[u8]) -> serde_json::Result<Option<Vec<u8>>> {
        let (tag, name) = split(key)?;
        match self.sections().into_iter().find(|x| x.tag() == tag) {
            Some(s) => s.encoded(name),
            None => Err(bad_entry("unknown key")),
        }
    }

    /// The state from the entries [`State::to_kv`] wrote.
    pub(crate) fn from_kv(
        entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> serde_json::Result<State> {
        let mut s = State::default();
        for (k, v) in entries {
            if k == META_KEY {
                let m: Meta = serde_json::from_slice(&v)?;
                s.offsets = m.offsets;
                s.watermark_ms = m.watermark_ms;
                s.expired_at = m.expired_at;
                s.sequence_gap.read_ms = m.gap_read_ms;
                s.sequence_gap.open = m.gap_open;
                continue;
            }
            let (tag, name) = split(&k)?;
            match s.sections_mut().into_iter().find(|x| x.tag() == tag) {
                Some(section) => section.load(name, &v)?,
                None => return Err(bad_entry("unknown key")),
            }
        }
        Ok(s)
    }
}

/// The tag and the name of a key `{tag}/{name}`.
fn split(key: &[u8]) -> serde_json::Result<(u8, &[u8])> {
    match (key.first().copied(), key.get(2..)) {
        (Some(tag), Some(name)) => Ok((tag, name)),
        _ => Err(bad_entry("short key")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_through_its_entries() {
        let mut s = State::default();
        s.offsets.entry("t".into()).or_default().insert(3, 42);
        s.watermark_ms = Some(7);
        s.seen.0.insert(Uuid::from_u128(9), -5);
        s.coupon_velocity
            .insert_for_test("coupon:AB…CD#00", 1, Uuid::from_u128(1));
        s.alerted.insert("X|y".into(), vec![1, 2]);
        s.sequence_gap.read_ms.insert(0, 11);
        let kv = s.to_kv().unwrap();
        for (k, v) in kv.iter().filter(|(k, _)| k != META_KEY) {
            assert_eq!(s.entry(k).unwrap().as_ref(), Some(v), "{k:?}");
        }
        let back = State::from_kv(kv).unwrap();
        assert_eq!(back, s);
        assert!(State::from_kv(vec![(b"z/1".to_vec(), vec![])]).is_err());
    }

    #[test]
    fn every_section_has_its_own_tag() {
        let s = State::default();
        let mut tags: Vec<u8> = s.sections().iter().map(|s| s.tag()).collect();
        let n = tags.len();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), n, "{tags:?}");
    }
}
