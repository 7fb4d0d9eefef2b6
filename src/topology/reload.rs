//! What a reload changes: the running config against the new one, component
//! by component. Comparing is all this file does; `running` applies it.

use std::collections::BTreeSet;

use super::config::Config;
use crate::config::ConfigError;

/// The components a reload stops, replaces or starts. A component is
/// changed when its own table differs; a sink whose only change is its
/// `inputs` keeps running and is only rewired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Diff {
    /// Sources to stop for good.
    pub(crate) sources_removed: BTreeSet<String>,
    /// Sources to stop and start again with their new settings.
    pub(crate) sources_changed: BTreeSet<String>,
    /// Sources to start.
    pub(crate) sources_added: BTreeSet<String>,
    /// Sinks to drain and stop for good.
    pub(crate) sinks_removed: BTreeSet<String>,
    /// Sinks to drain and start again with their new settings.
    pub(crate) sinks_changed: BTreeSet<String>,
    /// Sinks to start.
    pub(crate) sinks_added: BTreeSet<String>,
    /// Transforms added, removed or changed (their settings or inputs):
    /// the transforms are rebuilt and the routes with them.
    pub(crate) transforms_changed: BTreeSet<String>,
    /// Some sink's `inputs` changed: the routes are rebuilt.
    pub(crate) inputs_changed: bool,
    /// `shutdown_timeout` changed (applied, nothing restarts).
    pub(crate) timeout_changed: bool,
}

impl Diff {
    /// Compares two validated configs.
    pub(crate) fn between(old: &Config, new: &Config) -> Diff {
        let mut d = Diff::default();
        // Every source renders the enrichment metadata once, at start.
        let enrich_changed = old.enrich != new.enrich;
        for (name, cfg) in &old.sources {
            match new.sources.get(name) {
                None => {
                    d.sources_removed.insert(name.clone());
                }
                Some(n) if n != cfg || enrich_changed => {
                    d.sources_changed.insert(name.clone());
                }
                Some(_) => {}
            }
        }
        d.sources_added = new.sources.keys().filter(|n| !old.sources.contains_key(*n)).cloned().collect();
        for (name, spec) in &old.sinks {
            match new.sinks.get(name) {
                None => {
                    d.sinks_removed.insert(name.clone());
                }
                Some(n) => {
                    if n.config != spec.config || n.buffer != spec.buffer {
                        d.sinks_changed.insert(name.clone());
                    }
                    if n.inputs != spec.inputs {
                        d.inputs_changed = true;
                    }
                }
            }
        }
        d.sinks_added = new.sinks.keys().filter(|n| !old.sinks.contains_key(*n)).cloned().collect();
        d.transforms_changed = old
            .transforms
            .keys()
            .chain(new.transforms.keys())
            .filter(|n| old.transforms.get(*n) != new.transforms.get(*n))
            .cloned()
            .collect();
        d.timeout_changed = old.shutdown_timeout != new.shutdown_timeout;
        d
    }

    /// True when the topology needs no rewiring: no component starts or
    /// stops and no route changes.
    pub(crate) fn rewires_nothing(&self) -> bool {
        self.sources_removed.is_empty()
            && self.sources_changed.is_empty()
            && self.sources_added.is_empty()
            && self.sinks_removed.is_empty()
            && self.sinks_changed.is_empty()
            && self.sinks_added.is_empty()
            && self.transforms_changed.is_empty()
            && !self.inputs_changed
    }

    /// One line for the log and the `/-/reload` answer.
    pub(crate) fn summary(&self) -> String {
        if self.rewires_nothing() {
            return if self.timeout_changed {
                "config reloaded: shutdown_timeout changed; no component restarted".into()
            } else {
                "config reloaded: nothing changed".into()
            };
        }
        let mut parts = Vec::new();
        let mut part = |what: &str, names: &BTreeSet<String>| {
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.iter().cloned().collect::<Vec<_>>().join(", ")));
            }
        };
        part("sinks replaced:", &self.sinks_changed);
        part("sinks added:", &self.sinks_added);
        part("sinks removed:", &self.sinks_removed);
        part("sources restarted:", &self.sources_changed);
        part("sources added:", &self.sources_added);
        part("sources removed:", &self.sources_removed);
        part("transforms replaced:", &self.transforms_changed);
        if self.inputs_changed {
            parts.push("routes rebuilt".into());
        }
        format!("config reloaded: {}", parts.join("; "))
    }
}

/// Settings a running process cannot take over without a restart, each as
/// an error at its key path: the API listener, where state lives, and the
/// SLI rules (their series live on `/metrics`).
pub(crate) fn needs_restart(old: &Config, new: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut check = |changed: bool, path: &str, what: &str| {
        if changed {
            errors.push(ConfigError::new(
                path,
                format!("{what} cannot change on reload; restart sluice to apply it"),
            ));
        }
    };
    check(old.api != new.api, "api", "the API listener");
    check(old.data_dir != new.data_dir, "data_dir", "the data directory");
    check(old.sli_raw != new.sli_raw, "sli", "the SLI rules");
    check(old.metrics_raw != new.metrics_raw, "metrics", "the [[metrics]] rules");
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Format;

    fn config(text: &str) -> Config {
        Config::from_str(text, Format::Toml, &|_| None).unwrap()
    }

    const BASE: &str = r#"
data_dir = "/tmp/x"
[sources.a]
type = "stdin"
[sources.b]
type = "socket"
mode = "tcp"
address = "127.0.0.1:0"
[sinks.out]
type = "stdout"
[sinks.hole]
type = "blackhole"
inputs = ["a"]
"#;

    #[test]
    fn the_same_config_changes_nothing() {
        let d = Diff::between(&config(BASE), &config(BASE));
        assert!(d.rewires_nothing(), "{d:?}");
        assert_eq!(d.summary(), "config reloaded: nothing changed");
    }

    #[test]
    fn each_kind_of_change_is_found() {
        let new = BASE
            .replace("address = \"127.0.0.1:0\"", "address = \"127.0.0.1:1\"")
            .replace("inputs = [\"a\"]", "inputs = [\"a\", \"b\"]")
            .replace("[sources.a]\ntype = \"stdin\"\n", "[sources.c]\ntype = \"stdin\"\n")
            .replace("inputs = [\"a\", \"b\"]", "inputs = [\"c\", \"b\"]")
            + "[sinks.more]\ntype = \"blackhole\"\n";
        let d = Diff::between(&config(BASE), &config(&new));
        assert_eq!(d.sources_removed, BTreeSet::from(["a".to_string()]));
        assert_eq!(d.sources_added, BTreeSet::from(["c".to_string()]));
        assert_eq!(d.sources_changed, BTreeSet::from(["b".to_string()]));
        assert_eq!(d.sinks_added, BTreeSet::from(["more".to_string()]));
        assert!(d.sinks_changed.is_empty(), "only inputs changed: {d:?}");
        assert!(d.inputs_changed);
    }

    #[test]
    fn a_changed_buffer_replaces_the_sink() {
        let new = BASE.replace(
            "[sinks.out]\ntype = \"stdout\"\n",
            "[sinks.out]\ntype = \"stdout\"\nbuffer.max_events = 10\n",
        );
        let d = Diff::between(&config(BASE), &config(&new));
        assert_eq!(d.sinks_changed, BTreeSet::from(["out".to_string()]));
    }

    #[test]
    fn new_enrichment_restarts_every_source() {
        let new = format!("{BASE}[enrich]\nrelease = \"2.0\"\n");
        let d = Diff::between(&config(BASE), &config(&new));
        assert_eq!(d.sources_changed.len(), 2);
        assert!(d.sinks_changed.is_empty());
    }

    #[test]
    fn api_data_dir_and_sli_changes_need_a_restart() {
        let new = BASE.replace("data_dir = \"/tmp/x\"", "data_dir = \"/tmp/y\"\n[api]\naddress = \"127.0.0.1:1\"")
            + "[[sli]]\nname = \"x\"\n[sli.error]\nfield = \"status\"\ngte = 500\n";
        let paths: Vec<String> = needs_restart(&config(BASE), &config(&new)).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["api", "data_dir", "sli"]);
        assert!(needs_restart(&config(BASE), &config(BASE)).is_empty());
    }

    #[test]
    fn changed_metrics_rules_need_a_restart() {
        let with = |name: &str| format!("{BASE}[[metrics]]\nname = \"{name}\"\nkind = \"counter\"\n");
        let paths: Vec<String> = needs_restart(&config(&with("a")), &config(&with("b")))
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(paths, ["metrics"]);
        assert!(needs_restart(&config(&with("a")), &config(&with("a"))).is_empty());
    }
}
