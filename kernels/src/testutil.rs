//! Helpers shared by the unit tests: seeded inputs, f64 central differences and tolerances.
//!
//! Gradient checks run the f32 kernel's backward with `dout = R` and compare what it added to the
//! gradient buffers with f64 central differences of `L = Σ out·R` computed on an f64 reference
//! forward. The numeric side is exact to ~1e-9, so the tolerance only covers the kernel's f32
//! rounding: `|got - want| ≤ tol·(1 + |want|)`, with tol = 1e-4 for kernels that reduce over
//! a row or a head (layernorm, attention, matmul) and 1e-5 to 1e-6 for elementwise ones.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `len` values uniform in [-1, 1).
pub fn uniform(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

/// `after - before`: what a backward kernel added to an accumulating gradient buffer.
pub fn added(after: &[f32], before: &[f32]) -> Vec<f32> {
    assert_eq!(after.len(), before.len());
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// Central differences of `loss` at `x`, all in f64 with step 1e-6: truncation error ~1e-12 and
/// rounding error ~1e-10 for the O(1..100) losses of the tests, so this is the exact gradient as
/// far as the f32 kernels are concerned.
pub fn numeric_grad(x: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    const H: f64 = 1e-6;
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            x[i] = x0 + H;
            let up = loss(&x);
            x[i] = x0 - H;
            let down = loss(&x);
            x[i] = x0;
            (up - down) / (2.0 * H)
        })
        .collect()
}

/// Asserts `|got - want| ≤ tol·(1 + |want|)` elementwise (mixed absolute/relative tolerance).
#[track_caller]
pub fn assert_close(name: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{name}[{i}]: got {g}, want {w} (err {err:e}, tol {tol:e})"
        );
    }
}
