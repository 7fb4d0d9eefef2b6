//! Compiled rules: a preset set or a custom start/condition pattern pair
//! with a mode. One interface for the stage: [`Rules::begin`] for a line
//! that no group holds, [`Rules::next`] for a line after an open group.

use regex::bytes::Regex;

use super::config::Mode;
pub(crate) use super::presets::Verdict;
use super::presets::{self, PresetState, Presets};

/// A group's state under its rules.
pub(crate) type GroupState = PresetState;

/// What to do with a line that no group holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Begin {
    /// It opens a group: later lines may join it.
    Open(GroupState),
    /// It is an event on its own (a custom rule's line before any start).
    Alone,
}

/// Custom rules: Vector's four modes, and `continue_until_start`.
#[derive(Debug, Clone)]
pub(crate) struct Custom {
    /// A line that may open a group; `None`: any line may.
    pub(crate) start: Option<Regex>,
    /// The mode's pattern (`condition`); unused by `continue_until_start`.
    pub(crate) condition: Option<Regex>,
    /// How `condition` (or `start`) decides.
    pub(crate) mode: Mode,
}

/// How lines are grouped.
#[derive(Debug, Clone)]
pub(crate) enum Rules {
    /// Built-in presets.
    Presets(Presets),
    /// A user's patterns.
    Custom(Custom),
}

impl Rules {
    /// Judges a line that no group holds.
    #[inline]
    pub(crate) fn begin(&self, line: &[u8]) -> Begin {
        match self {
            Rules::Presets(p) => Begin::Open(presets::begin(*p, line)),
            Rules::Custom(c) => {
                if c.start.as_ref().is_none_or(|s| s.is_match(line)) {
                    Begin::Open(GroupState::default())
                } else {
                    Begin::Alone
                }
            }
        }
    }

    /// Judges a line after an open group in `state`.
    #[inline]
    pub(crate) fn next(&self, state: GroupState, line: &[u8]) -> (Verdict, GroupState) {
        match self {
            Rules::Presets(p) => presets::next(*p, state, line),
            Rules::Custom(c) => {
                // (the pattern the mode judges by, the verdict on a match,
                // the verdict otherwise)
                let (pattern, matched, unmatched) = match c.mode {
                    Mode::ContinueUntilStart => (&c.start, Verdict::Break, Verdict::Join),
                    Mode::ContinueThrough => (&c.condition, Verdict::Join, Verdict::Break),
                    Mode::ContinuePast => (&c.condition, Verdict::Join, Verdict::JoinLast),
                    Mode::HaltBefore => (&c.condition, Verdict::Break, Verdict::Join),
                    Mode::HaltWith => (&c.condition, Verdict::JoinLast, Verdict::Join),
                };
                let v = if pattern.as_ref().is_some_and(|r| r.is_match(line)) {
                    matched
                } else {
                    unmatched
                };
                (v, state)
            }
        }
    }
}
