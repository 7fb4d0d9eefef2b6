//! Reading Loki's 400 answers: how many entries of a push it refused, and
//! why. Loki stores the rest of the push, so the sink counts the refused
//! entries and moves on instead of failing (or retrying) the whole batch
//! (Vector's #20706 lost every in-order entry of a push that held one
//! out-of-order entry).
//!
//! Loki phrases a partial rejection in two places:
//!
//! - the ingester, per stream (`pkg/ingester/stream.go`):
//!   `entry with timestamp <t> ignored, reason: '<why>',\n` for each refused
//!   entry (up to `max_returned_stream_errors` of them), then
//!   `user '<tenant>', total ignored: <n> out of <m> for stream: {…}`.
//!   Loki before 2.4 wrote `… reason: '<why>' for stream: {…},\n` per entry
//!   and `total ignored: <n> out of <m>` at the end. Either way
//!   `total ignored: <n>` is the exact count, one per stream;
//! - the distributor's validation (`pkg/distributor/distributor.go`), one
//!   message per refused entry, grouped by text and joined with `; `:
//!   `<k> errors like: entry for stream '{…}' has timestamp too old: …`.
//!
//! A 400 that matches neither shape refused the whole push, and so does
//! one that names a reason without a count (a bare `entry out of order`):
//! when the answer does not say how many entries were refused, none of the
//! push is counted as stored.

/// Why entries were refused, as the `reason` label of
/// `sluice_loki_entries_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    /// Older than the newest entry of its stream (`entry out of order`,
    /// `entry too far behind`).
    OutOfOrder,
    /// Older than the tenant's `reject_old_samples_max_age`.
    TooOld,
    /// Anything else (too new, line too long, invalid labels, …).
    Other,
}

impl Reason {
    /// The metric label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::OutOfOrder => "out_of_order",
            Reason::TooOld => "too_old",
            Reason::Other => "other",
        }
    }

    fn of(message: &str) -> Reason {
        if message.contains("out of order") || message.contains("too far behind") {
            Reason::OutOfOrder
        } else if message.contains("too old") {
            Reason::TooOld
        } else {
            Reason::Other
        }
    }
}

/// What a 400 answer says was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// Refused entries by reason; the sum never exceeds the push's size.
    pub(crate) counts: Vec<(Reason, u64)>,
    /// False when the answer was not one of Loki's partial-rejection
    /// messages: the whole push was refused.
    pub(crate) partial: bool,
}

impl Rejection {
    /// Entries refused in total.
    pub(crate) fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }
}

/// Reads a 400 body for a push of `entries` entries.
pub(crate) fn parse(body: &str, entries: u64) -> Rejection {
    let mut counts: Vec<(Reason, u64)> = Vec::new();
    let mut add = |reason: Reason, n: u64| match counts.iter_mut().find(|(r, _)| *r == reason) {
        Some((_, c)) => *c += n,
        None => counts.push((reason, n)),
    };

    // Ingester: one "total ignored: N out of M" per stream. The reason of a
    // stream is that of the entry lines before its total.
    const TOTAL: &str = "total ignored: ";
    let mut found_totals = false;
    let mut block_start = 0;
    let mut search = 0;
    while let Some(pos) = body[search..].find(TOTAL) {
        let at = search + pos;
        let digits_start = at + TOTAL.len();
        let digits_len = body[digits_start..].bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(n) = body[digits_start..digits_start + digits_len].parse::<u64>() {
            add(Reason::of(&body[block_start..at]), n);
            found_totals = true;
        }
        search = digits_start + digits_len;
        block_start = search;
    }

    if !found_totals {
        // Distributor validation: "; "-joined groups, each "K errors like: msg"
        // or a single message.
        for group in body.split("; ") {
            let group = group.trim();
            if group.is_empty() {
                continue;
            }
            let (n, message) = match group.split_once(" errors like: ") {
                Some((k, msg)) if k.bytes().all(|b| b.is_ascii_digit()) => (k.parse().unwrap_or(1), msg),
                _ => (1, group),
            };
            if is_entry_validation(message) {
                add(Reason::of(message), n);
            } else {
                // A message about the whole push (or one we do not know).
                return Rejection {
                    counts: vec![(Reason::of(body), entries)],
                    partial: false,
                };
            }
        }
    }

    if counts.is_empty() {
        return Rejection {
            counts: vec![(Reason::of(body), entries)],
            partial: false,
        };
    }
    // Never count more than was sent (a stream's message may repeat across
    // replicas or be cut by Loki's error limit).
    let mut budget = entries;
    for (_, n) in counts.iter_mut() {
        *n = (*n).min(budget);
        budget -= *n;
    }
    let partial = budget > 0;
    Rejection { counts, partial }
}

/// Loki's per-entry validation messages (the distributor drops only that
/// entry and stores the rest of the push). Each names the entry's stream
/// (`stream '{…}'`); a bare reason such as `entry out of order` says why
/// but not how many, so it is not one of them: that push was refused
/// whole (the ingester's ordering messages always end in a total).
fn is_entry_validation(message: &str) -> bool {
    const PER_ENTRY: &[&str] = &[
        "has timestamp too old",
        "has timestamp too new",
        "max entry size",
        "line too long",
        "structured metadata",
    ];
    message.contains("stream '") && PER_ENTRY.iter().any(|p| message.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingester_partial_rejection_is_counted_per_stream() {
        let body = "entry with timestamp 2024-01-02 03:04:05.1 +0000 UTC ignored, reason: 'entry out of order',\n\
                    entry with timestamp 2024-01-02 03:04:05.2 +0000 UTC ignored, reason: 'entry out of order',\n\
                    user 'fake', total ignored: 2 out of 4 for stream: {app=\"a\"}\n\
                    entry with timestamp 2024-01-02 03:04:05 +0000 UTC ignored, reason: 'entry too far behind, entry timestamp is: 2024-01-02T03:04:05Z, oldest acceptable timestamp is: 2024-01-02T04:00:00Z',\n\
                    user 'fake', total ignored: 1 out of 3 for stream: {app=\"b\"}";
        let r = parse(body, 7);
        assert_eq!(r.counts, vec![(Reason::OutOfOrder, 3)]);
        assert!(r.partial);
    }

    #[test]
    fn pre_2_4_messages_are_understood() {
        let body = "entry with timestamp 2021-02-12 03:34:34.795556435 +0000 UTC ignored, reason: 'entry out of order' for stream: {forwarder=\"vector\"},\n\
                    total ignored: 2 out of 4";
        let r = parse(body, 4);
        assert_eq!(r.total(), 2);
        assert!(r.partial);
    }

    #[test]
    fn distributor_validation_groups_are_counted() {
        let body = "3 errors like: entry for stream '{app=\"a\"}' has timestamp too old: 2020-01-01T00:00:00Z, oldest acceptable timestamp is: 2024-01-01T00:00:00Z; \
                    entry for stream '{app=\"a\"}' has timestamp too new: 2030-01-01T00:00:00Z";
        let r = parse(body, 10);
        assert_eq!(r.counts, vec![(Reason::TooOld, 3), (Reason::Other, 1)]);
        assert!(r.partial);
    }

    #[test]
    fn single_too_old_message_counts_one_entry() {
        let body = "entry for stream '{app=\"a\"}' has timestamp too old: 2020-01-01T00:00:00Z, oldest acceptable timestamp is: 2020-01-01T00:00:01Z";
        let r = parse(body, 5);
        assert_eq!(r.counts, vec![(Reason::TooOld, 1)]);
    }

    #[test]
    fn unknown_400_refuses_the_whole_push() {
        let r = parse("error at least one label pair is required per stream", 5);
        assert_eq!(r.total(), 5);
        assert!(!r.partial);
        let r = parse("", 5);
        assert_eq!(r.total(), 5);
    }

    #[test]
    fn a_reason_without_a_count_refuses_the_whole_push() {
        for body in [
            "entry out of order",
            "entry too far behind",
            "entry with timestamp 2024-01-02 03:04:05 +0000 UTC ignored, reason: 'entry out of order' for stream: {a=\"b\"}",
            "has timestamp too old",
        ] {
            let r = parse(body, 2000);
            assert_eq!(r.total(), 2000, "{body}");
            assert!(!r.partial, "{body}");
        }
    }

    #[test]
    fn line_too_long_is_counted_per_entry() {
        let body =
            "2 errors like: max entry size '256' bytes exceeded for stream '{app=\"a\"}' while adding an entry with length '300' bytes";
        let r = parse(body, 10);
        assert_eq!(r.counts, vec![(Reason::Other, 2)]);
        assert!(r.partial);
    }

    #[test]
    fn counts_never_exceed_the_push() {
        let r = parse("user 'x', total ignored: 9 out of 9 for stream: {a=\"b\"}", 4);
        assert_eq!(r.total(), 4);
        assert!(!r.partial);
    }
}
