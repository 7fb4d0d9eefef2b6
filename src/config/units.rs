//! Sizes and durations as operators write them: `64MiB`, `"30s"`, or plain
//! numbers (bytes, seconds).

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A byte size: an integer, or a string such as `512KiB`, `64MiB`, `1GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `64MiB`, `10 MB`, `4096`.
    pub(crate) fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
        let (num, unit) = (s[..split].trim(), s[split..].trim());
        let n: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" | "ki" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" | "mi" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" | "gi" => 1 << 30,
            "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => return Err(format!("invalid size unit in {s:?}: use B, KiB, MiB, GiB, KB, MB or GB")),
        };
        Ok(ByteSize((n * mult as f64) as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A config value written as a number or as text (durations, policies).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum NumberOrText {
    /// A bare number.
    Number(f64),
    /// A string.
    Text(String),
}

impl NumberOrText {
    /// The value as a duration: a number of seconds, or `"1500ms"`, `"30s"`,
    /// `"5m"`.
    pub(crate) fn to_duration(&self) -> Result<Duration, String> {
        match self {
            NumberOrText::Number(n) if *n >= 0.0 && n.is_finite() => Ok(Duration::from_secs_f64(*n)),
            NumberOrText::Number(n) => Err(format!("invalid duration {n}")),
            NumberOrText::Text(s) => humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}")),
        }
    }
}

impl std::fmt::Display for NumberOrText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NumberOrText::Number(n) => write!(f, "{n}"),
            NumberOrText::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// Deserialises a duration from `"1500ms"`, `"30s"`, `"5m"` or a number of
/// seconds.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    NumberOrText::deserialize(d)?.to_duration().map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("64MiB").unwrap().0, 64 << 20);
        assert_eq!(ByteSize::parse("10 MB").unwrap().0, 10_000_000);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        assert!(ByteSize::parse("3 parsecs").is_err());
    }
}
