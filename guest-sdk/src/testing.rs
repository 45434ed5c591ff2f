//! Run an operator natively against an in-memory host, for unit tests.
//!
//! The harness drives the same hook dispatch as the Wasm export (batch
//! decoding, one emit per hook, state caches and their flushes), so a
//! plugin's logic and its state behaviour are testable with `cargo test`.
//! Not available inside Wasm. One harness per thread at a time: the
//! runtime is a thread-local singleton, as in Wasm.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::rc::Rc;

use weir_format::{BatchReader, BatchWriter};

use crate::declare::Declaration;
use crate::host::{self, Host, Update, Write};
use crate::time::TimeDomain;
use crate::value::{Value, ValueRef};
use crate::{Context, Error, Level, Operator, runtime};

/// An owned record, as fed to and emitted by a [`Harness`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord {
    /// The key, if any.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Vec<u8>,
    /// The timestamp, if any.
    pub timestamp: Option<i64>,
}

impl TestRecord {
    /// A record with a key and no timestamp.
    pub fn keyed(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        Self {
            key: Some(key.as_ref().to_vec()),
            value: value.as_ref().to_vec(),
            timestamp: None,
        }
    }

    /// A record without key or timestamp.
    pub fn unkeyed(value: impl AsRef<[u8]>) -> Self {
        Self {
            key: None,
            value: value.as_ref().to_vec(),
            timestamp: None,
        }
    }

    /// The same record with timestamp `ts`.
    pub fn at(mut self, ts: i64) -> Self {
        self.timestamp = Some(ts);
        self
    }
}

/// Where a keyed state entry lives: `(state name, key)`.
type At = (String, Vec<u8>);

/// Everything the in-memory host holds and counts.
#[derive(Debug, Default)]
struct Store {
    values: BTreeMap<At, Value>,
    maps: BTreeMap<At, Vec<(Value, Value)>>,
    lists: BTreeMap<At, Vec<Value>>,
    operator: BTreeMap<String, Vec<Value>>,
    emitted: Vec<TestRecord>,
    emit_calls: usize,
    write_calls: usize,
    writes: usize,
    read_calls: usize,
    logs: Vec<(Level, String)>,
    declared: Vec<Declaration>,
    /// Registered timers: (domain is processing time, timestamp, key).
    timers: std::collections::BTreeSet<(bool, i64, Vec<u8>)>,
    watermark: Option<i64>,
    /// How many times the guest asked for the watermark.
    watermark_reads: usize,
    processing_time: i64,
    counters: BTreeMap<String, u64>,
}

struct MemoryHost(Rc<RefCell<Store>>);

impl Host for MemoryHost {
    fn declare(&mut self, declaration: &Declaration) -> Result<(), String> {
        host::record_declaration(&mut self.0.borrow_mut().declared, declaration)
    }
    fn value_get(&mut self, state: &str, key: &[u8]) -> Result<Option<Value>, String> {
        let mut s = self.0.borrow_mut();
        s.read_calls += 1;
        Ok(s.values.get(&(state.to_owned(), key.to_vec())).cloned())
    }
    fn map_entries(&mut self, state: &str, key: &[u8]) -> Result<Vec<(Value, Value)>, String> {
        let mut s = self.0.borrow_mut();
        s.read_calls += 1;
        Ok(s.maps
            .get(&(state.to_owned(), key.to_vec()))
            .cloned()
            .unwrap_or_default())
    }
    fn list_get(&mut self, state: &str, key: &[u8]) -> Result<Vec<Value>, String> {
        let mut s = self.0.borrow_mut();
        s.read_calls += 1;
        Ok(s.lists
            .get(&(state.to_owned(), key.to_vec()))
            .cloned()
            .unwrap_or_default())
    }
    fn write(&mut self, writes: &[Write<'_>]) -> Result<(), String> {
        let mut s = self.0.borrow_mut();
        s.write_calls += 1;
        s.writes += writes.len();
        for w in writes {
            let at = (w.state.to_owned(), w.key.to_vec());
            match &w.update {
                Update::ValueSet(v) => {
                    s.values.insert(at, v.to_owned_value());
                }
                Update::ValueClear => {
                    s.values.remove(&at);
                }
                Update::MapPut(k, v) => {
                    let map = s.maps.entry(at).or_default();
                    let (k, v) = (k.to_owned_value(), v.to_owned_value());
                    match map.iter_mut().find(|(mk, _)| *mk == k) {
                        Some(entry) => entry.1 = v,
                        None => map.push((k, v)),
                    }
                }
                Update::MapRemove(k) => {
                    let k = k.to_owned_value();
                    if let Some(map) = s.maps.get_mut(&at) {
                        map.retain(|(mk, _)| *mk != k);
                    }
                }
                Update::MapClear => {
                    s.maps.remove(&at);
                }
                Update::ListSet(vs) => {
                    s.lists
                        .insert(at, vs.iter().map(ValueRef::to_owned_value).collect());
                }
                Update::ListClear => {
                    s.lists.remove(&at);
                }
            }
        }
        Ok(())
    }
    fn operator_get(&mut self, state: &str) -> Result<Vec<Value>, String> {
        let mut s = self.0.borrow_mut();
        s.read_calls += 1;
        Ok(s.operator.get(state).cloned().unwrap_or_default())
    }
    fn operator_replace(&mut self, state: &str, values: &[ValueRef<'_>]) -> Result<(), String> {
        let values = values.iter().map(ValueRef::to_owned_value).collect();
        self.0
            .borrow_mut()
            .operator
            .insert(state.to_owned(), values);
        Ok(())
    }
    fn emit(&mut self, batch: &[u8]) {
        let mut s = self.0.borrow_mut();
        s.emit_calls += 1;
        for r in BatchReader::new(batch) {
            let r = r.expect("invariant: the SDK emits well-formed batches");
            s.emitted.push(TestRecord {
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.to_vec(),
                timestamp: r.timestamp,
            });
        }
    }
    fn log(&mut self, level: Level, message: &str) {
        self.0.borrow_mut().logs.push((level, message.to_owned()));
    }
    fn timer(
        &mut self,
        key: &[u8],
        timestamp: i64,
        domain: TimeDomain,
        delete: bool,
    ) -> Result<(), String> {
        let entry = (
            domain == TimeDomain::ProcessingTime,
            timestamp,
            key.to_vec(),
        );
        let mut s = self.0.borrow_mut();
        if delete {
            s.timers.remove(&entry);
        } else {
            s.timers.insert(entry);
        }
        Ok(())
    }
    fn current_watermark(&mut self) -> i64 {
        let mut s = self.0.borrow_mut();
        s.watermark_reads += 1;
        s.watermark.unwrap_or(i64::MIN)
    }
    fn current_processing_time(&mut self) -> i64 {
        self.0.borrow().processing_time
    }
    fn counter_add(&mut self, name: &str, delta: u64) {
        *self
            .0
            .borrow_mut()
            .counters
            .entry(name.to_owned())
            .or_default() += delta;
    }
}

/// Drives one operator instance through its hooks against an in-memory
/// host that keeps state across the harness's lifetime.
///
/// ```
/// use weir_sdk::testing::{Harness, TestRecord};
/// use weir_sdk::{Context, Emitter, Error, Operator, Record};
///
/// struct Upper;
/// impl Operator for Upper {
///     fn open(_: &Context) -> Result<Self, Error> { Ok(Upper) }
///     fn process(&mut self, r: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
///         out.emit(r.key, r.value.to_ascii_uppercase().as_slice());
///         Ok(())
///     }
/// }
///
/// let mut h = Harness::<Upper>::open("")?;
/// let out = h.process(&[TestRecord::unkeyed("hi").at(5)])?;
/// assert_eq!(out, vec![TestRecord::unkeyed("HI").at(5)]);
/// # Ok::<(), Error>(())
/// ```
pub struct Harness<O> {
    store: Rc<RefCell<Store>>,
    previous: Option<Box<dyn Host>>,
    _operator: PhantomData<O>,
}

impl<O: Operator> Harness<O> {
    /// Opens `O` as subtask 0 of 1 with uid `test` and `config`.
    ///
    /// # Errors
    ///
    /// Whatever `O::open` returns.
    pub fn open(config: &str) -> Result<Self, Error> {
        Self::open_with(&Context::new("test", config))
    }

    /// Opens `O` with `ctx`.
    ///
    /// # Errors
    ///
    /// Whatever `O::open` returns.
    pub fn open_with(ctx: &Context) -> Result<Self, Error> {
        runtime::reset();
        let store = Rc::new(RefCell::new(Store::default()));
        let previous = host::install(Box::new(MemoryHost(Rc::clone(&store))));
        let harness = Self {
            store,
            previous: Some(previous),
            _operator: PhantomData,
        };
        runtime::open::<O>(ctx)?;
        Ok(harness)
    }

    fn take_emitted(&self) -> Vec<TestRecord> {
        std::mem::take(&mut self.store.borrow_mut().emitted)
    }

    /// Processes `records` as one packed batch; returns what was emitted.
    ///
    /// # Errors
    ///
    /// Whatever the operator or a state call returns.
    pub fn process(&mut self, records: &[TestRecord]) -> Result<Vec<TestRecord>, Error> {
        let mut batch = BatchWriter::default();
        for r in records {
            batch.push(r.key.as_deref(), &r.value, r.timestamp);
        }
        self.process_packed(batch.as_bytes())
    }

    /// Processes an already packed batch; returns what was emitted.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] for a bad batch, or whatever the operator returns.
    pub fn process_packed(&mut self, batch: &[u8]) -> Result<Vec<TestRecord>, Error> {
        runtime::process(batch)?;
        Ok(self.take_emitted())
    }

    /// Runs the `snapshot` hook (and the state flush); returns what was
    /// emitted.
    ///
    /// # Errors
    ///
    /// Whatever the operator or the flush returns.
    pub fn snapshot(&mut self, checkpoint_id: u64) -> Result<Vec<TestRecord>, Error> {
        runtime::snapshot(checkpoint_id)?;
        Ok(self.take_emitted())
    }

    /// Runs the `on-checkpoint-complete` hook.
    ///
    /// # Errors
    ///
    /// Whatever the operator returns.
    pub fn on_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<(), Error> {
        runtime::on_checkpoint_complete(checkpoint_id)
    }

    /// Runs the `close` hook (and the state flush); returns what was
    /// emitted.
    ///
    /// # Errors
    ///
    /// Whatever the operator or the flush returns.
    pub fn close(&mut self) -> Result<Vec<TestRecord>, Error> {
        runtime::close()?;
        Ok(self.take_emitted())
    }

    /// Advances the watermark to `watermark` as the host does: fires every
    /// event-time timer at or before it, one by one in timestamp then key
    /// order (including timers the firings register), then runs
    /// `on_watermark`. Returns everything emitted.
    ///
    /// # Errors
    ///
    /// Whatever the operator returns.
    pub fn watermark(&mut self, watermark: i64) -> Result<Vec<TestRecord>, Error> {
        {
            let mut s = self.store.borrow_mut();
            s.watermark = Some(s.watermark.map_or(watermark, |w| w.max(watermark)));
        }
        self.fire(false, watermark)?;
        runtime::on_watermark(watermark)?;
        Ok(self.take_emitted())
    }

    /// Sets the host's clock to `now` and fires every processing-time
    /// timer at or before it. Returns everything emitted.
    ///
    /// # Errors
    ///
    /// Whatever the operator returns.
    pub fn advance_processing_time(&mut self, now: i64) -> Result<Vec<TestRecord>, Error> {
        self.store.borrow_mut().processing_time = now;
        self.fire(true, now)?;
        Ok(self.take_emitted())
    }

    fn fire(&mut self, processing: bool, upto: i64) -> Result<(), Error> {
        loop {
            let due = {
                let mut s = self.store.borrow_mut();
                let next = s
                    .timers
                    .range((processing, i64::MIN, Vec::new())..)
                    .next()
                    .filter(|(p, ts, _)| *p == processing && *ts <= upto)
                    .cloned();
                if let Some(t) = &next {
                    s.timers.remove(t);
                }
                next
            };
            let Some((_, ts, key)) = due else {
                return Ok(());
            };
            let domain = if processing {
                TimeDomain::ProcessingTime
            } else {
                TimeDomain::EventTime
            };
            runtime::on_timer(&key, ts, domain)?;
        }
    }

    /// The registered timers of `domain`: (timestamp, key), ascending.
    pub fn timers(&self, domain: TimeDomain) -> Vec<(i64, Vec<u8>)> {
        self.store
            .borrow()
            .timers
            .iter()
            .filter(|(p, ..)| *p == (domain == TimeDomain::ProcessingTime))
            .map(|(_, ts, key)| (*ts, key.clone()))
            .collect()
    }

    /// How many times the operator read the watermark from the host.
    pub fn watermark_reads(&self) -> usize {
        self.store.borrow().watermark_reads
    }

    /// The operator's counters (`time::counter_add`).
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.store.borrow().counters.clone()
    }

    /// The value state `state` of `key` as the host holds it (what a
    /// checkpoint would contain), ignoring unflushed guest caches.
    pub fn host_value(&self, state: &str, key: &[u8]) -> Option<Value> {
        self.store
            .borrow()
            .values
            .get(&(state.to_owned(), key.to_vec()))
            .cloned()
    }

    /// Stores value state `state` of `key` in the host, as a restore from
    /// a savepoint would.
    pub fn put_host_value(&self, state: &str, key: &[u8], value: Value) {
        self.store
            .borrow_mut()
            .values
            .insert((state.to_owned(), key.to_vec()), value);
    }

    /// The list state `state` of `key` as the host holds it.
    pub fn host_list(&self, state: &str, key: &[u8]) -> Vec<Value> {
        self.store
            .borrow()
            .lists
            .get(&(state.to_owned(), key.to_vec()))
            .cloned()
            .unwrap_or_default()
    }

    /// The map state `state` of `key` as the host holds it, in insertion
    /// order.
    pub fn host_map(&self, state: &str, key: &[u8]) -> Vec<(Value, Value)> {
        self.store
            .borrow()
            .maps
            .get(&(state.to_owned(), key.to_vec()))
            .cloned()
            .unwrap_or_default()
    }

    /// The operator list state `state` as the host holds it.
    pub fn host_operator_list(&self, state: &str) -> Vec<Value> {
        self.store
            .borrow()
            .operator
            .get(state)
            .cloned()
            .unwrap_or_default()
    }

    /// Host calls so far: `(state reads, keyed-state.write calls, emit calls)`.
    pub fn host_calls(&self) -> (usize, usize, usize) {
        let s = self.store.borrow();
        (s.read_calls, s.write_calls, s.emit_calls)
    }

    /// Keyed-state writes (entries, not calls) the host received so far.
    pub fn host_writes(&self) -> usize {
        self.store.borrow().writes
    }

    /// The states the operator declared to the host (normally in `open`),
    /// in declaration order, as `weir savepoint check` would see them.
    pub fn declared_states(&self) -> Vec<Declaration> {
        self.store.borrow().declared.clone()
    }

    /// Log lines so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.store.borrow().logs.clone()
    }
}

impl<O> Drop for Harness<O> {
    fn drop(&mut self) {
        runtime::reset();
        if let Some(previous) = self.previous.take() {
            host::install(previous);
        }
    }
}
