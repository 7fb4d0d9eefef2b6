//! `throttle`: at most `threshold` events per `window` per key (a pod, a
//! namespace); the rest are dropped and counted, per key, under a bound on
//! label values. Windows are fixed: the count of every key starts again
//! when a window ends.

use prometheus::IntCounter;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::graph::{Compiler, KeyId, Run, Step};
use super::metrics::TransformMetrics;
use super::stream::Item;
use super::TransformComponent;
use crate::config::{duration, ConfigError, Validate};
use crate::event::FieldPath;

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
        Box::new(Throttle {
            name: name.to_owned(),
            threshold: self.threshold,
            window: self.window,
            key: self.key.as_deref().and_then(|k| FieldPath::parse(k).ok()).map(|p| cx.key(&p)),
            max_keys: self.max_keys,
            state: Mutex::new(State {
                window_start: Instant::now(),
                counts: HashMap::new(),
                labels: HashMap::new(),
            }),
        })
    }
}

struct Throttle {
    name: String,
    threshold: u64,
    window: Duration,
    key: Option<KeyId>,
    max_keys: usize,
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
}

impl Step for Throttle {
    fn run(&self, input: Vec<Item>, run: &mut Run<'_>, out: &mut [Vec<Item>]) {
        let [kept] = out else { return };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(state.window_start) >= self.window {
            state.window_start = now;
            state.counts.clear();
        }
        let State { counts, labels, .. } = &mut *state;
        let mut key = String::new();
        // Throttled per key in this batch, counted once at the end.
        let mut throttled: HashMap<String, u64> = HashMap::new();
        for item in input {
            key.clear();
            let has_key = match self.key {
                Some(k) => run.key(k, &item, &mut key),
                None => true,
            };
            if !has_key || (!counts.contains_key(&key) && counts.len() >= self.max_keys) {
                key.clear();
                key.push_str(OVERFLOW_KEY);
            }
            let count = match counts.get_mut(&key) {
                Some(c) => c,
                None => counts.entry(key.clone()).or_insert(0),
            };
            if *count < self.threshold {
                *count += 1;
                kept.push(item);
            } else {
                *throttled.entry(key.clone()).or_insert(0) += 1;
            }
        }
        for (key, n) in throttled {
            let label = if labels.contains_key(&key) || labels.len() < self.max_keys {
                key
            } else {
                OVERFLOW_KEY.to_owned()
            };
            labels
                .entry(label)
                .or_insert_with_key(|k| TransformMetrics::get().throttled.with_label_values(&[&self.name, k]))
                .inc_by(n);
        }
    }

    fn drop_reason(&self) -> &'static str {
        "throttled"
    }
}
