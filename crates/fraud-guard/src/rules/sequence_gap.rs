//! SEQUENCE_GAP, judged on `till.events` itself, where each till's order exists.
//!
//! `promo.sessions` is keyed by session, so one till's events are spread over its partitions and
//! reach a consumer in an order that depends on batching, backlog and replays. `till.events` is
//! keyed by till: every event of one till sits in one partition, in the order the till synced
//! them. So this rule reads that topic (every record that names a till counts as synced, also a
//! resend or one that ingest dead-letters: the receipt did reach the broker) and works in record
//! time, the time a record reached Kafka:
//!
//! - an event whose `till_seq` jumps past the till's highest opens a gap for the numbers in
//!   between, *revealed* at its record time `R`;
//! - a number counts as filled only by an event of the till whose record time is before
//!   `R + open_for`;
//! - the gap is judged once its partition has been read up to `R + open_for`: what is still
//!   missing then is one SEQUENCE_GAP alert. Record times within a partition are taken to be
//!   non-decreasing (they are the times records reached the broker).
//!
//! Every input of that decision is a record of one partition, read in offset order, so the alert
//! (id and content) is the same live, as a backlog, after a replay and for any batch size.
//!
//! State: per till its highest `till_seq` and the starts of its alerts (section `g`), the newest
//! record time read per partition and the open gaps (both in the meta entry, see `state`). It
//! is bounded by the number of tills and the gaps open at once, not by the horizon, and it
//! marks nothing dirty: it is small and written in full at every commit.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tillbridge_core::log::Record;
use tillbridge_proto::pb;
use uuid::Uuid;

use crate::alert::{excess_pct, fmt_dur, fmt_ms, MAX_EVIDENCE_IDS};
use crate::alert::{Rule, Trigger};
use crate::config::SequenceGapConfig;
use crate::kv::{Keyed, Section, Sections};
use crate::window::ms_of;

const TAG_GAP_TILL: u8 = b'g';

/// Most cool-down window starts remembered per till.
const MAX_ALERT_STARTS_PER_TILL: usize = 32;

/// A jump in one till's sequence, waiting to be judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OpenGap {
    till: String,
    partition: i32,
    /// The event whose `till_seq` revealed the gap, its number and event time.
    revealed_by: Uuid,
    revealed_seq: u64,
    revealed_ms: i64,
    /// Record time of that event plus `open_for`: fills before it count.
    due_record_ms: i64,
    missing: BTreeSet<u64>,
    /// Missing numbers past `max_missing_per_till`, counted but not listed.
    uncounted: u64,
}

/// What the rule keeps per till.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct GapTill {
    highest_seq: u64,
    /// Window starts of the alerts written (for the cool-down), oldest first.
    alerted: Vec<i64>,
}

/// The rule's state: bounded by the number of tills and the gaps open at once.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SequenceGap {
    /// Newest record time read, per `till.events` partition (kept in the meta entry).
    pub(crate) read_ms: BTreeMap<i32, i64>,
    tills: Keyed<TAG_GAP_TILL, GapTill>,
    /// Sorted by `due_record_ms` (kept in the meta entry).
    pub(crate) open: Vec<OpenGap>,
}

impl Sections for SequenceGap {
    fn sections(&self) -> Vec<&dyn Section> {
        vec![&self.tills]
    }
    fn sections_mut(&mut self) -> Vec<&mut dyn Section> {
        vec![&mut self.tills]
    }
    fn entries(&self) -> usize {
        self.read_ms.len()
            + self
                .tills
                .values()
                .map(|t| 1 + t.alerted.len())
                .sum::<usize>()
            + self.open.iter().map(|g| 1 + g.missing.len()).sum::<usize>()
    }
    fn written_in_full(&self) -> bool {
        true
    }
}

/// The fields of a till record the rule needs.
struct Seen {
    till_key: String,
    seq: u64,
    event_id: Uuid,
    occurred_ms: i64,
}

fn seen(ev: &pb::TillEvent) -> Option<Seen> {
    let event_id = Uuid::parse_str(ev.event_id.trim()).ok()?;
    let at = ev.occurred_at?;
    if ev.store_id.is_empty() || ev.till_id.is_empty() || ev.till_seq == 0 {
        return None;
    }
    // A till named with a card number is never kept (it would reach the state and an alert).
    if tillbridge_core::pan::contains(&ev.store_id) || tillbridge_core::pan::contains(&ev.till_id) {
        return None;
    }
    Some(Seen {
        till_key: format!("{}/{}", ev.store_id, ev.till_id),
        seq: ev.till_seq,
        event_id,
        occurred_ms: at
            .seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(at.nanos / 1_000_000)),
    })
}

impl SequenceGap {
    /// Applies one `till.events` record (in its partition's offset order), with its event when
    /// it decodes, and returns the gaps it makes due, already past the cool-down, and how many
    /// were merged into an earlier alert.
    pub(crate) fn on_record(
        &mut self,
        cfg: &SequenceGapConfig,
        cooldown_ms: i64,
        rec: &Record,
        ev: Option<&pb::TillEvent>,
    ) -> (Vec<Trigger>, u64) {
        let Some(ts) = rec.timestamp_ms else {
            return (Vec::new(), 0);
        };
        let open_for = ms_of(cfg.open_for);
        let read = self.read_ms.entry(rec.partition).or_insert(ts);
        *read = (*read).max(ts);
        let read = *read;
        if let Some(s) = ev.and_then(seen) {
            track(self, cfg, open_for, rec.partition, ts, s);
        }
        judge(self, open_for, cooldown_ms, rec.partition, read)
    }
}

fn track(
    state: &mut SequenceGap,
    cfg: &SequenceGapConfig,
    open_for: i64,
    partition: i32,
    ts: i64,
    s: Seen,
) {
    let till = state.tills.entry(s.till_key.clone()).or_default();
    if s.seq > till.highest_seq {
        let first_seen = till.highest_seq == 0;
        let from = till.highest_seq + 1;
        till.highest_seq = s.seq;
        if first_seen || from == s.seq {
            return;
        }
        let listed_already: usize = state
            .open
            .iter()
            .filter(|g| g.till == s.till_key)
            .map(|g| g.missing.len())
            .sum();
        let room = (cfg.max_missing_per_till as usize).saturating_sub(listed_already) as u64;
        let jump = s.seq - from;
        let listed = jump.min(room);
        let gap = OpenGap {
            till: s.till_key,
            partition,
            revealed_by: s.event_id,
            revealed_seq: s.seq,
            revealed_ms: s.occurred_ms,
            due_record_ms: ts.saturating_add(open_for),
            missing: (from..from + listed).collect(),
            uncounted: jump - listed,
        };
        let at = state
            .open
            .partition_point(|g| g.due_record_ms <= gap.due_record_ms);
        state.open.insert(at, gap);
    } else {
        for g in state.open.iter_mut() {
            if g.till == s.till_key && ts < g.due_record_ms {
                g.missing.remove(&s.seq);
            }
        }
        state
            .open
            .retain(|g| !g.missing.is_empty() || g.uncounted > 0);
    }
}

fn judge(
    state: &mut SequenceGap,
    open_for: i64,
    cooldown_ms: i64,
    partition: i32,
    read: i64,
) -> (Vec<Trigger>, u64) {
    let mut due = Vec::new();
    let mut i = 0;
    while i < state.open.len() && state.open[i].due_record_ms <= read {
        if state.open[i].partition == partition {
            due.push(state.open.remove(i));
        } else {
            i += 1;
        }
    }
    let (mut triggers, mut merged) = (Vec::new(), 0);
    for g in due {
        let till = state.tills.entry(g.till.clone()).or_default();
        if till
            .alerted
            .iter()
            .any(|w| w.saturating_sub(g.revealed_ms).abs() < cooldown_ms)
        {
            merged += 1;
            tracing::debug!(till = %g.till, "sequence gap merged into an earlier alert (cool-down)");
            continue;
        }
        till.alerted.push(g.revealed_ms);
        if till.alerted.len() > MAX_ALERT_STARTS_PER_TILL {
            till.alerted.remove(0);
        }
        triggers.push(trigger(&g, open_for));
    }
    (triggers, merged)
}

fn trigger(g: &OpenGap, open_for: i64) -> Trigger {
    let count = g.missing.len() as u64 + g.uncounted;
    let listed: Vec<String> = g
        .missing
        .iter()
        .take(MAX_EVIDENCE_IDS)
        .map(u64::to_string)
        .collect();
    let more = count.saturating_sub(listed.len() as u64);
    let store = g.till.split('/').next().unwrap_or_default().to_owned();
    Trigger {
        rule: Rule::SequenceGap,
        store_id: store,
        subject: format!("till:{}", g.till),
        window_start_ms: g.revealed_ms,
        window_end_ms: g.revealed_ms.saturating_add(open_for),
        event_ids: vec![g.revealed_by],
        evidence: format!(
            "{count} till_seq missing ({}{}) before till_seq {} (event time {}), still missing {} \
             after it synced",
            listed.join(", "),
            if more > 0 {
                format!(", +{more}")
            } else {
                String::new()
            },
            g.revealed_seq,
            fmt_ms(g.revealed_ms),
            fmt_dur(open_for),
        ),
        excess_pct: excess_pct(i64::try_from(count).unwrap_or(i64::MAX), 1),
    }
}
