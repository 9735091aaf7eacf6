//! Shared by the GPU tests: the device (or a printed skip), and comparison with the CPU
//! reference at a stated tolerance.

#![allow(dead_code)]

use convoy_kernels::cuda::Device;
use convoy_kernels::cuda::ops::Operand;

/// GPU 0, or `None` after printing why the test is skipped (no driver or no GPU here). With
/// `CONVOY_REQUIRE_GPU=1` (the emulated GPU pass, emu/gpu_tests.sh) a missing GPU fails.
pub fn device_or_skip(test: &str) -> Option<Device> {
    match Device::open(0) {
        Ok(Some(d)) => Some(d),
        Ok(None) if std::env::var_os("CONVOY_REQUIRE_GPU").is_some() => {
            panic!("{test}: CONVOY_REQUIRE_GPU is set but no GPU (or stand-in driver) is visible")
        }
        Ok(None) => {
            eprintln!("{test}: skipped (no CUDA driver or no GPU on this machine)");
            None
        }
        Err(e) => panic!("{test}: the GPU is present but unusable: {e}"),
    }
}

/// Whether `dev` is convoy's PTX interpreter (emu/cuda) rather than a GPU: it has no cuBLASLt.
pub fn emulated(dev: &Device) -> bool {
    dev.ctx
        .name()
        .is_ok_and(|n| n.starts_with("convoy emulated"))
}

/// Asserts |gpu − cpu| ≤ atol + rtol·|cpu| elementwise, naming the first offender. Equal
/// values (infinities included) and NaN against NaN pass.
pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], rtol: f32, atol: f32) {
    let tol: Vec<f32> = cpu.iter().map(|c| atol + rtol * c.abs()).collect();
    assert_close_each(what, gpu, cpu, &tol);
}

/// As [`assert_close`] with a tolerance per element.
pub fn assert_close_each(what: &str, gpu: &[f32], cpu: &[f32], tol: &[f32]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths differ");
    assert_eq!(tol.len(), cpu.len(), "{what}: one tolerance per element");
    for (i, ((g, c), t)) in gpu.iter().zip(cpu).zip(tol).enumerate() {
        assert!(
            g == c || (g - c).abs() <= *t || (g.is_nan() && c.is_nan()),
            "{what}[{i}]: gpu {g} vs cpu {c} (tolerance {t})"
        );
    }
}

/// The tolerance between two fp32 sums of the same `n` terms in different orders: each is
/// within (n − 1)·2^-24·Σ|terms| of the exact sum (the classic bound for recursive summation,
/// whatever the order or blocking), so they are within twice that of each other.
pub fn sum_order_tolerance(n: usize, abs_sum: f64) -> f32 {
    (2.0 * n as f64 * abs_sum / (1u64 << 24) as f64) as f32
}

/// Per channel of an [N, C] column sum `init[c] + Σ_rows term(row, c)`: the tolerance of two
/// summation orders ([`sum_order_tolerance`] over the N + 1 terms).
pub fn column_sum_tolerance(
    n: usize,
    c: usize,
    init: &[f32],
    term: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    (0..c)
        .map(|j| {
            let abs: f64 =
                f64::from(init[j].abs()) + (0..n).map(|i| f64::from(term(i, j).abs())).sum::<f64>();
            1e-6 + sum_order_tolerance(n + 1, abs)
        })
        .collect()
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

/// bf16's unit roundoff: 8 significant bits (7 stored and the implicit one), so rounding an
/// fp32 value x to the nearest bf16 moves it by at most 2^-8·|x| (half an ulp; the ulp of a
/// bf16 is between 2^-8 and 2^-7 of its value).
pub const BF16_ROUNDING: f32 = 1.0 / 256.0;

/// The nearest bf16 (ties to even) as its bit pattern, like `__float2bfloat16_rn`: written
/// here independently of the code under test. NaN stays a (quiet) NaN; overflow gives ±inf.
pub fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if x.is_nan() {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// The value of a bf16 bit pattern: the pattern in the high half of an f32 (exact).
pub fn bf16_value(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// An activation storage type as the tests make its host values: `from_host` is the nearest
/// value of the type (fp32 itself; bf16 rounded to nearest even, as the device's `store`).
pub trait Storage: Operand + Copy {
    fn from_host(x: f32) -> Self;
}

impl Storage for f32 {
    fn from_host(x: f32) -> f32 {
        x
    }
}

impl Storage for u16 {
    fn from_host(x: f32) -> u16 {
        bf16_bits(x)
    }
}

/// `x` stored as `A` (rounded to bf16 for `u16`).
pub fn stored<A: Storage>(x: &[f32]) -> Vec<A> {
    x.iter().map(|&v| A::from_host(v)).collect()
}

/// Values of type `A` widened to f32 through `Operand::to_f32` (exact).
pub fn widen<A: Operand + Copy>(x: &[A]) -> Vec<f32> {
    x.iter().map(|&v| v.to_f32()).collect()
}

/// `x` rounded to the nearest bf16 values (as f32): what a bf16 buffer of `x` holds.
pub fn rounded(x: &[f32]) -> Vec<f32> {
    widen(&stored::<u16>(x))
}

/// The largest |x| (0 for an empty slice): the scale that absolute tolerances refer to.
pub fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The tolerance (rtol, atol) of a bf16 output that is one rounding of an fp32 value within
/// (rtol, atol) of the reference c: |bf16(g) − c| ≤ 2^-8·|g| + |g − c| and
/// |g| ≤ |c| + |g − c|, so rtol grows by 2^-8 and both by a factor 1 + 2^-8.
pub fn after_one_rounding(rtol: f32, atol: f32) -> (f32, f32) {
    let u = BF16_ROUNDING;
    (u + rtol * (1.0 + u), atol * (1.0 + u))
}
