//! Replicating the command log with Raft (tikv/raft-rs). In progress: today the coordinator
//! runs on [`crate::log::SledLog`]; this module holds the pieces of the replicated log as they
//! are built, each tested on its own.
//!
//! - [`RaftStorage`]: raft-rs's `Storage` on sled (entries, hard state, conf state, the
//!   snapshot), durable before it returns, every record enveloped and checked.
//! - [`Replica`]: a `RawNode` on that storage and its `Ready` handling, with no I/O of its own:
//!   what to send and what was committed come back to the caller.

mod replica;
mod storage;

pub use replica::{ELECTION_TICKS, HEARTBEAT_TICKS, Output, Replica};
pub use storage::RaftStorage;
