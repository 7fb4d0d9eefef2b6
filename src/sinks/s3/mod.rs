//! `type = "s3"`: writes events to S3 as compressed NDJSON objects.
//!
//! Events go to an object per key prefix (strftime over the receive time,
//! `{{ field }}` templates per event). An object is cut when it holds
//! `batch.max_bytes` of NDJSON or `batch.timeout` after it opened. Objects
//! are compressed as they fill, 1 MiB at a time, the pieces in parallel
//! (gzip members or zstd frames, see [`encoder`]); once the compressed size
//! passes `multipart.part_size` the object continues as a multipart upload,
//! so a large object never sits whole in memory.
//!
//! A source batch is acknowledged when every object holding its events is
//! uploaded. The sink copies a batch into its compressor and releases the
//! batch's queue budget at once: what it holds is bounded by the open
//! objects' compressed buffers and the parts in flight.

pub(crate) mod client;
pub mod config;
pub(crate) mod credentials;
pub mod encoder;

pub(crate) use config::S3Config;

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::task::{JoinHandle, JoinSet};

use self::client::{Failure, S3Client};
use self::config::S3Compression;
use self::encoder::{MemberCompressor, MEMBER_BYTES};
use super::http::{AckTracker, TrackId};
use super::template::{BatchMeta, BoundTemplate, RenderPart};
use super::{SinkComponent, SinkCx, SinkError, SinkErrorKind};
use crate::buffer::{QueueItem, QueueReceiver};
use crate::event::{AckOutcome, Batch, FieldPath};
use crate::pipeline::Task;
use crate::telemetry::metrics;

impl SinkComponent for S3Config {
    /// Event fields the decoder must extract for this sink.
    fn fields_needed(&self) -> Vec<FieldPath> {
        self.key_prefix.fields().cloned().collect()
    }

    /// Reads the credentials, checks the bucket (`HEAD`) and starts the
    /// sink.
    async fn build(&self, cx: SinkCx, input: QueueReceiver) -> Result<Task<SinkError>, SinkError> {
        let fatal = |kind: SinkErrorKind| SinkError::new(&cx.name, kind);
        let client = Arc::new(S3Client::new(self, &cx).await.map_err(|e| fatal(SinkErrorKind::Setup(e)))?);
        if self.healthcheck {
            client.healthcheck().await.map_err(|e| fatal(SinkErrorKind::Unhealthy(e)))?;
        }
        let sink = S3Sink::new(self, &cx, client);
        Ok(Box::pin(sink.run(input)))
    }
}

/// A multipart upload under way.
struct Multipart {
    upload_id: Arc<str>,
    /// Parts uploading, in part order.
    in_flight: VecDeque<JoinHandle<Result<String, Failure>>>,
    /// ETags of the parts done, in part order.
    etags: Vec<String>,
    next_part: u16,
}

/// A member being compressed on the blocking pool; it gives back its raw
/// buffer and its compressed bytes, both to be reused.
type Member = JoinHandle<std::io::Result<(Vec<u8>, Vec<u8>)>>;

/// Room in a staging buffer: a member plus the batch that crosses the
/// member size, so it rarely grows.
const STAGING_CAPACITY: usize = 2 * MEMBER_BYTES;

/// An object being filled. Its bytes, in order: `out` (compressed, not yet
/// uploaded), then `compressing` (members in flight, in order), then
/// `staging` (raw, not yet handed to a compressor).
struct OpenObject {
    key: Arc<str>,
    staging: Vec<u8>,
    compressing: VecDeque<Member>,
    out: Vec<u8>,
    /// Buffers back from the compressors, reused: the sink's memory stays
    /// in a few long-lived buffers instead of spreading over the
    /// allocator's per-thread arenas.
    spare_raw: Vec<Vec<u8>>,
    spare_out: Vec<Vec<u8>>,
    raw_bytes: u64,
    events: u64,
    opened: Instant,
    tracks: Vec<TrackId>,
    multipart: Option<Multipart>,
    /// A part upload that failed for good; reported when the object
    /// finishes.
    failed: Option<Failure>,
}

/// Part buffers, reused: a part's bytes go back to the pool when the last
/// request holding them is done, so the sink keeps a few long-lived
/// buffers instead of allocating (and leaving in the allocator's arenas) a
/// fresh one per part.
#[derive(Clone)]
struct PartPool {
    free: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// Buffers kept at most: the parts one object has in flight and the one
    /// it fills. More are freed, so an idle pool holds little.
    keep: usize,
}

impl PartPool {
    fn new(keep: usize) -> PartPool {
        PartPool {
            free: Arc::default(),
            keep,
        }
    }

    /// A buffer of at least `capacity`, from the pool when it has one.
    fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = self.free.lock().ok().and_then(|mut v| v.pop());
        let mut buf = reused.unwrap_or_default();
        buf.reserve(capacity);
        buf
    }

    /// `buf` as a request body; its memory returns to the pool afterwards.
    fn body(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled { buf, pool: self.clone() })
    }
}

/// A buffer that returns to its pool when dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: PartPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if let Ok(mut v) = self.pool.free.lock() {
            if v.len() < self.pool.keep {
                v.push(buf);
            }
        }
    }
}

/// Member compressors, reused (their contexts are a few MiB each).
#[derive(Clone, Default)]
struct CompressorPool(Arc<std::sync::Mutex<Vec<MemberCompressor>>>);

impl CompressorPool {
    fn take(&self) -> Option<MemberCompressor> {
        self.0.lock().ok().and_then(|mut v| v.pop())
    }

    fn put(&self, c: MemberCompressor) {
        if let Ok(mut v) = self.0.lock() {
            v.push(c);
        }
    }
}

/// Where part of a batch goes: an object prefix and the byte ranges of the
/// batch's NDJSON for it.
type Route = (String, Vec<(usize, usize)>);

/// How an object's upload ended.
struct Finished {
    key: Arc<str>,
    tracks: Vec<TrackId>,
    events: u64,
    raw_bytes: u64,
    result: Result<(), Failure>,
}

/// The sink's state, owned by its task.
struct S3Sink {
    client: Arc<S3Client>,
    prefix: BoundTemplate,
    per_event_prefix: bool,
    compression: S3Compression,
    level: u32,
    max_bytes: u64,
    timeout: Duration,
    part_size: usize,
    parts_in_flight: usize,
    /// Members of one object compressing at once: the cores.
    members_in_flight: usize,
    concurrency: usize,
    max_open: usize,
    objects: HashMap<String, OpenObject>,
    parts: PartPool,
    compressors: CompressorPool,
    tracker: AckTracker,
    finishing: JoinSet<Finished>,
}

impl S3Sink {
    fn new(cfg: &S3Config, cx: &SinkCx, client: Arc<S3Client>) -> S3Sink {
        S3Sink {
            client,
            prefix: cfg.key_prefix.bind(&cx.fields),
            per_event_prefix: !cfg.key_prefix.is_literal(),
            compression: cfg.compression,
            level: cfg.effective_level(),
            max_bytes: cfg.batch.max_bytes.0,
            timeout: cfg.batch.timeout,
            part_size: cfg.multipart.part_size.0 as usize,
            parts_in_flight: cfg.multipart.parts_in_flight,
            members_in_flight: std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8),
            concurrency: cfg.request.concurrency,
            max_open: cfg.max_open_objects,
            objects: HashMap::new(),
            parts: PartPool::new(cfg.multipart.parts_in_flight + 1),
            compressors: CompressorPool::default(),
            tracker: AckTracker::default(),
            finishing: JoinSet::new(),
        }
    }

    async fn run(mut self, mut input: QueueReceiver) -> Result<(), SinkError> {
        let result = self.run_inner(&mut input).await;
        if result.is_err() {
            self.tracker.abandon_all();
            for (_, o) in self.objects.drain() {
                if let Some(mp) = o.multipart {
                    self.client.abort_multipart(&o.key, &mp.upload_id).await;
                }
            }
        }
        result
    }

    async fn run_inner(&mut self, input: &mut QueueReceiver) -> Result<(), SinkError> {
        loop {
            let deadline = self
                .objects
                .values()
                .map(|o| o.opened + self.timeout)
                .min()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                Some(res) = self.finishing.join_next(), if !self.finishing.is_empty() => self.finished(res)?,
                item = input.recv() => match item {
                    Some(item) => self.add(item).await?,
                    None => break,
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    let now = Instant::now();
                    let expired: Vec<String> = self
                        .objects
                        .iter()
                        .filter(|(_, o)| o.opened + self.timeout <= now)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for prefix in expired {
                        self.cut(&prefix).await?;
                    }
                }
            }
        }
        let open: Vec<String> = self.objects.keys().cloned().collect();
        for prefix in open {
            self.cut(&prefix).await?;
        }
        while let Some(res) = self.finishing.join_next().await {
            self.finished(res)?;
        }
        Ok(())
    }

    /// Routes a batch's events to their objects and compresses them in.
    async fn add(&mut self, item: QueueItem) -> Result<(), SinkError> {
        let batch = item.batch.clone();
        // The events are copied into compressors below: the queue budget
        // is released now, the acknowledgement waits for the upload.
        let id = self.tracker.track(item, false);
        let routes = self.route(&batch);
        for (prefix, ranges) in routes {
            self.write(&prefix, &batch, ranges, id).await?;
        }
        self.tracker.seal(id);
        Ok(())
    }

    /// Which object prefix each event goes to: the batch's NDJSON as byte
    /// ranges per prefix (consecutive events merged).
    fn route(&self, batch: &Batch) -> Vec<Route> {
        let at = jiff::Timestamp::try_from(batch.received_at).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let parts = self.prefix.template().map_literals(|l| at.strftime(l).to_string());
        let mut out: Vec<Route> = Vec::new();
        if !self.per_event_prefix {
            let prefix: String = parts
                .iter()
                .map(|p| match p {
                    RenderPart::Literal(l) => l.as_str(),
                    RenderPart::Field => "",
                })
                .collect();
            out.push((prefix, vec![(0, batch.byte_len())]));
            return out;
        }
        let mut meta = BatchMeta::default();
        self.prefix.batch_meta(batch, &mut meta);
        let mut key = String::new();
        let mut scratch = String::new();
        for i in 0..batch.len() {
            key.clear();
            self.prefix
                .render_parts(&parts, &meta, batch, i, &mut key, &mut scratch, clean_key_value);
            let std::ops::Range { start, end } = batch.ndjson_range(i);
            match out.iter_mut().find(|(p, _)| *p == key) {
                Some((_, ranges)) => match ranges.last_mut() {
                    Some(last) if last.1 == start => last.1 = end,
                    _ => ranges.push((start, end)),
                },
                None => out.push((key.clone(), vec![(start, end)])),
            }
        }
        out
    }

    /// Appends `ranges` of the batch to the object for `prefix`, opening
    /// it if needed, compressing, uploading parts, and cutting it at
    /// `batch.max_bytes` (between two events, so a large batch may span
    /// objects).
    async fn write(&mut self, prefix: &str, batch: &Arc<Batch>, ranges: Vec<(usize, usize)>, id: TrackId) -> Result<(), SinkError> {
        let data = batch.ndjson();
        let (compression, level, members_max) = (self.compression, self.level, self.members_in_flight);
        for (mut start, end) in ranges {
            while start < end {
                self.open(prefix).await?;
                let Some(obj) = self.objects.get_mut(prefix) else {
                    return Ok(());
                };
                // Up to the budget, then on to the end of that event: every
                // event ends with the only `\n` it holds.
                let budget = self.max_bytes.saturating_sub(obj.raw_bytes).max(1) as usize;
                let stop = if end - start <= budget {
                    end
                } else {
                    let from = start + budget - 1;
                    memchr::memchr(b'\n', &data[from..end]).map_or(end, |p| from + p + 1)
                };
                let piece = &data[start..stop];
                obj.raw_bytes += piece.len() as u64;
                obj.events += memchr::memchr_iter(b'\n', piece).count() as u64;
                obj.staging.extend_from_slice(piece);
                start = stop;
                if obj.tracks.last() != Some(&id) {
                    obj.tracks.push(id);
                    self.tracker.add_part(id);
                }
                if obj.staging.len() >= MEMBER_BYTES {
                    obj.start_member(compression, level, &self.compressors);
                }
                // Bound the members in flight (and their memory): collect
                // the oldest while too many compress.
                while obj.compressing.len() > members_max {
                    obj.collect_member(&self.client.name).await?;
                }
                if obj.out.len() >= self.part_size {
                    self.upload_part(prefix).await?;
                }
                if self.objects.get(prefix).is_some_and(|o| o.raw_bytes >= self.max_bytes) {
                    self.cut(prefix).await?;
                }
            }
        }
        Ok(())
    }

    /// Opens an object for `prefix` unless one is open, cutting the oldest
    /// when `max_open_objects` are open already.
    async fn open(&mut self, prefix: &str) -> Result<(), SinkError> {
        if self.objects.contains_key(prefix) {
            return Ok(());
        }
        if self.objects.len() >= self.max_open {
            if let Some(oldest) = self.objects.iter().min_by_key(|(_, o)| o.opened).map(|(k, _)| k.clone()) {
                self.cut(&oldest).await?;
            }
        }
        self.objects.insert(
            prefix.to_owned(),
            OpenObject {
                key: object_key(prefix, self.compression).into(),
                staging: Vec::with_capacity(STAGING_CAPACITY),
                compressing: VecDeque::new(),
                out: self.parts.take(self.part_size + 2 * MEMBER_BYTES),
                spare_raw: Vec::new(),
                spare_out: Vec::new(),
                raw_bytes: 0,
                events: 0,
                opened: Instant::now(),
                tracks: Vec::new(),
                multipart: None,
                failed: None,
            },
        );
        Ok(())
    }

    /// Sends the compressed bytes so far as the object's next part,
    /// starting the multipart upload on the first.
    async fn upload_part(&mut self, prefix: &str) -> Result<(), SinkError> {
        let client = self.client.clone();
        let name = client.name.clone();
        let in_flight_max = self.parts_in_flight;
        let Some(obj) = self.objects.get_mut(prefix) else {
            return Ok(());
        };
        if obj.failed.is_some() {
            // The object is lost already; keep its memory bounded.
            obj.out = Vec::new();
            return Ok(());
        }
        if obj.multipart.is_none() {
            match client.create_multipart(&obj.key).await {
                Ok(upload_id) => {
                    obj.multipart = Some(Multipart {
                        upload_id: upload_id.into(),
                        in_flight: VecDeque::new(),
                        etags: Vec::new(),
                        next_part: 1,
                    })
                }
                Err(f) => {
                    let fatal = matches!(f, Failure::Fatal(_));
                    obj.failed = Some(f.clone());
                    obj.out = Vec::new();
                    if fatal {
                        return Err(fatal_err(&name, &f));
                    }
                    return Ok(());
                }
            }
        }
        let Some(mp) = obj.multipart.as_mut() else {
            return Ok(());
        };
        // Bound the parts in flight: wait for the oldest.
        while mp.in_flight.len() >= in_flight_max {
            let Some(h) = mp.in_flight.pop_front() else { break };
            match join_part(h).await {
                Ok(etag) => mp.etags.push(etag),
                Err(f) => {
                    obj.failed = Some(f.clone());
                    obj.out = Vec::new();
                    if matches!(f, Failure::Fatal(_)) {
                        return Err(fatal_err(&name, &f));
                    }
                    return Ok(());
                }
            }
        }
        let next = self.parts.take(self.part_size + 2 * MEMBER_BYTES);
        let body = self.parts.body(std::mem::replace(&mut obj.out, next));
        let number = mp.next_part;
        mp.next_part += 1;
        let key = obj.key.clone();
        let upload_id = mp.upload_id.clone();
        mp.in_flight.push_back(tokio::spawn(
            async move { client.upload_part(&key, &upload_id, number, body).await },
        ));
        Ok(())
    }

    /// Closes the object for `prefix` and starts its final upload.
    async fn cut(&mut self, prefix: &str) -> Result<(), SinkError> {
        let Some(mut obj) = self.objects.remove(prefix) else {
            return Ok(());
        };
        if !obj.staging.is_empty() {
            obj.start_member(self.compression, self.level, &self.compressors);
        }
        while self.finishing.len() >= self.concurrency {
            match self.finishing.join_next().await {
                Some(res) => self.finished(res)?,
                None => break,
            }
        }
        let client = self.client.clone();
        self.finishing.spawn(finish_object(client, obj, self.parts.clone()));
        Ok(())
    }

    /// Acknowledges the batches of an uploaded (or lost) object.
    fn finished(&mut self, res: Result<Finished, tokio::task::JoinError>) -> Result<(), SinkError> {
        let f = match res {
            Ok(f) => f,
            Err(e) => return Err(died(&self.client.name, format!("upload task failed: {e}"))),
        };
        let m = metrics();
        let outcome = match &f.result {
            Ok(()) => {
                m.sink_events.with_label_values(&[&self.client.name]).inc_by(f.events);
                m.sink_bytes.with_label_values(&[&self.client.name]).inc_by(f.raw_bytes);
                tracing::debug!(sink = %self.client.name, key = %f.key, events = f.events, "object uploaded");
                AckOutcome::Delivered
            }
            Err(Failure::Rejected(why)) => {
                m.events_dropped
                    .with_label_values(&[&self.client.name, "rejected"])
                    .inc_by(f.events);
                tracing::error!(sink = %self.client.name, key = %f.key, events = f.events, error = %why,
                    "S3 refused an object; its events are dropped and counted");
                AckOutcome::Dropped
            }
            Err(Failure::Fatal(why)) => return Err(SinkError::new(&self.client.name, SinkErrorKind::Refused(why.clone()))),
        };
        for id in f.tracks {
            self.tracker.part_done(id, outcome);
        }
        Ok(())
    }
}

/// A task of the sink died: a bug, not an input.
fn died(sink: &str, message: String) -> SinkError {
    SinkError::new(sink, SinkErrorKind::Died(message))
}

impl OpenObject {
    /// Hands the staged raw bytes to a compressor on the blocking pool.
    fn start_member(&mut self, compression: S3Compression, level: u32, compressors: &CompressorPool) {
        if compression == S3Compression::None && self.compressing.is_empty() {
            self.out.extend_from_slice(&self.staging);
            self.staging.clear();
            return;
        }
        let next = self.spare_raw.pop().unwrap_or_else(|| Vec::with_capacity(STAGING_CAPACITY));
        let raw = std::mem::replace(&mut self.staging, next);
        let mut out = self.spare_out.pop().unwrap_or_default();
        let compressors = compressors.clone();
        self.compressing.push_back(tokio::task::spawn_blocking(move || {
            let mut c = match compressors.take() {
                Some(c) => c,
                None => MemberCompressor::new(compression, level)?,
            };
            c.compress(&raw, &mut out)?;
            compressors.put(c);
            Ok((raw, out))
        }));
    }

    /// Waits for the oldest member, appends it to `out` and keeps its
    /// buffers for the next members.
    async fn collect_member(&mut self, sink: &str) -> Result<(), SinkError> {
        if let Some(h) = self.compressing.pop_front() {
            let (mut raw, mut bytes) = h
                .await
                .map_err(|e| died(sink, format!("compressor task failed: {e}")))?
                .map_err(|error| {
                    SinkError::new(
                        sink,
                        SinkErrorKind::Io {
                            action: "compress an object",
                            error,
                        },
                    )
                })?;
            if self.failed.is_none() {
                self.out.extend_from_slice(&bytes);
            }
            raw.clear();
            bytes.clear();
            self.spare_raw.push(raw);
            self.spare_out.push(bytes);
        }
        Ok(())
    }
}

/// Collects the last members and uploads what is left: one `PUT`, or the
/// last part and the completion of a multipart upload.
async fn finish_object(client: Arc<S3Client>, obj: OpenObject, pool: PartPool) -> Finished {
    let OpenObject {
        key,
        compressing,
        mut out,
        raw_bytes,
        events,
        tracks,
        multipart,
        failed,
        ..
    } = obj;
    let done = |result| Finished {
        key: key.clone(),
        tracks: tracks.clone(),
        events,
        raw_bytes,
        result,
    };
    for h in compressing {
        match h.await {
            Ok(Ok((_, bytes))) => out.extend_from_slice(&bytes),
            Ok(Err(e)) => return done(Err(Failure::Fatal(format!("compression failed: {e}")))),
            Err(e) => return done(Err(Failure::Fatal(format!("compressor task failed: {e}")))),
        }
    }
    let tail = out;
    let result = match multipart {
        None => match failed {
            Some(f) => Err(f),
            None => client.put_object(&key, pool.body(tail)).await,
        },
        Some(mut mp) => {
            let mut result = match failed {
                Some(f) => Err(f),
                None => Ok(()),
            };
            while let Some(h) = mp.in_flight.pop_front() {
                match join_part(h).await {
                    Ok(etag) => mp.etags.push(etag),
                    Err(f) => {
                        if result.is_ok() {
                            result = Err(f);
                        }
                    }
                }
            }
            if result.is_ok() && !tail.is_empty() {
                match client.upload_part(&key, &mp.upload_id, mp.next_part, pool.body(tail)).await {
                    Ok(etag) => mp.etags.push(etag),
                    Err(f) => result = Err(f),
                }
            }
            if result.is_ok() {
                result = client.complete_multipart(&key, &mp.upload_id, &mp.etags).await;
            }
            if result.is_err() {
                client.abort_multipart(&key, &mp.upload_id).await;
            }
            result
        }
    };
    done(result)
}

async fn join_part(h: JoinHandle<Result<String, Failure>>) -> Result<String, Failure> {
    h.await
        .unwrap_or_else(|e| Err(Failure::Fatal(format!("part upload task failed: {e}"))))
}

fn fatal_err(sink: &str, f: &Failure) -> SinkError {
    match f {
        Failure::Rejected(s) | Failure::Fatal(s) => SinkError::new(sink, SinkErrorKind::Refused(s.clone())),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A field value as a key segment: `A-Za-z0-9._-` kept, anything else
/// `_`; a missing value is `unknown`, and `.`/`..` cannot climb.
fn clean_key_value(value: &str, out: &mut String) {
    if value.is_empty() {
        out.push_str("unknown");
        return;
    }
    if value.bytes().all(|b| b == b'.') {
        out.push('_');
        return;
    }
    for c in value.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            out.push(c);
        } else {
            out.push('_');
        }
    }
}

/// `prefix` + `20240501T120000Z-<16 hex>` + extension: sortable by time,
/// unique across restarts and collectors by its random part.
fn object_key(prefix: &str, compression: S3Compression) -> String {
    let now = std::time::SystemTime::now();
    let at = jiff::Timestamp::try_from(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let nanos = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}{}-{:016x}{}",
        at.strftime("%Y%m%dT%H%M%SZ"),
        fastrand::u64(..) ^ nanos as u64,
        compression.extension()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_cannot_escape_their_segment() {
        let clean = |v: &str| {
            let mut s = String::new();
            clean_key_value(v, &mut s);
            s
        };
        assert_eq!(clean("api-v1.2_x"), "api-v1.2_x");
        assert_eq!(clean("a/b c"), "a_b_c");
        assert_eq!(clean(".."), "_");
        assert_eq!(clean(""), "unknown");
        assert_eq!(clean("é"), "_");
    }

    #[test]
    fn object_keys_carry_prefix_time_and_extension() {
        let k = object_key("logs/2024/", S3Compression::Zstd);
        assert!(k.starts_with("logs/2024/"), "{k}");
        assert!(k.ends_with(".ndjson.zst"), "{k}");
        assert_ne!(k, object_key("logs/2024/", S3Compression::Zstd));
    }
}
