//! The one `/metrics` scraper: fetch the Prometheus text from an API
//! address and parse it into samples looked up by name and labels.

use std::collections::BTreeMap;

use super::try_http_get;

/// Fetches `http://{api}/metrics` (`api` is `host:port`) and parses it;
/// panics unless it answers 200.
pub fn scrape(api: &str) -> Metrics {
    try_scrape(api).unwrap_or_else(|e| panic!("{e}"))
}

/// [`scrape`] that says what went wrong instead of panicking, for a
/// process that may be killed at any moment.
pub fn try_scrape(api: &str) -> Result<Metrics, String> {
    let (status, body) = try_http_get(&format!("http://{api}/metrics"))?;
    if status != 200 {
        return Err(format!("GET http://{api}/metrics answered {status}: {body}"));
    }
    Ok(Metrics::parse(&body))
}

/// One sample of the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` suffixes).
    pub name: String,
    /// Labels, unescaped.
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one `/metrics` answer, and the text it came from.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The exposition as served.
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the Prometheus text format as sluice writes it (no
    /// timestamps, escaped label values); panics on a line it cannot read.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
                };
                let (name, labels) = parse_series(series);
                Sample { name, labels, value }
            })
            .collect();
        Metrics {
            text: text.to_owned(),
            samples,
        }
    }

    /// Samples named `name` whose labels include all of `want`.
    pub fn matching<'a>(&'a self, name: &'a str, want: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
    }

    /// The sum of the samples [`Metrics::matching`] selects (0 if none).
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.matching(name, want).map(|s| s.value).sum()
    }

    /// The one sample with exactly these labels, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.find(name, &want)
    }

    /// The sample written as `series` (`name{label="value",...}`, labels in
    /// any order), if present.
    pub fn series(&self, series: &str) -> Option<f64> {
        let (name, labels) = parse_series(series);
        self.find(&name, &labels)
    }

    /// [`Metrics::series`], 0 when absent (a counter not yet incremented).
    pub fn value(&self, series: &str) -> f64 {
        self.series(series).unwrap_or(0.0)
    }

    fn find(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<f64> {
        self.samples.iter().find(|s| s.name == name && s.labels == *labels).map(|s| s.value)
    }
}

/// `name{labels}` into its name and unescaped labels.
fn parse_series(series: &str) -> (String, BTreeMap<String, String>) {
    match series.split_once('{') {
        None => (series.to_owned(), BTreeMap::new()),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("no closing brace in {series:?}"));
            (name.to_owned(), parse_labels(inner))
        }
    }
}

fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (name, rest) = s.split_once("=\"").unwrap_or_else(|| panic!("no =\" in labels {s:?}"));
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("no closing quote in labels {s:?}"));
        out.insert(name.to_owned(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    out
}
