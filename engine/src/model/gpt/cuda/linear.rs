//! The matrix products of the GPT's linear layers and LM head, in the job's precision: fp32
//! (the tiled fp32 kernels) or bf16 operands on the tensor cores with fp32 accumulation and
//! fp32 outputs. Everything around the products (biases, activations, master weights)
//! stays fp32 either way, so the two precisions share every other kernel and buffer.

use std::ops::Range;

use convoy_kernels::cuda::Device;
use convoy_kernels::cuda::ops::{self, Gemm};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

use super::{gpu, pair_mut};
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
        let bias = bias.map(|r| self.params.slice(r));
        match &mut self.bf16 {
            None => ops::matmul_forward(
                self.dev,
                out,
                inp,
                &self.params.slice(weight),
                bias.as_ref(),
                n,
                c,
                oc,
            ),
            Some(h) => {
                ops::to_bf16(self.dev, &mut h.inp.slice_mut(..n * c), inp, n * c).and_then(|()| {
                    ops::gemm_bf16(
                        self.dev,
                        &Gemm::dense(false, true, n, oc, c),
                        out,
                        &h.inp.slice(..n * c),
                        &h.params.slice(weight),
                        bias.as_ref(),
                    )
                })
            }
        }
        .map_err(gpu)
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
        let dev = self.dev;
        let Some(h) = &mut self.bf16 else {
            let w = self.params.slice(weight.clone());
            return match bias {
                Some(bias) => pair_mut(grads, weight, bias, |dw, db| {
                    ops::matmul_backward(dev, dinp, dw, Some(db), dout, inp, &w, n, c, oc)
                }),
                None => ops::matmul_backward(
                    dev,
                    dinp,
                    &mut grads.slice_mut(weight.clone()),
                    None,
                    dout,
                    inp,
                    &w,
                    n,
                    c,
                    oc,
                ),
            }
            .map_err(gpu);
        };
        ops::to_bf16(dev, &mut h.dout.slice_mut(..n * oc), dout, n * oc).map_err(gpu)?;
        ops::to_bf16(dev, &mut h.inp.slice_mut(..n * c), inp, n * c).map_err(gpu)?;
        let (dout16, inp16) = (h.dout.slice(..n * oc), h.inp.slice(..n * c));
        // dinp [N, C] += dout [N, OC] · W [OC, C]
        let dinp_product = Gemm {
            accumulate: true,
            ..Gemm::dense(false, false, n, c, oc)
        };
        ops::gemm_bf16(
            dev,
            &dinp_product,
            dinp,
            &dout16,
            &h.params.slice(weight.clone()),
            None,
        )
        .map_err(gpu)?;
        // dW [OC, C] += dout [N, OC]ᵀ · inp [N, C]
        let dweight_product = Gemm {
            accumulate: true,
            ..Gemm::dense(true, false, oc, c, n)
        };
        ops::gemm_bf16(
            dev,
            &dweight_product,
            &mut grads.slice_mut(weight),
            &dout16,
            &inp16,
            None,
        )
        .map_err(gpu)?;
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
