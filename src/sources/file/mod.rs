//! `type = "file"`: tails files and container logs on a node.
//!
//! A scanner thread finds files by glob, tells new files from rotated and
//! renamed ones by fingerprint, hands new files to reader threads and
//! writes checkpoints; reader threads (`tailer`) read the files fairly and
//! send their lines into the pipeline. A file's checkpoint moves only over
//! lines every sink acknowledged, so delivery is at-least-once across
//! rotations, crashes and restarts.
//!
//! Checkpoints live in `<data_dir>/file/<source name>/checkpoints.json`; a
//! file source without `data_dir` is rejected at start.

pub mod checkpoint;
pub(crate) mod config;
pub(crate) mod discovery;
pub mod fingerprint;
pub(crate) mod kubernetes;
pub(crate) mod metrics;
mod shared;
mod tailer;

pub(crate) use config::{FileConfig, ReadFrom};

use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use self::checkpoint::{Checkpointer, Entry};
use self::discovery::{Found, Globs};
use self::fingerprint::{is_compressed, read_at, tail_hash, FileKey, FileStat, Fingerprint, TAIL_BYTES};
use self::kubernetes::{KubernetesConfig, PodCache, PodWatcher};
use self::metrics::FileMetrics;
use self::shared::{Disposal, Registry, Shared};
use self::tailer::{NewFile, Reader, ReaderCx};
use super::{SourceComponent, SourceCx, SourceError, SourceErrorKind};
use crate::enrich::SourceContext;
use crate::pipeline::{ShutdownSignal, Task};

/// How long truncated files' heads are remembered to recognise their
/// rotated copies.
const RETIRED_FOR: Duration = Duration::from_secs(120);

/// Builds each file's [`SourceContext`]: the collector's metadata, plus
/// Kubernetes metadata from the path and the pod cache when enabled.
pub(crate) struct ContextFactory {
    source: Arc<str>,
    base: Map<String, Value>,
    kube: Option<KubernetesConfig>,
    cache: Option<Arc<PodCache>>,
    /// The source's `multiline` rules, compiled once.
    multiline: Option<Arc<crate::multiline::config::Compiled>>,
}

/// The pod annotation that picks a multiline preset for a pod's containers.
pub(crate) const MULTILINE_ANNOTATION: &str = "sluice.dev/multiline";

impl ContextFactory {
    /// Changes whenever the pod cache does.
    pub(crate) fn generation(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.generation())
    }

    /// The context of the file at `path`.
    pub(crate) fn context(&self, path: &Path) -> Arc<SourceContext> {
        let meta = match (&self.kube, self.pod_of(path)) {
            (Some(k), Some((pm, pod))) => {
                let mut meta = kubernetes::metadata(&self.base, k, &pm, pod.as_deref());
                if let Some(cache) = &self.cache {
                    kubernetes::add_cluster_metadata(&mut meta, k, cache, &pm.namespace);
                }
                meta
            }
            _ => self.base.clone(),
        };
        Arc::new(SourceContext::new(self.source.clone(), "file", path.display().to_string(), meta))
    }

    /// The Kubernetes path metadata of the file at `path`, and its pod when
    /// the pod cache knows it; `None` without Kubernetes metadata.
    fn pod_of(&self, path: &Path) -> Option<(kubernetes::PathMeta, Option<Arc<kubernetes::PodInfo>>)> {
        self.kube.as_ref()?;
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let pm = kubernetes::path_meta(&real).or_else(|| kubernetes::path_meta(path))?;
        let pod = self.cache.as_ref().and_then(|c| c.lookup(&pm));
        Some((pm, pod))
    }

    /// The multiline rules of the file at `path`: its pod's
    /// `sluice.dev/multiline` annotation (a preset name) when the pod cache
    /// knows one, else the source's `multiline`. The string says which
    /// was chosen, to notice a change.
    pub(crate) fn multiline(&self, path: &Path) -> (Option<Arc<crate::multiline::config::Compiled>>, Option<String>) {
        let annotated = self.cache.as_ref().and_then(|_| {
            let (_, pod) = self.pod_of(path)?;
            pod?.annotations.get(MULTILINE_ANNOTATION)?.as_str().map(str::to_owned)
        });
        match annotated {
            Some(name) => match crate::multiline::MultilineConfig::preset(&name).compile() {
                Ok(c) => (Some(c), Some(name)),
                Err(_) => {
                    tracing::warn!(source = %self.source, path = %path.display(), preset = %name, "unknown multiline preset in the pod annotation {MULTILINE_ANNOTATION}; using the source's setting");
                    (self.multiline.clone(), None)
                }
            },
            None => (self.multiline.clone(), None),
        }
    }
}

impl SourceComponent for FileConfig {
    /// Checkpoints live under `data_dir`.
    fn needs_data_dir(&self) -> bool {
        true
    }

    /// Starts the scanner and reader threads (and the pod watcher when the
    /// Kubernetes API is enabled). The task ends at shutdown, or with
    /// `stop_at_eof` once every file was read to its end, after the final
    /// checkpoint is written.
    fn build(&self, cx: SourceCx) -> Result<Task<SourceError>, SourceError> {
        let name = cx.name.clone();
        let fatal = |kind: SourceErrorKind| SourceError::new(&name, kind);
        let setting = |key, message: &str| {
            fatal(SourceErrorKind::Setting {
                key,
                message: message.into(),
            })
        };
        let data_dir = cx.data_dir.clone().ok_or_else(|| {
            setting("data_dir", "not set: the file source keeps its checkpoints in <data_dir>/file/<source>; set `data_dir` in the config or SLUICE_DATA_DIR")
        })?;
        let checkpointer = Checkpointer::new(data_dir.join("file").join(&*cx.name)).map_err(|e| fatal(e.into()))?;
        let globs = Globs::new(&self.include, &self.exclude).map_err(|e| fatal(e.into()))?;
        let cfg = Arc::new(self.with_descriptor_limit(&name));
        let handle = tokio::runtime::Handle::current();

        let base = cx.enrich.metadata(None);
        let (kube, cache) = if self.kubernetes.enabled {
            let cache = if self.kubernetes.api {
                let node = self.kubernetes.resolved_node_name().ok_or_else(|| {
                    setting(
                        "kubernetes.api",
                        "needs the node name: set kubernetes.node_name or NODE_NAME (downward API)",
                    )
                })?;
                let url = self.kubernetes.resolved_api_url().ok_or_else(|| {
                    setting(
                        "kubernetes.api",
                        "needs the API server: set kubernetes.api_url or run in a pod (KUBERNETES_SERVICE_HOST)",
                    )
                })?;
                let cache = Arc::new(PodCache::default());
                let watcher = PodWatcher::new(&self.kubernetes, url, node, cache.clone(), name.clone()).map_err(|e| fatal(e.into()))?;
                // Shared while the watcher runs: a prometheus_scrape
                // source labels the same pods from the same cache.
                let shared = Arc::new(kubernetes::SharedPods {
                    config: self.kubernetes.clone(),
                    cache: cache.clone(),
                });
                kubernetes::share_pods(&name, &shared);
                let shutdown = cx.shutdown.clone();
                handle.spawn(async move {
                    watcher.run(shutdown).await;
                    drop(shared);
                });
                Some(cache)
            } else {
                None
            };
            (Some(self.kubernetes.clone()), cache)
        } else {
            (None, None)
        };
        let multiline = match &self.multiline {
            Some(m) => Some(super::compile_multiline(m, &name)?),
            None => None,
        };
        let contexts = Arc::new(ContextFactory {
            source: name.clone(),
            base,
            kube,
            cache: cache.clone(),
            multiline,
        });

        let registry = Arc::new(Mutex::new(Registry::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for i in 0..cfg.reader_threads() {
            let (tx, rx) = mpsc::channel();
            let reader = Reader::new(ReaderCx {
                source: name.clone(),
                cfg: cfg.clone(),
                output: Some(cx.output.clone()),
                handle: handle.clone(),
                shutdown: cx.shutdown.clone(),
                stop: stop.clone(),
                registry: registry.clone(),
                contexts: contexts.clone(),
                started,
            });
            let t = std::thread::Builder::new()
                .name(format!("sluice-file-{i}"))
                .spawn(move || reader.run(rx))
                .map_err(|error| {
                    fatal(SourceErrorKind::Io {
                        action: "start a reader thread",
                        error,
                    })
                })?;
            senders.push(tx);
            threads.push(t);
        }
        drop(cx.output);
        let scanner = Scanner {
            source: name.clone(),
            cfg,
            globs,
            checkpointer,
            registry,
            dormant: Vec::new(),
            first_start: true,
            scans: 0,
            senders,
            load: Vec::new(),
            assigned: HashMap::new(),
            ignored: HashMap::new(),
            tails: HashMap::new(),
            last_written: None,
            stop,
            shutdown: cx.shutdown,
            cache,
            started,
            waiting_since: HashMap::new(),
            first_keys: HashSet::new(),
            completed: HashSet::new(),
            born: HashMap::new(),
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("sluice-file-scan".into())
            .spawn(move || {
                let _ = done_tx.send(scanner.run(threads));
            })
            .map_err(|error| {
                fatal(SourceErrorKind::Io {
                    action: "start the scanner thread",
                    error,
                })
            })?;
        Ok(Box::pin(async move {
            done_rx
                .await
                .unwrap_or_else(|_| Err(SourceError::new(&name, SourceErrorKind::ThreadDied("scanner"))))
        }))
    }
}

/// A file a scan found that is not tracked yet.
struct Candidate {
    found: Found,
    file: File,
    head: Vec<u8>,
    /// Index into the dormant entries it continues.
    entry: Option<usize>,
}

/// The scanner thread: discovery, identity, assignment, checkpoints.
struct Scanner {
    source: Arc<str>,
    cfg: Arc<FileConfig>,
    globs: Globs,
    checkpointer: Checkpointer,
    registry: Arc<Mutex<Registry>>,
    /// Checkpoint entries of files not open: loaded at start, or closed to
    /// make room. Matched against files found by later scans.
    dormant: Vec<Entry>,
    /// No checkpoint file existed: `read_from` applies to the first scan.
    first_start: bool,
    scans: u64,
    senders: Vec<mpsc::Sender<NewFile>>,
    /// Files per reader, and which reader each file went to.
    load: Vec<usize>,
    assigned: HashMap<u64, usize>,
    /// Compressed files, with the size they were judged at.
    ignored: HashMap<FileKey, u64>,
    /// Tail hash per (file id) at the offset it was computed for.
    tails: HashMap<u64, (u64, u64)>,
    last_written: Option<Vec<Entry>>,
    stop: Arc<AtomicBool>,
    shutdown: ShutdownSignal,
    cache: Option<Arc<PodCache>>,
    started: Instant,
    /// Since when each file found but not open has been waiting for a slot.
    waiting_since: HashMap<FileKey, Instant>,
    /// With `stop_at_eof`: files of the first scan, and those finished.
    first_keys: HashSet<FileKey>,
    completed: HashSet<FileKey>,
    /// Per path a file was found at: the birth time of the newest file
    /// known there, and when that path was last seen. A file born at a
    /// path later than that and earlier than the file found there now was
    /// a generation no scan saw ([`Scanner::unseen_generations`]).
    born: HashMap<PathBuf, (u64, Instant)>,
}

impl Scanner {
    fn run(mut self, threads: Vec<std::thread::JoinHandle<()>>) -> Result<(), SourceError> {
        self.load = vec![0; self.senders.len()];
        let loaded = self.checkpointer.load();
        let m = FileMetrics::get();
        if let Some((aside, reason)) = &loaded.set_aside {
            m.checkpoint_errors.with_label_values(&[&self.source, "corrupt"]).inc();
            tracing::error!(source = %self.source, checkpoint = %self.checkpointer.path().display(), moved_to = %aside.display(), reason = %reason,
                "checkpoint file is corrupt; set aside, files are read again from their start (expect duplicates)");
        }
        self.first_start = !loaded.existed;
        self.dormant = loaded.entries;
        if let Some(cache) = &self.cache {
            let deadline = Instant::now() + self.cfg.kubernetes.initial_sync_timeout;
            while !cache.synced() && Instant::now() < deadline && !self.shutdown.is_set() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !cache.synced() {
                tracing::warn!(source = %self.source, "no pod list from the Kubernetes API yet; reading with path metadata only until it arrives");
            }
        }
        let mut next_scan = Instant::now();
        let mut next_checkpoint = Instant::now() + self.cfg.checkpoint_interval;
        loop {
            if self.shutdown.is_set() {
                break;
            }
            let now = Instant::now();
            if now >= next_scan {
                self.scan();
                next_scan = now + self.cfg.scan_interval;
            }
            self.collect_done();
            if now >= next_checkpoint {
                self.write_checkpoint();
                next_checkpoint = now + self.cfg.checkpoint_interval;
            }
            if self.cfg.stop_at_eof && self.scans > 0 && self.stop_at_eof_done() {
                self.stop.store(true, Ordering::Release);
                break;
            }
            let wake = next_scan.min(next_checkpoint).saturating_duration_since(Instant::now());
            std::thread::sleep(wake.clamp(Duration::from_millis(1), Duration::from_millis(50)));
        }
        self.senders.clear();
        for t in threads {
            let _ = t.join();
        }
        self.collect_done();
        self.write_checkpoint();
        Ok(())
    }

    fn stop_at_eof_done(&self) -> bool {
        let reg = Shared::lock(&self.registry);
        reg.files.is_empty()
            && self
                .first_keys
                .iter()
                .all(|k| self.completed.contains(k) || self.ignored.contains_key(k))
    }

    fn scan(&mut self) {
        self.scans += 1;
        let found = self.globs.scan();
        let reg_arc = self.registry.clone();
        let mut reg = Shared::lock(&reg_arc);
        let now = Instant::now();
        reg.retired.retain(|r| now.duration_since(r.at) < RETIRED_FOR);

        // Renames within the globs, and files whose path now leads
        // elsewhere (rotated) or nowhere (deleted).
        let by_key: HashMap<FileKey, &Found> = found.iter().map(|f| (f.stat.key, f)).collect();
        for s in reg.files.values() {
            if s.disposal().is_some() || !s.checkpointable.load(Ordering::Acquire) {
                continue;
            }
            match by_key.get(&s.key) {
                Some(f) => {
                    let mut p = Shared::lock(&s.path);
                    if *p != f.path {
                        tracing::debug!(source = %self.source, from = %p.display(), to = %f.path.display(), "file renamed");
                        *p = f.path.clone();
                        s.renamed.store(true, Ordering::Release);
                    }
                    s.rotated.store(false, Ordering::Release);
                    drop(p);
                    // An append-only file never changes its first bytes; if
                    // they did, it was truncated and written again (possibly
                    // past the read offset, which a size check misses).
                    let head = Shared::lock(&s.head).clone();
                    if !head.is_empty() && read_at(&s.file, 0, head.len()).is_ok_and(|now| now != head) {
                        s.rewritten.store(true, Ordering::Release);
                    }
                }
                None => {
                    let at_path = FileStat::of_path(&s.path()).map(|st| st.key).ok();
                    s.rotated.store(at_path != Some(s.key), Ordering::Release);
                    if at_path.is_some_and(|k| k != s.key) {
                        s.renamed.store(true, Ordering::Release);
                    }
                }
            }
        }
        if self.scans == 1 {
            self.first_keys = found.iter().map(|f| f.stat.key).collect();
        }
        // The paths of files already known stay remembered while they are
        // there ([`Scanner::unseen_generations`]).
        let tracked = found.iter().filter(|f| reg.tracks(&f.stat.key)).map(|f| (&f.path, f.stat.btime));
        for (path, btime) in tracked.chain(self.dormant.iter().map(|e| (&e.path, e.btime))) {
            note_birth(&mut self.born, path, btime, now);
        }

        let fp_len = self.cfg.fingerprint_bytes.0 as usize;
        // Only as many candidates are opened as there are free slots, so a
        // scan never spends descriptors on files that must wait anyway (a
        // descriptor limit below the number of files would otherwise let
        // the same few files take every free descriptor, scan after scan).
        // Files with unread bytes go first, then the longest waiting.
        let now = Instant::now();
        let seen: HashMap<FileKey, u64> = self.dormant.iter().map(|e| (e.key(), e.offset)).collect();
        let mut found = found;
        found.sort_by_key(|f| {
            let caught_up = seen.get(&f.stat.key).is_some_and(|&offset| offset >= f.stat.size);
            (caught_up, self.waiting_since.get(&f.stat.key).copied().unwrap_or(now))
        });
        let free = self.cfg.max_open_files.saturating_sub(reg.open_count());
        let mut deferred: HashSet<FileKey> = HashSet::new();
        let mut cands: Vec<Candidate> = Vec::new();
        for f in found {
            let key = f.stat.key;
            if reg.tracks(&key) || self.completed.contains(&key) {
                continue;
            }
            if self.cfg.stop_at_eof && !self.first_keys.contains(&key) {
                continue;
            }
            if let Some(&size) = reg.shadows.get(&key) {
                if size == f.stat.size {
                    continue;
                }
                reg.shadows.remove(&key);
            }
            if self.ignored.get(&key) == Some(&f.stat.size) {
                continue;
            }
            if f.stat.size == 0 {
                // Nothing to read yet, and possibly a copy being made.
                continue;
            }
            if cands.len() >= free {
                deferred.insert(key);
                continue;
            }
            let file = match File::open(&f.path) {
                Ok(file) => file,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    deferred.insert(key);
                    continue;
                }
                Err(_) => continue,
            };
            let Ok(head) = read_at(&file, 0, fp_len) else { continue };
            if is_compressed(&f.path, &head) {
                self.ignored.insert(key, f.stat.size);
                continue;
            }
            cands.push(Candidate {
                found: f,
                file,
                head,
                entry: None,
            });
        }

        // Identity: the same inode with the same content continues its
        // entry; then a full fingerprint with the same tail continues an
        // entry whose inode is gone (a copy, or a rotation while stopped).
        let mut used = vec![false; self.dormant.len()];
        for c in cands.iter_mut() {
            for (i, e) in self.dormant.iter().enumerate() {
                if !used[i]
                    && e.key() == c.found.stat.key
                    && same_birth(e.btime, c.found.stat.btime)
                    && continues(e, &c.file, &c.head, c.found.stat.size)
                {
                    c.entry = Some(i);
                    used[i] = true;
                    break;
                }
            }
        }
        for c in cands.iter_mut().filter(|c| c.entry.is_none()) {
            for (i, e) in self.dormant.iter().enumerate() {
                if !used[i] && e.fingerprint_len as usize == fp_len && continues(e, &c.file, &c.head, c.found.stat.size) {
                    c.entry = Some(i);
                    used[i] = true;
                    break;
                }
            }
        }
        // Copies of live files (copytruncate at work) are not read twice.
        cands.retain(|c| {
            if c.entry.is_none() && is_shadow(c, &reg) {
                reg.shadows.insert(c.found.stat.key, c.found.stat.size);
                false
            } else {
                true
            }
        });
        // Entries no found file continues: their file was rotated out of
        // the globs (or deleted) while it was not open. Look for it next to
        // where it was, finish it if found, else forget it.
        let claimed: HashSet<FileKey> = cands.iter().map(|c| c.found.stat.key).collect();
        let mut finishing: Vec<(Candidate, usize)> = Vec::new();
        for (i, e) in self.dormant.iter().enumerate() {
            if used[i] {
                continue;
            }
            if deferred.contains(&e.key()) {
                used[i] = true; // found, waiting for a slot
                continue;
            }
            if FileStat::of_path(&e.path).is_ok_and(|st| st.key == e.key() && st.size == 0) {
                used[i] = true; // still there, still empty
                continue;
            }
            if let Some(c) = find_sibling(e, &reg, &claimed, fp_len) {
                used[i] = true;
                finishing.push((c, i));
            }
        }
        let mut keep_dormant: Vec<bool> = used.clone();
        let unseen = self.unseen_generations(&cands, &reg, fp_len);

        let cap = self.cfg.max_open_files;
        let mut open = reg.open_count();
        let mut waiting = 0usize;
        let mut to_send: Vec<(Arc<Shared>, bool)> = Vec::new();
        for (c, i) in finishing {
            let e = &self.dormant[i];
            tracing::info!(source = %self.source, path = %c.found.path.display(), was = %e.path.display(), offset = e.offset, "found a rotated file by fingerprint; finishing it");
            FileMetrics::get().resumed.with_label_values(&[&self.source]).inc();
            let s = reg.add(
                c.file,
                c.found.stat.key,
                c.found.stat.btime,
                c.found.path,
                c.head,
                e.offset,
                e.offset,
            );
            keep_dormant[i] = false;
            open += 1;
            to_send.push((s, true));
        }
        for c in unseen {
            tracing::info!(source = %self.source, path = %c.found.path.display(), "found a rotated file that no scan saw at its path; reading it whole");
            FileMetrics::get().rotations.with_label_values(&[&self.source, "unseen"]).inc();
            let s = reg.add(c.file, c.found.stat.key, c.found.stat.btime, c.found.path, c.head, 0, 0);
            open += 1;
            to_send.push((s, true));
        }
        // Waiting files take turns: those with unread bytes first, then the
        // longest waiting. A file closed to make room waits from then on.
        let keys: HashSet<FileKey> = cands.iter().map(|c| c.found.stat.key).chain(deferred.iter().copied()).collect();
        self.waiting_since.retain(|k, _| keys.contains(k));
        for k in keys {
            self.waiting_since.entry(k).or_insert(now);
        }
        let dormant = &self.dormant;
        let since = &self.waiting_since;
        cands.sort_by_key(|c| {
            let caught_up = c.entry.is_some_and(|i| dormant[i].offset >= c.found.stat.size);
            (caught_up, since.get(&c.found.stat.key).copied())
        });
        for c in cands {
            if open >= cap {
                waiting += 1;
                continue;
            }
            let start = match c.entry {
                Some(i) => {
                    keep_dormant[i] = false;
                    self.dormant[i].offset
                }
                None if self.first_start && self.scans == 1 && self.cfg.read_from == ReadFrom::End => c.found.stat.size,
                None => 0,
            };
            self.waiting_since.remove(&c.found.stat.key);
            note_birth(&mut self.born, &c.found.path, c.found.stat.btime, now);
            let s = reg.add(c.file, c.found.stat.key, c.found.stat.btime, c.found.path, c.head, start, start);
            open += 1;
            to_send.push((s, false));
        }
        let mut i = 0;
        self.dormant.retain(|_| {
            i += 1;
            keep_dormant[i - 1]
        });
        let waiting = waiting + deferred.len();
        let m = FileMetrics::get();
        m.waiting_files.with_label_values(&[&self.source]).set(waiting as i64);
        if waiting > 0 {
            self.park_idle(&reg, waiting);
        }
        drop(reg);
        for (s, finishing) in to_send {
            self.dispatch(s, finishing);
        }
        m.open_files.with_label_values(&[&self.source]).set(open as i64);
    }

    /// Rotated files that no scan saw: for each new file found at a path
    /// where an older file was known, the files next to it, named after
    /// it (`0.log.20240501-100000`, `app.log.1`, `app.log-20240501`),
    /// outside the globs, born after the file known there and before the
    /// new one. Each was created at that path and rotated away between
    /// two scans (a fast rotation, or while sluice was stopped), so it is
    /// read whole. A compressed one cannot be. Paths not seen for
    /// [`RETIRED_FOR`] are forgotten.
    fn unseen_generations(&mut self, cands: &[Candidate], reg: &Registry, fp_len: usize) -> Vec<Candidate> {
        let now = Instant::now();
        self.born.retain(|_, (_, seen)| now.duration_since(*seen) < RETIRED_FOR);
        // New files at a remembered path, born after the file known there:
        // (file, born before it, born with it). Usually none.
        let born = &self.born;
        let newer: Vec<(&Candidate, u64, u64)> = cands
            .iter()
            .filter(|c| c.entry.is_none())
            .filter_map(|c| {
                let (&(before, _), after) = (born.get(&c.found.path)?, c.found.stat.btime?);
                (after > before).then_some((c, before, after))
            })
            .collect();
        if newer.is_empty() {
            return Vec::new();
        }
        let known: HashSet<FileKey> = cands
            .iter()
            .map(|c| c.found.stat.key)
            .chain(self.dormant.iter().map(Entry::key))
            .collect();
        let mut out: Vec<Candidate> = Vec::new();
        for (c, before, after) in newer {
            let (Some(dir), Some(name)) = (c.found.path.parent(), c.found.path.file_name()) else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for d in entries.flatten() {
                let path = d.path();
                let rotated_name = d
                    .file_name()
                    .as_encoded_bytes()
                    .strip_prefix(name.as_encoded_bytes())
                    .is_some_and(|rest| matches!(rest.first(), Some(b'.' | b'-' | b'_')));
                if !rotated_name || self.globs.matches(&path) {
                    continue;
                }
                let Ok(stat) = FileStat::of_path(&path) else { continue };
                let born_between = stat.btime.is_some_and(|b| before < b && b < after);
                if !stat.regular
                    || !born_between
                    || stat.size == 0
                    || reg.tracks(&stat.key)
                    || known.contains(&stat.key)
                    || out.iter().any(|o| o.found.stat.key == stat.key)
                {
                    continue;
                }
                out.extend(sibling_candidate(path, stat, fp_len));
            }
        }
        out
    }

    /// Asks readers to close the files idle longest so waiting ones can
    /// be opened.
    fn park_idle(&self, reg: &Registry, waiting: usize) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let mut idle: Vec<(u64, &Arc<Shared>)> = reg
            .files
            .values()
            .filter(|s| s.disposal().is_none() && !s.park.load(Ordering::Acquire))
            .filter_map(|s| {
                let since = s.idle_since_ms.load(Ordering::Acquire);
                (since > 0 && now_ms.saturating_sub(since) >= 1000).then_some((since, s))
            })
            .collect();
        idle.sort_by_key(|(since, _)| *since);
        for (_, s) in idle.into_iter().take(waiting) {
            s.park.store(true, Ordering::Release);
        }
    }

    fn dispatch(&mut self, s: Arc<Shared>, finishing: bool) {
        let Some((idx, _)) = self.load.iter().enumerate().min_by_key(|(_, l)| **l) else {
            return;
        };
        self.load[idx] += 1;
        self.assigned.insert(s.id, idx);
        let _ = self.senders[idx].send(NewFile { shared: s, finishing });
    }

    /// Takes files the readers are done with out of the registry: entries
    /// of parked files go dormant, finished files are forgotten.
    fn collect_done(&mut self) {
        let reg_arc = self.registry.clone();
        let mut reg = Shared::lock(&reg_arc);
        let done: Vec<Arc<Shared>> = reg.files.values().filter(|s| s.disposal().is_some()).cloned().collect();
        for s in done {
            reg.remove(s.id);
            if let Some(r) = self.assigned.remove(&s.id) {
                self.load[r] = self.load[r].saturating_sub(1);
            }
            if self.cfg.stop_at_eof {
                self.completed.insert(s.key);
            }
            if s.disposal() == Some(Disposal::Keep) && s.checkpointable.load(Ordering::Acquire) {
                if let Some(e) = self.entry_for(&s) {
                    self.dormant.push(e);
                }
            }
            self.tails.remove(&s.id);
            if self.cfg.metrics_per_file {
                let p = s.path().to_string_lossy().into_owned();
                let m = FileMetrics::get();
                let _ = m.path_bytes_read.remove_label_values(&[&*self.source, p.as_str()]);
                let _ = m.path_lag_bytes.remove_label_values(&[&*self.source, p.as_str()]);
            }
        }
        FileMetrics::get()
            .open_files
            .with_label_values(&[&self.source])
            .set(reg.open_count() as i64);
    }

    /// The checkpoint entry of a tracked file at its acknowledged offset.
    fn entry_for(&mut self, s: &Shared) -> Option<Entry> {
        let acked = shared::load(&s.acked);
        let tail = match self.tails.get(&s.id) {
            Some(&(off, t)) if off == acked => t,
            _ => {
                let t = tail_hash(&s.file, acked)?;
                self.tails.insert(s.id, (acked, t));
                t
            }
        };
        let head = Shared::lock(&s.head);
        let fp = Fingerprint::of(&head);
        Some(Entry {
            path: s.path(),
            dev: s.key.dev,
            ino: s.key.ino,
            btime: s.btime,
            fingerprint: fp.hash,
            fingerprint_len: fp.len,
            offset: acked,
            tail,
        })
    }

    fn write_checkpoint(&mut self) {
        let reg_arc = self.registry.clone();
        let live: Vec<Arc<Shared>> = Shared::lock(&reg_arc).files.values().cloned().collect();
        let mut entries = Vec::with_capacity(live.len() + self.dormant.len());
        let mut lag = 0u64;
        let m = FileMetrics::get();
        for s in &live {
            let (read, acked) = (shared::load(&s.read), shared::load(&s.acked));
            lag += read.saturating_sub(acked);
            if self.cfg.metrics_per_file {
                m.path_lag_bytes
                    .with_label_values(&[&*self.source, &*s.path().to_string_lossy()])
                    .set(read.saturating_sub(acked) as i64);
            }
            if s.disposal() == Some(Disposal::Forget) || !s.checkpointable.load(Ordering::Acquire) {
                continue;
            }
            if let Some(e) = self.entry_for(s) {
                entries.push(e);
            }
        }
        m.lag_bytes.with_label_values(&[&self.source]).set(lag as i64);
        entries.extend(self.dormant.iter().cloned());
        entries.sort_by(|a, b| (a.dev, a.ino, &a.path).cmp(&(b.dev, b.ino, &b.path)));
        if self.last_written.as_ref() == Some(&entries) {
            return;
        }
        match self.checkpointer.save(&entries) {
            Ok(()) => {
                m.checkpoint_writes.with_label_values(&[&self.source]).inc();
                self.last_written = Some(entries);
            }
            Err(e) => {
                m.checkpoint_errors.with_label_values(&[&self.source, "write"]).inc();
                tracing::error!(source = %self.source, error = %e, "checkpoint not written; retrying at the next interval");
            }
        }
    }
}

/// Records that a file born at `btime` (when the file system says) was
/// found at `path`, now. Called for every known file at every scan, so
/// a path already remembered is not copied again.
fn note_birth(born: &mut HashMap<PathBuf, (u64, Instant)>, path: &Path, btime: Option<u64>, now: Instant) {
    let Some(btime) = btime else { return };
    match born.get_mut(path) {
        Some(slot) => *slot = (slot.0.max(btime), now),
        None => {
            born.insert(path.to_path_buf(), (btime, now));
        }
    }
}

/// Birth times agree, or one is unknown.
fn same_birth(a: Option<u64>, b: Option<u64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// Whether a file holds what the entry was written for: the same first
/// bytes, at least `offset` bytes, and the same bytes just before it.
fn continues(e: &Entry, file: &File, head: &[u8], size: u64) -> bool {
    e.fingerprint().matches_head(head) && size >= e.offset && tail_hash(file, e.offset) == Some(e.tail)
}

/// A file next to an entry's last path that continues it.
fn find_sibling(e: &Entry, reg: &Registry, claimed: &HashSet<FileKey>, fp_len: usize) -> Option<Candidate> {
    let dir = e.path.parent()?;
    for d in std::fs::read_dir(dir).ok()?.flatten() {
        let path = d.path();
        let Ok(stat) = FileStat::of_path(&path) else { continue };
        if !stat.regular || reg.tracks(&stat.key) || claimed.contains(&stat.key) || stat.size < e.offset {
            continue;
        }
        let same_file = stat.key == e.key() && same_birth(stat.btime, e.btime);
        if !same_file && e.fingerprint_len as usize != fp_len {
            continue;
        }
        let Some(c) = sibling_candidate(path, stat, fp_len) else { continue };
        if continues(e, &c.file, &c.head, c.found.stat.size) {
            return Some(c);
        }
    }
    None
}

/// A file found next to another (not by the globs), opened with its first
/// `fp_len` bytes read; `None` if it cannot be, or is compressed.
fn sibling_candidate(path: PathBuf, stat: FileStat, fp_len: usize) -> Option<Candidate> {
    let file = File::open(&path).ok()?;
    let head = read_at(&file, 0, fp_len).ok()?;
    if is_compressed(&path, &head) {
        return None;
    }
    Some(Candidate {
        found: Found {
            path,
            stat,
            via_symlink: false,
        },
        file,
        head,
        entry: None,
    })
}

/// Whether a new file is a copy of a live file next to it (same first
/// bytes, no longer, same bytes at its end), or of bytes a truncated file
/// held: logrotate's `copytruncate` makes such copies.
fn is_shadow(c: &Candidate, reg: &Registry) -> bool {
    let dir = c.found.path.parent();
    for s in reg.files.values() {
        if s.disposal().is_some() || s.rotated.load(Ordering::Acquire) {
            continue;
        }
        let spath = s.path();
        if spath.parent() != dir {
            continue;
        }
        let same_head = {
            let sh = Shared::lock(&s.head);
            let k = c.head.len().min(sh.len());
            k > 0 && c.head[..k] == sh[..k]
        };
        if !same_head {
            continue;
        }
        let Ok(st) = FileStat::of_file(&s.file) else { continue };
        let size = c.found.stat.size;
        if size > st.size {
            continue;
        }
        if size as usize <= c.head.len() {
            return true;
        }
        let at = size - TAIL_BYTES.min(size);
        let (a, b) = (read_at(&c.file, at, TAIL_BYTES as usize), read_at(&s.file, at, TAIL_BYTES as usize));
        if matches!((a, b), (Ok(a), Ok(b)) if a == b) {
            return true;
        }
    }
    reg.retired.iter().any(|r| {
        let k = c.head.len().min(r.head.len());
        Some(r.dir.as_path()) == dir && k > 0 && c.found.stat.size <= r.read && c.head[..k] == r.head[..k]
    })
}

/// Where a source keeps its checkpoints, for operators and tests.
pub fn checkpoint_path(data_dir: &Path, source: &str) -> PathBuf {
    data_dir.join("file").join(source).join(checkpoint::CHECKPOINT_FILE)
}

#[cfg(test)]
mod multiline_tests {
    use super::*;

    fn factory(cache: Arc<PodCache>, source_setting: Option<&str>) -> ContextFactory {
        ContextFactory {
            source: "files".into(),
            base: Map::new(),
            kube: Some(KubernetesConfig::default()),
            cache: Some(cache),
            multiline: source_setting.map(|p| crate::multiline::MultilineConfig::preset(p).compile().unwrap()),
        }
    }

    fn pod(annotation: Option<&str>) -> kubernetes::PodInfo {
        let mut annotations = Map::new();
        if let Some(a) = annotation {
            annotations.insert(MULTILINE_ANNOTATION.into(), Value::from(a));
        }
        kubernetes::PodInfo {
            namespace: "ns".into(),
            name: "web".into(),
            uid: "uid-1".into(),
            labels: Map::new(),
            annotations,
            owner: None,
            images: Vec::new(),
            node: None,
            ip: None,
            ports: Vec::new(),
        }
    }

    #[test]
    fn pod_annotation_picks_the_multiline_preset_of_its_containers() {
        let path = Path::new("/var/log/pods/ns_web_uid-1/app/0.log");
        let cache = Arc::new(PodCache::default());
        let f = factory(cache.clone(), None);
        assert!(f.multiline(path).0.is_none(), "no setting, no annotation: no multiline");
        cache.upsert(pod(Some("java")));
        let (rules, choice) = f.multiline(path);
        assert!(rules.is_some());
        assert_eq!(choice.as_deref(), Some("java"));
        // Another pod's files keep the source's setting.
        assert!(f.multiline(Path::new("/var/log/pods/ns_other_uid-2/app/0.log")).0.is_none());
        // An unknown preset falls back to the source's setting.
        cache.upsert(pod(Some("cobol")));
        let f = factory(cache.clone(), Some("python"));
        let (rules, choice) = f.multiline(path);
        assert!(rules.is_some() && choice.is_none());
    }
}
