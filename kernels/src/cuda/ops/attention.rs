//! attention.cu chained with the batched GEMMs of matmul.cu: causal multi-head attention in
//! the CPU's layouts (the recipe is at the top of attention.cu).

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchArgs, PushKernelArg};

use super::gemm::{Gemm, gemm, to_bf16};
use super::{alloc_zeros, grid_1d, grid_rows, int, launched, need};
use crate::cuda::{CudaError, Device};

/// Head-major scratch for one layer's attention: seven [B, NH, T, HS] buffers (q, k, v, the
/// weighted values and, in the backward, their gradients), reused by every layer. The
/// backward recomputes q, k, v from the saved qkv instead of keeping them per layer. With
/// bf16 products, two more buffers hold the rounded operands of the product in flight.
pub struct AttentionScratch {
    parts: [CudaSlice<f32>; 7],
    /// B·T·C, the size of each part.
    part: usize,
    /// The rounded A operand (up to [B, NH, T, T]) and B operand ([B, NH, T, HS]) of a
    /// batched product on the tensor cores.
    bf16: Option<[CudaSlice<u16>; 2]>,
}

impl AttentionScratch {
    /// Scratch for batches of up to `b·t` positions of width `c` in `nh` heads; with `bf16`
    /// the batched products take bf16 operands (fp32 accumulation and outputs).
    pub fn new(
        dev: &Device,
        (b, t, c, nh): (usize, usize, usize, usize),
        bf16: bool,
    ) -> Result<Self, CudaError> {
        let part = b * t * c;
        let alloc = |n: usize| alloc_zeros::<f32>(dev, n, "attention scratch");
        let bf16 = if bf16 {
            let rounded = |n: usize| alloc_zeros::<u16>(dev, n, "attention bf16 operands");
            Some([rounded(part.max(b * nh * t * t))?, rounded(part)?])
        } else {
            None
        };
        Ok(AttentionScratch {
            parts: [
                alloc(part)?,
                alloc(part)?,
                alloc(part)?,
                alloc(part)?,
                alloc(part)?,
                alloc(part)?,
                alloc(part)?,
            ],
            part,
            bf16,
        })
    }

    /// Bytes a scratch for (B, T, C, NH) takes: what it costs in memory.
    pub fn bytes((b, t, c, nh): (usize, usize, usize, usize), bf16: bool) -> u64 {
        let part = b * t * c;
        let rounded = if bf16 {
            2 * (part.max(b * nh * t * t) + part)
        } else {
            0
        };
        (4 * 7 * part + rounded) as u64
    }

    /// The seven parts, each cut to B·T·C ≤ the capacity, and the bf16 operand slots.
    fn split(
        &mut self,
        btc: usize,
    ) -> ([CudaViewMut<'_, f32>; 7], Option<&mut [CudaSlice<u16>; 2]>) {
        assert!(
            btc <= self.part,
            "attention: scratch for {} values per part, the batch needs {btc}",
            self.part
        );
        (
            self.parts.each_mut().map(|p| p.slice_mut(..btc)),
            self.bf16.as_mut(),
        )
    }
}

/// One batched product of attention: fp32, or with `bf16` slots its two operands rounded into
/// them first and the product on the tensor cores (fp32 accumulation and output).
fn product(
    dev: &Device,
    g: &Gemm,
    c: &mut CudaViewMut<'_, f32>,
    a: &CudaView<'_, f32>,
    b: &CudaView<'_, f32>,
    bf16: Option<&mut [CudaSlice<u16>; 2]>,
) -> Result<(), CudaError> {
    let Some([a16, b16]) = bf16 else {
        return gemm::<f32>(dev, g, c, a, b, None);
    };
    let (ea, eb, _) = g.extents();
    to_bf16(dev, &mut a16.slice_mut(..ea), &a.slice(..ea), ea)?;
    to_bf16(dev, &mut b16.slice_mut(..eb), &b.slice(..eb), eb)?;
    gemm::<u16>(dev, g, c, &a16.slice(..ea), &b16.slice(..eb), None)
}

/// The shape of one attention call, checked once.
struct Shape {
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    hs: usize,
}

impl Shape {
    fn new(op: &str, b: usize, t: usize, c: usize, nh: usize) -> Shape {
        assert!(
            nh > 0 && c.is_multiple_of(nh),
            "{op}: C = {c} is not a multiple of NH = {nh}"
        );
        Shape {
            b,
            t,
            c,
            nh,
            hs: c / nh,
        }
    }
    fn btc(&self) -> usize {
        self.b * self.t * self.c
    }
    fn att(&self) -> usize {
        self.b * self.nh * self.t * self.t
    }
    fn rows(&self) -> usize {
        self.b * self.nh * self.t
    }
    fn scale(&self) -> f32 {
        1.0 / (self.hs as f32).sqrt()
    }
    /// B·NH products of [m, k]·[k, n] matrices stored one after another.
    fn bmm(&self, ta: bool, tb: bool, m: usize, n: usize, k: usize, alpha: f32) -> Gemm {
        Gemm {
            alpha,
            ..Gemm::batched(ta, tb, m, n, k, self.b * self.nh)
        }
    }
    fn dims(&self, op: &str) -> [i32; 4] {
        [self.b, self.t, self.nh, self.hs].map(|x| int(op, "a dimension", x))
    }
}

/// out [B, T, C] = causal attention over qkv [B, T, 3C]; saves preatt (the scaled scores) and
/// att (their softmax), both [B, NH, T, T] and 0 above the diagonal. All three overwritten.
#[allow(clippy::too_many_arguments)] // the op's contract: every buffer with its shape
pub fn attention_forward(
    dev: &Device,
    out: &mut CudaViewMut<'_, f32>,
    preatt: &mut CudaViewMut<'_, f32>,
    att: &mut CudaViewMut<'_, f32>,
    qkv: &CudaView<'_, f32>,
    scratch: &mut AttentionScratch,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<(), CudaError> {
    const OP: &str = "attention_forward";
    let sh = Shape::new(OP, b, t, c, nh);
    need(OP, "out", out.len(), sh.btc());
    need(OP, "preatt", preatt.len(), sh.att());
    need(OP, "att", att.len(), sh.att());
    need(OP, "qkv", qkv.len(), 3 * sh.btc());
    let ([mut q, mut k, mut v, mut vaccum, ..], mut bf16) = scratch.split(sh.btc());
    permute(dev, &mut q, &mut k, &mut v, qkv, &sh)?;
    let hs = sh.hs;
    product(
        dev,
        &sh.bmm(false, true, t, t, hs, 1.0),
        preatt,
        &q.as_view(),
        &k.as_view(),
        bf16.as_deref_mut(),
    )?;
    softmax_forward(dev, preatt, att, &sh)?;
    product(
        dev,
        &sh.bmm(false, false, t, hs, t, 1.0),
        &mut vaccum,
        &att.as_view(),
        &v.as_view(),
        bf16,
    )?;
    unpermute(dev, out, &vaccum.as_view(), &sh)
}

/// dqkv [B, T, 3C] += attention's gradient for dout [B, T, C], from the forward's qkv and att.
/// dpreatt and datt [B, NH, T, T] are scratch (overwritten).
#[allow(clippy::too_many_arguments)] // the op's contract: every buffer with its shape
pub fn attention_backward(
    dev: &Device,
    dqkv: &mut CudaViewMut<'_, f32>,
    dpreatt: &mut CudaViewMut<'_, f32>,
    datt: &mut CudaViewMut<'_, f32>,
    dout: &CudaView<'_, f32>,
    qkv: &CudaView<'_, f32>,
    att: &CudaView<'_, f32>,
    scratch: &mut AttentionScratch,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<(), CudaError> {
    const OP: &str = "attention_backward";
    let sh = Shape::new(OP, b, t, c, nh);
    need(OP, "dqkv", dqkv.len(), 3 * sh.btc());
    need(OP, "dpreatt", dpreatt.len(), sh.att());
    need(OP, "datt", datt.len(), sh.att());
    need(OP, "dout", dout.len(), sh.btc());
    need(OP, "qkv", qkv.len(), 3 * sh.btc());
    need(OP, "att", att.len(), sh.att());
    let ([mut q, mut k, mut v, mut dvaccum, mut dq, mut dk, mut dv], mut bf16) =
        scratch.split(sh.btc());
    let (hs, scale) = (sh.hs, sh.scale());
    permute(dev, &mut q, &mut k, &mut v, qkv, &sh)?;
    unpermute_backward(dev, &mut dvaccum, dout, &sh)?;
    let dvacc = dvaccum.as_view();
    product(
        dev,
        &sh.bmm(false, true, t, t, hs, 1.0),
        datt,
        &dvacc,
        &v.as_view(),
        bf16.as_deref_mut(),
    )?;
    product(
        dev,
        &sh.bmm(true, false, t, hs, t, 1.0),
        &mut dv,
        att,
        &dvacc,
        bf16.as_deref_mut(),
    )?;
    // The softmax backward gives the gradient of the scaled scores (scale 1, as the CPU);
    // the scale then goes into the two products, as the CPU's sgemm calls do.
    softmax_backward(dev, dpreatt, datt, att, &sh)?;
    let dpre = dpreatt.as_view();
    product(
        dev,
        &sh.bmm(false, false, t, hs, t, scale),
        &mut dq,
        &dpre,
        &k.as_view(),
        bf16.as_deref_mut(),
    )?;
    product(
        dev,
        &sh.bmm(true, false, t, hs, t, scale),
        &mut dk,
        &dpre,
        &q.as_view(),
        bf16,
    )?;
    permute_backward(dev, dqkv, &dq.as_view(), &dk.as_view(), &dv.as_view(), &sh)
}

fn permute(
    dev: &Device,
    q: &mut CudaViewMut<'_, f32>,
    k: &mut CudaViewMut<'_, f32>,
    v: &mut CudaViewMut<'_, f32>,
    qkv: &CudaView<'_, f32>,
    sh: &Shape,
) -> Result<(), CudaError> {
    const K: &str = "attention_permute";
    let f = dev.function("attention", K)?;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(q).arg(k).arg(v).arg(qkv);
    layout(launch, K, sh)
}

fn permute_backward(
    dev: &Device,
    dqkv: &mut CudaViewMut<'_, f32>,
    dq: &CudaView<'_, f32>,
    dk: &CudaView<'_, f32>,
    dv: &CudaView<'_, f32>,
    sh: &Shape,
) -> Result<(), CudaError> {
    const K: &str = "attention_permute_backward";
    let f = dev.function("attention", K)?;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(dqkv).arg(dq).arg(dk).arg(dv);
    layout(launch, K, sh)
}

fn unpermute(
    dev: &Device,
    out: &mut CudaViewMut<'_, f32>,
    vaccum: &CudaView<'_, f32>,
    sh: &Shape,
) -> Result<(), CudaError> {
    const K: &str = "attention_unpermute";
    let f = dev.function("attention", K)?;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(out).arg(vaccum);
    layout(launch, K, sh)
}

fn unpermute_backward(
    dev: &Device,
    dvaccum: &mut CudaViewMut<'_, f32>,
    dout: &CudaView<'_, f32>,
    sh: &Shape,
) -> Result<(), CudaError> {
    const K: &str = "attention_unpermute_backward";
    let f = dev.function("attention", K)?;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(dvaccum).arg(dout);
    layout(launch, K, sh)
}

/// Finishes and launches one of attention.cu's four layout kernels, whose buffers the caller
/// pushed: B, T, NH, HS follow.
fn layout(launch: LaunchArgs<'_>, kernel: &str, sh: &Shape) -> Result<(), CudaError> {
    let dims = sh.dims(kernel);
    let mut launch = launch;
    for d in &dims {
        launch.arg(d);
    }
    // SAFETY: the layout kernels, with C = NH·HS:
    //   attention_permute(q, k, v [B, NH, T, HS], inp [B, T, 3C], B, T, NH, HS: i32)
    //   attention_permute_backward(dinp [B, T, 3C], dq, dk, dv [B, NH, T, HS], B, T, NH, HS)
    //   attention_unpermute(out [B, T, C], vaccum [B, NH, T, HS], B, T, NH, HS)
    //   attention_unpermute_backward(dvaccum [B, NH, T, HS], dout [B, T, C], B, T, NH, HS)
    // The callers push exactly those buffers in that order, after `attention_forward` and
    // `attention_backward` checked each against the shape (the scratch parts hold B·T·C
    // floats); grid-stride over the B·T·C elements, one thread per [B, NH, T, HS] element.
    launched(kernel, unsafe { launch.launch(grid_1d(sh.btc())) })
}

fn softmax_forward(
    dev: &Device,
    preatt: &mut CudaViewMut<'_, f32>,
    att: &mut CudaViewMut<'_, f32>,
    sh: &Shape,
) -> Result<(), CudaError> {
    const K: &str = "attention_softmax_forward";
    let f = dev.function("attention", K)?;
    let (rows, t, scale) = (int(K, "rows", sh.rows()), int(K, "T", sh.t), sh.scale());
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(preatt).arg(att).arg(&rows).arg(&t).arg(&scale);
    // SAFETY: attention_softmax_forward(preatt, att [B, NH, T, T], rows = B·NH·T, T: i32,
    // scale: f32): both hold B·NH·T·T floats (checked by the caller); one block of whole warps
    // per row.
    launched(K, unsafe { launch.launch(grid_rows(sh.rows(), sh.t)) })
}

fn softmax_backward(
    dev: &Device,
    dpreatt: &mut CudaViewMut<'_, f32>,
    datt: &mut CudaViewMut<'_, f32>,
    att: &CudaView<'_, f32>,
    sh: &Shape,
) -> Result<(), CudaError> {
    const K: &str = "attention_softmax_backward";
    let f = dev.function("attention", K)?;
    let (rows, t, one) = (int(K, "rows", sh.rows()), int(K, "T", sh.t), 1.0f32);
    let mut launch = dev.stream.launch_builder(&f);
    launch
        .arg(dpreatt)
        .arg(datt)
        .arg(att)
        .arg(&rows)
        .arg(&t)
        .arg(&one);
    // SAFETY: attention_softmax_backward(dpreatt, datt, att [B, NH, T, T], rows = B·NH·T,
    // T: i32, scale: f32): all three hold B·NH·T·T floats (checked by the caller); one block
    // of whole warps per row.
    launched(K, unsafe { launch.launch(grid_rows(sh.rows(), sh.t)) })
}
