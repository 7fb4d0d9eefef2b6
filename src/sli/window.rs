//! Sliding windows in fixed memory, for error-budget burn rates.
//!
//! A series keeps cumulative counts (requests, bad requests) anyway, for
//! `sluice_sli_requests_total`. A window of length `W` only needs those
//! counts as they were `W` ago, so each window is a ring of [`SLOTS`]
//! snapshots taken at slot boundaries (`W / SLOTS` apart). The count over
//! the window is "now minus the oldest snapshot": no per-event work beyond
//! the cumulative counters, and memory per series and window is fixed
//! (`SLOTS` × 16 bytes) whatever the request rate or window length.
//!
//! The window covers the current, partial slot plus the `SLOTS - 1` before
//! it, so its length is between `W - W/SLOTS` and `W`: for 5m, 295–300 s.
//! Events count the moment they are observed, which is what makes a bad
//! canary visible within seconds.

use std::time::Duration;

/// Snapshots per window. Sixty gives 5-second steps for a 5-minute window
/// and 1-minute steps for an hour, at 960 bytes per series and window.
pub(crate) const SLOTS: usize = 60;

/// Requests and bad requests (errors, and slow ones for latency SLIs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Every counted request.
    pub(crate) total: u64,
    /// Requests that spent error budget.
    pub(crate) bad: u64,
}

impl Counts {
    fn minus(self, earlier: Counts) -> Counts {
        Counts {
            total: self.total.saturating_sub(earlier.total),
            bad: self.bad.saturating_sub(earlier.bad),
        }
    }
}

/// One configured window: its label and the width of its slots.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WindowSpec {
    /// The `window` label value (`5m`, `1h`).
    pub(crate) label: String,
    /// Milliseconds between snapshots; at least 1.
    pub(crate) slot_ms: u64,
}

impl WindowSpec {
    /// The spec of a window of length `len`.
    pub(crate) fn new(len: Duration) -> WindowSpec {
        WindowSpec {
            label: window_label(len),
            slot_ms: (len.as_millis() as u64 / SLOTS as u64).max(1),
        }
    }

    /// The slot `now_ms` (milliseconds on the tap's clock) falls in.
    pub(crate) fn slot(&self, now_ms: u64) -> u64 {
        now_ms / self.slot_ms
    }
}

/// A window's ring of snapshots for one series.
///
/// Invariant: after `advance(slot, _)`, `snaps[s % SLOTS]` holds the
/// cumulative counts at the start of slot `s`, for every `s` in
/// `slot + 1 - SLOTS ..= slot` (zero for slots before the series existed).
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    last: u64,
    snaps: [Counts; SLOTS],
}

impl Ring {
    /// A ring for a series created in `slot`, with no counts yet.
    pub(crate) fn new(slot: u64) -> Ring {
        Ring {
            last: slot,
            snaps: [Counts::default(); SLOTS],
        }
    }

    /// Moves to `slot`, recording `cumulative` as the snapshot of every
    /// slot boundary crossed. Must be called before counts observed in
    /// `slot` are added, so the snapshot holds only earlier events.
    pub(crate) fn advance(&mut self, slot: u64, cumulative: Counts) {
        if slot <= self.last {
            return;
        }
        let steps = (slot - self.last).min(SLOTS as u64);
        for k in 0..steps {
            self.snaps[((slot - k) % SLOTS as u64) as usize] = cumulative;
        }
        self.last = slot;
    }

    /// Counts inside the window ending now; `advance` to the current slot
    /// first.
    pub(crate) fn in_window(&self, cumulative: Counts) -> Counts {
        let oldest = self.snaps[((self.last + 1) % SLOTS as u64) as usize];
        cumulative.minus(oldest)
    }
}

/// `300s` → `5m`, `3600s` → `1h`, `86400s` → `1d`, else seconds or
/// milliseconds: the form Prometheus range selectors use.
pub(crate) fn window_label(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    for (unit, secs) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= secs && s % secs == 0 {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(total: u64, bad: u64) -> Counts {
        Counts { total, bad }
    }

    /// Replays per-second traffic through a ring and compares with the
    /// brute-force sum over the window, at every second.
    #[test]
    fn ring_matches_brute_force_sum() {
        let spec = WindowSpec::new(Duration::from_secs(60)); // 1 s slots
        let mut ring = Ring::new(0);
        let mut cum = c(0, 0);
        let mut per_second = Vec::new();
        let mut rng = 12345u64;
        for sec in 0..500u64 {
            // Idle stretches (including longer than the window) must work too.
            let idle = (100..170).contains(&sec) || (300..305).contains(&sec);
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let (t, b) = if idle { (0, 0) } else { (rng % 50, rng % 7) };
            ring.advance(spec.slot(sec * 1000 + 500), cum);
            cum = c(cum.total + t, cum.bad + b);
            per_second.push(c(t, b));
            let lo = (sec + 1).saturating_sub(SLOTS as u64) as usize;
            let want = per_second[lo..].iter().fold(c(0, 0), |a, x| c(a.total + x.total, a.bad + x.bad));
            assert_eq!(ring.in_window(cum), want, "second {sec}");
        }
    }

    #[test]
    fn long_gap_clears_the_window() {
        let spec = WindowSpec::new(Duration::from_secs(300));
        let mut ring = Ring::new(spec.slot(0));
        let cum = c(100, 10);
        assert_eq!(ring.in_window(cum), cum);
        ring.advance(spec.slot(10 * 60_000), cum);
        assert_eq!(ring.in_window(cum), c(0, 0));
    }

    #[test]
    fn labels_use_the_largest_whole_unit() {
        let l = |s: u64| window_label(Duration::from_secs(s));
        assert_eq!(l(300), "5m");
        assert_eq!(l(3600), "1h");
        assert_eq!(l(86_400 * 30), "30d");
        assert_eq!(l(90), "90s");
        assert_eq!(l(5400), "90m");
        assert_eq!(window_label(Duration::from_millis(1500)), "1500ms");
    }
}
