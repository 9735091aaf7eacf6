//! Compares the two candidate GEMM crates (`matrixmultiply` with its `threading` feature, and
//! `gemm` with `Parallelism::Rayon`) at the shapes of the benchmark GPT (B=8, T=128 -> N=1024,
//! C=256, padded vocab 50304), in the layouts `matmul_forward`/`matmul_backward` use them.
//!
//! Run: `cargo run --release -p convoy-kernels --example gemm_crates`
//! (`MATMUL_NUM_THREADS` sets matrixmultiply's threads; gemm uses the rayon pool size).
//! Prints the median and best GFLOP/s over several interleaved repetitions, and a bit-level hash of one product per
//! crate computed with 1 and with all threads, to check thread-count independence.

use std::time::Instant;

/// One product `C[m,n] = A[m,k] · B[k,n]`; `ta`/`tb` say that A (resp. B) is stored transposed,
/// i.e. as `[k,m]` (resp. `[n,k]`) row-major.
struct Shape {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
}

const fn shape(name: &'static str, m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Shape {
    Shape {
        name,
        m,
        n,
        k,
        ta,
        tb,
    }
}

const SHAPES: &[Shape] = &[
    // forward: out [N,OC] = inp [N,C] · W[OC,C]ᵀ
    shape(
        "fwd lm_head  1024x256 · (50304x256)ᵀ",
        1024,
        50304,
        256,
        false,
        true,
    ),
    shape(
        "fwd qkv      1024x256 · (768x256)ᵀ",
        1024,
        768,
        256,
        false,
        true,
    ),
    shape(
        "fwd fc       1024x256 · (1024x256)ᵀ",
        1024,
        1024,
        256,
        false,
        true,
    ),
    shape(
        "fwd fcproj   1024x1024 · (256x1024)ᵀ",
        1024,
        256,
        1024,
        false,
        true,
    ),
    // backward dinp [N,C] += dout [N,OC] · W [OC,C]
    shape(
        "bwd dinp lm  1024x50304 · 50304x256",
        1024,
        256,
        50304,
        false,
        false,
    ),
    shape(
        "bwd dinp qkv 1024x768 · 768x256",
        1024,
        256,
        768,
        false,
        false,
    ),
    shape(
        "bwd dinp fcp 1024x256 · 256x1024",
        1024,
        1024,
        256,
        false,
        false,
    ),
    // backward dW [OC,C] += dout[N,OC]ᵀ · inp [N,C]
    shape(
        "bwd dW lm    (1024x50304)ᵀ · 1024x256",
        50304,
        256,
        1024,
        true,
        false,
    ),
    shape(
        "bwd dW qkv   (1024x768)ᵀ · 1024x256",
        768,
        256,
        1024,
        true,
        false,
    ),
    shape(
        "bwd dW fcp   (1024x256)ᵀ · 1024x1024",
        256,
        1024,
        1024,
        true,
        false,
    ),
    shape("square 512³", 512, 512, 512, false, false),
];

const REPS: usize = 11;

/// Row and column strides of a `rows x cols` operand stored row-major, or transposed.
fn strides(rows: usize, cols: usize, transposed: bool) -> (isize, isize) {
    if transposed {
        (1, rows as isize)
    } else {
        (cols as isize, 1)
    }
}

fn mm(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (rsa, csa) = strides(s.m, s.k, s.ta);
    let (rsb, csb) = strides(s.k, s.n, s.tb);
    // SAFETY: the buffers hold m*k, k*n and m*n elements and the strides stay inside them.
    unsafe {
        matrixmultiply::sgemm(
            s.m,
            s.k,
            s.n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            1.0,
            c.as_mut_ptr(),
            s.n as isize,
            1,
        );
    }
}

fn gm(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    let (rsa, csa) = strides(s.m, s.k, s.ta);
    let (rsb, csb) = strides(s.k, s.n, s.tb);
    // SAFETY: as in `mm`; gemm computes dst = alpha·dst + beta·lhs·rhs.
    unsafe {
        gemm::gemm(
            s.m,
            s.n,
            s.k,
            c.as_mut_ptr(),
            1,
            s.n as isize,
            true,
            a.as_ptr(),
            csa,
            rsa,
            b.as_ptr(),
            csb,
            rsb,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(threads),
        );
    }
}

/// Median and best GFLOP/s of `f` and `g` over `REPS` runs each. The two are interleaved so that
/// load from other processes on the machine affects both candidates alike.
fn interleaved_gflops(s: &Shape, mut f: impl FnMut(), mut g: impl FnMut()) -> [(f64, f64); 2] {
    // warm-up: page faults, packing buffers, thread pools
    f();
    g();
    let mut secs = [Vec::new(), Vec::new()];
    for _ in 0..REPS {
        for (i, run) in [&mut f as &mut dyn FnMut(), &mut g].into_iter().enumerate() {
            let t0 = Instant::now();
            run();
            secs[i].push(t0.elapsed().as_secs_f64());
        }
    }
    let flop = 2.0 * (s.m * s.n * s.k) as f64 / 1e9;
    secs.map(|mut v| {
        v.sort_by(f64::total_cmp);
        (flop / v[REPS / 2], flop / v[0])
    })
}

/// Deterministic pseudo-random fill (no RNG dependency needed for a benchmark).
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

fn bit_hash(c: &[f32]) -> u64 {
    c.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, x| {
        (h ^ u64::from(x.to_bits())).wrapping_mul(0x100_0000_01b3)
    })
}

fn main() {
    let threads = rayon::current_num_threads();
    println!(
        "rayon threads {threads}, MATMUL_NUM_THREADS={:?}",
        std::env::var("MATMUL_NUM_THREADS").ok()
    );
    println!(
        "| shape (m x k · k x n) | matrixmultiply median | gemm median | matrixmultiply best | gemm best |"
    );
    println!("|---|---:|---:|---:|---:|");
    let (mut t_mm, mut t_gm) = (0.0, 0.0);
    for s in SHAPES {
        let a = fill(s.m * s.k, 1);
        let b = fill(s.k * s.n, 2);
        let mut c1 = vec![0.0f32; s.m * s.n];
        let mut c2 = c1.clone();
        let [(med_mm, best_mm), (med_gm, best_gm)] = interleaved_gflops(
            s,
            || mm(s, &a, &b, &mut c1),
            || gm(s, &a, &b, &mut c2, threads),
        );
        let flop = 2.0 * (s.m * s.n * s.k) as f64 / 1e9;
        t_mm += flop / med_mm;
        t_gm += flop / med_gm;
        println!(
            "| {} | {med_mm:.1} | {med_gm:.1} | {best_mm:.1} | {best_gm:.1} |",
            s.name
        );
    }
    println!("| seconds for one pass over all shapes (medians) | {t_mm:.3} | {t_gm:.3} | | |");

    // Thread-count independence: same product with 1 thread and with all threads.
    let s = &SHAPES[7];
    let a = fill(s.m * s.k, 3);
    let b = fill(s.k * s.n, 4);
    let mut c = vec![0.0f32; s.m * s.n];
    mm(s, &a, &b, &mut c);
    println!("matrixmultiply hash of {}: {:016x}", s.name, bit_hash(&c));
    for t in [1, 2, 3] {
        c.fill(0.0);
        gm(s, &a, &b, &mut c, t);
        println!("gemm Rayon({t}) hash of {}: {:016x}", s.name, bit_hash(&c));
    }
}
