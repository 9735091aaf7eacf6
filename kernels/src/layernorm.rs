//! LayerNorm over the last dimension, as `torch.nn.LayerNorm` (biased variance,
//! eps = [`crate::LAYERNORM_EPS`]).

use rayon::prelude::*;

use crate::LAYERNORM_EPS;
use crate::par::min_items;
use crate::simd::{self, multiversion};

/// Channels per task in the weight/bias-gradient reduction (fixed, so the split never depends on
/// the pool; each channel is summed over rows in row order anyway).
const DPARAM_COLS: usize = 64;

/// `out [N, C] = (inp - mean) · rstd · weight [C] + bias [C]` per row of `inp [N, C]`, saving
/// `mean [N]` and `rstd [N] = 1/sqrt(var + eps)` for the backward. All three are overwritten.
#[allow(clippy::too_many_arguments)] // the contract: every buffer with its shape
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
    assert_eq!(out.len(), n * c, "layernorm_forward: out must be [N, C]");
    assert_eq!(inp.len(), n * c, "layernorm_forward: inp must be [N, C]");
    assert_eq!(mean.len(), n, "layernorm_forward: mean must be [N]");
    assert_eq!(rstd.len(), n, "layernorm_forward: rstd must be [N]");
    assert_eq!(weight.len(), c, "layernorm_forward: weight must be [C]");
    assert_eq!(bias.len(), c, "layernorm_forward: bias must be [C]");
    assert!(c > 0, "layernorm_forward: C must be positive");
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .with_min_len(min_items(c))
        .for_each(|((o, x), (m, rs))| (*m, *rs) = forward_row(o, x, weight, bias));
}

multiversion! {
    /// Normalises one row into `o`; returns its (mean, rstd).
    fn forward_row(o: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32]) -> (f32, f32) {
        let c = x.len() as f32;
        // Two passes (mean, then squared deviations) stay exact in f32 for activations far
        // from zero mean, unlike E[x²] - E[x]².
        let mu = simd::sum(x) / c;
        let var = simd::sum_sq_dev(x, mu) / c;
        let s = 1.0 / (var + LAYERNORM_EPS).sqrt();
        for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
            *o = (x - mu) * s * w + b;
        }
        (mu, s)
    }
}

/// Backward of [`layernorm_forward`]; all outputs accumulate:
/// `dinp [N, C] +=`, `dweight [C] +=`, `dbias [C] +=`, from `dout [N, C]`, the forward's
/// `inp [N, C]`, `weight [C]` and its saved `mean [N]`, `rstd [N]`.
#[allow(clippy::too_many_arguments)] // the contract: every buffer with its shape
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
    assert_eq!(dinp.len(), n * c, "layernorm_backward: dinp must be [N, C]");
    assert_eq!(dout.len(), n * c, "layernorm_backward: dout must be [N, C]");
    assert_eq!(inp.len(), n * c, "layernorm_backward: inp must be [N, C]");
    assert_eq!(dweight.len(), c, "layernorm_backward: dweight must be [C]");
    assert_eq!(dbias.len(), c, "layernorm_backward: dbias must be [C]");
    assert_eq!(weight.len(), c, "layernorm_backward: weight must be [C]");
    assert_eq!(mean.len(), n, "layernorm_backward: mean must be [N]");
    assert_eq!(rstd.len(), n, "layernorm_backward: rstd must be [N]");
    assert!(c > 0, "layernorm_backward: C must be positive");

    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c).zip(inp.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .with_min_len(min_items(c))
        .for_each(|((di, (g, x)), (&mu, &s))| backward_row(di, g, x, weight, mu, s));
    // The parameter gradients are a reduction over rows: split by channel so that every
    // channel is summed in row order by exactly one task.
    dweight
        .par_chunks_mut(DPARAM_COLS)
        .zip(dbias.par_chunks_mut(DPARAM_COLS))
        .enumerate()
        .with_min_len(min_items(DPARAM_COLS * n))
        .for_each(|(j, (dw, db))| {
            let col0 = j * DPARAM_COLS;
            param_grads_cols(dw, db, col0, c, dout, inp, mean, rstd);
        });
}

multiversion! {
    /// Input gradient of one row:
    /// `di += rstd · (dnorm - mean(dnorm) - norm · mean(dnorm · norm))`, `dnorm = weight · g`.
    fn backward_row(di: &mut [f32], g: &[f32], x: &[f32], weight: &[f32], mu: f32, s: f32) {
        let c = x.len() as f32;
        let (sum_dnorm, sum_dnorm_dev) = dnorm_sums(weight, g, x, mu);
        let dnorm_mean = sum_dnorm / c;
        let dnorm_norm_mean = sum_dnorm_dev * s / c;
        for (((d, &w), &g), &x) in di.iter_mut().zip(weight).zip(g).zip(x) {
            let norm = (x - mu) * s;
            *d += (w * g - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
}

multiversion! {
    /// `dw += Σ_rows norm·dout`, `db += Σ_rows dout` for the channels `col0..col0 + dw.len()`
    /// of the `[N, c]` buffers, rows in order.
    #[allow(clippy::too_many_arguments)] // the forward's saved tensors, one by one
    fn param_grads_cols(
        dw: &mut [f32],
        db: &mut [f32],
        col0: usize,
        c: usize,
        dout: &[f32],
        inp: &[f32],
        mean: &[f32],
        rstd: &[f32],
    ) {
        let cols = col0..col0 + dw.len();
        for ((g, x), (&mu, &s)) in dout.chunks_exact(c).zip(inp.chunks_exact(c)).zip(mean.iter().zip(rstd)) {
            let (g, x) = (&g[cols.clone()], &x[cols.clone()]);
            for (((dw, db), &g), &x) in dw.iter_mut().zip(db.iter_mut()).zip(g).zip(x) {
                *dw += (x - mu) * s * g;
                *db += g;
            }
        }
    }
}

/// `(Σ w·g, Σ w·g·(x - mu))` over a row, in 8 lanes.
#[inline(always)]
fn dnorm_sums(w: &[f32], g: &[f32], x: &[f32], mu: f32) -> (f32, f32) {
    const L: usize = 8;
    let (mut a, mut b) = ([0.0f32; L], [0.0f32; L]);
    let n = w.len() / L * L;
    for i in (0..n).step_by(L) {
        for l in 0..L {
            let dn = w[i + l] * g[i + l];
            a[l] += dn;
            b[l] += dn * (x[i + l] - mu);
        }
    }
    for i in n..w.len() {
        let dn = w[i] * g[i];
        a[i - n] += dn;
        b[i - n] += dn * (x[i] - mu);
    }
    (a.iter().sum(), b.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{added, assert_close, numeric_grad, rng, to_f64, uniform};

    const N: usize = 4;
    const C: usize = 11;

    /// f64 reference: (out, mean, rstd).
    fn reference(x: &[f64], w: &[f64], b: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut out, mut mean, mut rstd) = (vec![0.0; N * C], vec![0.0; N], vec![0.0; N]);
        for r in 0..N {
            let row = &x[r * C..(r + 1) * C];
            let mu = row.iter().sum::<f64>() / C as f64;
            let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / C as f64;
            let s = 1.0 / (var + f64::from(LAYERNORM_EPS)).sqrt();
            for i in 0..C {
                out[r * C + i] = (row[i] - mu) * s * w[i] + b[i];
            }
            (mean[r], rstd[r]) = (mu, s);
        }
        (out, mean, rstd)
    }

    fn inputs(seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut r = rng(seed);
        // An offset and a scale per row so that the normalisation does something.
        let x: Vec<f32> = uniform(&mut r, N * C)
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1.0 + (i / C) as f32) + 0.5)
            .collect();
        (x, uniform(&mut r, C), uniform(&mut r, C))
    }

    #[test]
    fn forward_matches_reference() {
        let (x, w, b) = inputs(20);
        let (mut out, mut mean, mut rstd) =
            (vec![f32::NAN; N * C], vec![f32::NAN; N], vec![f32::NAN; N]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, &b, N, C);
        let (ro, rm, rr) = reference(&to_f64(&x), &to_f64(&w), &to_f64(&b));
        assert_close("out", &out, &ro, 1e-5);
        assert_close("mean", &mean, &rm, 1e-6);
        assert_close("rstd", &rstd, &rr, 1e-5);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (x, w, b) = inputs(21);
        let mut r = rng(22);
        let dout = uniform(&mut r, N * C);
        let rr = to_f64(&dout);
        let (x64, w64, b64) = (to_f64(&x), to_f64(&w), to_f64(&b));
        let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            reference(x, w, b)
                .0
                .iter()
                .zip(&rr)
                .map(|(o, r)| o * r)
                .sum()
        };
        let (mut out, mut mean, mut rstd) = (vec![0.0; N * C], vec![0.0; N], vec![0.0; N]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, &b, N, C);
        let (dx0, dw0, db0) = (
            uniform(&mut r, N * C),
            uniform(&mut r, C),
            uniform(&mut r, C),
        );
        let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
        layernorm_backward(&mut dx, &mut dw, &mut db, &dout, &x, &w, &mean, &rstd, N, C);
        assert_close(
            "dinp",
            &added(&dx, &dx0),
            &numeric_grad(&x64, |v| loss(v, &w64, &b64)),
            1e-4,
        );
        assert_close(
            "dweight",
            &added(&dw, &dw0),
            &numeric_grad(&w64, |v| loss(&x64, v, &b64)),
            1e-4,
        );
        assert_close(
            "dbias",
            &added(&db, &db0),
            &numeric_grad(&b64, |v| loss(&x64, &w64, v)),
            1e-4,
        );
    }
}
