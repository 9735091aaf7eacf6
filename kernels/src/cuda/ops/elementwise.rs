//! activation.cu and residual.cu: one thread per element. The GPT's kernels (GELU, the
//! residual add) take activations of either storage type `A`; gradients are fp32.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::{Operand, grid_1d, launched, need};
use crate::cuda::{CudaError, Device};

/// out [n] = GELU(inp [n]) (tanh approximation, GPT-2's), overwritten.
pub fn gelu_forward<A: Operand>(
    dev: &Device,
    out: &mut CudaViewMut<'_, A>,
    inp: &CudaView<'_, A>,
    n: usize,
) -> Result<(), CudaError> {
    const OP: &str = "gelu_forward";
    need(OP, "out", out.len(), n);
    need(OP, "inp", inp.len(), n);
    let kernel = format!("{OP}{}", A::SUFFIX);
    let f = dev.function("activation", &kernel)?;
    let count = n as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(out).arg(inp).arg(&count);
    // SAFETY: gelu_forward{,_bf16}(out [n] A, inp [n] A, n: i64), the instance for A: views of
    // at least n elements (checked above); grid-stride over n.
    launched(&kernel, unsafe { launch.launch(grid_1d(n)) })
}

/// dinp [n] += GELU'(inp) · dout.
pub fn gelu_backward<A: Operand>(
    dev: &Device,
    dinp: &mut CudaViewMut<'_, f32>,
    inp: &CudaView<'_, A>,
    dout: &CudaView<'_, f32>,
    n: usize,
) -> Result<(), CudaError> {
    const OP: &str = "gelu_backward";
    need(OP, "dinp", dinp.len(), n);
    need(OP, "inp", inp.len(), n);
    need(OP, "dout", dout.len(), n);
    let kernel = format!("{OP}{}", A::SUFFIX);
    let f = dev.function("activation", &kernel)?;
    let count = n as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(dinp).arg(inp).arg(dout).arg(&count);
    // SAFETY: gelu_backward{,_bf16}(dinp [n], inp [n] A, dout [n], n: i64), the instance for
    // A: views of at least n elements (checked above); grid-stride over n.
    launched(&kernel, unsafe { launch.launch(grid_1d(n)) })
}

/// out [n] = a [n] + b [n], overwritten.
pub fn residual_forward<A: Operand>(
    dev: &Device,
    out: &mut CudaViewMut<'_, A>,
    a: &CudaView<'_, A>,
    b: &CudaView<'_, A>,
    n: usize,
) -> Result<(), CudaError> {
    const OP: &str = "residual_forward";
    need(OP, "out", out.len(), n);
    need(OP, "a", a.len(), n);
    need(OP, "b", b.len(), n);
    let kernel = format!("{OP}{}", A::SUFFIX);
    let f = dev.function("residual", &kernel)?;
    let count = n as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(out).arg(a).arg(b).arg(&count);
    // SAFETY: residual_forward{,_bf16}(out [n] A, a [n] A, b [n] A, n: i64), the instance for
    // A: views of at least n elements (checked above); the kernel guards i < n and `grid_1d`
    // covers every i.
    launched(&kernel, unsafe { launch.launch(grid_1d(n)) })
}
