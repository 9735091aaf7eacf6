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
pub mod state;
pub mod train;

pub use convoy_spec as spec;
pub use error::{EngineError, Result};

#[cfg(test)]
mod tests {
    /// The spec refuses flash attention for head sizes the kernels lack; the two lists must
    /// not drift apart.
    #[test]
    fn the_spec_knows_the_flash_head_sizes_the_kernels_have() {
        for head in 1..=256 {
            assert_eq!(
                crate::spec::FLASH_HEAD_SIZES.contains(&head),
                convoy_kernels::cuda::ops::flash_attention_supported(head, 1),
                "head size {head}"
            );
        }
    }
}
