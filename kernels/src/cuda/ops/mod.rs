//! Typed launches of the CUDA kernels: one function per kernel (or per chain of kernels that
//! make one op, like attention), taking device views with their shapes.
//!
//! Each function checks that every view holds what its shape says before it launches, so the
//! `unsafe` launch inside is sound for any arguments that pass those checks: a wrong shape is
//! a panic naming the op and the buffer (a bug in the caller, as with the CPU kernels), never
//! an out-of-bounds access on the GPU. Launch shapes (block sizes) are fixed functions of the
//! problem's shape, because the row and column sums depend on them: the same model on the same
//! GPU gives bit-identical results run after run.

mod attention;
mod cublaslt;
mod elementwise;
mod encoder;
mod gemm;
mod layernorm;
mod loss;
mod optim;

pub use attention::{
    attention_backward, attention_forward, flash_attention_backward, flash_attention_forward,
    flash_attention_supported,
};
pub use cublaslt::CublasLt;
pub use elementwise::{gelu_backward, gelu_forward, residual_forward};
pub use encoder::{DeviceTokenBuckets, encoder_backward, encoder_forward};
pub use gemm::{Gemm, Operand, gemm, matmul_backward, matmul_dbias, matmul_forward, to_bf16};
pub use layernorm::{LN_ROWS_PER_PARTIAL, layernorm_backward, layernorm_forward, ln_partial_rows};
pub use loss::crossentropy_forward_backward;
pub use optim::{adamw_update, clip_grads, global_norm, sgd_update};

use cudarc::driver::{CudaSlice, DeviceRepr, DriverError, LaunchConfig, ValidAsZeroBits};

use super::Device;
use super::error::CudaError;

/// A zeroed device buffer of `n` elements (at least one, so a view of an empty shape still
/// has a buffer), or an error naming `what`.
pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
    dev: &Device,
    n: usize,
    what: &str,
) -> Result<CudaSlice<T>, CudaError> {
    dev.stream
        .alloc_zeros::<T>(n.max(1))
        .map_err(|e| CudaError::Driver {
            during: format!("allocating {what} ({n} elements)"),
            msg: e.to_string(),
        })
}

/// Panics unless `len` holds at least `need` elements: the check that makes a launch sound.
#[track_caller]
fn need(op: &str, buffer: &str, len: usize, need: usize) {
    assert!(
        len >= need,
        "{op}: {buffer} holds {len} elements but the shape needs {need}"
    );
}

/// `x` as the kernel's `int`, or a panic naming the op (shapes past 2^31 are not supported).
#[track_caller]
fn int(op: &str, what: &str, x: usize) -> i32 {
    i32::try_from(x).unwrap_or_else(|_| panic!("{op}: {what} = {x} does not fit an int"))
}

/// One thread per element, 1024 per block: for the kernels that guard `i < n` without a
/// grid-stride loop, this grid must cover `n` (it does up to 2^42 elements).
fn grid_1d(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(1024).clamp(1, u32::MAX as usize) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row (the grid-stride row kernels accept any grid; past 2^31 rows the blocks
/// loop), `row_threads(width)` threads.
fn grid_rows(rows: usize, width: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.clamp(1, i32::MAX as usize) as u32, 1, 1),
        block_dim: (row_threads(width), 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Threads for a block that owns one row of `width` elements: a multiple of 32 (the block
/// sums need whole warps), one element per thread up to 1024. A function of the width only,
/// so a model's row sums never change between runs.
pub fn row_threads(width: usize) -> u32 {
    (width.div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// A failed launch as the crate's error, naming the kernel.
fn launched<T>(kernel: &str, r: Result<T, DriverError>) -> Result<(), CudaError> {
    r.map(drop).map_err(|e| CudaError::Driver {
        during: format!("launching {kernel}"),
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_threads_are_whole_warps_up_to_a_full_block() {
        assert_eq!(row_threads(1), 32);
        assert_eq!(row_threads(64), 64);
        assert_eq!(row_threads(65), 96);
        assert_eq!(row_threads(768), 768);
        assert_eq!(row_threads(50_304), 1024);
    }

    #[test]
    fn the_1d_grid_covers_every_element() {
        for n in [0, 1, 1023, 1024, 1025, 10_000_000] {
            let g = grid_1d(n);
            assert!(g.grid_dim.0 as usize * g.block_dim.0 as usize >= n);
        }
    }

    #[test]
    #[should_panic(expected = "gelu_forward: out holds 3 elements but the shape needs 4")]
    fn a_short_buffer_is_named() {
        need("gelu_forward", "out", 3, 4);
    }
}
