//! Optimizer updates against hand-computed steps, gradient norm and clipping, and the rule that
//! no kernel's result depends on the number of threads.

use convoy_kernels::{attention, encoder, gradnorm, layernorm, loss, matmul, optim};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn adamw_two_steps_by_hand() {
    // One parameter, p = 1, g = 0.5 then −0.25; lr 0.1, β = (0.9, 0.99), eps 1e-8, wd 0.1.
    let (mut p, mut m, mut v) = ([1.0f32], [0.0f32], [0.0f32]);
    let (lr, b1, b2, eps, wd) = (0.1f64, 0.9f64, 0.99f64, 1e-8f64, 0.1f64);
    let (mut ep, mut em, mut ev) = (1.0f64, 0.0f64, 0.0f64);
    for (t, g) in [(1u64, 0.5f64), (2, -0.25)] {
        optim::adamw_update(
            &mut p,
            &[g as f32],
            &mut m,
            &mut v,
            lr as f32,
            b1 as f32,
            b2 as f32,
            eps as f32,
            wd as f32,
            t,
        );
        ep *= 1.0 - lr * wd;
        em = b1 * em + (1.0 - b1) * g;
        ev = b2 * ev + (1.0 - b2) * g * g;
        let denom = ev.sqrt() / (1.0 - b2.powi(t as i32)).sqrt() + eps;
        ep -= lr / (1.0 - b1.powi(t as i32)) * em / denom;
        assert!(
            (p[0] as f64 - ep).abs() < 1e-6,
            "step {t}: {} vs {ep}",
            p[0]
        );
    }
}

#[test]
fn sgd_momentum_nesterov_and_weight_decay_by_hand() {
    for nesterov in [false, true] {
        let (mut p, mut buf) = ([2.0f32], [0.0f32]);
        let (lr, mu, wd) = (0.1f32, 0.9f32, 0.01f32);
        let (mut ep, mut eb) = (2.0f32, 0.0f32);
        for (step, g) in [0.5f32, 0.3, -0.2].into_iter().enumerate() {
            optim::sgd_update(&mut p, &[g], &mut buf, lr, mu, wd, nesterov, step == 0);
            let g2 = g + wd * ep;
            eb = if step == 0 { g2 } else { mu * eb + g2 };
            ep -= lr * if nesterov { g2 + mu * eb } else { eb };
            assert!(
                (p[0] - ep).abs() < 1e-6,
                "nesterov {nesterov} step {step}: {} vs {ep}",
                p[0]
            );
        }
    }
    // Momentum 0 is plain SGD.
    let (mut p, mut buf) = ([1.0f32], [0.0f32]);
    optim::sgd_update(&mut p, &[0.5], &mut buf, 0.2, 0.0, 0.0, false, true);
    assert_eq!(p[0], 0.9);
}

#[test]
fn global_norm_and_clipping() {
    let mut g = vec![3.0f32, 4.0, 0.0, 0.0];
    let norm = gradnorm::global_norm(&g);
    assert!((norm - 5.0).abs() < 1e-6);
    assert_eq!(
        gradnorm::clip_grads(&mut g, norm, 10.0),
        1.0,
        "under the limit: untouched"
    );
    assert_eq!(g, vec![3.0, 4.0, 0.0, 0.0]);
    let scale = gradnorm::clip_grads(&mut g, norm, 1.0);
    assert!((scale - 1.0 / (5.0 + 1e-6)).abs() < 1e-7);
    assert!((gradnorm::global_norm(&g) - 1.0).abs() < 1e-5);
}

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Runs a representative set of kernels at sizes where they split work, returning every output.
fn run_kernels() -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (b, t, c, nh, v) = (4, 32, 64, 4, 300);
    let (n, oc) = (b * t, 3 * c);
    let (inp, w, bias, dout) = (
        random(&mut rng, n * c),
        random(&mut rng, oc * c),
        random(&mut rng, oc),
        random(&mut rng, n * oc),
    );
    let mut out = vec![0.0; n * oc];
    matmul::matmul_forward(&mut out, &inp, &w, Some(&bias), n, c, oc);
    let (mut dinp, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; oc * c], vec![0.0; oc]);
    matmul::matmul_backward(&mut dinp, &mut dw, Some(&mut db), &dout, &inp, &w, n, c, oc);

    let (lw, lb, ldout) = (
        random(&mut rng, c),
        random(&mut rng, c),
        random(&mut rng, n * c),
    );
    let (mut ln, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    layernorm::layernorm_forward(&mut ln, &mut mean, &mut rstd, &inp, &lw, &lb, n, c);
    let (mut ldinp, mut ldw, mut ldb) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
    layernorm::layernorm_backward(
        &mut ldinp, &mut ldw, &mut ldb, &ldout, &inp, &lw, &mean, &rstd, n, c,
    );

    let (mut att_out, mut pre, mut att) = (
        vec![0.0; n * c],
        vec![0.0; b * nh * t * t],
        vec![0.0; b * nh * t * t],
    );
    attention::attention_forward(&mut att_out, &mut pre, &mut att, &out, b, t, c, nh);
    let mut dqkv = vec![0.0; n * oc];
    let (mut dpre, mut datt) = (vec![0.0; att.len()], vec![0.0; att.len()]);
    attention::attention_backward(
        &mut dqkv, &mut dpre, &mut datt, &ldout, &out, &att, b, t, c, nh,
    );

    let logits = random(&mut rng, n * v);
    let targets: Vec<u32> = (0..n).map(|i| (i * 7 % 250) as u32).collect();
    let (mut losses, mut dlogits) = (vec![0.0; n], vec![0.0; n * v]);
    let (sum, _) = loss::crossentropy_forward_backward(
        &mut losses,
        Some(&mut dlogits),
        &logits,
        &targets,
        n,
        250,
        v,
        0.01,
    );

    let tokens: Vec<u32> = (0..n).map(|i| (i * 13 % 17) as u32).collect();
    let (mut dwte, mut dwpe) = (vec![0.0; 17 * c], vec![0.0; t * c]);
    encoder::encoder_backward(&mut dwte, &mut dwpe, &ldout, &tokens, b, t, c);

    let norm = gradnorm::global_norm(&dw);
    vec![
        out,
        dinp,
        dw,
        db,
        ln,
        ldinp,
        ldw,
        ldb,
        att_out,
        dqkv,
        losses,
        dlogits,
        vec![sum as f32, norm],
        dwte,
        dwpe,
    ]
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
            .install(run_kernels)
    };
    let bits = |v: Vec<Vec<f32>>| {
        v.into_iter()
            .map(|x| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    let one = bits(run(1));
    assert_eq!(one, bits(run(2)));
    assert_eq!(one, bits(run(3)));
}
