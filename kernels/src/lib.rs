//! convoy's op set: every forward and backward kernel the training engine uses, over flat
//! `f32` slices with explicit shapes.
//!
//! This crate is the contract between the engine and its backends. The CPU functions here are
//! both a real backend (for CPU clusters) and the reference that the CUDA kernels are tested
//! against, so each op family lives in one module that a CUDA `.cu` file mirrors one to one.
//!
//! Conventions shared by every kernel:
//! - tensors are row-major and contiguous; shapes are written as `[B, T, C]` in each doc comment;
//! - backward kernels *accumulate* into parameter and input gradients (`+=`), as in llm.c, so
//!   that weight tying, residual branches and gradient accumulation need no extra buffers;
//! - results never depend on the number of threads: parallel reductions split work into chunks
//!   of a fixed size and combine the partial results in a fixed order (bit-exact resume and
//!   world-size equivalence rely on this);
//! - shape mismatches are programmer errors and panic (`assert!`), as do out-of-range token ids
//!   and targets;
//! - matrix products go through one GEMM entry point (`gemm.rs`, the `gemm` crate on the rayon
//!   pool, see the GEMM section of BENCHMARKS.md); the other hot loops are written to auto-vectorise and are
//!   compiled twice, for baseline x86-64 and for AVX2 picked at run time, with bit-identical
//!   results (no FMA contraction, fixed reduction lanes).

pub mod activation;
pub mod attention;
pub mod cuda;
pub mod encoder;
mod gemm;
pub mod gradnorm;
pub mod layernorm;
pub mod loss;
pub mod matmul;
pub mod optim;
mod par;
pub mod residual;
mod simd;
#[cfg(test)]
mod testutil;

/// Target value that marks a position excluded from the cross-entropy loss.
pub const IGNORE_INDEX: u32 = u32::MAX;

/// LayerNorm epsilon, as GPT-2.
pub const LAYERNORM_EPS: f32 = 1e-5;
