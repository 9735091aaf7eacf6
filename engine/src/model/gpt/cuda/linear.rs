//! The matrix products of the GPT's linear layers and LM head, in the activations' type `A`:
//! fp32 (the tiled fp32 kernels), or bf16 operands on the tensor cores with fp32 accumulation
//! and a bf16 output (forward) or an fp32 one accumulated into the fp32 gradients (backward).
//! The weights are the fp32 parameters or their bf16 copy; biases stay fp32 either way.
//!
//! With `[kernels] gemm = "cublaslt"` in the spec the same products (same operand and output
//! types, fp32 accumulation) run in cuBLASLt instead of convoy's kernels, for comparing the
//! two in one model.

use std::ops::Range;

use convoy_kernels::cuda::Device;
use convoy_kernels::cuda::ops::{self, CublasLt, Gemm, Operand};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

use crate::error::Result;
use crate::error::gpu;

/// A layer's products against the model's parameters.
pub(super) struct Products<'a, A> {
    pub dev: &'a Device,
    /// The fp32 parameters, for the biases.
    pub params: &'a CudaSlice<f32>,
    /// The weights as `A`.
    pub weights: &'a CudaSlice<A>,
    /// cuBLASLt instead of convoy's GEMM kernels (the benchmark switch).
    pub lt: Option<&'a CublasLt>,
    /// Where an fp32 output gradient is rounded to `A` (bf16 only).
    pub slot: &'a mut CudaSlice<A>,
}

/// One product `c = op(a)·op(b) (+ bias) (+ c)` in convoy's kernel for the types, or in
/// cuBLASLt when given.
fn product<T: Operand, O: Operand>(
    dev: &Device,
    lt: Option<&CublasLt>,
    g: &Gemm,
    c: &mut CudaViewMut<'_, O>,
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

impl<A: Operand> Products<'_, A> {
    /// out [N, OC] = inp [N, C] · W [OC, C]ᵀ (+ bias [OC]), W and bias given as ranges of the
    /// parameter buffer. Overwrites out.
    #[allow(clippy::too_many_arguments)] // the product's contract: every buffer with its shape
    pub fn forward(
        &self,
        out: &mut CudaViewMut<'_, A>,
        inp: &CudaView<'_, A>,
        weight: Range<usize>,
        bias: Option<Range<usize>>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let g = Gemm::dense(false, true, n, oc, c);
        let bias = bias.map(|r| self.params.slice(r));
        let w = self.weights.slice(weight);
        product(self.dev, self.lt, &g, out, inp, &w, bias.as_ref())
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
        inp: &CudaView<'_, A>,
        (weight, bias): (Range<usize>, Option<Range<usize>>),
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let dout_a = A::from_f32(self.dev, dout.slice(..n * oc), self.slot).map_err(gpu)?;
        let (dev, lt, weights) = (self.dev, self.lt, self.weights);
        let w = weights.slice(weight.clone());
        products_backward(dev, lt, grads, dinp, &dout_a, inp, &w, weight, n, c, oc)?;
        if let Some(bias) = bias {
            ops::matmul_dbias(dev, &mut grads.slice_mut(bias), dout, n, oc).map_err(gpu)?;
        }
        Ok(())
    }

    /// [`Products::backward`] without a bias, from an output gradient already in `A` (the LM
    /// head's dlogits, which the classifier writes as `A`).
    #[allow(clippy::too_many_arguments)] // the product's contract: every buffer with its shape
    pub fn backward_from(
        &self,
        grads: &mut CudaSlice<f32>,
        dinp: &mut CudaViewMut<'_, f32>,
        dout: &CudaView<'_, A>,
        inp: &CudaView<'_, A>,
        weight: Range<usize>,
        n: usize,
        c: usize,
        oc: usize,
    ) -> Result<()> {
        let w = self.weights.slice(weight.clone());
        products_backward(
            self.dev, self.lt, grads, dinp, dout, inp, &w, weight, n, c, oc,
        )
    }
}

/// dinp [N, C] += dout [N, OC] · W [OC, C]; dW [OC, C] += dout [N, OC]ᵀ · inp [N, C], dW at
/// `weight` in `grads`.
#[allow(clippy::too_many_arguments)] // the products' contract: every buffer with its shape
fn products_backward<A: Operand>(
    dev: &Device,
    lt: Option<&CublasLt>,
    grads: &mut CudaSlice<f32>,
    dinp: &mut CudaViewMut<'_, f32>,
    dout: &CudaView<'_, A>,
    inp: &CudaView<'_, A>,
    w: &CudaView<'_, A>,
    weight: Range<usize>,
    n: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    let dinp_g = Gemm {
        accumulate: true,
        ..Gemm::dense(false, false, n, c, oc)
    };
    let dw_g = Gemm {
        accumulate: true,
        ..Gemm::dense(true, false, oc, c, n)
    };
    product(dev, lt, &dinp_g, dinp, dout, w, None)?;
    product(
        dev,
        lt,
        &dw_g,
        &mut grads.slice_mut(weight),
        dout,
        inp,
        None,
    )
}
