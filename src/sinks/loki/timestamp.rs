//! An event's time from one of its fields: RFC 3339 text or a Unix time
//! in seconds, milliseconds, microseconds or nanoseconds.

use super::config::TimestampFormat;
use crate::event::FieldValueRef;

/// Nanoseconds since the epoch, or `None` when the value is not a time in
/// the given format (the caller then uses the receive time).
pub(crate) fn event_nanos(value: FieldValueRef<'_>, format: TimestampFormat) -> Option<i64> {
    match value {
        FieldValueRef::Str(s) => from_text(s.trim(), format),
        FieldValueRef::Number(n) => from_number(n, format),
        _ => None,
    }
}

fn from_text(s: &str, format: TimestampFormat) -> Option<i64> {
    let digits = !s.is_empty() && s.bytes().enumerate().all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'));
    match format {
        TimestampFormat::Rfc3339 => rfc3339(s),
        TimestampFormat::Auto if digits => s.parse::<i64>().ok().and_then(|n| scale(n as i128, guess_unit(n as f64))),
        TimestampFormat::Auto => rfc3339(s).or_else(|| s.parse::<f64>().ok().and_then(|n| from_number(n, format))),
        _ if digits => s.parse::<i64>().ok().and_then(|n| scale(n as i128, unit_of(format)?)),
        _ => s.parse::<f64>().ok().and_then(|n| from_number(n, format)),
    }
}

fn from_number(n: f64, format: TimestampFormat) -> Option<i64> {
    if !n.is_finite() {
        return None;
    }
    let unit = match format {
        TimestampFormat::Auto => guess_unit(n),
        TimestampFormat::Rfc3339 => return None,
        f => unit_of(f)?,
    };
    // Whole units and the fraction apart: 1714564800.25 s times 1e9 in
    // one f64 product would lose the last digits.
    let whole = n.trunc();
    if whole.abs() >= i64::MAX as f64 {
        return None;
    }
    let frac = ((n - whole) * unit as f64).round() as i64;
    (whole as i64).checked_mul(unit)?.checked_add(frac)
}

/// Nanoseconds per unit of a Unix format.
fn unit_of(format: TimestampFormat) -> Option<i64> {
    match format {
        TimestampFormat::UnixS => Some(1_000_000_000),
        TimestampFormat::UnixMs => Some(1_000_000),
        TimestampFormat::UnixUs => Some(1_000),
        TimestampFormat::UnixNs => Some(1),
        TimestampFormat::Auto | TimestampFormat::Rfc3339 => None,
    }
}

/// The unit of a Unix time, from its size: any time between 1973 and 5138
/// is unambiguous in seconds (< 1e11), milliseconds (< 1e14), microseconds
/// (< 1e17) and nanoseconds.
fn guess_unit(n: f64) -> i64 {
    let a = n.abs();
    if a < 1e11 {
        1_000_000_000
    } else if a < 1e14 {
        1_000_000
    } else if a < 1e17 {
        1_000
    } else {
        1
    }
}

fn scale(n: i128, unit: i64) -> Option<i64> {
    i64::try_from(n.checked_mul(unit as i128)?).ok()
}

fn rfc3339(s: &str) -> Option<i64> {
    let ts: jiff::Timestamp = s.parse().ok()?;
    i64::try_from(ts.as_nanosecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use FieldValueRef::{Number, Str};
    use TimestampFormat::*;

    const T: i64 = 1_714_564_800_000_000_000; // 2024-05-01T12:00:00Z

    #[test]
    fn rfc3339_with_offsets_and_fractions() {
        assert_eq!(event_nanos(Str("2024-05-01T12:00:00Z"), Auto), Some(T));
        assert_eq!(event_nanos(Str("2024-05-01T14:00:00.5+02:00"), Auto), Some(T + 500_000_000));
        assert_eq!(event_nanos(Str("2024-05-01T12:00:00.123456789Z"), Rfc3339), Some(T + 123_456_789));
        assert_eq!(event_nanos(Str("yesterday"), Auto), None);
    }

    #[test]
    fn unix_units_are_guessed_from_size() {
        assert_eq!(event_nanos(Number(1_714_564_800.0), Auto), Some(T));
        assert_eq!(event_nanos(Number(1_714_564_800_000.0), Auto), Some(T));
        assert_eq!(event_nanos(Str("1714564800000000"), Auto), Some(T));
        assert_eq!(event_nanos(Str("1714564800000000001"), Auto), Some(T + 1));
        assert_eq!(event_nanos(Number(1_714_564_800.25), Auto), Some(T + 250_000_000));
    }

    #[test]
    fn explicit_units_win() {
        assert_eq!(event_nanos(Number(1_714_564_800_000.0), UnixMs), Some(T));
        assert_eq!(event_nanos(Str("1714564800"), UnixS), Some(T));
        assert_eq!(event_nanos(Number(1.0), UnixNs), Some(1));
        assert_eq!(event_nanos(Number(1.0), Rfc3339), None);
        assert_eq!(event_nanos(Str("99999999999999999999999"), UnixS), None);
    }
}
