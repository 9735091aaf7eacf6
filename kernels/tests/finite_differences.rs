//! Every backward kernel against central finite differences of its forward kernel.
//!
//! For an op with output `out`, the scalar L = Σ out·R (R a fixed random tensor) has gradient
//! dL/dx = backward(dout = R). Each input element is nudged by ±h (h = 1e-2; the ops are smooth
//! at that scale) and L is evaluated in f64 from the f32 outputs. Tolerance: |numeric − analytic|
//! ≤ 3e-3 + 1e-2·|analytic|, which covers f32 rounding of L at this step size.

use convoy_kernels::{
    IGNORE_INDEX, activation, attention, encoder, layernorm, loss, matmul, residual,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const H: f32 = 1e-2;

fn random(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Checks `analytic[i]` (the gradient for `inputs[i]`) against finite differences of
/// L = Σ forward(inputs)·r.
fn check(
    op: &str,
    inputs: &[Vec<f32>],
    r: &[f32],
    forward: impl Fn(&[Vec<f32>]) -> Vec<f32>,
    analytic: &[Vec<f32>],
) {
    for (which, grad) in analytic.iter().enumerate() {
        assert_eq!(
            grad.len(),
            inputs[which].len(),
            "{op}: gradient {which} has the input's length"
        );
        for j in 0..grad.len() {
            let mut plus = inputs.to_vec();
            plus[which][j] += H;
            let mut minus = inputs.to_vec();
            minus[which][j] -= H;
            let numeric =
                ((dot(&forward(&plus), r) - dot(&forward(&minus), r)) / (2.0 * H as f64)) as f32;
            let a = grad[j];
            assert!(
                (numeric - a).abs() <= 3e-3 + 1e-2 * a.abs(),
                "{op}: d/d input{which}[{j}] analytic {a} vs numeric {numeric}"
            );
        }
    }
}

#[test]
fn matmul_with_and_without_bias() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (n, c, oc) = (5, 7, 6);
    for with_bias in [true, false] {
        let inputs = vec![
            random(&mut rng, n * c, 1.0),
            random(&mut rng, oc * c, 1.0),
            random(&mut rng, oc, 1.0),
        ];
        let r = random(&mut rng, n * oc, 1.0);
        let fwd = |x: &[Vec<f32>]| {
            let mut out = vec![0.0; n * oc];
            matmul::matmul_forward(
                &mut out,
                &x[0],
                &x[1],
                with_bias.then_some(&x[2][..]),
                n,
                c,
                oc,
            );
            out
        };
        let (mut dinp, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; oc * c], vec![0.0; oc]);
        matmul::matmul_backward(
            &mut dinp,
            &mut dw,
            with_bias.then_some(&mut db[..]),
            &r,
            &inputs[0],
            &inputs[1],
            n,
            c,
            oc,
        );
        let grads = if with_bias {
            vec![dinp, dw, db]
        } else {
            vec![dinp, dw]
        };
        check("matmul", &inputs, &r, fwd, &grads);
    }
}

#[test]
fn matmul_forward_matches_a_triple_loop() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (n, c, oc) = (33, 70, 45);
    let (inp, w, b) = (
        random(&mut rng, n * c, 1.0),
        random(&mut rng, oc * c, 1.0),
        random(&mut rng, oc, 1.0),
    );
    let mut out = vec![0.0; n * oc];
    matmul::matmul_forward(&mut out, &inp, &w, Some(&b), n, c, oc);
    for i in 0..n {
        for o in 0..oc {
            let want = b[o] as f64 + dot(&inp[i * c..(i + 1) * c], &w[o * c..(o + 1) * c]);
            assert!((out[i * oc + o] as f64 - want).abs() < 1e-4, "out[{i},{o}]");
        }
    }
}

#[test]
fn encoder_accumulates_repeated_tokens() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (b, t, c, v) = (2, 4, 3, 5);
    let tokens = vec![1u32, 3, 1, 0, 4, 4, 1, 2];
    let inputs = vec![random(&mut rng, v * c, 1.0), random(&mut rng, t * c, 1.0)];
    let r = random(&mut rng, b * t * c, 1.0);
    let fwd = |x: &[Vec<f32>]| {
        let mut out = vec![0.0; b * t * c];
        encoder::encoder_forward(&mut out, &tokens, &x[0], &x[1], b, t, c);
        out
    };
    let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
    encoder::encoder_backward(&mut dwte, &mut dwpe, &r, &tokens, b, t, c);
    check("encoder", &inputs, &r, fwd, &[dwte, dwpe]);
}

#[test]
fn layernorm() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (n, c) = (4, 9);
    let inputs = vec![
        random(&mut rng, n * c, 2.0),
        random(&mut rng, c, 1.5),
        random(&mut rng, c, 1.0),
    ];
    let r = random(&mut rng, n * c, 1.0);
    let fwd = |x: &[Vec<f32>]| {
        let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        layernorm::layernorm_forward(&mut out, &mut mean, &mut rstd, &x[0], &x[1], &x[2], n, c);
        out
    };
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    layernorm::layernorm_forward(
        &mut out, &mut mean, &mut rstd, &inputs[0], &inputs[1], &inputs[2], n, c,
    );
    let (mut dinp, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
    layernorm::layernorm_backward(
        &mut dinp, &mut dw, &mut db, &r, &inputs[0], &inputs[1], &mean, &rstd, n, c,
    );
    check("layernorm", &inputs, &r, fwd, &[dinp, dw, db]);
}

#[test]
fn activations() {
    type Fwd = fn(&mut [f32], &[f32]);
    type Bwd = fn(&mut [f32], &[f32], &[f32]);
    // (name, forward, backward, backward reads the forward output rather than its input)
    let ops: [(&str, Fwd, Bwd, bool); 4] = [
        (
            "gelu",
            activation::gelu_forward,
            activation::gelu_backward,
            false,
        ),
        (
            "relu",
            activation::relu_forward,
            activation::relu_backward,
            false,
        ),
        (
            "tanh",
            activation::tanh_forward,
            activation::tanh_backward,
            true,
        ),
        (
            "sigmoid",
            activation::sigmoid_forward,
            activation::sigmoid_backward,
            true,
        ),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (name, fwd, bwd, uses_output) in ops {
        // Keep inputs away from ReLU's kink, where a finite difference is meaningless.
        let x: Vec<f32> = random(&mut rng, 40, 3.0)
            .into_iter()
            .map(|v| if v.abs() < 0.05 { 0.3 } else { v })
            .collect();
        let r = random(&mut rng, 40, 1.0);
        let mut out = vec![0.0; 40];
        fwd(&mut out, &x);
        let mut dinp = vec![0.5; 40]; // backward accumulates: start from a non-zero buffer
        bwd(&mut dinp, if uses_output { &out } else { &x }, &r);
        dinp.iter_mut().for_each(|d| *d -= 0.5);
        let forward = |xs: &[Vec<f32>]| {
            let mut o = vec![0.0; 40];
            fwd(&mut o, &xs[0]);
            o
        };
        check(name, &[x], &r, forward, &[dinp]);
    }
    // GELU is the tanh approximation: check a few values against the formula in f64.
    let mut out = [0.0f32; 3];
    activation::gelu_forward(&mut out, &[-1.5, 0.2, 2.0]);
    for (x, y) in [-1.5f64, 0.2, 2.0].iter().zip(out) {
        let want = 0.5
            * x
            * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
        assert!(
            (y as f64 - want).abs() < 1e-6,
            "gelu({x}) = {y}, want {want}"
        );
    }
}

#[test]
fn residual() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let inputs = vec![random(&mut rng, 12, 1.0), random(&mut rng, 12, 1.0)];
    let r = random(&mut rng, 12, 1.0);
    let fwd = |x: &[Vec<f32>]| {
        let mut out = vec![0.0; 12];
        residual::residual_forward(&mut out, &x[0], &x[1]);
        out
    };
    let (mut d1, mut d2) = (vec![0.0; 12], vec![0.0; 12]);
    residual::residual_backward(&mut d1, &mut d2, &r);
    check("residual", &inputs, &r, fwd, &[d1, d2]);
}

fn attention_out(x: &[f32], b: usize, t: usize, c: usize, nh: usize) -> Vec<f32> {
    let (mut out, mut pre, mut att) = (
        vec![0.0; b * t * c],
        vec![0.0; b * nh * t * t],
        vec![0.0; b * nh * t * t],
    );
    attention::attention_forward(&mut out, &mut pre, &mut att, x, b, t, c, nh);
    out
}

#[test]
fn attention_gradient_and_causality() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (b, t, c, nh) = (2, 5, 8, 2);
    let qkv = random(&mut rng, b * t * 3 * c, 1.0);
    let r = random(&mut rng, b * t * c, 1.0);
    let (mut out, mut pre, mut att) = (
        vec![0.0; b * t * c],
        vec![0.0; b * nh * t * t],
        vec![0.0; b * nh * t * t],
    );
    attention::attention_forward(&mut out, &mut pre, &mut att, &qkv, b, t, c, nh);
    for row in att.chunks_exact(t).enumerate().map(|(i, r)| (i % t, r)) {
        let (ti, row) = row;
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "attention rows sum to 1");
        assert!(
            row[ti + 1..].iter().all(|&a| a == 0.0),
            "no attention to future positions"
        );
    }
    let mut dinp = vec![0.0; qkv.len()];
    let (mut dpre, mut datt) = (vec![7.0; att.len()], vec![7.0; att.len()]); // scratch: overwritten
    attention::attention_backward(&mut dinp, &mut dpre, &mut datt, &r, &qkv, &att, b, t, c, nh);
    check(
        "attention",
        std::slice::from_ref(&qkv),
        &r,
        |x| attention_out(&x[0], b, t, c, nh),
        &[dinp],
    );

    // Changing the last position's keys and values leaves every earlier output unchanged.
    let mut later = qkv.clone();
    for bi in 0..b {
        let last = (bi * t + t - 1) * 3 * c;
        later[last + c..last + 3 * c]
            .iter_mut()
            .for_each(|v| *v += 1.0);
    }
    let changed = attention_out(&later, b, t, c, nh);
    for bi in 0..b {
        let earlier = bi * t * c..(bi * t + t - 1) * c;
        assert_eq!(
            out[earlier.clone()],
            changed[earlier],
            "outputs before the changed position"
        );
    }
}

#[test]
fn crossentropy_with_ignored_rows_and_padding() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (n, v, vp) = (4, 5, 8);
    let targets = vec![2u32, IGNORE_INDEX, 0, 4];
    let logits = random(&mut rng, n * vp, 3.0);
    // L = Σ row losses (dloss_scale = 1): R = ones.
    let loss_sum = |x: &[Vec<f32>]| {
        let mut losses = vec![0.0; n];
        loss::crossentropy_forward_backward(&mut losses, None, &x[0], &targets, n, v, vp, 1.0);
        losses
    };
    let mut losses = vec![0.0; n];
    let mut dlogits = vec![9.0; n * vp];
    let (sum, count) = loss::crossentropy_forward_backward(
        &mut losses,
        Some(&mut dlogits),
        &logits,
        &targets,
        n,
        v,
        vp,
        1.0,
    );
    assert_eq!(count, 3);
    assert_eq!(losses[1], 0.0, "an ignored row has no loss");
    assert!((sum - losses.iter().map(|&l| l as f64).sum::<f64>()).abs() < 1e-6);
    assert!(
        dlogits[vp..2 * vp].iter().all(|&d| d == 0.0),
        "an ignored row has no gradient"
    );
    for row in 0..n {
        assert!(
            dlogits[row * vp + v..(row + 1) * vp]
                .iter()
                .all(|&d| d == 0.0),
            "padding has no gradient"
        );
    }
    // The loss of a row is −log softmax at the target, over the real columns only.
    let row = &logits[..v];
    let lse = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
    assert!((losses[0] as f64 - (lse - row[2] as f64)).abs() < 1e-5);
    check("crossentropy", &[logits], &[1.0; 4], loss_sum, &[dlogits]);

    // Softmax over 3 real columns of 4: the padding column (100.0) is ignored.
    let mut probs = vec![0.0; 8];
    loss::softmax_forward(
        &mut probs,
        &[1.0, 2.0, 3.0, 100.0, -1.0, 0.0, 1.0, 100.0],
        2,
        3,
        4,
    );
    for row in probs.chunks_exact(4) {
        assert!((row[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6 && row[3] == 0.0);
    }
}

#[test]
fn mse() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (pred, target) = (random(&mut rng, 10, 1.0), random(&mut rng, 10, 1.0));
    let mut dpred = vec![0.0; 10];
    let sum = loss::mse_forward_backward(Some(&mut dpred), &pred, &target, 1.0);
    let want: f64 = pred
        .iter()
        .zip(&target)
        .map(|(p, t)| ((p - t) as f64).powi(2))
        .sum();
    assert!((sum - want).abs() < 1e-6);
    let f = |x: &[Vec<f32>]| vec![loss::mse_forward_backward(None, &x[0], &target, 1.0) as f32];
    check("mse", &[pred], &[1.0], f, &[dpred]);
}
