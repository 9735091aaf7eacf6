//! Token + position embedding, GPT-2's input layer.

use rayon::prelude::*;

use crate::par::min_items;

/// `out [B, T, C] = wte[inp[b, t]] + wpe[t]`, with `inp [B, T]` token ids, `wte [V, C]` and
/// `wpe [maxT, C]` (`maxT ≥ T`). `out` is overwritten. Panics on a token id `≥ V`.
pub fn encoder_forward(
    out: &mut [f32],
    inp: &[u32],
    wte: &[f32],
    wpe: &[f32],
    b: usize,
    t: usize,
    c: usize,
) {
    check_shapes(out.len(), inp, wte, wpe, b, t, c);
    if c == 0 {
        return;
    }
    out.par_chunks_mut(c)
        .zip(inp.par_iter())
        .enumerate()
        .with_min_len(min_items(c))
        .for_each(|(bt, (row, &tok))| {
            let tok = tok as usize;
            let pos = bt % t;
            let (te, pe) = (&wte[tok * c..(tok + 1) * c], &wpe[pos * c..(pos + 1) * c]);
            for ((o, &x), &y) in row.iter_mut().zip(te).zip(pe) {
                *o = x + y;
            }
        });
}

/// Backward of [`encoder_forward`]: `dwte [V, C] +=` and `dwpe [maxT, C] +=` the rows of
/// `dout [B, T, C]`.
///
/// A token that appears several times receives its contributions in (b, t) order, like a
/// serial loop, whatever the pool: `dwte` is split by row (token), each token's positions are
/// listed in order by a sort, and `dwpe` is split by row (position) and summed over `b` in order.
pub fn encoder_backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    inp: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    check_shapes(dout.len(), inp, dwte, dwpe, b, t, c);
    if c == 0 {
        return;
    }
    dwpe[..t * c]
        .par_chunks_mut(c)
        .enumerate()
        .with_min_len(min_items(c * b))
        .for_each(|(pos, dp)| {
            for bi in 0..b {
                let g = &dout[(bi * t + pos) * c..][..c];
                for (d, &x) in dp.iter_mut().zip(g) {
                    *d += x;
                }
            }
        });
    // (token, position) pairs sorted by token, then position; an allocation of B·T pairs per
    // step, negligible next to the embedding rows it indexes.
    let mut by_token: Vec<(u32, u32)> = inp
        .iter()
        .enumerate()
        .map(|(bt, &tok)| (tok, bt as u32))
        .collect();
    by_token.sort_unstable();
    // One group per distinct token, each handed its own row of dwte.
    let groups: Vec<(usize, &[(u32, u32)])> = by_token
        .chunk_by(|x, y| x.0 == y.0)
        .map(|g| (g[0].0 as usize, g))
        .collect();
    rows_mut(dwte, c, &groups)
        .into_par_iter()
        .with_min_len(min_items(c))
        .for_each(|(row, group)| {
            for &(_, bt) in group {
                let g = &dout[bt as usize * c..][..c];
                for (d, &x) in row.iter_mut().zip(g) {
                    *d += x;
                }
            }
        });
}

/// Mutable borrows of the rows `rows[i].0` of the `[_, c]` matrix `m`, paired with `rows[i].1`.
/// `rows` must be sorted by strictly increasing row index, which makes the borrows disjoint.
fn rows_mut<'m, G: Copy>(
    m: &'m mut [f32],
    c: usize,
    rows: &[(usize, G)],
) -> Vec<(&'m mut [f32], G)> {
    let mut out = Vec::with_capacity(rows.len());
    let mut rest = m;
    let mut start = 0;
    for &(r, g) in rows {
        let (_, tail) = rest.split_at_mut((r - start) * c);
        let (row, tail) = tail.split_at_mut(c);
        out.push((row, g));
        rest = tail;
        start = r + 1;
    }
    out
}

fn check_shapes(btc: usize, inp: &[u32], wte: &[f32], wpe: &[f32], b: usize, t: usize, c: usize) {
    assert_eq!(btc, b * t * c, "encoder: out/dout must be [B, T, C]");
    assert_eq!(inp.len(), b * t, "encoder: inp must be [B, T]");
    assert!(
        c == 0 || wte.len().is_multiple_of(c),
        "encoder: wte must be [V, C]"
    );
    assert!(
        wpe.len() >= t * c && (c == 0 || wpe.len().is_multiple_of(c)),
        "encoder: wpe must be [maxT ≥ T, C]"
    );
    let v = wte.len().checked_div(c).unwrap_or(usize::MAX);
    if let Some(&bad) = inp.iter().find(|&&tok| tok as usize >= v) {
        panic!("encoder: token id {bad} out of range for a vocabulary of {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{added, assert_close, numeric_grad, rng, to_f64, uniform};

    const B: usize = 2;
    const T: usize = 3;
    const C: usize = 4;
    const V: usize = 5;
    const MAXT: usize = 4;
    // Token 3 appears three times, token 1 twice: their gradients must accumulate.
    const INP: [u32; B * T] = [3, 1, 3, 0, 3, 1];

    fn reference(wte: &[f64], wpe: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; B * T * C];
        for bt in 0..B * T {
            for i in 0..C {
                out[bt * C + i] = wte[INP[bt] as usize * C + i] + wpe[(bt % T) * C + i];
            }
        }
        out
    }

    #[test]
    fn forward_matches_reference() {
        let mut r = rng(10);
        let (wte, wpe) = (uniform(&mut r, V * C), uniform(&mut r, MAXT * C));
        let mut out = vec![f32::NAN; B * T * C];
        encoder_forward(&mut out, &INP, &wte, &wpe, B, T, C);
        assert_close("out", &out, &reference(&to_f64(&wte), &to_f64(&wpe)), 1e-6);
    }

    #[test]
    fn backward_matches_finite_differences_and_accumulates_repeats() {
        let mut r = rng(11);
        let (wte, wpe) = (
            to_f64(&uniform(&mut r, V * C)),
            to_f64(&uniform(&mut r, MAXT * C)),
        );
        let dout = uniform(&mut r, B * T * C);
        let rr = to_f64(&dout);
        let loss = |wte: &[f64], wpe: &[f64]| -> f64 {
            reference(wte, wpe)
                .iter()
                .zip(&rr)
                .map(|(o, r)| o * r)
                .sum()
        };
        let (dwte0, dwpe0) = (uniform(&mut r, V * C), uniform(&mut r, MAXT * C));
        let (mut dwte, mut dwpe) = (dwte0.clone(), dwpe0.clone());
        encoder_backward(&mut dwte, &mut dwpe, &dout, &INP, B, T, C);
        assert_close(
            "dwte",
            &added(&dwte, &dwte0),
            &numeric_grad(&wte, |x| loss(x, &wpe)),
            1e-5,
        );
        assert_close(
            "dwpe",
            &added(&dwpe, &dwpe0),
            &numeric_grad(&wpe, |x| loss(&wte, x)),
            1e-5,
        );
        // Unused token rows (2, 4) and the position row beyond T stay exactly as they were.
        for row in [2, 4] {
            assert_eq!(dwte[row * C..(row + 1) * C], dwte0[row * C..(row + 1) * C]);
        }
        assert_eq!(dwpe[T * C..], dwpe0[T * C..]);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn rejects_out_of_range_tokens() {
        let mut out = vec![0.0; 2 * C];
        encoder_forward(
            &mut out,
            &[0, V as u32],
            &[0.0; V * C],
            &[0.0; MAXT * C],
            1,
            2,
            C,
        );
    }
}
