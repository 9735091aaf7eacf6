//! Gradient all-reduce between the ranks of a CPU job, over plain TCP.
//!
//! Ranks form a ring: each connects to its right neighbour and accepts its left one
//! ([`connect`]), checking a handshake so a rank left over from an earlier attempt cannot join
//! ([`wire`]). [`Ring`] all-reduces flat buffers with reduce-scatter + all-gather in a fixed
//! summation order; [`RingReducer`] drives it from a communication thread so buckets of
//! gradients travel while the backward pass still runs.

mod connect;
mod error;
mod reducer;
mod ring;
pub mod wire;

pub use error::{Peer, RingError};
pub use reducer::RingReducer;
pub use ring::{ReduceOp, Ring, RingCloser, RingConfig};
pub use wire::Elem;
