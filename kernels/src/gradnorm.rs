//! Global gradient norm and clipping (`torch.nn.utils.clip_grad_norm_`), over the flat
//! gradient buffer.

use rayon::prelude::*;

use crate::par;
use crate::simd::{self, multiversion};

/// Global L2 norm of `grads` (any length). Squares are summed in f64 per fixed-size chunk and
/// the chunk sums combined in order, so the result depends on neither the thread count nor the
/// rounding of one long f32 sum; returned as f32.
pub fn global_norm(grads: &[f32]) -> f32 {
    let total = if grads.len() <= par::CHUNK {
        sum_sq(grads)
    } else {
        let partials: Vec<f64> = grads.par_chunks(par::CHUNK).map(sum_sq).collect();
        partials.iter().fold(0.0, |s, &x| s + x)
    };
    total.sqrt() as f32
}

/// Scales `grads` in place by `max_norm / (norm + 1e-6)` when that is below 1, as
/// `clip_grad_norm_`, given their global `norm` (from [`global_norm`], possibly combined across
/// workers). Returns the scale applied, 1.0 when not clipped. A NaN `norm` clips nothing (and
/// returns 1.0): callers should test the norm for finiteness to skip a diverged step.
pub fn clip_grads(grads: &mut [f32], norm: f32, max_norm: f32) -> f32 {
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        for_chunks_mut(grads, |g| scale_chunk(g, scale));
        scale
    } else {
        1.0
    }
}

/// Calls `f` on fixed-size chunks of `x`, in parallel when there is more than one.
fn for_chunks_mut(x: &mut [f32], f: impl Fn(&mut [f32]) + Sync + Send) {
    if x.len() <= par::CHUNK {
        f(x);
    } else {
        x.par_chunks_mut(par::CHUNK).for_each(f);
    }
}

multiversion! {
    fn sum_sq(g: &[f32]) -> f64 {
        simd::sum_sq_f64(g)
    }
}

multiversion! {
    fn scale_chunk(g: &mut [f32], s: f32) {
        simd::scale(g, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_of_known_vectors() {
        assert_eq!(global_norm(&[]), 0.0);
        assert_eq!(global_norm(&[3.0, -4.0]), 5.0);
        // 4·CHUNK + 1 ones spread over several chunks: norm = sqrt(len) exactly representable.
        let len = 4 * par::CHUNK + 9;
        let ones = vec![-1.0f32; len];
        assert_eq!(global_norm(&ones), (len as f64).sqrt() as f32);
        // Squares that would overflow f32 are fine in f64.
        assert_eq!(global_norm(&[3e20, 4e20]), 5e20);
    }

    #[test]
    fn clipping_scales_only_above_the_threshold() {
        let mut g = vec![3.0f32, -4.0];
        let norm = global_norm(&g);
        assert_eq!(clip_grads(&mut g, norm, 10.0), 1.0);
        assert_eq!(g, [3.0, -4.0]);
        let s = clip_grads(&mut g, norm, 1.0);
        assert!((s - 0.2).abs() < 1e-7, "scale {s}");
        assert_eq!(g, [3.0 * s, -4.0 * s]);
        assert!((global_norm(&g) - 1.0).abs() < 1e-6);
        // Long buffers (parallel path) get the same scale everywhere.
        let mut long = vec![2.0f32; 3 * par::CHUNK + 1];
        let s = clip_grads(&mut long, 1000.0, 1.0);
        assert!(long.iter().all(|&x| x == 2.0 * s));
        assert_eq!(clip_grads(&mut long, f32::NAN, 1.0), 1.0);
    }
}
