//! Shared by the GPU tests: the device (or a printed skip), and comparison with the CPU
//! reference at a stated tolerance.

#![allow(dead_code)]

use convoy_kernels::cuda::Device;

/// GPU 0, or `None` after printing why the test is skipped (no driver or no GPU here).
pub fn device_or_skip(test: &str) -> Option<Device> {
    match Device::open(0) {
        Ok(Some(d)) => Some(d),
        Ok(None) => {
            eprintln!("{test}: skipped (no CUDA driver or no GPU on this machine)");
            None
        }
        Err(e) => panic!("{test}: the GPU is present but unusable: {e}"),
    }
}

/// Asserts |gpu − cpu| ≤ atol + rtol·|cpu| elementwise, naming the first offender.
pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], rtol: f32, atol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths differ");
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let tol = atol + rtol * c.abs();
        assert!(
            (g - c).abs() <= tol || (g.is_nan() && c.is_nan()),
            "{what}[{i}]: gpu {g} vs cpu {c} (tolerance {tol})"
        );
    }
}

/// Deterministic test data in [-1, 1).
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Threads per block and blocks for `n` elements, one thread each.
pub fn grid_1d(n: usize) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig::for_num_elems(n as u32)
}

/// `blocks` blocks of `threads` threads (a multiple of 32, ≤ 1024), no dynamic shared memory:
/// the launch of the one-block-per-row kernels (their grid-stride loops accept any grid).
pub fn grid_blocks(blocks: usize, threads: u32) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig {
        grid_dim: (blocks.clamp(1, i32::MAX as usize) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}
