//! The cluster's domain types: jobs, their attempts, and workers.
//!
//! Everything here is plain data (serde, `PartialEq`) so the whole cluster state can be
//! snapshotted, compared in tests, and later replicated through Raft. Time is a `u64` of
//! milliseconds ([`Millis`]) carried in commands: the core never reads a clock, which is what
//! makes replaying a command log give the same state.

use std::collections::BTreeMap;
use std::fmt;

use convoy_spec::Backend;
use serde::{Deserialize, Serialize};

/// Milliseconds since an epoch chosen by the I/O loop (Unix time in practice).
pub type Millis = u64;

/// A job's identity, assigned by the state machine in submit order; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

/// A worker's identity, assigned at first registration and kept across re-registrations of the
/// same name, so history (attempt placements, failure counts) stays attached to the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker-{}", self.0)
    }
}

/// Where a job is in its life. `Succeeded`, `Failed` and `Cancelled` are final.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for the scheduler (new, or requeued after a failed attempt).
    Queued,
    /// The latest attempt is running on its placement.
    Running,
    Succeeded,
    Failed {
        reason: String,
    },
    Cancelled,
}

impl JobState {
    /// True for the states a job never leaves.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed { .. } | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobState::Queued => f.write_str("queued"),
            JobState::Running => f.write_str("running"),
            JobState::Succeeded => f.write_str("succeeded"),
            JobState::Failed { reason } => write!(f, "failed ({reason})"),
            JobState::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// How one rank's process ended, as its worker reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RankExit {
    /// Exit status 0.
    Success,
    /// A non-zero status (or a signal, which the worker maps to a status) and the last lines
    /// of the rank's log, kept so the job's failure reason says what went wrong.
    Failure { status: i32, log_tail: String },
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    /// Every rank exited 0.
    Succeeded,
    /// A rank was lost (failed, its worker died, or the gang stopped making progress).
    Failed { reason: String },
    /// The job was cancelled while this attempt ran.
    Cancelled,
}

/// One try at running a job: a gang of `world_size` ranks placed on workers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Strictly increasing per job (1, 2, …). Every report from a rank carries the generation
    /// it was launched with, so a report from an earlier, stopped attempt cannot be mistaken
    /// for one from the current attempt.
    pub generation: u64,
    /// `placement[rank]` is the worker that runs that rank.
    pub placement: Vec<WorkerId>,
    pub started_at: Millis,
    /// Set when the attempt ends, with `outcome`.
    pub ended_at: Option<Millis>,
    pub outcome: Option<AttemptOutcome>,
    /// Ranks that have exited so far, by rank.
    pub exits: BTreeMap<usize, RankExit>,
}

impl Attempt {
    /// True until the attempt has an outcome.
    pub fn is_live(&self) -> bool {
        self.outcome.is_none()
    }

    /// The distinct workers that host a rank which has not exited yet, in id order.
    pub fn workers_with_running_ranks(&self) -> Vec<WorkerId> {
        let mut ws: Vec<WorkerId> = self
            .placement
            .iter()
            .enumerate()
            .filter(|(rank, _)| !self.exits.contains_key(rank))
            .map(|(_, w)| *w)
            .collect();
        ws.sort();
        ws.dedup();
        ws
    }
}

/// The latest training step a job reported, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The attempt that reported it; a timeout only counts progress of the current attempt.
    pub generation: u64,
    pub step: u64,
    pub at: Millis,
}

/// Which checkpoints a job keeps: the newest few (resume needs the latest) and the best few by
/// one metric (what a user exports). Taken from the spec once, at submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// The newest checkpoints kept; at least 1 is kept whatever this says.
    pub keep_last: u32,
    /// The best checkpoints by `best_metric` kept in addition (they may overlap the newest).
    pub keep_best: u32,
    pub best_metric: String,
    /// Whether lower is better (a loss) or higher (an accuracy).
    pub minimize: bool,
}

/// A submitted training job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    /// The spec's `name`.
    pub name: String,
    /// The spec exactly as submitted (TOML); workers receive this text.
    pub spec_text: String,
    /// The client's id for the submission (see [`crate::SubmitJob::request_id`]).
    pub request_id: String,
    /// Which of its checkpoints the job keeps (from the spec's `[checkpoint]`).
    pub retention: Retention,
    /// The spec's `init_from` (a file, or `job:ID[@STEP]`), if any.
    pub init_from: Option<String>,
    /// Optimizer steps the spec asks for (for progress displays).
    pub steps: u64,
    /// Ranks in the gang (from the spec); every attempt places exactly this many.
    pub world_size: usize,
    pub backend: Backend,
    /// Higher runs first.
    pub priority: i32,
    /// Submit order across all jobs: FIFO within a priority.
    pub seq: u64,
    pub submitted_at: Millis,
    pub state: JobState,
    /// Attempts after the first that a failing job gets before it is marked failed.
    pub max_restarts: u32,
    /// An attempt that reports no progress for this long is treated as lost; `None` disables.
    pub progress_timeout: Option<Millis>,
    /// Where relative paths in the spec point (see [`crate::SubmitJob::workdir`]).
    pub workdir: String,
    /// Who submitted it: they (and administrators) may act on it. Empty: submitted before
    /// convoy had users, or without authentication; administrators only.
    #[serde(default)]
    pub owner: String,
    pub attempts: Vec<Attempt>,
    pub last_progress: Option<Progress>,
    /// A requeued job starts no earlier than this (0: at once).
    pub not_before: Millis,
    /// Attempts made before the last `convoy resume`; the restart budget counts from here.
    pub resumed_after: usize,
}

impl Job {
    /// The latest attempt if it is still running.
    pub fn live_attempt(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.is_live())
    }

    /// The job whose checkpoint `init_from = "job:ID[@STEP]"` names, if it names one.
    pub fn init_from_job(&self) -> Option<JobId> {
        let (id, _) = self
            .init_from
            .as_deref()?
            .strip_prefix(convoy_spec::JOB_PREFIX)
            .and_then(|r| convoy_spec::parse_job_ref(r).ok())?;
        id.trim()
            .strip_prefix("job-")
            .unwrap_or(id.trim())
            .parse()
            .ok()
            .map(JobId)
    }

    /// The generation the next attempt must carry.
    pub fn next_generation(&self) -> u64 {
        self.attempts.last().map_or(1, |a| a.generation + 1)
    }
}

/// Whether a worker is heard from. Orthogonal to [`Cordon`]: a cordoned worker can be lost and
/// come back still cordoned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    Alive,
    /// No heartbeat within the timeout; its ranks were given up. It must re-register.
    Lost,
}

/// Why a worker takes no new ranks. Running ranks are left alone (a drain, not an eviction).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cordon {
    /// An operator's decision.
    Operator,
    /// Cordoned automatically after this many rank failures in a row.
    Failures { consecutive: u32 },
}

/// A machine running the worker daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub id: WorkerId,
    /// Unique among alive workers (normally the host name).
    pub name: String,
    /// Ranks it runs at once (CPU slots).
    pub slots: u32,
    /// GPUs it reports (what its CUDA driver counts; 0 on a CPU machine).
    pub gpus: u32,
    pub liveness: Liveness,
    pub cordon: Option<Cordon>,
    /// The daemon process that registered last (see [`crate::Command::RegisterWorker`]).
    pub instance: String,
    pub registered_at: Millis,
    pub last_heartbeat: Millis,
    /// Rank failures on this worker since its last rank success (or uncordon).
    pub consecutive_failures: u32,
}

impl Worker {
    /// Alive and not cordoned: may receive new ranks.
    pub fn schedulable(&self) -> bool {
        self.liveness == Liveness::Alive && self.cordon.is_none()
    }

    /// Not heard from for over half the heartbeat timeout at `now`: possibly dead, so it gets
    /// no new ranks until it heartbeats again. A worker killed with its ranks makes their
    /// peers fail at once, but it is declared lost only after the whole timeout; a gang
    /// restarted in between must not land on it. Healthy workers heartbeat several times
    /// per timeout and are never silent.
    pub fn silent(&self, now: Millis, heartbeat_timeout: Millis) -> bool {
        now.saturating_sub(self.last_heartbeat) > heartbeat_timeout / 2
    }

    /// How many ranks of a job with this backend fit on an empty worker: every rank takes a
    /// slot, and a CUDA rank also takes a GPU.
    pub fn capacity_for(&self, backend: Backend) -> u32 {
        match backend {
            Backend::Cpu => self.slots,
            Backend::Cuda => self.slots.min(self.gpus),
        }
    }
}

/// Slots and GPUs taken on one worker by live attempts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub slots: u32,
    pub gpus: u32,
}

impl Usage {
    /// What one rank of a job with this backend takes.
    pub fn per_rank(backend: Backend) -> Usage {
        match backend {
            Backend::Cpu => Usage { slots: 1, gpus: 0 },
            Backend::Cuda => Usage { slots: 1, gpus: 1 },
        }
    }

    /// How many more ranks of `backend` fit on `worker` given this usage.
    pub fn free_for(&self, worker: &Worker, backend: Backend) -> u32 {
        let slots = worker.slots.saturating_sub(self.slots);
        match backend {
            Backend::Cpu => slots,
            Backend::Cuda => slots.min(worker.gpus.saturating_sub(self.gpus)),
        }
    }

    pub fn add(&mut self, backend: Backend, ranks: u32) {
        let r = Usage::per_rank(backend);
        // Saturating: a worker may register any u32 of slots, and sums must not wrap.
        self.slots = self.slots.saturating_add(r.slots.saturating_mul(ranks));
        self.gpus = self.gpus.saturating_add(r.gpus.saturating_mul(ranks));
    }
}
