//! Elementwise activations, forward and backward. Backward kernels accumulate into `dinp`.

use rayon::prelude::*;

/// Elements per parallel task for elementwise kernels: large enough to amortise scheduling,
/// small enough to balance two to a few dozen threads.
pub(crate) const CHUNK: usize = 8192;

const GELU_SCALE: f32 = 0.797_884_6; // sqrt(2/π)

fn map(out: &mut [f32], inp: &[f32], f: impl Fn(f32) -> f32 + Sync) {
    assert_eq!(out.len(), inp.len());
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, i)| {
            for (o, &x) in o.iter_mut().zip(i) {
                *o = f(x);
            }
        });
}

/// dinp += f(x, dout) elementwise, where x is the saved forward input or output.
fn map_backward(dinp: &mut [f32], saved: &[f32], dout: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert!(dinp.len() == saved.len() && dinp.len() == dout.len());
    dinp.par_chunks_mut(CHUNK)
        .zip(saved.par_chunks(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .for_each(|((d, s), g)| {
            for ((d, &s), &g) in d.iter_mut().zip(s).zip(g) {
                *d += f(s, g);
            }
        });
}

/// σ(2u) where u = sqrt(2/π)·(x + 0.044715·x³): since 0.5·(1 + tanh(u)) = σ(2u), the GELU
/// needs one `exp` instead of a `tanh` (which costs an `expm1` and more; GELU was a third of
/// a small GPT's step time with `tanh`).
#[inline(always)]
fn gelu_gate(x: f32) -> f32 {
    let u = GELU_SCALE * (x + 0.044715 * x * x * x);
    1.0 / (1.0 + (-2.0 * u).exp())
}

/// out [N] = GELU(inp [N]), the tanh approximation GPT-2 uses:
/// 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³)))
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    map(out, inp, |x| x * gelu_gate(x));
}

/// dinp [N] += GELU'(inp) · dout, with GELU'(x) = s + x·2s(1−s)·sqrt(2/π)·(1 + 3·0.044715·x²)
/// for s = σ(2u) (the tanh form's 0.5·sech²(u) is 2s(1−s)).
pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    map_backward(dinp, inp, dout, |x, g| {
        let s = gelu_gate(x);
        let local = s + x * 2.0 * s * (1.0 - s) * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x);
        local * g
    });
}

/// out [N] = max(inp, 0)
pub fn relu_forward(out: &mut [f32], inp: &[f32]) {
    map(out, inp, |x| x.max(0.0));
}

/// dinp [N] += dout where inp > 0
pub fn relu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    map_backward(dinp, inp, dout, |x, g| if x > 0.0 { g } else { 0.0 });
}

/// out [N] = tanh(inp)
pub fn tanh_forward(out: &mut [f32], inp: &[f32]) {
    map(out, inp, f32::tanh);
}

/// dinp [N] += (1 - out²) · dout, from the forward *output*
pub fn tanh_backward(dinp: &mut [f32], out: &[f32], dout: &[f32]) {
    map_backward(dinp, out, dout, |y, g| (1.0 - y * y) * g);
}

/// out [N] = 1 / (1 + e^-inp)
pub fn sigmoid_forward(out: &mut [f32], inp: &[f32]) {
    map(out, inp, |x| 1.0 / (1.0 + (-x).exp()));
}

/// dinp [N] += out · (1 - out) · dout, from the forward *output*
pub fn sigmoid_backward(dinp: &mut [f32], out: &[f32], dout: &[f32]) {
    map_backward(dinp, out, dout, |y, g| y * (1.0 - y) * g);
}
