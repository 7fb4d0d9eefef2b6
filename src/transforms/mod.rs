//! Transforms: what happens to events between their source and the sinks
//! (`[transforms.<name>]`, each with a `type` and `inputs`). A transform
//! type is one file here with a config struct implementing
//! [`TransformComponent`], plus one line in the registry at the end of this
//! file. [`graph`] joins them into the DAG each source's batches go
//! through on the decode pool.
//!
//! Events that a transform only selects (filter, route, throttle, most of
//! sample) keep their bytes and their metadata splice; an event a
//! transform changes is parsed once, changed in place by every later
//! transform, and serialised once, at the output; `fields` writing
//! top-level keys changes the event's bytes instead, without parsing it.

mod fields;
mod filter;
pub(crate) mod graph;
mod members;
mod metrics;
mod parse;
mod redact;
mod route;
mod sample;
mod stream;
pub(crate) mod testing;
mod throttle;

pub use throttle::ThrottleMode;

use serde_json::{Map, Value};

use crate::config::{parse_component, parse_valid, ConfigError, Validate};
use graph::{Compiler, Step};

/// What a transform type is: a config that checks itself ([`Validate`]),
/// names its outputs, and builds its step of the graph.
pub(crate) trait TransformComponent: Validate {
    /// Named outputs (`errors` of a route, written `split.errors`). Empty:
    /// the transform has one output, named after it.
    fn outputs(&self) -> Vec<String> {
        Vec::new()
    }

    /// The step that runs the transform over a batch's events, its
    /// conditions and keys compiled with `cx`.
    fn build(&self, name: &str, cx: &mut Compiler) -> Box<dyn Step>;
}

/// The transform registry: one line per type, `"name" => Variant(Config)`.
/// It makes [`TransformConfig`], [`parse_config`] and the dispatch to each
/// type's [`TransformComponent`].
macro_rules! transform_registry {
    ($($name:literal => $variant:ident($config:ty)),+ $(,)?) => {
        /// A transform's settings, by type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TransformConfig {
            $(#[doc = concat!("`type = \"", $name, "\"`.")] $variant($config),)+
        }

        /// Parses and checks the settings of a transform of type `kind` at
        /// config `path`, returning every error with its key path.
        pub(crate) fn parse_config(kind: &str, path: &str, rest: Map<String, Value>) -> Result<TransformConfig, Vec<ConfigError>> {
            parse_component("transform", kind, path, rest, &[
                $(($name, |path, value, errors| parse_valid::<$config>(path, value, errors).map(TransformConfig::$variant)),)+
            ])
        }

        impl TransformConfig {
            /// The type name.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(TransformConfig::$variant(_) => $name,)+
                }
            }

            /// Named outputs; empty when the transform has one.
            pub(crate) fn outputs(&self) -> Vec<String> {
                match self {
                    $(TransformConfig::$variant(c) => c.outputs(),)+
                }
            }

            fn build(&self, name: &str, cx: &mut Compiler) -> Box<dyn Step> {
                match self {
                    $(TransformConfig::$variant(c) => c.build(name, cx),)+
                }
            }
        }
    };
}

transform_registry! {
    "filter" => Filter(filter::FilterConfig),
    "route" => Route(route::RouteConfig),
    "sample" => Sample(sample::SampleConfig),
    "throttle" => Throttle(throttle::ThrottleConfig),
    "fields" => Fields(fields::FieldsConfig),
    "redact" => Redact(redact::RedactConfig),
    "parse" => Parse(parse::ParseConfig),
}

/// For the fuzz target: `key_value` parsing of `text` with these
/// separators (logfmt is `" "` and `"="`).
#[cfg(feature = "fuzzing")]
pub fn fuzz_parse_pairs(text: &str, field_split: &str, value_split: &str) -> Map<String, Value> {
    parse::pairs(text, field_split, value_split)
}

/// For the fuzz target: `text` scrubbed by every built-in detector, `None`
/// when nothing matched.
#[cfg(feature = "fuzzing")]
pub fn fuzz_redact(text: &str) -> Option<String> {
    redact::fuzz_scrub(text)
}

/// For the fuzz target: `event` changed by a `fields` transform with the
/// settings `config` both ways: in its bytes (`None` when that path
/// refuses the event: then the map path changes it), and parsed into a map
/// and serialised (`None` when `serde_json` does not read the event as an
/// object). `None` for settings that do not validate.
#[cfg(feature = "fuzzing")]
pub fn fuzz_fields(config: Value, event: &[u8]) -> Option<(Option<Vec<u8>>, Option<Value>)> {
    fields::fuzz_both(config, event)
}

/// For the fuzz target: whether `text` is one JSON object as the bytes
/// path of `fields` reads it.
#[cfg(feature = "fuzzing")]
pub fn fuzz_is_object(text: &[u8]) -> bool {
    members::object_members(text, &mut Vec::new()).is_some()
}

/// A transform as configured: its inputs plus its own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformSpec {
    /// Sources, transforms or route outputs (`split.errors`) it takes.
    pub(crate) inputs: Vec<String>,
    /// The transform's own settings.
    pub config: TransformConfig,
}

/// Reads `[transforms.<name>]`'s `inputs` and the type's settings at
/// `path`.
pub(crate) fn parse_spec(path: &str, kind: &str, mut rest: Map<String, Value>, errors: &mut Vec<ConfigError>) -> Option<TransformSpec> {
    let inputs: Option<Vec<String>> = match rest.remove("inputs") {
        None => {
            errors.push(ConfigError::new(format!("{path}.inputs"), "missing field `inputs`"));
            None
        }
        Some(v) => crate::config::parse_at(&format!("{path}.inputs"), v, errors),
    };
    if inputs.as_ref().is_some_and(Vec::is_empty) {
        errors.push(ConfigError::new(format!("{path}.inputs"), "must name at least one input"));
    }
    match parse_config(kind, path, rest) {
        Ok(config) => inputs.map(|inputs| TransformSpec { inputs, config }),
        Err(mut e) => {
            errors.append(&mut e);
            None
        }
    }
}
