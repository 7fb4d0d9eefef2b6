//! Aggregation of metric updates over a flush interval, under a series
//! limit.
//!
//! Updates (a counter increment, a gauge value or delta, an observation,
//! a set member) land in the series named by (kind, name, labels). At each
//! flush every live series becomes one sample: counters as their running
//! total, gauges as their last value, histograms as cumulative bucket
//! counts, sets as the distinct members seen since the last flush.
//!
//! Memory is bounded by the configuration, never by the input:
//! - at most `max_series` series; past it an update goes to its metric's
//!   overflow series (every label value `__overflow__`, as the SLI guard
//!   does), and is counted;
//! - overflow series are bounded too ([`Aggregator::overflow_budget`]);
//!   past that budget an update is dropped and counted;
//! - a series not updated for `expire_after` is removed at the next flush;
//! - a set keeps at most [`MAX_SET_MEMBERS`] members per interval.

use hashbrown::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sample::{write_sample, SampleValue};
use crate::enrich::Fragment;

/// The label value of overflow series.
pub const OVERFLOW_LABEL: &str = "__overflow__";

/// Distinct members a set series keeps per interval; more are not told
/// apart (and counted as dropped), so a flood of members cannot grow a set
/// without bound.
pub const MAX_SET_MEMBERS: usize = 65_536;

/// Settings of an aggregation.
#[derive(Debug, Clone)]
pub struct AggregateConfig {
    /// Series kept (overflow series not counted).
    pub max_series: usize,
    /// A series not updated for this long is removed.
    pub expire_after: Duration,
    /// Upper bounds of histogram buckets, ascending and finite.
    pub buckets: Arc<[f64]>,
}

/// One update to a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Update<'a> {
    /// Adds to a counter.
    Count(f64),
    /// Sets a gauge.
    Gauge(f64),
    /// Adds to a gauge (statsd `+n`/`-n`).
    GaugeDelta(f64),
    /// One observation into a histogram, standing for `weight`
    /// observations (a sample rate of 0.1 makes the weight 10).
    Observe {
        /// The observed value.
        value: f64,
        /// How many observations it stands for.
        weight: f64,
    },
    /// A member of a set.
    SetMember(&'a [u8]),
}

/// Where an update went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Into its own series.
    Recorded,
    /// Into its metric's overflow series: the series limit was reached.
    Overflow,
    /// Nowhere: the overflow budget was spent too, or a set was full.
    Dropped,
}

/// What one flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Samples written.
    pub samples: usize,
    /// Series removed because they were not updated for `expire_after`.
    pub expired: usize,
}

#[derive(Debug)]
enum State {
    Counter(f64),
    Gauge(f64),
    Histogram {
        /// Per bucket (not cumulative); the last one is `+Inf`.
        counts: Box<[f64]>,
        count: f64,
        sum: f64,
    },
    Set(HashSet<u64>),
}

/// One series' state. Its name and labels are read back from its key in
/// the map ([`key_parts`]): no allocation per series for a short key, and
/// one place in memory that a flush visits for them.
#[derive(Debug)]
struct Series {
    state: State,
    last_update: Instant,
    overflow: bool,
}

/// The series of one source, updated between flushes.
#[derive(Debug)]
pub struct Aggregator {
    config: AggregateConfig,
    series: HashMap<SeriesKey, Series>,
    /// Overflow series among `series`.
    overflow_series: usize,
    // Scratch, reused across updates.
    key: Vec<u8>,
    sorted: Vec<(usize, usize)>,
    cumulative: Vec<f64>,
}

/// Bytes of a series key kept in its map slot; longer keys are boxed.
/// `c`, a statsd name of up to 20 bytes and a tag such as `shard:s12345`
/// fit.
const INLINE_KEY: usize = 46;

/// A series key ([`build_key`]), kept inside the map's slot when it is
/// short (most are): a flush walks the slots in order and reads each key
/// where it is, where a boxed key costs a cache miss per series (a tenth
/// of sluice's CPU in a 100,000-series flush), and an update compares it
/// without following a pointer. It hashes and compares as its bytes, so
/// the map is looked up with a `&[u8]`.
#[derive(Debug)]
enum SeriesKey {
    /// `bytes[..len]` is the key; `len <= INLINE_KEY`.
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    /// A key longer than [`INLINE_KEY`].
    Boxed(Box<[u8]>),
}

impl SeriesKey {
    fn as_bytes(&self) -> &[u8] {
        match self {
            SeriesKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            SeriesKey::Boxed(b) => b,
        }
    }
}

impl From<&[u8]> for SeriesKey {
    fn from(key: &[u8]) -> SeriesKey {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key);
            SeriesKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            SeriesKey::Boxed(key.into())
        }
    }
}

impl std::borrow::Borrow<[u8]> for SeriesKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::hash::Hash for SeriesKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes, which `Borrow` requires.
        self.as_bytes().hash(state)
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &SeriesKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for SeriesKey {}

/// Separates the parts of a series key. Names and labels are UTF-8, where
/// these bytes never occur.
const KEY_END: u8 = 0xFF;
const KEY_EQ: u8 = 0xFE;

impl Aggregator {
    /// An aggregation with no series yet.
    pub fn new(config: AggregateConfig) -> Aggregator {
        Aggregator {
            config,
            series: HashMap::new(),
            overflow_series: 0,
            key: Vec::new(),
            sorted: Vec::new(),
            cumulative: Vec::new(),
        }
    }

    /// Series held now, overflow series included.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True with no series.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Overflow series allowed beyond `max_series`: one per metric name
    /// that overflowed, up to a sixteenth of the limit (at least 16).
    pub fn overflow_budget(&self) -> usize {
        (self.config.max_series / 16).max(16)
    }

    /// Applies one update to the series `name{labels}`. Labels may come in
    /// any order; of two with one name, the last wins.
    pub fn update(&mut self, name: &str, labels: &[(&str, &str)], update: Update<'_>, now: Instant) -> Outcome {
        let kind = kind_byte(&update);
        self.sorted.clear();
        self.sorted.extend((0..labels.len()).map(|i| (i, i)));
        // Stable by name, then keep the last of equal names.
        self.sorted.sort_by(|a, b| labels[a.0].0.cmp(labels[b.0].0).then(a.1.cmp(&b.1)));
        self.sorted.dedup_by(|later, earlier| {
            let same = labels[later.0].0 == labels[earlier.0].0;
            if same {
                *earlier = *later;
            }
            same
        });
        build_key(&mut self.key, kind, name, self.sorted.iter().map(|&(i, _)| labels[i]));
        // The common case, one hash lookup: the series exists.
        if let Some(series) = self.series.get_mut(self.key.as_slice()) {
            series.last_update = now;
            return apply(&mut series.state, update, &self.config.buckets, Outcome::Recorded);
        }
        let mut outcome = Outcome::Recorded;
        if self.series.len() - self.overflow_series >= self.config.max_series {
            outcome = Outcome::Overflow;
            build_key(
                &mut self.key,
                kind,
                name,
                self.sorted.iter().map(|&(i, _)| (labels[i].0, OVERFLOW_LABEL)),
            );
            if !self.series.contains_key(self.key.as_slice()) {
                if self.overflow_series >= self.overflow_budget() {
                    return Outcome::Dropped;
                }
                self.overflow_series += 1;
            }
        }
        let buckets = self.config.buckets.len();
        let series = self.series.entry_ref(self.key.as_slice()).or_insert_with(|| Series {
            state: match update {
                Update::Count(_) => State::Counter(0.0),
                Update::Gauge(_) | Update::GaugeDelta(_) => State::Gauge(0.0),
                Update::Observe { .. } => State::Histogram {
                    counts: vec![0.0; buckets + 1].into(),
                    count: 0.0,
                    sum: 0.0,
                },
                Update::SetMember(_) => State::Set(HashSet::new()),
            },
            last_update: now,
            overflow: outcome == Outcome::Overflow,
        });
        series.last_update = now;
        apply(&mut series.state, update, &self.config.buckets, outcome)
    }

    /// Writes one sample per live series into `out` (one JSON object and
    /// a newline each, through `emit`), after removing the series not
    /// updated for `expire_after`. Sets start over for the next interval.
    pub fn flush(&mut self, now: Instant, timestamp_ms: i64, metadata: &Fragment, mut emit: impl FnMut(&[u8])) -> FlushStats {
        let expire_after = self.config.expire_after;
        let before = self.series.len();
        let mut expired_overflow = 0;
        self.series.retain(|_, s| {
            let keep = now.saturating_duration_since(s.last_update) < expire_after;
            if !keep && s.overflow {
                expired_overflow += 1;
            }
            keep
        });
        self.overflow_series -= expired_overflow;
        let mut stats = FlushStats {
            samples: 0,
            expired: before - self.series.len(),
        };
        let mut line = Vec::with_capacity(256);
        for (key, s) in self.series.iter_mut() {
            line.clear();
            let (name, labels) = key_parts(key.as_bytes());
            match &mut s.state {
                State::Counter(total) => write_sample(&mut line, name, labels, timestamp_ms, &SampleValue::Counter(*total), metadata),
                State::Gauge(v) => write_sample(&mut line, name, labels, timestamp_ms, &SampleValue::Gauge(*v), metadata),
                State::Set(members) => {
                    write_sample(
                        &mut line,
                        name,
                        labels,
                        timestamp_ms,
                        &SampleValue::Set(members.len() as u64),
                        metadata,
                    );
                    members.clear();
                }
                State::Histogram { counts, count, sum } => {
                    self.cumulative.clear();
                    let mut acc = 0.0;
                    for c in &counts[..counts.len() - 1] {
                        acc += c;
                        self.cumulative.push(acc);
                    }
                    let value = SampleValue::Histogram {
                        bounds: &self.config.buckets,
                        cumulative: &self.cumulative,
                        count: *count,
                        sum: *sum,
                    };
                    write_sample(&mut line, name, labels, timestamp_ms, &value, metadata);
                }
            }
            emit(&line);
            stats.samples += 1;
        }
        stats
    }
}

/// Applies `update` to a series' state; `outcome` is where it went.
fn apply(state: &mut State, update: Update<'_>, buckets: &[f64], outcome: Outcome) -> Outcome {
    match (state, update) {
        (State::Counter(total), Update::Count(n)) => *total += n,
        (State::Gauge(v), Update::Gauge(n)) => *v = n,
        (State::Gauge(v), Update::GaugeDelta(d)) => *v += d,
        (State::Histogram { counts, count, sum }, Update::Observe { value, weight }) => {
            let bucket = buckets.partition_point(|le| *le < value);
            counts[bucket] += weight;
            *count += weight;
            *sum += value * weight;
        }
        (State::Set(members), Update::SetMember(m)) => {
            let h = member_hash(m);
            if members.len() >= MAX_SET_MEMBERS && !members.contains(&h) {
                return Outcome::Dropped;
            }
            members.insert(h);
        }
        // The key holds the kind, so a series' state always matches its
        // updates.
        _ => return Outcome::Dropped,
    }
    outcome
}

fn kind_byte(update: &Update<'_>) -> u8 {
    match update {
        Update::Count(_) => b'c',
        Update::Gauge(_) | Update::GaugeDelta(_) => b'g',
        Update::Observe { .. } => b'h',
        Update::SetMember(_) => b's',
    }
}

fn build_key<'a>(key: &mut Vec<u8>, kind: u8, name: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) {
    key.clear();
    key.push(kind);
    key.extend_from_slice(name.as_bytes());
    key.push(KEY_END);
    for (k, v) in labels {
        key.extend_from_slice(k.as_bytes());
        key.push(KEY_EQ);
        key.extend_from_slice(v.as_bytes());
        key.push(KEY_END);
    }
}

/// The metric name and the labels (in key order: by name) of a series
/// key that [`build_key`] wrote. Every part was a `str` and the separators
/// never occur in UTF-8, so each part reads back whole.
fn key_parts(key: &[u8]) -> (&str, impl Iterator<Item = (&str, &str)> + '_) {
    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap_or_default()
    }
    let rest = key.get(1..).unwrap_or_default();
    let end = memchr::memchr(KEY_END, rest).unwrap_or(rest.len());
    let labels = rest.get(end + 1..).unwrap_or_default();
    let pairs = labels.split(|&b| b == KEY_END).filter(|pair| !pair.is_empty()).map(move |pair| {
        let eq = memchr::memchr(KEY_EQ, pair).unwrap_or(pair.len());
        (text(&pair[..eq]), text(pair.get(eq + 1..).unwrap_or_default()))
    });
    (text(&rest[..end]), pairs)
}

/// A set member's identity: 64 bits of a keyed hash, so members are told
/// apart without keeping their bytes.
fn member_hash(m: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    h.write(m);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::sample::Sample;

    fn agg(max_series: usize) -> Aggregator {
        Aggregator::new(AggregateConfig {
            max_series,
            expire_after: Duration::from_secs(60),
            buckets: vec![1.0, 10.0].into(),
        })
    }

    fn samples(a: &mut Aggregator, now: Instant) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = Vec::new();
        a.flush(now, 1000, &Fragment::default(), |line| {
            Sample::parse(line).expect("a valid sample");
            out.push(serde_json::from_slice(line).unwrap());
        });
        out.sort_by_key(|v| v.to_string());
        out
    }

    #[test]
    fn counters_sum_into_running_totals_and_gauges_keep_their_last_value() {
        let mut a = agg(100);
        let now = Instant::now();
        a.update("hits", &[("b", "2"), ("a", "1")], Update::Count(2.0), now);
        a.update("hits", &[("a", "1"), ("b", "2")], Update::Count(3.0), now);
        a.update("temp", &[], Update::Gauge(5.0), now);
        a.update("temp", &[], Update::GaugeDelta(-2.0), now);
        let s = samples(&mut a, now);
        assert_eq!(s.len(), 2, "label order does not make another series: {s:?}");
        assert_eq!(s[0]["metric"], "hits");
        assert_eq!(s[0]["value"], 5);
        assert_eq!(s[0]["labels"], serde_json::json!({"a": "1", "b": "2"}));
        assert_eq!(s[1]["value"], 3);
        a.update("hits", &[("a", "1"), ("b", "2")], Update::Count(1.0), now);
        assert_eq!(samples(&mut a, now)[0]["value"], 6, "a counter is a running total across flushes");
    }

    #[test]
    fn observations_fill_cumulative_buckets_with_sample_rate_weights() {
        let mut a = agg(100);
        let now = Instant::now();
        for (v, w) in [(0.5, 1.0), (1.0, 1.0), (5.0, 10.0), (50.0, 1.0)] {
            a.update("lat", &[], Update::Observe { value: v, weight: w }, now);
        }
        let s = samples(&mut a, now);
        assert_eq!(s[0]["count"], 13);
        assert_eq!(s[0]["sum"], 0.5 + 1.0 + 50.0 + 50.0);
        assert_eq!(s[0]["buckets"], serde_json::json!([{"le": 1, "count": 2}, {"le": 10, "count": 12}]));
    }

    #[test]
    fn sets_count_distinct_members_per_interval() {
        let mut a = agg(100);
        let now = Instant::now();
        for m in ["u1", "u2", "u1"] {
            a.update("users", &[], Update::SetMember(m.as_bytes()), now);
        }
        assert_eq!(samples(&mut a, now)[0]["value"], 2);
        assert_eq!(samples(&mut a, now)[0]["value"], 0, "a set starts over each interval");
    }

    #[test]
    fn past_the_series_limit_values_go_to_a_bounded_overflow_series() {
        let mut a = agg(10);
        let now = Instant::now();
        let mut overflowed = 0;
        let mut dropped = 0;
        for i in 0..100_000 {
            let v = i.to_string();
            let name = if i % 2 == 0 { "req" } else { &v };
            match a.update(name, &[("user", &v)], Update::Count(1.0), now) {
                Outcome::Overflow => overflowed += 1,
                Outcome::Dropped => dropped += 1,
                Outcome::Recorded => {}
            }
        }
        assert!(a.len() <= 10 + a.overflow_budget(), "{} series", a.len());
        assert_eq!(overflowed + dropped, 100_000 - 10);
        let s = samples(&mut a, now);
        let req = s
            .iter()
            .find(|s| s["metric"] == "req" && s["labels"]["user"] == OVERFLOW_LABEL)
            .expect("an overflow series");
        assert_eq!(
            req["value"],
            50_000 - 5,
            "every req update past the limit is in its overflow series"
        );
    }

    #[test]
    fn names_and_labels_read_back_from_the_series_key_exactly() {
        let mut a = agg(100);
        let now = Instant::now();
        let labels = [("z", ""), ("", "empty name"), ("ü", "x\"y\u{1F600}"), ("a", "1=2")];
        a.update("näme.x", &labels, Update::Gauge(1.5), now);
        a.update("bare", &[], Update::Count(1.0), now);
        let s = samples(&mut a, now);
        assert_eq!(s[0]["metric"], "bare");
        assert_eq!(s[0]["labels"], serde_json::json!({}));
        assert_eq!(s[1]["metric"], "näme.x");
        assert_eq!(
            s[1]["labels"],
            serde_json::json!({"": "empty name", "a": "1=2", "z": "", "ü": "x\"y\u{1F600}"})
        );
    }

    #[test]
    fn short_and_long_series_keys_aggregate_and_read_back_alike() {
        // Keys up to INLINE_KEY bytes sit in the map's slot, longer ones
        // are boxed: around the boundary and far past it, each series
        // sums its own updates and reads back its exact labels.
        let mut a = agg(100);
        let now = Instant::now();
        // Key: kind, "m", KEY_END, "v", KEY_EQ, value, KEY_END = 6 + value.
        let values: Vec<String> = [0, 39, 40, 41, 300].iter().map(|n| "x".repeat(*n)).collect();
        for round in 1..=2 {
            for v in &values {
                a.update("m", &[("v", v)], Update::Count(round as f64), now);
            }
        }
        let s = samples(&mut a, now);
        assert_eq!(s.len(), values.len());
        for v in &values {
            let got = s.iter().find(|s| s["labels"]["v"] == v.as_str()).expect("its series");
            assert_eq!(got["value"], 3, "a key of {} bytes", 6 + v.len());
        }
    }

    #[test]
    fn series_not_updated_for_expire_after_are_removed() {
        let mut a = agg(1);
        let t0 = Instant::now();
        a.update("old", &[], Update::Count(1.0), t0);
        let t1 = t0 + Duration::from_secs(61);
        let stats = a.flush(t1, 0, &Fragment::default(), |_| {});
        assert_eq!(stats, FlushStats { samples: 0, expired: 1 });
        assert_eq!(
            a.update("new", &[], Update::Count(1.0), t1),
            Outcome::Recorded,
            "an expired series frees its place"
        );
    }
}
