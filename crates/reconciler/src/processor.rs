//! The stage: [`Reconciler`], the [`Processor`] that applies input records to the ledgers,
//! settles them and commits; and the restore of a new or rebuilt state from the topics.

use std::collections::BTreeMap;
use std::path::Path;

use tillbridge_core::config::Topics;
use tillbridge_core::log::{OutRecord, Record};
use tillbridge_core::stage::Processor;

use crate::config::ReconcilerConfig;
use crate::error::Error;
use crate::input::{self, Malformed};
use crate::model::{CouponState, ProfileState};
use crate::settle::Settler;
use crate::state::State;

/// The reconciler stage. See the crate documentation.
pub struct Reconciler {
    state: State,
    topics: Topics,
    settler: Settler,
    malformed: u64,
    /// While restoring, facts are applied to the ledgers but nothing is settled or emitted.
    restoring: bool,
    /// `reconciler.commit_interval`; `None` commits every batch.
    commit_interval: Option<std::time::Duration>,
}

// By hand: the report key is a secret, and the staged values and sled's own Debug (which dumps
// every entry) hold coupon codes.
impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("rebuilt", &self.state.rebuilt())
            .field("horizon", &self.settler.horizon)
            .field("staged", &self.state.staged_len())
            .field("malformed", &self.malformed)
            .field("restoring", &self.restoring)
            .finish_non_exhaustive()
    }
}

/// The inputs of the reconciler (also [`Reconciler::input_topics`]).
pub fn input_topics(topics: &Topics) -> Vec<String> {
    vec![
        topics.redemptions.clone(),
        topics.loyalty.clone(),
        topics.coupons.clone(),
        topics.loyalty_balances.clone(),
    ]
}

impl Reconciler {
    /// Opens (or creates) the reconciler's state in `state_dir`; coupon cases are named by
    /// fingerprints made with `fingerprint_key` (`[fingerprint] key`).
    pub fn open(
        state_dir: &Path,
        topics: &Topics,
        cfg: &ReconcilerConfig,
        fingerprint_key: &str,
    ) -> Result<Reconciler, Error> {
        let settler = Settler::new(topics, cfg, fingerprint_key)?;
        Ok(Reconciler {
            state: State::open(state_dir)?,
            topics: topics.clone(),
            settler,
            malformed: 0,
            restoring: false,
            commit_interval: Some(cfg.commit_interval).filter(|d| !d.is_zero()),
        })
    }

    /// The topics the reconciler reads.
    pub fn input_topics(topics: &Topics) -> Vec<String> {
        input_topics(topics)
    }

    /// The compacted inputs (coupon definitions, balance snapshots), read to their end before
    /// any fact is judged.
    pub fn table_topics(topics: &Topics) -> Vec<String> {
        vec![topics.coupons.clone(), topics.loyalty_balances.clone()]
    }

    /// Whether the state must be restored from the topics before the stage runs: it is new or
    /// was rebuilt, a restore began and did not finish, or the last process to hold it died
    /// without closing it (it may have sent compensations its committed state does not know
    /// of). See [`Reconciler::begin_restore`].
    pub fn needs_restore(&self) -> Result<bool, Error> {
        Ok(self.state.fresh() || self.state.unclean() || self.state.restore_pending()?)
    }

    /// Whether the last process to hold the state died without closing it (see
    /// [`Reconciler::close`]).
    pub fn unclean(&self) -> bool {
        self.state.unclean()
    }

    /// Closes the state after the stage stopped: cleanly (the next start trusts what the state
    /// says it emitted) only when everything processed was committed; otherwise the next start
    /// restores. Whether it closed cleanly.
    pub async fn close(&mut self) -> Result<bool, Error> {
        self.state.close().await
    }

    /// Starts a restore: `emitted` are the records of the compensations topic (what an earlier
    /// life of the stage emitted). Until [`Reconciler::finish_restore`], `process` applies facts
    /// to the ledgers and emits nothing.
    pub fn begin_restore(&mut self, emitted: &[Record]) {
        self.settler.learn(emitted);
        self.restoring = true;
        self.state.set_restore_pending(true);
    }

    /// Ends a restore: judges every ledger once against what was emitted before and returns only
    /// the difference (actions still due are adopted with their ids, those no longer due are
    /// retracted, new ones issued). The caller sends the outputs, then commits.
    ///
    /// What the ledgers say they issued is dropped first: the topic, not a state that may have
    /// died between sending and committing, says what went out.
    pub fn finish_restore(&mut self) -> Result<Vec<OutRecord>, Error> {
        self.restoring = false;
        let mut out = Vec::new();
        let mut coupons: BTreeMap<String, CouponState> = BTreeMap::new();
        let mut profiles: BTreeMap<String, ProfileState> = BTreeMap::new();
        for code in self.state.ledger_keys::<CouponState>() {
            self.state.ledger(&mut coupons, &code)?.compensations = Default::default();
        }
        for profile in self.state.ledger_keys::<ProfileState>() {
            self.state.ledger(&mut profiles, &profile)?.compensations = Default::default();
        }
        self.settler
            .settle_ledgers(&mut self.state, coupons, profiles, &mut out)?;
        self.settler.forget();
        self.state.set_restore_pending(false);
        self.state.set_restored();
        Ok(out)
    }

    /// A reader of the committed cases for reports made while this reconciler runs (the state
    /// stays this process's own; see [`crate::report::ReportReader`]).
    pub fn report_reader(
        &self,
        cfg: &ReconcilerConfig,
        fingerprint_key: &str,
    ) -> crate::report::ReportReader {
        crate::report::ReportReader {
            db: self.state.db(),
            cfg: cfg.clone(),
            fingerprint_key: fingerprint_key.to_owned(),
        }
    }

    /// Whether the state was found damaged and recreated empty: the caller must replay the input
    /// topics from the beginning.
    pub fn rebuilt(&self) -> bool {
        self.state.rebuilt()
    }

    /// Input records skipped as malformed since this reconciler was opened.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

impl Processor for Reconciler {
    type Error = Error;

    fn fresh_state(&self) -> bool {
        self.state.fresh()
    }

    fn process(&mut self, batch: &[Record]) -> Result<Vec<OutRecord>, Error> {
        let mut coupons: BTreeMap<String, CouponState> = BTreeMap::new();
        let mut profiles: BTreeMap<String, ProfileState> = BTreeMap::new();
        let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for r in batch {
            let done = match offsets.get(&(r.topic.clone(), r.partition)) {
                Some(o) => Some(*o),
                None => self.state.stored_offset(&r.topic, r.partition)?,
            };
            if done.is_some_and(|o| r.offset <= o) {
                tracing::debug!(topic = %r.topic, partition = r.partition, offset = r.offset,
                    "record already reflected in the state, skipped");
                continue;
            }
            offsets.insert((r.topic.clone(), r.partition), r.offset);
            if let Err(Malformed(why)) =
                input::apply(&self.state, &self.topics, r, &mut coupons, &mut profiles)?
            {
                self.malformed += 1;
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset, reason = %why,
                    "malformed input record skipped");
            }
        }

        let mut out = Vec::new();
        if self.restoring {
            for (code, st) in coupons {
                self.state.stage_ledger(&code, &st)?;
            }
            for (profile, st) in profiles {
                self.state.stage_ledger(&profile, &st)?;
            }
        } else {
            self.settler
                .settle_ledgers(&mut self.state, coupons, profiles, &mut out)?;
        }
        for ((topic, partition), offset) in offsets {
            self.state.stage_offset(&topic, partition, offset);
        }
        Ok(out)
    }

    /// Every partition: a coupon's ledger needs its definition (on `promo.coupons`, which the
    /// promotion core's client partitions, not necessarily as tillbridge partitions
    /// `tillbridge.redemptions`) and every redemption of it; a profile's ledger likewise.
    fn whole_input(&self) -> bool {
        true
    }

    fn keeps_positions(&self) -> bool {
        true
    }

    fn positions(&self) -> Result<BTreeMap<(String, i32), i64>, Error> {
        self.state.positions()
    }

    /// The batches of an interval read each other's staged ledgers, cases and offsets
    /// (`State::get` looks at the staged changes first).
    fn commit_interval(&self) -> Option<std::time::Duration> {
        self.commit_interval
    }

    async fn commit(&mut self) -> Result<(), Error> {
        self.state.commit().await
    }
}
