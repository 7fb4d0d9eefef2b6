//! `throttle`: at most `threshold` events per `window` per key (a pod, a
//! namespace); the rest are dropped and counted, per key, under a bound on
//! label values. Windows are fixed: the count of every key starts again
//! when a window ends.
//!
//! A file source that feeds the throttle directly, with a key its files'
//! metadata holds (or no key), is throttled before it reads instead
//! (`mode = "defer"`, the default): the file reader asks the throttle for
//! its lines ([`Deferral`]), reads what it may, and leaves the rest on disk
//! until the window ends. Nothing is dropped, and other files read on.

use prometheus::IntCounter;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::graph::{Compiler, KeyId, Run, Step};
use super::metrics::TransformMetrics;
use super::stream::Item;
use super::TransformComponent;
use crate::config::{duration, ConfigError, Validate};
use crate::enrich::SourceContext;
use crate::event::FieldPath;
use crate::pipeline::Deferral;

/// The key (and label value) of events past `max_keys` distinct keys, and
/// of events without the key field.
pub(crate) const OVERFLOW_KEY: &str = "__overflow__";

/// `[transforms.<name>] type = "throttle"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Events let through per key per window (at least 1).
    threshold: u64,
    /// The window; default 1s.
    #[serde(default = "default_window", deserialize_with = "duration")]
    window: Duration,
    /// The field whose value is the key (`kubernetes.pod`); without it one
    /// budget is shared by every event.
    #[serde(default)]
    key: Option<String>,
    /// Distinct keys kept each window, and label values kept for good; the
    /// rest share the `__overflow__` key. Default 1000.
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    /// What happens to events past the threshold from a file source that
    /// feeds the throttle directly: `defer` (default) leaves them on disk
    /// until the window ends; `drop` drops them. Other sources always drop.
    #[serde(default)]
    mode: ThrottleMode,
}

/// `throttle.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleMode {
    /// File sources stop reading a throttled file until the window ends.
    #[default]
    Defer,
    /// Events past the threshold are dropped and counted.
    Drop,
}

fn default_window() -> Duration {
    Duration::from_secs(1)
}

fn default_max_keys() -> usize {
    1000
}

impl Validate for ThrottleConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.threshold == 0 {
            errors.push(ConfigError::new(format!("{path}.threshold"), "must be at least 1"));
        }
        if self.window.is_zero() {
            errors.push(ConfigError::new(format!("{path}.window"), "must be above 0"));
        }
        if self.max_keys == 0 {
            errors.push(ConfigError::new(format!("{path}.max_keys"), "must be at least 1"));
        }
        if let Some(k) = &self.key {
            if let Err(e) = FieldPath::parse(k) {
                errors.push(ConfigError::new(format!("{path}.key"), e));
            }
        }
    }
}

impl TransformComponent for ThrottleConfig {
    fn build(&self, name: &str, cx: &mut Compiler) -> Box<dyn Step> {
        let path = self.key.as_deref().and_then(|k| FieldPath::parse(k).ok());
        Box::new(Throttle {
            key: path.as_ref().map(|p| cx.key(p)),
            budget: Arc::new(Budget {
                name: name.to_owned(),
                threshold: self.threshold,
                window: self.window,
                key_path: self.key.clone(),
                max_keys: self.max_keys,
                defers: self.mode == ThrottleMode::Defer,
                state: Mutex::new(State {
                    window_start: Instant::now(),
                    counts: HashMap::new(),
                    labels: HashMap::new(),
                    deferred: HashMap::new(),
                }),
            }),
        })
    }
}

struct Throttle {
    key: Option<KeyId>,
    budget: Arc<Budget>,
}

/// The counts of one throttle, shared by the transform and the file
/// readers that ask it before they read.
struct Budget {
    name: String,
    threshold: u64,
    window: Duration,
    /// The key as a metadata path, for the readers.
    key_path: Option<String>,
    max_keys: usize,
    defers: bool,
    state: Mutex<State>,
}

/// Counts of the current window. Locked once per batch.
struct State {
    window_start: Instant,
    /// Events let through this window, per key (at most `max_keys` keys
    /// plus the overflow key).
    counts: HashMap<String, u64>,
    /// The throttled counter of each key that has one (at most `max_keys`
    /// plus the overflow key, for the life of the transform).
    labels: HashMap<String, IntCounter>,
    /// The deferred counter of each key that has one, bounded the same way.
    deferred: HashMap<String, IntCounter>,
}

impl State {
    /// Starts a new window if the current one has ended.
    fn roll(&mut self, now: Instant, window: Duration) {
        if now.duration_since(self.window_start) >= window {
            self.window_start = now;
            self.counts.clear();
        }
    }

    /// The count of `key` this window (the overflow key's past
    /// `max_keys`).
    fn count(&mut self, key: &mut String, max_keys: usize) -> &mut u64 {
        if !self.counts.contains_key(key.as_str()) && self.counts.len() >= max_keys {
            key.clear();
            key.push_str(OVERFLOW_KEY);
        }
        if !self.counts.contains_key(key.as_str()) {
            self.counts.insert(key.clone(), 0);
        }
        self.counts.get_mut(key.as_str()).unwrap_or_else(|| unreachable!("inserted above"))
    }
}

impl Budget {
    /// Adds `n` to key's counter in `counters` (`sluice_transform_{throttled,deferred}_events_total`),
    /// under the bound on label values.
    fn count(&self, counters: &mut HashMap<String, IntCounter>, vec: &prometheus::IntCounterVec, key: String, n: u64) {
        let label = if counters.contains_key(&key) || counters.len() < self.max_keys {
            key
        } else {
            OVERFLOW_KEY.to_owned()
        };
        counters
            .entry(label)
            .or_insert_with_key(|k| vec.with_label_values(&[&self.name, k]))
            .inc_by(n);
    }

    /// The key of a file with context `ctx`: its metadata value at the
    /// key path (`""` without a key); `None` when the metadata lacks it.
    fn file_key(&self, ctx: &SourceContext) -> Option<String> {
        let Some(path) = &self.key_path else {
            return Some(String::new());
        };
        let mut key = String::new();
        match ctx.meta_value(path)? {
            serde_json::Value::String(s) => key.push_str(s),
            serde_json::Value::Null | serde_json::Value::Object(_) | serde_json::Value::Array(_) => return None,
            other => key.push_str(&other.to_string()),
        }
        Some(key)
    }

    /// Whether a file reader asked before reading these events (see
    /// [`Deferral::take`]).
    fn deferred_by_reader(&self, ctx: &SourceContext) -> bool {
        self.defers && ctx.kind == "file" && self.file_key(ctx).is_some()
    }
}

impl Deferral for Budget {
    fn take(&self, ctx: &SourceContext, wanted: usize) -> Option<(usize, Instant)> {
        if !self.defers || ctx.kind != "file" {
            return None;
        }
        // The file's key, once: without it the reader is not deferred.
        let mut key = self.file_key(ctx)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        state.roll(now, self.window);
        let next_window = state.window_start + self.window;
        let count = state.count(&mut key, self.max_keys);
        let granted = (self.threshold.saturating_sub(*count)).min(wanted as u64);
        *count += granted;
        let granted = granted as usize;
        if granted < wanted {
            let State { deferred, .. } = &mut *state;
            self.count(deferred, &TransformMetrics::get().deferred, key, (wanted - granted) as u64);
        }
        Some((granted, next_window))
    }
}

impl Step for Throttle {
    fn run(&self, input: Vec<Item>, run: &mut Run<'_>, out: &mut [Vec<Item>]) {
        let [kept] = out else { return };
        let b = &*self.budget;
        if run.fed_by_source() && b.deferred_by_reader(run.source()) {
            // The file reader took these from the budget before reading.
            kept.extend(input);
            return;
        }
        let mut state = b.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.roll(Instant::now(), b.window);
        let mut key = String::new();
        // Throttled per key in this batch, counted once at the end.
        let mut throttled: HashMap<String, u64> = HashMap::new();
        for item in input {
            key.clear();
            let has_key = match self.key {
                Some(k) => run.key(k, &item, &mut key),
                None => true,
            };
            if !has_key {
                key.clear();
                key.push_str(OVERFLOW_KEY);
            }
            let count = state.count(&mut key, b.max_keys);
            if *count < b.threshold {
                *count += 1;
                kept.push(item);
            } else {
                *throttled.entry(key.clone()).or_insert(0) += 1;
            }
        }
        let State { labels, .. } = &mut *state;
        for (key, n) in throttled {
            b.count(labels, &TransformMetrics::get().throttled, key, n);
        }
    }

    fn deferral(&self) -> Option<Arc<dyn Deferral>> {
        Some(self.budget.clone())
    }

    fn drop_reason(&self) -> &'static str {
        "throttled"
    }
}
