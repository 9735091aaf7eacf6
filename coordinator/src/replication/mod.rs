//! Replicating the command log with Raft (tikv/raft-rs): a coordinator started with
//! `--peers` runs on these pieces instead of [`crate::log::SledLog`] (see ARCHITECTURE.md,
//! "Replication").
//!
//! - [`RaftStorage`]: raft-rs's `Storage` on sled (entries, hard state, conf state with the
//!   members' addresses, the snapshot), durable before it returns, every record enveloped and
//!   checked.
//! - [`Replica`]: a `RawNode` on that storage and its `Ready` handling, with no I/O of its own:
//!   what to send and what was committed come back to the caller.
//! - [`ReplicatedState`]: the state machine on top — propose, apply once committed, serve
//!   only as a leader that has applied its predecessors' entries; membership changes.
//! - [`Membership`] and [`AddressBook`]: who the members are and where, as applied.
//! - [`PeerService`] and [`Outbox`]: Raft messages between replicas over gRPC, heard only from
//!   members presenting the cluster's id and secret.

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
