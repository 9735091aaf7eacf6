//! matmul.cu against the CPU reference.
//!
//! Tolerances. The fp32 kernels sum each output over K in a different order than the CPU GEMM
//! (one fma chain per output against the gemm crate's blocked kernels), so results differ by
//! rounding: about eps·sqrt(K)·S for sums of typical magnitude S = sqrt(K/3) (products of data
//! uniform in [-1, 1)). The tests allow |gpu − cpu| ≤ rtol·(|cpu| + S) with rtol = 1e-5·sqrt(K):
//! two orders of magnitude above that rounding, and orders below what a wrong or missing term
//! (≥ ~0.1) or a wrong element (~S) costs. The bf16 kernels are compared with the f64 product of
//! the bf16-rounded inputs: their products are exact in fp32 and only the accumulation order
//! differs, so fp32 outputs meet the fp32 tolerance; bf16 outputs add one rounding (at most 2^-8
//! relative), checked with rtol 1e-2 and atol 1e-2·S for sums that cancel. The generic GEMMs
//! are launched through `ops::gemm`, the launcher the engine uses.

mod gpu_common;

use convoy_kernels::cuda::ops::{self, Gemm};
use convoy_kernels::matmul::{matmul_backward, matmul_forward};
use cudarc::driver::PushKernelArg;
use gpu_common::{assert_close, bf16_bits, bf16_value, data, device_or_skip, grid_1d};

/// Launch configurations and arguments of matmul.cu (the table at the top of the file).
mod launch {
    use cudarc::driver::LaunchConfig;

    /// The side of the square tile of C one block computes, in every GEMM kernel.
    pub const TILE: u32 = 128;

    /// Every GEMM kernel (fp32 and bf16): 256 threads per block, one 128×128 tile of the
    /// `[m, n]` output per block, the batch in grid.z; static shared memory only.
    pub fn gemm(m: usize, n: usize, batch: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (
                (n as u32).div_ceil(TILE),
                (m as u32).div_ceil(TILE),
                batch as u32,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// matmul_backward_dbias: 32 columns × 32 row slices per block.
    pub fn dbias(oc: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: ((oc as u32).div_ceil(32), 1, 1),
            block_dim: (32, 32, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// `c = alpha·op(a)·op(b) + bias + (c if accumulate)` in f64, batch by batch.
fn reference(g: &Gemm, a: &[f32], b: &[f32], bias: Option<&[f32]>, c: &mut [f32]) {
    for zo in 0..g.outer {
        for zi in 0..g.inner {
            let (oa, ob, oc) = (
                zo * g.sa.0 + zi * g.sa.1,
                zo * g.sb.0 + zi * g.sb.1,
                zo * g.sc.0 + zi * g.sc.1,
            );
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut s = 0.0f64;
                    for p in 0..g.k {
                        let av = a[oa + if g.ta { p * g.lda + i } else { i * g.lda + p }];
                        let bv = b[ob + if g.tb { j * g.ldb + p } else { p * g.ldb + j }];
                        s += f64::from(av) * f64::from(bv);
                    }
                    let out = &mut c[oc + i * g.ldc + j];
                    let mut v = f64::from(g.alpha) * s;
                    if let Some(bias) = bias {
                        v += f64::from(bias[j]);
                    }
                    if g.accumulate {
                        v += f64::from(*out);
                    }
                    *out = v as f32;
                }
            }
        }
    }
}

/// rtol and atol for sums of `k` products of data in [-1, 1) (see the module comment).
fn fp32_tolerance(k: usize) -> (f32, f32) {
    let k = k.max(1) as f32;
    let rtol = 1e-5 * k.sqrt();
    (rtol, rtol * (k / 3.0).sqrt())
}

/// Sizes around the 128×128 tile: tiny, ragged, exact multiples, and one GPT-2-like layer.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (3, 5, 7),
    (130, 70, 200),
    (128, 256, 384),
    (257, 33, 129),
    (256, 768, 2304),
];

#[test]
fn matmul_forward_matches_the_cpu() {
    let Some(dev) = device_or_skip("matmul_forward") else {
        return;
    };
    let s = &dev.stream;
    let f = dev.function("matmul", "matmul_forward").expect("kernel");
    let null = 0u64;
    for &(n, c, oc) in SHAPES {
        let (inp, weight, bias) = (data(n * c, 1), data(oc * c, 2), data(oc, 3));
        let inp_d = s.clone_htod(&inp).expect("upload");
        let weight_d = s.clone_htod(&weight).expect("upload");
        let bias_d = s.clone_htod(&bias).expect("upload");
        for with_bias in [false, true] {
            let mut out_d = s.clone_htod(&vec![f32::NAN; n * oc]).expect("upload");
            let (n_arg, c_arg, oc_arg) = (n as i32, c as i32, oc as i32);
            let mut launch = s.launch_builder(&f);
            launch.arg(&mut out_d).arg(&inp_d).arg(&weight_d);
            if with_bias {
                launch.arg(&bias_d);
            } else {
                launch.arg(&null);
            }
            launch.arg(&n_arg).arg(&c_arg).arg(&oc_arg);
            // SAFETY: matmul_forward(out [N, OC], inp [N, C], weight [OC, C], bias [OC] or null,
            // N, C, OC): buffers of n·oc, n·c, oc·c and oc floats (or a null pointer as u64)
            // and three i32, matching the kernel's parameters; grid (⌈OC/128⌉, ⌈N/128⌉, 1) of
            // 256 threads as the kernel requires, every access bounds-checked against N, C, OC.
            unsafe { launch.launch(launch::gemm(n, oc, 1)) }.expect("launch");
            let out = s.clone_dtoh(&out_d).expect("download");
            let mut cpu = vec![0.0f32; n * oc];
            matmul_forward(
                &mut cpu,
                &inp,
                &weight,
                with_bias.then_some(&bias[..]),
                n,
                c,
                oc,
            );
            let (rtol, atol) = fp32_tolerance(c);
            let what = format!("matmul_forward N={n} C={c} OC={oc} bias={with_bias}");
            assert_close(&what, &out, &cpu, rtol, atol);
        }
    }
}

#[test]
fn matmul_backward_matches_the_cpu() {
    let Some(dev) = device_or_skip("matmul_backward") else {
        return;
    };
    let s = &dev.stream;
    let f_dinp = dev
        .function("matmul", "matmul_backward_dinp")
        .expect("kernel");
    let f_dweight = dev
        .function("matmul", "matmul_backward_dweight")
        .expect("kernel");
    let f_dbias = dev
        .function("matmul", "matmul_backward_dbias")
        .expect("kernel");
    for &(n, c, oc) in SHAPES {
        let (inp, weight, dout) = (data(n * c, 4), data(oc * c, 5), data(n * oc, 6));
        // Non-zero starting gradients: the kernels accumulate.
        let (mut dinp, mut dweight, mut dbias) = (data(n * c, 7), data(oc * c, 8), data(oc, 9));
        let inp_d = s.clone_htod(&inp).expect("upload");
        let weight_d = s.clone_htod(&weight).expect("upload");
        let dout_d = s.clone_htod(&dout).expect("upload");
        let mut dinp_d = s.clone_htod(&dinp).expect("upload");
        let mut dweight_d = s.clone_htod(&dweight).expect("upload");
        let mut dbias_d = s.clone_htod(&dbias).expect("upload");
        let (n_arg, c_arg, oc_arg) = (n as i32, c as i32, oc as i32);

        let mut launch = s.launch_builder(&f_dinp);
        launch.arg(&mut dinp_d).arg(&dout_d).arg(&weight_d);
        launch.arg(&n_arg).arg(&c_arg).arg(&oc_arg);
        // SAFETY: matmul_backward_dinp(dinp [N, C], dout [N, OC], weight [OC, C], N, C, OC):
        // buffers of n·c, n·oc, oc·c floats and three i32; grid (⌈C/128⌉, ⌈N/128⌉, 1) of 256
        // threads, accesses bounds-checked.
        unsafe { launch.launch(launch::gemm(n, c, 1)) }.expect("launch");

        let mut launch = s.launch_builder(&f_dweight);
        launch.arg(&mut dweight_d).arg(&dout_d).arg(&inp_d);
        launch.arg(&n_arg).arg(&c_arg).arg(&oc_arg);
        // SAFETY: matmul_backward_dweight(dweight [OC, C], dout [N, OC], inp [N, C], N, C, OC):
        // buffers of oc·c, n·oc, n·c floats and three i32; grid (⌈C/128⌉, ⌈OC/128⌉, 1) of 256
        // threads, accesses bounds-checked.
        unsafe { launch.launch(launch::gemm(oc, c, 1)) }.expect("launch");

        let mut launch = s.launch_builder(&f_dbias);
        launch
            .arg(&mut dbias_d)
            .arg(&dout_d)
            .arg(&n_arg)
            .arg(&oc_arg);
        // SAFETY: matmul_backward_dbias(dbias [OC], dout [N, OC], N, OC): buffers of oc and
        // n·oc floats and two i32; grid (⌈OC/32⌉, 1, 1) of (32, 32, 1) threads as required,
        // columns bounds-checked against OC and rows against N.
        unsafe { launch.launch(launch::dbias(oc)) }.expect("launch");

        matmul_backward(
            &mut dinp,
            &mut dweight,
            Some(&mut dbias),
            &dout,
            &inp,
            &weight,
            n,
            c,
            oc,
        );
        let what = format!("N={n} C={c} OC={oc}");
        let (rtol, atol) = fp32_tolerance(oc);
        let got = s.clone_dtoh(&dinp_d).expect("download");
        assert_close(&format!("dinp {what}"), &got, &dinp, rtol, atol);
        let (rtol, atol) = fp32_tolerance(n);
        let got = s.clone_dtoh(&dweight_d).expect("download");
        assert_close(&format!("dweight {what}"), &got, &dweight, rtol, atol);
        let got = s.clone_dtoh(&dbias_d).expect("download");
        assert_close(&format!("dbias {what}"), &got, &dbias, rtol, atol);
    }
}

/// Generic GEMMs: every transpose combination, padded leading dimensions, two-level batch
/// strides, offset (unaligned) base pointers, alpha, accumulate and bias.
fn generic_cases() -> Vec<(Gemm, usize)> {
    let mut cases = Vec::new();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        for &(m, n, k, outer, inner, pad, offset, alpha, accumulate) in &[
            (130, 200, 70, 2, 3, 0, 0, 0.5f32, true),
            (37, 45, 19, 1, 2, 3, 1, 1.0, false),
            (128, 256, 64, 1, 1, 8, 8, -2.0, true),
            (64, 72, 333, 2, 1, 8, 0, 1.0, false),
            (5, 3, 0, 1, 1, 0, 0, 1.0, true),
        ] {
            let lda = if ta { m } else { k } + pad;
            let ldb = if tb { k } else { n } + pad;
            let ldc = n + pad;
            let (ma, mb, mc) = (
                if ta { k } else { m } * lda,
                if tb { n } else { k } * ldb,
                m * ldc,
            );
            let g = Gemm {
                ta,
                tb,
                m,
                n,
                k,
                lda,
                ldb,
                ldc,
                sa: (inner * (ma + pad) + 3 * pad, ma + pad),
                sb: (inner * mb + pad, mb),
                sc: (inner * (mc + pad), mc + pad),
                outer,
                inner,
                alpha,
                accumulate,
            };
            cases.push((g, offset));
        }
    }
    cases
}

#[test]
fn generic_fp32_gemms_match_a_cpu_loop() {
    let Some(dev) = device_or_skip("gemm_f32") else {
        return;
    };
    let s = &dev.stream;
    for (seed, (g, off)) in generic_cases().into_iter().enumerate() {
        let seed = 100 + 4 * seed as u64;
        let (ea, eb, ec) = g.extents();
        let (a, b, c0, bias) = (
            data(off + ea.max(1), seed),
            data(off + eb.max(1), seed + 1),
            data(off + ec, seed + 2),
            data(g.n, seed + 3),
        );
        let a_d = s.clone_htod(&a).expect("upload");
        let b_d = s.clone_htod(&b).expect("upload");
        let bias_d = s.clone_htod(&bias).expect("upload");
        let mut c_d = s.clone_htod(&c0).expect("upload");
        let with_bias = g.k % 2 == 0;
        {
            let (av, bv, biasv) = (a_d.slice(off..), b_d.slice(off..), bias_d.slice(..));
            let mut cv = c_d.slice_mut(off..);
            let bias = with_bias.then_some(&biasv);
            ops::gemm::<f32, f32>(&dev, &g, &mut cv, &av, &bv, bias).expect("launch");
        }
        let got = s.clone_dtoh(&c_d).expect("download");
        let mut want = c0.clone();
        reference(
            &g,
            &a[off..],
            &b[off..],
            with_bias.then_some(&bias[..]),
            &mut want[off..],
        );
        let (rtol, atol) = fp32_tolerance(g.k);
        let what = format!("{} {g:?} offset {off}", g.kernel("f32", ""));
        assert_close(&what, &got, &want, rtol, atol * g.alpha.abs().max(1.0));
    }
}

#[test]
fn generic_bf16_gemms_match_the_rounded_cpu_product() {
    let Some(dev) = device_or_skip("gemm_bf16") else {
        return;
    };
    let s = &dev.stream;
    for (seed, (g, off)) in generic_cases().into_iter().enumerate() {
        let seed = 300 + 4 * seed as u64;
        let (ea, eb, ec) = g.extents();
        let a: Vec<u16> = data(off + ea.max(1), seed)
            .into_iter()
            .map(bf16_bits)
            .collect();
        let b: Vec<u16> = data(off + eb.max(1), seed + 1)
            .into_iter()
            .map(bf16_bits)
            .collect();
        let (a_f, b_f): (Vec<f32>, Vec<f32>) = (
            a.iter().map(|&x| bf16_value(x)).collect(),
            b.iter().map(|&x| bf16_value(x)).collect(),
        );
        let bias = data(g.n, seed + 3);
        let a_d = s.clone_htod(&a).expect("upload");
        let b_d = s.clone_htod(&b).expect("upload");
        let bias_d = s.clone_htod(&bias).expect("upload");
        let with_bias = g.k % 2 == 1;
        let bias_h = with_bias.then_some(&bias[..]);
        let (rtol, atol) = fp32_tolerance(g.k);
        let atol = atol * g.alpha.abs().max(1.0);

        // fp32 output.
        let c0 = data(off + ec, seed + 2);
        let mut c_d = s.clone_htod(&c0).expect("upload");
        {
            let (av, bv, biasv) = (a_d.slice(off..), b_d.slice(off..), bias_d.slice(..));
            let mut cv = c_d.slice_mut(off..);
            let bias = with_bias.then_some(&biasv);
            ops::gemm::<u16, f32>(&dev, &g, &mut cv, &av, &bv, bias).expect("launch");
        }
        let got = s.clone_dtoh(&c_d).expect("download");
        let mut want = c0.clone();
        reference(&g, &a_f[off..], &b_f[off..], bias_h, &mut want[off..]);
        let what = format!("{} {g:?} offset {off}", g.kernel("bf16", ""));
        assert_close(&what, &got, &want, rtol, atol);

        // bf16 output (accumulating onto a bf16 C when asked).
        let c0: Vec<u16> = data(off + ec, seed + 2)
            .into_iter()
            .map(bf16_bits)
            .collect();
        let mut c_d = s.clone_htod(&c0).expect("upload");
        {
            let (av, bv, biasv) = (a_d.slice(off..), b_d.slice(off..), bias_d.slice(..));
            let mut cv = c_d.slice_mut(off..);
            let bias = with_bias.then_some(&biasv);
            ops::gemm::<u16, u16>(&dev, &g, &mut cv, &av, &bv, bias).expect("launch");
        }
        let got: Vec<f32> = s
            .clone_dtoh(&c_d)
            .expect("download")
            .into_iter()
            .map(bf16_value)
            .collect();
        let mut want: Vec<f32> = c0.iter().map(|&x| bf16_value(x)).collect();
        reference(&g, &a_f[off..], &b_f[off..], bias_h, &mut want[off..]);
        let s_typ = (g.k.max(1) as f32 / 3.0).sqrt() * g.alpha.abs().max(1.0);
        let what = format!("{} {g:?} offset {off}", g.kernel("bf16", "_bf16out"));
        assert_close(&what, &got, &want, 1e-2, 1e-2 * s_typ);
    }
}

/// The attention products of the table in matmul.cu, read and written in place in convoy's
/// layout (qkv [B, T, 3C], att [B, NH, T, T], out [B, T, C]).
#[test]
fn attention_products_in_convoy_layout_match_a_cpu_loop() {
    let Some(dev) = device_or_skip("gemm_f32 attention") else {
        return;
    };
    let s = &dev.stream;
    let (b, t, c, nh) = (2usize, 67usize, 48usize, 3usize);
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let qkv = data(b * t * 3 * c, 500);
    let att = data(b * nh * t * t, 501);
    let dout = data(b * t * c, 502);
    let qkv_d = s.clone_htod(&qkv).expect("upload");
    let att_d = s.clone_htod(&att).expect("upload");
    let dout_d = s.clone_htod(&dout).expect("upload");
    let at = |x: &[f32], i: usize| f64::from(x[i]);
    let q_ix = |bi: usize, h: usize, ti: usize, i: usize| (bi * t + ti) * 3 * c + h * hs + i;

    // preatt [B, NH, T, T] = scale·q·kᵀ: gemm_f32_nt, A = q, B = k (both ld 3C).
    let g = Gemm {
        ta: false,
        tb: true,
        m: t,
        n: t,
        k: hs,
        lda: 3 * c,
        ldb: 3 * c,
        ldc: t,
        sa: (t * 3 * c, hs),
        sb: (t * 3 * c, hs),
        sc: (nh * t * t, t * t),
        outer: b,
        inner: nh,
        alpha: scale,
        accumulate: false,
    };
    let mut pre_d = s.alloc_zeros::<f32>(b * nh * t * t).expect("alloc");
    {
        let (qv, kv) = (qkv_d.slice(..), qkv_d.slice(c..));
        let mut pv = pre_d.slice_mut(..);
        ops::gemm::<f32, f32>(&dev, &g, &mut pv, &qv, &kv, None).expect("launch");
    }
    let mut want = vec![0.0f32; b * nh * t * t];
    for bi in 0..b {
        for h in 0..nh {
            for t1 in 0..t {
                for t2 in 0..t {
                    let dot: f64 = (0..hs)
                        .map(|i| at(&qkv, q_ix(bi, h, t1, i)) * at(&qkv, q_ix(bi, h, t2, i) + c))
                        .sum();
                    want[((bi * nh + h) * t + t1) * t + t2] = (f64::from(scale) * dot) as f32;
                }
            }
        }
    }
    let (rtol, atol) = fp32_tolerance(hs);
    assert_close(
        "preatt = scale·q·kᵀ",
        &s.clone_dtoh(&pre_d).expect("dl"),
        &want,
        rtol,
        atol,
    );

    // out [B, T, C] = att·v: gemm_f32_nn, A = att (ld T), B = v (ld 3C), C = out (ld C).
    let g = Gemm {
        ta: false,
        tb: false,
        m: t,
        n: hs,
        k: t,
        lda: t,
        ldb: 3 * c,
        ldc: c,
        sa: (nh * t * t, t * t),
        sb: (t * 3 * c, hs),
        sc: (t * c, hs),
        outer: b,
        inner: nh,
        alpha: 1.0,
        accumulate: false,
    };
    let mut out_d = s.clone_htod(&vec![f32::NAN; b * t * c]).expect("upload");
    {
        let (av, vv) = (att_d.slice(..), qkv_d.slice(2 * c..));
        let mut ov = out_d.slice_mut(..);
        ops::gemm::<f32, f32>(&dev, &g, &mut ov, &av, &vv, None).expect("launch");
    }
    let mut want = vec![0.0f32; b * t * c];
    for bi in 0..b {
        for h in 0..nh {
            for t1 in 0..t {
                for i in 0..hs {
                    let sum: f64 = (0..t)
                        .map(|t2| {
                            at(&att, ((bi * nh + h) * t + t1) * t + t2)
                                * at(&qkv, q_ix(bi, h, t2, i) + 2 * c)
                        })
                        .sum();
                    want[(bi * t + t1) * c + h * hs + i] = sum as f32;
                }
            }
        }
    }
    let (rtol, atol) = fp32_tolerance(t);
    assert_close(
        "out = att·v",
        &s.clone_dtoh(&out_d).expect("dl"),
        &want,
        rtol,
        atol,
    );

    // dv [in dinp, B, T, 3C] += attᵀ·dout: gemm_f32_tn, A = att (ld T), B = dout (ld C).
    let dinp0 = data(b * t * 3 * c, 503);
    let mut dinp_d = s.clone_htod(&dinp0).expect("upload");
    let g = Gemm {
        ta: true,
        tb: false,
        m: t,
        n: hs,
        k: t,
        lda: t,
        ldb: c,
        ldc: 3 * c,
        sa: (nh * t * t, t * t),
        sb: (t * c, hs),
        sc: (t * 3 * c, hs),
        outer: b,
        inner: nh,
        alpha: 1.0,
        accumulate: true,
    };
    {
        let (av, dv) = (att_d.slice(..), dout_d.slice(..));
        let mut dvv = dinp_d.slice_mut(2 * c..);
        ops::gemm::<f32, f32>(&dev, &g, &mut dvv, &av, &dv, None).expect("launch");
    }
    let mut want = dinp0.clone();
    for bi in 0..b {
        for h in 0..nh {
            for t2 in 0..t {
                for i in 0..hs {
                    let sum: f64 = (0..t)
                        .map(|t1| {
                            at(&att, ((bi * nh + h) * t + t1) * t + t2)
                                * at(&dout, (bi * t + t1) * c + h * hs + i)
                        })
                        .sum();
                    let ix = q_ix(bi, h, t2, i) + 2 * c;
                    want[ix] = (f64::from(dinp0[ix]) + sum) as f32;
                }
            }
        }
    }
    assert_close(
        "dv += attᵀ·dout",
        &s.clone_dtoh(&dinp_d).expect("dl"),
        &want,
        rtol,
        atol,
    );
}

#[test]
fn gemms_are_deterministic() {
    let Some(dev) = device_or_skip("gemm determinism") else {
        return;
    };
    let s = &dev.stream;
    let (n, c, oc) = (300, 520, 700);
    let (inp, weight, dout) = (data(n * c, 40), data(oc * c, 41), data(n * oc, 42));
    // `weight` only seeds the accumulating dweight.
    let inp_d = s.clone_htod(&inp).expect("upload");
    let dout_d = s.clone_htod(&dout).expect("upload");
    let f = dev
        .function("matmul", "matmul_backward_dweight")
        .expect("kernel");
    let (n_arg, c_arg, oc_arg) = (n as i32, c as i32, oc as i32);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut dw_d = s.clone_htod(&weight).expect("upload");
        let mut launch = s.launch_builder(&f);
        launch.arg(&mut dw_d).arg(&dout_d).arg(&inp_d);
        launch.arg(&n_arg).arg(&c_arg).arg(&oc_arg);
        // SAFETY: matmul_backward_dweight(dweight [OC, C], dout [N, OC], inp [N, C], N, C, OC):
        // buffers of oc·c, n·oc, n·c floats and three i32; grid (⌈C/128⌉, ⌈OC/128⌉, 1) of 256
        // threads, accesses bounds-checked.
        unsafe { launch.launch(launch::gemm(oc, c, 1)) }.expect("launch");
        runs.push(s.clone_dtoh(&dw_d).expect("download"));
    }
    assert!(
        runs[0]
            .iter()
            .zip(&runs[1])
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "two runs of matmul_backward_dweight differ"
    );
}

#[test]
fn bf16_conversions_round_to_nearest_even() {
    let Some(dev) = device_or_skip("bf16 conversions") else {
        return;
    };
    let s = &dev.stream;
    let mut x = data(10_001, 60);
    // Ties (1 + 2^-8 rounds down to 1, 1 + 3·2^-8 up to 1 + 2^-6), signs, zeros, subnormals,
    // overflow to inf, inf and NaN.
    x.extend([
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -(1.0 + 1.0 / 256.0),
        0.0,
        -0.0,
        1e-40,
        -3e-39,
        3.4e38,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    let n = x.len();
    let x_d = s.clone_htod(&x).expect("upload");
    let mut y_d = s.alloc_zeros::<u16>(n).expect("alloc");
    let mut back_d = s.alloc_zeros::<f32>(n).expect("alloc");
    let n_arg = n as i64;
    let f = dev.function("matmul", "f32_to_bf16").expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch.arg(&mut y_d).arg(&x_d).arg(&n_arg);
    // SAFETY: f32_to_bf16(out [n] bf16, inp [n] f32, n): n u16 (bf16 patterns) and n floats,
    // n as i64; one thread per element, bounds-checked.
    unsafe { launch.launch(grid_1d(n)) }.expect("launch");
    let f = dev.function("matmul", "bf16_to_f32").expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch.arg(&mut back_d).arg(&y_d).arg(&n_arg);
    // SAFETY: bf16_to_f32(out [n] f32, inp [n] bf16, n): n floats and n u16, n as i64; one
    // thread per element, bounds-checked.
    unsafe { launch.launch(grid_1d(n)) }.expect("launch");
    let y = s.clone_dtoh(&y_d).expect("download");
    let back = s.clone_dtoh(&back_d).expect("download");
    for (i, (&xi, &yi)) in x.iter().zip(&y).enumerate() {
        if xi.is_nan() {
            assert!(
                bf16_value(yi).is_nan(),
                "f32_to_bf16[{i}]: NaN gave {yi:#06x}"
            );
        } else {
            assert_eq!(yi, bf16_bits(xi), "f32_to_bf16[{i}] of {xi:e}");
        }
    }
    let widened: Vec<f32> = y.iter().map(|&b| bf16_value(b)).collect();
    assert_close("bf16_to_f32", &back, &widened, 0.0, 0.0);
}
