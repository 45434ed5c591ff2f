//! Executes a [`JobGraph`]: one OS thread per subtask (Wasm is CPU-bound
//! and must never block an async runtime), bounded channels between them
//! for backpressure, packed record batches on the channels.
//!
//! Every pair of connected subtasks has its own channel, which carries data
//! batches and control events in order; a consumer reads its channels
//! through an [`InputGate`], so checkpoint barriers can later block one
//! channel while the others drain (barrier alignment).
//!
//! Failure: the first subtask to fail records the error and exits; dropping
//! its channel ends unblock its neighbours, which exit as cancelled, so the
//! whole job stops and [`run`] returns the root cause.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, bounded};
use weir_format::{BatchReader, BatchWriter};

use crate::connectors::{self, BlackholeSink, DatagenSource, FileSource, Sink, Source};
use crate::error::Error;
use crate::job::{JobGraph, Partition, Vertex, VertexKind};
use crate::keygroup::{KeyGroupRange, key_group_of, subtask_of};
use crate::metrics::{JobMetrics, VertexMetrics};
use crate::native::NativeOperator;
use crate::plugin::{InstanceConfig, OperatorInstance, Plugin, PluginEngine};
use crate::state::{KeyedStateBackend, MemoryStateBackend};

/// What travels on a channel, in order.
#[derive(Debug)]
pub enum Element {
    /// A packed batch of `len` records.
    Records {
        /// The packed bytes.
        data: Vec<u8>,
        /// How many records.
        len: usize,
    },
    /// The sender will send nothing more.
    EndOfInput,
}

/// How a subtask stopped early.
enum Exit {
    /// It failed: the job's root cause (unless another came first).
    Failed(Error),
    /// A neighbour failed and hung up.
    Cancelled,
}

impl From<Error> for Exit {
    fn from(e: Error) -> Self {
        Exit::Failed(e)
    }
}

type TaskResult = Result<(), Exit>;

/// What a finished job did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Wall-clock time from start to the last sink's flush.
    pub elapsed: Duration,
    /// Per vertex, in graph order: `(uid, records in, records out)`.
    pub vertices: Vec<(String, u64, u64)>,
}

/// Runs `graph` to completion.
///
/// # Errors
/// The first error any subtask hit: a plugin that fails to load, traps or
/// exceeds a limit, a source or sink I/O error, a malformed record.
pub fn run(
    graph: &JobGraph,
    engine: &PluginEngine,
    metrics: Arc<JobMetrics>,
) -> Result<RunReport, Error> {
    let started = Instant::now();
    let plugins = load_plugins(graph, engine)?;
    let (mut outputs, mut inputs) = wire(graph);
    let failure: Arc<Mutex<Option<Error>>> = Arc::default();
    let mut handles = Vec::new();
    for (v_idx, vertex) in graph.vertices.iter().enumerate() {
        for subtask in 0..vertex.parallelism {
            let task = Task {
                graph_batch: graph.batch_size,
                max_parallelism: graph.max_parallelism,
                vertex: vertex.clone(),
                subtask,
                plugin: plugins.get(&v_idx).cloned(),
                router: Router::new(
                    vertex.uid.clone(),
                    std::mem::take(&mut outputs[v_idx][subtask as usize]),
                    graph.batch_size,
                    graph.max_parallelism,
                ),
                gate: InputGate::new(std::mem::take(&mut inputs[v_idx][subtask as usize])),
                metrics: metrics.clone(),
                v_idx,
            };
            let failure = failure.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{}#{subtask}", vertex.uid))
                .spawn(move || {
                    if let Err(Exit::Failed(e)) = task.run() {
                        let mut first = failure
                            .lock()
                            .expect("invariant: failure lock not poisoned");
                        first.get_or_insert(e);
                    }
                })
                .map_err(|e| Error::Internal(format!("spawning a subtask thread: {e}")))?;
            handles.push(handle);
        }
    }
    drop(outputs);
    drop(inputs);
    let mut panicked = None;
    for h in handles {
        let name = h.thread().name().unwrap_or("?").to_owned();
        if h.join().is_err() {
            panicked.get_or_insert(name);
        }
    }
    if let Some(e) = failure
        .lock()
        .expect("invariant: failure lock not poisoned")
        .take()
    {
        return Err(e);
    }
    if let Some(name) = panicked {
        return Err(Error::Internal(format!("subtask {name} panicked")));
    }
    Ok(RunReport {
        elapsed: started.elapsed(),
        vertices: metrics
            .vertices
            .iter()
            .map(|m| (m.uid.clone(), m.records_in(), m.records_out()))
            .collect(),
    })
}

/// Loads every distinct plugin once; subtasks instantiate their own copy.
fn load_plugins(graph: &JobGraph, engine: &PluginEngine) -> Result<HashMap<usize, Plugin>, Error> {
    let mut by_path: HashMap<PathBuf, Plugin> = HashMap::new();
    let mut by_vertex = HashMap::new();
    for (i, v) in graph.vertices.iter().enumerate() {
        if let VertexKind::Operator { plugin, .. } = &v.kind {
            let loaded = match by_path.get(plugin) {
                Some(p) => p.clone(),
                None => {
                    let p = engine.load(&v.uid, plugin)?;
                    tracing::debug!(
                        "loaded plugin {} for `{}` in {:?} (cached: {})",
                        plugin.display(),
                        v.uid,
                        p.stats.elapsed,
                        p.stats.from_cache
                    );
                    by_path.insert(plugin.clone(), p.clone());
                    p
                }
            };
            by_vertex.insert(i, loaded);
        }
    }
    Ok(by_vertex)
}

/// An output edge of one subtask: the channels to each downstream subtask
/// it can reach (one for `forward`).
struct OutEdge {
    partition: Partition,
    targets: Vec<Sender<Element>>,
    buffers: Vec<BatchWriter>,
    next: usize,
}

type Wiring = (Vec<Vec<Vec<OutEdge>>>, Vec<Vec<Vec<Receiver<Element>>>>);

/// Creates the channels: per vertex, per subtask, its output edges and
/// input receivers.
fn wire(graph: &JobGraph) -> Wiring {
    let mut outputs: Vec<Vec<Vec<OutEdge>>> = graph
        .vertices
        .iter()
        .map(|v| (0..v.parallelism).map(|_| Vec::new()).collect())
        .collect();
    let mut inputs: Vec<Vec<Vec<Receiver<Element>>>> = graph
        .vertices
        .iter()
        .map(|v| (0..v.parallelism).map(|_| Vec::new()).collect())
        .collect();
    for (down, consumer) in graph.vertices.iter().enumerate() {
        for edge in &consumer.inputs {
            let producer = &graph.vertices[edge.from];
            for i in 0..producer.parallelism {
                let reachable: Vec<u32> = if edge.partition == Partition::Forward {
                    vec![i]
                } else {
                    (0..consumer.parallelism).collect()
                };
                let mut targets = Vec::new();
                for j in reachable {
                    let (tx, rx) = bounded(graph.channel_capacity);
                    targets.push(tx);
                    inputs[down][j as usize].push(rx);
                }
                outputs[edge.from][i as usize].push(OutEdge {
                    partition: edge.partition,
                    buffers: (0..targets.len()).map(|_| BatchWriter::default()).collect(),
                    targets,
                    // Spread round robins so subtasks do not all start at 0.
                    next: i as usize,
                });
            }
        }
    }
    (outputs, inputs)
}

/// Distributes a subtask's output records over its output edges.
struct Router {
    uid: String,
    edges: Vec<OutEdge>,
    batch_size: usize,
    max_parallelism: u32,
}

impl Router {
    fn new(uid: String, edges: Vec<OutEdge>, batch_size: usize, max_parallelism: u32) -> Self {
        Self {
            uid,
            edges,
            batch_size,
            max_parallelism,
        }
    }

    /// Routes every record of `packed`; returns how many records it held.
    fn route(&mut self, packed: &[u8]) -> Result<u64, Exit> {
        let mut count = 0;
        for record in BatchReader::new(packed) {
            let record = record.map_err(|e| Error::BadRecord {
                uid: self.uid.clone(),
                message: format!("emitted a malformed batch: {e}"),
            })?;
            count += 1;
            for edge in &mut self.edges {
                let n = edge.targets.len();
                let target = match edge.partition {
                    Partition::Forward => 0,
                    Partition::Rebalance => {
                        edge.next = (edge.next + 1) % n;
                        edge.next
                    }
                    Partition::Hash => {
                        let Some(key) = record.key else {
                            return Err(Error::BadRecord {
                                uid: self.uid.clone(),
                                message: "emitted a record without a key on a `hash` edge".into(),
                            }
                            .into());
                        };
                        let kg = key_group_of(key, self.max_parallelism);
                        subtask_of(kg, n as u32, self.max_parallelism) as usize
                    }
                    Partition::Broadcast => {
                        for (b, t) in edge.buffers.iter_mut().zip(&edge.targets) {
                            b.push_record(&record);
                            if b.len() >= self.batch_size {
                                send(t, b)?;
                            }
                        }
                        continue;
                    }
                };
                // Only the buffer just written can have filled up.
                let buffer = &mut edge.buffers[target];
                buffer.push_record(&record);
                if buffer.len() >= self.batch_size {
                    send(&edge.targets[target], buffer)?;
                }
            }
        }
        Ok(count)
    }

    /// Sends every partly filled buffer.
    fn flush(&mut self) -> TaskResult {
        for edge in &mut self.edges {
            for (j, b) in edge.buffers.iter_mut().enumerate() {
                if !b.is_empty() {
                    send(&edge.targets[j], b)?;
                }
            }
        }
        Ok(())
    }

    /// Flushes, then tells every downstream subtask that input ended.
    fn end_of_input(&mut self) -> TaskResult {
        self.flush()?;
        for edge in &self.edges {
            for t in &edge.targets {
                t.send(Element::EndOfInput).map_err(|_| Exit::Cancelled)?;
            }
        }
        Ok(())
    }
}

fn send(target: &Sender<Element>, buffer: &mut BatchWriter) -> TaskResult {
    let (data, len) = buffer.take();
    target
        .send(Element::Records { data, len })
        .map_err(|_| Exit::Cancelled)
}

/// A subtask's inputs: reads whichever channel has data, until every
/// channel delivered end of input.
struct InputGate {
    channels: Vec<Receiver<Element>>,
    open: Vec<bool>,
    open_count: usize,
}

impl InputGate {
    fn new(channels: Vec<Receiver<Element>>) -> Self {
        Self {
            open: vec![true; channels.len()],
            open_count: channels.len(),
            channels,
        }
    }

    /// The next batch, or `None` once all inputs ended.
    fn next(&mut self) -> Result<Option<(Vec<u8>, usize)>, Exit> {
        loop {
            if self.open_count == 0 {
                return Ok(None);
            }
            let (idx, received) = if self.channels.len() == 1 {
                (0, self.channels[0].recv())
            } else {
                let mut select = Select::new();
                let mut ids = Vec::with_capacity(self.open_count);
                for (i, ch) in self.channels.iter().enumerate() {
                    if self.open[i] {
                        select.recv(ch);
                        ids.push(i);
                    }
                }
                let op = select.select();
                let idx = ids[op.index()];
                (idx, op.recv(&self.channels[idx]))
            };
            match received {
                Ok(Element::Records { data, len }) => return Ok(Some((data, len))),
                Ok(Element::EndOfInput) => {
                    self.open[idx] = false;
                    self.open_count -= 1;
                }
                // The sender exited without end of input: it failed.
                Err(_) => return Err(Exit::Cancelled),
            }
        }
    }
}

/// One subtask and everything it owns.
struct Task {
    graph_batch: usize,
    max_parallelism: u32,
    vertex: Vertex,
    subtask: u32,
    plugin: Option<Plugin>,
    router: Router,
    gate: InputGate,
    metrics: Arc<JobMetrics>,
    v_idx: usize,
}

/// The operator logic a subtask runs.
enum Logic {
    Wasm(Box<OperatorInstance>),
    Native {
        op: Box<dyn NativeOperator>,
        state: Box<dyn KeyedStateBackend>,
        out: BatchWriter,
    },
}

impl Task {
    fn counters(&self) -> &VertexMetrics {
        &self.metrics.vertices[self.v_idx]
    }

    fn run(mut self) -> TaskResult {
        match self.vertex.kind.clone() {
            VertexKind::FileSource { path } => {
                let source = FileSource::open(&self.vertex.uid, &path, 0)?;
                self.run_source(Box::new(source))
            }
            VertexKind::Datagen(spec) => {
                let source = DatagenSource::new(&spec, self.subtask, self.vertex.parallelism);
                self.run_source(Box::new(source))
            }
            VertexKind::StdoutSink => {
                self.run_sink(Box::new(connectors::stdout_sink(&self.vertex.uid)))
            }
            VertexKind::FileSink { dir } => {
                let sink = connectors::file_sink(&self.vertex.uid, &dir, self.subtask)?;
                self.run_sink(Box::new(sink))
            }
            VertexKind::BlackholeSink => self.run_sink(Box::new(BlackholeSink)),
            VertexKind::Operator { config, limits, .. } => {
                let plugin = self
                    .plugin
                    .take()
                    .expect("invariant: every operator vertex has a loaded plugin");
                let instance = plugin.instantiate(InstanceConfig {
                    uid: self.vertex.uid.clone(),
                    config,
                    subtask: self.subtask,
                    parallelism: self.vertex.parallelism,
                    max_parallelism: self.max_parallelism,
                    limits,
                    state: self.state_backend(),
                })?;
                self.run_operator(Logic::Wasm(Box::new(instance)))
            }
            VertexKind::Native(factory) => {
                let logic = Logic::Native {
                    op: factory.create(),
                    state: self.state_backend(),
                    out: BatchWriter::default(),
                };
                self.run_operator(logic)
            }
        }
    }

    fn state_backend(&self) -> Box<dyn KeyedStateBackend> {
        let range =
            KeyGroupRange::for_subtask(self.subtask, self.vertex.parallelism, self.max_parallelism);
        Box::new(MemoryStateBackend::new(range))
    }

    fn run_source(&mut self, mut source: Box<dyn Source>) -> TaskResult {
        let mut batch = BatchWriter::default();
        loop {
            let more = source.next_batch(&mut batch, self.graph_batch)?;
            let n = self.router.route(batch.as_bytes())?;
            batch.clear();
            self.counters().records_out.fetch_add(n, Ordering::Relaxed);
            self.router.flush()?;
            if !more {
                return self.router.end_of_input();
            }
        }
    }

    fn run_sink(&mut self, mut sink: Box<dyn Sink>) -> TaskResult {
        while let Some((data, len)) = self.gate.next()? {
            self.counters()
                .records_in
                .fetch_add(len as u64, Ordering::Relaxed);
            sink.write_batch(&data)?;
            self.counters()
                .records_out
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        sink.finish()?;
        Ok(())
    }

    fn run_operator(&mut self, mut logic: Logic) -> TaskResult {
        while let Some((data, len)) = self.gate.next()? {
            self.counters()
                .records_in
                .fetch_add(len as u64, Ordering::Relaxed);
            match &mut logic {
                Logic::Wasm(instance) => instance.process(&data)?,
                Logic::Native { op, state, out } => {
                    op.process(&data, state.as_mut(), self.max_parallelism, out)
                        .map_err(|message| Error::BadRecord {
                            uid: self.vertex.uid.clone(),
                            message,
                        })?;
                }
            }
            self.emit(&mut logic)?;
        }
        if let Logic::Wasm(instance) = &mut logic {
            instance.close()?;
            tracing::debug!(
                "`{}`#{} closed holding {} state entries",
                self.vertex.uid,
                self.subtask,
                instance.state().len()
            );
        }
        self.emit(&mut logic)?;
        self.router.end_of_input()
    }

    /// Routes what the logic emitted during the last call.
    fn emit(&mut self, logic: &mut Logic) -> TaskResult {
        let n = match logic {
            Logic::Wasm(instance) => {
                let out = instance.output();
                let n = self.router.route(out)?;
                out.clear();
                n
            }
            Logic::Native { out, .. } => {
                let n = self.router.route(out.as_bytes())?;
                out.clear();
                n
            }
        };
        self.counters().records_out.fetch_add(n, Ordering::Relaxed);
        self.router.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(partition: Partition, targets: usize) -> (OutEdge, Vec<Receiver<Element>>) {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..targets).map(|_| bounded(64)).unzip();
        let edge = OutEdge {
            partition,
            buffers: (0..targets).map(|_| BatchWriter::default()).collect(),
            targets: txs,
            next: 0,
        };
        (edge, rxs)
    }

    /// Every record's key on each receiver, until end of input.
    fn drain(rx: &Receiver<Element>) -> Vec<String> {
        let mut keys = Vec::new();
        loop {
            match rx.try_recv().expect("end of input was sent") {
                Element::Records { data, len } => {
                    let batch: Vec<_> = BatchReader::new(&data).map(|r| r.unwrap()).collect();
                    assert_eq!(batch.len(), len);
                    keys.extend(
                        batch
                            .iter()
                            .map(|r| String::from_utf8(r.key.unwrap().to_vec()).unwrap()),
                    );
                }
                Element::EndOfInput => return keys,
            }
        }
    }

    #[test]
    fn routes_by_partition_in_batches_then_ends_every_channel() {
        let (fwd, fwd_rx) = edge(Partition::Forward, 1);
        let (reb, reb_rx) = edge(Partition::Rebalance, 2);
        let (hash, hash_rx) = edge(Partition::Hash, 3);
        let (bc, bc_rx) = edge(Partition::Broadcast, 2);
        let mut router = Router::new("up".into(), vec![fwd, reb, hash, bc], 4, 128);
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let mut batch = BatchWriter::default();
        for k in &keys {
            batch.push(Some(k.as_bytes()), b"v", None);
        }
        assert_eq!(router.route(batch.as_bytes()).ok(), Some(10));
        // Full batches left before the flush.
        assert_eq!(fwd_rx[0].len(), 2);
        assert!(router.end_of_input().is_ok());

        assert_eq!(drain(&fwd_rx[0]), keys);
        let (r0, r1) = (drain(&reb_rx[0]), drain(&reb_rx[1]));
        assert_eq!((r0.len(), r1.len()), (5, 5), "round robin");
        let mut hashed = 0;
        for (j, rx) in hash_rx.iter().enumerate() {
            for k in drain(rx) {
                hashed += 1;
                let kg = key_group_of(k.as_bytes(), 128);
                assert_eq!(
                    subtask_of(kg, 3, 128) as usize,
                    j,
                    "{k} went to its key group's owner"
                );
            }
        }
        assert_eq!(hashed, 10);
        assert_eq!(drain(&bc_rx[0]), keys);
        assert_eq!(drain(&bc_rx[1]), keys);
    }

    #[test]
    fn a_keyless_record_on_a_hash_edge_is_a_bad_record() {
        let (hash, _rx) = edge(Partition::Hash, 2);
        let mut router = Router::new("up".into(), vec![hash], 4, 128);
        let mut batch = BatchWriter::default();
        batch.push(None, b"v", None);
        match router.route(batch.as_bytes()) {
            Err(Exit::Failed(Error::BadRecord { uid, .. })) => assert_eq!(uid, "up"),
            _ => panic!("expected a bad record"),
        }
    }
}
