//! cuBLASLt (`ops::CublasLt`, the `CONVOY_GEMM=cublaslt` switch) against convoy's own GEMM
//! kernels on the linear layer's three products, fp32 and bf16 operands, with a bias and with
//! accumulation.
//!
//! Tolerance: both accumulate in fp32 (cuBLASLt without TF32) over the same products, in
//! different orders, so they agree to the fp32 GEMM tolerance of gpu_matmul.rs: rtol
//! 1e-5·sqrt(K) against |x| + sqrt(K/3). A wrong transpose, layout or missing bias is off by
//! whole terms.

mod gpu_common;

use convoy_kernels::cuda::ops::{self, CublasLt, Gemm};
use gpu_common::{assert_close, data, device_or_skip};

#[test]
fn cublaslt_matches_convoys_gemms() {
    let Some(dev) = device_or_skip("cublaslt_matches_convoys_gemms") else {
        return;
    };
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
        for bf16 in [false, true] {
            let mut ours = up(&c0);
            let mut theirs = up(&c0);
            if bf16 {
                let (a, b) = (a.1.as_view(), b.1.as_view());
                ops::gemm::<u16>(&dev, &g, &mut ours.as_view_mut(), &a, &b, bias.as_ref())
                    .expect("convoy");
                lt.gemm(&dev, &g, &mut theirs.as_view_mut(), &a, &b, bias.as_ref())
                    .expect("cuBLASLt");
            } else {
                let (a, b) = (a.0.as_view(), b.0.as_view());
                ops::gemm::<f32>(&dev, &g, &mut ours.as_view_mut(), &a, &b, bias.as_ref())
                    .expect("convoy");
                lt.gemm(&dev, &g, &mut theirs.as_view_mut(), &a, &b, bias.as_ref())
                    .expect("cuBLASLt");
            }
            let ours = s.clone_dtoh(&ours).expect("download");
            let theirs = s.clone_dtoh(&theirs).expect("download");
            let what = format!("{name} ({})", if bf16 { "bf16" } else { "fp32" });
            assert_close(&what, &theirs, &ours, rtol, atol);
        }
    }
}
