//! A subtask's outputs: the channels to every downstream subtask, with a
//! batch buffer per channel, and the [`Router`] that partitions records
//! over them and broadcasts control events (barriers, end of input) in
//! order with the data.
//!
//! Each channel also has a priority lane, the receiving subtask's control
//! channel: an unaligned checkpoint's barrier goes there first, overtaking
//! the records queued in the channel, and in-band after them as a marker.

use weir_format::{BatchReader, BatchWriter};

use super::{
    CheckpointBarrier, Control, ControlSender, DataReceiver, DataSender, Element, Exit, TaskResult,
};
use crate::error::Error;
use crate::job::{JobGraph, Partition};
use crate::keygroup::{key_group_of, subtask_of};

/// An output edge of one subtask: the channels to each downstream subtask
/// it can reach (one for `forward`).
pub(crate) struct OutEdge {
    partition: Partition,
    targets: Vec<DataSender>,
    /// Per target: its subtask's control channel and which of its input
    /// channels this is.
    priority: Vec<(ControlSender, usize)>,
    buffers: Vec<BatchWriter>,
    next: usize,
}

pub(crate) type Wiring = (Vec<Vec<Vec<OutEdge>>>, Vec<Vec<Vec<DataReceiver>>>);

/// Creates the channels: per vertex, per subtask, its output edges and
/// input receivers. `controls[first[v] + j]` is the control channel of
/// subtask `j` of vertex `v`.
pub(crate) fn wire(graph: &JobGraph, controls: &[ControlSender], first: &[usize]) -> Wiring {
    let mut outputs: Vec<Vec<Vec<OutEdge>>> = graph
        .vertices
        .iter()
        .map(|v| (0..v.parallelism).map(|_| Vec::new()).collect())
        .collect();
    let mut inputs: Vec<Vec<Vec<DataReceiver>>> = graph
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
                let mut priority = Vec::new();
                for j in reachable {
                    let (tx, rx) = tokio::sync::mpsc::channel(graph.channel_capacity.max(1));
                    targets.push(tx);
                    let receiver = &mut inputs[down][j as usize];
                    priority.push((controls[first[down] + j as usize].clone(), receiver.len()));
                    receiver.push(rx);
                }
                outputs[edge.from][i as usize].push(OutEdge {
                    partition: edge.partition,
                    priority,
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
pub(crate) struct Router {
    uid: String,
    edges: Vec<OutEdge>,
    batch_size: usize,
    max_parallelism: u32,
}

impl Router {
    pub(crate) fn new(
        uid: String,
        edges: Vec<OutEdge>,
        batch_size: usize,
        max_parallelism: u32,
    ) -> Self {
        Self {
            uid,
            edges,
            batch_size,
            max_parallelism,
        }
    }

    /// Routes every record of `packed`; returns how many records it held.
    pub(crate) async fn route(&mut self, packed: &[u8]) -> Result<u64, Exit> {
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
                                send(t, b).await?;
                            }
                        }
                        continue;
                    }
                };
                // Only the buffer just written can have filled up.
                let buffer = &mut edge.buffers[target];
                buffer.push_record(&record);
                if buffer.len() >= self.batch_size {
                    send(&edge.targets[target], buffer).await?;
                }
            }
        }
        Ok(count)
    }

    /// Sends every partly filled buffer.
    pub(crate) async fn flush(&mut self) -> TaskResult {
        for edge in &mut self.edges {
            for (j, b) in edge.buffers.iter_mut().enumerate() {
                if !b.is_empty() {
                    send(&edge.targets[j], b).await?;
                }
            }
        }
        Ok(())
    }

    /// Forwards checkpoint barrier `barrier`. Unaligned, it first
    /// overtakes everything queued, through each receiver's priority lane;
    /// either way it then follows everything routed so far in-band.
    pub(crate) async fn barrier(
        &mut self,
        barrier: CheckpointBarrier,
        unaligned: bool,
    ) -> TaskResult {
        if unaligned {
            self.priority_barrier(barrier)?;
        }
        self.broadcast(|| Element::Barrier(barrier)).await
    }

    /// Sends an unaligned barrier through every receiver's priority lane
    /// (never blocks); its in-band copy must follow with [`Router::barrier`]
    /// or [`Router::broadcast`].
    pub(crate) fn priority_barrier(&mut self, barrier: CheckpointBarrier) -> TaskResult {
        for edge in &self.edges {
            for (control, channel) in &edge.priority {
                control
                    .send(Control::PriorityBarrier {
                        barrier,
                        channel: *channel,
                    })
                    .map_err(|_| Exit::Cancelled)?;
            }
        }
        Ok(())
    }

    /// Flushes, then sends `event` (a barrier, end of data or end of
    /// input) to every downstream subtask, after everything routed so far.
    pub(crate) async fn broadcast(&mut self, event: impl Fn() -> Element) -> TaskResult {
        self.flush().await?;
        for edge in &self.edges {
            for t in &edge.targets {
                t.send(event()).await.map_err(|_| Exit::Cancelled)?;
            }
        }
        Ok(())
    }
}

/// Sends a full (or flushed) buffer, waiting while the channel is full
/// (backpressure).
async fn send(target: &DataSender, buffer: &mut BatchWriter) -> TaskResult {
    let (data, len) = buffer.take();
    target
        .send(Element::Records { data, len })
        .await
        .map_err(|_| Exit::Cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::keygroup::{key_group_of, subtask_of};
    use crate::runtime::block_on;

    fn edge(partition: Partition, targets: usize) -> (OutEdge, Vec<DataReceiver>) {
        let (txs, rxs): (Vec<_>, Vec<_>) =
            (0..targets).map(|_| tokio::sync::mpsc::channel(64)).unzip();
        let edge = OutEdge {
            partition,
            priority: Vec::new(),
            buffers: (0..targets).map(|_| BatchWriter::default()).collect(),
            targets: txs,
            next: 0,
        };
        (edge, rxs)
    }

    /// Every record's key on each receiver, until end of input.
    fn drain(rx: &mut DataReceiver) -> Vec<String> {
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
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn routes_by_partition_in_batches_then_ends_every_channel() {
        let (fwd, mut fwd_rx) = edge(Partition::Forward, 1);
        let (reb, mut reb_rx) = edge(Partition::Rebalance, 2);
        let (hash, mut hash_rx) = edge(Partition::Hash, 3);
        let (bc, mut bc_rx) = edge(Partition::Broadcast, 2);
        let mut router = Router::new("up".into(), vec![fwd, reb, hash, bc], 4, 128);
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let mut batch = BatchWriter::default();
        for k in &keys {
            batch.push(Some(k.as_bytes()), b"v", None);
        }
        assert_eq!(block_on(router.route(batch.as_bytes())).ok(), Some(10));
        // Full batches left before the flush.
        assert_eq!(fwd_rx[0].len(), 2);
        assert!(block_on(router.broadcast(|| Element::EndOfInput)).is_ok());

        assert_eq!(drain(&mut fwd_rx[0]), keys);
        let (r0, r1) = (drain(&mut reb_rx[0]), drain(&mut reb_rx[1]));
        assert_eq!((r0.len(), r1.len()), (5, 5), "round robin");
        let mut hashed = 0;
        for (j, rx) in hash_rx.iter_mut().enumerate() {
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
        assert_eq!(drain(&mut bc_rx[0]), keys);
        assert_eq!(drain(&mut bc_rx[1]), keys);
    }

    #[test]
    fn a_keyless_record_on_a_hash_edge_is_a_bad_record() {
        let (hash, _rx) = edge(Partition::Hash, 2);
        let mut router = Router::new("up".into(), vec![hash], 4, 128);
        let mut batch = BatchWriter::default();
        batch.push(None, b"v", None);
        match block_on(router.route(batch.as_bytes())) {
            Err(Exit::Failed(Error::BadRecord { uid, .. })) => assert_eq!(uid, "up"),
            _ => panic!("expected a bad record"),
        }
    }
}
