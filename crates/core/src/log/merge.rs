//! Record-time order across the partitions of one topic, for stages whose rules span partitions.
//!
//! A consumer receives a topic's partitions in an order that depends on fetch timing, batching,
//! a backlog or a replay. [`Merge`] hands records out in one order that depends only on the
//! partitions' contents: it always takes the head (lowest offset not yet handed out) with the
//! lowest `(record timestamp, key, partition)`, and waits while any assigned partition has nothing
//! queued and was not read to its end, because that partition's next record could come first.
//! When each partition's record timestamps do not decrease (they are the times records reached
//! the broker), this is the topic's records sorted by timestamp, whatever the consumer saw when.
//!
//! A partition read to its end cannot hold the others back forever (a live topic is always at
//! its end): the heads wait `hold` of wall-clock time after they were received, so a record that
//! reaches a quiet partition meanwhile (a producer a little behind) still takes its place.
//! Past `max_queued` records the oldest head is released without waiting (counted), so a
//! partition whose leader is gone cannot make the queues grow without bound.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::api::{BatchLimits, Record};

/// A topic partition.
pub(crate) type Key = (String, i32);

/// Records waiting for their turn, per partition. See the module documentation.
#[derive(Debug)]
pub(crate) struct Merge {
    queues: BTreeMap<Key, VecDeque<(Record, Instant)>>,
    /// Partitions read to their end with nothing fetched since.
    at_end: BTreeSet<Key>,
    /// The next offset expected per partition: anything below was queued or handed out already
    /// (a partition revoked and assigned again is fetched again from its committed offset).
    next: BTreeMap<Key, i64>,
    queued: usize,
    hold: Duration,
    max_queued: usize,
    /// Heads released by `max_queued` before their turn was known.
    pub(crate) forced: u64,
}

impl Merge {
    pub(crate) fn new(hold: Duration, max_queued: usize) -> Self {
        Merge {
            queues: BTreeMap::new(),
            at_end: BTreeSet::new(),
            next: BTreeMap::new(),
            queued: 0,
            hold,
            max_queued: max_queued.max(1),
            forced: 0,
        }
    }

    /// Queues a fetched record (one already queued or handed out is ignored).
    pub(crate) fn push(&mut self, rec: Record, now: Instant) {
        let key = (rec.topic.clone(), rec.partition);
        let next = self.next.entry(key.clone()).or_insert(rec.offset);
        if rec.offset < *next {
            return;
        }
        *next = rec.offset + 1;
        self.at_end.remove(&key);
        self.queues.entry(key).or_default().push_back((rec, now));
        self.queued += 1;
    }

    /// Notes that `partition` of `topic` was read to its end.
    pub(crate) fn end_of(&mut self, topic: &str, partition: i32) {
        self.at_end.insert((topic.to_owned(), partition));
    }

    /// Forgets partitions no longer assigned: their records are not handed out here (their new
    /// owner reads them from the committed offset).
    pub(crate) fn retain(&mut self, assigned: &BTreeSet<Key>) {
        let before: usize = self.queues.values().map(VecDeque::len).sum();
        self.queues.retain(|k, _| assigned.contains(k));
        self.at_end.retain(|k| assigned.contains(k));
        self.next.retain(|k, _| assigned.contains(k));
        let after: usize = self.queues.values().map(VecDeque::len).sum();
        self.queued -= before - after;
    }

    /// Records queued.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Hands out the records whose turn is certain, up to `limits`; when none is, also the
    /// instant at which the first held head may go (`None`: waiting on a fetch).
    pub(crate) fn release(
        &mut self,
        assigned: &BTreeSet<Key>,
        limits: BatchLimits,
        now: Instant,
    ) -> (Vec<Record>, Option<Instant>) {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut wake = None;
        while out.len() < limits.max_records && (bytes < limits.max_bytes || out.is_empty()) {
            let empty = |k: &Key| self.queues.get(k).is_none_or(VecDeque::is_empty);
            let waiting = assigned
                .iter()
                .any(|k| empty(k) && !self.at_end.contains(k));
            let quiet = assigned.iter().any(|k| empty(k) && self.at_end.contains(k));
            let head = self
                .queues
                .iter()
                .filter_map(|(k, q)| {
                    q.front()
                        .map(|(r, at)| ((r.timestamp_ms, r.key.as_deref(), k), *at))
                })
                .min_by(|a, b| a.0.cmp(&b.0))
                .map(|((_, _, k), at)| (k.clone(), at));
            let Some((key, received)) = head else {
                break;
            };
            let forced = self.queued > self.max_queued;
            if !forced {
                if waiting {
                    break;
                }
                if quiet && now < received + self.hold {
                    wake = Some(received + self.hold);
                    break;
                }
            } else {
                self.forced += 1;
            }
            let Some((rec, _)) = self.queues.get_mut(&key).and_then(VecDeque::pop_front) else {
                break;
            };
            self.queued -= 1;
            bytes += rec.size();
            out.push(rec);
        }
        (out, wake)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(p: i32, offset: i64, ts: i64) -> Record {
        Record {
            topic: "t".into(),
            partition: p,
            offset,
            key: None,
            payload: Some(vec![0]),
            headers: vec![],
            timestamp_ms: Some(ts),
        }
    }

    fn limits(n: usize) -> BatchLimits {
        BatchLimits {
            max_records: n,
            max_bytes: 1 << 20,
            wait: Duration::from_millis(10),
        }
    }

    fn assigned(n: i32) -> BTreeSet<Key> {
        (0..n).map(|p| ("t".to_owned(), p)).collect()
    }

    fn order(out: &[Record]) -> Vec<(i32, i64)> {
        out.iter().map(|r| (r.partition, r.offset)).collect()
    }

    /// Partition contents; each delivery schedule below must yield the same order.
    fn topic() -> Vec<Vec<i64>> {
        vec![vec![1, 4, 4, 9], vec![2, 3, 10], vec![4, 5, 6, 7, 8]]
    }

    fn sorted() -> Vec<(i32, i64)> {
        let mut all: Vec<(i64, i32, i64)> = topic()
            .iter()
            .enumerate()
            .flat_map(|(p, ts)| {
                ts.iter()
                    .enumerate()
                    .map(move |(o, t)| (*t, p as i32, o as i64))
            })
            .collect();
        all.sort();
        all.into_iter().map(|(_, p, o)| (p, o)).collect()
    }

    #[test]
    fn the_order_is_the_topics_whatever_the_fetch_schedule() {
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(3600);
        // Fetch schedules: partition by partition, round robin, reversed, with batch sizes.
        for (schedule, batch) in [
            ("partition by partition", 100),
            ("round robin", 1),
            ("last partition first", 2),
        ] {
            let mut m = Merge::new(Duration::from_secs(1), 10_000);
            let mut pending: Vec<VecDeque<(i32, i64, i64)>> = topic()
                .iter()
                .enumerate()
                .map(|(p, ts)| {
                    ts.iter()
                        .enumerate()
                        .map(|(o, t)| (p as i32, o as i64, *t))
                        .collect()
                })
                .collect();
            if schedule == "last partition first" {
                pending.reverse();
            }
            let mut got = Vec::new();
            let a = assigned(3);
            loop {
                let mut fetched = false;
                for q in pending.iter_mut() {
                    let n = if schedule == "partition by partition" {
                        q.len()
                    } else {
                        1
                    };
                    for _ in 0..n {
                        if let Some((p, o, t)) = q.pop_front() {
                            m.push(rec(p, o, t), t0);
                            fetched = true;
                            if q.is_empty() {
                                m.end_of("t", p);
                            }
                        }
                    }
                    let (out, _) = m.release(&a, limits(batch), t0);
                    got.extend(order(&out));
                    if schedule == "partition by partition" {
                        break;
                    }
                }
                pending.retain(|q| !q.is_empty());
                if !fetched {
                    break;
                }
            }
            // Everything fetched and every partition at its end: the rest goes after `hold`.
            loop {
                let (out, _) = m.release(&a, limits(batch), far);
                if out.is_empty() {
                    break;
                }
                got.extend(order(&out));
            }
            assert_eq!(got, sorted(), "{schedule}");
        }
    }

    #[test]
    fn a_partition_not_yet_read_holds_the_others_back() {
        let t0 = Instant::now();
        let mut m = Merge::new(Duration::from_secs(1), 10_000);
        m.push(rec(0, 0, 5), t0);
        let (out, wake) = m.release(&assigned(2), limits(10), t0 + Duration::from_secs(60));
        assert!(out.is_empty() && wake.is_none());
        m.end_of("t", 1);
        let (out, wake) = m.release(&assigned(2), limits(10), t0);
        assert!(out.is_empty());
        assert_eq!(wake, Some(t0 + Duration::from_secs(1)));
        // A record that reaches the quiet partition within the hold goes first.
        m.push(rec(1, 0, 4), t0 + Duration::from_millis(500));
        let (out, _) = m.release(&assigned(2), limits(10), t0 + Duration::from_millis(600));
        assert_eq!(order(&out), vec![(1, 0)]);
        let (out, _) = m.release(&assigned(2), limits(10), t0 + Duration::from_secs(2));
        assert!(out.is_empty(), "partition 1 is not known to be at its end");
        m.end_of("t", 1);
        let (out, _) = m.release(&assigned(2), limits(10), t0 + Duration::from_secs(2));
        assert_eq!(order(&out), vec![(0, 0)]);
    }

    #[test]
    fn refetched_records_are_ignored_and_revoked_partitions_dropped() {
        let t0 = Instant::now();
        let mut m = Merge::new(Duration::ZERO, 10_000);
        m.push(rec(0, 0, 1), t0);
        m.push(rec(0, 1, 2), t0);
        m.push(rec(0, 0, 1), t0);
        m.push(rec(1, 0, 3), t0);
        assert_eq!(m.queued(), 3);
        m.retain(&assigned(1));
        assert_eq!(m.queued(), 2);
        m.end_of("t", 0);
        let (out, _) = m.release(&assigned(1), limits(10), t0);
        assert_eq!(order(&out), vec![(0, 0), (0, 1)]);
    }

    #[test]
    fn past_max_queued_the_oldest_head_goes_without_waiting() {
        let t0 = Instant::now();
        let mut m = Merge::new(Duration::from_secs(1), 2);
        for o in 0..4 {
            m.push(rec(0, o, o), t0);
        }
        let (out, _) = m.release(&assigned(2), limits(10), t0);
        assert_eq!(order(&out), vec![(0, 0), (0, 1)]);
        assert_eq!(m.forced, 2);
    }
}
