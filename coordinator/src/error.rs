//! Errors of the coordinator core. Each message names the ids and values involved, so a
//! rejected command can be understood from the one line the I/O loop logs or returns.

use crate::model::{JobId, JobState, Millis, WorkerId};

/// Why the state machine rejected a command. A rejected command leaves the state unchanged,
/// which is what lets a log replay skip it the same way the original apply did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    #[error("unknown worker {0}")]
    UnknownWorker(WorkerId),
    #[error("invalid submission: {0}")]
    InvalidSubmit(String),
    #[error("request id {request_id:?} already submitted {job} with a different spec")]
    RequestReused { request_id: String, job: JobId },
    #[error("a worker named {name:?} is already registered and alive as {id}")]
    DuplicateWorker { name: String, id: WorkerId },
    #[error("invalid worker registration {name:?}: {msg}")]
    InvalidWorker { name: String, msg: String },
    #[error("{worker} is marked lost; it must register again before it is heard")]
    WorkerLost { worker: WorkerId },
    #[error("{job}: report for generation {got}, but the current generation is {current}")]
    StaleGeneration { job: JobId, got: u64, current: u64 },
    #[error("{job}: generation {generation} has already ended")]
    AttemptEnded { job: JobId, generation: u64 },
    #[error("{job}: cannot start generation {got}; the next generation is {expected}")]
    WrongGeneration { job: JobId, got: u64, expected: u64 },
    #[error("{job} is held until {until} ms after a failed attempt")]
    Held { job: JobId, until: Millis },
    #[error("{job} is {state}; only a queued job can be started")]
    JobNotQueued { job: JobId, state: JobState },
    #[error("{job} has no running attempt ({state})")]
    JobNotRunning { job: JobId, state: JobState },
    #[error("{job} has already finished ({state}); there is nothing to cancel")]
    JobAlreadyFinished { job: JobId, state: JobState },
    #[error("{job} is {state}; only a finished job can be deleted (cancel it first)")]
    NotFinished { job: JobId, state: JobState },
    #[error("{job} is {state}; only a failed or cancelled job can be resumed")]
    NotResumable { job: JobId, state: JobState },
    #[error("{job}: invalid placement: {msg}")]
    BadPlacement { job: JobId, msg: String },
    #[error("{job} generation {generation}: rank {rank} is out of range (world size {world_size})")]
    RankOutOfRange {
        job: JobId,
        generation: u64,
        rank: usize,
        world_size: usize,
    },
    #[error("invalid cluster settings: {0}")]
    InvalidConfig(String),
    #[error(transparent)]
    Identity(#[from] crate::identity::ApiError),
    #[error("{job} generation {generation}: rank {rank} has already reported its exit")]
    DuplicateExit {
        job: JobId,
        generation: u64,
        rank: usize,
    },
}

/// A failure of the durable command log or its snapshots.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("command log: {context}: {source}")]
    Sled {
        context: String,
        #[source]
        source: sled::Error,
    },
    /// sled failed under the records store (logs and metrics).
    #[error("records store: {context}: {source}")]
    RecordsSled {
        context: String,
        #[source]
        source: sled::Error,
    },
    /// A records-store key this store never writes (a damaged or foreign database).
    #[error("records store: {0}")]
    RecordsInvalid(String),
    #[error("command log: cannot encode {what}: {msg}")]
    Encode { what: String, msg: String },
    /// An entry that does not decode: the log is damaged at this index.
    #[error("command log entry {index} is corrupt: {msg}")]
    CorruptEntry { index: u64, msg: String },
    #[error("command log snapshot is corrupt: {0}")]
    CorruptSnapshot(String),
    #[error("command log: {0}")]
    Invalid(String),
    #[error("command log: cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The replicated log's storage or Raft itself failed (see `replication`).
    #[error("replicated log: {0}")]
    Raft(String),
    /// The log holds less than was acknowledged: entries were lost (a damaged or replaced file).
    #[error(
        "command log {location}: {msg}; the log lost acknowledged entries, so the coordinator \
         refuses to start rather than serve an older state (restore the data directory from a \
         backup)"
    )]
    RolledBack { location: String, msg: String },
    /// This replica was removed from its cluster (a membership change it applied, or found
    /// in its storage at start).
    #[error(
        "coordinator {node} was removed from the cluster; it no longer serves (to join again, \
         empty its data directory and add it with `convoy coordinators --add`)"
    )]
    Removed { node: u64 },
}

impl StoreError {
    pub(crate) fn sled(context: impl Into<String>) -> impl FnOnce(sled::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Sled { context, source }
    }

    pub(crate) fn records(context: impl Into<String>) -> impl FnOnce(sled::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::RecordsSled { context, source }
    }
}

/// Any error of the coordinator core.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
