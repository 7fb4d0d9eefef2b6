//! The top-level config: every section and component, parsed and checked
//! as a whole (names, inputs, `data_dir`), with `SLUICE_*` overrides. Each
//! component parses its own table; this file only joins them.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::buffer::BufferConfig;
use crate::config::{duration, env_lookup, interpolate, parse_at, parse_valid, ConfigError, ConfigErrors};
use crate::enrich::EnrichConfig;
use crate::sinks::SinkConfig;
use crate::sli::MetricRule;
use crate::sli::SliRule;
use crate::sources::SourceConfig;
use crate::transforms::TransformSpec;

/// What `app | sluice` does with no config: stdin to stdout, enriched.
/// `config/dev.toml` is this file, written out.
pub(crate) const DEFAULT_CONFIG: &str = include_str!("../../config/dev.toml");

/// The `[api]` section: the HTTP endpoint for `/metrics`, `/health`, `/ready`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ApiConfig {
    /// Serve the endpoints at all (`SLUICE_API_ENABLED`).
    pub(crate) enabled: bool,
    /// Listen address (`SLUICE_API_ADDRESS`); loopback by default.
    pub(crate) address: SocketAddr,
}

/// The default API address: loopback, so nothing is exposed by accident.
pub(crate) const DEFAULT_API_ADDRESS: &str = "127.0.0.1:9598";

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            address: DEFAULT_API_ADDRESS.parse().expect("valid constant address"),
        }
    }
}

/// Top-level settings outside any section or component.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct TopLevel {
    data_dir: Option<PathBuf>,
    #[serde(deserialize_with = "duration")]
    shutdown_timeout: Duration,
}

impl Default for TopLevel {
    fn default() -> Self {
        TopLevel {
            data_dir: None,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// A sink as configured: its own settings plus the keys every sink has.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// Sources whose events this sink receives; all of them when unset.
    pub(crate) inputs: Option<Vec<String>>,
    /// The sink's queue.
    pub(crate) buffer: BufferConfig,
    /// The sink's own settings.
    pub config: SinkConfig,
}

/// A whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where checkpoints and disk buffers live (`SLUICE_DATA_DIR`).
    pub(crate) data_dir: Option<PathBuf>,
    /// How long a SIGTERM may take to drain and flush
    /// (`SLUICE_SHUTDOWN_TIMEOUT`).
    pub shutdown_timeout: Duration,
    /// The HTTP endpoint.
    pub(crate) api: ApiConfig,
    /// Metadata added to events.
    pub(crate) enrich: EnrichConfig,
    /// Sources by name.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, SinkSpec>,
    /// Transforms by name (`[transforms.<name>]`).
    pub transforms: BTreeMap<String, TransformSpec>,
    /// Config unit tests (`[[tests]]`), run by `sluice test` only.
    pub(crate) tests: Vec<crate::transforms::testing::TestCase>,
    /// SLI rules (`[[sli]]`), in config order.
    pub sli: Vec<SliRule>,
    /// The `[[sli]]` tables as written (after interpolation): a reload
    /// compares these, since compiled rules do not compare.
    pub(crate) sli_raw: Value,
    /// Log-to-metric rules (`[[metrics]]`), in config order.
    pub metrics: Vec<MetricRule>,
    /// The `[[metrics]]` tables as written: a reload compares these.
    pub(crate) metrics_raw: Value,
    /// True when the API address was set explicitly (a bind failure is then
    /// fatal; with the default it is a warning, so two dev pipes can run).
    pub(crate) api_address_explicit: bool,
}

/// The config format, from the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML (the default).
    Toml,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
}

impl Format {
    /// YAML for `.yaml`/`.yml`, TOML otherwise.
    pub(crate) fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Format::Yaml,
            _ => Format::Toml,
        }
    }
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![ConfigError::new("", format!("cannot read config {}: {e}", path.display()))]))?;
        Config::from_str(&text, Format::from_path(path), &env_lookup)
    }

    /// The embedded default (`app | sluice`).
    pub fn default_pipe() -> Result<Config, ConfigErrors> {
        Config::from_str(DEFAULT_CONFIG, Format::Toml, &env_lookup)
    }

    /// Parses config text with the given environment.
    pub fn from_str(text: &str, format: Format, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let text = interpolate(text, env).map_err(ConfigErrors)?;
        let mut root: Value = match format {
            Format::Toml => toml::from_str(&text).map_err(|e| {
                let msg = e.message().to_owned();
                let at = e
                    .span()
                    .map(|s| format!("line {}", text[..s.start].lines().count().max(1)))
                    .unwrap_or_default();
                ConfigErrors(vec![ConfigError::new(at, format!("invalid TOML: {msg}"))])
            })?,
            Format::Yaml => {
                serde_yaml_ng::from_str(&text).map_err(|e| ConfigErrors(vec![ConfigError::new("", format!("invalid YAML: {e}"))]))?
            }
        };
        if root.is_null() {
            root = Value::Object(Map::new());
        }
        let Value::Object(mut root) = root else {
            return Err(ConfigErrors(vec![ConfigError::new("", "the config must be a table of settings")]));
        };
        let api_address_explicit = root.get("api").and_then(|a| a.get("address")).is_some() || env("SLUICE_API_ADDRESS").is_some();
        apply_env_overrides(&mut root, env);

        let mut errors = Vec::new();
        let sources_v = take_table(&mut root, "sources", &mut errors);
        let sinks_v = take_table(&mut root, "sinks", &mut errors);
        let transforms_v = take_table(&mut root, "transforms", &mut errors);
        // Each section parses on its own, so one bad key does not hide
        // the errors of the others.
        let api: ApiConfig = root.remove("api").and_then(|v| parse_at("api", v, &mut errors)).unwrap_or_default();
        let enrich: EnrichConfig = root
            .remove("enrich")
            .and_then(|v| parse_at("enrich", v, &mut errors))
            .unwrap_or_default();
        let tests: Vec<crate::transforms::testing::TestCase> = match root.remove("tests") {
            None => Vec::new(),
            Some(Value::Array(cases)) => cases
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| parse_valid(&format!("tests[{i}]"), v, &mut errors))
                .collect(),
            Some(_) => {
                errors.push(ConfigError::new("tests", "must be a list of [[tests]] tables"));
                Vec::new()
            }
        };
        let sli_raw = root.remove("sli").unwrap_or(Value::Null);
        let sli = if sli_raw.is_null() {
            Vec::new()
        } else {
            crate::sli::config::parse_rules(sli_raw.clone(), &mut errors)
        };
        let metrics_raw = root.remove("metrics").unwrap_or(Value::Null);
        let top: TopLevel = parse_at("", Value::Object(root), &mut errors).unwrap_or_default();

        let mut sources = BTreeMap::new();
        for (name, v) in sources_v {
            let path = format!("sources.{name}");
            check_name(&path, &name, &mut errors);
            let Some((kind, rest)) = split_type(&path, v, &mut errors) else {
                continue;
            };
            match crate::sources::parse_config(&kind, &path, rest) {
                Ok(cfg) => {
                    sources.insert(name, cfg);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }

        let mut transforms = BTreeMap::new();
        for (name, v) in transforms_v {
            let path = format!("transforms.{name}");
            check_name(&path, &name, &mut errors);
            let Some((kind, rest)) = split_type(&path, v, &mut errors) else {
                continue;
            };
            if let Some(spec) = crate::transforms::parse_spec(&path, &kind, rest, &mut errors) {
                transforms.insert(name, spec);
            }
        }
        let mut sink_inputs = Vec::new();

        let mut sinks = BTreeMap::new();
        for (name, v) in sinks_v {
            let path = format!("sinks.{name}");
            check_name(&path, &name, &mut errors);
            let Some((kind, mut rest)) = split_type(&path, v, &mut errors) else {
                continue;
            };
            let inputs: Option<Vec<String>> = rest
                .remove("inputs")
                .and_then(|v| parse_at(&format!("{path}.inputs"), v, &mut errors));
            let buffer: BufferConfig = rest
                .remove("buffer")
                .and_then(|v| parse_valid(&format!("{path}.buffer"), v, &mut errors))
                .unwrap_or_default();
            if buffer.kind == crate::buffer::BufferType::Disk && top.data_dir.is_none() {
                errors.push(ConfigError::new(
                    format!("{path}.buffer.type"),
                    "a disk buffer needs data_dir (or SLUICE_DATA_DIR) to be set",
                ));
            }
            if let Some(inputs) = &inputs {
                for (i, input) in inputs.iter().enumerate() {
                    let component = input.split('.').next().unwrap_or(input);
                    if transforms.contains_key(component) {
                        // A transform output: checked with the graph.
                        sink_inputs.push((name.clone(), i, input.clone()));
                    } else if errors.iter().any(|e| e.path.starts_with(&format!("transforms.{component}"))) {
                        // The transform's own errors say it all.
                    } else if !sources.contains_key(input) && !errors.iter().any(|e| e.path.starts_with(&format!("sources.{input}"))) {
                        errors.push(ConfigError::new(
                            format!("{path}.inputs[{i}]"),
                            format!("no source named {input:?}"),
                        ));
                    }
                }
            }
            match crate::sinks::parse_config(&kind, &path, rest) {
                Ok(config) => {
                    sinks.insert(name, SinkSpec { inputs, buffer, config });
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        let source_names = sources.keys().map(String::as_str).collect();
        let metrics = if metrics_raw.is_null() {
            Vec::new()
        } else {
            crate::sli::log_metrics::parse_rules(metrics_raw.clone(), &source_names, &mut errors)
        };
        crate::transforms::graph::check(&source_names, &transforms, &sink_inputs, &mut errors);
        crate::transforms::testing::check(&tests, &source_names, &transforms, &mut errors);
        check_event_kinds(&sources, &sinks, &mut errors);
        if top.data_dir.is_none() {
            for (name, cfg) in &sources {
                if cfg.needs_data_dir() {
                    errors.push(ConfigError::new(
                        "data_dir",
                        format!(
                            "data_dir is not set, and source {name:?} ({}) keeps its checkpoints there: set data_dir or SLUICE_DATA_DIR",
                            cfg.kind()
                        ),
                    ));
                }
            }
        }
        if sources.is_empty() && !errors.iter().any(|e| e.path.starts_with("sources")) {
            errors.push(ConfigError::new("sources", "at least one source is required"));
        }
        if sinks.is_empty() && !errors.iter().any(|e| e.path.starts_with("sinks")) {
            errors.push(ConfigError::new("sinks", "at least one sink is required"));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            data_dir: top.data_dir,
            shutdown_timeout: top.shutdown_timeout,
            api,
            enrich: enrich.with_env(),
            sources,
            sinks,
            transforms,
            tests,
            sli,
            sli_raw,
            metrics,
            metrics_raw,
            api_address_explicit,
        })
    }

    /// The API URL `sluice tap` asks for a sample of `output`; `None` when
    /// the API is off.
    pub fn tap_url(&self, output: &str, limit: usize) -> Option<String> {
        self.api
            .enabled
            .then(|| format!("http://{}/tap/{output}?limit={limit}", self.api.address))
    }

    /// Runs the config's `[[tests]]` through its transforms: the report,
    /// and whether every case passed.
    pub fn run_tests(&self) -> (String, bool) {
        let sources = self.sources.keys().map(String::as_str).collect();
        crate::transforms::testing::run(&self.tests, &sources, &self.transforms, &self.enrich.metadata(None))
    }

    /// The sinks that take `output`: a source (sinks without `inputs` take
    /// every source), a transform or a route output (`split.errors`).
    pub(crate) fn sinks_taking<'a>(&'a self, output: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let is_source = self.sources.contains_key(output);
        self.sinks
            .iter()
            .filter(move |(_, s)| match &s.inputs {
                None => is_source,
                Some(i) => i.iter().any(|x| x == output),
            })
            .map(|(n, _)| n.as_str())
    }

    /// The sinks that receive events from `source`.
    pub(crate) fn sinks_for<'a>(&'a self, source: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.sinks
            .iter()
            .filter(move |(_, s)| s.inputs.as_ref().is_none_or(|i| i.iter().any(|x| x == source)))
            // A sink without `inputs` takes every source whose events it
            // can carry (a Loki sink is not fed a statsd source's metrics).
            .filter(move |(_, s)| {
                s.inputs.is_some()
                    || self
                        .sources
                        .get(source)
                        .is_none_or(|c| c.kinds().into_iter().any(|k| s.config.accepts(k)))
            })
            .map(|(n, _)| n.as_str())
    }
}

/// A sink whose `inputs` name a source of events it cannot carry (metrics
/// into Loki, logs into remote write) is an error at that input's key.
fn check_event_kinds(sources: &BTreeMap<String, SourceConfig>, sinks: &BTreeMap<String, SinkSpec>, errors: &mut Vec<ConfigError>) {
    for (name, spec) in sinks {
        for (i, input) in spec.inputs.iter().flatten().enumerate() {
            let Some(source) = sources.get(input) else { continue };
            let kind = source.produces();
            // A source of two kinds (OTLP) feeds a sink that takes either.
            if !source.kinds().into_iter().any(|k| spec.config.accepts(k)) {
                errors.push(ConfigError::new(
                    format!("sinks.{name}.inputs[{i}]"),
                    format!(
                        "source {input:?} ({}) sends {}, which a {} sink cannot carry",
                        source.kind(),
                        kind.as_str(),
                        spec.config.kind()
                    ),
                ));
            }
        }
    }
}

fn take_table(root: &mut Map<String, Value>, key: &str, errors: &mut Vec<ConfigError>) -> Map<String, Value> {
    match root.remove(key) {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            errors.push(ConfigError::new(key, "must be a table of named components"));
            Map::new()
        }
    }
}

fn split_type(path: &str, v: Value, errors: &mut Vec<ConfigError>) -> Option<(String, Map<String, Value>)> {
    let Value::Object(mut m) = v else {
        errors.push(ConfigError::new(path, "must be a table"));
        return None;
    };
    match m.remove("type") {
        Some(Value::String(t)) => Some((t, m)),
        Some(_) => {
            errors.push(ConfigError::new(format!("{path}.type"), "must be a string"));
            None
        }
        None => {
            errors.push(ConfigError::new(format!("{path}.type"), "missing field `type`"));
            None
        }
    }
}

fn check_name(path: &str, name: &str, errors: &mut Vec<ConfigError>) {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        errors.push(ConfigError::new(path, "component names may use letters, digits, `_` and `-`"));
    }
}

/// `SLUICE_*` variables that set common settings, so a container needs no
/// config file. Each maps to one key path.
pub(crate) const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("SLUICE_DATA_DIR", "data_dir"),
    ("SLUICE_SHUTDOWN_TIMEOUT", "shutdown_timeout"),
    ("SLUICE_API_ENABLED", "api.enabled"),
    ("SLUICE_API_ADDRESS", "api.address"),
];

fn apply_env_overrides(root: &mut Map<String, Value>, env: &dyn Fn(&str) -> Option<String>) {
    for (var, path) in ENV_OVERRIDES {
        let Some(raw) = env(var).filter(|v| !v.is_empty()) else { continue };
        let value = match raw.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(raw),
        };
        let mut table = &mut *root;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                table.insert(part.to_owned(), value);
                break;
            }
            let entry = table.entry(part.to_owned()).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Value::Object(next) = entry else { break };
            table = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::from_str(DEFAULT_CONFIG, Format::Toml, &no_env).unwrap();
        assert!(c.sources.contains_key("stdin"));
        assert!(c.sinks.contains_key("stdout"));
    }

    #[test]
    fn every_error_is_reported_with_its_key_path() {
        let text = r#"
shutdown_timeout = "soon"
[api]
adress = "x"
[sources.in]
type = "stdin"
max_line_bytes = "huge"
[sources.other]
type = "nope"
[sinks.out]
type = "stdout"
inputs = ["missing"]
colour = true
[sinks.out.buffer]
when_full = "panic"
"#;
        let errs = Config::from_str(text, Format::Toml, &no_env).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "shutdown_timeout",
            "sources.in.max_line_bytes",
            "sources.other.type",
            "sinks.out.buffer.when_full",
            "sinks.out.inputs[0]",
            "sinks.out.colour",
            "api.adress",
        ] {
            assert!(paths.contains(&want), "missing {want} in {errs:?}");
        }
    }

    #[test]
    fn sub_config_errors_name_their_own_key_and_unknown_types_list_the_registry() {
        let text = r#"
data_dir = "/tmp/x"
[sources.f]
type = "file"
include = ["/var/log/*.log"]
[sources.f.kubernetes]
api = true
[sources.other]
type = "nope"
[sinks.out]
type = "stdout"
[sinks.out.buffer]
max_events = 0
max_bytes = "10B"
[sinks.l]
type = "loki"
endpoint = "http://127.0.0.1:3100"
[sinks.l.retry]
initial_backoff = "0s"
max_backoff = "0s"
[sinks.more]
type = "nope"
"#;
        let errs = Config::from_str(text, Format::Toml, &no_env).unwrap_err().0;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        for want in [
            "sources.f.kubernetes.api: needs kubernetes.enabled = true",
            "sources.other.type: unknown source type \"nope\"; known: stdin, file, socket, process, kafka, otlp, statsd, internal_metrics, journald, kubernetes_events, host_metrics, prometheus_scrape",
            "sinks.more.type: unknown sink type \"nope\"; known: stdout, blackhole, kafka, loki, s3, otlp, prometheus_remote_write, prometheus_exporter",
            "sinks.out.buffer.max_events: must be at least 1",
            "sinks.out.buffer.max_bytes: must be at least 1KiB",
            "sinks.l.retry.initial_backoff: must be above 0",
        ] {
            assert!(text.iter().any(|t| t == want), "missing {want:?} in {text:#?}");
        }
    }

    #[test]
    fn yaml_and_env_overrides_work() {
        let text = "sources:\n  in:\n    type: stdin\nsinks:\n  out:\n    type: blackhole\n";
        let env = |k: &str| match k {
            "SLUICE_API_ADDRESS" => Some("127.0.0.1:1234".to_owned()),
            "SLUICE_SHUTDOWN_TIMEOUT" => Some("5s".to_owned()),
            _ => None,
        };
        let c = Config::from_str(text, Format::Yaml, &env).unwrap();
        assert_eq!(c.api.address.port(), 1234);
        assert!(c.api_address_explicit);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    }
}
