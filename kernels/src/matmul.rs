//! Fully connected layer `out = inp · Wᵀ + b`, with `W` stored `[OC, C]` like PyTorch's
//! `nn.Linear`, so checkpoints map one to one. All three products go through `gemm.rs`.

use rayon::prelude::*;

use crate::gemm::{Threads, View, ViewMut, sgemm};
use crate::par::min_items;

/// Output columns per task in the bias-gradient reduction: wide enough to stream rows, and
/// fixed so that the work split never depends on the pool.
const DBIAS_COLS: usize = 512;

/// `out [N, OC] = inp [N, C] · weight [OC, C]ᵀ + bias [OC]` (no bias term when `bias` is `None`).
/// `out` is overwritten.
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(out.len(), n * oc, "matmul_forward: out must be [N, OC]");
    assert_eq!(inp.len(), n * c, "matmul_forward: inp must be [N, C]");
    assert_eq!(
        weight.len(),
        oc * c,
        "matmul_forward: weight must be [OC, C]"
    );
    match bias {
        Some(bias) => {
            assert_eq!(bias.len(), oc, "matmul_forward: bias must be [OC]");
            // Seeding every row with the bias lets the GEMM add onto it: one pass, no extra loop.
            if oc > 0 {
                out.par_chunks_mut(oc)
                    .with_min_len(min_items(oc))
                    .for_each(|row| row.copy_from_slice(bias));
            }
            product(out, inp, weight, n, c, oc, true);
        }
        None => product(out, inp, weight, n, c, oc, false),
    }
}

/// `out [N, OC] (+)= inp [N, C] · weight [OC, C]ᵀ`.
fn product(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    oc: usize,
    accumulate: bool,
) {
    let (inp, weight) = (View::new(inp, n, c), View::new(weight, oc, c));
    sgemm(
        ViewMut::new(out, n, oc),
        inp,
        weight.t(),
        1.0,
        accumulate,
        Threads::Pool,
    );
}

/// Backward of [`matmul_forward`]; all outputs accumulate:
/// `dinp [N, C] += dout [N, OC] · weight [OC, C]`,
/// `dweight [OC, C] += doutᵀ · inp [N, C]`,
/// `dbias [OC] += Σ_n dout[n, :]` (when the layer has a bias).
#[allow(clippy::too_many_arguments)] // the contract: every buffer with its shape
pub fn matmul_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    n: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(dinp.len(), n * c, "matmul_backward: dinp must be [N, C]");
    assert_eq!(
        dweight.len(),
        oc * c,
        "matmul_backward: dweight must be [OC, C]"
    );
    assert_eq!(dout.len(), n * oc, "matmul_backward: dout must be [N, OC]");
    assert_eq!(inp.len(), n * c, "matmul_backward: inp must be [N, C]");
    assert_eq!(
        weight.len(),
        oc * c,
        "matmul_backward: weight must be [OC, C]"
    );
    let dout_m = View::new(dout, n, oc);
    let (dinp, dweight) = (ViewMut::new(dinp, n, c), ViewMut::new(dweight, oc, c));
    sgemm(
        dinp,
        dout_m,
        View::new(weight, oc, c),
        1.0,
        true,
        Threads::Pool,
    );
    sgemm(
        dweight,
        dout_m.t(),
        View::new(inp, n, c),
        1.0,
        true,
        Threads::Pool,
    );
    if let Some(dbias) = dbias {
        assert_eq!(dbias.len(), oc, "matmul_backward: dbias must be [OC]");
        // Each column is summed over rows in row order, whichever task owns it.
        dbias
            .par_chunks_mut(DBIAS_COLS)
            .enumerate()
            .with_min_len(min_items(DBIAS_COLS * n))
            .for_each(|(j, db)| {
                let cols = j * DBIAS_COLS..j * DBIAS_COLS + db.len();
                for row in dout.chunks_exact(oc) {
                    for (d, &g) in db.iter_mut().zip(&row[cols.clone()]) {
                        *d += g;
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{added, assert_close, numeric_grad, rng, to_f64, uniform};

    /// f64 triple-loop reference of the forward.
    fn reference(
        inp: &[f64],
        w: &[f64],
        bias: Option<&[f64]>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Vec<f64> {
        let mut out = vec![0.0; n * oc];
        for i in 0..n {
            for o in 0..oc {
                let mut s = bias.map_or(0.0, |b| b[o]);
                for k in 0..c {
                    s += inp[i * c + k] * w[o * c + k];
                }
                out[i * oc + o] = s;
            }
        }
        out
    }

    #[test]
    fn forward_matches_triple_loop() {
        let mut r = rng(1);
        // Shapes around gemm's microkernel sizes, plus a large-enough one to go parallel.
        for &(n, c, oc) in &[
            (1, 1, 1),
            (3, 5, 7),
            (17, 33, 9),
            (64, 96, 80),
            (130, 257, 129),
        ] {
            let inp = uniform(&mut r, n * c);
            let w = uniform(&mut r, oc * c);
            let b = uniform(&mut r, oc);
            for bias in [None, Some(&b[..])] {
                let mut out = vec![f32::NAN; n * oc];
                matmul_forward(&mut out, &inp, &w, bias, n, c, oc);
                let bias64 = bias.map(to_f64);
                let want = reference(&to_f64(&inp), &to_f64(&w), bias64.as_deref(), n, c, oc);
                assert_close("matmul out", &out, &want, 1e-5);
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut r = rng(2);
        let (n, c, oc) = (5, 7, 6);
        let inp = uniform(&mut r, n * c);
        let w = uniform(&mut r, oc * c);
        let b = uniform(&mut r, oc);
        let rr = to_f64(&uniform(&mut r, n * oc));
        let dout: Vec<f32> = rr.iter().map(|&x| x as f32).collect();
        let loss = |inp: &[f64], w: &[f64], b: Option<&[f64]>| -> f64 {
            reference(inp, w, b, n, c, oc)
                .iter()
                .zip(&rr)
                .map(|(o, r)| o * r)
                .sum()
        };
        let (inp64, w64, b64) = (to_f64(&inp), to_f64(&w), to_f64(&b));
        for with_bias in [false, true] {
            // Start from non-zero gradients to check that the kernel accumulates.
            let g0 = uniform(&mut r, n * c + oc * c + oc);
            let (mut dinp, mut dw, mut db) = (
                g0[..n * c].to_vec(),
                g0[n * c..n * c + oc * c].to_vec(),
                g0[n * c + oc * c..].to_vec(),
            );
            let dbias = if with_bias { Some(&mut db[..]) } else { None };
            matmul_backward(&mut dinp, &mut dw, dbias, &dout, &inp, &w, n, c, oc);
            let bias = with_bias.then_some(&b64[..]);
            let num_inp = numeric_grad(&inp64, |x| loss(x, &w64, bias));
            let num_w = numeric_grad(&w64, |x| loss(&inp64, x, bias));
            assert_close("dinp", &added(&dinp, &g0[..n * c]), &num_inp, 1e-4);
            assert_close(
                "dweight",
                &added(&dw, &g0[n * c..n * c + oc * c]),
                &num_w,
                1e-4,
            );
            if with_bias {
                let num_b = numeric_grad(&b64, |x| loss(&inp64, &w64, Some(x)));
                assert_close("dbias", &added(&db, &g0[n * c + oc * c..]), &num_b, 1e-4);
            } else {
                assert_eq!(db, &g0[n * c + oc * c..], "dbias untouched without a bias");
            }
        }
    }
}
