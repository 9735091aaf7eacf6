//! Optimizer updates, elementwise over a parameter tensor and its gradient.
//! Both follow PyTorch's formulas (torch.optim.AdamW, torch.optim.SGD with dampening 0) so a
//! convoy run and a PyTorch run of the same model track each other.

use rayon::prelude::*;

use crate::activation::CHUNK;

/// AdamW: p ← p·(1 − lr·wd); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
/// p ← p − lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps).  `t` is the 1-based step.
/// params, grads, m, v: [N]
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    t: u64,
) {
    assert!(params.len() == grads.len() && m.len() == grads.len() && v.len() == grads.len());
    assert!(t >= 1, "the step count is 1-based");
    let t = i32::try_from(t).unwrap_or(i32::MAX);
    let bc1 = 1.0 - (beta1 as f64).powi(t);
    let bc2_sqrt = (1.0 - (beta2 as f64).powi(t)).sqrt() as f32;
    let step_size = (lr as f64 / bc1) as f32;
    let decay = 1.0 - lr * weight_decay;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for ((p, &g), (m, v)) in p.iter_mut().zip(g).zip(m.iter_mut().zip(v.iter_mut())) {
                *p *= decay;
                *m += (1.0 - beta1) * (g - *m);
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p -= step_size * *m / denom;
            }
        });
}

/// SGD with momentum: g' = g + wd·p; buf ← g' on the first step, else momentum·buf + g';
/// p ← p − lr·(nesterov ? g' + momentum·buf : buf). With momentum 0 this is plain SGD.
/// params, grads, momentum_buf: [N]
#[allow(clippy::too_many_arguments)]
pub fn sgd_update(
    params: &mut [f32],
    grads: &[f32],
    momentum_buf: &mut [f32],
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: bool,
    first_step: bool,
) {
    assert!(params.len() == grads.len() && momentum_buf.len() == grads.len());
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(momentum_buf.par_chunks_mut(CHUNK))
        .for_each(|((p, g), buf)| {
            for ((p, &g), b) in p.iter_mut().zip(g).zip(buf) {
                let g = g + weight_decay * *p;
                let step = if momentum == 0.0 {
                    g
                } else {
                    *b = if first_step { g } else { momentum * *b + g };
                    if nesterov { g + momentum * *b } else { *b }
                };
                *p -= lr * step;
            }
        });
}
