//! Losses and the softmax, each computing its gradient in the same pass as its value.

use rayon::prelude::*;

use crate::IGNORE_INDEX;
use crate::par::{self, min_items};
use crate::simd::{self, multiversion};

/// Fused softmax + cross-entropy, one row at a time (each row of a GPT-2 vocabulary is 200 KB and
/// stays in L2 between the max, exp and scale sweeps).
///
/// `logits [N, Vp]`, of which the first `V` columns are real and the padding columns are ignored
/// (they get `dlogits = 0`); `targets [N]`, where [`IGNORE_INDEX`] rows contribute no loss and a
/// zero gradient row, and any other target must be `< V` (asserted). `losses [N]` is overwritten
/// with each row's loss (0 for ignored rows). When `dlogits [N, Vp]` is given it is *overwritten*
/// (not accumulated: it is the start of the backward pass) with
/// `(softmax - onehot) · dloss_scale`, i.e. the gradient of `dloss_scale · Σ losses`.
///
/// Returns (Σ losses over non-ignored rows as `f64`, summed in row order; their number).
/// Numerically stable: each row is shifted by its maximum before `exp`.
#[allow(clippy::too_many_arguments)] // the contract: every buffer with its shape
pub fn crossentropy_forward_backward(
    losses: &mut [f32],
    dlogits: Option<&mut [f32]>,
    logits: &[f32],
    targets: &[u32],
    n: usize,
    v: usize,
    vp: usize,
    dloss_scale: f32,
) -> (f64, usize) {
    check_logits(logits, n, v, vp);
    assert_eq!(losses.len(), n, "crossentropy: losses must be [N]");
    assert_eq!(targets.len(), n, "crossentropy: targets must be [N]");
    if let Some(&bad) = targets
        .iter()
        .find(|&&t| t != IGNORE_INDEX && t as usize >= v)
    {
        panic!("crossentropy: target {bad} out of range for a vocabulary of {v}");
    }
    if n > 0 && vp > 0 {
        let rows = losses
            .par_iter_mut()
            .zip(logits.par_chunks(vp))
            .zip(targets.par_iter())
            .with_min_len(min_items(vp));
        match dlogits {
            Some(d) => {
                assert_eq!(d.len(), n * vp, "crossentropy: dlogits must be [N, Vp]");
                rows.zip(d.par_chunks_mut(vp))
                    .for_each(|(((l, x), &t), d)| {
                        *l = crossentropy_row(x, v, t, Some(d), dloss_scale)
                    });
            }
            None => rows.for_each(|((l, x), &t)| *l = crossentropy_row(x, v, t, None, dloss_scale)),
        }
    }
    targets
        .iter()
        .zip(losses.iter())
        .filter(|(t, _)| **t != IGNORE_INDEX)
        .fold((0.0, 0), |(s, k), (_, &l)| (s + f64::from(l), k + 1))
}

multiversion! {
    /// Loss of one row `x [Vp]`, writing `(softmax - onehot)·scale` into `d [Vp]` when given.
    fn crossentropy_row(x: &[f32], v: usize, target: u32, d: Option<&mut [f32]>, scale: f32) -> f32 {
        if target == IGNORE_INDEX {
            if let Some(d) = d {
                d.fill(0.0);
            }
            return 0.0;
        }
        let (t, real) = (target as usize, &x[..v]);
        let m = simd::max(real);
        let sum = match d {
            Some(d) => {
                let (dreal, dpad) = d.split_at_mut(v);
                let sum = simd::exp_shifted_sum(dreal, real, m);
                simd::scale(dreal, scale / sum);
                dreal[t] -= scale;
                dpad.fill(0.0);
                sum
            }
            None => simd::exp_shifted_sum_only(real, m),
        };
        sum.ln() - (real[t] - m)
    }
}

/// `probs [N, Vp]` = softmax over the first `V` columns of `logits [N, Vp]`, padding columns set
/// to 0 (for sampling and classification metrics). `probs` is overwritten.
pub fn softmax_forward(probs: &mut [f32], logits: &[f32], n: usize, v: usize, vp: usize) {
    check_logits(logits, n, v, vp);
    assert_eq!(
        probs.len(),
        n * vp,
        "softmax_forward: probs must be [N, Vp]"
    );
    if n == 0 || vp == 0 {
        return;
    }
    probs
        .par_chunks_mut(vp)
        .zip(logits.par_chunks(vp))
        .with_min_len(min_items(vp))
        .for_each(|(p, x)| softmax_row(p, &x[..v]));
}

multiversion! {
    /// `p [Vp]` = softmax of the real logits `x [V]`, then zeros.
    fn softmax_row(p: &mut [f32], x: &[f32]) {
        let (preal, ppad) = p.split_at_mut(x.len());
        let m = simd::max(x);
        let sum = simd::exp_shifted_sum(preal, x, m);
        simd::scale(preal, 1.0 / sum);
        ppad.fill(0.0);
    }
}

/// Mean-squared-error building block: returns `Σ (pred - target)²` as `f64` over
/// `pred [N, D]`, `target [N, D]` (any equal lengths), summed per fixed-size chunk and combined
/// in order. When `dpred` is given it is *overwritten* with `2·(pred - target)·dloss_scale`, the
/// gradient of `dloss_scale · Σ (pred - target)²` (pass `1/(N·D)` for a mean).
pub fn mse_forward_backward(
    dpred: Option<&mut [f32]>,
    pred: &[f32],
    target: &[f32],
    dloss_scale: f32,
) -> f64 {
    assert_eq!(
        pred.len(),
        target.len(),
        "mse: pred and target must have the same shape"
    );
    let chunk_loss = |p: &[f32], t: &[f32], d: Option<&mut [f32]>| mse_chunk(p, t, d, dloss_scale);
    let partials: Vec<f64> = match dpred {
        Some(d) => {
            assert_eq!(
                d.len(),
                pred.len(),
                "mse: dpred must have the shape of pred"
            );
            if pred.len() <= par::CHUNK {
                vec![chunk_loss(pred, target, Some(d))]
            } else {
                d.par_chunks_mut(par::CHUNK)
                    .zip(
                        pred.par_chunks(par::CHUNK)
                            .zip(target.par_chunks(par::CHUNK)),
                    )
                    .map(|(d, (p, t))| chunk_loss(p, t, Some(d)))
                    .collect()
            }
        }
        None if pred.len() <= par::CHUNK => vec![chunk_loss(pred, target, None)],
        None => pred
            .par_chunks(par::CHUNK)
            .zip(target.par_chunks(par::CHUNK))
            .map(|(p, t)| chunk_loss(p, t, None))
            .collect(),
    };
    partials.iter().fold(0.0, |s, &x| s + x)
}

multiversion! {
    /// `Σ (p - t)²` in f64 over one chunk, writing `2·(p - t)·scale` into `d` when given.
    fn mse_chunk(p: &[f32], t: &[f32], d: Option<&mut [f32]>, scale: f32) -> f64 {
        if let Some(d) = d {
            for ((d, &p), &t) in d.iter_mut().zip(p).zip(t) {
                *d = 2.0 * (p - t) * scale;
            }
        }
        let mut acc = [0.0f64; 4];
        for (p, t) in p.chunks(4).zip(t.chunks(4)) {
            for (l, (&p, &t)) in p.iter().zip(t).enumerate() {
                let e = f64::from(p) - f64::from(t);
                acc[l] += e * e;
            }
        }
        (acc[0] + acc[2]) + (acc[1] + acc[3])
    }
}

fn check_logits(logits: &[f32], n: usize, v: usize, vp: usize) {
    assert!(
        0 < v && v <= vp,
        "logits: need 0 < V <= Vp (V = {v}, Vp = {vp})"
    );
    assert_eq!(logits.len(), n * vp, "logits must be [N, Vp]");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, numeric_grad, rng, to_f64, uniform};

    const N: usize = 4;
    const V: usize = 7;
    const VP: usize = 9;
    const TARGETS: [u32; N] = [3, 0, IGNORE_INDEX, 6];
    const SCALE: f32 = 0.37;

    /// Logits with NaN in the padding columns: any read of them would poison the results.
    fn logits() -> Vec<f32> {
        let x = uniform(&mut rng(60), N * VP);
        x.iter()
            .enumerate()
            .map(|(i, &v)| if i % VP >= V { f32::NAN } else { 3.0 * v })
            .collect()
    }

    /// f64 per-row losses (0 for ignored rows).
    fn reference(x: &[f64]) -> Vec<f64> {
        (0..N)
            .map(|r| {
                if TARGETS[r] == IGNORE_INDEX {
                    return 0.0;
                }
                let row = &x[r * VP..r * VP + V];
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                lse - row[TARGETS[r] as usize]
            })
            .collect()
    }

    #[test]
    fn crossentropy_matches_reference_and_finite_differences() {
        let x = logits();
        let mut losses = vec![f32::NAN; N];
        let mut dlogits = vec![f32::NAN; N * VP];
        let (sum, count) = crossentropy_forward_backward(
            &mut losses,
            Some(&mut dlogits),
            &x,
            &TARGETS,
            N,
            V,
            VP,
            SCALE,
        );
        let want = reference(&to_f64(&x));
        assert_close("losses", &losses, &want, 1e-6);
        assert_eq!(count, 3);
        assert!((sum - want.iter().sum::<f64>()).abs() < 1e-5, "sum {sum}");
        // The gradient of SCALE·Σ losses w.r.t. the real logits; padding gradients are exactly 0,
        // as is the whole ignored row.
        let x64 = to_f64(&x);
        let num = numeric_grad(&x64, |x| {
            f64::from(SCALE) * reference(x).iter().sum::<f64>()
        });
        for r in 0..N {
            for j in 0..VP {
                let g = dlogits[r * VP + j];
                if j >= V || TARGETS[r] == IGNORE_INDEX {
                    assert_eq!(g, 0.0, "dlogits[{r}, {j}]");
                } else {
                    assert_close("dlogits", &[g], &[num[r * VP + j]], 1e-5);
                }
            }
        }
        // Without dlogits: same losses, bit for bit.
        let mut losses2 = vec![f32::NAN; N];
        assert_eq!(
            crossentropy_forward_backward(&mut losses2, None, &x, &TARGETS, N, V, VP, SCALE),
            (sum, count)
        );
        assert_eq!(losses, losses2);
    }

    #[test]
    fn crossentropy_is_stable_for_huge_logits() {
        let x = [1000.0, 990.0, -1000.0, 0.0];
        let mut losses = [0.0];
        let mut d = [0.0; 4];
        crossentropy_forward_backward(&mut losses, Some(&mut d), &x, &[1], 1, 3, 4, 1.0);
        let want = (1.0 + (-10.0f64).exp()).ln() + 10.0;
        assert!(
            (f64::from(losses[0]) - want).abs() < 1e-4,
            "loss {}",
            losses[0]
        );
        assert!(d.iter().all(|g| g.is_finite()));
        assert!(
            (d.iter().sum::<f32>()).abs() < 1e-6,
            "softmax - onehot sums to 0"
        );
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn crossentropy_rejects_targets_in_the_padding() {
        crossentropy_forward_backward(&mut [0.0], None, &[0.0; VP], &[V as u32], 1, V, VP, 1.0);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_ignore_padding() {
        let x = logits();
        let mut p = vec![f32::NAN; N * VP];
        softmax_forward(&mut p, &x, N, V, VP);
        for (r, row) in p.chunks(VP).enumerate() {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "row {r}");
            assert!(row[V..].iter().all(|&v| v == 0.0), "padding of row {r}");
            let xr = to_f64(&x[r * VP..r * VP + V]);
            let z: f64 = xr.iter().map(|v| v.exp()).sum();
            let want: Vec<f64> = xr.iter().map(|v| v.exp() / z).collect();
            assert_close("probs", &row[..V], &want, 1e-6);
        }
    }

    #[test]
    fn mse_matches_reference_and_finite_differences() {
        let mut r = rng(61);
        // Long enough for several chunks, so that the parallel path runs.
        for len in [10, 2 * par::CHUNK + 3] {
            let (p, t) = (uniform(&mut r, len), uniform(&mut r, len));
            let (p64, t64) = (to_f64(&p), to_f64(&t));
            let sq =
                |p: &[f64]| -> f64 { p.iter().zip(&t64).map(|(a, b)| (a - b) * (a - b)).sum() };
            let mut d = vec![f32::NAN; len];
            let got = mse_forward_backward(Some(&mut d), &p, &t, SCALE);
            assert!(
                (got - sq(&p64)).abs() < 1e-9 * (1.0 + sq(&p64)),
                "mse {got}"
            );
            assert_eq!(mse_forward_backward(None, &p, &t, SCALE), got);
            if len == 10 {
                let num = numeric_grad(&p64, |p| f64::from(SCALE) * sq(p));
                assert_close("dpred", &d, &num, 1e-5);
            } else {
                let want: Vec<f64> = p64
                    .iter()
                    .zip(&t64)
                    .map(|(a, b)| 2.0 * (a - b) * f64::from(SCALE))
                    .collect();
                assert_close("dpred", &d, &want, 1e-6);
            }
        }
    }
}
