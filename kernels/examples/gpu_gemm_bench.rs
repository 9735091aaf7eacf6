//! TFLOP/s of matmul.cu's GEMMs at GPT-2 124M's shapes (B·T = M = 4096 rows, C = 768, padded
//! vocabulary 50304), fp32 (CUDA cores) and bf16 (tensor cores, fp32 accumulate).
//!
//!     cargo run --release -p convoy-kernels --example gpu_gemm_bench
//!
//! Each row times one layer's three products, as the training step runs them: forward
//! out [M, OC] = inp [M, C]·weightᵀ ("nt"), dinp [M, C] += dout·weight ("nn") and
//! dweight [OC, C] += doutᵀ·inp ("tn"), 2·M·C·OC flops each; medians of 9 timed launches (CUDA
//! events) after 2 warm-up launches. Prints "no GPU" and exits 0 on a machine without one.

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use convoy_kernels::cuda::Device;

const TILE: u32 = 128;

/// Grid and block of every GEMM kernel of matmul.cu: one 128×128 tile of C per 256 threads.
fn gemm_cfg(m: usize, n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(TILE), (m as u32).div_ceil(TILE), 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// Deterministic data in [-0.5, 0.5).
fn fill(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 * 1e-3 - 0.5)
        .collect()
}

/// Median milliseconds of `run` (one launch on the device's stream).
fn time_ms(dev: &Device, mut run: impl FnMut()) -> f32 {
    let s = &dev.stream;
    for _ in 0..2 {
        run();
    }
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let times = (0..9)
        .map(|_| {
            let start = s.record_event(flags).expect("event");
            run();
            let end = s.record_event(flags).expect("event");
            start.elapsed_ms(&end).expect("elapsed")
        })
        .collect();
    median(times)
}

/// A generic gemm_bf16_* / gemm_f32_* launch without batch, bias or alpha.
#[allow(clippy::too_many_arguments)] // the kernel's contract: every buffer with its shape
fn generic<TC, TAB>(
    dev: &Device,
    kernel: &str,
    c: &mut CudaSlice<TC>,
    a: &CudaSlice<TAB>,
    b: &CudaSlice<TAB>,
    [m, n, k, lda, ldb, ldc]: [usize; 6],
    accumulate: bool,
) {
    let f = dev.function("matmul", kernel).expect("kernel");
    let dims = [m, n, k, lda, ldb, ldc].map(|x| x as i32);
    let (zero, null, one, alpha) = (0i64, 0u64, 1i32, 1.0f32);
    let acc = i32::from(accumulate);
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(c).arg(a).arg(b).arg(&null);
    for d in &dims {
        launch.arg(d);
    }
    for _ in 0..6 {
        launch.arg(&zero);
    }
    launch.arg(&one).arg(&alpha).arg(&acc);
    // SAFETY: gemm_*(C, A, B, bias = null, M, N, K, lda, ldb, ldc, six zero batch strides,
    // batch_inner = 1, alpha, accumulate) with buffers sized by the caller for these shapes
    // (C [m, ldc], A and B holding op(A) [m, k] and op(B) [k, n] at their leading dimensions);
    // grid (⌈N/128⌉, ⌈M/128⌉, 1) of 256 threads as the kernels require.
    unsafe { launch.launch(gemm_cfg(m, n)) }.expect("launch");
}

fn main() {
    let dev = match Device::open(0) {
        Ok(Some(d)) => d,
        Ok(None) => {
            println!("no GPU");
            return;
        }
        Err(e) => panic!("the GPU is present but unusable: {e}"),
    };
    let s = dev.stream.clone();
    println!("GPU sm_{}{}", dev.arch.major, dev.arch.minor);
    println!(
        "{:<26} {:>9} {:>9} {:>9}   {:>9} {:>9} {:>9} {:>11}",
        "layer [M x C] -> [M x OC]",
        "f32 fwd",
        "f32 dinp",
        "f32 dW",
        "bf16 fwd",
        "bf16 dinp",
        "bf16 dW",
        "bf16 fwd/bf16"
    );
    let m = 4096usize;
    let layers = [
        ("qkv", 768, 2304),
        ("attproj", 768, 768),
        ("fc", 768, 3072),
        ("fcproj", 3072, 768),
        ("lm_head", 768, 50304),
    ];
    let to_bf16 = dev.function("matmul", "f32_to_bf16").expect("kernel");
    let bf16 = |x: &CudaSlice<f32>| -> CudaSlice<u16> {
        let n = x.len();
        let mut y = s.alloc_zeros::<u16>(n).expect("alloc");
        let n_arg = n as i64;
        let mut launch = s.launch_builder(&to_bf16);
        launch.arg(&mut y).arg(x).arg(&n_arg);
        // SAFETY: f32_to_bf16(out [n] bf16, inp [n] f32, n): n u16 and n floats, one thread
        // per element, bounds-checked.
        unsafe { launch.launch(LaunchConfig::for_num_elems(n as u32)) }.expect("launch");
        y
    };
    for (name, c, oc) in layers {
        let inp = s.clone_htod(&fill(m * c, 1)).expect("upload");
        let weight = s.clone_htod(&fill(oc * c, 2)).expect("upload");
        let dout = s.clone_htod(&fill(m * oc, 3)).expect("upload");
        let mut out = s.alloc_zeros::<f32>(m * oc).expect("alloc");
        let mut dinp = s.alloc_zeros::<f32>(m * c).expect("alloc");
        let mut dweight = s.alloc_zeros::<f32>(oc * c).expect("alloc");
        let (n_arg, c_arg, oc_arg) = (m as i32, c as i32, oc as i32);
        let tflops = |ms: f32| 2.0 * (m * c * oc) as f64 / (f64::from(ms) * 1e-3) / 1e12;
        let null = 0u64;

        let f = dev.function("matmul", "matmul_forward").expect("kernel");
        let fwd = time_ms(&dev, || {
            let mut launch = s.launch_builder(&f);
            launch.arg(&mut out).arg(&inp).arg(&weight).arg(&null);
            launch.arg(&n_arg).arg(&c_arg).arg(&oc_arg);
            // SAFETY: matmul_forward(out [M, OC], inp [M, C], weight [OC, C], bias null, M, C,
            // OC) with buffers of m·oc, m·c, oc·c floats; grid (⌈OC/128⌉, ⌈M/128⌉) of 256.
            unsafe { launch.launch(gemm_cfg(m, oc)) }.expect("launch");
        });
        let f = dev
            .function("matmul", "matmul_backward_dinp")
            .expect("kernel");
        let bwd_in = time_ms(&dev, || {
            let mut launch = s.launch_builder(&f);
            launch.arg(&mut dinp).arg(&dout).arg(&weight);
            launch.arg(&n_arg).arg(&c_arg).arg(&oc_arg);
            // SAFETY: matmul_backward_dinp(dinp [M, C], dout [M, OC], weight [OC, C], M, C, OC)
            // with buffers of m·c, m·oc, oc·c floats; grid (⌈C/128⌉, ⌈M/128⌉) of 256.
            unsafe { launch.launch(gemm_cfg(m, c)) }.expect("launch");
        });
        let f = dev
            .function("matmul", "matmul_backward_dweight")
            .expect("kernel");
        let bwd_w = time_ms(&dev, || {
            let mut launch = s.launch_builder(&f);
            launch.arg(&mut dweight).arg(&dout).arg(&inp);
            launch.arg(&n_arg).arg(&c_arg).arg(&oc_arg);
            // SAFETY: matmul_backward_dweight(dweight [OC, C], dout [M, OC], inp [M, C], M, C,
            // OC) with buffers of oc·c, m·oc, m·c floats; grid (⌈C/128⌉, ⌈OC/128⌉) of 256.
            unsafe { launch.launch(gemm_cfg(oc, c)) }.expect("launch");
        });

        let (inp_h, weight_h, dout_h) = (bf16(&inp), bf16(&weight), bf16(&dout));
        let mut out_h = s.alloc_zeros::<u16>(m * oc).expect("alloc");
        let h_fwd = time_ms(&dev, || {
            let shape = [m, oc, c, c, c, oc];
            generic(
                &dev,
                "gemm_bf16_nt",
                &mut out,
                &inp_h,
                &weight_h,
                shape,
                false,
            );
        });
        let h_in = time_ms(&dev, || {
            let shape = [m, c, oc, oc, c, c];
            generic(
                &dev,
                "gemm_bf16_nn",
                &mut dinp,
                &dout_h,
                &weight_h,
                shape,
                true,
            );
        });
        let h_w = time_ms(&dev, || {
            let shape = [oc, c, m, oc, c, c];
            generic(
                &dev,
                "gemm_bf16_tn",
                &mut dweight,
                &dout_h,
                &inp_h,
                shape,
                true,
            );
        });
        let h_fwd16 = time_ms(&dev, || {
            let shape = [m, oc, c, c, c, oc];
            generic(
                &dev,
                "gemm_bf16_nt_bf16out",
                &mut out_h,
                &inp_h,
                &weight_h,
                shape,
                false,
            );
        });
        s.synchronize().expect("sync");
        println!(
            "{:<26} {:>9.1} {:>9.1} {:>9.1}   {:>9.1} {:>9.1} {:>9.1} {:>11.1}",
            format!("{name} [{m}x{c}]->[{m}x{oc}]"),
            tflops(fwd),
            tflops(bwd_in),
            tflops(bwd_w),
            tflops(h_fwd),
            tflops(h_in),
            tflops(h_w),
            tflops(h_fwd16)
        );
    }
    println!("(TFLOP/s; fp32 columns on CUDA cores, bf16 columns on tensor cores)");
}
