//! Optimizer steps, in place and elementwise over equal-length buffers (so any split is
//! deterministic; fixed chunks keep the task count proportional to the work). They are bound by
//! memory bandwidth, so baseline SSE2 code is as fast as AVX2 here.

use rayon::prelude::*;

use crate::par;

/// One AdamW step, as `torch.optim.AdamW` (decoupled weight decay):
/// `p -= lr·wd·p; m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²;`
/// `p -= lr·(m/(1-β1^t)) / (sqrt(v/(1-β2^t)) + eps)`, with `t` the 1-based step count.
/// `params`, `grads`, `m`, `v` have equal lengths; `m` and `v` start at 0 before step 1.
///
/// The bias corrections are computed in f64 and folded into a step size and a divisor for
/// `sqrt(v)`, and the update is `p - step_size·(m / denom)`, in PyTorch's order of operations;
/// results are then within an ulp or so of PyTorch's (not bit-identical: it updates `m` with a
/// `lerp`).
#[allow(clippy::too_many_arguments)] // the contract: the hyperparameters spelled out
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
    let len = params.len();
    assert!(
        grads.len() == len && m.len() == len && v.len() == len,
        "adamw: buffers must have equal lengths"
    );
    assert!(t >= 1, "adamw: the step count t is 1-based");
    let t = i32::try_from(t).unwrap_or(i32::MAX);
    let (b1, b2) = (f64::from(beta1), f64::from(beta2));
    let step_size = (f64::from(lr) / (1.0 - b1.powi(t))) as f32;
    let bc2_sqrt = (1.0 - b2.powi(t)).sqrt() as f32;
    let decay = (1.0 - f64::from(lr) * f64::from(weight_decay)) as f32;
    let (one_b1, one_b2) = ((1.0 - b1) as f32, (1.0 - b2) as f32);
    let step = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = beta1 * *m + one_b1 * g;
            *v = beta2 * *v + one_b2 * g * g;
            *p = *p * decay - step_size * (*m / (v.sqrt() / bc2_sqrt + eps));
        }
    };
    if len <= par::CHUNK {
        step(params, grads, m, v);
    } else {
        params
            .par_chunks_mut(par::CHUNK)
            .zip(grads.par_chunks(par::CHUNK))
            .zip(
                m.par_chunks_mut(par::CHUNK)
                    .zip(v.par_chunks_mut(par::CHUNK)),
            )
            .for_each(|((p, g), (m, v))| step(p, g, m, v));
    }
}

/// One step of SGD with momentum, as `torch.optim.SGD` with dampening 0:
/// `g' = g + wd·p`; `buf = momentum·buf + g'` (`buf = g'` on the first step, signalled by
/// `first_step`); `step = nesterov ? g' + momentum·buf : buf`; `p -= lr·step`.
/// With `momentum = 0` this is plain SGD and `momentum_buf` is neither read nor written (it may
/// then be empty); otherwise it has the length of `params` and `grads`.
#[allow(clippy::too_many_arguments)] // the contract: the hyperparameters spelled out
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
    let len = params.len();
    assert_eq!(
        grads.len(),
        len,
        "sgd: params and grads must have equal lengths"
    );
    if momentum == 0.0 {
        let step = |p: &mut [f32], g: &[f32]| {
            for (p, &g) in p.iter_mut().zip(g) {
                *p -= lr * (g + weight_decay * *p);
            }
        };
        par::for_chunks2(params, grads, step);
        return;
    }
    assert_eq!(
        momentum_buf.len(),
        len,
        "sgd: momentum_buf must have the length of params"
    );
    let step = |p: &mut [f32], g: &[f32], buf: &mut [f32]| {
        for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
            let g = g + weight_decay * *p;
            *b = if first_step { g } else { momentum * *b + g };
            let s = if nesterov { g + momentum * *b } else { *b };
            *p -= lr * s;
        }
    };
    if len <= par::CHUNK {
        step(params, grads, momentum_buf);
    } else {
        params
            .par_chunks_mut(par::CHUNK)
            .zip(
                grads
                    .par_chunks(par::CHUNK)
                    .zip(momentum_buf.par_chunks_mut(par::CHUNK)),
            )
            .for_each(|(p, (g, b))| step(p, g, b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gradients of the three scalar steps, all starting from p = 1.
    const GRADS: [f32; 3] = [0.5, -0.25, 1.0];

    fn assert_trajectory(name: &str, got: &[f32], want: &[f64]) {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() < 1e-6,
                "{name} step {}: got {g}, want {w}",
                i + 1
            );
        }
    }

    #[test]
    fn adamw_matches_hand_computed_steps() {
        // lr 0.1, β = (0.9, 0.999), eps 1e-8, wd 0.01, from p = 1:
        // t=1: p = 0.999; m = 0.05, v = 0.00025 -> m̂ = 0.5, v̂ = 0.25 -> p -= 0.1·0.5/0.5 -> 0.899
        // t=2: p = 0.899·0.999 = 0.898101; m = 0.045 - 0.025 = 0.02, m̂ = 0.02/0.19;
        //      v = 0.00024975 + 0.0000625 = 0.00031225, v̂ = v/0.001999 -> p = 0.8714673...
        // t=3: likewise with g = 1 (values from the f64 formula).
        let (mut p, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
        let mut traj = vec![];
        for (t, g) in GRADS.iter().enumerate() {
            adamw_update(
                &mut p,
                &[*g],
                &mut m,
                &mut v,
                0.1,
                0.9,
                0.999,
                1e-8,
                0.01,
                t as u64 + 1,
            );
            traj.push(p[0]);
        }
        assert_trajectory("adamw", &traj, &[0.899, 0.871_467_298_7, 0.804_784_672_4]);
    }

    #[test]
    fn sgd_matches_hand_computed_steps() {
        // lr 0.1, wd 0.1, from p = 1; g' = g + 0.1·p.
        let run = |momentum: f32, nesterov: bool| -> Vec<f32> {
            let (mut p, mut buf) = ([1.0f32], [f32::NAN]);
            let buf: &mut [f32] = if momentum == 0.0 { &mut [] } else { &mut buf };
            GRADS
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    sgd_update(&mut p, &[*g], buf, 0.1, momentum, 0.1, nesterov, i == 0);
                    p[0]
                })
                .collect()
        };
        // Plain: g' = 0.6 -> 0.94; g' = -0.156 -> 0.9556; g' = 1.09556 -> 0.846044.
        assert_trajectory("sgd", &run(0.0, false), &[0.94, 0.9556, 0.846_044]);
        // Momentum 0.9: buf = 0.6 -> 0.94; buf = 0.54 - 0.156 = 0.384 -> 0.9016;
        // g' = 1.09016, buf = 0.3456 + 1.09016 = 1.43576 -> 0.758024.
        assert_trajectory("momentum", &run(0.9, false), &[0.94, 0.9016, 0.758_024]);
        // Nesterov: step = g' + 0.9·buf: 0.6 + 0.54 = 1.14 -> 0.886;
        // g' = -0.1614, buf = 0.54 - 0.1614 = 0.3786, step = 0.17934 -> 0.868066;
        // g' = 1.0868066, buf = 0.34074 + 1.0868066 = 1.4275466, step = 2.37159854 -> 0.6309061.
        assert_trajectory(
            "nesterov",
            &run(0.9, true),
            &[0.886, 0.868_066, 0.630_906_146],
        );
    }

    #[test]
    fn long_buffers_take_the_parallel_path_with_the_same_result() {
        let len = 3 * par::CHUNK + 7;
        let g: Vec<f32> = (0..len).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect();
        let (mut p, mut m, mut v) = (vec![0.5f32; len], vec![0.0; len], vec![0.0; len]);
        adamw_update(&mut p, &g, &mut m, &mut v, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1);
        for i in [0, par::CHUNK + 1, len - 1] {
            let (mut p1, mut m1, mut v1) = ([0.5f32], [0.0], [0.0]);
            adamw_update(
                &mut p1,
                &g[i..=i],
                &mut m1,
                &mut v1,
                1e-3,
                0.9,
                0.95,
                1e-8,
                0.1,
                1,
            );
            assert_eq!((p[i], m[i], v[i]), (p1[0], m1[0], v1[0]));
        }
        let (mut p, mut b) = (vec![0.5f32; len], vec![0.0; len]);
        sgd_update(&mut p, &g, &mut b, 0.1, 0.9, 0.0, true, true);
        assert_eq!(p[len - 1], 0.5 - 0.1 * (g[len - 1] + 0.9 * g[len - 1]));
    }
}
