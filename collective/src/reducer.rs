//! The engine's [`GradReducer`] over a [`Ring`], with communication overlapping the backward
//! pass.
//!
//! `bucket_ready` copies a finished bucket out and queues it for a communication thread that
//! owns the ring and all-reduces buckets in the order they come; the trainer's backward pass
//! meanwhile computes the next bucket. `finish` is where the step waits for the network.

use std::mem;
use std::ops::Range;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use convoy_engine::collective::{Bucket, GradReducer};
use convoy_engine::{EngineError, Result};

use crate::error::CollectiveError;
use crate::ring::{ReduceOp, Ring, RingCloser};

/// Work for the communication thread; the reply gives the same buffer back, reduced.
enum Work {
    /// One bucket's gradients, contiguous; reduced to the mean over ranks.
    Grads(Vec<f32>),
    /// Summed over ranks.
    Scalars(Vec<f64>),
}

type Reply = std::result::Result<Work, String>;

/// A [`GradReducer`] for one rank of a CPU job: a [`Ring`] driven by a communication thread
/// that lives as long as the reducer (it is joined on drop).
pub struct RingReducer {
    rank: usize,
    world: usize,
    work: Option<mpsc::Sender<Work>>,
    replies: mpsc::Receiver<Reply>,
    /// The buckets queued this step, in order: where each reply's values go back.
    pending: Vec<Bucket>,
    /// Bucket buffers returned by earlier steps, reused so a step allocates nothing.
    pool: Vec<Vec<f32>>,
    /// The first failure; the ring is unusable after it.
    failed: Option<String>,
    closer: RingCloser,
    thread: Option<JoinHandle<()>>,
}

impl RingReducer {
    pub fn new(ring: Ring) -> std::result::Result<RingReducer, CollectiveError> {
        let (rank, world) = (ring.rank(), ring.world());
        let closer = ring.closer()?;
        let (work, work_rx) = mpsc::channel();
        let (reply_tx, replies) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("convoy-ring-{rank}"))
            .spawn(move || serve(ring, work_rx, reply_tx))
            .map_err(|source| CollectiveError::Local {
                during: "starting the communication thread",
                source,
            })?;
        Ok(RingReducer {
            rank,
            world,
            work: Some(work),
            replies,
            pending: Vec::new(),
            pool: Vec::new(),
            failed: None,
            closer,
            thread: Some(thread),
        })
    }

    fn error(&self, msg: &str) -> EngineError {
        EngineError::Collective(format!("rank {}: {msg}", self.rank))
    }

    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            Some(first) => Err(self.error(&format!("the ring failed earlier: {first}"))),
            None => Ok(()),
        }
    }

    fn submit(&mut self, item: Work) -> Result<()> {
        let sent = self.work.as_ref().map(|j| j.send(item));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    fn stopped(&mut self) -> EngineError {
        let msg = "the communication thread stopped unexpectedly".to_string();
        self.failed.get_or_insert(msg.clone());
        self.error(&msg)
    }
}

/// The communication thread: reduce work in arrival order until the reducer goes away.
fn serve(mut ring: Ring, work: mpsc::Receiver<Work>, replies: mpsc::Sender<Reply>) {
    for item in work {
        let reply = match item {
            Work::Grads(mut v) => ring
                .all_reduce(&mut v, ReduceOp::Mean)
                .map(|()| Work::Grads(v)),
            Work::Scalars(mut v) => ring
                .all_reduce(&mut v, ReduceOp::Sum)
                .map(|()| Work::Scalars(v)),
        };
        if replies.send(reply.map_err(|e| e.to_string())).is_err() {
            break;
        }
    }
}

impl GradReducer for RingReducer {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn bucket_ready(&mut self, grads: &[f32], bucket: &[Range<usize>]) -> Result<()> {
        self.check_failed()?;
        if let Some(r) = bucket
            .iter()
            .find(|r| r.start > r.end || r.end > grads.len())
        {
            return Err(self.error(&format!(
                "bucket range {r:?} lies outside the gradient buffer of {} elements",
                grads.len()
            )));
        }
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        for r in bucket {
            buf.extend_from_slice(&grads[r.clone()]);
        }
        self.pending.push(bucket.to_vec());
        self.submit(Work::Grads(buf))
    }

    fn finish(&mut self, grads: &mut [f32]) -> Result<()> {
        let pending = mem::take(&mut self.pending);
        // Drain every reply of the step, even after an error, so no stale reply is left
        // for the next call to misread.
        let mut first_err = None;
        let mut covered = 0usize;
        for bucket in &pending {
            match self.replies.recv() {
                Ok(Ok(Work::Grads(v))) => {
                    let mut at = 0;
                    for r in bucket {
                        grads[r.clone()].copy_from_slice(&v[at..at + r.len()]);
                        at += r.len();
                    }
                    covered += at;
                    self.pool.push(v);
                }
                Ok(Ok(Work::Scalars(_))) => {
                    first_err.get_or_insert_with(|| "internal error: scalars out of turn".into());
                }
                Ok(Err(msg)) => {
                    first_err.get_or_insert(msg);
                }
                Err(_) => return Err(self.stopped()),
            }
        }
        if let Some(e) = first_err {
            self.failed.get_or_insert(e.clone());
            return Err(self.error(&e));
        }
        self.check_failed()?;
        if covered != grads.len() {
            return Err(self.error(&format!(
                "this step's buckets cover {covered} of {} gradients; every gradient must be in exactly one bucket",
                grads.len()
            )));
        }
        Ok(())
    }

    fn sum_scalars(&mut self, values: &mut [f64]) -> Result<()> {
        self.check_failed()?;
        if !self.pending.is_empty() {
            return Err(self.error(
                "sum_scalars called with gradient buckets still pending; call finish first",
            ));
        }
        self.submit(Work::Scalars(values.to_vec()))?;
        match self.replies.recv() {
            Ok(Ok(Work::Scalars(v))) if v.len() == values.len() => {
                values.copy_from_slice(&v);
                Ok(())
            }
            Ok(Ok(_)) => Err(self.error("internal error: unexpected reply to sum_scalars")),
            Ok(Err(msg)) => {
                self.failed.get_or_insert(msg.clone());
                Err(self.error(&msg))
            }
            Err(_) => Err(self.stopped()),
        }
    }
}

impl Drop for RingReducer {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop; shutting the sockets ends a collective it
        // may be blocked in (a reducer dropped mid-step), so the join below is prompt.
        self.work.take();
        self.closer.close();
        if let Some(t) = self.thread.take() {
            // A panic on the thread has nothing left to report to; don't panic in drop.
            let _ = t.join();
        }
    }
}
