//! Token + position embedding.

use rayon::prelude::*;

/// out [B, T, C] = wte [V, C] row `inp[b, t]` + wpe [maxT, C] row `t`;  inp [B, T] token ids
pub fn encoder_forward(
    out: &mut [f32],
    inp: &[u32],
    wte: &[f32],
    wpe: &[f32],
    b: usize,
    t: usize,
    c: usize,
) {
    assert_eq!(out.len(), b * t * c);
    assert_eq!(inp.len(), b * t);
    assert!(wpe.len() >= t * c, "wpe has fewer than T rows");
    out.par_chunks_mut(c).enumerate().for_each(|(i, o)| {
        let tok = inp[i] as usize;
        let w = &wte[tok * c..(tok + 1) * c];
        let p = &wpe[(i % t) * c..(i % t + 1) * c];
        for ((o, w), p) in o.iter_mut().zip(w).zip(p) {
            *o = w + p;
        }
    });
}

/// dwte [V, C] += dout rows at their token ids;  dwpe [maxT, C] += dout summed over B.
/// Sequential on purpose: rows of a repeated token must be added in a fixed order, and the
/// work (B·T·C adds) is negligible beside the matmuls.
pub fn encoder_backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    inp: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    assert_eq!(dout.len(), b * t * c);
    assert_eq!(inp.len(), b * t);
    assert!(dwpe.len() >= t * c, "dwpe has fewer than T rows");
    for (i, d) in dout.chunks_exact(c).enumerate() {
        let tok = inp[i] as usize;
        for (w, g) in dwte[tok * c..(tok + 1) * c].iter_mut().zip(d) {
            *w += g;
        }
        let ti = i % t;
        for (p, g) in dwpe[ti * c..(ti + 1) * c].iter_mut().zip(d) {
            *p += g;
        }
    }
}
