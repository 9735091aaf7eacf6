//! convoy's coordinator: the cluster state machine, the gang scheduler, the durable command
//! log, the checkpoint store, and the daemon that serves them ([`server`]).
//!
//! The shape follows raft-rs's RawNode/Ready: one I/O loop ([`server::event_loop`]) receives
//! requests and timer ticks, turns them into [`Command`]s and hands them to a
//! [`LoggedState`], which appends each to the [`log::CommandLog`] before
//! [`ClusterState::apply`] runs it; the returned [`Effect`]s are what the loop then does on
//! the network. [`scheduler::schedule_at`] is a pure function of the state whose decisions
//! come back as commands. Because the state machine and the scheduler do no I/O and read no
//! clock, they are tested without sockets and can later be replicated by swapping the log
//! for Raft.

pub mod checkpoints;
pub mod error;
pub mod identity;
pub mod log;
pub mod logged_state;
pub mod model;
pub mod replication;
pub mod scheduler;
pub mod server;
pub mod state;

pub use error::{ApplyError, CoordinatorError, StoreError};
pub use log::{CommandLog, SledLog, recover};
pub use logged_state::LoggedState;
pub use model::{
    Attempt, AttemptOutcome, Cordon, Job, JobId, JobState, Liveness, Millis, Progress, RankExit,
    Worker, WorkerId,
};
pub use scheduler::{Decision, Note, Plan, WaitReason, schedule_at};
pub use state::{ClusterConfig, ClusterState, Command, Effect, SubmitJob};
