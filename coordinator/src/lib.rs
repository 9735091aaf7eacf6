//! convoy's coordinator core: the cluster state machine, the gang scheduler and the durable
//! command log — everything the coordinator decides, with no networking and no clock.
//!
//! The shape follows raft-rs's RawNode/Ready: one I/O loop (planned) receives requests and
//! timer ticks, turns them into [`Command`]s, and hands them to a [`Coordinator`], which
//! appends each to the [`log::CommandLog`] before [`ClusterState::apply`] runs it; the
//! returned [`Effect`]s are what the loop then does on the network. [`scheduler::schedule`]
//! is a pure function of the state whose decisions come back as commands. Because nothing in
//! here does I/O or reads time, it is tested without sockets and can later be replicated by
//! swapping the log for Raft.

pub mod checkpoints;
pub mod coordinator;
pub mod error;
pub mod log;
pub mod model;
pub mod scheduler;
pub mod server;
pub mod state;

pub use coordinator::Coordinator;
pub use error::{ApplyError, CoordinatorError, StoreError};
pub use log::{CommandLog, SledLog, recover};
pub use model::{
    Attempt, AttemptOutcome, Cordon, Job, JobId, JobState, Liveness, Millis, Progress, RankExit,
    Worker, WorkerId,
};
pub use scheduler::{Decision, Note, Plan, schedule, schedule_at};
pub use state::{ClusterConfig, ClusterState, Command, Effect, SubmitJob};
