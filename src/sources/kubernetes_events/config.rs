//! Settings of the kubernetes_events source.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{duration, ConfigError, Validate};
use crate::sources::file::kubernetes::{DEFAULT_CA_FILE, DEFAULT_TOKEN_FILE};

/// Settings of the kubernetes_events source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesEventsConfig {
    /// API server URL; default `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub(crate) api_url: Option<String>,
    /// Bearer token file (re-read on every request).
    pub(crate) token_file: PathBuf,
    /// CA bundle that signs the API server's certificate.
    pub(crate) ca_file: PathBuf,
    /// Namespaces whose events are read; empty: every namespace.
    pub(crate) namespaces: Vec<String>,
    /// Look up the pod an event is about (GET, cached) for its labels,
    /// owner, node and release, as pod logs have them.
    pub(crate) pod_metadata: bool,
    /// How long a looked-up pod is kept.
    #[serde(deserialize_with = "duration")]
    pub(crate) pod_cache_ttl: Duration,
    /// Pod label holding the release version.
    pub(crate) release_label: String,
    /// Pod label holding the process type.
    pub(crate) process_type_label: String,
    /// Copy the pod's labels onto its events.
    pub(crate) labels: bool,
    /// Copy the pod's annotations onto its events.
    pub(crate) annotations: bool,
    /// Leader election: one reporter per cluster.
    pub(crate) leader_election: LeaderElectionConfig,
    /// How often the acknowledged resource version is written.
    #[serde(deserialize_with = "duration")]
    pub(crate) checkpoint_interval: Duration,
    /// At shutdown, how long to wait for sinks to acknowledge what was
    /// sent, for the last checkpoint.
    #[serde(deserialize_with = "duration")]
    pub(crate) drain_timeout: Duration,
}

/// The `leader_election` table: a `coordination.k8s.io/v1` Lease that one
/// instance holds; only the holder reports events.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LeaderElectionConfig {
    /// Off: this instance always reports (a single replica).
    pub(crate) enabled: bool,
    /// The Lease's name.
    pub(crate) lease_name: String,
    /// The Lease's namespace; default `$POD_NAMESPACE` (downward API).
    pub(crate) lease_namespace: Option<String>,
    /// This instance's name in the Lease; default `$POD_NAME`, else the host name.
    pub(crate) identity: Option<String>,
    /// How long a Lease not renewed keeps others from taking it.
    #[serde(deserialize_with = "duration")]
    pub(crate) lease_duration: Duration,
    /// The leader stops reporting when it could not renew for this long.
    #[serde(deserialize_with = "duration")]
    pub(crate) renew_deadline: Duration,
    /// How often the leader renews and a follower tries to acquire.
    #[serde(deserialize_with = "duration")]
    pub(crate) retry_period: Duration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        // client-go's defaults.
        LeaderElectionConfig {
            enabled: true,
            lease_name: "sluice-kubernetes-events".into(),
            lease_namespace: None,
            identity: None,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl Default for KubernetesEventsConfig {
    fn default() -> Self {
        KubernetesEventsConfig {
            api_url: None,
            token_file: DEFAULT_TOKEN_FILE.into(),
            ca_file: DEFAULT_CA_FILE.into(),
            namespaces: Vec::new(),
            pod_metadata: true,
            pod_cache_ttl: Duration::from_secs(60),
            release_label: "app.kubernetes.io/version".into(),
            process_type_label: "app.kubernetes.io/component".into(),
            labels: true,
            annotations: false,
            leader_election: LeaderElectionConfig::default(),
            checkpoint_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A DNS-1123 label, as namespace names are.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain, as Lease names are.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

impl Validate for KubernetesEventsConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if let Some(u) = &self.api_url {
            if !u.starts_with("https://") {
                errors.push(ConfigError::at(path, "api_url", format!("{u:?} must be an https:// URL")));
            }
        }
        if let Some(bad) = self.namespaces.iter().find(|n| !dns_label(n)) {
            errors.push(ConfigError::at(path, "namespaces", format!("{bad:?} is not a namespace name")));
        }
        for (key, d) in [
            ("checkpoint_interval", self.checkpoint_interval),
            ("pod_cache_ttl", self.pod_cache_ttl),
        ] {
            if d.is_zero() {
                errors.push(ConfigError::at(path, key, "must be above zero"));
            }
        }
        let le = &self.leader_election;
        if !le.enabled {
            return;
        }
        let lpath = format!("{path}.leader_election");
        if !dns_subdomain(&le.lease_name) {
            errors.push(ConfigError::at(
                &lpath,
                "lease_name",
                format!("{:?} is not a Lease name", le.lease_name),
            ));
        }
        if let Some(ns) = le.lease_namespace.as_deref().filter(|n| !dns_label(n)) {
            errors.push(ConfigError::at(
                &lpath,
                "lease_namespace",
                format!("{ns:?} is not a namespace name"),
            ));
        }
        if le.identity.as_deref().is_some_and(str::is_empty) {
            errors.push(ConfigError::at(&lpath, "identity", "must not be empty; leave it out for $POD_NAME"));
        }
        if le.retry_period.is_zero() || le.retry_period >= le.renew_deadline {
            errors.push(ConfigError::at(
                &lpath,
                "retry_period",
                "must be above zero and below renew_deadline",
            ));
        }
        if le.renew_deadline >= le.lease_duration {
            errors.push(ConfigError::at(
                &lpath,
                "renew_deadline",
                "must be below lease_duration: a leader must stop before another may start",
            ));
        }
        if le.lease_duration < Duration::from_secs(1) {
            errors.push(ConfigError::at(
                &lpath,
                "lease_duration",
                "must be at least 1s (the Lease counts whole seconds)",
            ));
        }
    }
}

impl KubernetesEventsConfig {
    /// The API URL, from the setting or the in-cluster environment.
    pub(crate) fn resolved_api_url(&self) -> Option<String> {
        crate::sources::file::kubernetes::KubernetesConfig {
            api_url: self.api_url.clone(),
            ..Default::default()
        }
        .resolved_api_url()
    }
}

impl LeaderElectionConfig {
    /// The Lease's namespace, from the setting or `POD_NAMESPACE`.
    pub(crate) fn resolved_namespace(&self) -> Option<String> {
        self.lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .filter(|n| !n.is_empty())
    }

    /// This instance's identity: the setting, `POD_NAME`, or the host name.
    pub(crate) fn resolved_identity(&self) -> Option<String> {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .filter(|n| !n.is_empty())
            .or_else(crate::enrich::host_name)
    }
}

#[cfg(test)]
mod tests {
    use crate::topology::{Config, Format};

    fn parse(extra: &str) -> Result<super::KubernetesEventsConfig, Vec<String>> {
        let text = format!("data_dir = \"/tmp/k\"\n[sources.k]\ntype = \"kubernetes_events\"\n{extra}\n[sinks.out]\ntype = \"stdout\"\n");
        match Config::from_str(&text, Format::Toml, &|_| None) {
            Ok(c) => match &c.sources["k"] {
                crate::sources::SourceConfig::KubernetesEvents(k) => Ok((**k).clone()),
                _ => panic!("not kubernetes_events"),
            },
            Err(e) => Err(e.0.into_iter().map(|e| e.path).collect()),
        }
    }

    #[test]
    fn kubernetes_events_settings_are_checked_with_key_paths() {
        let errs = parse(
            "api_url = \"http://x\"\nnamespaces = [\"Shop\"]\ncheckpoint_interval = \"0s\"\n\
             [sources.k.leader_election]\nlease_name = \"a/b\"\nlease_duration = \"5s\"\nrenew_deadline = \"6s\"\nretry_period = \"0s\"",
        )
        .unwrap_err();
        for want in [
            "sources.k.api_url",
            "sources.k.namespaces",
            "sources.k.checkpoint_interval",
            "sources.k.leader_election.lease_name",
            "sources.k.leader_election.renew_deadline",
            "sources.k.leader_election.retry_period",
        ] {
            assert!(errs.iter().any(|e| e == want), "missing {want} in {errs:?}");
        }
        let ok = parse("namespaces = [\"shop\", \"kube-system\"]").unwrap();
        assert!(ok.leader_election.enabled);
        assert_eq!(ok.leader_election.lease_duration, std::time::Duration::from_secs(15));
    }
}
