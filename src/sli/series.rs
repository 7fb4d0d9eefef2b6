//! The per-SLI series table with its cardinality guard.
//!
//! A series is one combination of label values (service, release, and
//! route/method when configured). The table holds at most `max_series` of
//! them; an event whose combination is new once the table is full is
//! counted in one extra series whose labels are all `__overflow__`. Series
//! are never evicted (their counters must stay monotonic for Prometheus),
//! so memory is fixed by the limit, whatever the input.

use hashbrown::HashTable;

use super::window::{Counts, Ring, WindowSpec};

/// Outcome indexes into [`Series::outcomes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A good request.
    Success = 0,
    /// The outcome condition said error.
    Error = 1,
    /// Succeeded, but slower than the latency threshold.
    Slow = 2,
}

impl Outcome {
    /// The `outcome` label values, by index.
    pub(crate) const LABELS: [&'static str; 3] = ["success", "error", "slow"];
}

/// Counters of one label combination.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    /// The label values, each as a little-endian `u32` length and UTF-8
    /// bytes, in the order of the rule's label names. Empty for overflow.
    pub(crate) key: Box<[u8]>,
    hash: u64,
    /// Requests by [`Outcome`].
    pub(crate) outcomes: [u64; 3],
    /// Latency observations per bucket (not cumulative); the last entry is
    /// the `+Inf` bucket.
    pub(crate) buckets: Box<[u64]>,
    /// Sum of observed latencies, in seconds.
    pub(crate) sum: f64,
    /// One ring per configured window.
    pub(crate) rings: Box<[Ring]>,
    /// Tap-clock milliseconds of the last [`Series::advance`].
    advanced_at: u64,
}

impl Series {
    fn new(key: Box<[u8]>, hash: u64, buckets: usize, windows: &[WindowSpec], now_ms: u64) -> Series {
        Series {
            key,
            hash,
            outcomes: [0; 3],
            buckets: vec![0; buckets].into_boxed_slice(),
            sum: 0.0,
            rings: windows.iter().map(|w| Ring::new(w.slot(now_ms))).collect(),
            advanced_at: now_ms,
        }
    }

    /// Requests and budget-spending requests so far.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            total: self.outcomes.iter().sum(),
            bad: self.outcomes[Outcome::Error as usize] + self.outcomes[Outcome::Slow as usize],
        }
    }

    /// Brings every window ring to `now_ms`. Cheap when called again within
    /// the same millisecond, which is how a batch calls it per event.
    #[inline]
    pub(crate) fn advance(&mut self, windows: &[WindowSpec], now_ms: u64) {
        if self.advanced_at == now_ms {
            return;
        }
        self.advanced_at = now_ms;
        let cum = self.counts();
        for (ring, w) in self.rings.iter_mut().zip(windows) {
            ring.advance(w.slot(now_ms), cum);
        }
    }

    /// The label values, in the rule's label order.
    pub(crate) fn label_values(&self) -> impl Iterator<Item = &str> + '_ {
        KeyValues { rest: &self.key }
    }

    /// Approximate heap bytes, for the memory gauge.
    fn heap_bytes(&self) -> usize {
        self.key.len() + self.buckets.len() * 8 + std::mem::size_of_val(&*self.rings)
    }
}

/// Iterates over the values packed in a series key.
struct KeyValues<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for KeyValues<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let len_bytes: [u8; 4] = self.rest.get(..4)?.try_into().ok()?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let value = self.rest.get(4..4 + len)?;
        self.rest = &self.rest[4 + len..];
        // Keys are built from &str values cut at char boundaries.
        Some(std::str::from_utf8(value).unwrap_or("\u{fffd}"))
    }
}

/// Appends one value to a series key being built.
pub(crate) fn push_key_value(key: &mut Vec<u8>, value: &str, max_bytes: usize) {
    let start = key.len();
    key.extend_from_slice(&[0; 4]);
    key.extend_from_slice(value.as_bytes());
    finish_key_value(key, start, max_bytes);
}

/// Ends a value written after a 4-byte placeholder at `start`: cuts it to
/// `max_bytes` at a char boundary and fills in its length.
#[inline]
pub(crate) fn finish_key_value(key: &mut Vec<u8>, start: usize, max_bytes: usize) {
    let body = start + 4;
    let mut len = key.len() - body;
    if len > max_bytes {
        len = max_bytes;
        // Step back over UTF-8 continuation bytes to a char boundary.
        while len > 0 && key[body + len] & 0xC0 == 0x80 {
            len -= 1;
        }
        key.truncate(body + len);
    }
    key[start..body].copy_from_slice(&(len as u32).to_le_bytes());
}

/// Where an event's counts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A regular series, by index.
    Series(usize),
    /// The overflow series.
    Overflow,
}

/// The series of one SLI, with the cardinality guard.
#[derive(Debug)]
pub(crate) struct SeriesTable {
    series: Vec<Series>,
    index: HashTable<u32>,
    /// Allocated up front (one series' worth), shown once it has events.
    overflow: Series,
    overflow_events: u64,
    max_series: usize,
    buckets: usize,
}

impl SeriesTable {
    /// A table for at most `max_series` series with `buckets` histogram
    /// buckets (including `+Inf`), `labels` label values each and one ring
    /// per window. Series are added as values arrive, up to the limit.
    pub(crate) fn new(max_series: usize, buckets: usize, labels: usize, windows: &[WindowSpec], now_ms: u64) -> SeriesTable {
        let mut overflow_key = Vec::new();
        for _ in 0..labels {
            push_key_value(&mut overflow_key, super::config::OVERFLOW_LABEL, usize::MAX);
        }
        SeriesTable {
            series: Vec::new(),
            index: HashTable::new(),
            overflow: Series::new(overflow_key.into(), 0, buckets, windows, now_ms),
            overflow_events: 0,
            max_series,
            buckets,
        }
    }

    /// The slot for `key` (hashed to `hash`), creating the series while
    /// there is room. `events` that land in overflow are counted there.
    #[inline]
    pub(crate) fn slot(&mut self, hash: u64, key: &[u8], windows: &[WindowSpec], now_ms: u64, events: u64) -> Slot {
        let series = &self.series;
        if let Some(&i) = self.index.find(hash, |&i| series[i as usize].key.as_ref() == key) {
            return Slot::Series(i as usize);
        }
        // A key that would render exactly like the overflow series joins it,
        // so no two series ever share a label set.
        if self.series.len() >= self.max_series || key == self.overflow.key.as_ref() {
            self.overflow_events += events;
            return Slot::Overflow;
        }
        let i = self.series.len();
        self.series.push(Series::new(key.into(), hash, self.buckets, windows, now_ms));
        let series = &self.series;
        self.index.insert_unique(hash, i as u32, |&j| series[j as usize].hash);
        Slot::Series(i)
    }

    /// Counts `events` more in overflow, for a key already known to be
    /// there.
    pub(crate) fn add_overflow_events(&mut self, events: u64) {
        self.overflow_events += events;
    }

    /// The series at `slot`.
    #[inline]
    pub(crate) fn get_mut(&mut self, slot: Slot) -> &mut Series {
        match slot {
            Slot::Series(i) => &mut self.series[i],
            Slot::Overflow => &mut self.overflow,
        }
    }

    /// Every series, the overflow series last once it has had events.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Series> + '_ {
        let overflow = (self.overflow_events > 0).then_some(&mut self.overflow);
        self.series.iter_mut().chain(overflow)
    }

    /// Regular series (the overflow series not included).
    pub(crate) fn len(&self) -> usize {
        self.series.len()
    }

    /// Events that went to the overflow series.
    pub(crate) fn overflow_events(&self) -> u64 {
        self.overflow_events
    }

    /// Approximate heap bytes held by the series.
    pub(crate) fn heap_bytes(&self) -> usize {
        let per = |s: &Series| std::mem::size_of::<Series>() + s.heap_bytes();
        self.series.iter().map(per).sum::<usize>() + per(&self.overflow) + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;
    use std::time::Duration;

    fn key(values: &[&str]) -> Vec<u8> {
        let mut k = Vec::new();
        for v in values {
            push_key_value(&mut k, v, 256);
        }
        k
    }

    #[test]
    fn guard_caps_series_and_counts_overflow() {
        let windows = vec![WindowSpec::new(Duration::from_secs(300))];
        let mut t = SeriesTable::new(3, 2, 2, &windows, 0);
        let h = hashbrown::DefaultHashBuilder::default();
        let mut slots = Vec::new();
        for r in ["a", "b", "c", "d", "a", "e", "c"] {
            let k = key(&["svc", r]);
            slots.push(t.slot(h.hash_one(&k), &k, &windows, 0, 1));
        }
        use Slot::*;
        assert_eq!(slots, [Series(0), Series(1), Series(2), Overflow, Series(0), Overflow, Series(2)]);
        assert_eq!(t.len(), 3);
        assert_eq!(t.overflow_events(), 2);
        let labels: Vec<Vec<String>> = t.iter_mut().map(|s| s.label_values().map(str::to_owned).collect()).collect();
        assert_eq!(labels.last().unwrap(), &["__overflow__", "__overflow__"]);
    }

    #[test]
    fn key_values_cannot_collide_through_separators() {
        assert_ne!(key(&["a\0b", "c"]), key(&["a", "b\0c"]));
        assert_ne!(key(&["ab", ""]), key(&["a", "b"]));
    }

    #[test]
    fn long_values_are_cut_at_a_char_boundary() {
        let v = "é".repeat(200); // 400 bytes
        let k = key(&[&v]);
        let s = Series::new(k.into(), 0, 1, &[], 0);
        let got: Vec<&str> = s.label_values().collect();
        assert_eq!(got[0].len(), 256);
        assert!(v.starts_with(got[0]));
    }

    #[test]
    fn a_key_equal_to_the_overflow_labels_joins_overflow() {
        let mut t = SeriesTable::new(10, 1, 1, &[], 0);
        let k = key(&["__overflow__"]);
        assert_eq!(t.slot(7, &k, &[], 0, 1), Slot::Overflow);
        assert_eq!(t.len(), 0);
    }
}
