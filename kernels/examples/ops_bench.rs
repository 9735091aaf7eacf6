//! Times the non-GEMM kernels at the shapes of the benchmark GPT (B=8, T=128, C=256, NH=4,
//! padded vocab 50304, ~20M parameters), median of several runs, to spot regressions.
//!
//! Run: `cargo run --release -p convoy-kernels --example ops_bench`

use std::time::Instant;

use convoy_kernels::{activation, attention, gradnorm, layernorm, loss, matmul, optim};

const B: usize = 8;
const T: usize = 128;
const C: usize = 256;
const NH: usize = 4;
const V: usize = 50257;
const VP: usize = 50304;
const N: usize = B * T;
const PARAMS: usize = 20_000_000;

fn fill(len: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

fn time(name: &str, mut f: impl FnMut()) {
    f();
    let mut ms: Vec<f64> = (0..9)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!("| {name} | {:.3} | {:.3} |", ms[4], ms[0]);
}

fn main() {
    println!("rayon threads: {}", rayon::current_num_threads());
    println!("| kernel | median ms | best ms |\n|---|---:|---:|");
    let logits = fill(N * VP, 1).iter().map(|x| 10.0 * x).collect::<Vec<_>>();
    let targets: Vec<u32> = (0..N as u32).map(|i| i * 31 % V as u32).collect();
    let (mut losses, mut dlogits) = (vec![0.0; N], vec![0.0; N * VP]);
    time("crossentropy fwd+bwd [1024, 50304]", || {
        loss::crossentropy_forward_backward(
            &mut losses,
            Some(&mut dlogits),
            &logits,
            &targets,
            N,
            V,
            VP,
            1.0 / N as f32,
        );
    });
    time("crossentropy fwd only [1024, 50304]", || {
        loss::crossentropy_forward_backward(&mut losses, None, &logits, &targets, N, V, VP, 1.0);
    });
    drop((logits, dlogits));

    let x = fill(N * C, 2);
    let (w, b) = (fill(C, 3), fill(C, 4));
    let (mut out, mut mean, mut rstd) = (vec![0.0; N * C], vec![0.0; N], vec![0.0; N]);
    time("layernorm fwd [1024, 256]", || {
        layernorm::layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, &b, N, C)
    });
    let (mut dx, mut dw, mut db) = (vec![0.0; N * C], vec![0.0; C], vec![0.0; C]);
    time("layernorm bwd [1024, 256]", || {
        layernorm::layernorm_backward(&mut dx, &mut dw, &mut db, &x, &x, &w, &mean, &rstd, N, C)
    });

    let qkv = fill(N * 3 * C, 5);
    let (mut out, mut pre, mut att) = (
        vec![0.0; N * C],
        vec![0.0; B * NH * T * T],
        vec![0.0; B * NH * T * T],
    );
    time("attention fwd B8 T128 C256 NH4", || {
        attention::attention_forward(&mut out, &mut pre, &mut att, &qkv, B, T, C, NH)
    });
    let (mut dqkv, mut datt) = (vec![0.0; qkv.len()], vec![0.0; att.len()]);
    time("attention bwd B8 T128 C256 NH4", || {
        attention::attention_backward(
            &mut dqkv, &mut pre, &mut datt, &out, &qkv, &att, B, T, C, NH,
        )
    });

    let h = fill(N * 4 * C, 6);
    let mut y = vec![0.0; h.len()];
    time("gelu fwd [1024, 1024]", || {
        activation::gelu_forward(&mut y, &h)
    });
    let mut dh = vec![0.0; h.len()];
    time("gelu bwd [1024, 1024]", || {
        activation::gelu_backward(&mut dh, &h, &y)
    });

    let (wfc, bfc) = (fill(4 * C * C, 7), fill(4 * C, 8));
    time("matmul fwd fc [1024,256]x[1024,256]^T + bias", || {
        matmul::matmul_forward(&mut y, &x, &wfc, Some(&bfc), N, C, 4 * C)
    });
    let (mut dwfc, mut dbfc) = (vec![0.0; 4 * C * C], vec![0.0; 4 * C]);
    time("matmul bwd fc (dinp, dW, dbias)", || {
        matmul::matmul_backward(
            &mut dx,
            &mut dwfc,
            Some(&mut dbfc),
            &dh,
            &x,
            &wfc,
            N,
            C,
            4 * C,
        )
    });

    let g = fill(PARAMS, 9);
    let (mut p, mut m, mut v) = (fill(PARAMS, 10), vec![0.0; PARAMS], vec![0.0; PARAMS]);
    time("adamw 20M params", || {
        optim::adamw_update(&mut p, &g, &mut m, &mut v, 1e-3, 0.9, 0.95, 1e-8, 0.1, 10)
    });
    time("global_norm 20M", || {
        std::hint::black_box(gradnorm::global_norm(&g));
    });
}
