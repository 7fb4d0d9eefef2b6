//! `filter`: keeps the events that meet a condition and drops the rest
//! (counted with reason `condition`). Kept events keep their bytes.

use serde::Deserialize;

use super::graph::{Compiler, CondId, Run, Step, Verdicts};
use super::stream::Item;
use super::TransformComponent;
use crate::condition::Condition;
use crate::config::{ConfigError, Validate};

/// `[transforms.<name>] type = "filter"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Events that meet it are kept.
    condition: Condition,
}

impl Validate for FilterConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        self.condition.validate(&format!("{path}.condition"), errors);
    }
}

impl TransformComponent for FilterConfig {
    fn build(&self, _name: &str, cx: &mut Compiler) -> Box<dyn Step> {
        Box::new(Filter {
            keep: cx.condition(&self.condition),
        })
    }
}

struct Filter {
    keep: CondId,
}

impl Step for Filter {
    fn run(&self, input: Vec<Item>, run: &mut Run<'_>, out: &mut [Vec<Item>]) {
        let [kept] = out else { return };
        kept.reserve(input.len());
        for item in input {
            if run.holds(self.keep, &item) {
                kept.push(item);
            }
        }
    }

    fn select(&self, input: &[u64], verdicts: &Verdicts, out: &mut [Vec<u64>]) {
        let ([kept], Some(holds)) = (out, verdicts.of(self.keep)) else {
            return;
        };
        for ((k, i), h) in kept.iter_mut().zip(input).zip(holds) {
            *k = i & h;
        }
    }

    fn selects(&self) -> bool {
        true
    }

    fn drop_reason(&self) -> &'static str {
        "condition"
    }
}
