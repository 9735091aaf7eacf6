//! `ops::flash_attention_forward` / `ops::flash_attention_backward` (the flash kernels at the
//! bottom of attention.cu, bf16 activations) against the CPU reference `attention_forward` /
//! `attention_backward` run on the same bf16 values: qkv rounded on the host, and dout rounded
//! for the CPU as the op rounds it for its products. The shapes cover heads of 16, 32 and 64
//! channels, T below one tile of 64 keys, exactly one, and ragged over two to four tiles (the
//! causal diagonal inside a tile, rows and keys past T in the last one), B·NH > 1 and an odd NH.
//! qkv lies in [-2, 2), so the scaled scores have a spread of about 1.3 and the softmax is far
//! from uniform: a wrong mask, a missing scale or a tile edge off by one moves the results by
//! many times the tolerances below (the simulation further down). Every output and scratch
//! buffer starts as NaN (the op must write all of it), and dqkv starts from non-zero data d0
//! (the op accumulates into it): the checks compare dqkv − d0 with the CPU's increment.
//!
//! Tolerances. A bf16 rounding moves a value by at most 2^-8 of itself (`BF16_ROUNDING`); the
//! score products Q·Kᵀ, dO·Vᵀ, K·Qᵀ, V·dOᵀ multiply identical bf16 values on both sides (exact
//! in fp32) and accumulate in fp32, so the differences come from the roundings the kernels add:
//!   - lse = m + log(l) is fp32 throughout (scores summed in fp32 over ≤ 64 products of size
//!     ≤ 4, exp and log in fp32): ~1e-6 for lse of O(10); checked at 1e-4 absolute against the
//!     log-sum-exp (f64) of the CPU's scaled scores over each row's causal keys.
//!   - out = Σ bf16(p)·v / l, with p rounded before P·V (≤ 2^-8·Σ p·|v| / l ≤ 2^-8·max|v|) and
//!     out stored as bf16 (≤ 2^-8·|out|): rtol 1e-2, atol 1e-2·max|out| (max|out| ≈ max|v|).
//!   - dv = Σ_q bf16(p)·dout: the rounded Pᵀ, ≤ 2^-8 of each term with random signs: atol
//!     2e-2·(dv's scale). dq = scale·Σ_k bf16(dS)·k and dk = scale·Σ_q bf16(dS)·q round dS
//!     (≤ 2^-8 per term), and dS = P∘(dP − delta) carries delta's error: delta = dout·out takes
//!     the bf16 out (a rounding of Σ P·v) where dP sums the products itself, which shifts a
//!     whole row of dS the same way. These errors add up over as many terms as keys (queries) and grow
//!     with T while the gradients do not: atol 3e-2·(the part's scale). A part's scale is its
//!     largest |increment| on the CPU.
//!
//! Host simulation (a throwaway program, since deleted): the kernels' arithmetic (64-key tiles,
//! online softmax with rescaling, bf16 roundings of P, dS, out and dout where the kernels do
//! them, fp32 elsewhere) against this CPU reference, for each shape here over 25 seeds (the
//! test's among them; delta then still took the fp32 dout, a larger shift than the rounded
//! dout it takes now). Largest error as a fraction of the tolerance: out 0.19, lse 0.005, dq
//! 0.23, dk 0.19, dv 0.11, T = 1's dq and dk 0.05 of their bound: a margin of 4× or more.
//! Seeded bugs exceed the tolerances, on the shapes they affect, by: diagonal masked out (out
//! ≥ 96×, lse inf), one future key let in (out ≥ 56×), no scale in the scores (out ≥ 90×) or
//! in dk (dk ≥ 99×), the accumulator not rescaled between key tiles (out ≥ 54×), dq skipping
//! its diagonal tile (dq ≥ 8.9×).
//!
//! T = 1 is the exception: one key per query, att ≡ 1, so the CPU's dq and dk are exactly 0
//! and the kernels' are rounding noise, checked against its bound instead (see
//! `assert_single_key_noise`).

mod gpu_common;

use convoy_kernels::attention::{attention_backward, attention_forward};
use convoy_kernels::cuda::{Device, ops};
use gpu_common::{
    BF16_ROUNDING, assert_close, data, device_or_skip, max_abs, rounded, stored, widen,
};

/// A bf16 NaN: the garbage every bf16 buffer starts as, so that an entry the op fails to write
/// shows.
const BF16_NAN: u16 = 0x7fc0;

/// Tolerances, as fractions of each quantity's scale (module comment).
const OUT: (f32, f32) = (1e-2, 1e-2);
const LSE_ATOL: f32 = 1e-4;
const DQ_DK: f32 = 3e-2;
const DV: f32 = 2e-2;

/// One attention call's shape: qkv [B, T, 3C], NH heads of HS = C/NH channels.
#[derive(Clone, Copy, Debug)]
struct Shape {
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
}

impl Shape {
    const fn new(b: usize, t: usize, c: usize, nh: usize) -> Shape {
        Shape { b, t, c, nh }
    }
    fn hs(&self) -> usize {
        self.c / self.nh
    }
    fn btc(&self) -> usize {
        self.b * self.t * self.c
    }
    /// B·NH·T: the rows of lse and delta.
    fn rows(&self) -> usize {
        self.b * self.nh * self.t
    }
    fn scale(&self) -> f32 {
        1.0 / (self.hs() as f32).sqrt()
    }
}

/// HS 16 over two tiles (the second ragged), HS 32 over three, HS 64 in exactly one tile, a
/// single position, and HS 64 with an odd NH over four tiles.
const SHAPES: [Shape; 5] = [
    Shape::new(2, 100, 64, 4),
    Shape::new(1, 130, 64, 2),
    Shape::new(2, 64, 128, 2),
    Shape::new(1, 1, 64, 1),
    Shape::new(1, 200, 192, 3),
];

/// One call's inputs: qkv [B, T, 3C] bf16 in [-2, 2), dout [B, T, C] fp32 in [-1, 1), and the
/// start d0 of dqkv [B, T, 3C] in [-1, 1).
struct Inputs {
    qkv: Vec<u16>,
    dout: Vec<f32>,
    d0: Vec<f32>,
}

fn inputs(sh: Shape, seed: u64) -> Inputs {
    let qkv: Vec<f32> = data(3 * sh.btc(), seed).iter().map(|v| 2.0 * v).collect();
    Inputs {
        qkv: stored::<u16>(&qkv),
        dout: data(sh.btc(), seed + 1),
        d0: data(3 * sh.btc(), seed + 2),
    }
}

/// The op's results as stored: out (bf16 bits), lse and dqkv (from d0).
struct Flash {
    out: Vec<u16>,
    lse: Vec<f32>,
    dqkv: Vec<f32>,
}

/// `ops::flash_attention_forward` then `ops::flash_attention_backward` on `inp`: out, lse,
/// delta and the rounding slot start as NaN, dqkv as d0.
fn gpu_flash(dev: &Device, sh: Shape, inp: &Inputs) -> Flash {
    let s = &dev.stream;
    let Shape { b, t, c, nh } = sh;
    let qkv_d = s.clone_htod(&inp.qkv).expect("upload");
    let mut out_d = s.clone_htod(&vec![BF16_NAN; sh.btc()]).expect("upload");
    let mut lse_d = s.clone_htod(&vec![f32::NAN; sh.rows()]).expect("upload");
    ops::flash_attention_forward::<u16>(
        dev,
        &mut out_d.as_view_mut(),
        &mut lse_d.as_view_mut(),
        &qkv_d.as_view(),
        b,
        t,
        c,
        nh,
    )
    .expect("flash_attention_forward");

    let mut dqkv_d = s.clone_htod(&inp.d0).expect("upload");
    let mut delta_d = s.clone_htod(&vec![f32::NAN; sh.rows()]).expect("upload");
    let dout_d = s.clone_htod(&inp.dout).expect("upload");
    let mut slot = s.clone_htod(&vec![BF16_NAN; sh.btc()]).expect("upload");
    ops::flash_attention_backward::<u16>(
        dev,
        &mut dqkv_d.as_view_mut(),
        &mut delta_d.as_view_mut(),
        &dout_d.as_view(),
        &qkv_d.as_view(),
        &out_d.as_view(),
        &lse_d.as_view(),
        &mut slot,
        b,
        t,
        c,
        nh,
    )
    .expect("flash_attention_backward");
    Flash {
        out: s.clone_dtoh(&out_d).expect("download"),
        lse: s.clone_dtoh(&lse_d).expect("download"),
        dqkv: s.clone_dtoh(&dqkv_d).expect("download"),
    }
}

/// The CPU reference on the op's bf16 values: out, lse [B, NH, T] and dqkv's increment.
struct Reference {
    out: Vec<f32>,
    lse: Vec<f32>,
    dqkv: Vec<f32>,
}

/// `attention_forward` on qkv (bf16 values), lse from its scaled scores, and
/// `attention_backward` from zeros on the CPU's att and dout rounded to bf16.
fn cpu_reference(sh: Shape, qkv: &[f32], dout: &[f32]) -> Reference {
    let Shape { b, t, c, nh } = sh;
    let tt = b * nh * t * t;
    let (mut out, mut preatt, mut att) = (vec![0.0; sh.btc()], vec![0.0; tt], vec![0.0; tt]);
    attention_forward(&mut out, &mut preatt, &mut att, qkv, b, t, c, nh);
    // Row r of preatt [B·NH·T, T] is query r % T; its keys 0..=r % T.
    let lse = preatt
        .chunks_exact(t)
        .enumerate()
        .map(|(r, row)| {
            let s = &row[..=r % t];
            let m = s
                .iter()
                .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
            let sum: f64 = s.iter().map(|&x| (f64::from(x) - m).exp()).sum();
            (m + sum.ln()) as f32
        })
        .collect();
    let mut dqkv = vec![0.0; 3 * sh.btc()];
    let (mut dpreatt, mut datt) = (vec![0.0; tt], vec![0.0; tt]);
    attention_backward(
        &mut dqkv,
        &mut dpreatt,
        &mut datt,
        &rounded(dout),
        qkv,
        &att,
        b,
        t,
        c,
        nh,
    );
    Reference { out, lse, dqkv }
}

/// Part `p` (0 = q, 1 = k, 2 = v) of a [B, T, 3C] buffer, as [B, T, C].
fn part(x: &[f32], c: usize, p: usize) -> Vec<f32> {
    x.chunks_exact(3 * c)
        .flat_map(|row| &row[p * c..(p + 1) * c])
        .copied()
        .collect()
}

/// With one key per query (T = 1) P ≡ 1, out = v exactly, and the CPU's dq, dk are 0. The
/// kernels' dS = dP − delta = dout_r·v − dout_r·out is, with out = v, only the two fp32 sums'
/// different orders: far below the bound written for a delta from the unrounded dout,
/// |dS| ≤ 2^-8·Σ_c |dout_c·v_c| + ~HS·2^-24 of it, which stays the check; and one
/// more rounding (bf16(dS)) before dq_c = scale·bf16(dS)·k_c, dk_c = scale·bf16(dS)·q_c. So
/// |increment| ≤ scale·|k_c| (or |q_c|)·2^-7·Σ_c |dout_c·v_c| with about 2× to spare, plus
/// the rounding of d0 + increment (≤ 2^-23·|d0|). (The simulation's largest was 0.05 of it; a
/// dS that missed the delta term would be dP itself, typically ten times the bound or more.)
fn assert_single_key_noise(sh: Shape, qkv: &[f32], dout: &[f32], inc: &[f32], d0: &[f32]) {
    let (c, hs, scale) = (sh.c, sh.hs(), sh.scale());
    for (pos, (row, inc_row)) in qkv
        .chunks_exact(3 * c)
        .zip(inc.chunks_exact(3 * c))
        .enumerate()
    {
        for h in 0..sh.nh {
            let head = |p: usize| &row[p * c + h * hs..p * c + (h + 1) * hs];
            let g = &dout[pos * c + h * hs..pos * c + (h + 1) * hs];
            let dot_abs: f32 = g.iter().zip(head(2)).map(|(a, v)| (a * v).abs()).sum();
            let ds_bound = 2.0 * BF16_ROUNDING * dot_abs;
            // dq pairs with k, dk with q.
            for (p, other, name) in [(0, 1, "dq"), (1, 0, "dk")] {
                for (i, &x) in head(other).iter().enumerate() {
                    let at = pos * 3 * c + p * c + h * hs + i;
                    let bound = scale * x.abs() * ds_bound + f32::EPSILON * d0[at].abs();
                    assert!(
                        inc_row[p * c + h * hs + i].abs() <= bound,
                        "{sh:?} {name}[position {pos}, head {h}, channel {i}]: {} with a single \
                         key, beyond its rounding noise {bound}",
                        inc_row[p * c + h * hs + i]
                    );
                }
            }
        }
    }
}

#[test]
fn flash_attention_matches_the_cpu_on_rounded_inputs() {
    let Some(dev) = device_or_skip("flash_attention_matches_the_cpu_on_rounded_inputs") else {
        return;
    };
    for (i, &sh) in SHAPES.iter().enumerate() {
        let inp = inputs(sh, 70 + 3 * i as u64);
        let qkv = widen(&inp.qkv);
        let gpu = gpu_flash(&dev, sh, &inp);
        let cpu = cpu_reference(sh, &qkv, &inp.dout);

        let out = widen(&gpu.out);
        let (ro, ao) = OUT;
        let out_scale = max_abs(&cpu.out);
        assert_close(
            &format!("{sh:?} flash out"),
            &out,
            &cpu.out,
            ro,
            ao * out_scale,
        );
        assert_close(
            &format!("{sh:?} flash lse"),
            &gpu.lse,
            &cpu.lse,
            0.0,
            LSE_ATOL,
        );

        // dqkv started at d0: the op's increment against the CPU's (from zeros).
        let inc: Vec<f32> = gpu.dqkv.iter().zip(&inp.d0).map(|(g, d)| g - d).collect();
        for (p, name) in ["dq", "dk", "dv"].iter().enumerate() {
            if sh.t == 1 && p < 2 {
                continue; // checked below
            }
            let (g, c) = (part(&inc, sh.c, p), part(&cpu.dqkv, sh.c, p));
            let tol = if p == 2 { DV } else { DQ_DK };
            let scale = max_abs(&c);
            assert_close(&format!("{sh:?} flash {name}"), &g, &c, 0.0, tol * scale);
        }
        if sh.t == 1 {
            assert_single_key_noise(sh, &qkv, &inp.dout, &inc, &inp.d0);
        }
    }
}

/// No atomics and a fixed order of every sum: two runs on the same inputs give the same bits.
#[test]
fn flash_attention_is_deterministic() {
    let Some(dev) = device_or_skip("flash_attention_is_deterministic") else {
        return;
    };
    for sh in [SHAPES[1], SHAPES[4]] {
        let inp = inputs(sh, 90);
        let (a, b) = (gpu_flash(&dev, sh, &inp), gpu_flash(&dev, sh, &inp));
        assert!(a.out == b.out, "{sh:?}: flash out differs between runs");
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&a.lse) == bits(&b.lse),
            "{sh:?}: flash lse differs between runs"
        );
        assert!(
            bits(&a.dqkv) == bits(&b.dqkv),
            "{sh:?}: flash dqkv differs between runs"
        );
    }
}

/// The flash kernels have instances for heads of 16, 32 and 64 channels only.
#[test]
fn flash_attention_supports_heads_of_16_32_and_64_only() {
    for (c, nh) in [(64, 4), (64, 2), (128, 2), (64, 1), (192, 3), (768, 12)] {
        assert!(
            ops::flash_attention_supported(c, nh),
            "C = {c}, NH = {nh} (HS = {}) must be supported",
            c / nh
        );
    }
    // HS = 12, 48, 128 (and 8, 96), no heads, C not a multiple of NH.
    for (c, nh) in [
        (48, 4),
        (96, 2),
        (128, 1),
        (64, 8),
        (192, 2),
        (64, 0),
        (100, 3),
    ] {
        assert!(
            !ops::flash_attention_supported(c, nh),
            "C = {c}, NH = {nh} must not be supported"
        );
    }
}
