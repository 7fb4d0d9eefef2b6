//! `route`: named outputs by condition. An event goes to every route whose
//! condition it meets (`split.errors`), and to `split._unmatched` when it
//! meets none; nothing is dropped and no event is changed.

use serde::Deserialize;
use serde_json::Map;

use super::graph::{Compiler, CondId, Run, Step, Verdicts};
use super::stream::Item;
use super::TransformComponent;
use crate::condition::Condition;
use crate::config::{ConfigError, Validate};

/// The output of the events no route takes.
pub(crate) const UNMATCHED: &str = "_unmatched";

/// `[transforms.<name>] type = "route"`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Route name and condition, in config order.
    routes: Vec<(String, Condition)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteTable {
    routes: Map<String, serde_json::Value>,
}

impl<'de> Deserialize<'de> for RouteConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RouteConfig, D::Error> {
        let table = RouteTable::deserialize(d)?;
        let mut routes = Vec::with_capacity(table.routes.len());
        for (name, v) in table.routes {
            let mut errors = Vec::new();
            // Parsed here for the types; validated with key paths below.
            match crate::config::parse_at::<Condition>(&format!("routes.{name}"), v, &mut errors) {
                Some(c) => routes.push((name, c)),
                None => {
                    let e = errors.into_iter().next().map(|e| e.to_string()).unwrap_or_default();
                    return Err(serde::de::Error::custom(e));
                }
            }
        }
        Ok(RouteConfig { routes })
    }
}

impl Validate for RouteConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.routes.is_empty() {
            errors.push(ConfigError::new(format!("{path}.routes"), "must name at least one route"));
        }
        for (name, c) in &self.routes {
            let at = format!("{path}.routes.{name}");
            if name == UNMATCHED || name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                errors.push(ConfigError::new(
                    &at,
                    format!("route names may use letters, digits, `_` and `-`, and {UNMATCHED} is taken"),
                ));
            }
            c.validate(&at, errors);
        }
    }
}

impl TransformComponent for RouteConfig {
    fn outputs(&self) -> Vec<String> {
        self.routes.iter().map(|(n, _)| n.clone()).chain([UNMATCHED.to_owned()]).collect()
    }

    fn build(&self, _name: &str, cx: &mut Compiler) -> Box<dyn Step> {
        Box::new(Route {
            routes: self.routes.iter().map(|(_, c)| cx.condition(c)).collect(),
        })
    }
}

struct Route {
    /// Per route, in output order; `_unmatched` is the output after them.
    routes: Vec<CondId>,
}

impl Step for Route {
    fn run(&self, input: Vec<Item>, run: &mut Run<'_>, out: &mut [Vec<Item>]) {
        let Some((unmatched, routes)) = out.split_last_mut() else { return };
        // Each list may take every event: grown once, not doubling.
        for list in routes.iter_mut().chain([&mut *unmatched]) {
            list.reserve(input.len());
        }
        for item in input {
            let mut last: Option<usize> = None;
            for (r, &c) in self.routes.iter().enumerate() {
                if run.holds(c, &item) {
                    if let Some(prev) = last.replace(r) {
                        routes[prev].push(item.clone());
                    }
                }
            }
            match last {
                Some(r) => routes[r].push(item),
                None => unmatched.push(item),
            }
        }
    }

    fn select(&self, input: &[u64], verdicts: &Verdicts, out: &mut [Vec<u64>]) {
        let Some((unmatched, routes)) = out.split_last_mut() else { return };
        unmatched.copy_from_slice(input);
        for (set, c) in routes.iter_mut().zip(&self.routes) {
            let Some(holds) = verdicts.of(*c) else { continue };
            for (((s, i), h), u) in set.iter_mut().zip(input).zip(holds).zip(unmatched.iter_mut()) {
                *s = i & h;
                *u &= !h;
            }
        }
    }

    fn selects(&self) -> bool {
        true
    }

    fn drop_reason(&self) -> &'static str {
        "none"
    }
}
