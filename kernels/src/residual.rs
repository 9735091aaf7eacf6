//! Residual connection `out = inp1 + inp2`.

use crate::par::{for_chunks2, for_chunks3};

/// `out = inp1 + inp2`, all of equal length; `out` is overwritten.
pub fn residual_forward(out: &mut [f32], inp1: &[f32], inp2: &[f32]) {
    for_chunks3(out, inp1, inp2, |o, a, b| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    });
}

/// `dinp1 += dout` and `dinp2 += dout`, all of equal length.
pub fn residual_backward(dinp1: &mut [f32], dinp2: &mut [f32], dout: &[f32]) {
    for dinp in [dinp1, dinp2] {
        for_chunks2(dinp, dout, |d, g| {
            for (d, &g) in d.iter_mut().zip(g) {
                *d += g;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{added, assert_close, numeric_grad, rng, to_f64, uniform};

    #[test]
    fn forward_and_backward() {
        let mut r = rng(50);
        let (a, b, dout) = (uniform(&mut r, 9), uniform(&mut r, 9), uniform(&mut r, 9));
        let mut out = vec![f32::NAN; 9];
        residual_forward(&mut out, &a, &b);
        let want: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| f64::from(x) + f64::from(y))
            .collect();
        assert_close("out", &out, &want, 1e-7);

        let (d1_0, d2_0) = (uniform(&mut r, 9), uniform(&mut r, 9));
        let (mut d1, mut d2) = (d1_0.clone(), d2_0.clone());
        residual_backward(&mut d1, &mut d2, &dout);
        let rr = to_f64(&dout);
        let (a64, b64) = (to_f64(&a), to_f64(&b));
        let loss = |x: &[f64], y: &[f64]| -> f64 {
            x.iter()
                .zip(y)
                .zip(&rr)
                .map(|((x, y), r)| (x + y) * r)
                .sum()
        };
        assert_close(
            "dinp1",
            &added(&d1, &d1_0),
            &numeric_grad(&a64, |x| loss(x, &b64)),
            1e-6,
        );
        assert_close(
            "dinp2",
            &added(&d2, &d2_0),
            &numeric_grad(&b64, |y| loss(&a64, y)),
            1e-6,
        );
    }
}
