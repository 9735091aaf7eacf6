//! attention.cu against the CPU reference, chained as the comment at the top of attention.cu
//! says. The batched GEMMs between the kernels run on the host here (`bmm`, an f64 stand-in for
//! the matmul.cu GEMMs), so this test checks the permutes and softmaxes, and that the chain
//! reproduces attention_forward / attention_backward.
//!
//! Tolerances: the permutes are exact copies/additions. The softmax row sums run in a different
//! order than the CPU's (rtol 1e-5 / atol 1e-6 on att). Values that went through a product
//! (preatt, out, datt, dpreatt, dinp) sum T or HS terms in f64 here and in f32 on the CPU: they
//! differ by a few ulp of the terms' magnitude (|q|, |k|, |v| ≤ 2), not of the (possibly
//! cancelled) sum, hence atol 1e-5 there.

mod gpu_common;

use cudarc::driver::PushKernelArg;
use gpu_common::{assert_close, data, device_or_skip, grid_1d, grid_blocks};

const B: usize = 2;
const T: usize = 37;
const C: usize = 48;
const NH: usize = 4;
const HS: usize = C / NH;
const BNH: usize = B * NH;
/// Threads per softmax row block: fewer than T, so the loops over a row wrap around.
const THREADS: u32 = 32;

/// out[b] (+)= alpha·op(a[b])·op(b[b]) for each of BNH batches; a is [m, k] ([k, m] when
/// `ta`), b is [k, n] ([n, k] when `tb`), out [m, n]; sums in f64.
#[allow(clippy::too_many_arguments)]
fn bmm(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    alpha: f32,
) -> Vec<f32> {
    let mut out = vec![0.0f32; BNH * m * n];
    for bh in 0..BNH {
        let (a, b) = (&a[bh * m * k..][..m * k], &b[bh * k * n..][..k * n]);
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    let x = if ta { a[p * m + i] } else { a[i * k + p] };
                    let y = if tb { b[j * k + p] } else { b[p * n + j] };
                    acc += f64::from(x) * f64::from(y);
                }
                out[bh * m * n + i * n + j] = (f64::from(alpha) * acc) as f32;
            }
        }
    }
    out
}

#[test]
fn attention_chain_matches_the_cpu_forward_and_backward() {
    let Some(dev) = device_or_skip("attention") else {
        return;
    };
    let s = &dev.stream;
    let (b, t, nh, hs) = (B as i32, T as i32, NH as i32, HS as i32);
    let rows = (BNH * T) as i32;
    let scale = 1.0 / (HS as f32).sqrt();
    let heads = BNH * T * HS;
    let tt = BNH * T * T;
    let inp: Vec<f32> = data(B * T * 3 * C, 40).iter().map(|v| 2.0 * v).collect();

    // CPU reference, forward and backward.
    let (mut out, mut preatt, mut att) = (vec![0.0; B * T * C], vec![0.0; tt], vec![0.0; tt]);
    convoy_kernels::attention::attention_forward(
        &mut out,
        &mut preatt,
        &mut att,
        &inp,
        B,
        T,
        C,
        NH,
    );
    let dout = data(B * T * C, 41);
    let d0 = data(B * T * 3 * C, 42);
    let (mut dinp, mut dpreatt, mut datt) = (d0.clone(), vec![0.0; tt], vec![0.0; tt]);
    convoy_kernels::attention::attention_backward(
        &mut dinp,
        &mut dpreatt,
        &mut datt,
        &dout,
        &inp,
        &att,
        B,
        T,
        C,
        NH,
    );

    // Forward 1: permute.
    let inp_d = s.clone_htod(&inp).expect("upload");
    let mut q_d = s.alloc_zeros::<f32>(heads).expect("alloc");
    let mut k_d = s.alloc_zeros::<f32>(heads).expect("alloc");
    let mut v_d = s.alloc_zeros::<f32>(heads).expect("alloc");
    let f = dev
        .function("attention", "attention_permute")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut q_d)
        .arg(&mut k_d)
        .arg(&mut v_d)
        .arg(&inp_d)
        .arg(&b)
        .arg(&t)
        .arg(&nh)
        .arg(&hs);
    // SAFETY: attention_permute(q, k, v [B, NH, T, HS], inp [B, T, 3C], B, T, NH, HS: i32),
    // C = NH·HS: three buffers of B·NH·T·HS floats and one of B·T·3C; grid-stride.
    unsafe { launch.launch(grid_1d(heads)) }.expect("launch");
    let (q, k, v) = (
        s.clone_dtoh(&q_d).expect("download"),
        s.clone_dtoh(&k_d).expect("download"),
        s.clone_dtoh(&v_d).expect("download"),
    );

    // Forward 2, 3: raw scores q·kᵀ (alpha 1), then the softmax applies the scale.
    let mut preatt_d = s
        .clone_htod(&bmm(&q, &k, T, HS, T, false, true, 1.0))
        .expect("upload");
    let mut att_d = s.alloc_zeros::<f32>(tt).expect("alloc");
    let f = dev
        .function("attention", "attention_softmax_forward")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut preatt_d)
        .arg(&mut att_d)
        .arg(&rows)
        .arg(&t)
        .arg(&scale);
    // SAFETY: attention_softmax_forward(preatt [B, NH, T, T], att [B, NH, T, T], rows = B·NH·T,
    // T: i32, scale: f32): two buffers of B·NH·T·T floats; one block of 32 threads per row.
    unsafe { launch.launch(grid_blocks(rows as usize, THREADS)) }.expect("launch");
    let att_gpu = s.clone_dtoh(&att_d).expect("download");
    assert_close(
        "attention preatt",
        &s.clone_dtoh(&preatt_d).expect("download"),
        &preatt,
        1e-5,
        1e-5,
    );
    assert_close("attention att", &att_gpu, &att, 1e-5, 1e-6);

    // Forward 4, 5: vaccum = att·v, then unpermute.
    let vaccum_d = s
        .clone_htod(&bmm(&att_gpu, &v, T, T, HS, false, false, 1.0))
        .expect("upload");
    let mut out_d = s.alloc_zeros::<f32>(B * T * C).expect("alloc");
    let f = dev
        .function("attention", "attention_unpermute")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut out_d)
        .arg(&vaccum_d)
        .arg(&b)
        .arg(&t)
        .arg(&nh)
        .arg(&hs);
    // SAFETY: attention_unpermute(out [B, T, C], vaccum [B, NH, T, HS], B, T, NH, HS: i32):
    // both B·T·C floats; grid-stride.
    unsafe { launch.launch(grid_1d(heads)) }.expect("launch");
    assert_close(
        "attention out",
        &s.clone_dtoh(&out_d).expect("download"),
        &out,
        1e-5,
        1e-5,
    );

    // Backward 1: dout -> dvaccum.
    let dout_d = s.clone_htod(&dout).expect("upload");
    let mut dvaccum_d = s.alloc_zeros::<f32>(heads).expect("alloc");
    let f = dev
        .function("attention", "attention_unpermute_backward")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut dvaccum_d)
        .arg(&dout_d)
        .arg(&b)
        .arg(&t)
        .arg(&nh)
        .arg(&hs);
    // SAFETY: attention_unpermute_backward(dvaccum [B, NH, T, HS], dout [B, T, C], B, T, NH,
    // HS: i32): both B·T·C floats; grid-stride.
    unsafe { launch.launch(grid_1d(heads)) }.expect("launch");
    let dvaccum = s.clone_dtoh(&dvaccum_d).expect("download");

    // Backward 2, 3 (host GEMMs, with the CPU's att so that the softmax backward is compared
    // on identical inputs): datt = dvaccum·vᵀ, dv = attᵀ·dvaccum.
    let datt_in = bmm(&dvaccum, &v, T, HS, T, false, true, 1.0);
    let dv = bmm(&att, &dvaccum, T, T, HS, true, false, 1.0);
    let att_d = s.clone_htod(&att).expect("upload");

    // Backward 4: softmax backward with scale 1 (the CPU's dpreatt), then folded (scale·that).
    let softmax_backward = |datt_in: &[f32], scale: f32| -> (Vec<f32>, Vec<f32>) {
        let mut datt_d = s.clone_htod(datt_in).expect("upload");
        let mut dpreatt_d = s.alloc_zeros::<f32>(tt).expect("alloc");
        let f = dev
            .function("attention", "attention_softmax_backward")
            .expect("kernel");
        let mut launch = s.launch_builder(&f);
        launch
            .arg(&mut dpreatt_d)
            .arg(&mut datt_d)
            .arg(&att_d)
            .arg(&rows)
            .arg(&t)
            .arg(&scale);
        // SAFETY: attention_softmax_backward(dpreatt, datt, att [B, NH, T, T], rows = B·NH·T,
        // T: i32, scale: f32): three buffers of B·NH·T·T floats; one block per row.
        unsafe { launch.launch(grid_blocks(rows as usize, THREADS)) }.expect("launch");
        (
            s.clone_dtoh(&dpreatt_d).expect("download"),
            s.clone_dtoh(&datt_d).expect("download"),
        )
    };
    let (dpre_gpu, datt_gpu) = softmax_backward(&datt_in, 1.0);
    assert_close("attention datt", &datt_gpu, &datt, 1e-5, 1e-5);
    assert_close("attention dpreatt", &dpre_gpu, &dpreatt, 1e-5, 1e-5);
    let (dpre_folded, _) = softmax_backward(&datt_in, scale);
    let dpre_scaled: Vec<f32> = dpre_gpu.iter().map(|d| d * scale).collect();
    // scale·(a·(d - w)) vs (a·(d - w))·scale: one rounding apart at most.
    assert_close(
        "attention dpreatt folded",
        &dpre_folded,
        &dpre_scaled,
        1e-6,
        0.0,
    );

    // Backward 5, 6: dq = scale·dpreatt·k, dk = scale·dpreattᵀ·q; 7: dinp += dq, dk, dv.
    let dq = bmm(&dpre_gpu, &k, T, T, HS, false, false, scale);
    let dk = bmm(&dpre_gpu, &q, T, T, HS, true, false, scale);
    let (dq_d, dk_d, dv_d) = (
        s.clone_htod(&dq).expect("upload"),
        s.clone_htod(&dk).expect("upload"),
        s.clone_htod(&dv).expect("upload"),
    );
    let mut dinp_d = s.clone_htod(&d0).expect("upload");
    let f = dev
        .function("attention", "attention_permute_backward")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut dinp_d)
        .arg(&dq_d)
        .arg(&dk_d)
        .arg(&dv_d)
        .arg(&b)
        .arg(&t)
        .arg(&nh)
        .arg(&hs);
    // SAFETY: attention_permute_backward(dinp [B, T, 3C], dq, dk, dv [B, NH, T, HS], B, T, NH,
    // HS: i32): sizes as listed; grid-stride, each dinp entry written by one thread.
    unsafe { launch.launch(grid_1d(heads)) }.expect("launch");
    assert_close(
        "attention dinp",
        &s.clone_dtoh(&dinp_d).expect("download"),
        &dinp,
        1e-5,
        1e-5,
    );
}
