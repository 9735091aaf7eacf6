//! Causal multi-head self-attention in llm.c's layout.
//!
//! Work is split by (batch, head): every (b, h) pair owns one contiguous [T, T] block of the
//! attention matrices and one column block of the outputs, so pairs run in parallel and each
//! result is computed in a fixed order whatever the thread count.

use rayon::prelude::*;

use crate::gemm::{Mat, sgemm};

/// Head `h` of batch row `b` in the qkv [B, T, 3C] buffer as a [T, hs] matrix with row stride
/// 3C: part 0 = q, 1 = k, 2 = v. Transposing is swapping the strides, never a copy.
fn head(inp: &[f32], b: usize, part: usize, h: usize, t: usize, c: usize, hs: usize) -> Mat<'_> {
    Mat {
        data: &inp[b * t * 3 * c + part * c + h * hs..],
        rs: 3 * c,
        cs: 1,
    }
}

fn transposed(m: Mat<'_>) -> Mat<'_> {
    Mat {
        data: m.data,
        rs: m.cs,
        cs: m.rs,
    }
}

/// out [B, T, C] = softmax(causal(q·kᵀ / sqrt(hs))) · v per head, from inp = qkv [B, T, 3C]
/// (q, k, v at channel offsets 0, C, 2C; head h at h·hs.. (h+1)·hs, hs = C / NH).
/// Saves preatt and att [B, NH, T, T] for backward (entries above the diagonal are 0).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    out: &mut [f32],
    preatt: &mut [f32],
    att: &mut [f32],
    inp: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    assert!(
        c.is_multiple_of(nh),
        "channels must split evenly into heads"
    );
    assert!(out.len() == b * t * c && inp.len() == b * t * 3 * c);
    assert!(preatt.len() == b * nh * t * t && att.len() == b * nh * t * t);
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let heads: Vec<Vec<f32>> = preatt
        .par_chunks_mut(t * t)
        .zip(att.par_chunks_mut(t * t))
        .enumerate()
        .map(|(bh, (pre, at))| {
            let (bi, h) = (bh / nh, bh % nh);
            let (q, k, v) = (
                head(inp, bi, 0, h, t, c, hs),
                head(inp, bi, 1, h, t, c, hs),
                head(inp, bi, 2, h, t, c, hs),
            );
            // The full T×T product costs twice the causal half but runs at GEMM speed.
            sgemm(t, t, hs, q, transposed(k), pre, false);
            for (ti, (pre_row, at_row)) in pre
                .chunks_exact_mut(t)
                .zip(at.chunks_exact_mut(t))
                .enumerate()
            {
                let mut max = f32::NEG_INFINITY;
                for p in &mut pre_row[..=ti] {
                    *p *= scale;
                    max = max.max(*p);
                }
                let mut sum = 0.0f32;
                for (a, p) in at_row[..=ti].iter_mut().zip(&pre_row[..=ti]) {
                    *a = (p - max).exp();
                    sum += *a;
                }
                let inv = 1.0 / sum;
                at_row[..=ti].iter_mut().for_each(|a| *a *= inv);
                at_row[ti + 1..].fill(0.0);
                pre_row[ti + 1..].fill(0.0);
            }
            let mut y = vec![0.0f32; t * hs];
            sgemm(
                t,
                hs,
                t,
                Mat {
                    data: at,
                    rs: t,
                    cs: 1,
                },
                v,
                &mut y,
                false,
            );
            y
        })
        .collect();
    for (bh, y) in heads.iter().enumerate() {
        let (bi, h) = (bh / nh, bh % nh);
        for (ti, row) in y.chunks_exact(hs).enumerate() {
            let dst = (bi * t + ti) * c + h * hs;
            out[dst..dst + hs].copy_from_slice(row);
        }
    }
}

/// Accumulates dinp [B, T, 3C] += the gradient of `attention_forward` given dout [B, T, C],
/// the forward's inp [B, T, 3C] and att [B, NH, T, T]. dpreatt and datt [B, NH, T, T] are
/// scratch that this kernel overwrites.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dinp: &mut [f32],
    dpreatt: &mut [f32],
    datt: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    att: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    assert!(
        c.is_multiple_of(nh),
        "channels must split evenly into heads"
    );
    assert!(dinp.len() == b * t * 3 * c && inp.len() == b * t * 3 * c && dout.len() == b * t * c);
    assert!(att.len() == b * nh * t * t && dpreatt.len() == att.len() && datt.len() == att.len());
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    // Per (b, h): dq, dk, dv as [T, hs] each, scattered into dinp afterwards.
    let grads: Vec<Vec<f32>> = dpreatt
        .par_chunks_mut(t * t)
        .zip(datt.par_chunks_mut(t * t))
        .enumerate()
        .map(|(bh, (dpre, dat))| {
            let (bi, h) = (bh / nh, bh % nh);
            let (q, k, v) = (
                head(inp, bi, 0, h, t, c, hs),
                head(inp, bi, 1, h, t, c, hs),
                head(inp, bi, 2, h, t, c, hs),
            );
            let at = Mat {
                data: &att[bh * t * t..(bh + 1) * t * t],
                rs: t,
                cs: 1,
            };
            let dy = Mat {
                data: &dout[bi * t * c + h * hs..],
                rs: c,
                cs: 1,
            };
            let mut g = vec![0.0f32; 3 * t * hs];
            let (dq, rest) = g.split_at_mut(t * hs);
            let (dk, dv) = rest.split_at_mut(t * hs);
            // y = att·v  →  datt = dy·vᵀ, dv = attᵀ·dy
            sgemm(t, t, hs, dy, transposed(v), dat, false);
            sgemm(t, hs, t, transposed(at), dy, dv, false);
            // softmax: dpre = att ⊙ (datt − Σ att·datt), times the 1/sqrt(hs) of the scores.
            for (ti, ((dpre_row, dat_row), at_row)) in dpre
                .chunks_exact_mut(t)
                .zip(dat.chunks_exact(t))
                .zip(at.data.chunks_exact(t))
                .enumerate()
            {
                let dot: f32 = at_row[..=ti]
                    .iter()
                    .zip(&dat_row[..=ti])
                    .map(|(a, d)| a * d)
                    .sum();
                for ((dp, a), d) in dpre_row[..=ti]
                    .iter_mut()
                    .zip(&at_row[..=ti])
                    .zip(&dat_row[..=ti])
                {
                    *dp = a * (d - dot) * scale;
                }
                dpre_row[ti + 1..].fill(0.0);
            }
            // pre = q·kᵀ  →  dq = dpre·k, dk = dpreᵀ·q
            let dp = Mat {
                data: dpre,
                rs: t,
                cs: 1,
            };
            sgemm(t, hs, t, dp, k, dq, false);
            sgemm(t, hs, t, transposed(dp), q, dk, false);
            g
        })
        .collect();
    for (bh, g) in grads.iter().enumerate() {
        let (bi, h) = (bh / nh, bh % nh);
        for part in 0..3 {
            for ti in 0..t {
                let src = &g[part * t * hs + ti * hs..part * t * hs + (ti + 1) * hs];
                let dst = (bi * t + ti) * 3 * c + part * c + h * hs;
                for (d, s) in dinp[dst..dst + hs].iter_mut().zip(src) {
                    *d += s;
                }
            }
        }
    }
}
