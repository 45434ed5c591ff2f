//! One subtask: a source, an operator (Wasm or native) or a sink, run as
//! a task on the job's workers until its input ends, the job is
//! cancelled, or it fails. It waits (for input, for room downstream, for
//! a control message) without holding a worker; a plugin call gives the
//! worker up at each epoch tick.
//!
//! Checkpoints, as a subtask sees them:
//! - a source gets a trigger on its control channel between two batches,
//!   records its offset and emits the barrier after the records it sent;
//! - an operator or sink gets the barrier from its gate once aligned, calls
//!   the plugin's `snapshot` hook (or pre-commits the sink), copies its state
//!   (the synchronous phase), forwards the barrier and hands the copy to the
//!   uploader (the asynchronous phase) — processing goes on meanwhile.
//!
//! A bounded job ends in two steps: end of data (operators `close`, emitting
//! their last records), then — with checkpoints — a final checkpoint that
//! commits every sink, and only then end of input.
//!
//! A stop with savepoint (without drain) ends differently: sources end
//! their channels right after the savepoint completed, without end of
//! data, so no operator closes (as Flink disposes operators on a suspend),
//! and sinks commit exactly what the savepoint pre-committed and discard
//! anything that came after its barrier.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use weir_format::{BatchReader, BatchWriter};

use super::checkpointing::{CoordinatorMsg, SyncTiming, Taken, Uploader};
use super::gate::{GateEvent, GateMode, InputGate};
use super::router::Router;
use super::{
    CheckpointBarrier, Control, ControlReceiver, ControlSender, Element, Exit, TaskResult,
};
use crate::checkpoint::CheckpointId;
use crate::plugin::processing_time_now;
use crate::timers::{TimeDomain, TimerService};
use crate::watermark::{SourceWatermarks, WatermarkEvent};
use weir_format::snapshot::{ListSection, Namespace};

use crate::checkpoint::format::{InFlightChannel, SubtaskSnapshot};
use crate::connectors::{self, Sink, SourceSplits, SplitKind};
use crate::error::Error;
use crate::job::{Vertex, VertexKind};
use crate::keygroup::KeyGroupRange;
use crate::metrics::{JobMetrics, VertexMetrics};
use crate::native::NativeOperator;
use crate::plugin::{InstanceConfig, OperatorInstance, Plugin};
use crate::state::{KeyedStateBackend, MemoryStateBackend};
use crate::state::{encode_key_groups, frame_keyed_sections};

/// How long a subtask that always has work runs before it lets the other
/// tasks on its worker have a turn.
pub(crate) const SLICE: Duration = Duration::from_millis(2);

/// A subtask's turn on its worker.
struct Turn {
    since: Instant,
}

impl Turn {
    fn new() -> Self {
        Turn {
            since: Instant::now(),
        }
    }

    /// Gives the worker up if the turn lasted a [`SLICE`].
    async fn yield_if_due(&mut self) {
        if self.since.elapsed() >= SLICE {
            tokio::task::yield_now().await;
            self.since = Instant::now();
        }
    }
}

/// The job's subtasks starting together: each opens its source, sink or
/// plugin instance, then waits until every one has (or failed to), so
/// every instance of the job exists at once before any record flows —
/// as each had its own thread — and its memory counts together against
/// the job's and the tenant's budgets.
pub(crate) struct Opened {
    left: Arc<tokio::sync::watch::Sender<usize>>,
    arrived: bool,
}

impl Opened {
    /// One handle per subtask, for `subtasks` subtasks.
    pub(crate) fn for_subtasks(subtasks: usize) -> impl Fn() -> Opened {
        let left = Arc::new(tokio::sync::watch::Sender::new(subtasks));
        move || Opened {
            left: left.clone(),
            arrived: false,
        }
    }

    fn arrive(&mut self) {
        if !std::mem::replace(&mut self.arrived, true) {
            self.left.send_modify(|n| *n = n.saturating_sub(1));
        }
    }

    /// This subtask is open: waits for the others.
    async fn all(&mut self) {
        self.arrive();
        let mut left = self.left.subscribe();
        // The sender lives in `self`: the wait cannot fail.
        let _ = left.wait_for(|n| *n == 0).await;
    }
}

impl Drop for Opened {
    /// A subtask that failed to open counts as arrived: the others go on
    /// and find the job cancelled.
    fn drop(&mut self) {
        self.arrive();
    }
}

/// A subtask's part in checkpoints and savepoints.
pub(crate) struct TaskCheckpointing {
    /// This subtask's index among all the job's subtasks.
    pub task: usize,
    pub coordinator: Sender<CoordinatorMsg>,
    pub uploader: Uploader,
}

/// What a source does after a control message.
enum SourceStep {
    /// Go on reading.
    Go,
    /// End the input now (stop with drain).
    Drain,
    /// Its stop-with-savepoint completed: end without ending the data.
    Stopped,
}

/// One subtask and everything it owns.
pub(crate) struct Task {
    pub batch_size: usize,
    pub max_parallelism: u32,
    pub vertex: Vertex,
    pub subtask: u32,
    pub plugin: Option<Plugin>,
    pub router: Router,
    pub gate: InputGate,
    pub metrics: Arc<JobMetrics>,
    pub v_idx: usize,
    pub checkpointing: TaskCheckpointing,
    /// How many times the job restarted before this run.
    pub attempt_number: u32,
    /// What this subtask restores from, if the job was restored.
    pub restored: Option<SubtaskSnapshot>,
    /// The declared types of the restored states, by state name.
    pub restored_types: std::collections::HashMap<String, String>,
    /// An unaligned checkpoint's snapshot waiting for its in-flight
    /// records: the barrier, the snapshot, its sync time.
    pub awaiting_in_flight: Option<(CheckpointBarrier, Taken, Duration)>,
    /// Waits for the job's other subtasks to open.
    pub opened: Opened,
    /// Which checkpoint the next incremental one extends.
    pub incremental: super::incremental::Incremental,
}

/// What a subtask runs, opened.
enum Part {
    Source(SourceSplits),
    Sink(Box<dyn Sink>),
    Operator(Logic),
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

    pub(crate) async fn run(mut self) -> TaskResult {
        // Opened, or failed to: either way the others are told (`Opened`
        // arrives when dropped).
        let part = self.open().await?;
        self.opened.all().await;
        match part {
            Part::Source(source) => self.run_source(source).await,
            Part::Sink(sink) => self.run_sink(sink).await,
            Part::Operator(logic) => self.run_operator(logic).await,
        }
    }

    /// Opens what the subtask runs: its source, sink, plugin instance (with
    /// its restored state) or native operator.
    async fn open(&mut self) -> Result<Part, Exit> {
        let mut restored = self.restored.take().unwrap_or_default();
        self.gate.preload(std::mem::take(&mut restored.in_flight))?;
        let uid = &self.vertex.uid;
        if let Some(source) = connectors::source_of(uid, &self.vertex.kind) {
            return self.open_source(source.as_ref(), &restored);
        }
        if let Some(sink) = connectors::sink_of(uid, &self.vertex.kind) {
            return Ok(Part::Sink(sink.open(self.subtask, &restored)?));
        }
        Ok(match self.vertex.kind.clone() {
            VertexKind::Operator { config, limits, .. } => {
                let timers =
                    TimerService::restore(self.max_parallelism, &restored.keyed).map_err(|e| {
                        Error::Restore {
                            message: format!(
                                "operator `{}` subtask {}: {e}",
                                self.vertex.uid, self.subtask
                            ),
                        }
                    })?;
                let plugin = self
                    .plugin
                    .take()
                    .expect("invariant: every operator vertex has a loaded plugin");
                let instance = plugin
                    .instantiate(InstanceConfig {
                        uid: self.vertex.uid.clone(),
                        config,
                        subtask: self.subtask,
                        parallelism: self.vertex.parallelism,
                        max_parallelism: self.max_parallelism,
                        limits,
                        state: self.state_backend(restored.keyed)?,
                        operator_state: restored
                            .lists
                            .into_iter()
                            .filter(|l| l.namespace == Namespace::User)
                            .map(|l| (l.name, l.items))
                            .collect(),
                        attempt_number: self.attempt_number,
                        restored_types: std::mem::take(&mut self.restored_types),
                        timers,
                    })
                    .await?;
                Part::Operator(Logic::Wasm(Box::new(instance)))
            }
            VertexKind::Native(factory) => Part::Operator(Logic::Native {
                op: factory.create(),
                state: self.state_backend(restored.keyed)?,
                out: BatchWriter::default(),
            }),
            kind => {
                return Err(Error::Internal(format!(
                    "vertex `{}` is {kind:?}: no connector reads or writes it",
                    self.vertex.uid
                ))
                .into());
            }
        })
    }

    fn key_groups(&self) -> KeyGroupRange {
        KeyGroupRange::for_subtask(self.subtask, self.vertex.parallelism, self.max_parallelism)
    }

    fn state_backend(
        &self,
        restored: Vec<crate::state::KeyGroupSnapshot>,
    ) -> Result<Box<dyn KeyedStateBackend>, Error> {
        let mut backend = MemoryStateBackend::new(self.key_groups());
        backend.restore(restored).map_err(|e| Error::Restore {
            message: format!(
                "operator `{}` subtask {}: {e}",
                self.vertex.uid, self.subtask
            ),
        })?;
        if self.checkpointing.uploader.incremental {
            backend.track_changes();
        }
        Ok(Box::new(backend))
    }

    /// Ends the synchronous phase of a snapshot taken since `sync_started`:
    /// forwards the barrier, then hands the snapshot to the uploader — or,
    /// unaligned, keeps it until the gate has its in-flight records.
    ///
    /// `sync` excludes waiting to send the barrier (backpressure); an
    /// unaligned barrier already went out on the priority lanes when the
    /// snapshot began, only its in-band copy is left to send.
    async fn snapshot_taken(
        &mut self,
        barrier: CheckpointBarrier,
        snapshot: Taken,
        sync: Duration,
        alignment: Duration,
        unaligned: bool,
    ) -> TaskResult {
        self.router.broadcast(|| Element::Barrier(barrier)).await?;
        if unaligned {
            self.awaiting_in_flight = Some((barrier, snapshot, sync));
        } else {
            self.acknowledge(barrier, snapshot, sync, alignment);
        }
        Ok(())
    }

    /// Completes an unaligned snapshot with its in-flight records.
    fn in_flight(&mut self, id: CheckpointId, channels: Vec<InFlightChannel>) {
        match self.awaiting_in_flight.take() {
            Some((barrier, mut snapshot, sync)) if barrier.id == id => {
                snapshot.snapshot.in_flight = channels;
                self.acknowledge(barrier, snapshot, sync, Duration::ZERO);
            }
            other => {
                self.awaiting_in_flight = other;
                self.decline(id, "in-flight records without a snapshot".into());
            }
        }
    }

    /// Hands a snapshot to the uploader; the coordinator hears of it once
    /// it is stored.
    fn acknowledge(
        &self,
        barrier: CheckpointBarrier,
        snapshot: Taken,
        sync: Duration,
        alignment: Duration,
    ) {
        let c = &self.checkpointing;
        c.uploader.upload(
            barrier,
            c.task,
            crate::checkpoint::format::state_file_name(&self.vertex.uid, self.subtask),
            snapshot,
            SyncTiming {
                sync,
                alignment,
                key_groups: self.key_groups(),
            },
            c.coordinator.clone(),
        );
    }

    fn decline(&self, id: CheckpointId, reason: String) {
        let c = &self.checkpointing;
        let _ = c.coordinator.send(CoordinatorMsg::Decline {
            id,
            task: c.task,
            reason,
        });
    }

    // ---- sources ----

    /// Opens the splits a restored snapshot dealt this subtask, or, in a
    /// fresh run, its share of the source's initial splits. A restored
    /// subtask that was dealt none reads nothing: it must not start the
    /// splits of a fresh run.
    fn open_source(&self, kind: &dyn SplitKind, restored: &SubtaskSnapshot) -> Result<Part, Exit> {
        let stored = restored.source_splits().map_err(|e| Error::Restore {
            message: format!(
                "source `{}` subtask {}: a stored split is malformed: {e}",
                self.vertex.uid, self.subtask
            ),
        })?;
        let splits = match stored {
            Some(splits) => splits,
            None => {
                let p = self.vertex.parallelism as usize;
                let all = kind.initial(self.vertex.parallelism);
                all.into_iter()
                    .skip(self.subtask as usize)
                    .step_by(p)
                    .collect()
            }
        };
        Ok(Part::Source(SourceSplits::open(kind, splits)?))
    }

    async fn run_source(&mut self, mut source: SourceSplits) -> TaskResult {
        let mut batch = BatchWriter::default();
        // Restored as ended: it ended before the snapshot (or was dealt no
        // split), and so did whatever ended with it downstream.
        let restored = source.ended_at_start();
        let mut turn = Turn::new();
        let mut watermarks = self
            .vertex
            .watermarks
            .map(|w| SourceWatermarks::new(w, source.len(), Instant::now()));
        'produce: loop {
            if restored {
                break;
            }
            turn.yield_if_due().await;
            while let Ok(c) = self.gate.control().try_recv() {
                match self.source_control(c, &mut source).await? {
                    SourceStep::Go => {}
                    SourceStep::Drain => break 'produce,
                    SourceStep::Stopped => {
                        return self.router.broadcast(|| Element::EndOfInput).await;
                    }
                }
            }
            let pause = source.pause();
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let more = source.next_batch(&mut batch, self.batch_size).await?;
            let now = Instant::now();
            if let Some(w) = &mut watermarks
                && let Some((split, ended)) = source.last_read()
            {
                if !batch.is_empty() {
                    let max = BatchReader::new(batch.as_bytes())
                        .filter_map(|r| r.ok()?.timestamp)
                        .max();
                    w.on_records(split, max, now);
                }
                if ended {
                    w.on_finished(split);
                }
            }
            let n = self.router.route(batch.as_bytes()).await?;
            batch.clear();
            self.counters().records_out.fetch_add(n, Ordering::Relaxed);
            self.router.flush().await?;
            if let Some(event) = watermarks.as_mut().and_then(|w| w.poll(now)) {
                self.router.broadcast(|| Element::Watermark(event)).await?;
            }
            if !more {
                break;
            }
        }
        // Drained or ended: every split keeps its final position.
        source.finish();
        self.router
            .broadcast(|| Element::EndOfData { restored })
            .await?;
        let c = &self.checkpointing;
        let _ = c
            .coordinator
            .send(CoordinatorMsg::SourceFinished { task: c.task });
        // Ended, it still takes part in checkpoints and savepoints with its
        // final position (Flink's checkpoints after tasks finished) until
        // the job ends: once the final checkpoint completed, or, without
        // one, once every source ended.
        let mut final_id = None;
        loop {
            let msg = self.gate.control().recv().await.ok_or(Exit::Cancelled)?;
            match msg {
                Control::Complete(id) if final_id.is_some_and(|f| id >= f) => {
                    return self.router.broadcast(|| Element::EndOfInput).await;
                }
                Control::EndInput => return self.router.broadcast(|| Element::EndOfInput).await,
                Control::Trigger(b) if b.is_final => {
                    final_id = Some(b.id);
                    self.source_control(msg, &mut source).await?;
                }
                other => {
                    if let SourceStep::Stopped = self.source_control(other, &mut source).await? {
                        return self.router.broadcast(|| Element::EndOfInput).await;
                    }
                }
            }
        }
    }

    async fn source_control(
        &mut self,
        c: Control,
        source: &mut SourceSplits,
    ) -> Result<SourceStep, Exit> {
        match c {
            Control::Trigger(barrier) => {
                let started = Instant::now();
                let snapshot = Taken::from(SubtaskSnapshot {
                    lists: vec![ListSection::source_splits(&source.positions())],
                    ..SubtaskSnapshot::default()
                });
                let sync = started.elapsed();
                let unaligned = self.gate.mode() == GateMode::Unaligned && !barrier.savepoint;
                self.router.barrier(barrier, unaligned).await?;
                self.acknowledge(barrier, snapshot, sync, Duration::ZERO);
                if barrier.stop {
                    return Box::pin(self.suspended(barrier.id, source)).await;
                }
                Ok(SourceStep::Go)
            }
            Control::Drain => Ok(SourceStep::Drain),
            Control::Cancel => Err(Exit::Cancelled),
            Control::Complete(_)
            | Control::Abort(_)
            | Control::PriorityBarrier { .. }
            | Control::EndInput => Ok(SourceStep::Go),
        }
    }

    /// After a stop-with-savepoint barrier: sends nothing until savepoint
    /// `id` completed (then the source ends) or was aborted (it resumes).
    async fn suspended(
        &mut self,
        id: CheckpointId,
        source: &mut SourceSplits,
    ) -> Result<SourceStep, Exit> {
        loop {
            match self.gate.control().recv().await.ok_or(Exit::Cancelled)? {
                Control::Complete(done) if done >= id => return Ok(SourceStep::Stopped),
                Control::Abort(aborted) if aborted == id => return Ok(SourceStep::Go),
                other => match Box::pin(self.source_control(other, source)).await? {
                    SourceStep::Go => {}
                    step => return Ok(step),
                },
            }
        }
    }

    // ---- sinks ----

    async fn run_sink(&mut self, mut sink: Box<dyn Sink>) -> TaskResult {
        let mut ending = SinkEnding::default();
        let mut turn = Turn::new();
        loop {
            turn.yield_if_due().await;
            match self.gate.next().await? {
                GateEvent::Records(data, len) => {
                    self.counters()
                        .records_in
                        .fetch_add(len as u64, Ordering::Relaxed);
                    sink.write_batch(&data).await?;
                    self.counters()
                        .records_out
                        .fetch_add(len as u64, Ordering::Relaxed);
                }
                GateEvent::Barrier {
                    barrier,
                    alignment,
                    unaligned,
                } => {
                    let started = Instant::now();
                    let mut snapshot = SubtaskSnapshot::default();
                    sink.pre_commit(barrier.id, &mut snapshot).await?;
                    let snapshot = Taken::from(snapshot);
                    let sync = started.elapsed();
                    ending.barrier(barrier);
                    self.snapshot_taken(barrier, snapshot, sync, alignment, unaligned)
                        .await?;
                }
                GateEvent::InFlight { id, channels } => self.in_flight(id, channels),
                GateEvent::Abandoned(id) => {
                    self.decline(id, "a newer barrier overtook it".into());
                }
                GateEvent::EndOfData { .. } => sink.flush().await?,
                GateEvent::Watermark(_) => {}
                GateEvent::Control(c) => ending.control(c, sink.as_mut()).await?,
                GateEvent::End => {
                    // The completion of a stop's savepoint or of the final
                    // checkpoint went to every subtask before the sources
                    // ended their channels, but may still be on its way
                    // here: commit it first.
                    while let Ok(c) = self.gate.control().try_recv() {
                        ending.control(c, sink.as_mut()).await?;
                    }
                    while !ending.committed() {
                        let c = self.gate.control().recv().await.ok_or(Exit::Cancelled)?;
                        ending.control(c, sink.as_mut()).await?;
                    }
                    if ending.stopped.is_some() {
                        // Suspended: whatever came after the savepoint's
                        // barrier (`on-checkpoint-complete` output) belongs
                        // to no snapshot and is never committed.
                        sink.abandon().await?;
                    } else {
                        sink.finish().await?;
                    }
                    return Ok(());
                }
            }
        }
    }

    // ---- operators ----

    async fn run_operator(&mut self, mut logic: Logic) -> TaskResult {
        let mut turn = Turn::new();
        loop {
            turn.yield_if_due().await;
            let next_timer = match &logic {
                Logic::Wasm(instance) => instance.next_processing_timer(),
                Logic::Native { .. } => None,
            };
            let event = match next_timer {
                None => Some(self.gate.next().await?),
                Some(at) => match u64::try_from(at.saturating_sub(processing_time_now())) {
                    // Due: before any input, so a busy input cannot
                    // starve the timers.
                    Err(_) | Ok(0) => None,
                    // The gate's `next` keeps what it took off a channel
                    // when a timeout drops it, so nothing is lost.
                    Ok(wait) => tokio::time::timeout(Duration::from_millis(wait), self.gate.next())
                        .await
                        .ok()
                        .transpose()?,
                },
            };
            let Some(event) = event else {
                self.fire_timers(
                    &mut logic,
                    TimeDomain::ProcessingTime,
                    processing_time_now(),
                )
                .await?;
                continue;
            };
            match event {
                GateEvent::Watermark(event) => {
                    if let WatermarkEvent::At(w) = event {
                        self.advance_event_time(&mut logic, w).await?;
                    }
                    // After what the timers and the hook emitted.
                    self.router.broadcast(|| Element::Watermark(event)).await?;
                }
                GateEvent::Records(data, len) => {
                    self.counters()
                        .records_in
                        .fetch_add(len as u64, Ordering::Relaxed);
                    match &mut logic {
                        Logic::Wasm(instance) => {
                            // Over its CPU share: wait here, off the worker.
                            let wait = instance.cpu_wait();
                            if !wait.is_zero() {
                                tokio::time::sleep(wait).await;
                            }
                            instance.process(&data).await?;
                        }
                        Logic::Native { op, state, out } => {
                            op.process(&data, state.as_mut(), self.max_parallelism, out)
                                .map_err(|message| Error::BadRecord {
                                    uid: self.vertex.uid.clone(),
                                    message,
                                })?;
                        }
                    }
                    self.emit(&mut logic).await?;
                }
                GateEvent::Barrier {
                    barrier,
                    alignment,
                    unaligned,
                } => {
                    if unaligned {
                        // Downstream snapshots at once too, whatever the
                        // hook emits or the channels hold.
                        self.router.priority_barrier(barrier)?;
                    }
                    let started = Instant::now();
                    let canonical = self.checkpointing.uploader.canonical(&barrier);
                    let incremental = &mut self.incremental;
                    let snapshot = match &mut logic {
                        Logic::Wasm(instance) => {
                            instance.snapshot(barrier.id.0).await?;
                            let (keyed, framed, extends) =
                                take_keyed(instance.state_mut(), &barrier, canonical, incremental);
                            Taken {
                                snapshot: SubtaskSnapshot {
                                    lists: instance.operator_lists(),
                                    ..SubtaskSnapshot::default()
                                },
                                keyed,
                                framed,
                                declared: if barrier.savepoint {
                                    instance.declared_states().to_vec()
                                } else {
                                    Vec::new()
                                },
                                extends,
                            }
                        }
                        Logic::Native { state, .. } => {
                            let (keyed, framed, extends) =
                                take_keyed(state.as_mut(), &barrier, canonical, incremental);
                            Taken {
                                snapshot: SubtaskSnapshot::default(),
                                keyed,
                                framed,
                                declared: Vec::new(),
                                extends,
                            }
                        }
                    };
                    let sync = started.elapsed();
                    // What the snapshot hook emitted precedes the barrier.
                    self.emit(&mut logic).await?;
                    self.snapshot_taken(barrier, snapshot, sync, alignment, unaligned)
                        .await?;
                }
                GateEvent::InFlight { id, channels } => self.in_flight(id, channels),
                GateEvent::Abandoned(id) => {
                    self.decline(id, "a newer barrier overtook it".into());
                }
                // Ended before the restored snapshot: `close` ran then, and
                // its output is in the snapshot's committed past.
                GateEvent::EndOfData { restored: true } => {
                    self.router
                        .broadcast(|| Element::EndOfData { restored: true })
                        .await?;
                }
                GateEvent::EndOfData { restored: false } => {
                    if let Logic::Wasm(instance) = &mut logic {
                        instance.close().await?;
                        tracing::debug!(
                            "`{}`#{} closed holding {} state entries",
                            self.vertex.uid,
                            self.subtask,
                            instance.state().len()
                        );
                    }
                    self.emit(&mut logic).await?;
                    self.router
                        .broadcast(|| Element::EndOfData { restored: false })
                        .await?;
                }
                GateEvent::Control(Control::Complete(id)) => {
                    self.incremental.completed(id);
                    if let Logic::Wasm(instance) = &mut logic {
                        instance.on_checkpoint_complete(id.0).await?;
                        self.emit(&mut logic).await?;
                    }
                }
                GateEvent::Control(Control::Cancel) => return Err(Exit::Cancelled),
                GateEvent::Control(Control::Abort(id)) => {
                    tracing::debug!(
                        "`{}`#{}: checkpoint {id} aborted",
                        self.vertex.uid,
                        self.subtask
                    );
                }
                GateEvent::Control(
                    Control::Trigger(_)
                    | Control::PriorityBarrier { .. }
                    | Control::Drain
                    | Control::EndInput,
                ) => {}
                GateEvent::End => return self.router.broadcast(|| Element::EndOfInput).await,
            }
        }
    }

    /// Moves a plugin's event time to watermark `w`: the timers it made due
    /// fire, then `on-watermark` runs.
    async fn advance_event_time(&mut self, logic: &mut Logic, w: i64) -> TaskResult {
        let Logic::Wasm(instance) = logic else {
            return Ok(());
        };
        instance.set_watermark(w);
        self.fire_timers(logic, TimeDomain::EventTime, w).await?;
        if let Logic::Wasm(instance) = logic {
            instance.on_watermark(w).await?;
        }
        self.emit(logic).await
    }

    /// Fires every timer of `domain` at or before `upto`, in timestamp
    /// order, routing what each emits. Timers a firing registers at or
    /// before `upto` fire in the same round.
    async fn fire_timers(
        &mut self,
        logic: &mut Logic,
        domain: TimeDomain,
        upto: i64,
    ) -> TaskResult {
        loop {
            let Logic::Wasm(instance) = logic else {
                return Ok(());
            };
            let Some(timer) = instance.pop_due_timer(domain, upto)? else {
                return Ok(());
            };
            instance.on_timer(&timer).await?;
            self.emit(logic).await?;
        }
    }

    /// Routes what the logic emitted during the last call.
    async fn emit(&mut self, logic: &mut Logic) -> TaskResult {
        let n = match logic {
            Logic::Wasm(instance) => {
                self.metrics.vertices[self.v_idx].add_counters(instance.take_counters());
                let out = instance.output();
                let n = self.router.route(out).await?;
                out.clear();
                n
            }
            Logic::Native { out, .. } => {
                let n = self.router.route(out.as_bytes()).await?;
                out.clear();
                n
            }
        };
        self.counters().records_out.fetch_add(n, Ordering::Relaxed);
        self.router.flush().await
    }
}

/// What a sink must commit before it ends.
#[derive(Default)]
struct SinkEnding {
    /// The barrier of a stop with savepoint (suspend) it pre-committed.
    stopped: Option<CheckpointId>,
    /// The barrier of the job's final checkpoint it pre-committed.
    final_barrier: Option<CheckpointId>,
    /// The newest checkpoint it committed.
    committed: Option<CheckpointId>,
}

impl SinkEnding {
    fn barrier(&mut self, barrier: CheckpointBarrier) {
        if barrier.stop {
            self.stopped = Some(barrier.id);
        }
        if barrier.is_final {
            self.final_barrier = Some(barrier.id);
        }
    }

    /// Whether the stop's savepoint or the final checkpoint, if any, was
    /// committed.
    fn committed(&self) -> bool {
        self.stopped
            .or(self.final_barrier)
            .is_none_or(|id| self.committed.is_some_and(|c| c >= id))
    }

    async fn control(&mut self, c: Control, sink: &mut dyn Sink) -> TaskResult {
        match c {
            Control::Complete(id) => {
                sink.commit(id).await?;
                self.committed = self.committed.max(Some(id));
                Ok(())
            }
            // The stop failed: the sources resume.
            Control::Abort(id) if self.stopped == Some(id) => {
                self.stopped = None;
                Ok(())
            }
            Control::Cancel => Err(Exit::Cancelled),
            Control::Trigger(_)
            | Control::Abort(_)
            | Control::PriorityBarrier { .. }
            | Control::Drain
            | Control::EndInput => Ok(()),
        }
    }
}

/// The control channel of a subtask, for the runtime to keep its sender.
pub(crate) fn control_channel() -> (ControlSender, ControlReceiver) {
    tokio::sync::mpsc::unbounded_channel()
}

/// A subtask's keyed state for `barrier`, encoded straight from the live
/// tables: state by state for a canonical savepoint; key group by key
/// group for a checkpoint or native savepoint — whole, or, incremental,
/// only what changed since the checkpoint it then extends.
fn take_keyed(
    state: &mut dyn crate::state::KeyedStateBackend,
    barrier: &CheckpointBarrier,
    canonical: bool,
    incremental: &mut super::incremental::Incremental,
) -> (
    Vec<crate::checkpoint::format::EncodedKeyGroup>,
    Vec<crate::savepoint::format::FramedSection>,
    Option<CheckpointId>,
) {
    use super::incremental::Plan;
    if canonical {
        return (
            Vec::new(),
            frame_keyed_sections(&state.snapshot_views()),
            None,
        );
    }
    // A savepoint is whole and changes nothing: the changes it holds
    // still go into the next checkpoint.
    if barrier.savepoint || !state.tracks_changes() {
        return (encode_key_groups(&state.snapshot_views()), Vec::new(), None);
    }
    let interval = state.end_interval();
    let entries = state.len();
    let plan = incremental.plan(
        barrier.id,
        interval,
        state.changes_len(),
        entries,
        state.changes_untracked_through(),
    );
    // Past a sixteenth of the state a whole checkpoint is cheaper to take
    // than a delta (encoding the whole state in order costs ~10 ns a key;
    // recording, finding and encoding a changed key ~300 ns): no use
    // recording more, the next checkpoint is whole.
    state.budget_changes(
        (entries / super::incremental::DELTA_FRACTION).max(super::incremental::MIN_CHANGE_BUDGET),
    );
    match plan {
        Plan::Whole { forget_through } => {
            state.reset_changes(forget_through);
            (encode_key_groups(&state.snapshot_views()), Vec::new(), None)
        }
        Plan::Delta { extends, since } => (state.encode_changes(since), Vec::new(), Some(extends)),
    }
}
