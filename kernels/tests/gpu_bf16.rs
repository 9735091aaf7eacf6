//! The bf16 instances (`u16` activations) of the GPT's elementwise, row and loss ops, through
//! `ops::`, against the CPU reference run on the same bf16 values; and the conversions
//! `Operand::from_f32` / `Operand::to_f32` of `u16` against an independent host rounding.
//!
//! Tolerances. The inputs are rounded to bf16 on the host and the CPU is given exactly those
//! values, so the GPU's fp32 arithmetic (the kernels widen every load, exactly) starts from the
//! same numbers as the CPU's. Hence:
//!   - fp32 results (layernorm's mean, rstd and gradients, GELU's dinp, the losses) meet the
//!     tolerances of the op's fp32 test (gpu_layernorm.rs, gpu_activation.rs,
//!     gpu_classifier.rs), whose reasoning (summation order, libm ulp) is unchanged: 1e-5
//!     relative, not the 1e-2 of bf16;
//!   - bf16 results are one rounding of such an fp32 value. A bf16 has 8 significant bits, so
//!     the rounding moves a value by at most 2^-8 of itself (`BF16_ROUNDING`):
//!     `after_one_rounding` of the fp32 tolerance, rtol ≈ 2^-8 + 1e-5 (tighter than a blanket
//!     1e-2, which would let a double rounding or a rounding of the wrong value through);
//!   - where the fp32 value is the CPU's bit for bit (one addition: the residual and the
//!     encoder), the bf16 result is exactly the host's rounding of the CPU's value.

mod gpu_common;

use convoy_kernels::IGNORE_INDEX;
use convoy_kernels::cuda::ops::{self, Operand};
use gpu_common::{
    after_one_rounding, assert_close, assert_close_each, bf16_bits, bf16_value,
    column_sum_tolerance, data, device_or_skip, rounded, stored, widen,
};

/// A bf16 NaN: the garbage every bf16 output starts as, so that an entry the kernel fails to
/// write shows.
const BF16_NAN: u16 = 0x7fc0;

/// Every bf16 pattern widens to the f32 with the same high half and a zero low half, which
/// rounds back to the same pattern: the widening is exact. NaN patterns widen to NaN.
#[test]
fn bf16_to_f32_widens_exactly() {
    for b in 0..=u16::MAX {
        let w = b.to_f32();
        assert_eq!(w.to_bits(), u32::from(b) << 16, "to_f32({b:#06x})");
        let nan = b & 0x7f80 == 0x7f80 && b & 0x007f != 0;
        if nan {
            assert!(w.is_nan(), "to_f32({b:#06x}) = {w:e}, not NaN");
        } else {
            assert_eq!(
                bf16_bits(w),
                b,
                "to_f32({b:#06x}) = {w:e} does not round back"
            );
        }
    }
    for x in [0.0f32, -0.0, 1.5, -3e-39, f32::MAX, f32::INFINITY] {
        assert_eq!(x.to_f32().to_bits(), x.to_bits(), "f32 to_f32({x:e})");
    }
    assert!(f32::NAN.to_f32().is_nan());
}

/// `u16::from_f32` rounds on the device to the nearest bf16, ties to even, exactly as the host
/// does (bit for bit), writes only the first n entries of its slot, and `f32::from_f32` is the
/// identity.
#[test]
fn from_f32_rounds_like_the_host() {
    let Some(dev) = device_or_skip("from_f32_rounds_like_the_host") else {
        return;
    };
    let s = &dev.stream;
    let mut x: Vec<f32> = data(10_001, 60).iter().map(|v| 3.0 * v).collect();
    // Ties (1 + 2^-8 rounds down to 1, 1 + 3·2^-8 up to 1 + 2^-6), a tie below 2^-126, signs,
    // zeros, subnormals, overflow to inf (f32::MAX), the largest finite bf16, inf and NaN.
    x.extend([
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -(1.0 + 1.0 / 256.0),
        f32::from_bits(0x0000_8000),
        f32::from_bits(0x0001_8000),
        0.0,
        -0.0,
        1e-40,
        -3e-39,
        f32::MAX,
        bf16_value(0x7f7f),
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    let n = x.len();
    let x_d = s.clone_htod(&x).expect("upload");
    let sentinel = 0xabcd_u16;
    let mut slot = s.clone_htod(&vec![sentinel; n + 7]).expect("upload");
    let got = {
        let y = u16::from_f32(&dev, x_d.as_view(), &mut slot).expect("from_f32");
        assert_eq!(y.len(), n, "from_f32: the view holds n elements");
        s.clone_dtoh(&y).expect("download")
    };
    for (i, (&xi, &yi)) in x.iter().zip(&got).enumerate() {
        if xi.is_nan() {
            assert!(yi.to_f32().is_nan(), "from_f32[{i}]: NaN gave {yi:#06x}");
        } else {
            assert_eq!(yi, bf16_bits(xi), "from_f32[{i}] of {xi:e}");
        }
    }
    let tail = s.clone_dtoh(&slot).expect("download");
    assert!(
        tail[n..].iter().all(|&b| b == sentinel),
        "from_f32 wrote past n: {:?}",
        &tail[n..]
    );

    let mut unused = s.alloc_zeros::<f32>(1).expect("alloc");
    let same = f32::from_f32(&dev, x_d.as_view(), &mut unused).expect("from_f32");
    let same = s.clone_dtoh(&same).expect("download");
    assert!(
        same.iter().zip(&x).all(|(a, b)| a.to_bits() == b.to_bits()),
        "f32::from_f32 is not the identity"
    );
}

#[test]
fn layernorm_bf16_matches_the_cpu_on_rounded_inputs() {
    let Some(dev) = device_or_skip("layernorm_bf16_matches_the_cpu_on_rounded_inputs") else {
        return;
    };
    let s = &dev.stream;
    // N = 4·64 + 44 rows (a ragged last chunk of the parameter sums), C = 200 channels; rows
    // with their own offset and scale, so that the normalisation does something.
    let (n, c) = (300, 200);
    let x: Vec<f32> = data(n * c, 20)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i / c % 5) as f32) + 0.5)
        .collect();
    let x_h = stored::<u16>(&x);
    let x_r = widen(&x_h);
    let (w, bias) = (data(c, 21), data(c, 22));
    let x_d = s.clone_htod(&x_h).expect("upload");
    let w_d = s.clone_htod(&w).expect("upload");
    let b_d = s.clone_htod(&bias).expect("upload");
    let mut out_d = s.clone_htod(&vec![BF16_NAN; n * c]).expect("upload");
    let mut mean_d = s.clone_htod(&vec![f32::NAN; n]).expect("upload");
    let mut rstd_d = s.clone_htod(&vec![f32::NAN; n]).expect("upload");
    ops::layernorm_forward::<u16>(
        &dev,
        &mut out_d.as_view_mut(),
        &mut mean_d.as_view_mut(),
        &mut rstd_d.as_view_mut(),
        &x_d.as_view(),
        &w_d.as_view(),
        &b_d.as_view(),
        n,
        c,
    )
    .expect("layernorm_forward");
    let (mut out, mut mean, mut rstd) = (vec![0.0f32; n * c], vec![0.0f32; n], vec![0.0f32; n]);
    convoy_kernels::layernorm::layernorm_forward(
        &mut out, &mut mean, &mut rstd, &x_r, &w, &bias, n, c,
    );
    let gpu_mean = s.clone_dtoh(&mean_d).expect("download");
    let gpu_rstd = s.clone_dtoh(&rstd_d).expect("download");
    assert_close("layernorm bf16 mean", &gpu_mean, &mean, 1e-5, 1e-6);
    assert_close("layernorm bf16 rstd", &gpu_rstd, &rstd, 1e-5, 1e-6);
    let (rtol, atol) = after_one_rounding(1e-5, 1e-5);
    let gpu_out = widen(&s.clone_dtoh(&out_d).expect("download"));
    assert_close("layernorm bf16 out", &gpu_out, &out, rtol, atol);

    // Backward from the CPU's saved mean and rstd, into non-zero gradients (they accumulate):
    // everything but inp is fp32, and inp is the same bf16 values on both sides.
    let dout = data(n * c, 23);
    let (dx0, dw0, db0) = (data(n * c, 24), data(c, 25), data(c, 26));
    let dout_d = s.clone_htod(&dout).expect("upload");
    let mean_d = s.clone_htod(&mean).expect("upload");
    let rstd_d = s.clone_htod(&rstd).expect("upload");
    let mut dx_d = s.clone_htod(&dx0).expect("upload");
    let mut dw_d = s.clone_htod(&dw0).expect("upload");
    let mut db_d = s.clone_htod(&db0).expect("upload");
    let r = ops::ln_partial_rows(n);
    let mut partial_d = s.alloc_zeros::<f32>(2 * r * c).expect("alloc");
    ops::layernorm_backward::<u16>(
        &dev,
        &mut dx_d.as_view_mut(),
        &mut dw_d.as_view_mut(),
        &mut db_d.as_view_mut(),
        &mut partial_d.as_view_mut(),
        &dout_d.as_view(),
        &x_d.as_view(),
        &w_d.as_view(),
        &mean_d.as_view(),
        &rstd_d.as_view(),
        n,
        c,
    )
    .expect("layernorm_backward");
    // The column sums' tolerance is that of two summation orders, as in gpu_layernorm.rs.
    let dw_tol = column_sum_tolerance(n, c, &dw0, |i, j| {
        (x_r[i * c + j] - mean[i]) * rstd[i] * dout[i * c + j]
    });
    let db_tol = column_sum_tolerance(n, c, &db0, |i, j| dout[i * c + j]);
    let (mut dx, mut dw, mut db) = (dx0, dw0, db0);
    convoy_kernels::layernorm::layernorm_backward(
        &mut dx, &mut dw, &mut db, &dout, &x_r, &w, &mean, &rstd, n, c,
    );
    let dl = |d: &cudarc::driver::CudaSlice<f32>| s.clone_dtoh(d).expect("download");
    assert_close("layernorm bf16 dinp", &dl(&dx_d), &dx, 1e-5, 1e-5);
    assert_close_each("layernorm bf16 dweight", &dl(&dw_d), &dw, &dw_tol);
    assert_close_each("layernorm bf16 dbias", &dl(&db_d), &db, &db_tol);
}

#[test]
fn gelu_bf16_matches_the_cpu_on_rounded_inputs() {
    let Some(dev) = device_or_skip("gelu_bf16_matches_the_cpu_on_rounded_inputs") else {
        return;
    };
    let s = &dev.stream;
    let n = 100_003usize;
    // Inputs over [-6, 6], through every regime of GELU.
    let x_h = stored::<u16>(&data(n, 30).iter().map(|v| 6.0 * v).collect::<Vec<_>>());
    let x_r = widen(&x_h);
    let (dout, d0) = (data(n, 31), data(n, 32));
    let x_d = s.clone_htod(&x_h).expect("upload");
    let mut out_d = s.clone_htod(&vec![BF16_NAN; n]).expect("upload");
    ops::gelu_forward::<u16>(&dev, &mut out_d.as_view_mut(), &x_d.as_view(), n)
        .expect("gelu_forward");
    let mut out = vec![0.0f32; n];
    convoy_kernels::activation::gelu_forward(&mut out, &x_r);
    let (rtol, atol) = after_one_rounding(1e-5, 1e-6);
    let gpu_out = widen(&s.clone_dtoh(&out_d).expect("download"));
    assert_close("gelu bf16 forward", &gpu_out, &out, rtol, atol);

    // dinp (fp32) accumulates; the bf16 input is the only bf16 operand. atol 4e-6 as in
    // gpu_activation.rs (1 − tanh² cancels where |tanh| → 1).
    let dout_d = s.clone_htod(&dout).expect("upload");
    let mut dinp_d = s.clone_htod(&d0).expect("upload");
    ops::gelu_backward::<u16>(
        &dev,
        &mut dinp_d.as_view_mut(),
        &x_d.as_view(),
        &dout_d.as_view(),
        n,
    )
    .expect("gelu_backward");
    let mut dinp = d0;
    convoy_kernels::activation::gelu_backward(&mut dinp, &x_r, &dout);
    let gpu_dinp = s.clone_dtoh(&dinp_d).expect("download");
    assert_close("gelu bf16 backward", &gpu_dinp, &dinp, 1e-5, 4e-6);
}

/// out = a + b: one fp32 addition of the same values as the CPU's (bit-identical), then one
/// rounding to nearest even, so the result is exactly the host's rounding of the CPU's sum.
#[test]
fn residual_bf16_is_the_rounded_cpu_sum() {
    let Some(dev) = device_or_skip("residual_bf16_is_the_rounded_cpu_sum") else {
        return;
    };
    let s = &dev.stream;
    let n = 100_003usize;
    // b at a smaller scale than a: the sum then carries bits that bf16 must round away.
    let a_h = stored::<u16>(&data(n, 1));
    let b_h = stored::<u16>(&data(n, 2).iter().map(|v| v / 37.0).collect::<Vec<_>>());
    let a_d = s.clone_htod(&a_h).expect("upload");
    let b_d = s.clone_htod(&b_h).expect("upload");
    let mut out_d = s.clone_htod(&vec![BF16_NAN; n]).expect("upload");
    ops::residual_forward::<u16>(
        &dev,
        &mut out_d.as_view_mut(),
        &a_d.as_view(),
        &b_d.as_view(),
        n,
    )
    .expect("residual_forward");
    let mut sum = vec![0.0f32; n];
    convoy_kernels::residual::residual_forward(&mut sum, &widen(&a_h), &widen(&b_h));
    let want = stored::<u16>(&sum);
    let got = s.clone_dtoh(&out_d).expect("download");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g, w,
            "residual bf16[{i}]: {g:#06x} vs {w:#06x} (fp32 sum {})",
            sum[i]
        );
    }
}

/// out = wte[token] + wpe[t] from fp32 parameters: the CPU's fp32 sum (the same addition),
/// rounded once, bit for bit; an out-of-range token gives NaN, not a stray read.
#[test]
fn encoder_bf16_is_the_rounded_cpu_embedding() {
    let Some(dev) = device_or_skip("encoder_bf16_is_the_rounded_cpu_embedding") else {
        return;
    };
    let s = &dev.stream;
    let (b, t, c, v, max_t) = (3usize, 37usize, 96usize, 50usize, 80usize);
    let inp: Vec<u32> = data(b * t, 10)
        .iter()
        .map(|&x| ((x + 1.0) * 20.0) as u32 % 40)
        .collect();
    let (wte, wpe) = (data(v * c, 11), data(max_t * c, 12));
    let inp_d = s.clone_htod(&inp).expect("upload");
    let wte_d = s.clone_htod(&wte).expect("upload");
    let wpe_d = s.clone_htod(&wpe).expect("upload");
    let mut out_d = s.clone_htod(&vec![BF16_NAN; b * t * c]).expect("upload");
    ops::encoder_forward::<u16>(
        &dev,
        &mut out_d.as_view_mut(),
        &inp_d.as_view(),
        &wte_d.as_view(),
        &wpe_d.as_view(),
        b,
        t,
        c,
        v,
    )
    .expect("encoder_forward");
    let mut cpu = vec![0.0f32; b * t * c];
    convoy_kernels::encoder::encoder_forward(&mut cpu, &inp, &wte, &wpe, b, t, c);
    let want = stored::<u16>(&cpu);
    let got = s.clone_dtoh(&out_d).expect("download");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g, w,
            "encoder bf16[{i}]: {g:#06x} vs {w:#06x} (fp32 {})",
            cpu[i]
        );
    }

    // Token 3 ≥ V = 3 in the second position of a [1, 2] batch: its row is NaN.
    let inp_d = s.clone_htod(&[1u32, 3]).expect("upload");
    let mut out_d = s.alloc_zeros::<u16>(2 * 4).expect("alloc");
    ops::encoder_forward::<u16>(
        &dev,
        &mut out_d.as_view_mut(),
        &inp_d.as_view(),
        &wte_d.slice(..3 * 4),
        &wpe_d.slice(..2 * 4),
        1,
        2,
        4,
        3,
    )
    .expect("encoder_forward");
    let out = widen(&s.clone_dtoh(&out_d).expect("download"));
    assert!(out[..4].iter().all(|x| x.is_finite()), "{out:?}");
    assert!(out[4..].iter().all(|x| x.is_nan()), "{out:?}");
}

#[test]
fn crossentropy_bf16_matches_the_cpu_on_rounded_logits() {
    let Some(dev) = device_or_skip("crossentropy_bf16_matches_the_cpu_on_rounded_logits") else {
        return;
    };
    let s = &dev.stream;
    let (n, v, vp, scale) = (64usize, 1000usize, 1024usize, 0.37f32);
    // Logits in [-4, 4) rounded to bf16, NaN in the padding columns: any read of them would
    // poison a row.
    let x: Vec<f32> = data(n * vp, 50)
        .iter()
        .enumerate()
        .map(|(i, &x)| if i % vp >= v { f32::NAN } else { 4.0 * x })
        .collect();
    let x_h = stored::<u16>(&x);
    let x_r = rounded(&x);
    // Targets below V, every fifth row ignored; row 3 targets the last real column.
    let tg: Vec<u32> = data(n, 51)
        .iter()
        .enumerate()
        .map(|(r, &x)| match r {
            _ if r % 5 == 0 => IGNORE_INDEX,
            3 => v as u32 - 1,
            _ => ((x + 1.0) * 0.5 * v as f32) as u32 % v as u32,
        })
        .collect();
    let x_d = s.clone_htod(&x_h).expect("upload");
    let tg_d = s.clone_htod(&tg).expect("upload");
    let mut losses_d = s.clone_htod(&vec![f32::NAN; n]).expect("upload");
    let mut dlogits_d = s.clone_htod(&vec![BF16_NAN; n * vp]).expect("upload");
    ops::crossentropy_forward_backward::<u16>(
        &dev,
        &mut losses_d.as_view_mut(),
        Some(&mut dlogits_d.as_view_mut()),
        &x_d.as_view(),
        &tg_d.as_view(),
        n,
        v,
        vp,
        scale,
    )
    .expect("crossentropy_forward_backward");
    let (mut losses, mut dlogits) = (vec![0.0f32; n], vec![0.0f32; n * vp]);
    convoy_kernels::loss::crossentropy_forward_backward(
        &mut losses,
        Some(&mut dlogits),
        &x_r,
        &tg,
        n,
        v,
        vp,
        scale,
    );
    let gpu_losses = s.clone_dtoh(&losses_d).expect("download");
    let gpu_dlogits_h = s.clone_dtoh(&dlogits_d).expect("download");
    let gpu_dlogits = widen(&gpu_dlogits_h);
    assert_close("crossentropy bf16 losses", &gpu_losses, &losses, 1e-5, 1e-6);
    let (rtol, atol) = after_one_rounding(1e-5, 1e-6);
    assert_close(
        "crossentropy bf16 dlogits",
        &gpu_dlogits,
        &dlogits,
        rtol,
        atol,
    );
    for r in 0..n {
        let row = &gpu_dlogits_h[r * vp..(r + 1) * vp];
        assert!(row[v..].iter().all(|&g| g == 0), "padding of row {r}");
        if tg[r] == IGNORE_INDEX {
            assert!(
                row.iter().all(|&g| g == 0) && gpu_losses[r] == 0.0,
                "row {r}"
            );
        }
    }

    // Without dlogits: the same losses, bit for bit.
    let mut losses2_d = s.alloc_zeros::<f32>(n).expect("alloc");
    ops::crossentropy_forward_backward::<u16>(
        &dev,
        &mut losses2_d.as_view_mut(),
        None,
        &x_d.as_view(),
        &tg_d.as_view(),
        n,
        v,
        vp,
        scale,
    )
    .expect("crossentropy_forward_backward");
    let losses2 = s.clone_dtoh(&losses2_d).expect("download");
    assert!(
        losses2
            .iter()
            .zip(&gpu_losses)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "losses without dlogits differ"
    );
}
