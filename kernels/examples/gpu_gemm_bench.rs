//! TFLOP/s of matmul.cu's GEMMs at GPT-2 124M's shapes (B·T = M = 4096 rows, C = 768, padded
//! vocabulary 50304), fp32 (CUDA cores) and bf16 (tensor cores, fp32 accumulate), beside
//! cuBLASLt through cudarc on the same shapes (the `--cublaslt` columns need libcublasLt on
//! LD_LIBRARY_PATH).
//!
//!     cargo run --release -p convoy-kernels --example gpu_gemm_bench [-- --cublaslt]
//!
//! Each row times one layer's three products, as the training step runs them: forward
//! out [M, OC] = inp [M, C]·weightᵀ, dinp [M, C] += dout·weight and dweight [OC, C] +=
//! doutᵀ·inp, 2·M·C·OC flops each; medians of 9 timed launches (CUDA events) after 2 warm-up
//! launches. cuBLASLt runs the same products with the same arithmetic (`ops::CublasLt`: bf16 or
//! fp32 operands, fp32 accumulation without TF32, fp32 output), the switch a spec takes as
//! `[kernels] gemm = "cublaslt"`. Prints "no GPU" and exits 0 on a machine without one.

use cudarc::driver::CudaSlice;
use cudarc::driver::sys::CUevent_flags;

use convoy_kernels::cuda::Device;
use convoy_kernels::cuda::ops::{self, CublasLt, Gemm, Operand};

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

/// Median milliseconds of `run` (launches on the device's stream).
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

/// Median milliseconds of each product `shapes[i]` into `outs[i]` from `operands[i]`, in
/// convoy's generic GEMM or in cuBLASLt.
fn products<T: Operand>(
    dev: &Device,
    shapes: &[&Gemm],
    outs: &mut [&mut CudaSlice<f32>],
    operands: &[(&CudaSlice<T>, &CudaSlice<T>)],
    lt: Option<&CublasLt>,
) -> Vec<f32> {
    shapes
        .iter()
        .zip(outs.iter_mut())
        .zip(operands)
        .map(|((g, c), (a, b))| {
            time_ms(dev, || {
                let (mut c, a, b) = (c.as_view_mut(), a.as_view(), b.as_view());
                match lt {
                    Some(lt) => lt.gemm::<T, f32>(dev, g, &mut c, &a, &b, None),
                    None => ops::gemm::<T, f32>(dev, g, &mut c, &a, &b, None),
                }
                .expect("launch");
            })
        })
        .collect()
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
    let lt = std::env::args()
        .any(|a| a == "--cublaslt")
        .then(|| CublasLt::new(&dev).expect("cuBLASLt"));
    let s = dev.stream.clone();
    println!("GPU sm_{}{}", dev.arch.major, dev.arch.minor);
    let mut header = format!(
        "{:<30} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}",
        "layer [M x C] -> [M x OC]",
        "f32 fwd",
        "f32 dinp",
        "f32 dW",
        "bf16 fwd",
        "bf16 din",
        "bf16 dW"
    );
    if lt.is_some() {
        header += &format!(
            "   {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}",
            "lt f32 f", "lt f32 i", "lt f32 w", "lt bf16f", "lt bf16i", "lt bf16w"
        );
    }
    println!("{header}");
    let m = 4096usize;
    let layers = [
        ("qkv", 768, 2304),
        ("attproj", 768, 768),
        ("fc", 768, 3072),
        ("fcproj", 3072, 768),
        ("lm_head", 768, 50304),
    ];
    let rounded = |x: &CudaSlice<f32>| -> CudaSlice<u16> {
        let mut y = s.alloc_zeros::<u16>(x.len()).expect("alloc");
        ops::to_bf16(&dev, &mut y.as_view_mut(), &x.as_view(), x.len()).expect("convert");
        y
    };
    for (name, c, oc) in layers {
        let inp = s.clone_htod(&fill(m * c, 1)).expect("upload");
        let weight = s.clone_htod(&fill(oc * c, 2)).expect("upload");
        let dout = s.clone_htod(&fill(m * oc, 3)).expect("upload");
        let mut out = s.alloc_zeros::<f32>(m * oc).expect("alloc");
        let mut dinp = s.alloc_zeros::<f32>(m * c).expect("alloc");
        let mut dweight = s.alloc_zeros::<f32>(oc * c).expect("alloc");
        let tflops = |ms: f32| 2.0 * (m * c * oc) as f64 / (f64::from(ms) * 1e-3) / 1e12;
        // The three products of a linear layer, as gemm shapes.
        let fwd_g = Gemm::dense(false, true, m, oc, c);
        let dinp_g = Gemm {
            accumulate: true,
            ..Gemm::dense(false, false, m, c, oc)
        };
        let dw_g = Gemm {
            accumulate: true,
            ..Gemm::dense(true, false, oc, c, m)
        };

        // The fp32 forward through the linear layer's own kernel, then every product through
        // the generic kernels (and cuBLASLt) with fp32 and bf16 operands.
        let mut row = vec![time_ms(&dev, || {
            let (i, w) = (inp.as_view(), weight.as_view());
            ops::matmul_forward(&dev, &mut out.as_view_mut(), &i, &w, None, m, c, oc)
                .expect("launch");
        })];
        let (inp_h, weight_h, dout_h) = (rounded(&inp), rounded(&weight), rounded(&dout));
        let mut outs = [&mut out, &mut dinp, &mut dweight];
        let shapes = [&fwd_g, &dinp_g, &dw_g];
        let f32_ops = [(&inp, &weight), (&dout, &weight), (&dout, &inp)];
        let bf16_ops = [(&inp_h, &weight_h), (&dout_h, &weight_h), (&dout_h, &inp_h)];
        row.extend(products(
            &dev,
            &shapes[1..],
            &mut outs[1..],
            &f32_ops[1..],
            None,
        ));
        row.extend(products(&dev, &shapes, &mut outs, &bf16_ops, None));
        if let Some(lt) = &lt {
            row.extend(products(&dev, &shapes, &mut outs, &f32_ops, Some(lt)));
            row.extend(products(&dev, &shapes, &mut outs, &bf16_ops, Some(lt)));
        }
        s.synchronize().expect("sync");
        let cells: Vec<String> = row
            .iter()
            .map(|&ms| format!("{:>8.1}", tflops(ms)))
            .collect();
        let groups: Vec<String> = cells.chunks(3).map(|g| g.join(" ")).collect();
        println!(
            "{:<30} {}",
            format!("{name} [{m}x{c}]->[{m}x{oc}]"),
            groups.join("   ")
        );
    }
    println!(
        "(TFLOP/s; f32 on CUDA cores, bf16 on tensor cores with fp32 accumulate; lt = cuBLASLt)"
    );
}
