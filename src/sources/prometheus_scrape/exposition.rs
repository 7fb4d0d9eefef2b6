//! The Prometheus exposition formats: text 0.0.4 and OpenMetrics 1.0,
//! parsed into whole metrics (a histogram's `_bucket`, `_sum` and `_count`
//! lines become one histogram sample).
//!
//! The parser works on bytes and never panics: a line it cannot read is
//! skipped and counted by [`Invalid`] reason, the rest of the body is still
//! read. Label values longer than [`Limits::max_label_value_bytes`] and
//! samples with more than [`Limits::max_labels`] labels are refused, so one
//! exposition cannot make a series key of unbounded size.
//!
//! Differences between the formats that matter here:
//! - timestamps are integer milliseconds in text 0.0.4 and (fractional)
//!   seconds in OpenMetrics;
//! - an OpenMetrics counter family `x` has its sample named `x_total`;
//!   `_created` samples are skipped (the sample schema has no place for
//!   them), exemplars (`# {…} v`) are ignored;
//! - `# EOF` ends an OpenMetrics body.

use hashbrown::HashMap;
use std::borrow::Cow;
use std::ops::Range;

/// Which format a body is in, from the response's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `text/plain; version=0.0.4` (and anything not OpenMetrics).
    Text,
    /// `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// The format a `Content-Type` header names.
    pub(crate) fn from_content_type(ct: Option<&str>) -> Format {
        match ct {
            Some(ct) if ct.trim_start().to_ascii_lowercase().starts_with("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }
}

/// Bounds on what one sample line may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Longest label value, in bytes after unescaping.
    pub(crate) max_label_value_bytes: usize,
    /// Most labels on one sample.
    pub(crate) max_labels: usize,
}

/// Why a line was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not a comment, not a sample line.
    Format = 0,
    /// The metric name is missing or has characters a name cannot have.
    Name = 1,
    /// A label is malformed (name, quoting, escape), too long, or one too many.
    Label = 2,
    /// The value is not a number.
    Value = 3,
    /// The timestamp is not a number.
    Timestamp = 4,
    /// A `# TYPE` line names no known type.
    Type = 5,
}

impl Invalid {
    /// Every reason, in index order.
    pub(crate) const ALL: [Invalid; 6] = [
        Invalid::Format,
        Invalid::Name,
        Invalid::Label,
        Invalid::Value,
        Invalid::Timestamp,
        Invalid::Type,
    ];

    /// The `reason` label of `sluice_metric_lines_invalid_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Invalid::Format => "format",
            Invalid::Name => "name",
            Invalid::Label => "label",
            Invalid::Value => "value",
            Invalid::Timestamp => "timestamp",
            Invalid::Type => "type",
        }
    }
}

/// A family's declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FamilyType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    /// `untyped`, `unknown`, `info`, `stateset`: kept as gauges.
    Other,
}

fn family_type(word: &[u8]) -> Option<FamilyType> {
    Some(match word {
        b"counter" => FamilyType::Counter,
        b"gauge" => FamilyType::Gauge,
        b"histogram" => FamilyType::Histogram,
        b"gaugehistogram" => FamilyType::GaugeHistogram,
        b"summary" => FamilyType::Summary,
        b"untyped" | b"unknown" | b"info" | b"stateset" => FamilyType::Other,
        _ => return None,
    })
}

/// What a whole metric holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// A counter's total.
    Counter(f64),
    /// A gauge's (or untyped metric's) value.
    Gauge(f64),
    /// Buckets: finite bounds ascending with cumulative counts.
    Histogram {
        /// `(le, cumulative count)`, finite `le` only, ascending.
        buckets: Vec<(f64, f64)>,
        /// Observations (`_count`, else the `+Inf` bucket).
        count: f64,
        /// Sum of observations (0 when the exposition has none).
        sum: f64,
    },
    /// Quantiles with count and sum.
    Summary {
        /// `(quantile, value)`.
        quantiles: Vec<(f64, f64)>,
        /// Observations.
        count: f64,
        /// Sum of observations.
        sum: f64,
    },
}

/// One metric of an exposition: a counter or gauge line, or a histogram or
/// summary assembled from its lines.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Metric<'a> {
    /// The name (for histograms and summaries, the family name).
    pub(crate) name: &'a str,
    /// Where its labels are in [`Exposition::labels`] (see
    /// [`Exposition::labels_of`]): one store for the whole body, not a
    /// vector per metric.
    pub(crate) labels: Range<usize>,
    /// The exposition's timestamp, in milliseconds since the epoch.
    pub(crate) timestamp_ms: Option<i64>,
    /// The value.
    pub(crate) value: Value,
}

/// A parsed body.
#[derive(Debug, Default)]
pub(crate) struct Exposition<'a> {
    /// Whole metrics, in the order their first line came.
    pub(crate) metrics: Vec<Metric<'a>>,
    /// Every metric's labels, in exposition order (`le` and `quantile`
    /// taken out), borrowed from the body unless they held escapes.
    pub(crate) labels: Vec<(&'a str, Cow<'a, str>)>,
    /// Sample lines read (what Prometheus reports as
    /// `scrape_samples_scraped`); skipped lines are not counted.
    pub(crate) samples: usize,
    /// Lines skipped, by [`Invalid`] index.
    pub(crate) invalid: [u64; 6],
}

impl<'a> Exposition<'a> {
    /// The labels of `m`, one of [`Exposition::metrics`].
    pub(crate) fn labels_of(&self, m: &Metric<'a>) -> &[(&'a str, Cow<'a, str>)] {
        self.labels.get(m.labels.clone()).unwrap_or_default()
    }

    #[cfg(test)]
    /// Lines skipped in all.
    pub(crate) fn invalid_lines(&self) -> u64 {
        self.invalid.iter().sum()
    }
}

/// One sample line, borrowed from the body where it holds no escapes; its
/// labels go to [`Exposition::labels`].
struct Line<'a> {
    name: &'a str,
    value: f64,
    timestamp_ms: Option<i64>,
}

/// Parses a whole body.
pub(crate) fn parse(body: &[u8], format: Format, limits: Limits) -> Exposition<'_> {
    // Sample lines are some 50-80 bytes: room for most bodies at once.
    let lines = body.len() / 48 + 1;
    let mut out = Exposition {
        metrics: Vec::with_capacity(lines),
        labels: Vec::with_capacity(lines * 3),
        ..Exposition::default()
    };
    let mut types: HashMap<&[u8], FamilyType> = HashMap::new();
    // Histograms and summaries being assembled: family + labels → index
    // into `out.metrics`.
    let mut groups: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut pending_inf: HashMap<usize, f64> = HashMap::new();
    let mut has_count: Vec<bool> = Vec::new();
    let mut key = Vec::new();
    // Lines of one family come together: the last name's family and the
    // last group's key are looked up once per run of lines, not per line.
    let mut last_family: Option<(&str, (&str, &str, FamilyType))> = None;
    let mut last_group: Option<usize> = None;
    let mut last_key = Vec::new();
    for raw in body.split(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = trim_start(line);
        if line.is_empty() {
            continue;
        }
        if line[0] == b'#' {
            match comment(line) {
                Comment::Type(name, word) => match family_type(word) {
                    Some(t) => {
                        types.insert(name, t);
                        last_family = None;
                    }
                    None => out.invalid[Invalid::Type as usize] += 1,
                },
                Comment::Eof if format == Format::OpenMetrics => break,
                Comment::Eof | Comment::Other => {}
            }
            continue;
        }
        let start = out.labels.len();
        let l = match sample_line(line, format, limits, &mut out.labels) {
            Ok(l) => l,
            Err(e) => {
                out.labels.truncate(start);
                out.invalid[e as usize] += 1;
                continue;
            }
        };
        out.samples += 1;
        let (family, suffix, ty) = match last_family {
            Some((name, found)) if name == l.name => found,
            _ => {
                let found = family_of(&types, l.name);
                last_family = Some((l.name, found));
                found
            }
        };
        match ty {
            FamilyType::Counter | FamilyType::Gauge | FamilyType::Other => {
                if suffix == "_created" {
                    out.labels.truncate(start);
                    continue;
                }
                let value = if ty == FamilyType::Counter {
                    Value::Counter(l.value)
                } else {
                    Value::Gauge(l.value)
                };
                out.metrics.push(Metric {
                    name: l.name,
                    labels: start..out.labels.len(),
                    timestamp_ms: l.timestamp_ms,
                    value,
                });
                has_count.push(false);
            }
            FamilyType::Histogram | FamilyType::GaugeHistogram | FamilyType::Summary => {
                let special = if ty == FamilyType::Summary { "quantile" } else { "le" };
                key.clear();
                key.extend_from_slice(family.as_bytes());
                for (k, v) in out.labels[start..].iter().filter(|(k, _)| *k != special) {
                    key.push(0xFF);
                    key.extend_from_slice(k.as_bytes());
                    key.push(0xFE);
                    key.extend_from_slice(v.as_bytes());
                }
                let known = match last_group {
                    Some(i) if last_key == key => Some(i),
                    _ => groups.get(key.as_slice()).copied(),
                };
                let idx = match known {
                    Some(i) => i,
                    None => {
                        let value = if ty == FamilyType::Summary {
                            Value::Summary {
                                quantiles: Vec::new(),
                                count: 0.0,
                                sum: 0.0,
                            }
                        } else {
                            Value::Histogram {
                                buckets: Vec::new(),
                                count: 0.0,
                                sum: 0.0,
                            }
                        };
                        // The line's labels, the special one taken out,
                        // stay in the store as the group's.
                        let mut kept = start;
                        for i in start..out.labels.len() {
                            if out.labels[i].0 != special {
                                out.labels.swap(kept, i);
                                kept += 1;
                            }
                        }
                        out.metrics.push(Metric {
                            name: family,
                            labels: start..kept,
                            timestamp_ms: l.timestamp_ms,
                            value,
                        });
                        has_count.push(false);
                        groups.insert(key.clone(), out.metrics.len() - 1);
                        out.metrics.len() - 1
                    }
                };
                // A known group keeps its labels: this line's are not
                // needed past its special value.
                let special_value = out.labels[start..].iter().find(|(k, _)| *k == special).map(|(_, v)| parse_float(v));
                let group_end = out.metrics[idx].labels.end;
                out.labels.truncate(group_end.max(start));
                if last_group != Some(idx) {
                    last_group = Some(idx);
                    last_key.clone_from(&key);
                }
                let m = &mut out.metrics[idx];
                match (&mut m.value, suffix) {
                    (Value::Histogram { count, .. }, "_count" | "_gcount") | (Value::Summary { count, .. }, "_count") => {
                        *count = l.value;
                        has_count[idx] = true;
                    }
                    (Value::Histogram { sum, .. }, "_sum" | "_gsum") | (Value::Summary { sum, .. }, "_sum") => *sum = l.value,
                    (Value::Histogram { buckets, .. }, "_bucket") => match special_value {
                        Some(Some(le)) if le.is_finite() => buckets.push((le, l.value)),
                        Some(Some(le)) if le == f64::INFINITY => {
                            pending_inf.insert(idx, l.value);
                        }
                        _ => {
                            out.samples -= 1;
                            out.invalid[Invalid::Label as usize] += 1;
                        }
                    },
                    (Value::Summary { quantiles, .. }, "") => match special_value {
                        Some(Some(q)) => quantiles.push((q, l.value)),
                        _ => {
                            out.samples -= 1;
                            out.invalid[Invalid::Label as usize] += 1;
                        }
                    },
                    // `_created` and stray suffixes: nothing to keep.
                    _ => {}
                }
            }
        }
    }
    for (idx, inf) in pending_inf {
        if let (Some(m), Some(false)) = (out.metrics.get_mut(idx), has_count.get(idx)) {
            if let Value::Histogram { count, .. } = &mut m.value {
                *count = inf;
            }
        }
    }
    for m in &mut out.metrics {
        match &mut m.value {
            Value::Histogram { buckets, .. } => buckets.sort_by(|a, b| a.0.total_cmp(&b.0)),
            Value::Summary { quantiles, .. } => quantiles.sort_by(|a, b| a.0.total_cmp(&b.0)),
            _ => {}
        }
    }
    out
}

/// The family a sample name belongs to, the suffix that led there, and
/// the family's type (`untyped` when no `# TYPE` says otherwise).
fn family_of<'a>(types: &HashMap<&[u8], FamilyType>, name: &'a str) -> (&'a str, &'a str, FamilyType) {
    const SUFFIXES: [&str; 7] = ["_bucket", "_count", "_sum", "_total", "_created", "_gcount", "_gsum"];
    for s in SUFFIXES {
        if let Some(family) = name.strip_suffix(s) {
            if let Some(&t) = types.get(family.as_bytes()) {
                let fits = match t {
                    FamilyType::Histogram => matches!(s, "_bucket" | "_count" | "_sum" | "_created"),
                    FamilyType::GaugeHistogram => matches!(s, "_bucket" | "_gcount" | "_gsum"),
                    FamilyType::Summary => matches!(s, "_count" | "_sum" | "_created"),
                    FamilyType::Counter => matches!(s, "_total" | "_created"),
                    FamilyType::Gauge | FamilyType::Other => false,
                };
                if fits {
                    return (family, s, t);
                }
            }
        }
    }
    match types.get(name.as_bytes()) {
        Some(&t) => (name, "", t),
        None => (name, "", FamilyType::Other),
    }
}

enum Comment<'a> {
    Type(&'a [u8], &'a [u8]),
    Eof,
    Other,
}

fn comment(line: &[u8]) -> Comment<'_> {
    let rest = trim_start(&line[1..]);
    if rest == b"EOF" {
        return Comment::Eof;
    }
    let Some(rest) = rest.strip_prefix(b"TYPE") else {
        return Comment::Other;
    };
    if !rest.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Comment::Other;
    }
    let rest = trim_start(rest);
    let end = rest.iter().position(|b| *b == b' ' || *b == b'\t').unwrap_or(rest.len());
    let (name, word) = rest.split_at(end);
    Comment::Type(name, trim(word))
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| **c == b' ' || **c == b'\t').count();
    &b[n..]
}

fn trim(b: &[u8]) -> &[u8] {
    let b = trim_start(b);
    let n = b.iter().rev().take_while(|c| **c == b' ' || **c == b'\t').count();
    &b[..b.len() - n]
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// `name{labels} value [timestamp] [# exemplar]`.
fn sample_line<'a>(line: &'a [u8], format: Format, limits: Limits, labels: &mut Vec<(&'a str, Cow<'a, str>)>) -> Result<Line<'a>, Invalid> {
    if !line.first().copied().is_some_and(is_name_start) {
        return Err(if line.first() == Some(&b'{') {
            Invalid::Name
        } else {
            Invalid::Format
        });
    }
    let name_end = line.iter().position(|b| !is_name_char(*b)).unwrap_or(line.len());
    // ASCII only, so this cannot fail; no panic either way.
    let name = std::str::from_utf8(&line[..name_end]).map_err(|_| Invalid::Name)?;
    let mut rest = trim_start(&line[name_end..]);
    if rest.first() == Some(&b'{') {
        rest = label_set(&rest[1..], limits, labels)?;
    }
    let rest = trim_start(rest);
    let mut words = rest.split(|b| *b == b' ' || *b == b'\t').filter(|w| !w.is_empty());
    let value = words.next().ok_or(Invalid::Value)?;
    let value = std::str::from_utf8(value).ok().and_then(parse_float).ok_or(Invalid::Value)?;
    let timestamp_ms = match words.next() {
        None => None,
        Some(b"#") if format == Format::OpenMetrics => None,
        Some(ts) => Some(timestamp(ts, format).ok_or(Invalid::Timestamp)?),
    };
    match words.next() {
        None => {}
        Some(b"#") if format == Format::OpenMetrics => {}
        Some(_) if format == Format::OpenMetrics && timestamp_ms.is_none() => {}
        Some(_) => return Err(Invalid::Format),
    }
    Ok(Line { name, value, timestamp_ms })
}

fn timestamp(word: &[u8], format: Format) -> Option<i64> {
    let s = std::str::from_utf8(word).ok()?;
    match format {
        Format::Text => s.parse::<i64>().ok(),
        Format::OpenMetrics => {
            let secs: f64 = s.parse().ok()?;
            let ms = (secs * 1000.0).round();
            (ms.is_finite() && ms.abs() < 9.0e15).then_some(ms as i64)
        }
    }
}

/// A float as Prometheus writes them: Go's `ParseFloat` spellings
/// (`+Inf`, `-Inf`, `NaN`) and plain decimals.
pub(crate) fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E')) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

/// Reads `k="v",…}` (after the `{`) into `labels`; returns what follows
/// the `}`.
fn label_set<'a>(mut rest: &'a [u8], limits: Limits, labels: &mut Vec<(&'a str, Cow<'a, str>)>) -> Result<&'a [u8], Invalid> {
    let first = labels.len();
    loop {
        rest = trim_start(rest);
        match rest.first() {
            Some(b'}') => return Ok(&rest[1..]),
            Some(b) if is_name_start(*b) && *b != b':' => {}
            _ => return Err(Invalid::Label),
        }
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
            .unwrap_or(rest.len());
        let name = std::str::from_utf8(&rest[..end]).map_err(|_| Invalid::Label)?;
        rest = trim_start(&rest[end..]);
        rest = rest.strip_prefix(b"=").ok_or(Invalid::Label)?;
        rest = trim_start(rest);
        rest = rest.strip_prefix(b"\"").ok_or(Invalid::Label)?;
        let (value, after) = quoted(rest, limits.max_label_value_bytes)?;
        if labels.len() - first >= limits.max_labels {
            return Err(Invalid::Label);
        }
        labels.push((name, value));
        rest = trim_start(after);
        match rest.first() {
            Some(b',') => rest = &rest[1..],
            Some(b'}') => return Ok(&rest[1..]),
            _ => return Err(Invalid::Label),
        }
    }
}

/// A label value up to its closing quote, unescaped (`\\`, `\"`, `\n`);
/// returns it and what follows the quote.
fn quoted(rest: &[u8], max: usize) -> Result<(Cow<'_, str>, &[u8]), Invalid> {
    let Some(end) = rest.iter().position(|b| *b == b'"' || *b == b'\\') else {
        return Err(Invalid::Label);
    };
    if rest[end] == b'"' {
        if end > max {
            return Err(Invalid::Label);
        }
        let v = std::str::from_utf8(&rest[..end]).map_err(|_| Invalid::Label)?;
        return Ok((Cow::Borrowed(v), &rest[end + 1..]));
    }
    let mut out = Vec::with_capacity(end + 16);
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'"' => {
                let v = String::from_utf8(out).map_err(|_| Invalid::Label)?;
                return Ok((Cow::Owned(v), &rest[i + 1..]));
            }
            b'\\' => {
                match rest.get(i + 1) {
                    Some(b'\\') => out.push(b'\\'),
                    Some(b'"') => out.push(b'"'),
                    Some(b'n') => out.push(b'\n'),
                    _ => return Err(Invalid::Label),
                }
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
        if out.len() > max {
            return Err(Invalid::Label);
        }
    }
    Err(Invalid::Label)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_label_value_bytes: 64,
        max_labels: 8,
    };

    fn text(body: &str) -> Exposition<'_> {
        parse(body.as_bytes(), Format::Text, LIMITS)
    }

    #[test]
    fn text_format_counters_gauges_and_untyped_lines_with_timestamps_and_escapes() {
        let e = text(
            "# HELP http_requests_total The total.\n# TYPE http_requests_total counter\n\
             http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
             http_requests_total{method=\"post\",code=\"400\"}    3 1395066363000\n\
             msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\n\
             metric_without_timestamp_and_labels 12.47\n# TYPE temp gauge\ntemp{} -Inf\n",
        );
        assert_eq!(e.invalid_lines(), 0, "{:?}", e.invalid);
        assert_eq!(e.samples, 5);
        assert_eq!(e.metrics[0].value, Value::Counter(1027.0));
        assert_eq!(e.metrics[0].timestamp_ms, Some(1_395_066_363_000));
        assert_eq!(e.labels_of(&e.metrics[0]), [("method", "post".into()), ("code", "200".into())]);
        assert_eq!(e.labels_of(&e.metrics[2])[0].1, "C:\\DIR\\FILE.TXT");
        assert_eq!(e.labels_of(&e.metrics[2])[1].1, "Cannot find file:\n\"FILE.TXT\"");
        assert_eq!(e.metrics[2].value, Value::Gauge(1.458255915e9));
        assert_eq!(e.metrics[3].timestamp_ms, None);
        assert_eq!(e.metrics[4].value, Value::Gauge(f64::NEG_INFINITY));
    }

    #[test]
    fn histogram_and_summary_lines_become_one_metric_each() {
        let e = text(
            "# TYPE rpc histogram\nrpc_bucket{le=\"0.05\",svc=\"a\"} 24054\nrpc_bucket{le=\"0.1\",svc=\"a\"} 33444\n\
             rpc_bucket{le=\"+Inf\",svc=\"a\"} 144320\nrpc_sum{svc=\"a\"} 53423\nrpc_count{svc=\"a\"} 144320\n\
             rpc_bucket{le=\"+Inf\",svc=\"b\"} 2\n\
             # TYPE lat summary\nlat{quantile=\"0.99\"} 76656\nlat{quantile=\"0.5\"} 4773\nlat_sum 1.7560473e+07\nlat_count 2693\n",
        );
        assert_eq!(e.invalid_lines(), 0);
        assert_eq!(e.metrics.len(), 3);
        assert_eq!(e.metrics[0].name, "rpc");
        assert_eq!(e.labels_of(&e.metrics[0]), [("svc", "a".into())]);
        assert_eq!(
            e.metrics[0].value,
            Value::Histogram {
                buckets: vec![(0.05, 24054.0), (0.1, 33444.0)],
                count: 144320.0,
                sum: 53423.0
            }
        );
        assert!(
            matches!(e.metrics[1].value, Value::Histogram { count, .. } if count == 2.0),
            "+Inf stands for the count"
        );
        assert_eq!(
            e.metrics[2].value,
            Value::Summary {
                quantiles: vec![(0.5, 4773.0), (0.99, 76656.0)],
                count: 2693.0,
                sum: 1.7560473e7
            }
        );
        assert_eq!(e.samples, 10);
    }

    #[test]
    fn openmetrics_counters_created_exemplars_seconds_and_eof() {
        let e = parse(
            b"# TYPE foo counter\n# HELP foo Things.\nfoo_total{a=\"b\"} 17.0 1520879607.789 # {trace_id=\"x\"} 1\n\
              foo_created{a=\"b\"} 1520430000.123\n# TYPE h histogram\nh_bucket{le=\"1\"} 1 # {id=\"q\"} 0.5 123\n\
              h_bucket{le=\"+Inf\"} 3\nh_count 3\nh_sum 4.5\nh_created 1520430000\n# EOF\nafter_eof 1\n",
            Format::OpenMetrics,
            LIMITS,
        );
        assert_eq!(e.invalid_lines(), 0, "{:?}", e.invalid);
        assert_eq!(e.metrics.len(), 2);
        assert_eq!(e.metrics[0].name, "foo_total");
        assert_eq!(e.metrics[0].value, Value::Counter(17.0));
        assert_eq!(e.metrics[0].timestamp_ms, Some(1_520_879_607_789));
        assert_eq!(
            e.metrics[1].value,
            Value::Histogram {
                buckets: vec![(1.0, 1.0)],
                count: 3.0,
                sum: 4.5
            }
        );
    }

    #[test]
    fn malformed_lines_are_counted_by_reason_and_skipped() {
        let long = "x".repeat(65);
        let body = format!(
            "ok 1\n{{bad}} 1\nm{{a=\"1\"}}\nm{{a=1}} 2\nm{{a=\"{long}\"}} 1\nm abc\nm 1 notatime\n# TYPE m wrong\n\
             m{{a=\"\\q\"}} 1\nm 1 2 3\n9m 1\nm{{a=\"1\",b=\"2\",c=\"3\",d=\"4\",e=\"5\",f=\"6\",g=\"7\",h=\"8\",i=\"9\"}} 1\nok 2\n"
        );
        let e = text(&body);
        assert_eq!(e.metrics.len(), 2, "the good lines are kept");
        assert_eq!(e.invalid[Invalid::Name as usize], 1);
        assert_eq!(e.invalid[Invalid::Label as usize], 4);
        assert_eq!(e.invalid[Invalid::Value as usize], 2);
        assert_eq!(e.invalid[Invalid::Timestamp as usize], 1);
        assert_eq!(e.invalid[Invalid::Type as usize], 1);
        assert_eq!(e.invalid[Invalid::Format as usize], 2);
    }

    #[test]
    fn bytes_that_are_not_utf8_or_cut_short_never_panic() {
        for body in [
            &b"m{a=\"\xff\"} 1\n"[..],
            b"m{",
            b"m{a",
            b"m{a=\"",
            b"m{a=\"\\",
            b"#",
            b"# TYPE",
            b"m 1 \xff",
        ] {
            let e = parse(body, Format::Text, LIMITS);
            assert!(e.metrics.is_empty(), "{body:?}");
        }
    }

    #[test]
    fn interleaved_histogram_lines_bad_lines_and_escapes_keep_each_metrics_own_labels() {
        let e = text(
            "# TYPE h histogram\nh_bucket{s=\"a\\\"q\",le=\"1\"} 1\nh_bucket{le=\"1\",s=\"b\"} 5\n\
             bad{x=\"1\",y=} 1\nh_bucket{s=\"a\\\"q\",le=\"2\"} 2\nh_bucket{le=\"2\",s=\"b\"} 6\n\
             h_bucket{s=\"b\",le=\"x\"} 9\nh_count{s=\"a\\\"q\"} 3\nh_count{s=\"b\"} 7\n\
             c{x=\"1\"} 7\n# TYPE c counter\nc{x=\"3\",z=\"4\"} 8\nc_created{x=\"2\"} 1\n",
        );
        assert_eq!(e.invalid[Invalid::Label as usize], 2, "{:?}", e.invalid);
        let got: Vec<_> = e
            .metrics
            .iter()
            .map(|m| (m.name, e.labels_of(m).to_vec(), m.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "h",
                    vec![("s", "a\"q".into())],
                    Value::Histogram {
                        buckets: vec![(1.0, 1.0), (2.0, 2.0)],
                        count: 3.0,
                        sum: 0.0
                    }
                ),
                (
                    "h",
                    vec![("s", "b".into())],
                    Value::Histogram {
                        buckets: vec![(1.0, 5.0), (2.0, 6.0)],
                        count: 7.0,
                        sum: 0.0
                    }
                ),
                ("c", vec![("x", "1".into())], Value::Gauge(7.0)),
                ("c", vec![("x", "3".into()), ("z", "4".into())], Value::Counter(8.0)),
            ]
        );
        assert_eq!(e.labels.len(), 5, "no label of a skipped line or a known group's line is kept");
    }
}
