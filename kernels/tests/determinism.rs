//! Results must be bit-identical whatever the number of rayon threads (bit-exact resume and
//! world-size equivalence rely on it). Runs representative kernels, at sizes that make them split
//! their work, inside pools of 1, 2 and 3 threads and compares every output bit for bit.

use convoy_kernels::{
    IGNORE_INDEX, activation, attention, encoder, gradnorm, layernorm, loss, matmul, optim,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn uniform(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Every output of every kernel below, as bit patterns (f64 results split in two words).
fn run_all() -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut outs: Vec<Vec<f32>> = Vec::new();
    let mut scalars: Vec<f64> = Vec::new();

    // matmul with bias, large enough for gemm to use every thread.
    let (n, c, oc) = (300, 200, 700);
    let (inp, w, b) = (
        uniform(&mut rng, n * c),
        uniform(&mut rng, oc * c),
        uniform(&mut rng, oc),
    );
    let mut out = vec![0.0; n * oc];
    matmul::matmul_forward(&mut out, &inp, &w, Some(&b), n, c, oc);
    let (mut dinp, mut dw, mut db) = (vec![0.1; n * c], vec![0.1; oc * c], vec![0.1; oc]);
    matmul::matmul_backward(&mut dinp, &mut dw, Some(&mut db), &out, &inp, &w, n, c, oc);
    outs.extend([out, dinp, dw, db]);

    // layernorm
    let (n, c) = (512, 96);
    let (x, w, b) = (
        uniform(&mut rng, n * c),
        uniform(&mut rng, c),
        uniform(&mut rng, c),
    );
    let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
    layernorm::layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, &b, n, c);
    let dout = uniform(&mut rng, n * c);
    let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
    layernorm::layernorm_backward(&mut dx, &mut dw, &mut db, &dout, &x, &w, &mean, &rstd, n, c);
    outs.extend([out, mean, rstd, dx, dw, db]);

    // cross-entropy and softmax over a padded vocabulary, with ignored rows
    let (n, v, vp) = (64, 5000, 5008);
    let logits: Vec<f32> = uniform(&mut rng, n * vp).iter().map(|x| 8.0 * x).collect();
    let targets: Vec<u32> = (0..n)
        .map(|i| {
            if i % 5 == 0 {
                IGNORE_INDEX
            } else {
                (i * 77 % v) as u32
            }
        })
        .collect();
    let (mut losses, mut dlogits) = (vec![0.0; n], vec![0.0; n * vp]);
    let (sum, count) = loss::crossentropy_forward_backward(
        &mut losses,
        Some(&mut dlogits),
        &logits,
        &targets,
        n,
        v,
        vp,
        1.0 / 51.0,
    );
    assert_eq!(count, 51);
    let mut probs = vec![0.0; n * vp];
    loss::softmax_forward(&mut probs, &logits, n, v, vp);
    outs.extend([losses, dlogits, probs]);
    scalars.push(sum);

    // encoder backward with many repeated tokens (a few hundred distinct ones, so that the
    // token rows are spread over several tasks)
    let (b, t, c, vocab) = (8, 256, 128, 1000);
    let tokens: Vec<u32> = (0..b * t).map(|i| (i * i % 997) as u32).collect();
    let dout = uniform(&mut rng, b * t * c);
    let (mut dwte, mut dwpe) = (vec![0.0; vocab * c], vec![0.0; t * c]);
    encoder::encoder_backward(&mut dwte, &mut dwpe, &dout, &tokens, b, t, c);
    outs.extend([dwte, dwpe]);

    // attention
    let (b, t, c, nh) = (3, 32, 48, 4);
    let qkv = uniform(&mut rng, b * t * 3 * c);
    let (mut out, mut pre, mut att) = (
        vec![0.0; b * t * c],
        vec![0.0; b * nh * t * t],
        vec![0.0; b * nh * t * t],
    );
    attention::attention_forward(&mut out, &mut pre, &mut att, &qkv, b, t, c, nh);
    let mut dqkv = vec![0.0; qkv.len()];
    let (mut dpre, mut datt) = (vec![0.0; att.len()], vec![0.0; att.len()]);
    attention::attention_backward(
        &mut dqkv, &mut dpre, &mut datt, &out, &qkv, &att, b, t, c, nh,
    );
    outs.extend([out, att, dqkv]);

    // Elementwise kernels, losses and the optimizer over long buffers: a hundred chunks with
    // magnitudes spread over six decades, so that any order-dependent combination of the chunk
    // sums shows in the f64 results.
    let len = 2_000_003;
    let x: Vec<f32> = uniform(&mut rng, len)
        .iter()
        .enumerate()
        .map(|(i, v)| v * 10f32.powi((i / 7919 % 7) as i32 - 3))
        .collect();
    let g = uniform(&mut rng, len);
    let mut y = vec![0.0; len];
    activation::gelu_forward(&mut y, &x);
    let mut dx = vec![0.0; len];
    activation::gelu_backward(&mut dx, &x, &g);
    let mut dpred = vec![0.0; len];
    scalars.push(loss::mse_forward_backward(Some(&mut dpred), &x, &g, 0.5));
    let (mut p, mut m, mut v) = (x.clone(), vec![0.0; len], vec![0.0; len]);
    optim::adamw_update(&mut p, &g, &mut m, &mut v, 1e-3, 0.9, 0.95, 1e-8, 0.1, 3);
    let mut grads = uniform(&mut rng, 1_000_003);
    let norm = gradnorm::global_norm(&grads);
    gradnorm::clip_grads(&mut grads, norm, 1.0);
    outs.extend([y, dx, dpred, p, m, v, grads, vec![norm]]);

    let mut bits: Vec<Vec<u32>> = outs
        .iter()
        .map(|o| o.iter().map(|x| x.to_bits()).collect())
        .collect();
    bits.push(
        scalars
            .iter()
            .flat_map(|s| [s.to_bits() as u32, (s.to_bits() >> 32) as u32])
            .collect(),
    );
    bits
}

#[test]
fn kernels_are_bit_identical_for_1_2_and_3_threads() {
    let in_pool = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("test setup: thread pool")
            .install(run_all)
    };
    let one = in_pool(1);
    for threads in [2, 3] {
        let other = in_pool(threads);
        for (i, (a, b)) in one.iter().zip(&other).enumerate() {
            assert!(
                a == b,
                "output #{i} differs between 1 and {threads} threads"
            );
        }
    }
}
