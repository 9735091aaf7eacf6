//! The matrix products of the GPT's linear layers and LM head, in the job's precision: fp32
//! (the tiled fp32 kernels) or bf16 operands on the tensor cores with fp32 accumulation and
//! fp32 outputs. Everything around the products (biases, activations, master weights)
//! stays fp32 either way, so the two precisions share every other kernel and buffer.
//!
//! With `CONVOY_GEMM=cublaslt` the same products (same operand types, fp32 accumulation and
//! output) run in cuBLASLt instead of convoy's kernels, for comparing the two in one model.

use std::ops::Range;

use convoy_kernels::cuda::Device;
use convoy_kernels::cuda::ops::{self, CublasLt, Gemm, Operand};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

use super::gpu;
use crate::error::Result;

/// The bf16 side of the products: the weights rounded once per step, and operand scratch.
pub(super) struct Bf16Operands<'a> {
    /// All parameters as bf16 bit patterns (same layout as the fp32 buffer).
    pub params: &'a CudaSlice<u16>,
    /// An output gradient [N, max(OC)] rounded for the backward products.
    pub dout: &'a mut CudaSlice<u16>,
    /// A layer input [N, max(C)] rounded for the forward and the weight gradient.
    pub inp: &'a mut CudaSlice<u16>,
}

/// A layer's products against the model's parameter buffer.
pub(super) struct Products<'a> {
    pub dev: &'a Device,
    pub params: &'a CudaSlice<f32>,
    pub bf16: Option<Bf16Operands<'a>>,
    /// cuBLASLt instead of convoy's GEMM kernels (the benchmark switch).
    pub lt: Option<&'a CublasLt>,
}

/// One product `c = op(a)·op(b) (+ bias) (+ c)` in convoy's kernel for the operand type, or in
/// cuBLASLt when given.
fn product<T: Operand>(
    dev: &Device,
    lt: Option<&CublasLt>,
    g: &Gemm,
    c: &mut CudaViewMut<'_, f32>,
    a: &CudaView<'_, T>,
    b: &CudaView<'_, T>,
    bias: Option<&CudaView<'_, f32>>,
) -> Result<()> {
    match lt {
        Some(lt) => lt.gemm(dev, g, c, a, b, bias),
        None => ops::gemm(dev, g, c, a, b, bias),
    }
    .map_err(gpu)
}

impl Products<'_> {
    /// out [N, OC] = inp [N, C] · W [OC, C]ᵀ (+ bias [OC]), W and bias given as ranges of the
    /// parameter buffer. Overwrites out.
    #[allow(clippy::too_many_arguments)] // the product's contract: every buffer with its shape
    pub fn forward(
        &mut self,
        out: &mut CudaViewMut<'_, f32>,
        inp: &CudaView<'_, f32>,
        weight: Range<usize>,
        bias: Option<Range<usize>>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let g = Gemm::dense(false, true, n, oc, c);
        let bias = bias.map(|r| self.params.slice(r));
        let (dev, lt) = (self.dev, self.lt);
        match &mut self.bf16 {
            None => product(
                dev,
                lt,
                &g,
                out,
                inp,
                &self.params.slice(weight),
                bias.as_ref(),
            ),
            Some(h) => {
                ops::to_bf16(dev, &mut h.inp.slice_mut(..n * c), inp, n * c).map_err(gpu)?;
                let (inp16, w16) = (h.inp.slice(..n * c), h.params.slice(weight));
                product(dev, lt, &g, out, &inp16, &w16, bias.as_ref())
            }
        }
    }

    /// The backward of [`Products::forward`], accumulating: dinp [N, C] += dout · W,
    /// dW += doutᵀ · inp and, with a bias, dbias += the column sums of dout; the gradient
    /// ranges are those of W and the bias in `grads`.
    #[allow(clippy::too_many_arguments)] // the product's contract: every buffer with its shape
    pub fn backward(
        &mut self,
        grads: &mut CudaSlice<f32>,
        dinp: &mut CudaViewMut<'_, f32>,
        dout: &CudaView<'_, f32>,
        inp: &CudaView<'_, f32>,
        (weight, bias): (Range<usize>, Option<Range<usize>>),
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        // dinp [N, C] += dout [N, OC] · W [OC, C]; dW [OC, C] += dout [N, OC]ᵀ · inp [N, C]
        let dinp_g = Gemm {
            accumulate: true,
            ..Gemm::dense(false, false, n, c, oc)
        };
        let dw_g = Gemm {
            accumulate: true,
            ..Gemm::dense(true, false, oc, c, n)
        };
        let (dev, lt) = (self.dev, self.lt);
        let mut dw = grads.slice_mut(weight.clone());
        match &mut self.bf16 {
            None => {
                let w = self.params.slice(weight);
                product(dev, lt, &dinp_g, dinp, dout, &w, None)?;
                product(dev, lt, &dw_g, &mut dw, dout, inp, None)?;
            }
            Some(h) => {
                ops::to_bf16(dev, &mut h.dout.slice_mut(..n * oc), dout, n * oc).map_err(gpu)?;
                ops::to_bf16(dev, &mut h.inp.slice_mut(..n * c), inp, n * c).map_err(gpu)?;
                let (dout16, inp16) = (h.dout.slice(..n * oc), h.inp.slice(..n * c));
                product(
                    dev,
                    lt,
                    &dinp_g,
                    dinp,
                    &dout16,
                    &h.params.slice(weight),
                    None,
                )?;
                product(dev, lt, &dw_g, &mut dw, &dout16, &inp16, None)?;
            }
        }
        if let Some(bias) = bias {
            ops::matmul_dbias(dev, &mut grads.slice_mut(bias), dout, n, oc).map_err(gpu)?;
        }
        Ok(())
    }
}

/// The largest rounded output gradient and input of one (B, T) step: [N, max(Vp, 4C)] and
/// [N, 4C] bf16 values.
pub(super) fn bf16_scratch(n: usize, c: usize, vp: usize) -> (usize, usize) {
    (n * vp.max(4 * c), n * 4 * c)
}
