//! Global gradient norm and clipping.

use rayon::prelude::*;

use crate::activation::CHUNK;

/// The L2 norm of the whole gradient buffer. Squares are summed in f64 per fixed-size chunk and
/// the chunk sums combined in order, so the norm is the same on every thread count.
pub fn global_norm(grads: &[f32]) -> f32 {
    let partial: Vec<f64> = grads
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&g| (g as f64) * (g as f64)).sum())
        .collect();
    partial.iter().sum::<f64>().sqrt() as f32
}

/// Scales grads [N] by max_norm / (norm + 1e-6) when that is below 1 (as PyTorch's
/// `clip_grad_norm_`); returns the factor applied.
pub fn clip_grads(grads: &mut [f32], norm: f32, max_norm: f32) -> f32 {
    let scale = max_norm / (norm + 1e-6);
    if scale >= 1.0 {
        return 1.0;
    }
    grads
        .par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|g| *g *= scale));
    scale
}
