//! cuBLASLt (`ops::CublasLt`, a spec's `[kernels] gemm = "cublaslt"`) against convoy's own GEMM
//! kernels on the linear layer's three products (and the forward without its bias): fp32
//! operands, bf16 operands with an fp32 output, and bf16 operands with a bf16 output, with a
//! bias and with accumulation.
//!
//! Tolerance: both accumulate in fp32 (cuBLASLt without TF32) over the same products, in
//! different orders, so fp32 outputs agree to the fp32 GEMM tolerance of gpu_matmul.rs: rtol
//! 1e-5·sqrt(K) against |x| + sqrt(K/3). A bf16 output is each side's fp32 value (bias and
//! accumulated bf16 C added in fp32) rounded once; two values that close may round to
//! neighbouring bf16s, one ulp apart, and a bf16 ulp is at most 2^-7 of the value (8
//! significant bits), so rtol 1e-2 on top of the fp32 tolerance. A wrong transpose, layout or
//! missing bias is off by whole terms.

mod gpu_common;

use convoy_kernels::cuda::Device;
use convoy_kernels::cuda::ops::{self, CublasLt, Gemm, Operand};
use cudarc::driver::{CudaSlice, CudaView};
use gpu_common::{Storage, assert_close, data, device_or_skip, stored, widen};

/// `g` on operands `a`, `b` into a C of type `O` starting as `c0` (rounded to O), by convoy's
/// kernels and by cuBLASLt: (convoy's C, cuBLASLt's C), widened to f32.
fn both<T: Operand, O: Storage>(
    dev: &Device,
    lt: &CublasLt,
    g: &Gemm,
    (a, b): (&CudaSlice<T>, &CudaSlice<T>),
    c0: &[f32],
    bias: Option<&CudaView<'_, f32>>,
) -> (Vec<f32>, Vec<f32>) {
    let s = &dev.stream;
    let c0 = stored::<O>(c0);
    let mut ours = s.clone_htod(&c0).expect("upload");
    let mut theirs = s.clone_htod(&c0).expect("upload");
    let (a, b) = (a.as_view(), b.as_view());
    ops::gemm::<T, O>(dev, g, &mut ours.as_view_mut(), &a, &b, bias).expect("convoy");
    lt.gemm::<T, O>(dev, g, &mut theirs.as_view_mut(), &a, &b, bias)
        .expect("cuBLASLt");
    (
        widen(&s.clone_dtoh(&ours).expect("download")),
        widen(&s.clone_dtoh(&theirs).expect("download")),
    )
}

#[test]
fn cublaslt_matches_convoys_gemms() {
    let Some(dev) = device_or_skip("cublaslt_matches_convoys_gemms") else {
        return;
    };
    if gpu_common::emulated(&dev) {
        eprintln!(
            "cublaslt_matches_convoys_gemms: skipped (cuBLASLt is NVIDIA's closed library; the \
             PTX interpreter cannot run it, this test needs a GPU)"
        );
        return;
    }
    let lt = CublasLt::new(&dev).expect("cuBLASLt");
    let s = &dev.stream;
    // N rows, C inputs, OC outputs: ragged against every tile size.
    let (n, c, oc) = (300, 200, 136);
    let fwd = Gemm::dense(false, true, n, oc, c);
    let dinp = Gemm {
        accumulate: true,
        ..Gemm::dense(false, false, n, c, oc)
    };
    let dw = Gemm {
        accumulate: true,
        ..Gemm::dense(true, false, oc, c, n)
    };
    let (inp, w, dout, bias) = (
        data(n * c, 1),
        data(oc * c, 2),
        data(n * oc, 3),
        data(oc, 4),
    );
    let up = |x: &[f32]| s.clone_htod(x).expect("upload");
    let (inp_d, w_d, dout_d, bias_d) = (up(&inp), up(&w), up(&dout), up(&bias));
    let round = |x: &cudarc::driver::CudaSlice<f32>| {
        let mut y = s.alloc_zeros::<u16>(x.len()).expect("alloc");
        ops::to_bf16(&dev, &mut y.as_view_mut(), &x.as_view(), x.len()).expect("convert");
        y
    };
    let (inp_h, w_h, dout_h) = (round(&inp_d), round(&w_d), round(&dout_d));
    // (product, A, B, C's initial values, with bias)
    let cases = [
        (
            "forward",
            fwd,
            (&inp_d, &inp_h),
            (&w_d, &w_h),
            vec![0.0; n * oc],
            true,
        ),
        (
            "forward without bias",
            fwd,
            (&inp_d, &inp_h),
            (&w_d, &w_h),
            vec![0.0; n * oc],
            false,
        ),
        (
            "dinp",
            dinp,
            (&dout_d, &dout_h),
            (&w_d, &w_h),
            data(n * c, 5),
            false,
        ),
        (
            "dweight",
            dw,
            (&dout_d, &dout_h),
            (&inp_d, &inp_h),
            data(oc * c, 6),
            false,
        ),
    ];
    for (name, g, a, b, c0, with_bias) in cases {
        let k = g.k.max(1) as f32;
        let (rtol, atol) = (1e-5 * k.sqrt(), 1e-5 * k.sqrt() * (k / 3.0).sqrt());
        let bias = with_bias.then(|| bias_d.as_view());
        let bias = bias.as_ref();
        let (f32_ops, bf16_ops) = ((a.0, b.0), (a.1, b.1));
        let runs = [
            (
                "fp32",
                both::<f32, f32>(&dev, &lt, &g, f32_ops, &c0, bias),
                0.0,
            ),
            (
                "bf16",
                both::<u16, f32>(&dev, &lt, &g, bf16_ops, &c0, bias),
                0.0,
            ),
            (
                "bf16, bf16 out",
                both::<u16, u16>(&dev, &lt, &g, bf16_ops, &c0, bias),
                1e-2,
            ),
        ];
        for (kind, (ours, theirs), rounding) in runs {
            let what = format!("{name} ({kind})");
            assert_close(&what, &theirs, &ours, rtol + rounding, atol);
        }
    }
}
