//! Auto-vectorisable math building blocks and runtime AVX2 multiversioning.
//!
//! The crate is compiled for baseline x86-64 (SSE2), so hot loops are written as plain scalar
//! code over fixed 8-wide lanes that LLVM vectorises, and [`multiversion!`] compiles them a
//! second time with AVX2 for the CPUs that have it. No fused multiply-add is ever used (Rust does
//! not contract `a * b + c`), and every reduction keeps 8 explicit lanes combined in a fixed
//! order, so the SSE2 and AVX2 builds produce bit-identical results, whatever the thread count.

/// Number of independent accumulators in the reductions below (one AVX2 register of `f32`).
const LANES: usize = 8;

/// Defines a function whose body is compiled twice, for baseline x86-64 and with AVX2, and
/// picks the AVX2 copy at run time when the CPU supports it (the check is a cached load).
///
/// The `#[inline(always)]` helpers of this module are inlined into both copies, so their loops
/// get 8-wide vectors in the AVX2 one. (A generic `target_feature` wrapper taking a closure does
/// not work: LLVM declines to inline the closure into it.) Arguments are plain identifiers.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                $(#[$attr])*
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? $body
                // SAFETY: the CPU supports AVX2, the only feature `avx2` is compiled for.
                return unsafe { avx2($($arg),*) };
            }
            $body
        }
    };
}
pub(crate) use multiversion;

/// Combines the 8 lanes pairwise, in a fixed order.
#[inline(always)]
fn reduce_lanes(a: [f32; LANES]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// Σ x, accumulated in 8 lanes (element i goes to lane i mod 8).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (l, &t) in tail.iter().enumerate() {
        acc[l] += t;
    }
    reduce_lanes(acc)
}

/// Σ a·b, accumulated in 8 lanes.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (&x, &y)) in ta.iter().zip(tb).enumerate() {
        acc[l] += x * y;
    }
    reduce_lanes(acc)
}

/// Σ (x - shift)², accumulated in 8 lanes.
#[inline(always)]
pub(crate) fn sum_sq_dev(x: &[f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] - shift;
            acc[l] += d * d;
        }
    }
    for (l, &t) in tail.iter().enumerate() {
        let d = t - shift;
        acc[l] += d * d;
    }
    reduce_lanes(acc)
}

/// Σ x² in `f64` (4 lanes, one AVX2 register of `f64`), for norms of long buffers.
#[inline(always)]
pub(crate) fn sum_sq_f64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let chunks = x.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..4 {
            let v = f64::from(c[l]);
            acc[l] += v * v;
        }
    }
    for (l, &t) in tail.iter().enumerate() {
        let v = f64::from(t);
        acc[l] += v * v;
    }
    (acc[0] + acc[2]) + (acc[1] + acc[3])
}

/// Largest element (NaNs are skipped here; they still poison whatever is computed from the row).
/// Returns `-inf` for an empty slice.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    for (l, &t) in tail.iter().enumerate() {
        acc[l] = if t > acc[l] { t } else { acc[l] };
    }
    acc.into_iter()
        .fold(f32::NEG_INFINITY, |m, a| if a > m { a } else { m })
}

/// `out[i] = exp(x[i] - shift)`; returns Σ out (8 lanes). The softmax inner loop.
#[inline(always)]
pub(crate) fn exp_shifted_sum(out: &mut [f32], x: &[f32], shift: f32) -> f32 {
    debug_assert_eq!(out.len(), x.len());
    let mut acc = [0.0f32; LANES];
    let (co, cx) = (out.chunks_exact_mut(LANES), x.chunks_exact(LANES));
    let tail_x = cx.remainder();
    for (o, xs) in co.zip(cx) {
        for l in 0..LANES {
            let e = exp(xs[l] - shift);
            o[l] = e;
            acc[l] += e;
        }
    }
    let n = x.len() - tail_x.len();
    for (l, (o, &xv)) in out[n..].iter_mut().zip(tail_x).enumerate() {
        let e = exp(xv - shift);
        *o = e;
        acc[l] += e;
    }
    reduce_lanes(acc)
}

/// Σ exp(x[i] - shift) without storing the terms (loss-only cross-entropy).
#[inline(always)]
pub(crate) fn exp_shifted_sum_only(x: &[f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += exp(c[l] - shift);
        }
    }
    for (l, &t) in tail.iter().enumerate() {
        acc[l] += exp(t - shift);
    }
    reduce_lanes(acc)
}

/// `x[i] *= s`.
#[inline(always)]
pub(crate) fn scale(x: &mut [f32], s: f32) {
    for v in x {
        *v *= s;
    }
}

/// `e^x` in `f32`, branch-free so that loops over it vectorise (libm's `expf` is a scalar call).
///
/// Cephes' `expf`: `x = n·ln2 + r` with `|r| ≤ ln2/2`, a polynomial for `e^r`, and `2^n` built
/// in the exponent bits. Relative error below 2e-7 where the result is a normal float; results
/// below 2^-125 (x < -86.6) flush to 0, x > 88.72 gives `+inf`, and NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const HI: f32 = 88.722_83;
    const LO: f32 = -86.6;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding 1.5·2^23 rounds to an integer and leaves it in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Comparisons written so that NaN passes through unchanged.
    let xc = if x > HI { HI } else { x };
    let xc = if xc < LO { LO } else { xc };
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * z + r + 1.0;
    // n is in [-125, 128]; its two's complement sits in the low bits of t. 2^n is built as
    // 2^(n-1)·2 so that n = 128 still has a finite exponent field.
    let n_int = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let pow2 = f32::from_bits((n_int.wrapping_add(126) as u32) << 23);
    let y = er * pow2 * 2.0;
    let y = if x > HI { f32::INFINITY } else { y };
    if x < LO { 0.0 } else { y }
}

/// `tanh(x)` in `f32`, branch-free (Cephes' `tanhf`): an odd polynomial near 0, where the
/// exponential formula would cancel, and `1 - 2/(e^{2|x|} + 1)` elsewhere. Relative error
/// below 3e-7.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * x
            + x;
    let large = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    let large = if x < 0.0 { -large } else { large };
    if a < 0.625 { small } else { large }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_err(got: f32, want: f64) -> f64 {
        (f64::from(got) - want).abs() / want.abs().max(1e-30)
    }

    #[test]
    fn exp_matches_f64_over_its_range() {
        let mut worst: f64 = 0.0;
        let mut x = -86.5f32;
        while x < 88.7 {
            worst = worst.max(rel_err(exp(x), f64::from(x).exp()));
            x += 0.001_37;
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(88.7) > 3e38);
        assert_eq!(exp(100.0), f32::INFINITY);
    }

    #[test]
    fn tanh_matches_f64_over_its_range() {
        let mut worst: f64 = 0.0;
        let mut x = -12.0f32;
        while x < 12.0 {
            worst = worst.max(rel_err(tanh(x), f64::from(x).tanh()));
            x += 0.000_97;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(50.0), 1.0);
        assert_eq!(tanh(-50.0), -1.0);
        assert!(tanh(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_match_naive_sums() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive_sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
        let naive_dot: f64 = x.iter().zip(&y).map(|(&a, &b)| f64::from(a * b)).sum();
        assert!((f64::from(sum(&x)) - naive_sum).abs() < 1e-5);
        assert!((f64::from(dot(&x, &y)) - naive_dot).abs() < 1e-5);
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max(&x), m);
        let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!((sum_sq_f64(&x) - ss).abs() < 1e-12);
        let mut e = vec![0.0; x.len()];
        let s = exp_shifted_sum(&mut e, &x, m);
        assert!((s - exp_shifted_sum_only(&x, m)).abs() == 0.0);
        let want: f64 = x.iter().map(|&v| (f64::from(v) - f64::from(m)).exp()).sum();
        assert!((f64::from(s) - want).abs() < 1e-5);
    }

    /// A bit of everything above, for comparing the two compilations.
    #[inline(always)]
    fn mix(x: &[f32]) -> (f32, f32, f32, Vec<f32>, Vec<f32>) {
        let mut e = vec![0.0; x.len()];
        let s = exp_shifted_sum(&mut e, x, 3.0);
        let t: Vec<f32> = x.iter().map(|&v| tanh(v)).collect();
        (s, sum(x), dot(x, &e), e, t)
    }

    multiversion! {
    fn mix_multiversioned(x: &[f32]) -> (f32, f32, f32, Vec<f32>, Vec<f32>) {
                mix(x)
            }
        }

    #[test]
    fn avx2_copy_is_bit_identical_to_baseline() {
        let x: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.731).sin() * 20.0).collect();
        assert_eq!(mix(&x), mix_multiversioned(&x));
    }
}
