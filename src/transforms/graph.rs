//! The transforms DAG. [`check`] validates it with the config (unknown
//! inputs, unknown routes, cycles, each at its key path); [`Graph::build`]
//! compiles every transform once, with all their conditions in one set of
//! [`Program`]s over one [`FieldSet`]; [`Graph::plans`] gives each source
//! the part of the graph its events reach, as the pipeline's
//! [`Processing`].
//!
//! Per batch, the decoder shows each event to a [`Judge`], which records
//! every condition's verdict as one bit and every key as text: judged from
//! the fields the decoder located, never by parsing the event again. The
//! steps then move event indexes from output to output; only a transform
//! that changes an event parses it (once, for every later transform), or,
//! for `fields` on top-level keys, rewrites its bytes into the run's text
//! buffer ([`Run::rewrite`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::members::{value_at_path, Found, Span};
use super::metrics::NodeMetrics;
use super::stream::{text_values, value_at, Changed, ChangedValues, Item, Rewrite, TextValues};
use super::TransformSpec;
use crate::condition::{Condition, MetaValues, Program, Values};
use crate::config::ConfigError;
use crate::decode::{EventObserver, EventValues, LineTests, MemberAt, TextTest};
use crate::enrich::SourceContext;
use crate::event::{Batch, FieldPath, FieldSet, FieldValueRef, PartWriter};
use crate::pipeline::{Deferral, Output, Outputs, Prepared, Processing};

/// A compiled condition of the graph: its bit in [`Judged`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct CondId(usize);

/// Each condition's verdicts on a batch's events, as sets: bit `i` for
/// event `i` ([`Step::select`]).
pub(crate) struct Verdicts(Vec<Vec<u64>>);

impl Verdicts {
    /// The events condition `c` holds for.
    pub(crate) fn of(&self, c: CondId) -> Option<&[u64]> {
        self.0.get(c.0).map(Vec::as_slice)
    }
}

/// A key of the graph (a sample or throttle key field): its text in
/// [`Judged`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyId(usize);

/// Collects what the transforms judge per event while they are built.
#[derive(Debug, Default)]
pub(crate) struct Compiler {
    fields: FieldSet,
    programs: Vec<Program>,
    keys: Vec<usize>,
    members: bool,
}

impl Compiler {
    /// Compiles a condition judged per event.
    pub(crate) fn condition(&mut self, c: &Condition) -> CondId {
        self.programs.push(Program::compile(c, &mut self.fields));
        CondId(self.programs.len() - 1)
    }

    /// A field whose text is read per event.
    pub(crate) fn key(&mut self, path: &FieldPath) -> KeyId {
        self.keys.push(self.fields.add(path.clone()));
        KeyId(self.keys.len() - 1)
    }

    /// Has the decoder say where each event's members are, for
    /// [`Run::rewrite`].
    pub(crate) fn members(&mut self) {
        self.members = true;
    }
}

/// One transform's work on a batch.
pub(crate) trait Step: Send + Sync {
    /// Moves the events of `input` to the transform's outputs (`out` has
    /// one list per output, in [`super::TransformConfig::outputs`] order,
    /// or one for a transform with a single output). An event it puts
    /// nowhere is dropped.
    fn run(&self, input: Vec<Item>, run: &mut Run<'_>, out: &mut [Vec<Item>]);

    /// Why an event this transform puts nowhere was dropped (the `reason`
    /// label of `sluice_transform_events_dropped_total`).
    fn drop_reason(&self) -> &'static str;

    /// For a step that only sorts events by their decode-time verdicts
    /// (filter, route): its outputs as sets of the batch's events, a bit per
    /// event, from `input`; `verdicts[c]` holds condition `c`'s. Only
    /// called when [`Step::selects`] is true.
    fn select(&self, _input: &[u64], _verdicts: &Verdicts, _out: &mut [Vec<u64>]) {}

    /// Whether [`Step::select`] does this step's work, for unchanged events.
    fn selects(&self) -> bool {
        false
    }

    /// The budget a file reader asks before it reads, for a throttle.
    fn deferral(&self) -> Option<Arc<dyn Deferral>> {
        None
    }
}

/// The verdicts and keys of one batch's events, as the [`Judge`] recorded
/// them on the decode pool.
#[derive(Debug, Default)]
pub(crate) struct Judged {
    /// `words` u64s per event: bit `c` is condition `c`'s verdict.
    bits: Vec<u64>,
    words: usize,
    /// Per event and key: where its text is in `text`, if it has one.
    keys: Vec<Option<(u32, u32)>>,
    text: String,
    /// The batch's source metadata, for changed events judged later.
    meta: MetaValues,
    /// When the graph asks for them: per event, where its members are in
    /// `members` (start, count; start [`u32::MAX`] when the decoder did not
    /// say).
    member_spans: Vec<(u32, u32)>,
    members: Vec<MemberAt>,
}

impl Judged {
    /// The decode-time verdict of condition `c` on event `idx`.
    #[inline(always)]
    fn holds(&self, c: usize, idx: usize) -> bool {
        let w = self.words * idx + c / 64;
        self.bits.get(w).is_some_and(|bits| bits & (1 << (c % 64)) != 0)
    }

    /// The text key `k` had in event `idx` when it was judged; `None` when
    /// the event had no such value. `keys` is the graph's number of keys.
    fn key_text(&self, k: KeyId, idx: u32, keys: usize) -> Option<&str> {
        let (start, len) = self.keys.get(idx as usize * keys + k.0).copied().flatten()?;
        Some(&self.text[start as usize..(start + len) as usize])
    }

    /// Where the members of event `idx` are in its bytes as decoded, when
    /// the decoder said ([`Compiler::members`]).
    fn members(&self, idx: u32) -> Option<&[MemberAt]> {
        let &(at, n) = self.member_spans.get(idx as usize)?;
        self.members.get(at as usize..at as usize + n as usize)
    }
}

/// Judges every event of one batch as it decodes.
struct Judge {
    graph: Arc<Graph>,
    judged: Judged,
    scratch: String,
}

impl EventObserver for Judge {
    #[inline]
    fn event(&mut self, values: &EventValues<'_>) {
        let Judge { graph, judged, scratch } = self;
        // One word per 64 conditions, pushed whole (no per-event resize).
        for (w, programs) in graph.programs.chunks(64).enumerate() {
            let mut word = 0u64;
            for (c, p) in programs.iter().enumerate() {
                word |= (p.holds(values, &judged.meta, scratch) as u64) << c;
            }
            debug_assert!(w < judged.words);
            judged.bits.push(word);
        }
        for &f in graph.keys.iter() {
            let v = match values.get(f) {
                FieldValueRef::Missing => judged.meta.get(f),
                v => v,
            };
            let at = judged.text.len();
            let span = v.render(&mut judged.text).then(|| (at as u32, (judged.text.len() - at) as u32));
            judged.keys.push(span);
        }
        if graph.members {
            let span = match values.members() {
                Some(members) => {
                    let at = judged.members.len() as u32;
                    judged.members.extend_from_slice(members);
                    (at, members.len() as u32)
                }
                None => (u32::MAX, 0),
            };
            judged.member_spans.push(span);
        }
    }

    fn finish(self: Box<Self>) -> Prepared {
        Box::new(self.judged)
    }

    fn wants_members(&self) -> bool {
        self.graph.members
    }

    fn line_tests(&self) -> Option<LineTests> {
        let tests = self.graph.line_tests.clone()?;
        // An event without a field is judged on the source's metadata.
        let absent = Absent;
        let mut scratch = String::new();
        let if_missing = self.graph.programs.iter().enumerate().fold(0, |bits, (c, p)| {
            bits | (p.holds(&absent, &self.judged.meta, &mut scratch) as u64) << c
        });
        Some(LineTests { tests, if_missing })
    }

    fn judged(&mut self, verdicts: u64) {
        debug_assert_eq!(self.judged.words, 1);
        self.judged.bits.push(verdicts);
    }
}

/// An event without any field.
struct Absent;

impl<'a> Values<'a> for Absent {
    fn get(&self, _: usize) -> FieldValueRef<'a> {
        FieldValueRef::Missing
    }
}

/// What a step may ask about the events of the batch being run.
pub(crate) struct Run<'b> {
    batch: &'b Batch,
    judged: &'b Judged,
    graph: &'b Graph,
    scratch: String,
    /// The step running takes the source alone, straight from decode.
    fed_by_source: bool,
    /// The text of events rewritten in bytes ([`Changed::Text`]).
    texts: Vec<u8>,
    /// A copy of a rewritten event's text being rewritten again.
    copy: Vec<u8>,
    /// Field values located in a rewritten event's text: the graph's
    /// field set in the text at `located`, when that is set.
    found: Vec<Found>,
    unescaped: String,
    located: Option<Span>,
}

impl<'b> Run<'b> {
    /// Whether the step running takes the source alone, straight from
    /// decode (a file reader may then have asked it before reading).
    pub(crate) fn fed_by_source(&self) -> bool {
        self.fed_by_source
    }

    /// Where the batch's events came from.
    pub(crate) fn source(&self) -> &SourceContext {
        &self.batch.source
    }

    /// Whether condition `c` holds for the event: its decode-time verdict,
    /// or, for an event a transform changed, judged on the changed event.
    #[inline]
    pub(crate) fn holds(&mut self, c: CondId, item: &Item) -> bool {
        match &item.changed {
            Changed::No => self.verdict(c, item.idx),
            _ => self.judge_changed(c, item),
        }
    }

    /// The decode-time verdict of condition `c` on event `idx`.
    #[inline(always)]
    fn verdict(&self, c: CondId, idx: u32) -> bool {
        self.judged.holds(c.0, idx as usize)
    }

    /// [`Run::holds`] for an event a transform changed: judged on it now.
    #[inline(never)]
    fn judge_changed(&mut self, c: CondId, item: &Item) -> bool {
        match &item.changed {
            Changed::No => self.verdict(c, item.idx),
            Changed::Parsed(event) => {
                let values = ChangedValues {
                    event,
                    paths: self.graph.fields.paths(),
                };
                self.graph.programs[c.0].holds(&values, &self.judged.meta, &mut self.scratch)
            }
            Changed::Text(span) => {
                let text = span.of(&self.texts);
                // A route judges the same event once per condition.
                if self.located != Some(*span) {
                    text_values(text, self.graph.fields.paths(), &mut self.found, &mut self.unescaped);
                    self.located = Some(*span);
                }
                let values = TextValues {
                    text,
                    found: &self.found,
                    unescaped: &self.unescaped,
                };
                self.graph.programs[c.0].holds(&values, &self.judged.meta, &mut self.scratch)
            }
        }
    }

    /// The text of key `k` for the event: for an unchanged event the text
    /// the judge recorded, else rendered into `buf`. `None` when the event
    /// has no such value.
    pub(crate) fn key_text<'s>(&mut self, k: KeyId, item: &Item, buf: &'s mut String) -> Option<&'s str>
    where
        'b: 's,
    {
        if let Changed::No = item.changed {
            let judged: &'b Judged = self.judged;
            return judged.key_text(k, item.idx, self.graph.keys.len());
        }
        buf.clear();
        self.key(k, item, buf).then_some(buf.as_str())
    }

    /// The text of key `k` for the event, appended to `out`; false when the
    /// event has no such value (then `out` is unchanged).
    pub(crate) fn key(&mut self, k: KeyId, item: &Item, out: &mut String) -> bool {
        let f = self.graph.keys[k.0];
        let path = &self.graph.fields.paths()[f];
        let v = match &item.changed {
            Changed::No => {
                return match self.judged.key_text(k, item.idx, self.graph.keys.len()) {
                    Some(text) => {
                        out.push_str(text);
                        true
                    }
                    None => false,
                };
            }
            Changed::Parsed(event) => value_at(event, path),
            Changed::Text(span) => {
                let text = span.of(&self.texts);
                self.located = None;
                self.unescaped.clear();
                let found = value_at_path(text, path.segments()).map_or(Found::Missing, |at| Found::of(text, at, &mut self.unescaped));
                found.as_ref(text, &self.unescaped)
            }
        };
        match v {
            FieldValueRef::Missing => self.judged.meta.get(f),
            v => v,
        }
        .render(out)
    }

    /// The event's bytes as decoded (without its newline).
    pub(crate) fn bytes(&self, item: &Item) -> &[u8] {
        self.batch.event(item.idx as usize)
    }

    /// The event, parsed for a change (once: later transforms change the
    /// same copy). `None` only if the batch's bytes are not an object,
    /// which the decoder never writes.
    pub(crate) fn change<'i>(&self, item: &'i mut Item) -> Option<&'i mut serde_json::Map<String, serde_json::Value>> {
        let text = match &item.changed {
            Changed::Parsed(_) => None,
            Changed::No => Some(self.batch.event(item.idx as usize)),
            Changed::Text(span) => Some(span.of(&self.texts)),
        };
        if let Some(text) = text {
            item.changed = Changed::Parsed(Box::new(serde_json::from_slice(text).ok()?));
        }
        match &mut item.changed {
            Changed::Parsed(event) => Some(event),
            _ => None,
        }
    }

    /// Changes the event in its bytes: `edit` gets the event's text as it
    /// stands, where its members are when the decoder said, and writes the
    /// changed event after what is in `out`. True
    /// when it wrote the event ([`Changed::Text`]) or found nothing to
    /// change; false when it refused the bytes, or the event is already
    /// parsed: the caller then changes the parsed event ([`Run::change`]).
    pub(crate) fn rewrite(&mut self, item: &mut Item, edit: impl FnOnce(&[u8], Option<&[MemberAt]>, &mut Vec<u8>) -> Rewrite) -> bool {
        if self.texts.capacity() == 0 {
            // About the batch's bytes again: one allocation for the batch.
            self.texts.reserve(self.batch.byte_len() + self.batch.byte_len() / 4);
        }
        let start = self.texts.len();
        let outcome = match &item.changed {
            Changed::Parsed(_) => return false,
            Changed::No => {
                let judged = self.judged;
                edit(self.batch.event(item.idx as usize), judged.members(item.idx), &mut self.texts)
            }
            Changed::Text(span) => {
                // Its text is in the buffer being written to.
                self.copy.clear();
                self.copy.extend_from_slice(span.of(&self.texts));
                edit(&self.copy, None, &mut self.texts)
            }
        };
        match outcome {
            Rewrite::Written => {
                item.changed = Changed::Text(Span {
                    start,
                    end: self.texts.len(),
                });
                true
            }
            Rewrite::Unchanged | Rewrite::Refused => {
                self.texts.truncate(start);
                outcome == Rewrite::Unchanged
            }
        }
    }
}

/// One compiled transform.
struct Node {
    inputs: Vec<String>,
    /// Output names as sinks and transforms write them: the transform's
    /// name, or `name.route` for each named output.
    outputs: Vec<Arc<str>>,
    step: Box<dyn Step>,
    metrics: NodeMetrics,
}

/// Every transform of a config, compiled, in an order where each comes
/// after its inputs.
pub(crate) struct Graph {
    nodes: Vec<Node>,
    fields: Arc<FieldSet>,
    programs: Vec<Program>,
    keys: Vec<usize>,
    /// Some step reads where the members are ([`Compiler::members`]).
    members: bool,
    /// Each program as a test the decoder judges on a line's text, when
    /// every program is one and the judge needs nothing else.
    line_tests: Option<Arc<[TextTest]>>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("transforms", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

/// Output names of a transform: its own name, or one per named output.
pub(crate) fn output_names(name: &str, spec: &TransformSpec) -> Vec<String> {
    let named = spec.config.outputs();
    if named.is_empty() {
        vec![name.to_owned()]
    } else {
        named.iter().map(|o| format!("{name}.{o}")).collect()
    }
}

impl Graph {
    /// Compiles validated transforms ([`check`] passed).
    pub(crate) fn build(transforms: &BTreeMap<String, TransformSpec>) -> Graph {
        let mut cx = Compiler::default();
        let mut nodes = Vec::with_capacity(transforms.len());
        for name in topological(transforms) {
            let spec = &transforms[&name];
            let outputs: Vec<Arc<str>> = output_names(&name, spec).into_iter().map(Arc::from).collect();
            nodes.push(Node {
                inputs: spec.inputs.clone(),
                step: spec.config.build(&name, &mut cx),
                metrics: NodeMetrics::new(&name, &outputs),
                outputs,
            });
        }
        let line_tests = (cx.keys.is_empty() && !cx.members && (1..=64).contains(&cx.programs.len()))
            .then(|| cx.programs.iter().map(|p| p.line_test().cloned()).collect::<Option<_>>())
            .flatten();
        Graph {
            nodes,
            fields: Arc::new(cx.fields),
            programs: cx.programs,
            keys: cx.keys,
            members: cx.members,
            line_tests,
        }
    }

    /// For each source that some transform takes (directly or further
    /// down), the part of the graph its events go through. A source absent
    /// from the map feeds its sinks directly, as without transforms.
    /// `consumed` names the outputs some sink takes: only those become
    /// batches.
    pub(crate) fn plans<'a>(
        self: &Arc<Self>,
        sources: impl Iterator<Item = &'a str>,
        consumed: &BTreeSet<String>,
    ) -> HashMap<Arc<str>, Arc<dyn Processing>> {
        let mut plans: HashMap<Arc<str>, Arc<dyn Processing>> = HashMap::new();
        for source in sources {
            let mut reached: BTreeSet<&str> = BTreeSet::from([source]);
            let mut nodes = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                if node.inputs.iter().any(|input| reached.contains(input.as_str())) {
                    nodes.push(i);
                    reached.extend(node.outputs.iter().map(|o| &**o));
                }
            }
            if nodes.is_empty() {
                continue;
            }
            // An input no later node takes and no sink takes is handed
            // over, not copied.
            let last_use = nodes
                .iter()
                .enumerate()
                .map(|(n, &i)| {
                    let inputs = &self.nodes[i].inputs;
                    inputs
                        .iter()
                        .enumerate()
                        .map(|(k, name)| {
                            !consumed.contains(name.as_str())
                                && !inputs[k + 1..].contains(name)
                                && !nodes[n + 1..].iter().any(|&j| self.nodes[j].inputs.contains(name))
                        })
                        .collect()
                })
                .collect();
            let plan = SourcePlan {
                graph: self.clone(),
                source: source.into(),
                // With one input each: an event two inputs both carry
                // reaches a step twice, which a set cannot say.
                selects: nodes
                    .iter()
                    .all(|&i| self.nodes[i].step.selects() && self.nodes[i].inputs.len() == 1),
                nodes,
                last_use,
                consumed: reached.iter().filter(|o| consumed.contains(**o)).map(|o| Arc::from(*o)).collect(),
            };
            plans.insert(source.into(), Arc::new(plan));
        }
        plans
    }
}

/// The transforms one source's events reach, in graph order.
struct SourcePlan {
    graph: Arc<Graph>,
    source: Arc<str>,
    /// Indexes into `graph.nodes`.
    nodes: Vec<usize>,
    /// Per node, per input: whether it is that stream's last use.
    last_use: Vec<Vec<bool>>,
    /// Every step only sorts events by their verdicts and takes one
    /// input: the batch goes through as sets of bits
    /// ([`SourcePlan::select`]).
    selects: bool,
    /// The outputs reached (the source's own included) that a sink takes.
    consumed: Vec<Arc<str>>,
}

impl SourcePlan {
    /// Whether `node` takes this source alone.
    fn fed_by_source(&self, node: &Node) -> bool {
        matches!(node.inputs.as_slice(), [only] if **only == *self.source)
    }
}

impl Processing for SourcePlan {
    fn deferrals(&self) -> Vec<Arc<dyn Deferral>> {
        self.nodes
            .iter()
            .map(|&i| &self.graph.nodes[i])
            .filter(|node| self.fed_by_source(node))
            .filter_map(|node| node.step.deferral())
            .collect()
    }

    fn fields(&self) -> Arc<FieldSet> {
        self.graph.fields.clone()
    }

    fn begin(&self, source: &SourceContext) -> Box<dyn EventObserver> {
        let g = &self.graph;
        Box::new(Judge {
            judged: Judged {
                words: g.programs.len().div_ceil(64),
                meta: MetaValues::resolve(&g.fields, source),
                ..Judged::default()
            },
            graph: g.clone(),
            scratch: String::new(),
        })
    }

    fn process(&self, batch: &Batch, prepared: Prepared) -> Outputs {
        let judged = match prepared.downcast::<Judged>() {
            Ok(j) => *j,
            Err(_) => {
                // Cannot happen (the plan's own observer made it); the
                // events still reach the sinks that take the source.
                tracing::error!(source = %self.source, "transforms handed another observer's result; batch sent untransformed");
                return vec![(self.source.clone(), Output::Whole)];
            }
        };
        // `sluice tap` may look at any stream once the steps are done.
        let tapping = crate::telemetry::tap::active();
        if self.selects && !tapping {
            return self.select(batch, &judged);
        }
        let mut run = Run {
            batch,
            judged: &judged,
            graph: &self.graph,
            scratch: String::new(),
            fed_by_source: false,
            texts: Vec::new(),
            copy: Vec::new(),
            found: Vec::new(),
            unescaped: String::new(),
            located: None,
        };
        let mut streams: HashMap<Arc<str>, Vec<Item>> = HashMap::new();
        streams.insert(self.source.clone(), (0..batch.len() as u32).map(Item::new).collect());
        for (&i, last_use) in self.nodes.iter().zip(&self.last_use) {
            let node = &self.graph.nodes[i];
            let mut input: Vec<Item> = Vec::new();
            let mut from = 0;
            for (name, &last) in node.inputs.iter().zip(last_use) {
                if last && !tapping {
                    if let Some(s) = streams.remove(name.as_str()) {
                        if input.is_empty() {
                            input = s;
                        } else {
                            input.extend(s);
                        }
                        from += 1;
                    }
                } else if let Some(s) = streams.get(name.as_str()) {
                    input.extend(s.iter().cloned());
                    from += 1;
                }
            }
            if from > 1 {
                // Several inputs: keep the batch's order.
                input.sort_by_key(|item| item.idx);
            }
            let seen = input.len();
            run.fed_by_source = self.fed_by_source(node);
            let mut out: Vec<Vec<Item>> = node.outputs.iter().map(|_| Vec::new()).collect();
            node.step.run(input, &mut run, &mut out);
            node.metrics.record(seen, &out, node.step.drop_reason());
            for (name, items) in node.outputs.iter().zip(out) {
                streams.insert(name.clone(), items);
            }
        }
        let mut outputs: Outputs = self
            .consumed
            .iter()
            .map(|name| {
                let items = streams.remove(name).unwrap_or_default();
                (name.clone(), output(batch, &mut run, items))
            })
            .collect();
        if tapping {
            // Outputs no sink takes but someone looks at (`sluice tap`).
            for name in crate::telemetry::tap::wanted() {
                if let Some((name, items)) = streams.remove_entry(name.as_str()) {
                    outputs.push((name, output(batch, &mut run, items)));
                }
            }
        }
        outputs
    }
}

impl SourcePlan {
    /// [`Processing::process`] for steps that only sort events by their
    /// verdicts: each stream is a set of the batch's events, a bit each,
    /// and a step's work is a few word operations per 64 events.
    fn select(&self, batch: &Batch, judged: &Judged) -> Outputs {
        let n = batch.len();
        let words = n.div_ceil(64);
        // Condition `c`'s verdicts as a set: bit `i` for event `i`.
        let mut verdicts = vec![vec![0u64; words]; self.graph.programs.len()];
        if judged.words == 1 && judged.bits.len() == n {
            // One word per event: 64 events' bits of a condition at a time.
            for (c, set) in verdicts.iter_mut().enumerate() {
                for (word, events) in set.iter_mut().zip(judged.bits.chunks(64)) {
                    *word = events.iter().enumerate().fold(0, |w, (i, bits)| w | ((bits >> c) & 1) << i);
                }
            }
        } else {
            for i in 0..n {
                for (c, set) in verdicts.iter_mut().enumerate() {
                    set[i / 64] |= (judged.holds(c, i) as u64) << (i % 64);
                }
            }
        }
        let verdicts = Verdicts(verdicts);
        let mut all = vec![u64::MAX; words];
        if n % 64 != 0 {
            all[words - 1] = (1 << (n % 64)) - 1;
        }
        let mut streams: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        streams.insert(self.source.clone(), all);
        for &i in &self.nodes {
            let node = &self.graph.nodes[i];
            // One input ([`SourcePlan::selects`]).
            let input = node
                .inputs
                .first()
                .and_then(|name| streams.get(name.as_str()))
                .cloned()
                .unwrap_or_else(|| vec![0; words]);
            let mut out: Vec<Vec<u64>> = node.outputs.iter().map(|_| vec![0u64; words]).collect();
            node.step.select(&input, &verdicts, &mut out);
            node.metrics
                .record_counts(count(&input), out.iter().map(|s| count(s)), node.step.drop_reason());
            for (name, set) in node.outputs.iter().zip(out) {
                streams.insert(name.clone(), set);
            }
        }
        self.consumed
            .iter()
            .map(|name| {
                let set = streams.remove(name).unwrap_or_default();
                (name.clone(), selected(batch, &set))
            })
            .collect()
    }
}

/// Events in a set.
fn count(set: &[u64]) -> usize {
    set.iter().map(|w| w.count_ones() as usize).sum()
}

/// The events of `set` as [`output`] sends them; every one unchanged.
fn selected(batch: &Batch, set: &[u64]) -> Output {
    let kept = count(set);
    if kept == batch.len() {
        return Output::Whole;
    }
    if kept * SELECT_SHARE >= batch.len() {
        let mut out = batch.selector(kept);
        keep_runs(&mut out, batch, set);
        return Output::Part(out.build());
    }
    let mut out = batch.part_builder(kept);
    keep_runs(&mut out, batch, set);
    Output::Part(batch.part(out))
}

/// Writes each run of consecutive events of `set` into `out` in one piece.
fn keep_runs(out: &mut impl PartWriter, batch: &Batch, set: &[u64]) {
    let mut i = 0;
    let end = set.len() * 64;
    while i < end {
        // Skip to the next event in the set, then to the end of its run.
        let skip = (set[i / 64] >> (i % 64)).trailing_zeros() as usize;
        if skip >= 64 - i % 64 {
            i = (i / 64 + 1) * 64;
            continue;
        }
        let start = i + skip;
        let mut stop = start;
        loop {
            let ones = (!(set[stop / 64] >> (stop % 64))).trailing_zeros() as usize;
            let room = 64 - stop % 64;
            stop += ones.min(room);
            if ones < room || stop >= end {
                break;
            }
        }
        out.keep(batch, start..stop.min(batch.len()));
        i = stop;
    }
}

/// The events of one output as the pipeline sends them: the batch itself
/// when every event is there unchanged; a selection of the batch's events
/// when at least 1 in [`SELECT_SHARE`] of the batch's events are there
/// unchanged (they share its bytes; changed events are serialised, once,
/// into the selection's own buffer); else a new batch of copies.
fn output(batch: &Batch, run: &mut Run<'_>, items: Vec<Item>) -> Output {
    let unchanged = |(i, it): (usize, &Item)| it.idx as usize == i && matches!(it.changed, Changed::No);
    if items.len() == batch.len() && items.iter().enumerate().all(unchanged) {
        return Output::Whole;
    }
    let kept = items.iter().filter(|it| matches!(it.changed, Changed::No)).count();
    if kept * SELECT_SHARE >= batch.len() {
        let mut out = batch.selector(items.len());
        write_part(&mut out, batch, run, &items);
        return Output::Part(out.build());
    }
    let mut out = batch.part_builder(items.len());
    write_part(&mut out, batch, run, &items);
    Output::Part(batch.part(out))
}

/// Writes the events `items` of `batch` into `out`: unchanged events in a
/// row of the batch in one piece, changed events serialised.
fn write_part(out: &mut impl PartWriter, batch: &Batch, run: &mut Run<'_>, items: &[Item]) {
    let fields = batch.fields().clone();
    let mut run_of: Option<std::ops::Range<usize>> = None;
    for item in items {
        let i = item.idx as usize;
        match (&item.changed, &mut run_of) {
            (Changed::No, Some(r)) if r.end == i => {
                r.end += 1;
                continue;
            }
            (Changed::No, _) => {}
            (Changed::Text(_) | Changed::Parsed(_), _) => {
                if let Some(r) = run_of.take() {
                    out.keep(batch, r);
                }
            }
        }
        match &item.changed {
            Changed::No => {
                if let Some(r) = run_of.replace(i..i + 1) {
                    out.keep(batch, r);
                }
            }
            Changed::Text(span) => {
                let text = span.of(&run.texts);
                out.buffer().extend_from_slice(text);
                run.located = None;
                text_values(text, fields.paths(), &mut run.found, &mut run.unescaped);
                for f in &run.found {
                    out.push_value(f.as_ref(text, &run.unescaped));
                }
                out.finish_event();
            }
            Changed::Parsed(event) => {
                let at = out.buffer().len();
                if serde_json::to_writer(&mut *out.buffer(), event).is_err() {
                    // A map of JSON values always serialises; keep the
                    // event as decoded if it ever does not.
                    out.buffer().truncate(at);
                    out.keep(batch, i..i + 1);
                    continue;
                }
                for p in fields.paths() {
                    out.push_value(value_at(event, p));
                }
                out.finish_event();
            }
        }
    }
    if let Some(r) = run_of {
        out.keep(batch, r);
    }
}

/// An output that keeps at least 1 in this many of its batch's events
/// unchanged shares the batch's buffer instead of copying them (its queues
/// count the whole buffer, which it keeps alive); a smaller one copies its
/// events, so that a few events do not hold a large buffer.
const SELECT_SHARE: usize = 4;

/// Transform names, each after the transforms it takes input from. The
/// graph is acyclic ([`check`]); a name in a cycle would be left out.
fn topological(transforms: &BTreeMap<String, TransformSpec>) -> Vec<String> {
    let owner = |input: &str| -> Option<String> {
        let base = input.split('.').next().unwrap_or(input);
        transforms.contains_key(base).then(|| base.to_owned())
    };
    let mut order = Vec::with_capacity(transforms.len());
    let mut done: BTreeSet<String> = BTreeSet::new();
    while order.len() < transforms.len() {
        let before = order.len();
        for (name, spec) in transforms {
            if done.contains(name) {
                continue;
            }
            if spec.inputs.iter().filter_map(|i| owner(i)).all(|t| done.contains(&t)) {
                done.insert(name.clone());
                order.push(name.clone());
            }
        }
        if order.len() == before {
            break;
        }
    }
    order
}

/// Checks the graph of a config: every transform input and sink input
/// (`sink_inputs`: sink, index, input, for those naming a transform)
/// names a source, a single-output transform or a route output; no
/// transform takes its own output, however far down. Each problem is
/// reported at its key path (`transforms.split.inputs[0]`).
pub(crate) fn check(
    sources: &BTreeSet<&str>,
    transforms: &BTreeMap<String, TransformSpec>,
    sink_inputs: &[(String, usize, String)],
    errors: &mut Vec<ConfigError>,
) {
    for name in transforms.keys() {
        if sources.contains(name.as_str()) {
            errors.push(ConfigError::new(
                format!("transforms.{name}"),
                "a source has this name; components need distinct names",
            ));
        }
    }
    let resolve = |path: String, input: &str, errors: &mut Vec<ConfigError>| {
        if sources.contains(input) {
            return;
        }
        if let Some(spec) = transforms.get(input) {
            let named = spec.config.outputs();
            if !named.is_empty() {
                errors.push(ConfigError::new(
                    path,
                    format!(
                        "{input:?} is a route; name one of its outputs: {}",
                        named.iter().map(|o| format!("{input}.{o}")).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            return;
        }
        if let Some((base, route)) = input.split_once('.') {
            if let Some(spec) = transforms.get(base) {
                let named = spec.config.outputs();
                if !named.iter().any(|o| o == route) {
                    let message = if named.is_empty() {
                        format!("transform {base:?} has no named outputs; write {base:?}")
                    } else {
                        format!("transform {base:?} has no route {route:?}; it has: {}", named.join(", "))
                    };
                    errors.push(ConfigError::new(path, message));
                }
                return;
            }
        }
        errors.push(ConfigError::new(path, format!("no source or transform named {input:?}")));
    };
    for (name, spec) in transforms {
        for (i, input) in spec.inputs.iter().enumerate() {
            resolve(format!("transforms.{name}.inputs[{i}]"), input, errors);
        }
    }
    for (sink, i, input) in sink_inputs {
        resolve(format!("sinks.{sink}.inputs[{i}]"), input, errors);
    }
    // A transform left out of a topological order is in a cycle or
    // downstream of one; report each edge that closes a cycle.
    let ordered: BTreeSet<String> = topological(transforms).into_iter().collect();
    for (name, spec) in transforms {
        if ordered.contains(name) {
            continue;
        }
        for (i, input) in spec.inputs.iter().enumerate() {
            let base = input.split('.').next().unwrap_or(input);
            if transforms.contains_key(base) && reaches(transforms, base, name) {
                errors.push(ConfigError::new(
                    format!("transforms.{name}.inputs[{i}]"),
                    format!("{input:?} takes this transform's output, directly or further down: the graph would have a cycle"),
                ));
            }
        }
    }
}

/// Whether transform `from` takes input from `to`, directly or through
/// other transforms (or is `to`).
fn reaches(transforms: &BTreeMap<String, TransformSpec>, from: &str, to: &str) -> bool {
    let mut stack = vec![from.to_owned()];
    let mut seen = BTreeSet::new();
    while let Some(t) = stack.pop() {
        if t == to {
            return true;
        }
        if !seen.insert(t.clone()) {
            continue;
        }
        if let Some(spec) = transforms.get(&t) {
            for input in &spec.inputs {
                let base = input.split('.').next().unwrap_or(input);
                if transforms.contains_key(base) {
                    stack.push(base.to_owned());
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;
    use crate::enrich::Fragment;
    use crate::event::BatchBuilder;
    use crate::topology::{Config, Format};
    use proptest::prelude::*;

    const SOURCES: &str = "[sources.app]\ntype = \"stdin\"\n";

    fn config(text: &str) -> Result<Config, Vec<String>> {
        Config::from_str(&format!("{SOURCES}{text}"), Format::Toml, &|_| None).map_err(|e| e.0.iter().map(ToString::to_string).collect())
    }

    /// Decodes `lines` from source `app` through the plan of `config`
    /// (whose sinks take `consumed`), and returns each consumed output's
    /// events as text.
    fn run(text: &str, lines: &[String]) -> BTreeMap<String, Vec<String>> {
        let c = config(text).unwrap_or_else(|e| panic!("{e:?}"));
        let graph = Arc::new(Graph::build(&c.transforms));
        let consumed: BTreeSet<String> = c.sinks.values().flat_map(|s| s.inputs.clone().unwrap_or_default()).collect();
        let plans = graph.plans(["app"].into_iter(), &consumed);
        let ctx = Arc::new(SourceContext::new("app".into(), "stdin", String::new(), serde_json::Map::new()));
        super::super::testing::run_lines(Some(&plans["app"]), ctx, lines, &consumed)
            .into_iter()
            .map(|(name, events)| (name, events.iter().map(|e| e.to_string()).collect()))
            .collect()
    }

    /// `errors` has one starting with `want`.
    fn assert_has(errors: &[String], want: &str) {
        assert!(errors.iter().any(|x| x.starts_with(want)), "missing {want:?} in {errors:#?}");
    }

    const SPLIT: &str = r#"
[transforms.quiet]
type = "filter"
inputs = ["app"]
condition = { not = { field = "path", one_of = ["/healthz", "/metrics"] } }
[transforms.split]
type = "route"
inputs = ["quiet"]
routes.errors = { field = "level", equals = "error" }
routes.warnings = { field = "level", equals = "warn" }
[sinks.a]
type = "blackhole"
inputs = ["split.errors"]
[sinks.b]
type = "blackhole"
inputs = ["split.warnings", "split._unmatched"]
"#;

    #[test]
    fn unknown_inputs_routes_and_cycles_are_reported_at_their_key_paths() {
        let e = config(
            r#"
[transforms.a]
type = "filter"
inputs = ["b"]
condition = { field = "x", exists = true }
[transforms.b]
type = "filter"
inputs = ["a", "nope"]
condition = { field = "x", exists = true }
[transforms.r]
type = "route"
inputs = ["app"]
routes.one = { field = "x", exists = true }
[transforms.s]
type = "filter"
inputs = ["r"]
condition = { field = "x", exists = true }
[sinks.out]
type = "stdout"
inputs = ["r.two", "a.x", "ghost", "r._unmatched"]
"#,
        )
        .unwrap_err();
        for want in [
            "transforms.a.inputs[0]: \"b\" takes this transform's output",
            "transforms.b.inputs[0]: \"a\" takes this transform's output",
            "transforms.b.inputs[1]: no source or transform named \"nope\"",
            "transforms.s.inputs[0]: \"r\" is a route; name one of its outputs: r.one, r._unmatched",
            "sinks.out.inputs[0]: transform \"r\" has no route \"two\"; it has: one, _unmatched",
            "sinks.out.inputs[1]: transform \"a\" has no named outputs",
            "sinks.out.inputs[2]: no source named \"ghost\"",
        ] {
            assert_has(&e, want);
        }
        assert!(!e.iter().any(|x| x.starts_with("sinks.out.inputs[3]")), "{e:#?}");
    }

    #[test]
    fn transform_settings_are_checked_with_their_key_paths() {
        let e = config(
            r#"
[transforms.f]
type = "filter"
inputs = []
condition = { field = "x" }
[transforms.s]
type = "sample"
inputs = ["app"]
rate = 0
[transforms.t]
type = "throttle"
inputs = ["app"]
threshold = 0
window = "0s"
[transforms.u]
type = "nope"
inputs = ["app"]
[sinks.out]
type = "stdout"
"#,
        )
        .unwrap_err();
        for want in [
            "transforms.f.inputs: must name at least one input",
            "transforms.f.condition: needs one test",
            "transforms.s.rate: must be at least 1",
            "transforms.t.threshold: must be at least 1",
            "transforms.t.window: must be above 0",
            "transforms.u.type: unknown transform type \"nope\"; known: filter, route, sample, throttle, fields, redact, parse",
        ] {
            assert_has(&e, want);
        }
    }

    #[test]
    fn a_filter_that_keeps_everything_passes_the_batch_itself() {
        let c = config(
            "[transforms.f]\ntype = \"filter\"\ninputs = [\"app\"]\ncondition = { field = \"n\", exists = true }\n[sinks.o]\ntype = \"blackhole\"\ninputs = [\"f\"]\n",
        )
        .unwrap();
        let graph = Arc::new(Graph::build(&c.transforms));
        let plans = graph.plans(["app"].into_iter(), &BTreeSet::from(["f".to_string()]));
        let plan = &plans["app"];
        let ctx = Arc::new(SourceContext::new("app".into(), "stdin", String::new(), serde_json::Map::new()));
        let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 256, 4);
        let mut d = Decoder::new();
        d.observe(plan.fields(), plan.begin(&ctx));
        for l in [r#"{"n":1}"#, r#"{"n":2}"#] {
            d.decode_line(l.as_bytes(), false, &[], &Fragment::default(), &mut out);
        }
        let prepared = d.finish_observers().pop().unwrap();
        let batch = out.build(ctx, std::time::SystemTime::now());
        let outputs = plan.process(&batch, prepared);
        assert!(matches!(outputs[..], [(_, Output::Whole)]), "{outputs:?}");
    }

    #[test]
    fn route_outputs_carry_each_events_bytes_and_extracted_values() {
        let c = config(SPLIT).unwrap();
        let graph = Arc::new(Graph::build(&c.transforms));
        let consumed = BTreeSet::from(["split.errors".to_string(), "split._unmatched".to_string()]);
        let plans = graph.plans(["app"].into_iter(), &consumed);
        let plan = &plans["app"];
        let ctx = Arc::new(SourceContext::new("app".into(), "stdin", String::new(), serde_json::Map::new()));
        let mut sink_fields = FieldSet::new();
        for f in ["level", "n", "tag"] {
            sink_fields.add(FieldPath::parse(f).unwrap());
        }
        let mut out = BatchBuilder::with_capacity(Arc::new(sink_fields), 256, 16);
        let mut d = Decoder::new();
        d.observe(plan.fields(), plan.begin(&ctx));
        // Runs of unmatched events between errors, a dropped one inside a
        // run, a warning (its output is not consumed), and string values
        // in the arena.
        let levels = ["info", "info", "error", "info", "info", "info", "error", "error", "warn", "info"];
        for (n, level) in levels.iter().enumerate() {
            let path = if n == 4 { "/healthz" } else { "/a" };
            let line = format!(r#"{{"level":"{level}","n":{n},"tag":"t{n}","path":"{path}"}}"#);
            d.decode_line(line.as_bytes(), false, &[], &Fragment::default(), &mut out);
        }
        let prepared = d.finish_observers().pop().unwrap();
        let batch = out.build(ctx, std::time::SystemTime::now());
        let outputs = plan.process(&batch, prepared);
        let mut seen = Vec::new();
        for (name, output) in &outputs {
            let Output::Part(part) = output else { panic!("{name}: a part") };
            for i in 0..part.len() {
                let FieldValueRef::Number(n) = part.value(i, 1) else {
                    panic!("{name}: n of {i}")
                };
                let n = n as usize;
                assert_eq!(part.event(i), batch.event(n), "{name}: event {n}");
                for f in 0..3 {
                    assert_eq!(part.value(i, f), batch.value(n, f), "{name}: field {f} of event {n}");
                }
                seen.push((name.to_string(), n));
            }
        }
        seen.sort();
        let want: Vec<(String, usize)> = [(2, "errors"), (6, "errors"), (7, "errors")]
            .into_iter()
            .chain([0, 1, 3, 5, 9].map(|n| (n, "_unmatched")))
            .map(|(n, o)| (format!("split.{o}"), n))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn an_event_two_routes_match_goes_to_both_and_a_step_taking_both_sees_it_twice() {
        let routes = r#"
[transforms.split]
type = "route"
inputs = ["app"]
routes.all = { field = "level", exists = true }
routes.errors = { field = "level", equals = "error" }
[transforms.both]
type = "filter"
inputs = ["split.all", "split.errors"]
condition = { field = "level", exists = true }
"#;
        let lines: Vec<String> = (0..130)
            .map(|i| format!(r#"{{"i":{i},"level":"{}"}}"#, if i % 3 == 0 { "error" } else { "info" }))
            .collect();
        let errors: Vec<String> = lines.iter().step_by(3).cloned().collect();
        // Sets of bits: only steps with one input each.
        let split = run(
            &format!("{routes}[sinks.a]\ntype = \"blackhole\"\ninputs = [\"split.all\", \"split.errors\"]\n"),
            &lines,
        );
        assert_eq!(split["split.all"], lines);
        assert_eq!(split["split.errors"], errors);
        // A step with two inputs takes each event as often as they carry it.
        let both = run(&format!("{routes}[sinks.a]\ntype = \"blackhole\"\ninputs = [\"both\"]\n"), &lines);
        let mut twice: Vec<String> = lines.iter().chain(&errors).cloned().collect();
        twice.sort_by_key(|l| lines.iter().position(|x| x == l));
        assert_eq!(both["both"], twice);
    }

    #[test]
    fn filter_then_route_splits_by_level() {
        let lines: Vec<String> = [
            r#"{"level":"error","path":"/a"}"#,
            r#"{"level":"error","path":"/healthz"}"#,
            r#"{"level":"warn"}"#,
            r#"{"level":"info","path":"/metrics"}"#,
            r#"{"level":"info"}"#,
            "plain text",
        ]
        .map(String::from)
        .to_vec();
        let got = run(SPLIT, &lines);
        assert_eq!(got["split.errors"], [lines[0].clone()]);
        assert_eq!(got["split.warnings"], [lines[2].clone()]);
        assert_eq!(
            got["split._unmatched"],
            [lines[4].clone(), r#"{"message":"plain text"}"#.to_owned()]
        );
    }

    #[test]
    fn a_changed_event_is_judged_as_changed_and_serialised_once() {
        let text = r#"
[transforms.shape]
type = "fields"
inputs = ["app"]
rename = { lvl = "level" }
set = { seen = true }
[transforms.split]
type = "route"
inputs = ["shape"]
routes.errors = { field = "level", equals = "error" }
[sinks.a]
type = "blackhole"
inputs = ["split.errors", "app"]
"#;
        let lines = [r#"{"lvl":"error","n":1}"#, r#"{"lvl":"info","n":2}"#].map(String::from).to_vec();
        let got = run(text, &lines);
        assert_eq!(got["split.errors"], [r#"{"n":1,"level":"error","seen":true}"#]);
        assert_eq!(got["app"], lines, "the source's own output is untouched");
    }

    #[test]
    fn conditions_and_keys_after_a_rewrite_in_bytes_read_the_rewritten_event() {
        let text = r#"
[transforms.shape]
type = "fields"
inputs = ["app"]
rename = { lvl = "level" }
set = { tenant = "{{ t }}-x", note = "a\"b" }
remove = ["t"]
[transforms.split]
type = "route"
inputs = ["shape"]
routes.errors = { all = [{ field = "level", equals = "error" }, { field = "note", equals = "a\"b" }] }
routes.warnings = { field = "level", equals = "warn" }
[transforms.calm]
type = "throttle"
inputs = ["split.errors"]
threshold = 1
window = "1h"
key = "tenant"
[sinks.a]
type = "blackhole"
inputs = ["calm", "split.warnings"]
"#;
        let lines = [
            r#"{"lvl":"error","t":"a","n":1}"#,
            r#"{"lvl":"error","t":"a","n":2}"#,
            r#"{"lvl":"error","t":"b","n":3}"#,
            r#"{"lvl":"warn","t":"b","n":4}"#,
        ]
        .map(String::from)
        .to_vec();
        let got = run(text, &lines);
        assert_eq!(
            got["calm"],
            [
                r#"{"n":1,"level":"error","note":"a\"b","tenant":"a-x"}"#,
                r#"{"n":3,"level":"error","note":"a\"b","tenant":"b-x"}"#
            ],
            "one per tenant, the tenant read from the rewritten bytes"
        );
        assert_eq!(got["split.warnings"], [r#"{"n":4,"level":"warn","note":"a\"b","tenant":"b-x"}"#]);
    }

    /// A batch split into route outputs is acknowledged to its source only
    /// once the sinks of every output are done with it; a batch whose
    /// events were all dropped is acknowledged at once.
    #[tokio::test]
    async fn a_split_batch_is_acknowledged_when_every_output_is_delivered() {
        use crate::buffer::{queue, BufferConfig};
        use crate::event::{AckGroup, AckOutcome};
        use crate::pipeline::{wired_output, Wiring};

        let c = config(SPLIT).unwrap();
        let graph = Arc::new(Graph::build(&c.transforms));
        let (tx_a, mut rx_a) = queue("a", &BufferConfig::default());
        let (tx_b, mut rx_b) = queue("b", &BufferConfig::default());
        let wiring = Arc::new(Wiring::new(Arc::new(FieldSet::new())));
        {
            let mut routes = wiring.rewire().await;
            routes.insert("split.errors".into(), vec![tx_a].into());
            routes.insert("split._unmatched".into(), vec![tx_b].into());
            let consumed = routes.keys().map(|k| k.to_string()).collect();
            wiring.set_processing(graph.plans(["app"].into_iter(), &consumed));
        }
        let (output, fan_out) = wired_output("app".into(), wiring.clone(), Vec::new());
        let ctx = Arc::new(SourceContext::new("app".into(), "stdin", String::new(), serde_json::Map::new()));
        let (group, mut acks) = AckGroup::new();
        let text = b"{\"level\":\"error\",\"n\":1}\n{\"path\":\"/healthz\"}\n{\"level\":\"info\",\"n\":2}\n";
        let lines = crate::decode::test_support::lines(text);
        output.send_lines(lines, ctx.clone(), Some(group.next())).await.unwrap();
        let a = rx_a.recv().await.unwrap();
        let b = rx_b.recv().await.unwrap();
        assert_eq!(a.batch.len(), 1);
        assert_eq!(b.batch.len(), 1);
        a.batch.acknowledge(AckOutcome::Delivered);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(acks.try_recv().is_err(), "one output is still in flight");
        b.batch.acknowledge(AckOutcome::Delivered);
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), acks.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((done.seq, done.outcome), (0, AckOutcome::Delivered));

        let dropped = crate::decode::test_support::lines(b"{\"path\":\"/healthz\"}\n{\"path\":\"/metrics\"}\n");
        output.send_lines(dropped, ctx, Some(group.next())).await.unwrap();
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), acks.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((done.seq, done.outcome), (1, AckOutcome::Delivered), "dropped events count as done");
        let quiet = std::time::Duration::from_millis(100);
        assert!(tokio::time::timeout(quiet, rx_a.recv()).await.is_err(), "nothing reached a sink");
        assert!(tokio::time::timeout(quiet, rx_b.recv()).await.is_err(), "nothing reached a sink");
        drop(a);
        drop(b);
        drop(output);
        fan_out.await.unwrap();
    }

    proptest! {
        /// Every event that passes the filter is in exactly one output of a
        /// route whose routes exclude each other, in the batch's order;
        /// every other event was dropped; the bytes are the input's.
        #[test]
        fn filter_and_route_lose_and_duplicate_nothing(
            events in proptest::collection::vec((0u8..5, 0u8..4, any::<bool>()), 0..200),
        ) {
            let levels = ["error", "warn", "info", "debug", ""];
            let paths = ["/healthz", "/metrics", "/api", ""];
            let lines: Vec<String> = events
                .iter()
                .enumerate()
                .map(|(i, (l, p, json))| {
                    let (level, path) = (levels[*l as usize], paths[*p as usize]);
                    if !json {
                        return format!("{i} {level} {path}");
                    }
                    let mut s = format!("{{\"i\":{i}");
                    if !level.is_empty() { s.push_str(&format!(",\"level\":\"{level}\"")); }
                    if !path.is_empty() { s.push_str(&format!(",\"path\":\"{path}\"")); }
                    s.push('}');
                    s
                })
                .collect();
            let got = run(SPLIT, &lines);
            let mut seen: Vec<String> = got.values().flatten().cloned().collect();
            let kept: Vec<String> = lines
                .iter()
                .zip(&events)
                .filter(|(_, (_, p, json))| !(*json && *p < 2))
                .map(|(l, (_, _, json))| if *json { l.clone() } else { format!("{{\"message\":\"{l}\"}}") })
                .collect();
            // Each output keeps the batch's order (sets of more than one
            // word included).
            for events in got.values() {
                let at: Vec<usize> = events.iter().map(|e| kept.iter().position(|k| k == e).unwrap_or(usize::MAX)).collect();
                prop_assert!(at.windows(2).all(|w| w[0] < w[1]), "{:?}", at);
            }
            let mut want = kept.clone();
            seen.sort();
            want.sort();
            prop_assert_eq!(seen, want);
            for e in &got["split.errors"] { prop_assert!(e.contains("\"level\":\"error\"")); }
            for e in &got["split.warnings"] { prop_assert!(e.contains("\"level\":\"warn\"")); }
            for e in &got["split._unmatched"] {
                prop_assert!(!e.contains("\"level\":\"error\"") && !e.contains("\"level\":\"warn\""));
            }
        }
    }
}
