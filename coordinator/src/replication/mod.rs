//! Replicating the command log with Raft (tikv/raft-rs). In progress: today the coordinator
//! runs on [`crate::log::SledLog`]; this module holds the pieces of the replicated log as they
//! are built, each tested on its own.
//!
//! - [`RaftStorage`]: raft-rs's `Storage` on sled (entries, hard state, conf state, the
//!   snapshot), durable before it returns, every record enveloped and checked.
//! - [`Replica`]: a `RawNode` on that storage and its `Ready` handling, with no I/O of its own:
//!   what to send and what was committed come back to the caller.
//! - [`PeerService`] and [`Outbox`]: Raft messages between replicas over gRPC, heard only from
//!   configured members presenting the cluster's id and secret.

mod members;
mod replica;
mod replicated_state;
mod storage;
mod transport;

pub use members::{AddressBook, MemberChange, Membership, canonical};
pub use replica::{ELECTION_TICKS, HEARTBEAT_TICKS, Output, Replica};
pub use replicated_state::{Advance, Applied, MemberOp, ReplicatedState};
pub use storage::RaftStorage;
pub use transport::{Inbound, Outbox, PartReplica, PartStream, PeerService, secret_header};
