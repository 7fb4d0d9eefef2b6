//! `type = "kubernetes_events"`: the cluster's `events.k8s.io/v1` Events
//! (OOM kills, failed scheduling, image pull back-offs), listed then
//! watched, each one event with the object it is about in the `kubernetes`
//! metadata pod logs have. One instance per cluster reports, chosen through
//! a Lease ([`lease`]), so that a DaemonSet does not send each Event once
//! per node; the acknowledged resource version is checkpointed, so a
//! restart resumes without gaps.

mod config;
mod event;
mod lease;
mod source;

pub use config::KubernetesEventsConfig;

use super::{SourceComponent, SourceCx, SourceError, SourceErrorKind};
use crate::sources::file::kubernetes::ApiClient;
use crate::sources::journald::cursor::CursorFile;

impl SourceComponent for KubernetesEventsConfig {
    /// Sets up the API client, the election and each collection's
    /// checkpoint; the task lists and watches once this instance leads.
    fn build(&self, cx: SourceCx) -> Result<crate::pipeline::Task<SourceError>, SourceError> {
        let setting = |key: &'static str, message: &str| {
            SourceError::new(
                &cx.name,
                SourceErrorKind::Setting {
                    key,
                    message: message.into(),
                },
            )
        };
        let data_dir = cx.data_dir.clone().ok_or_else(|| {
            setting(
                "data_dir",
                "not set: the kubernetes_events source keeps its resource version in <data_dir>/kubernetes_events/<source>; set `data_dir` in the config or SLUICE_DATA_DIR",
            )
        })?;
        let url = self.resolved_api_url().ok_or_else(|| {
            setting(
                "api_url",
                "needs the API server: set api_url or run in a pod (KUBERNETES_SERVICE_HOST)",
            )
        })?;
        let api = ApiClient::new(url, &self.ca_file, self.token_file.clone()).map_err(|e| SourceError::new(&cx.name, e))?;
        let le = &self.leader_election;
        let elector = if le.enabled {
            let ns = le.resolved_namespace().ok_or_else(|| {
                setting(
                    "leader_election.lease_namespace",
                    "not set: set it, or POD_NAMESPACE from the downward API (metadata.namespace)",
                )
            })?;
            let identity = le.resolved_identity().ok_or_else(|| {
                setting(
                    "leader_election.identity",
                    "not set: set it, or POD_NAME from the downward API (metadata.name)",
                )
            })?;
            tracing::info!(source = %cx.name, lease = %le.lease_name, namespace = %ns, %identity, "campaigning for the Lease");
            Some(lease::Elector::new(api.clone(), le.clone(), ns, identity, cx.name.clone()))
        } else {
            None
        };
        let keys: Vec<String> = if self.namespaces.is_empty() {
            vec!["*".into()]
        } else {
            self.namespaces.clone()
        };
        let mut streams = Vec::new();
        for key in keys {
            let dir_name = if key == "*" { "_all" } else { key.as_str() };
            let file = CursorFile::new(data_dir.join("kubernetes_events").join(&*cx.name).join(dir_name))
                .map_err(|e| SourceError::new(&cx.name, SourceErrorKind::Checkpoint(e)))?;
            let loaded = file.load();
            if let Some((aside, reason)) = &loaded.set_aside {
                tracing::warn!(source = %cx.name, path = %aside.display(), %reason, "the resource version checkpoint was damaged and set aside; listing from the start");
            }
            if let Some(rv) = &loaded.cursor {
                tracing::info!(source = %cx.name, collection = %key, resource_version = %rv, "resuming after the acknowledged resource version");
            }
            streams.push(source::Stream {
                path: source::Stream::path_of(&key),
                key,
                file,
                start: loaded.cursor,
            });
        }
        Ok(Box::pin(source::run(self.clone(), cx, api, streams, elector)))
    }

    /// The resource version lives under `data_dir`.
    fn needs_data_dir(&self) -> bool {
        true
    }
}

/// Entry points for the fuzz target (`fuzz/fuzz_targets/kubernetes_events.rs`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    use crate::sources::file::kubernetes::{parse_watch_line, KubernetesConfig, PodInfo, WatchEvent};

    /// Reads `data` as watch stream lines and renders every object, with
    /// itself read as the pod too: never a panic, and every rendered event
    /// is one line holding a JSON object.
    pub fn watch_lines(data: &[u8]) {
        for line in data.split(|b| *b == b'\n') {
            let Some(WatchEvent::Object(_, obj)) = parse_watch_line(line) else {
                continue;
            };
            let _ = super::event::regarding_pod(&obj);
            let pod = PodInfo::from_json(&obj);
            let mut out = Vec::new();
            if super::event::render(&obj, pod.as_ref(), &KubernetesConfig::default(), &mut out).is_ok() {
                assert!(!out.contains(&b'\n'), "one line");
                let v: serde_json::Value = serde_json::from_slice(&out).expect("a rendered event is JSON");
                assert!(v.is_object());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The fuzz target's seeds, cut at every length and with each byte
    /// flipped: never a panic, every rendered event one JSON object.
    #[test]
    fn every_cut_and_flip_of_the_fuzz_seeds_renders_or_is_skipped() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/kubernetes_events");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let seed = std::fs::read(entry.unwrap().path()).unwrap();
            seeds += 1;
            for n in 0..=seed.len() {
                super::fuzzing::watch_lines(&seed[..n]);
            }
            for i in 0..seed.len() {
                for mask in [0x01u8, 0x20, 0x80] {
                    let mut v = seed.clone();
                    v[i] ^= mask;
                    super::fuzzing::watch_lines(&v);
                }
            }
        }
        assert!(seeds >= 2);
    }
}
