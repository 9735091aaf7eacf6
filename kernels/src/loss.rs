//! Losses. Cross-entropy is fused with its softmax and its gradient: one pass over each row of
//! logits produces the loss and dlogits, so the [N, V] probabilities are never stored.

use rayon::prelude::*;

use crate::IGNORE_INDEX;

/// Row losses are summed in this many-row blocks, in order, for a thread-count-independent sum.
const SUM_CHUNK: usize = 1024;

/// Softmax + cross-entropy over logits [N, Vp], of which the first V columns are real (the
/// padding gets dlogits = 0). targets [N]: `IGNORE_INDEX` rows add no loss and get zero
/// gradient; any other target must be < V. losses [N] receives each row's loss.
/// dlogits [N, Vp], when given, is overwritten with (softmax − onehot) · dloss_scale.
/// Returns (Σ losses over the counted rows, number of counted rows).
#[allow(clippy::too_many_arguments)]
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
    assert!(v <= vp && losses.len() == n && targets.len() == n && logits.len() == n * vp);
    let row_loss = |row: &[f32], target: u32, d: Option<&mut [f32]>| -> f32 {
        if target == IGNORE_INDEX {
            if let Some(d) = d {
                d.fill(0.0);
            }
            return 0.0;
        }
        let target = target as usize;
        assert!(
            target < v,
            "target {target} is outside the vocabulary of {v}"
        );
        let row = &row[..v];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        match d {
            Some(d) => {
                let mut sum = 0.0f32;
                for (d, &x) in d[..v].iter_mut().zip(row) {
                    let e = (x - max).exp();
                    *d = e;
                    sum += e;
                }
                let k = dloss_scale / sum;
                for d in &mut d[..v] {
                    *d *= k;
                }
                d[target] -= dloss_scale;
                d[v..].fill(0.0);
                sum.ln() - (row[target] - max)
            }
            None => {
                let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
                sum.ln() - (row[target] - max)
            }
        }
    };
    match dlogits {
        Some(dlogits) => {
            assert_eq!(dlogits.len(), n * vp);
            losses
                .par_iter_mut()
                .zip(dlogits.par_chunks_mut(vp))
                .zip(logits.par_chunks(vp).zip(targets.par_iter()))
                .for_each(|((l, d), (row, &tg))| *l = row_loss(row, tg, Some(d)));
        }
        None => losses
            .par_iter_mut()
            .zip(logits.par_chunks(vp).zip(targets.par_iter()))
            .for_each(|(l, (row, &tg))| *l = row_loss(row, tg, None)),
    }
    let sum = losses
        .chunks(SUM_CHUNK)
        .map(|c| c.iter().map(|&x| x as f64).sum::<f64>())
        .sum();
    (sum, targets.iter().filter(|&&x| x != IGNORE_INDEX).count())
}

/// probs [N, Vp] = softmax over the first V columns of logits [N, Vp]; padding columns get 0.
pub fn softmax_forward(probs: &mut [f32], logits: &[f32], n: usize, v: usize, vp: usize) {
    assert!(v <= vp && probs.len() == n * vp && logits.len() == n * vp);
    probs
        .par_chunks_mut(vp)
        .zip(logits.par_chunks(vp))
        .for_each(|(p, x)| {
            let max = x[..v].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for (p, &x) in p[..v].iter_mut().zip(&x[..v]) {
                *p = (x - max).exp();
                sum += *p;
            }
            for p in &mut p[..v] {
                *p /= sum;
            }
            p[v..].fill(0.0);
        });
}

/// Σ (pred − target)² over pred and target [N, D], as f64. dpred [N, D], when given, is
/// overwritten with 2·(pred − target)·dloss_scale.
pub fn mse_forward_backward(
    dpred: Option<&mut [f32]>,
    pred: &[f32],
    target: &[f32],
    dloss_scale: f32,
) -> f64 {
    assert_eq!(pred.len(), target.len());
    if let Some(d) = dpred {
        assert_eq!(d.len(), pred.len());
        for ((d, p), t) in d.iter_mut().zip(pred).zip(target) {
            *d = 2.0 * (p - t) * dloss_scale;
        }
    }
    pred.iter()
        .zip(target)
        .map(|(p, t)| ((p - t) as f64).powi(2))
        .sum()
}
