//! Causal multi-head self-attention in llm.c's layout.
//!
//! Work is split by (batch, head): every (b, h) pair owns one contiguous [T, T] block of the
//! attention matrices and one column block of the outputs, so pairs run in parallel and each
//! result is computed in a fixed order whatever the thread count.

use rayon::prelude::*;

/// Gathers head `h` of batch row `b` from the qkv [B, T, 3C] buffer: part 0 = q, 1 = k, 2 = v.
fn head<'a>(
    inp: &'a [f32],
    b: usize,
    ti: usize,
    part: usize,
    h: usize,
    t: usize,
    c: usize,
    hs: usize,
) -> &'a [f32] {
    let base = (b * t + ti) * 3 * c + part * c + h * hs;
    &inp[base..base + hs]
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
    assert!(c % nh == 0, "channels must split evenly into heads");
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
            let mut y = vec![0.0f32; t * hs];
            for ti in 0..t {
                let q = head(inp, bi, ti, 0, h, t, c, hs);
                let (pre_row, at_row) = (
                    &mut pre[ti * t..(ti + 1) * t],
                    &mut at[ti * t..(ti + 1) * t],
                );
                let mut max = f32::NEG_INFINITY;
                for t2 in 0..=ti {
                    let k = head(inp, bi, t2, 1, h, t, c, hs);
                    let s = q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                    pre_row[t2] = s;
                    max = max.max(s);
                }
                let mut sum = 0.0f32;
                for t2 in 0..=ti {
                    let e = (pre_row[t2] - max).exp();
                    at_row[t2] = e;
                    sum += e;
                }
                let inv = 1.0 / sum;
                for t2 in 0..t {
                    if t2 <= ti {
                        at_row[t2] *= inv;
                    } else {
                        at_row[t2] = 0.0;
                        pre_row[t2] = 0.0;
                    }
                }
                let yrow = &mut y[ti * hs..(ti + 1) * hs];
                for t2 in 0..=ti {
                    let v = head(inp, bi, t2, 2, h, t, c, hs);
                    let a = at_row[t2];
                    for (y, v) in yrow.iter_mut().zip(v) {
                        *y += a * v;
                    }
                }
            }
            y
        })
        .collect();
    for (bh, y) in heads.iter().enumerate() {
        let (bi, h) = (bh / nh, bh % nh);
        for ti in 0..t {
            let dst = (bi * t + ti) * c + h * hs;
            out[dst..dst + hs].copy_from_slice(&y[ti * hs..(ti + 1) * hs]);
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
    assert!(c % nh == 0, "channels must split evenly into heads");
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
            let at = &att[bh * t * t..(bh + 1) * t * t];
            let mut g = vec![0.0f32; 3 * t * hs];
            let (dq, rest) = g.split_at_mut(t * hs);
            let (dk, dv) = rest.split_at_mut(t * hs);
            for ti in 0..t {
                let dy = &dout[(bi * t + ti) * c + h * hs..(bi * t + ti) * c + (h + 1) * hs];
                let (at_row, dat_row, dpre_row) = (
                    &at[ti * t..(ti + 1) * t],
                    &mut dat[ti * t..(ti + 1) * t],
                    &mut dpre[ti * t..(ti + 1) * t],
                );
                // y = Σ att·v  →  datt = dy·v, dv += att·dy
                for t2 in 0..=ti {
                    let v = head(inp, bi, t2, 2, h, t, c, hs);
                    dat_row[t2] = dy.iter().zip(v).map(|(a, b)| a * b).sum();
                    let a = at_row[t2];
                    for (d, y) in dv[t2 * hs..(t2 + 1) * hs].iter_mut().zip(dy) {
                        *d += a * y;
                    }
                }
                // softmax: dpre = att ⊙ (datt - Σ att·datt)
                let dot: f32 = (0..=ti).map(|t2| at_row[t2] * dat_row[t2]).sum();
                for t2 in 0..t {
                    dpre_row[t2] = if t2 <= ti {
                        at_row[t2] * (dat_row[t2] - dot)
                    } else {
                        0.0
                    };
                    if t2 > ti {
                        dat_row[t2] = 0.0;
                    }
                }
                // pre = q·k·scale  →  dq += Σ dpre·k·scale, dk += dpre·q·scale
                let q = head(inp, bi, ti, 0, h, t, c, hs);
                for t2 in 0..=ti {
                    let k = head(inp, bi, t2, 1, h, t, c, hs);
                    let d = dpre_row[t2] * scale;
                    for ((dq, dk), (k, q)) in dq[ti * hs..(ti + 1) * hs]
                        .iter_mut()
                        .zip(&mut dk[t2 * hs..(t2 + 1) * hs])
                        .zip(k.iter().zip(q))
                    {
                        *dq += d * k;
                        *dk += d * q;
                    }
                }
            }
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
