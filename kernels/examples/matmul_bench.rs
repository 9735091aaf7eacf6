//! GFLOP/s of convoy's matmul kernels at the CPU benchmark GPT's shapes (N = B·T = 1024 rows,
//! C = 256, padded vocabulary 50304), for comparison with `bench/gemm_torch.py`.
//!
//!     cargo run --release -p convoy-kernels --example matmul_bench [-- THREADS]
//!
//! Forward rows time `matmul_forward` (out = inp·Wᵀ, 2·N·C·OC flops); backward rows time the
//! whole `matmul_backward` (dinp = dout·W and dW = doutᵀ·inp, 4·N·C·OC flops). Medians of 7
//! repetitions.

use std::time::Instant;

use convoy_kernels::matmul::{matmul_backward, matmul_forward};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let threads = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    println!("threads = {threads}");
    println!("{:<44} {:>10}", "product", "GFLOP/s");
    let shapes = [
        ("lm_head", 1024, 256, 50304),
        ("qkv", 1024, 256, 768),
        ("fc", 1024, 256, 1024),
        ("fcproj", 1024, 1024, 256),
        ("attproj", 1024, 256, 256),
    ];
    let square = 512;
    let fill = |n: usize| {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect::<Vec<f32>>()
    };
    // 512³ as a plain product: out [512,512] = inp [512,512] · Wᵀ.
    let mut rows = vec![(
        "square 512x512x512 fwd".to_string(),
        square,
        square,
        square,
        false,
    )];
    for (name, n, c, oc) in shapes {
        rows.push((
            format!("{name} fwd  [{n}x{c}]·[{oc}x{c}]ᵀ"),
            n,
            c,
            oc,
            false,
        ));
        rows.push((format!("{name} bwd  dinp+dW"), n, c, oc, true));
    }
    for (label, n, c, oc, backward) in rows {
        let (inp, w, dout) = (fill(n * c), fill(oc * c), fill(n * oc));
        let (mut out, mut dinp, mut dw) = (
            vec![0.0f32; n * oc],
            vec![0.0f32; n * c],
            vec![0.0f32; oc * c],
        );
        let mut run = || {
            if backward {
                matmul_backward(&mut dinp, &mut dw, None, &dout, &inp, &w, n, c, oc)
            } else {
                matmul_forward(&mut out, &inp, &w, None, n, c, oc)
            }
        };
        run();
        let times: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                run();
                t.elapsed().as_secs_f64()
            })
            .collect();
        let flops = if backward { 4.0 } else { 2.0 } * (n * c * oc) as f64;
        println!("{label:<44} {:>10.1}", flops / median(times) / 1e9);
    }
}
