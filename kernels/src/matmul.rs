//! Linear layers: `out = inp · weightᵀ + bias`, weights stored [out_features, in_features] as
//! PyTorch and llm.c do.

use rayon::prelude::*;

use crate::gemm::{Mat, sgemm};

/// Output columns per task when reducing the bias gradient: each task sums its columns over
/// every row in order, so the result does not depend on the thread count.
const BIAS_COLS_PER_TASK: usize = 64;

/// out [N, OC] = inp [N, C] · weight [OC, C]ᵀ + bias [OC]
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    c: usize,
    oc: usize,
) {
    assert_eq!(out.len(), n * oc);
    assert_eq!(inp.len(), n * c);
    assert_eq!(weight.len(), oc * c);
    match bias {
        Some(bias) => {
            assert_eq!(bias.len(), oc);
            out.par_chunks_mut(oc)
                .for_each(|row| row.copy_from_slice(bias));
        }
        None => out.fill(0.0),
    }
    sgemm(
        n,
        oc,
        c,
        Mat {
            data: inp,
            rs: c,
            cs: 1,
        },
        Mat {
            data: weight,
            rs: 1,
            cs: c,
        },
        out,
        true,
    );
}

/// Accumulates the gradients of `matmul_forward`:
/// dinp [N, C] += dout [N, OC] · weight [OC, C];  dweight [OC, C] += doutᵀ · inp [N, C];
/// dbias [OC] += Σₙ dout [n, :]
#[allow(clippy::too_many_arguments)]
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
    assert_eq!(dinp.len(), n * c);
    assert_eq!(dweight.len(), oc * c);
    assert_eq!(dout.len(), n * oc);
    assert_eq!(inp.len(), n * c);
    assert_eq!(weight.len(), oc * c);
    sgemm(
        n,
        c,
        oc,
        Mat {
            data: dout,
            rs: oc,
            cs: 1,
        },
        Mat {
            data: weight,
            rs: c,
            cs: 1,
        },
        dinp,
        true,
    );
    sgemm(
        oc,
        c,
        n,
        Mat {
            data: dout,
            rs: 1,
            cs: oc,
        },
        Mat {
            data: inp,
            rs: c,
            cs: 1,
        },
        dweight,
        true,
    );
    if let Some(dbias) = dbias {
        assert_eq!(dbias.len(), oc);
        dbias
            .par_chunks_mut(BIAS_COLS_PER_TASK)
            .enumerate()
            .for_each(|(chunk, db)| {
                let cols = chunk * BIAS_COLS_PER_TASK..chunk * BIAS_COLS_PER_TASK + db.len();
                for row in dout.chunks_exact(oc) {
                    for (d, g) in db.iter_mut().zip(&row[cols.clone()]) {
                        *d += g;
                    }
                }
            });
    }
}
