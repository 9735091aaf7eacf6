//! Elementwise activations. Each takes buffers of any (equal) length; backward kernels
//! accumulate into `dinp`. Transcendentals use the vectorisable versions in `simd.rs`.

use crate::par::{for_chunks2, for_chunks3};
use crate::simd::{self, multiversion};

/// sqrt(2/π), the GELU tanh-approximation constant.
const GELU_SCALE: f32 = 0.797_884_6;
const GELU_CUBE: f32 = 0.044_715;

/// `out = 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³)))`, GPT-2's tanh approximation
/// (`nn.GELU(approximate="tanh")`), with `out`, `inp` of equal length.
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    for_chunks2(out, inp, gelu_forward_chunk);
}

multiversion! {
    fn gelu_forward_chunk(o: &mut [f32], x: &[f32]) {
        for (o, &x) in o.iter_mut().zip(x) {
            let t = simd::tanh(GELU_SCALE * (x + GELU_CUBE * x * x * x));
            *o = 0.5 * x * (1.0 + t);
        }
    }
}

/// `dinp += gelu'(inp) · dout`, all of equal length. `1 - tanh²` stands for sech², as in
/// PyTorch, which saves a `cosh`.
pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    for_chunks3(dinp, inp, dout, gelu_backward_chunk);
}

multiversion! {
    fn gelu_backward_chunk(d: &mut [f32], x: &[f32], g: &[f32]) {
        for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
            let x2 = x * x;
            let t = simd::tanh(GELU_SCALE * (x + GELU_CUBE * x2 * x));
            let dt = GELU_SCALE * (1.0 + 3.0 * GELU_CUBE * x2);
            let local = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dt;
            *d += local * g;
        }
    }
}

/// `out = max(inp, 0)` (NaN stays NaN).
pub fn relu_forward(out: &mut [f32], inp: &[f32]) {
    for_chunks2(out, inp, relu_forward_chunk);
}

multiversion! {
    fn relu_forward_chunk(o: &mut [f32], x: &[f32]) {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = if x < 0.0 { 0.0 } else { x };
        }
    }
}

/// `dinp += (inp > 0) · dout` (the subgradient at 0 is 0, as PyTorch).
pub fn relu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    for_chunks3(dinp, inp, dout, relu_backward_chunk);
}

multiversion! {
    fn relu_backward_chunk(d: &mut [f32], x: &[f32], g: &[f32]) {
        for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
            *d += if x > 0.0 { g } else { 0.0 };
        }
    }
}

/// `out = tanh(inp)`.
pub fn tanh_forward(out: &mut [f32], inp: &[f32]) {
    for_chunks2(out, inp, tanh_forward_chunk);
}

multiversion! {
    fn tanh_forward_chunk(o: &mut [f32], x: &[f32]) {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = simd::tanh(x);
        }
    }
}

/// `dinp += (1 - out²) · dout`, from the forward's output `out` (cheaper than recomputing tanh).
pub fn tanh_backward(dinp: &mut [f32], out: &[f32], dout: &[f32]) {
    for_chunks3(dinp, out, dout, tanh_backward_chunk);
}

multiversion! {
    fn tanh_backward_chunk(d: &mut [f32], y: &[f32], g: &[f32]) {
        for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
            *d += (1.0 - y * y) * g;
        }
    }
}

/// `out = 1 / (1 + exp(-inp))`.
pub fn sigmoid_forward(out: &mut [f32], inp: &[f32]) {
    for_chunks2(out, inp, sigmoid_forward_chunk);
}

multiversion! {
    fn sigmoid_forward_chunk(o: &mut [f32], x: &[f32]) {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = 1.0 / (1.0 + simd::exp(-x));
        }
    }
}

/// `dinp += out · (1 - out) · dout`, from the forward's output `out`.
pub fn sigmoid_backward(dinp: &mut [f32], out: &[f32], dout: &[f32]) {
    for_chunks3(dinp, out, dout, sigmoid_backward_chunk);
}

multiversion! {
    fn sigmoid_backward_chunk(d: &mut [f32], y: &[f32], g: &[f32]) {
        for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
            *d += y * (1.0 - y) * g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{added, assert_close, numeric_grad, rng, to_f64, uniform};

    /// (name, forward, backward, backward takes the output rather than the input, f64 reference)
    type Case = (
        &'static str,
        fn(&mut [f32], &[f32]),
        fn(&mut [f32], &[f32], &[f32]),
        bool,
        fn(f64) -> f64,
    );

    const CASES: [Case; 4] = [
        ("gelu", gelu_forward, gelu_backward, false, |x| {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }),
        ("relu", relu_forward, relu_backward, false, |x| x.max(0.0)),
        ("tanh", tanh_forward, tanh_backward, true, f64::tanh),
        ("sigmoid", sigmoid_forward, sigmoid_backward, true, |x| {
            1.0 / (1.0 + (-x).exp())
        }),
    ];

    /// Inputs spread over [-6, 6], away from relu's kink at 0 (where finite differences lie).
    fn inputs(len: usize) -> Vec<f32> {
        let mut r = rng(30);
        uniform(&mut r, len)
            .into_iter()
            .map(|v| if v.abs() < 0.01 { 0.5 } else { 6.0 * v })
            .collect()
    }

    #[test]
    fn forward_matches_f64() {
        // Long enough to take the parallel path, with a ragged last chunk.
        let x = inputs(3 * crate::par::CHUNK + 5);
        for (name, fwd, _, _, f) in CASES {
            let mut out = vec![f32::NAN; x.len()];
            fwd(&mut out, &x);
            let want: Vec<f64> = x.iter().map(|&v| f(f64::from(v))).collect();
            assert_close(name, &out, &want, 1e-6);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let x = inputs(64);
        let mut r = rng(31);
        let dout = uniform(&mut r, x.len());
        let d0 = uniform(&mut r, x.len());
        for (name, fwd, bwd, uses_out, f) in CASES {
            let mut out = vec![0.0; x.len()];
            fwd(&mut out, &x);
            let mut dinp = d0.clone();
            bwd(&mut dinp, if uses_out { &out } else { &x }, &dout);
            // Elementwise: the loss Σ f(x)·R has gradient f'(x)·R, one coordinate at a time.
            let want: Vec<f64> = to_f64(&x)
                .iter()
                .zip(&dout)
                .map(|(&xi, &ri)| numeric_grad(&[xi], |v| f(v[0]) * f64::from(ri))[0])
                .collect();
            assert_close(name, &added(&dinp, &d0), &want, 1e-5);
        }
    }
}
