//! matmul.cu: the linear layer (forward and its three backward products) and the generic
//! batched GEMM that attention chains between its kernels.

use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};

use super::{int, launched, need};
use crate::cuda::{CudaError, Device};

/// The side of the square tile of C one block computes, in every GEMM kernel.
const TILE: usize = 128;
/// Threads per GEMM block (8 warps).
const GEMM_THREADS: u32 = 256;

/// 256 threads per block, one 128×128 tile of the `[m, n]` output per block, the batch in
/// grid.z; static shared memory only.
fn gemm_grid(m: usize, n: usize, batch: usize) -> LaunchConfig {
    assert!(batch <= 65_535, "gemm: a batch of {batch} exceeds grid.z");
    LaunchConfig {
        grid_dim: (
            n.div_ceil(TILE).max(1) as u32,
            m.div_ceil(TILE).max(1) as u32,
            batch.max(1) as u32,
        ),
        block_dim: (GEMM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One generic (batched) GEMM call: `C[z] = alpha·op(A[z])·op(B[z]) + bias (+ C[z])` for
/// z = zo·inner + zi, where X[z] starts at X + zo·sx.0 + zi·sx.1 (X = A, B, C). op(A) is
/// `[m, k]`, stored `[m, lda]` or, transposed (`ta`), `[k, lda]`; likewise op(B) `[k, n]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub ta: bool,
    pub tb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub sa: (usize, usize),
    pub sb: (usize, usize),
    pub sc: (usize, usize),
    pub outer: usize,
    pub inner: usize,
    pub alpha: f32,
    pub accumulate: bool,
}

impl Gemm {
    /// One dense row-major product `[m, k]·[k, n]` (transposes as given), no batch.
    pub fn dense(ta: bool, tb: bool, m: usize, n: usize, k: usize) -> Gemm {
        Gemm {
            ta,
            tb,
            m,
            n,
            k,
            lda: if ta { m } else { k },
            ldb: if tb { k } else { n },
            ldc: n,
            sa: (0, 0),
            sb: (0, 0),
            sc: (0, 0),
            outer: 1,
            inner: 1,
            alpha: 1.0,
            accumulate: false,
        }
    }

    /// `batch` dense products one after another in each buffer (strides of a whole matrix).
    pub fn batched(ta: bool, tb: bool, m: usize, n: usize, k: usize, batch: usize) -> Gemm {
        Gemm {
            sa: (0, m * k),
            sb: (0, k * n),
            sc: (0, m * n),
            inner: batch,
            ..Gemm::dense(ta, tb, m, n, k)
        }
    }

    /// `gemm_{prefix}_{nn,nt,tn,tt}{suffix}`: prefix `f32` or `bf16`, suffix `""` or `_bf16out`.
    pub fn kernel(&self, prefix: &str, suffix: &str) -> String {
        let t = |b: bool| if b { 't' } else { 'n' };
        format!("gemm_{prefix}_{}{}{suffix}", t(self.ta), t(self.tb))
    }

    /// Elements of A, B and C the call touches from the pointers it is given (the smallest
    /// buffers it may be launched on).
    pub fn extents(&self) -> (usize, usize, usize) {
        let last = |s: (usize, usize), rows: usize, ld: usize, cols: usize| {
            (self.outer - 1) * s.0 + (self.inner - 1) * s.1 + (rows - 1) * ld + cols
        };
        let (ar, ac) = if self.ta {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let (br, bc) = if self.tb {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        (
            last(self.sa, ar.max(1), self.lda, ac),
            last(self.sb, br.max(1), self.ldb, bc),
            last(self.sc, self.m.max(1), self.ldc, self.n),
        )
    }

    /// Panics unless buffers of `a`, `b`, `c` (and `bias`) elements hold what this product
    /// reaches: the check that makes a launch of it sound.
    pub(super) fn check(&self, op: &str, a: usize, b: usize, c: usize, bias: Option<usize>) {
        let (ea, eb, ec) = self.extents();
        need(op, "A", a, ea);
        need(op, "B", b, eb);
        need(op, "C", c, ec);
        if let Some(bias) = bias {
            need(op, "bias", bias, self.n);
        }
    }

    /// The launch grid: one block per 128×128 tile of C, the batch in grid.z.
    pub fn grid(&self) -> LaunchConfig {
        gemm_grid(self.m, self.n, self.outer * self.inner)
    }
}

/// An element type of device buffers the kernels read and write: fp32, or bf16 as its `u16`
/// bit pattern. As a GEMM operand: fp32 on the CUDA cores, bf16 on the tensor cores, fp32
/// accumulation either way. As activations: the storage of the GPT's activations, which the
/// kernels widen to fp32 to compute with.
pub trait Operand: DeviceRepr + ValidAsZeroBits + Unpin + Sized + 'static {
    /// The GEMM kernels' name prefix in matmul.cu: `gemm_{PREFIX}_{nn,nt,tn,tt}`.
    const PREFIX: &'static str;
    /// The suffix of a GEMM writing its output as this type (`gemm_bf16_nt_bf16out`).
    const OUT: &'static str;
    /// The suffix of the other kernels' instance for activations of this type
    /// (`layernorm_forward_bf16`).
    const SUFFIX: &'static str;
    /// The same type as cuBLASLt names it.
    const LT_TYPE: cudarc::cublaslt::sys::cudaDataType;
    /// Bytes per element.
    const BYTES: usize = std::mem::size_of::<Self>();

    /// `x` [n] as an operand of this type: `x` itself for fp32; for bf16, `x` rounded into
    /// `slot` (which must hold n elements) and a view of it.
    fn from_f32<'a>(
        dev: &Device,
        x: CudaView<'a, f32>,
        slot: &'a mut CudaSlice<Self>,
    ) -> Result<CudaView<'a, Self>, CudaError>;

    /// A host value of this type as f32 (bf16 widens exactly).
    fn to_f32(self) -> f32;
}

impl Operand for f32 {
    const PREFIX: &'static str = "f32";
    const OUT: &'static str = "";
    const SUFFIX: &'static str = "";
    const LT_TYPE: cudarc::cublaslt::sys::cudaDataType =
        cudarc::cublaslt::sys::cudaDataType::CUDA_R_32F;

    fn from_f32<'a>(
        _: &Device,
        x: CudaView<'a, f32>,
        _: &'a mut CudaSlice<f32>,
    ) -> Result<CudaView<'a, f32>, CudaError> {
        Ok(x)
    }

    fn to_f32(self) -> f32 {
        self
    }
}

impl Operand for u16 {
    const PREFIX: &'static str = "bf16";
    const OUT: &'static str = "_bf16out";
    const SUFFIX: &'static str = "_bf16";
    const LT_TYPE: cudarc::cublaslt::sys::cudaDataType =
        cudarc::cublaslt::sys::cudaDataType::CUDA_R_16BF;

    fn from_f32<'a>(
        dev: &Device,
        x: CudaView<'a, f32>,
        slot: &'a mut CudaSlice<u16>,
    ) -> Result<CudaView<'a, u16>, CudaError> {
        let n = x.len();
        need("f32_to_bf16", "the bf16 slot", slot.len(), n);
        to_bf16(dev, &mut slot.slice_mut(..n), &x, n)?;
        Ok(slot.slice(..n))
    }

    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self) << 16)
    }
}

/// The generic GEMM `g` with operands of type `T` on views of the buffers (offset pointers
/// allowed): `C = alpha·op(A)·op(B) + bias (+ C)`, C fp32 or, for bf16 operands, bf16.
pub fn gemm<T: Operand, O: Operand>(
    dev: &Device,
    g: &Gemm,
    c: &mut CudaViewMut<'_, O>,
    a: &CudaView<'_, T>,
    b: &CudaView<'_, T>,
    bias: Option<&CudaView<'_, f32>>,
) -> Result<(), CudaError> {
    check_output::<T, O>("gemm");
    launch_gemm(dev, &g.kernel(T::PREFIX, O::OUT), g, c, a, b, bias)
}

/// Panics unless operands `T` may give outputs `O`: fp32 ones only fp32, bf16 ones either.
#[track_caller]
pub(super) fn check_output<T: Operand, O: Operand>(op: &str) {
    assert!(
        T::BYTES == 2 || O::BYTES == 4,
        "{op}: fp32 operands give an fp32 output"
    );
}

/// out [n] (bf16 bit patterns) = inp [n] rounded to the nearest bf16, ties to even.
pub fn to_bf16(
    dev: &Device,
    out: &mut CudaViewMut<'_, u16>,
    inp: &CudaView<'_, f32>,
    n: usize,
) -> Result<(), CudaError> {
    const OP: &str = "f32_to_bf16";
    need(OP, "out", out.len(), n);
    need(OP, "inp", inp.len(), n);
    let f = dev.function("matmul", OP)?;
    let count = n as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(out).arg(inp).arg(&count);
    // SAFETY: f32_to_bf16(out [n] bf16, inp [n] f32, n: i64): views of at least n elements
    // (checked above); the kernel guards i < n and `grid_1d` covers every i.
    launched(OP, unsafe { launch.launch(super::grid_1d(n)) })
}

/// One GEMM kernel of matmul.cu (`name`, fp32 or bf16 operands) on views of the buffers.
fn launch_gemm<TC, TAB>(
    dev: &Device,
    name: &str,
    g: &Gemm,
    c: &mut CudaViewMut<'_, TC>,
    a: &CudaView<'_, TAB>,
    b: &CudaView<'_, TAB>,
    bias: Option<&CudaView<'_, f32>>,
) -> Result<(), CudaError> {
    assert!(g.outer >= 1 && g.inner >= 1, "{name}: an empty batch");
    g.check(name, a.len(), b.len(), c.len(), bias.map(|x| x.len()));
    let f = dev.function("matmul", name)?;
    let dims = [g.m, g.n, g.k, g.lda, g.ldb, g.ldc].map(|x| int(name, "a dimension", x));
    let strides = [g.sa.0, g.sa.1, g.sb.0, g.sb.1, g.sc.0, g.sc.1].map(|x| x as i64);
    let (inner, alpha, accumulate) = (
        int(name, "inner", g.inner),
        g.alpha,
        i32::from(g.accumulate),
    );
    let null = 0u64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(c).arg(a).arg(b);
    match bias {
        Some(bias) => launch.arg(bias),
        None => launch.arg(&null),
    };
    for d in &dims {
        launch.arg(d);
    }
    for s in &strides {
        launch.arg(s);
    }
    launch.arg(&inner).arg(&alpha).arg(&accumulate);
    // SAFETY: gemm_{f32,bf16}_*(C, A, B, bias [N] or null, M, N, K, lda, ldb, ldc: i32, six
    // i64 strides, batch_inner: i32, alpha: f32, accumulate: i32), pushed in that order, with
    // A, B of the kernel's element type (f32, or bf16 as u16) and C fp32, or bf16 for the
    // `_bf16out` kernels (the name is made from the types: `gemm`). The views hold at
    // least the elements the call reaches (`Gemm::extents`, checked above) and the bias at
    // least N; the grid is the one the kernels require (`Gemm::grid`), and every access is
    // bounds-checked against M, N, K inside.
    launched(name, unsafe { launch.launch(g.grid()) })
}

/// out [N, OC] = inp [N, C] · weight [OC, C]ᵀ + bias [OC] (overwritten).
#[allow(clippy::too_many_arguments)] // the kernel's contract: every buffer with its shape
pub fn matmul_forward(
    dev: &Device,
    out: &mut CudaViewMut<'_, f32>,
    inp: &CudaView<'_, f32>,
    weight: &CudaView<'_, f32>,
    bias: Option<&CudaView<'_, f32>>,
    n: usize,
    c: usize,
    oc: usize,
) -> Result<(), CudaError> {
    const OP: &str = "matmul_forward";
    need(OP, "out", out.len(), n * oc);
    need(OP, "inp", inp.len(), n * c);
    need(OP, "weight", weight.len(), oc * c);
    if let Some(bias) = bias {
        need(OP, "bias", bias.len(), oc);
    }
    let f = dev.function("matmul", OP)?;
    let (ni, ci, oci) = (int(OP, "N", n), int(OP, "C", c), int(OP, "OC", oc));
    let null = 0u64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(out).arg(inp).arg(weight);
    match bias {
        Some(bias) => launch.arg(bias),
        None => launch.arg(&null),
    };
    launch.arg(&ni).arg(&ci).arg(&oci);
    // SAFETY: matmul_forward(out [N, OC], inp [N, C], weight [OC, C], bias [OC] or null, N, C,
    // OC: i32): views of at least those sizes (checked above); grid (⌈OC/128⌉, ⌈N/128⌉, 1) of
    // 256 threads as the kernel requires, accesses bounds-checked inside.
    launched(OP, unsafe { launch.launch(gemm_grid(n, oc, 1)) })
}

/// The linear layer's backward, accumulating: dinp [N, C] += dout · weight,
/// dweight [OC, C] += doutᵀ · inp, dbias [OC] += the column sums of dout (when given).
/// Deterministic: no atomics, every sum in a fixed order.
#[allow(clippy::too_many_arguments)] // the kernels' contract: every buffer with its shape
pub fn matmul_backward(
    dev: &Device,
    dinp: &mut CudaViewMut<'_, f32>,
    dweight: &mut CudaViewMut<'_, f32>,
    dbias: Option<&mut CudaViewMut<'_, f32>>,
    dout: &CudaView<'_, f32>,
    inp: &CudaView<'_, f32>,
    weight: &CudaView<'_, f32>,
    n: usize,
    c: usize,
    oc: usize,
) -> Result<(), CudaError> {
    const OP: &str = "matmul_backward";
    need(OP, "dinp", dinp.len(), n * c);
    need(OP, "dweight", dweight.len(), oc * c);
    need(OP, "dout", dout.len(), n * oc);
    need(OP, "inp", inp.len(), n * c);
    need(OP, "weight", weight.len(), oc * c);
    let (ni, ci, oci) = (int(OP, "N", n), int(OP, "C", c), int(OP, "OC", oc));
    let s = &dev.stream;

    let f = dev.function("matmul", "matmul_backward_dinp")?;
    let mut launch = s.launch_builder(&f);
    launch
        .arg(dinp)
        .arg(dout)
        .arg(weight)
        .arg(&ni)
        .arg(&ci)
        .arg(&oci);
    // SAFETY: matmul_backward_dinp(dinp [N, C], dout [N, OC], weight [OC, C], N, C, OC: i32):
    // views of at least those sizes (checked above); grid (⌈C/128⌉, ⌈N/128⌉, 1) of 256 threads.
    launched("matmul_backward_dinp", unsafe {
        launch.launch(gemm_grid(n, c, 1))
    })?;

    let f = dev.function("matmul", "matmul_backward_dweight")?;
    let mut launch = s.launch_builder(&f);
    launch
        .arg(dweight)
        .arg(dout)
        .arg(inp)
        .arg(&ni)
        .arg(&ci)
        .arg(&oci);
    // SAFETY: matmul_backward_dweight(dweight [OC, C], dout [N, OC], inp [N, C], N, C, OC: i32):
    // views of at least those sizes (checked above); grid (⌈C/128⌉, ⌈OC/128⌉, 1) of 256 threads.
    launched("matmul_backward_dweight", unsafe {
        launch.launch(gemm_grid(oc, c, 1))
    })?;

    if let Some(dbias) = dbias {
        matmul_dbias(dev, dbias, dout, n, oc)?;
    }
    Ok(())
}

/// dbias [OC] += the column sums of dout [N, OC], in a fixed order.
pub fn matmul_dbias(
    dev: &Device,
    dbias: &mut CudaViewMut<'_, f32>,
    dout: &CudaView<'_, f32>,
    n: usize,
    oc: usize,
) -> Result<(), CudaError> {
    const OP: &str = "matmul_backward_dbias";
    need(OP, "dbias", dbias.len(), oc);
    need(OP, "dout", dout.len(), n * oc);
    let (ni, oci) = (int(OP, "N", n), int(OP, "OC", oc));
    let f = dev.function("matmul", OP)?;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(dbias).arg(dout).arg(&ni).arg(&oci);
    let grid = LaunchConfig {
        grid_dim: (oc.div_ceil(32).max(1) as u32, 1, 1),
        block_dim: (32, 32, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: matmul_backward_dbias(dbias [OC], dout [N, OC], N, OC: i32): views of at least
    // those sizes (checked above); (⌈OC/32⌉, 1, 1) blocks of (32, 32, 1) threads, the shape
    // its shared-memory tile is declared for; columns ≥ OC are skipped inside.
    launched(OP, unsafe { launch.launch(grid) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_extents_are_the_matrix_sizes() {
        let g = Gemm::dense(false, true, 3, 5, 7);
        assert_eq!(g.extents(), (3 * 7, 5 * 7, 3 * 5));
        assert_eq!(g.kernel("f32", ""), "gemm_f32_nt");
        let g = Gemm::dense(true, false, 3, 5, 7);
        assert_eq!((g.lda, g.ldb), (3, 5));
        assert_eq!(g.extents(), (7 * 3, 7 * 5, 15));
    }

    #[test]
    fn batched_extents_end_at_the_last_matrix() {
        let g = Gemm::batched(false, false, 4, 6, 8, 10);
        assert_eq!(g.extents(), (10 * 32, 10 * 48, 10 * 24));
        assert_eq!(g.grid().grid_dim, (1, 1, 10));
    }

    #[test]
    fn the_grid_tiles_the_output() {
        let g = Gemm::dense(false, false, 300, 129, 5);
        assert_eq!(g.grid().grid_dim, (2, 3, 1));
    }
}
