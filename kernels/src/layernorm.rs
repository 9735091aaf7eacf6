//! LayerNorm over the last dimension (biased variance, eps = `LAYERNORM_EPS`, as PyTorch).

use rayon::prelude::*;

use crate::LAYERNORM_EPS;

/// Rows per task when reducing the weight and bias gradients; partial sums are combined in
/// row order, so the result does not depend on the thread count.
const ROWS_PER_TASK: usize = 32;

/// out [N, C] = (inp - mean) · rstd · weight [C] + bias [C];  saves mean [N] and rstd [N]
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    n: usize,
    c: usize,
) {
    assert!(out.len() == n * c && inp.len() == n * c && mean.len() == n && rstd.len() == n);
    assert!(weight.len() == c && bias.len() == c);
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, x), (m, r))| {
            let mu = x.iter().sum::<f32>() / c as f32;
            let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
            let rs = 1.0 / (var + LAYERNORM_EPS).sqrt();
            for (((o, x), w), b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
                *o = (x - mu) * rs * w + b;
            }
            *m = mu;
            *r = rs;
        });
}

/// Accumulates: dinp [N, C] +=, dweight [C] +=, dbias [C] += from dout [N, C], using the
/// forward's inp [N, C], weight [C], mean [N], rstd [N].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    assert!(dinp.len() == n * c && dout.len() == n * c && inp.len() == n * c);
    assert!(
        dweight.len() == c
            && dbias.len() == c
            && weight.len() == c
            && mean.len() == n
            && rstd.len() == n
    );
    let partials: Vec<Vec<f32>> = dinp
        .par_chunks_mut(ROWS_PER_TASK * c)
        .enumerate()
        .map(|(chunk, dinp)| {
            // [dweight | dbias] partial sums of this block of rows.
            let mut acc = vec![0.0f32; 2 * c];
            for (j, di) in dinp.chunks_exact_mut(c).enumerate() {
                let row = chunk * ROWS_PER_TASK + j;
                let (x, g) = (&inp[row * c..(row + 1) * c], &dout[row * c..(row + 1) * c]);
                let (mu, rs) = (mean[row], rstd[row]);
                let (mut dnorm_mean, mut dnorm_norm_mean) = (0.0f32, 0.0f32);
                for ((x, g), w) in x.iter().zip(g).zip(weight) {
                    let norm = (x - mu) * rs;
                    let dnorm = w * g;
                    dnorm_mean += dnorm;
                    dnorm_norm_mean += dnorm * norm;
                }
                dnorm_mean /= c as f32;
                dnorm_norm_mean /= c as f32;
                let (dw, db) = acc.split_at_mut(c);
                for i in 0..c {
                    let norm = (x[i] - mu) * rs;
                    db[i] += g[i];
                    dw[i] += norm * g[i];
                    di[i] += (weight[i] * g[i] - dnorm_mean - norm * dnorm_norm_mean) * rs;
                }
            }
            acc
        })
        .collect();
    for acc in partials {
        let (dw, db) = acc.split_at(c);
        for (d, p) in dweight.iter_mut().zip(dw) {
            *d += p;
        }
        for (d, p) in dbias.iter_mut().zip(db) {
            *d += p;
        }
    }
}
