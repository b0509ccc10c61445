//! Replay: recorded events through the same decide() with no side effects. Events are decided in event-time
//! order (within a bounded reorder buffer: a lateness window in event time, and a cap on events held), each at
//! its own event time, with state carried from one to the next in memory; schedules fire at their due instants
//! between events. Used by `replay`, `explain` and `policy diff`.

mod jsonl;
pub mod reader;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::domain::{Signal, Workspaces};
use crate::events::Inbound;
use crate::policy::{ActionKind, ActionParams, Decision, MemoryState, Policy, decide_owned};
use reader::Origin;

/// Decides signals one after another against in-memory state.
pub struct Engine<'p> {
    policy: &'p Policy,
    state: MemoryState,
    clock: Option<DateTime<Utc>>,
    fire_schedules: bool,
    /// Per schedule (in policy order), its first due instant after `clock`, once computed: cron lookups are
    /// costly and the answer only changes when the clock passes it. `None`: not known (recomputed).
    next_due: Vec<Option<DateTime<Utc>>>,
}

impl<'p> Engine<'p> {
    /// A fresh engine. With `fire_schedules`, schedules due between consecutive events are decided too.
    pub fn new(policy: &'p Policy, fire_schedules: bool) -> Self {
        Engine {
            policy,
            state: MemoryState::new(),
            clock: None,
            fire_schedules,
            next_due: vec![None; policy.schedules().len()],
        }
    }

    /// Decides `signal` at `now` (default: its own time), after any schedule firings due before it.
    pub fn step(
        &mut self,
        signal: &Signal,
        now: Option<DateTime<Utc>>,
        emit: &mut dyn FnMut(Decision),
    ) {
        self.step_owned(signal.clone(), now, emit);
    }

    /// [`Engine::step`] taking the signal by value, so that it moves into its decision.
    pub fn step_owned(
        &mut self,
        signal: impl Into<Box<Signal>>,
        now: Option<DateTime<Utc>>,
        emit: &mut dyn FnMut(Decision),
    ) {
        let signal = signal.into();
        let at = now.unwrap_or(signal.time);
        if self.fire_schedules
            && let Some(from) = self.clock
            && at > from
        {
            let mut due: Vec<(DateTime<Utc>, &str)> = Vec::new();
            for (s, cached) in self.policy.schedules().iter().zip(&mut self.next_due) {
                // The clock never goes back, so the first instant after an earlier clock that is still
                // ahead of `from` is also the first after `from`: the same instants as `due_between(from, at)`.
                let mut next = cached.or_else(|| s.next_after(from));
                while let Some(t) = next
                    && t <= at
                {
                    due.push((t, s.spec.name.as_str()));
                    next = s.next_after(t);
                }
                *cached = next;
            }
            if !due.is_empty() {
                due.sort();
                for (t, name) in due {
                    self.decide_one(Box::new(Signal::schedule(name, t)), t, emit);
                }
            }
        }
        if self.clock.is_none_or(|c| at > c) {
            self.clock = Some(at);
        }
        self.decide_one(signal, at, emit);
    }

    fn decide_one(
        &mut self,
        signal: Box<Signal>,
        at: DateTime<Utc>,
        emit: &mut dyn FnMut(Decision),
    ) {
        let decision = decide_owned(self.policy, signal, &self.state, at);
        self.state.apply(
            &decision,
            self.policy.dedupe_window,
            self.policy.budget.as_ref().map(|b| b.window),
        );
        emit(decision);
    }

    /// The state so far.
    pub fn state(&self) -> &MemoryState {
        &self.state
    }
}

/// A record that could not be decided.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordError {
    /// Where it was.
    pub origin: Origin,
    /// What was wrong.
    pub message: String,
}

/// Counts from a run.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Records read (an Event Grid array counts each event).
    pub records: u64,
    /// Decisions made (including schedule firings).
    pub decisions: u64,
    /// Records that could not be decided.
    pub failed: u64,
    /// Records older than the reorder window allowed (decided out of order).
    pub late: u64,
    /// Actions by kind.
    pub actions: BTreeMap<String, u64>,
}

/// Turns records into signals, in read order. A record without a time is stamped with the previous record's
/// time so that it keeps its place. Separate from [`Ordered`] so that it can run on the reading thread.
#[derive(Debug, Default, Clone)]
pub struct Convert {
    last_in: Option<DateTime<Utc>>,
    workspaces: Workspaces,
}

/// The signals of one record, and what was wrong with the record's other events, if anything.
pub type Converted = (Vec<Signal>, Option<String>);

impl Convert {
    /// A converter that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Converts a record as the reader handed it over.
    pub fn raw(&mut self, record: reader::Raw<'_>) -> Converted {
        match record {
            reader::Raw::Line(line) => self.line(line),
            reader::Raw::Value(value) => self.record(value),
        }
    }

    /// [`Convert::raw`], appending the signals to `out`, boxed, and returning the error message if any. A line
    /// of one plain object (nearly every line of a history) goes from text to box with no list in between.
    pub fn raw_into(
        &mut self,
        record: reader::Raw<'_>,
        out: &mut Vec<Box<Signal>>,
    ) -> Option<String> {
        let (signals, error) = match record {
            reader::Raw::Line(line) if crate::events::fast::is_object_line(line) => {
                match self.fast_object(line) {
                    Some(signal) => {
                        out.push(Box::new(signal));
                        return None;
                    }
                    None => self.lenient_line(line),
                }
            }
            other => self.raw(other),
        };
        out.extend(signals.into_iter().map(Box::new));
        error
    }

    /// The fast path for a line that holds one object; `None` (nothing changed) when the lenient path must
    /// read it.
    fn fast_object(&mut self, line: &str) -> Option<Signal> {
        let record = crate::events::fast::parse_object(line)?;
        let fallback = self.last_in.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let signal = Signal::from_fast_cached(record, fallback, Some(&mut self.workspaces)).ok()?;
        self.last_in = Some(signal.time);
        Some(signal)
    }

    /// Converts one line of JSON Lines: through [`crate::events::fast`] when the line is plain, else parsed as
    /// a `Value` and handed to [`Convert::record`]. Either way the same signals come out.
    pub fn line(&mut self, line: &str) -> Converted {
        if let Some(signals) = self.fast(line) {
            return (signals, None);
        }
        self.lenient_line(line)
    }

    /// The lenient path for a line: parsed as a `Value` and handed to [`Convert::record`].
    fn lenient_line(&mut self, line: &str) -> Converted {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(value) => self.record(value),
            Err(e) => (Vec::new(), Some(format!("not JSON: {e}"))),
        }
    }

    /// The fast path: all of the line's records, or `None` (nothing changed) when any of them needs the
    /// lenient path.
    fn fast(&mut self, line: &str) -> Option<Vec<Signal>> {
        let fallback = self.last_in.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let signals = crate::events::fast::parse_line(line)?
            .into_iter()
            .map(|r| Signal::from_fast_cached(r, fallback, Some(&mut self.workspaces)).ok())
            .collect::<Option<Vec<Signal>>>()?;
        if let Some(last) = signals.last() {
            self.last_in = Some(last.time);
        }
        Some(signals)
    }

    /// Converts a parsed record (one event, or an Event Grid batch). Good events of a partly bad batch still
    /// come out; the message says which were bad.
    pub fn record(&mut self, value: serde_json::Value) -> Converted {
        let fallback = self.last_in.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let records = match Inbound::parse_delivery(value) {
            Ok(r) => r,
            Err(e) => return (Vec::new(), Some(e.to_string())),
        };
        let mut signals = Vec::with_capacity(records.len());
        let mut errors = Vec::new();
        for (i, r) in records.into_iter().enumerate() {
            match r.map_err(|e| e.to_string()).and_then(|inb| {
                Signal::from_inbound_cached(inb, fallback, Some(&mut self.workspaces))
                    .map_err(|e| e.to_string())
            }) {
                Ok(s) => {
                    self.last_in = Some(s.time);
                    signals.push(s);
                }
                Err(e) if i > 0 => errors.push(format!("event {i}: {e}")),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            return (signals, None);
        }
        let mut message = errors.join("; ");
        if !signals.is_empty() {
            message.push_str(&format!(
                " ({} other event(s) in the record were decided)",
                signals.len()
            ));
        }
        (signals, Some(message))
    }
}

/// Reads every input and yields signals in event-time order through a bounded reorder buffer.
///
/// A signal is held until it is settled: either the newest event time seen is more than the lateness window
/// past it (a signal still to come that belongs before it would be later than the window, as in stream
/// processors' bounded out-of-orderness), or the buffer holds more than its capacity. So every event that
/// arrives no more than the window behind the newest one before it, and within capacity, is decided in order;
/// and only a window's worth of events is held, which keeps the held signals in the CPU's caches.
///
/// Histories are nearly in order, so a signal no earlier than the last one in goes to the back of a queue that
/// is sorted by construction (no allocation, no sifting); only the stragglers go through a heap. The next signal
/// out is the earlier of the two fronts, by (time, arrival): the same order one heap over everything gives.
pub struct Ordered {
    in_order: VecDeque<(DateTime<Utc>, u64, Box<Signal>)>,
    stragglers: BinaryHeap<Reverse<Slot>>,
    capacity: usize,
    window: Option<TimeDelta>,
    newest_in: Option<DateTime<Utc>>,
    seq: u64,
    last_out: Option<DateTime<Utc>>,
    convert: Convert,
    /// Signals that came out behind a later one.
    pub late: u64,
}

type Slot = (DateTime<Utc>, u64, SignalSlot);

/// Wrapper so the heap never compares signals themselves.
#[derive(Debug)]
pub struct SignalSlot(pub Box<Signal>);
impl PartialEq for SignalSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for SignalSlot {}
impl PartialOrd for SignalSlot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SignalSlot {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Ordered {
    /// A buffer holding at most `capacity` signals, with no lateness window (only the capacity settles one).
    pub fn new(capacity: usize) -> Self {
        Self::with_window(capacity, None)
    }

    /// A buffer holding at most `capacity` signals, and none longer than until an event more than `window`
    /// (event time) newer has been seen.
    pub fn with_window(capacity: usize, window: Option<TimeDelta>) -> Self {
        Ordered {
            in_order: VecDeque::new(),
            stragglers: BinaryHeap::new(),
            capacity: capacity.max(1),
            window,
            newest_in: None,
            seq: 0,
            last_out: None,
            convert: Convert::new(),
            late: 0,
        }
    }

    /// Converts records to signals (see [`Convert`]). When some events of a record are bad, the good ones
    /// are inserted here and the error names the bad ones.
    pub fn push_record(&mut self, value: serde_json::Value) -> Result<Vec<Signal>, String> {
        let converted = self.convert.record(value);
        self.settle(converted)
    }

    /// [`Ordered::push_line`] or [`Ordered::push_record`], as the reader handed the record over.
    pub fn push_raw(&mut self, record: reader::Raw<'_>) -> Result<Vec<Signal>, String> {
        let converted = self.convert.raw(record);
        self.settle(converted)
    }

    /// Converts one line of JSON Lines to signals (see [`Convert::line`]).
    pub fn push_line(&mut self, line: &str) -> Result<Vec<Signal>, String> {
        let converted = self.convert.line(line);
        self.settle(converted)
    }

    fn settle(&mut self, (signals, error): Converted) -> Result<Vec<Signal>, String> {
        match error {
            None => Ok(signals),
            Some(message) => {
                signals.into_iter().for_each(|s| self.insert(s));
                Err(message)
            }
        }
    }

    /// Adds a signal to the buffer.
    pub fn insert(&mut self, signal: Signal) {
        self.insert_boxed(Box::new(signal));
    }

    /// [`Ordered::insert`] for a signal already boxed, so that the box is the one its maker allocated.
    pub fn insert_boxed(&mut self, signal: Box<Signal>) {
        self.seq += 1;
        if self.newest_in.is_none_or(|t| signal.time > t) {
            self.newest_in = Some(signal.time);
        }
        if self
            .in_order
            .back()
            .is_none_or(|(t, _, _)| signal.time >= *t)
        {
            self.in_order.push_back((signal.time, self.seq, signal));
        } else {
            self.stragglers
                .push(Reverse((signal.time, self.seq, SignalSlot(signal))));
        }
    }

    /// Signals held.
    pub fn len(&self) -> usize {
        self.in_order.len() + self.stragglers.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the next signal if it is settled: the buffer is over capacity, or the newest event time seen is
    /// more than the window past it (or everything when `drain`).
    pub fn pop(&mut self, drain: bool) -> Option<Box<Signal>> {
        let (front, straggler_first) = match (self.in_order.front(), self.stragglers.peek()) {
            (Some((t, seq, _)), Some(Reverse((st, sseq, _)))) if (st, sseq) < (t, seq) => {
                (*st, true)
            }
            (Some((t, _, _)), _) => (*t, false),
            (None, Some(Reverse((st, _, _)))) => (*st, true),
            (None, None) => return None,
        };
        let settled = drain
            || self.len() > self.capacity
            || matches!((self.window, self.newest_in), (Some(w), Some(n))
                // A window reaching back past the first representable instant settles nothing.
                if n.checked_sub_signed(w).is_some_and(|horizon| front < horizon));
        if !settled {
            return None;
        }
        let (time, signal) = if straggler_first {
            let Reverse((time, _, slot)) = self.stragglers.pop()?;
            (time, slot.0)
        } else {
            let (time, _, signal) = self.in_order.pop_front()?;
            (time, signal)
        };
        if self.last_out.is_some_and(|t| time < t) {
            self.late += 1;
        } else {
            self.last_out = Some(time);
        }
        Some(signal)
    }
}

/// Output format of `replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per decision.
    Jsonl,
    /// A story a person can read.
    Text,
}

/// Options of a replay run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Output format.
    pub format: Format,
    /// Reorder buffer size (signals held to sort by event time).
    pub reorder_buffer: usize,
    /// Lateness window of the reorder buffer (event time); `None`: only the size settles a signal.
    pub reorder_window: Option<TimeDelta>,
    /// Fire schedules between events.
    pub schedules: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Writes one decision as a JSON line.
pub fn write_jsonl(out: &mut dyn Write, d: &Decision) -> io::Result<()> {
    write_jsonl_buffered(out, d, &mut Vec::new())
}

/// [`write_jsonl`] through a reusable buffer: the line is serialised into `buf` and handed to `out` in one
/// write, instead of one dynamically dispatched write per JSON token.
pub fn write_jsonl_buffered(
    out: &mut dyn Write,
    d: &Decision,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    buf.clear();
    jsonl::push_line(buf, d);
    out.write_all(buf)
}

/// Writes one decision as a few lines of text.
pub fn write_text(out: &mut dyn Write, d: &Decision) -> io::Result<()> {
    let when = d.at.format("%Y-%m-%d %H:%M:%SZ");
    let subject = match (&d.model, d.signal.version()) {
        (Some(m), Some(v)) => format!("{m}:{v}"),
        (Some(m), None) => m.clone(),
        _ => String::new(),
    };
    let rule = d
        .rule
        .as_deref()
        .map(|r| format!("  [rule {r}]"))
        .unwrap_or_default();
    let dup = if d.duplicate { "  (duplicate)" } else { "" };
    writeln!(
        out,
        "{when}  {:<18} {subject}{rule}{dup}",
        d.signal.kind().as_str()
    )?;
    for n in &d.fired {
        writeln!(out, "      · {}", n.reason)?;
    }
    for a in &d.actions {
        writeln!(
            out,
            "      → {:<16} {}  {}",
            a.kind.as_str(),
            a.action_id,
            describe_params(&a.params)
        )?;
    }
    for s in &d.suppressed {
        writeln!(out, "      ✗ held by {}: {}", s.rule, s.reason)?;
    }
    Ok(())
}

fn describe_params(p: &ActionParams) -> String {
    match p {
        ActionParams::RequestApproval {
            environment,
            approvers,
            required,
            route,
            ..
        } => {
            format!(
                "gate {environment}: {required} of [{}]{}",
                approvers.join(", "),
                route
                    .as_deref()
                    .map(|r| format!(" via {r}"))
                    .unwrap_or_default()
            )
        }
        ActionParams::Deploy {
            environment,
            endpoint,
            deployment,
            registry_model_id,
            ..
        } => {
            format!("{registry_model_id} → {environment}/{endpoint}/{deployment}")
        }
        ActionParams::Retrain {
            workspace,
            pipeline,
            experiment,
            ..
        } => format!("{pipeline} in {workspace} ({experiment})"),
        ActionParams::Page {
            route,
            dedup_key,
            severity,
            ..
        } => format!("{severity} to {route} ({dedup_key})"),
        ActionParams::ResolvePage {
            route, dedup_key, ..
        } => format!("resolve {dedup_key} on {route}"),
        ActionParams::Notify { route, summary } => format!("to {route}: {summary}"),
    }
}

/// Records per batch handed from one replay thread to the next: a channel message per record would cost more
/// than deciding most records.
const BATCH: usize = 512;
/// Batches in flight between two threads: enough to ride out uneven records, small enough to keep memory flat.
const IN_FLIGHT: usize = 4;

/// Records as the reading thread converted them.
#[derive(Default)]
struct ReadBatch {
    /// The records' signals, in read order, boxed where they were made: the deciding thread moves pointers,
    /// not signals, and each box goes back to be freed by the thread that allocated it.
    #[allow(clippy::vec_box)]
    signals: Vec<Box<Signal>>,
    /// Where each record's signals end in `signals` (a record is inserted into the reorder buffer whole).
    ends: Vec<u32>,
    /// Records that were, in whole or in part, bad.
    errors: Vec<RecordError>,
    /// Bytes of input read so far, across files.
    position: u64,
}

/// Decisions as the deciding thread made and formatted them, with the errors and counts of the records that
/// went in. The decisions themselves are dropped where they were built: handing them to another thread to be
/// freed there made the allocator a third of replay's CPU time (every block went back across threads).
#[derive(Default)]
struct DecidedBatch {
    /// The decisions in the output format, one after the other.
    out: Vec<u8>,
    decisions: u64,
    /// Actions by kind, in [`kinds`] order.
    actions: [u64; 6],
    errors: Vec<RecordError>,
    records: u64,
    position: u64,
}

impl DecidedBatch {
    /// An empty batch with room for a batch's output.
    fn empty() -> DecidedBatch {
        DecidedBatch {
            out: Vec::with_capacity(BATCH * 640),
            ..DecidedBatch::default()
        }
    }

    /// Formats a decision onto the batch's output and counts it; hands back its signal, which the reading
    /// thread allocated and frees.
    fn push(&mut self, d: Decision, format: Format) -> Box<Signal> {
        self.decisions += 1;
        for a in &d.actions {
            // ActionKind's discriminants are its place in `kinds()` (pinned by a test).
            self.actions[a.kind as usize] += 1;
        }
        match format {
            Format::Jsonl => jsonl::push_line(&mut self.out, &d),
            // Writing into a Vec cannot fail.
            Format::Text => drop(write_text(&mut self.out, &d)),
        }
        d.signal
    }

    fn is_full(&self) -> bool {
        self.decisions as usize >= BATCH
    }
}

/// Signals the deciding thread is done with, on their way back to be freed. Boxed on purpose: each box is the
/// allocation the reading thread made, and unboxing would copy the signal and free the box on the wrong thread.
#[allow(clippy::vec_box)]
type Used = Vec<Box<Signal>>;

/// Inserts a batch's records into `ordered` one whole record at a time (`ends` as in [`ReadBatch`]), calling
/// `then` after each.
#[allow(clippy::vec_box)]
fn insert_records(
    signals: Vec<Box<Signal>>,
    ends: Vec<u32>,
    ordered: &mut Ordered,
    mut then: impl FnMut(&mut Ordered),
) {
    let mut signals = signals.into_iter();
    let mut at = 0;
    for end in ends {
        signals
            .by_ref()
            .take((end - at) as usize)
            .for_each(|s| ordered.insert_boxed(s));
        at = end;
        then(ordered);
    }
}

/// Reads and converts every input (the reading thread of a replay), sending records in batches. Returns when
/// everything was read or the receiving side hung up.
fn read_batches(files: &[PathBuf], tx: &mpsc::SyncSender<ReadBatch>, used: &mpsc::Receiver<Used>) {
    let mut convert = Convert::new();
    let mut batch = ReadBatch::default();
    let mut done = 0u64;
    let mut open = true;
    for file in files {
        let mut file_bytes = 0u64;
        reader::read_input_raw(file, &mut |pos, record, consumed| {
            if !open {
                return;
            }
            file_bytes = consumed;
            batch.position = done + consumed;
            let error = match record {
                Ok(raw) => convert.raw_into(raw, &mut batch.signals),
                Err(message) => Some(message),
            };
            batch.ends.push(batch.signals.len() as u32);
            if let Some(message) = error {
                batch.errors.push(RecordError {
                    origin: pos.origin(),
                    message,
                });
            }
            if batch.ends.len() >= BATCH {
                open = tx.send(std::mem::take(&mut batch)).is_ok();
                // Signals the deciding thread is done with are freed here, by the thread that allocated them:
                // cheaper for the allocator than a free from another thread, and off the deciding thread.
                used.try_iter().for_each(drop);
            }
        });
        done += file_bytes;
    }
    if open && (!batch.ends.is_empty() || !batch.errors.is_empty()) {
        let _ = tx.send(batch);
    }
}

/// Runs a replay over `inputs`, writing decisions to `out` and record errors to `errors`.
///
/// Three threads share the work, each stage in order: one reads and parses, one decides (in event-time order,
/// against the state) and formats, and the calling thread writes the output and reports errors. Batches between
/// them are bounded, so memory stays flat.
pub fn run(
    policy: &Policy,
    inputs: &[PathBuf],
    opts: &Options,
    out: &mut dyn Write,
    errors: &mut dyn FnMut(&RecordError),
) -> io::Result<Summary> {
    let files = reader::expand(inputs)?;
    let mut summary = Summary::default();
    let mut write_error: Option<io::Error> = None;
    let format = opts.format;
    let progress = progress_bar(opts.progress, reader::total_bytes(&files));
    let late = std::thread::scope(|scope| {
        let (read_tx, read_rx) = mpsc::sync_channel::<ReadBatch>(IN_FLIGHT);
        let (decided_tx, decided_rx) = mpsc::sync_channel::<DecidedBatch>(IN_FLIGHT);
        // Unbounded, but never more than a few batches deep: the reading thread empties it at every batch it
        // sends, and the deciding thread fills it only as it takes them.
        let (used_tx, used_rx) = mpsc::channel::<Used>();
        let files = &files;
        let reading = std::thread::Builder::new()
            .name("replay-read".into())
            .spawn_scoped(scope, move || read_batches(files, &read_tx, &used_rx))?;
        let (reorder_buffer, window, schedules) =
            (opts.reorder_buffer, opts.reorder_window, opts.schedules);
        let deciding = std::thread::Builder::new()
            .name("replay-decide".into())
            .spawn_scoped(scope, move || {
                let mut engine = Engine::new(policy, schedules);
                let mut ordered = Ordered::with_window(reorder_buffer, window);
                let mut used = Vec::with_capacity(BATCH);
                for batch in read_rx {
                    let mut decided = DecidedBatch {
                        records: batch.ends.len() as u64,
                        errors: batch.errors,
                        position: batch.position,
                        ..DecidedBatch::empty()
                    };
                    insert_records(batch.signals, batch.ends, &mut ordered, |ordered| {
                        while let Some(signal) = ordered.pop(false) {
                            engine.step_owned(signal, None, &mut |d| {
                                used.push(decided.push(d, format))
                            });
                        }
                    });
                    if decided_tx.send(decided).is_err() {
                        return ordered.late;
                    }
                    // Once the reading thread is done, the signals are freed here.
                    let _ = used_tx.send(std::mem::replace(&mut used, Vec::with_capacity(BATCH)));
                }
                let mut decided = DecidedBatch::empty();
                while let Some(signal) = ordered.pop(true) {
                    engine.step_owned(signal, None, &mut |d| drop(decided.push(d, format)));
                    if decided.is_full() {
                        let full = std::mem::replace(&mut decided, DecidedBatch::empty());
                        if decided_tx.send(full).is_err() {
                            return ordered.late;
                        }
                    }
                }
                let _ = decided_tx.send(decided);
                ordered.late
            })?;
        for batch in decided_rx {
            summary.records += batch.records;
            for e in &batch.errors {
                summary.failed += 1;
                errors(e);
            }
            if let Some(pb) = &progress {
                pb.set_position(batch.position);
            }
            summary.decisions += batch.decisions;
            for (kind, n) in kinds().iter().zip(batch.actions) {
                if n > 0 {
                    *summary
                        .actions
                        .entry(kind.as_str().to_string())
                        .or_default() += n;
                }
            }
            if write_error.is_none()
                && let Err(e) = out.write_all(&batch.out)
            {
                write_error = Some(e);
            }
        }
        let late = joined(deciding);
        joined(reading);
        io::Result::Ok(late)
    })?;
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    summary.late = late;
    if let Some(e) = write_error {
        return Err(e);
    }
    out.flush()?;
    Ok(summary)
}

/// A finished thread's result; its panic, if it panicked, goes on in the caller.
fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn progress_bar(enabled: bool, total: Option<u64>) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal as _;
    if !enabled || !io::stderr().is_terminal() {
        return None;
    }
    let pb = match total {
        Some(bytes) => indicatif::ProgressBar::new(bytes).with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} replay [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        ),
        None => indicatif::ProgressBar::new_spinner(),
    };
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    Some(pb)
}

/// Per-model action counts under two policies: what a policy change would have done differently.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Impact {
    /// model → action kind → (old count, new count). Decisions about no model are under `(fleet)`.
    pub models: BTreeMap<String, BTreeMap<String, (u64, u64)>>,
}

impl Impact {
    /// Lines such as `fraud: +3 retrain, -12 page`; models without change are left out.
    pub fn lines(&self) -> Vec<String> {
        self.models
            .iter()
            .filter_map(|(model, kinds)| {
                let parts: Vec<String> = kinds
                    .iter()
                    .filter(|(_, (a, b))| a != b)
                    .map(|(k, (a, b))| {
                        let delta = *b as i64 - *a as i64;
                        format!("{delta:+} {k}")
                    })
                    .collect();
                (!parts.is_empty()).then(|| format!("{model}: {}", parts.join(", ")))
            })
            .collect()
    }
}

/// Replays the same history under `old` and `new` in one pass and counts actions per model.
pub fn diff(
    old: &Policy,
    new: &Policy,
    inputs: &[PathBuf],
    reorder_buffer: usize,
    reorder_window: Option<TimeDelta>,
    errors: &mut dyn FnMut(&RecordError),
) -> io::Result<Impact> {
    let files = reader::expand(inputs)?;
    let mut engines = [Engine::new(old, true), Engine::new(new, true)];
    let mut impact = Impact::default();
    let mut ordered = Ordered::with_window(reorder_buffer, reorder_window);
    let count = |side: usize, d: Decision, impact: &mut Impact| {
        for a in &d.actions {
            let model = a.model.clone().unwrap_or_else(|| "(fleet)".into());
            let entry = impact
                .models
                .entry(model)
                .or_default()
                .entry(a.kind.as_str().to_string())
                .or_default();
            if side == 0 {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    };
    let mut step = |signal: Box<Signal>, impact: &mut Impact| {
        let [old_engine, new_engine] = &mut engines;
        old_engine.step(&signal, None, &mut |d| count(0, d, impact));
        new_engine.step_owned(signal, None, &mut |d| count(1, d, impact));
    };
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<ReadBatch>(IN_FLIGHT);
        let files = &files;
        let reading = std::thread::Builder::new()
            .name("replay-read".into())
            .spawn_scoped(scope, move || {
                // Nothing comes back to free here: policy diff drops its signals as it goes.
                let (_, none) = mpsc::channel();
                read_batches(files, &tx, &none)
            })?;
        for batch in rx {
            batch.errors.iter().for_each(&mut *errors);
            insert_records(batch.signals, batch.ends, &mut ordered, |ordered| {
                while let Some(signal) = ordered.pop(false) {
                    step(signal, &mut impact);
                }
            });
        }
        joined(reading);
        io::Result::Ok(())
    })?;
    while let Some(signal) = ordered.pop(true) {
        step(signal, &mut impact);
    }
    Ok(impact)
}

/// Kind names in a stable order, for reports.
pub fn kinds() -> [ActionKind; 6] {
    [
        ActionKind::RequestApproval,
        ActionKind::Deploy,
        ActionKind::Retrain,
        ActionKind::Page,
        ActionKind::ResolvePage,
        ActionKind::Notify,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deciding thread counts actions in an array indexed by `ActionKind as usize`.
    #[test]
    fn action_kinds_are_numbered_in_the_order_kinds_lists_them() {
        for (i, kind) in kinds().into_iter().enumerate() {
            assert_eq!(kind as usize, i, "{kind:?}");
        }
    }
}
