//! Time helpers the rules share: durations in ms, lists kept sorted by event time, and the
//! busiest sliding window around an event. Imports no rule.

/// Most window starts tried when a redemption or override lands in a busy sliding window.
const MAX_WINDOW_STARTS: usize = 64;

/// A configured duration in ms (saturating).
pub(crate) fn ms_of(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Insert keeping the list sorted by time (a late event lands in its place).
pub(crate) fn insert_sorted<T>(v: &mut Vec<T>, item: T, ms: impl Fn(&T) -> i64) {
    let t = ms(&item);
    let i = v.partition_point(|x| ms(x) <= t);
    v.insert(i, item);
}

/// Among the windows `[s, s + len]` that contain `t`, with `s` the time of a hit, the one where
/// `metric` is highest (the earliest on a tie): `(start, first index, end index, metric)`. At
/// most [`MAX_WINDOW_STARTS`] starts are tried, the latest ones, so a very busy key costs
/// bounded work per event.
pub(crate) fn best_window<T>(
    hits: &[T],
    t: i64,
    len: i64,
    ms: impl Fn(&T) -> i64,
    metric: impl Fn(&[T]) -> i64,
) -> Option<(i64, usize, usize, i64)> {
    let lo = hits.partition_point(|h| ms(h) < t.saturating_sub(len));
    let hi = hits.partition_point(|h| ms(h) <= t);
    let lo = lo.max(hi.saturating_sub(MAX_WINDOW_STARTS));
    let mut best: Option<(i64, usize, usize, i64)> = None;
    for i in lo..hi {
        let s = ms(&hits[i]);
        let end = hits.partition_point(|h| ms(h) <= s.saturating_add(len));
        let m = metric(&hits[i..end]);
        if best.is_none_or(|b| m > b.3) {
            best = Some((s, i, end, m));
        }
    }
    best
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn best_window_prefers_the_fullest_window_containing_t() {
        let hits = vec![0i64, 10, 20, 100, 105];
        let w = best_window(&hits, 105, 10, |h| *h, |w| w.len() as i64).unwrap();
        assert_eq!(w, (100, 3, 5, 2));
        let w = best_window(&hits, 10, 10, |h| *h, |w| w.len() as i64).unwrap();
        assert_eq!(w, (0, 0, 2, 2));
        assert!(best_window(&hits, 50, 10, |h| *h, |w| w.len() as i64).is_none());
    }
}
