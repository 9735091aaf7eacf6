//! Residual connections.

use rayon::prelude::*;

use crate::activation::CHUNK;

/// out [N] = inp1 [N] + inp2 [N]
pub fn residual_forward(out: &mut [f32], inp1: &[f32], inp2: &[f32]) {
    assert!(out.len() == inp1.len() && out.len() == inp2.len());
    out.par_chunks_mut(CHUNK)
        .zip(inp1.par_chunks(CHUNK))
        .zip(inp2.par_chunks(CHUNK))
        .for_each(|((o, a), b)| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
}

/// dinp1 [N] += dout;  dinp2 [N] += dout
pub fn residual_backward(dinp1: &mut [f32], dinp2: &mut [f32], dout: &[f32]) {
    assert!(dinp1.len() == dout.len() && dinp2.len() == dout.len());
    for (d, g) in dinp1.iter_mut().zip(dout) {
        *d += g;
    }
    for (d, g) in dinp2.iter_mut().zip(dout) {
        *d += g;
    }
}
