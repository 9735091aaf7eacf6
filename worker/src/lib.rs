//! convoy's worker: the daemon that runs training ranks, and what runs inside each rank.
//!
//! * [`daemon`]: registers with the coordinator, starts each rank as a child process,
//!   ships its output, reports its exit, and reattaches after a coordinator restart.
//! * [`rank`]: the rank process — rendezvous, the TCP ring, the engine's training loop.
//! * [`collective`]: the TCP ring all-reduce that implements the engine's
//!   [`convoy_engine::collective::GradReducer`].

pub mod collective;
pub mod daemon;
pub mod error;
pub mod rank;

pub use error::WorkerError;
