//! `ops::attention_forward` / `ops::attention_backward` (attention.cu's softmaxes chained with
//! matmul.cu's strided GEMMs) against the CPU reference, with fp32 activations and with bf16
//! ones (`u16`). The shape is ragged: T = 37 is prime, HS = 12, so no tile, warp or row loop
//! divides it. Every output starts as NaN (the op must overwrite all of it), and the gradient
//! dqkv starts from non-zero data (the op accumulates into it).
//!
//! Tolerances, fp32. The GEMMs sum T or HS terms in another order than the CPU's sgemm, and the
//! softmax row sums run in another order than the CPU's 8 lanes: values that went through a
//! product (preatt, out, datt, dpreatt, dqkv) differ by a few ulp of the terms' magnitude
//! (|q|, |k|, |v| ≤ 2), not of the (possibly cancelled) sum, hence rtol 1e-5 / atol 1e-5;
//! att, a softmax of O(1) scores, rtol 1e-5 / atol 1e-6.
//!
//! Tolerances, bf16. A bf16 has 8 significant bits: each stored value or operand is rounded by
//! at most 2^-8 of itself (`BF16_ROUNDING`). The CPU runs on the same bf16 values as the GPU
//! (qkv rounded on the host, the GPU's att widened, dout rounded as the op rounds it), so
//!   - preatt, datt and dqkv's v part come from products of identical bf16 values, exact in
//!     fp32, accumulated in fp32: the fp32 tolerances above;
//!   - att and dpreatt are one rounding of an fp32 value that meets the fp32 tolerance:
//!     `after_one_rounding` of it (rtol ≈ 2^-8);
//!   - out sums att·v with att rounded (≤ 2^-8·Σ att·|v| ≤ 2^-8·max|v|) and is rounded itself,
//!     and dq, dk sum scale·dpreatt·k (q) with dpreatt rounded (≤ 2^-8 of the sum of |terms|,
//!     a few times the result's scale, the roundings' signs random): rtol 1e-2 with
//!     atol 1e-2·(the quantity's scale, its largest |value| on the CPU; for dqkv the largest
//!     increment of that part).
//!
//! The accumulation into dqkv is checked on its own too: the run from d0 must equal the run
//! from zeros plus d0 up to the one fp32 rounding of the final addition.

mod gpu_common;

use convoy_kernels::attention::{attention_backward, attention_forward};
use convoy_kernels::cuda::Device;
use convoy_kernels::cuda::ops;
use gpu_common::{
    Storage, after_one_rounding, assert_close, data, device_or_skip, max_abs, rounded, stored,
    widen,
};

const B: usize = 2;
const T: usize = 37;
const C: usize = 48;
const NH: usize = 4;
const BTC: usize = B * T * C;
const TT: usize = B * NH * T * T;

/// fp32 tolerances of values through a product, and of att (module comment).
const PRODUCT: (f32, f32) = (1e-5, 1e-5);
const ATT: (f32, f32) = (1e-5, 1e-6);

/// The forward's outputs as f32.
struct Forward {
    out: Vec<f32>,
    preatt: Vec<f32>,
    att: Vec<f32>,
}

/// The backward's outputs as f32.
struct Backward {
    dqkv: Vec<f32>,
    dpreatt: Vec<f32>,
    datt: Vec<f32>,
}

/// qkv [B, T, 3C] in [-2, 2).
fn qkv_data() -> Vec<f32> {
    data(3 * BTC, 40).iter().map(|v| 2.0 * v).collect()
}

/// `ops::attention_forward::<A>` on `qkv`, every output starting as NaN; also returns att as
/// stored (the backward's input).
fn gpu_forward<A: Storage>(dev: &Device, qkv: &[A]) -> (Forward, Vec<A>) {
    let s = &dev.stream;
    let nan = A::from_host(f32::NAN);
    let qkv_d = s.clone_htod(qkv).expect("upload");
    let mut out_d = s.clone_htod(&vec![nan; BTC]).expect("upload");
    let mut preatt_d = s.clone_htod(&vec![f32::NAN; TT]).expect("upload");
    let mut att_d = s.clone_htod(&vec![nan; TT]).expect("upload");
    ops::attention_forward::<A>(
        dev,
        &mut out_d.as_view_mut(),
        &mut preatt_d.as_view_mut(),
        &mut att_d.as_view_mut(),
        &qkv_d.as_view(),
        B,
        T,
        C,
        NH,
    )
    .expect("attention_forward");
    let att = s.clone_dtoh(&att_d).expect("download");
    let fwd = Forward {
        out: widen(&s.clone_dtoh(&out_d).expect("download")),
        preatt: s.clone_dtoh(&preatt_d).expect("download"),
        att: widen(&att),
    };
    (fwd, att)
}

/// `ops::attention_backward::<A>` into dqkv = `d0`, dpreatt and datt starting as NaN.
fn gpu_backward<A: Storage>(
    dev: &Device,
    d0: &[f32],
    dout: &[f32],
    qkv: &[A],
    att: &[A],
) -> Backward {
    let s = &dev.stream;
    let nan = A::from_host(f32::NAN);
    let mut dqkv_d = s.clone_htod(d0).expect("upload");
    let mut dpreatt_d = s.clone_htod(&vec![nan; TT]).expect("upload");
    let mut datt_d = s.clone_htod(&vec![f32::NAN; TT]).expect("upload");
    let dout_d = s.clone_htod(dout).expect("upload");
    let qkv_d = s.clone_htod(qkv).expect("upload");
    let att_d = s.clone_htod(att).expect("upload");
    let mut slot = s.alloc_zeros::<A>(BTC).expect("alloc");
    ops::attention_backward::<A>(
        dev,
        &mut dqkv_d.as_view_mut(),
        &mut dpreatt_d.as_view_mut(),
        &mut datt_d.as_view_mut(),
        &dout_d.as_view(),
        &qkv_d.as_view(),
        &att_d.as_view(),
        &mut slot,
        B,
        T,
        C,
        NH,
    )
    .expect("attention_backward");
    Backward {
        dqkv: s.clone_dtoh(&dqkv_d).expect("download"),
        dpreatt: widen(&s.clone_dtoh(&dpreatt_d).expect("download")),
        datt: s.clone_dtoh(&datt_d).expect("download"),
    }
}

fn cpu_forward(qkv: &[f32]) -> Forward {
    let (mut out, mut preatt, mut att) = (vec![0.0; BTC], vec![0.0; TT], vec![0.0; TT]);
    attention_forward(&mut out, &mut preatt, &mut att, qkv, B, T, C, NH);
    Forward { out, preatt, att }
}

fn cpu_backward(d0: &[f32], dout: &[f32], qkv: &[f32], att: &[f32]) -> Backward {
    let (mut dqkv, mut dpreatt, mut datt) = (d0.to_vec(), vec![0.0; TT], vec![0.0; TT]);
    attention_backward(
        &mut dqkv,
        &mut dpreatt,
        &mut datt,
        dout,
        qkv,
        att,
        B,
        T,
        C,
        NH,
    );
    Backward {
        dqkv,
        dpreatt,
        datt,
    }
}

/// Asserts that `x` [B, NH, T, T] is exactly 0 above the diagonal (key position > query's).
fn assert_causal(what: &str, x: &[f32]) {
    for (r, row) in x.chunks_exact(T).enumerate() {
        let t = r % T;
        assert!(
            row[t + 1..].iter().all(|&v| v == 0.0),
            "{what}: row {r} (query {t}) is not 0 above the diagonal: {:?}",
            &row[t + 1..]
        );
    }
}

/// Part `p` (0 = q, 1 = k, 2 = v) of a [B, T, 3C] buffer, as [B, T, C].
fn part(x: &[f32], p: usize) -> Vec<f32> {
    x.chunks_exact(3 * C)
        .flat_map(|row| &row[p * C..(p + 1) * C])
        .copied()
        .collect()
}

/// The largest |increment| of part `p` of dqkv from its start d0: that gradient's scale.
fn increment_scale(dqkv: &[f32], d0: &[f32], p: usize) -> f32 {
    let inc: Vec<f32> = part(dqkv, p)
        .iter()
        .zip(part(d0, p))
        .map(|(a, b)| a - b)
        .collect();
    max_abs(&inc)
}

/// The run from `d0` equals the run from zeros plus d0, up to the final addition's rounding
/// (an ulp of the larger of the sum and the increment): the op accumulates, and only once.
fn assert_accumulates<A: Storage>(
    dev: &Device,
    from_d0: &[f32],
    d0: &[f32],
    dout: &[f32],
    qkv: &[A],
    att: &[A],
) {
    let from_zero = gpu_backward(dev, &vec![0.0; d0.len()], dout, qkv, att).dqkv;
    let want: Vec<f32> = from_zero.iter().zip(d0).map(|(g, d)| g + d).collect();
    let scale = max_abs(&from_zero).max(1.0);
    assert_close(
        "dqkv accumulates onto d0",
        from_d0,
        &want,
        1e-6,
        1e-6 * scale,
    );
}

#[test]
fn attention_f32_matches_the_cpu() {
    let Some(dev) = device_or_skip("attention_f32_matches_the_cpu") else {
        return;
    };
    let qkv = qkv_data();
    let (gpu, att) = gpu_forward::<f32>(&dev, &qkv);
    let cpu = cpu_forward(&qkv);
    let (rp, ap) = PRODUCT;
    assert_close("attention preatt", &gpu.preatt, &cpu.preatt, rp, ap);
    assert_close("attention att", &gpu.att, &cpu.att, ATT.0, ATT.1);
    assert_close("attention out", &gpu.out, &cpu.out, rp, ap);
    assert_causal("attention preatt", &gpu.preatt);
    assert_causal("attention att", &gpu.att);

    // The backward on the GPU's att, on both sides: identical inputs.
    let (dout, d0) = (data(BTC, 41), data(3 * BTC, 42));
    let gpu = gpu_backward::<f32>(&dev, &d0, &dout, &qkv, &att);
    let cpu = cpu_backward(&d0, &dout, &qkv, &att);
    assert_close("attention datt", &gpu.datt, &cpu.datt, rp, ap);
    assert_close("attention dpreatt", &gpu.dpreatt, &cpu.dpreatt, rp, ap);
    assert_close("attention dqkv", &gpu.dqkv, &cpu.dqkv, rp, ap);
    assert_causal("attention datt", &gpu.datt);
    assert_causal("attention dpreatt", &gpu.dpreatt);
    assert_accumulates(&dev, &gpu.dqkv, &d0, &dout, &qkv, &att);
}

#[test]
fn attention_bf16_matches_the_cpu_on_rounded_inputs() {
    let Some(dev) = device_or_skip("attention_bf16_matches_the_cpu_on_rounded_inputs") else {
        return;
    };
    let qkv = stored::<u16>(&qkv_data());
    let qkv_r = widen(&qkv);
    let (gpu, att) = gpu_forward::<u16>(&dev, &qkv);
    let cpu = cpu_forward(&qkv_r);
    let (rp, ap) = PRODUCT;
    assert_close("attention bf16 preatt", &gpu.preatt, &cpu.preatt, rp, ap);
    let (ra, aa) = after_one_rounding(ATT.0, ATT.1);
    assert_close("attention bf16 att", &gpu.att, &cpu.att, ra, aa);
    let out_scale = max_abs(&cpu.out);
    assert_close(
        "attention bf16 out",
        &gpu.out,
        &cpu.out,
        1e-2,
        1e-2 * out_scale,
    );
    assert_causal("attention bf16 preatt", &gpu.preatt);
    assert_causal("attention bf16 att", &gpu.att);

    // The GPU takes dout in fp32 and rounds it for its products; the CPU gets it rounded, and
    // the GPU's (bf16) att widened.
    let (dout, d0) = (data(BTC, 41), data(3 * BTC, 42));
    let gpu = gpu_backward::<u16>(&dev, &d0, &dout, &qkv, &att);
    let cpu = cpu_backward(&d0, &rounded(&dout), &qkv_r, &widen(&att));
    assert_close("attention bf16 datt", &gpu.datt, &cpu.datt, rp, ap);
    let (rd, ad) = after_one_rounding(rp, ap);
    assert_close("attention bf16 dpreatt", &gpu.dpreatt, &cpu.dpreatt, rd, ad);
    for (p, name) in ["dq", "dk", "dv"].iter().enumerate() {
        let what = format!("attention bf16 {name}");
        let (g, c) = (part(&gpu.dqkv, p), part(&cpu.dqkv, p));
        if p == 2 {
            assert_close(&what, &g, &c, rp, ap);
        } else {
            let scale = increment_scale(&cpu.dqkv, &d0, p);
            assert_close(&what, &g, &c, 1e-2, 1e-2 * scale);
        }
    }
    assert_causal("attention bf16 datt", &gpu.datt);
    assert_causal("attention bf16 dpreatt", &gpu.dpreatt);
    assert_accumulates(&dev, &gpu.dqkv, &d0, &dout, &qkv, &att);
}
