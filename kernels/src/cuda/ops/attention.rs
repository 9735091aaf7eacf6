//! attention.cu's softmaxes chained with the batched GEMMs of matmul.cu: causal multi-head
//! attention in the CPU's layouts (the recipe is at the top of attention.cu). The GEMMs read
//! q, k, v where they lie in qkv and write the heads where they belong in out and dqkv, so the
//! op needs no head-major copies and no scratch of its own.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, LaunchConfig, PushKernelArg};

use super::gemm::{Gemm, gemm};
use super::{Operand, grid_1d, grid_rows, int, launched, need};
use crate::cuda::{CudaError, Device};

/// The shape of one attention call, checked once, and the strided products over its heads.
struct Shape {
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    hs: usize,
}

/// Where the matrices of head (b, h) lie in a buffer: leading dimension and the (b, h) strides.
#[derive(Clone, Copy)]
struct Heads {
    ld: usize,
    strides: (usize, usize),
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
    fn dims(&self, op: &str) -> [i32; 4] {
        [self.b, self.t, self.nh, self.hs].map(|x| int(op, "a dimension", x))
    }
    /// q, k or v of a head in qkv [B, T, 3C] (from the part's first channel), and the same
    /// parts of dqkv.
    fn qkv(&self) -> Heads {
        Heads {
            ld: 3 * self.c,
            strides: (self.t * 3 * self.c, self.hs),
        }
    }
    /// A head's [T, HS] columns of a [B, T, C] buffer (out, dout).
    fn btc_heads(&self) -> Heads {
        Heads {
            ld: self.c,
            strides: (self.t * self.c, self.hs),
        }
    }
    /// A head's [T, T] matrix of a [B, NH, T, T] buffer.
    fn tt(&self) -> Heads {
        Heads {
            ld: self.t,
            strides: (self.nh * self.t * self.t, self.t * self.t),
        }
    }
    /// The B·NH products `C = alpha·op(A)·op(B) (+ C)` of [m, k]·[k, n] matrices laid out
    /// as `a`, `b`, `c` say.
    #[allow(clippy::too_many_arguments)] // one product: its transposes, shape and layouts
    fn bmm(
        &self,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        a: Heads,
        b: Heads,
        c: Heads,
        alpha: f32,
        accumulate: bool,
    ) -> Gemm {
        Gemm {
            ta,
            tb,
            m,
            n,
            k,
            lda: a.ld,
            ldb: b.ld,
            ldc: c.ld,
            sa: a.strides,
            sb: b.strides,
            sc: c.strides,
            outer: self.b,
            inner: self.nh,
            alpha,
            accumulate,
        }
    }
}

/// out [B, T, C] = causal attention over qkv [B, T, 3C]; saves preatt (the scaled scores, fp32)
/// and att (their softmax), both [B, NH, T, T] and 0 above the diagonal. All three
/// overwritten. `A` is the activations' storage (qkv, att, out).
#[allow(clippy::too_many_arguments)] // the op's contract: every buffer with its shape
pub fn attention_forward<A: Operand>(
    dev: &Device,
    out: &mut CudaViewMut<'_, A>,
    preatt: &mut CudaViewMut<'_, f32>,
    att: &mut CudaViewMut<'_, A>,
    qkv: &CudaView<'_, A>,
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
    let (q, k, v) = (qkv.slice(..), qkv.slice(c..), qkv.slice(2 * c..));
    let (qkv_h, tt, hs) = (sh.qkv(), sh.tt(), sh.hs);
    // preatt = q·kᵀ (the softmax scales it).
    let g = sh.bmm((false, true), (t, t, hs), qkv_h, qkv_h, tt, 1.0, false);
    gemm(dev, &g, preatt, &q, &k, None)?;
    softmax_forward(dev, preatt, att, &sh)?;
    // out = att·v, each head into its columns of out.
    let g = sh.bmm(
        (false, false),
        (t, hs, t),
        tt,
        qkv_h,
        sh.btc_heads(),
        1.0,
        false,
    );
    gemm(dev, &g, out, &att.as_view(), &v, None)
}

/// dqkv [B, T, 3C] += attention's gradient for dout [B, T, C], from the forward's qkv and att.
/// dpreatt and datt [B, NH, T, T] are scratch (overwritten). With bf16 activations the
/// products take dout rounded into `slot` (B·T·C elements; unused for fp32).
#[allow(clippy::too_many_arguments)] // the op's contract: every buffer with its shape
pub fn attention_backward<A: Operand>(
    dev: &Device,
    dqkv: &mut CudaViewMut<'_, f32>,
    dpreatt: &mut CudaViewMut<'_, A>,
    datt: &mut CudaViewMut<'_, f32>,
    dout: &CudaView<'_, f32>,
    qkv: &CudaView<'_, A>,
    att: &CudaView<'_, A>,
    slot: &mut CudaSlice<A>,
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
    let (q, k, v) = (qkv.slice(..), qkv.slice(c..), qkv.slice(2 * c..));
    let (qkv_h, tt, btc_h, hs, scale) = (sh.qkv(), sh.tt(), sh.btc_heads(), sh.hs, sh.scale());
    let dout = A::from_f32(dev, dout.slice(..sh.btc()), slot)?;
    // datt = dout·vᵀ
    let g = sh.bmm((false, true), (t, t, hs), btc_h, qkv_h, tt, 1.0, false);
    gemm(dev, &g, datt, &dout, &v, None)?;
    // dv += attᵀ·dout
    let g = sh.bmm((true, false), (t, hs, t), tt, btc_h, qkv_h, 1.0, true);
    gemm(dev, &g, &mut dqkv.slice_mut(2 * c..), att, &dout, None)?;
    // The softmax backward gives the gradient of the scaled scores (scale 1, as the CPU);
    // the scale then goes into the two products, as the CPU's sgemm calls do.
    softmax_backward(dev, dpreatt, datt, att, &sh)?;
    let dpre = dpreatt.as_view();
    // dq += scale·dpreatt·k
    let g = sh.bmm((false, false), (t, hs, t), tt, qkv_h, qkv_h, scale, true);
    gemm(dev, &g, &mut dqkv.slice_mut(..), &dpre, &k, None)?;
    // dk += scale·dpreattᵀ·q
    let g = sh.bmm((true, false), (t, hs, t), tt, qkv_h, qkv_h, scale, true);
    gemm(dev, &g, &mut dqkv.slice_mut(c..), &dpre, &q, None)
}

fn softmax_forward<A: Operand>(
    dev: &Device,
    preatt: &mut CudaViewMut<'_, f32>,
    att: &mut CudaViewMut<'_, A>,
    sh: &Shape,
) -> Result<(), CudaError> {
    let kernel = format!("attention_softmax_forward{}", A::SUFFIX);
    let f = dev.function("attention", &kernel)?;
    let (rows, t, scale) = (
        int(&kernel, "rows", sh.rows()),
        int(&kernel, "T", sh.t),
        sh.scale(),
    );
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(preatt).arg(att).arg(&rows).arg(&t).arg(&scale);
    // SAFETY: attention_softmax_forward{,_bf16}(preatt [B, NH, T, T] f32, att [B, NH, T, T] A,
    // rows = B·NH·T, T: i32, scale: f32), the instance for A: both hold B·NH·T·T elements
    // (checked by the caller); one block of whole warps per row.
    launched(&kernel, unsafe {
        launch.launch(grid_rows(sh.rows(), sh.t))
    })
}

fn softmax_backward<A: Operand>(
    dev: &Device,
    dpreatt: &mut CudaViewMut<'_, A>,
    datt: &mut CudaViewMut<'_, f32>,
    att: &CudaView<'_, A>,
    sh: &Shape,
) -> Result<(), CudaError> {
    let kernel = format!("attention_softmax_backward{}", A::SUFFIX);
    let f = dev.function("attention", &kernel)?;
    let (rows, t, one) = (
        int(&kernel, "rows", sh.rows()),
        int(&kernel, "T", sh.t),
        1.0f32,
    );
    let mut launch = dev.stream.launch_builder(&f);
    launch
        .arg(dpreatt)
        .arg(datt)
        .arg(att)
        .arg(&rows)
        .arg(&t)
        .arg(&one);
    // SAFETY: attention_softmax_backward{,_bf16}(dpreatt [B, NH, T, T] A, datt [B, NH, T, T]
    // f32, att [B, NH, T, T] A, rows = B·NH·T, T: i32, scale: f32), the instance for A: all
    // three hold B·NH·T·T elements (checked by the caller); one block of whole warps per row.
    launched(&kernel, unsafe {
        launch.launch(grid_rows(sh.rows(), sh.t))
    })
}

/// Whether flash attention has an instance for heads of `hs` channels (and the shape keeps
/// its 16-byte row loads aligned).
pub fn flash_attention_supported(c: usize, nh: usize) -> bool {
    nh > 0 && c.is_multiple_of(nh) && matches!(c / nh, 16 | 32 | 64)
}

/// Queries or keys per flash-attention block (FA_TILE in attention.cu).
const FA_TILE: usize = 64;

/// The flash kernels' launch: 128 threads per 64 queries (or keys) of one (b, h).
fn flash_grid(op: &str, sh: &Shape) -> LaunchConfig {
    let bnh = sh.b * sh.nh;
    assert!(bnh <= 65_535, "{op}: B·NH = {bnh} exceeds grid.y");
    LaunchConfig {
        grid_dim: (sh.t.div_ceil(FA_TILE).max(1) as u32, bnh.max(1) as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The flash shape checks: bf16 activations, a supported head size, 16-byte aligned rows.
fn flash_shape<A: Operand>(op: &str, dev: &Device, rows: &[&CudaView<'_, A>], sh: &Shape) {
    assert!(
        A::BYTES == 2,
        "{op}: flash attention needs bf16 activations"
    );
    assert!(
        flash_attention_supported(sh.c, sh.nh),
        "{op}: no flash instance for heads of {} channels (16, 32 or 64)",
        sh.hs
    );
    for v in rows {
        let (ptr, _guard) = v.device_ptr(&dev.stream);
        assert!(ptr % 16 == 0, "{op}: a buffer is not 16-byte aligned");
    }
}

/// out [B, T, C] = causal attention over qkv [B, T, 3C] without the [B, NH, T, T] matrices,
/// saving lse [B, NH, T] (each query's log-sum-exp of its scaled scores) for the backward.
/// bf16 activations only, heads of 16, 32 or 64 channels ([`flash_attention_supported`]).
#[allow(clippy::too_many_arguments)] // the op's contract: every buffer with its shape
pub fn flash_attention_forward<A: Operand>(
    dev: &Device,
    out: &mut CudaViewMut<'_, A>,
    lse: &mut CudaViewMut<'_, f32>,
    qkv: &CudaView<'_, A>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<(), CudaError> {
    const OP: &str = "flash_attention_forward";
    let sh = Shape::new(OP, b, t, c, nh);
    need(OP, "out", out.len(), sh.btc());
    need(OP, "lse", lse.len(), sh.rows());
    need(OP, "qkv", qkv.len(), 3 * sh.btc());
    flash_shape(OP, dev, &[qkv], &sh);
    let kernel = format!("{OP}_hs{}", sh.hs);
    let f = dev.function("attention", &kernel)?;
    let [bi, ti, nhi, _] = sh.dims(OP);
    let scale = sh.scale();
    let mut launch = dev.stream.launch_builder(&f);
    launch
        .arg(out)
        .arg(lse)
        .arg(qkv)
        .arg(&bi)
        .arg(&ti)
        .arg(&nhi)
        .arg(&scale);
    // SAFETY: flash_attention_forward_hs{HS}(out [B, T, C] bf16, lse [B, NH, T] f32,
    // qkv [B, T, 3C] bf16, B, T, NH: i32, scale: f32) with HS = C/NH the instance's: views of
    // at least those sizes (checked above), bf16 as `flash_shape` checked, qkv 16-byte aligned
    // for the kernel's row loads (C a multiple of 16 keeps every row so); the grid is the one
    // the kernel is written for (`flash_grid`), rows past T are guarded inside.
    launched(&kernel, unsafe { launch.launch(flash_grid(OP, &sh)) })
}

/// dqkv [B, T, 3C] += flash attention's gradient for dout [B, T, C], from the forward's qkv,
/// out and lse; `delta` [B, NH, T] is scratch, and dout is rounded into `slot` (B·T·C
/// elements) for the products.
#[allow(clippy::too_many_arguments)] // the op's contract: every buffer with its shape
pub fn flash_attention_backward<A: Operand>(
    dev: &Device,
    dqkv: &mut CudaViewMut<'_, f32>,
    delta: &mut CudaViewMut<'_, f32>,
    dout: &CudaView<'_, f32>,
    qkv: &CudaView<'_, A>,
    out: &CudaView<'_, A>,
    lse: &CudaView<'_, f32>,
    slot: &mut CudaSlice<A>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<(), CudaError> {
    const OP: &str = "flash_attention_backward";
    let sh = Shape::new(OP, b, t, c, nh);
    need(OP, "dqkv", dqkv.len(), 3 * sh.btc());
    need(OP, "delta", delta.len(), sh.rows());
    need(OP, "dout", dout.len(), sh.btc());
    need(OP, "qkv", qkv.len(), 3 * sh.btc());
    need(OP, "out", out.len(), sh.btc());
    need(OP, "lse", lse.len(), sh.rows());
    assert!(
        A::BYTES == 2,
        "{OP}: flash attention needs bf16 activations"
    );
    let [bi, ti, nhi, hsi] = sh.dims(OP);
    let scale = sh.scale();

    let dout16 = A::from_f32(dev, dout.slice(..sh.btc()), slot)?;
    flash_shape(OP, dev, &[qkv, &dout16], &sh);

    const DELTA: &str = "flash_attention_backward_delta";
    let f = dev.function("attention", DELTA)?;
    let mut launch = dev.stream.launch_builder(&f);
    launch
        .arg(&mut *delta)
        .arg(&dout16)
        .arg(out)
        .arg(&bi)
        .arg(&ti)
        .arg(&nhi)
        .arg(&hsi);
    // SAFETY: flash_attention_backward_delta(delta [B, NH, T] f32, dout [B, T, C] bf16,
    // out [B, T, C] bf16, B, T, NH, HS: i32): views of at least those sizes, both bf16
    // (checked above); grid-stride over B·NH·T.
    launched(DELTA, unsafe { launch.launch(grid_1d(sh.rows())) })?;

    let delta = delta.as_view();
    for pass in ["dkv", "dq"] {
        let kernel = format!("flash_attention_backward_{pass}_hs{}", sh.hs);
        let f = dev.function("attention", &kernel)?;
        let mut launch = dev.stream.launch_builder(&f);
        launch
            .arg(&mut *dqkv)
            .arg(&dout16)
            .arg(qkv)
            .arg(lse)
            .arg(&delta)
            .arg(&bi)
            .arg(&ti)
            .arg(&nhi)
            .arg(&scale);
        // SAFETY: flash_attention_backward_{dkv,dq}_hs{HS}(dqkv [B, T, 3C] f32, dout
        // [B, T, C] bf16, qkv [B, T, 3C] bf16, lse, delta [B, NH, T] f32, B, T, NH: i32,
        // scale: f32): views of at least those sizes (checked above; dout16 is the B·T·C
        // rounded slot), bf16, a supported HS and 16-byte alignment checked by `flash_shape`;
        // the grid is the kernels' (`flash_grid`). The two kernels add into disjoint parts of
        // dqkv (k, v and q), one thread per element.
        launched(&kernel, unsafe { launch.launch(flash_grid(OP, &sh)) })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strided products reach exactly the ends of their buffers: the last head's last row
    /// of v ends at the end of qkv, and of a [B, T, C] buffer at its end.
    #[test]
    fn head_products_stay_inside_their_buffers() {
        let (b, t, c, nh) = (2, 5, 12, 3);
        let sh = Shape::new("test", b, t, c, nh);
        let (qkv, tt, btc) = (sh.qkv(), sh.tt(), sh.btc_heads());
        let g = sh.bmm((false, true), (t, t, sh.hs), qkv, qkv, tt, 1.0, false);
        let (ea, eb, ec) = g.extents();
        assert_eq!(ea, 3 * b * t * c - 2 * c, "q read from qkv[0..]");
        assert_eq!(
            eb,
            3 * b * t * c - 2 * c,
            "k read from qkv[C..]: ends at 3BTC - C"
        );
        assert_eq!(ec, sh.att());
        let g = sh.bmm((false, false), (t, sh.hs, t), tt, qkv, btc, 1.0, false);
        let (_, eb, ec) = g.extents();
        assert_eq!(
            eb,
            3 * b * t * c - 2 * c,
            "v read from qkv[2C..]: ends at 3BTC"
        );
        assert_eq!(ec, b * t * c);
    }
}
