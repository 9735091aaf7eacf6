//! Gradient all-reduce between the ranks of a job: a TCP ring for CPU jobs, NCCL for CUDA jobs.
//!
//! CPU ranks form a ring: each connects to its right neighbour and accepts its left one
//! ([`connect`]), checking a handshake so a rank left over from an earlier attempt cannot join
//! ([`wire`]) and each side proves it knows the attempt's secret ([`proof`]), so nothing else
//! can. [`Ring`] all-reduces flat buffers with reduce-scatter + all-gather in a fixed
//! summation order; [`RingReducer`] drives it from a communication thread so buckets of
//! gradients travel while the backward pass still runs.
//!
//! CUDA ranks keep gradients on the GPU: [`NcclReducer`] averages each bucket in place with
//! NCCL on a stream of its own, from a thread that owns the communicator and aborts it when a
//! peer is lost or hangs. Rank 0 makes the communicator's id ([`nccl_unique_id`]) and the
//! rendezvous hands it to the others.

mod connect;
mod error;
mod nccl;
mod proof;
mod reducer;
mod ring;
pub mod wire;

pub use connect::RingConfig;
pub use error::{CollectiveError, Peer};
pub use nccl::{NCCL_ID_BYTES, NcclReducer, nccl_available, nccl_unique_id};
pub use reducer::RingReducer;
pub use ring::{ReduceOp, Ring, RingCloser};
pub use wire::Elem;
