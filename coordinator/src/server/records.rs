//! Ranks' log lines and step metrics, kept per job with a bound, in sled.
//!
//! These are not commands: they do not change what the scheduler decides, so they stay out of
//! the command log (and out of Raft later) and are written without a flush per record. Each
//! job's records are numbered from 0; when a job holds more than its bound, the oldest go.
//! Followers wait on [`Records::subscribe`], which ticks on every append.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use prost::Message;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::error::StoreError;
use crate::log::codec::RecordOp;
use crate::model::JobId;
use crate::server::fail_stop::FailStop;

/// Log lines or metrics: one sled tree keyed by (job, sequence number), both big-endian so
/// sled's order is a job's record order.
struct Series {
    tree: sled::Tree,
    bound: u64,
    /// Per job, the sequence numbers held: `first..next`.
    held: Mutex<HashMap<JobId, Range<u64>>>,
}

fn key(job: JobId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&job.0.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn split_key(k: &[u8]) -> Option<(JobId, u64)> {
    let job = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(k.get(8..16)?.try_into().ok()?);
    Some((JobId(job), seq))
}

impl Series {
    fn open(db: &sled::Db, name: &str, bound: u64) -> Result<Series, StoreError> {
        let tree = db
            .open_tree(name)
            .map_err(StoreError::records(format!("open the {name} tree")))?;
        let mut held: HashMap<JobId, Range<u64>> = HashMap::new();
        for item in tree.iter() {
            let (k, _) = item.map_err(StoreError::records(format!("scan {name}")))?;
            let Some((job, seq)) = split_key(&k) else {
                return Err(StoreError::RecordsInvalid(format!(
                    "{name}: a key of {} bytes (expected 16)",
                    k.len()
                )));
            };
            let r = held.entry(job).or_insert(seq..seq);
            r.start = r.start.min(seq);
            r.end = r.end.max(seq + 1);
        }
        Ok(Series {
            tree,
            bound: bound.max(1),
            held: Mutex::new(held),
        })
    }

    fn append(&self, job: JobId, value: &[u8]) -> Result<(), StoreError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let r = held.entry(job).or_insert(0..0);
        self.tree
            .insert(key(job, r.end), value)
            .map_err(StoreError::records(format!("append a record of {job}")))?;
        r.end += 1;
        while r.end - r.start > self.bound {
            self.tree
                .remove(key(job, r.start))
                .map_err(StoreError::records(format!("trim the records of {job}")))?;
            r.start += 1;
        }
        Ok(())
    }

    fn remove_job(&self, job: JobId) -> Result<u64, StoreError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let Some(range) = held.remove(&job) else {
            return Ok(0);
        };
        for seq in range.clone() {
            self.tree
                .remove(key(job, seq))
                .map_err(StoreError::records(format!("remove the records of {job}")))?;
        }
        Ok(range.end - range.start)
    }

    /// Up to `max` records of `job` from sequence number `from` (or the oldest held, if that
    /// was trimmed), with the sequence number to continue from.
    fn read(
        &self,
        job: JobId,
        from: u64,
        max: usize,
    ) -> Result<(Vec<sled::IVec>, u64), StoreError> {
        let start = {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            match held.get(&job) {
                Some(r) => from.max(r.start),
                None => return Ok((vec![], from)),
            }
        };
        let mut out = vec![];
        let mut next = start;
        for item in self
            .tree
            .range(key(job, start)..key(job, u64::MAX))
            .take(max)
        {
            let (k, v) = item.map_err(StoreError::records(format!("read the records of {job}")))?;
            if let Some((_, seq)) = split_key(&k) {
                next = seq + 1;
            }
            out.push(v);
        }
        Ok((out, next))
    }
}

/// The log and metrics store of one coordinator.
pub struct Records {
    logs: Series,
    metrics: Series,
    changed: watch::Sender<u64>,
    fail_stop: FailStop,
}

impl Records {
    /// Opens (or creates) the store in `dir`, keeping at most `log_bound` lines and
    /// `metrics_bound` metric records per job.
    /// A failure to write is fatal (see [`FailStop`]): sled refuses all work after one.
    pub fn open(
        dir: &Path,
        log_bound: u64,
        metrics_bound: u64,
        fail_stop: FailStop,
    ) -> Result<Records, StoreError> {
        let db = sled::open(dir).map_err(StoreError::records(format!("open {}", dir.display())))?;
        Ok(Records {
            logs: Series::open(&db, "logs", log_bound)?,
            metrics: Series::open(&db, "metrics", metrics_bound)?,
            changed: watch::channel(0).0,
            fail_stop,
        })
    }

    pub fn append_log(&self, job: JobId, encoded: &[u8]) -> Result<(), StoreError> {
        self.checked(self.logs.append(job, encoded))
    }

    fn checked(&self, r: Result<(), StoreError>) -> Result<(), StoreError> {
        match &r {
            Ok(()) => self.changed.send_modify(|v| *v += 1),
            Err(e) => self.fail_stop.fail("the records store", e),
        }
        r
    }

    /// A line from convoy itself in the job's log (stream "convoy"), so `convoy logs` tells
    /// the job's story: attempts started, failed, requeued, finished, checkpoints saved.
    pub fn append_event(&self, job: JobId, generation: u64, text: String) {
        if let Err(e) = self.append_log(job, &event_line(generation, text)) {
            tracing::warn!("keeping a log line of {job}: {e}");
        }
    }

    /// Writes records a replicated log committed.
    pub fn apply(&self, ops: &[RecordOp]) {
        for op in ops {
            let (job, r) = match op {
                RecordOp::Log { job, line } => (job, self.append_log(*job, line)),
                RecordOp::Metrics { job, metrics } => (job, self.append_metrics(*job, metrics)),
                RecordOp::ForgetJob { job, .. } => (job, self.remove_job(*job).map(|_| ())),
                // The checkpoint store's (see the event loop).
                RecordOp::ForgetCheckpoints { .. } => continue,
            };
            if let Err(e) = r {
                tracing::warn!("keeping a record of {job}: {e}");
            }
        }
    }

    pub fn append_metrics(&self, job: JobId, encoded: &[u8]) -> Result<(), StoreError> {
        self.checked(self.metrics.append(job, encoded))
    }

    pub fn read_logs(
        &self,
        job: JobId,
        from: u64,
        max: usize,
    ) -> Result<(Vec<sled::IVec>, u64), StoreError> {
        self.logs.read(job, from, max)
    }

    pub fn read_metrics(
        &self,
        job: JobId,
        from: u64,
        max: usize,
    ) -> Result<(Vec<sled::IVec>, u64), StoreError> {
        self.metrics.read(job, from, max)
    }

    /// Removes every log line and metric record of `job`; returns how many went.
    pub fn remove_job(&self, job: JobId) -> Result<u64, StoreError> {
        let r = self
            .logs
            .remove_job(job)
            .and_then(|a| Ok(a + self.metrics.remove_job(job)?));
        if let Err(e) = &r {
            self.fail_stop.fail("the records store", e);
        }
        r
    }

    /// The newest step record of `job` (not an evaluation), looking back over a few records:
    /// what a job showed as its latest step and loss before a restart.
    pub fn last_step_metrics(
        &self,
        job: JobId,
    ) -> Result<Option<convoy_proto::v1::StepMetrics>, StoreError> {
        let range = key(job, 0)..key(job, u64::MAX);
        for item in self.metrics.tree.range(range).rev().take(16) {
            let (_, v) = item.map_err(StoreError::records(format!("read the metrics of {job}")))?;
            if let Ok(m) = convoy_proto::v1::StepMetrics::decode(v.as_ref())
                && m.val_loss.is_none()
            {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// The highest job id with records, if any.
    pub fn newest_job(&self) -> Option<JobId> {
        let newest = |s: &Series| {
            let held = s.held.lock().unwrap_or_else(|e| e.into_inner());
            held.keys().max().copied()
        };
        newest(&self.logs).max(newest(&self.metrics))
    }

    /// Wakes followers without a new record (a job reached a final state).
    pub fn touch(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Ticks whenever a record is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// One of convoy's own job events as a log line (stream "convoy"), encoded.
pub fn event_line(generation: u64, text: String) -> Vec<u8> {
    convoy_proto::v1::LogLine {
        rank: 0,
        generation,
        stream: "convoy".into(),
        text,
        at_ms: crate::server::clock::now_ms(),
    }
    .encode_to_vec()
}
