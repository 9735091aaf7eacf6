//! Replicating the command log with Raft (tikv/raft-rs). In progress: today the coordinator
//! runs on [`crate::log::SledLog`]; this module holds the pieces of the replicated log as they
//! are built, each tested on its own.
//!
//! - [`RaftStorage`]: raft-rs's `Storage` on sled (entries, hard state, conf state, the
//!   snapshot), durable before it returns, every record enveloped and checked.

mod storage;

pub use storage::RaftStorage;
