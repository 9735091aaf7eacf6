//! convoy's training engine: what every rank runs.
//!
//! A job is described by a [`spec::JobSpec`]; a [`train::Trainer`] builds its model and data
//! for one rank and runs the step loop, exchanging gradients through a
//! [`collective::GradReducer`] (a no-op for one process; the cluster supplies the TCP ring or
//! NCCL). All arithmetic goes through the op set in `convoy-kernels`.

pub mod collective;
pub mod data;
pub mod error;
pub mod export;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod sample;
pub mod schedule;
pub mod spec;
pub mod state;
pub mod train;

pub use error::{EngineError, Result};
