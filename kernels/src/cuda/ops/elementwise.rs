//! activation.cu and residual.cu: one thread per element.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::{grid_1d, launched, need};
use crate::cuda::{CudaError, Device};

/// out [n] = GELU(inp [n]) (tanh approximation, GPT-2's), overwritten.
pub fn gelu_forward(
    dev: &Device,
    out: &mut CudaViewMut<'_, f32>,
    inp: &CudaView<'_, f32>,
    n: usize,
) -> Result<(), CudaError> {
    unary(dev, "gelu_forward", out, inp, n)
}

/// dinp [n] += GELU'(inp) · dout.
pub fn gelu_backward(
    dev: &Device,
    dinp: &mut CudaViewMut<'_, f32>,
    inp: &CudaView<'_, f32>,
    dout: &CudaView<'_, f32>,
    n: usize,
) -> Result<(), CudaError> {
    const OP: &str = "gelu_backward";
    need(OP, "dinp", dinp.len(), n);
    need(OP, "inp", inp.len(), n);
    need(OP, "dout", dout.len(), n);
    let f = dev.function("activation", OP)?;
    let count = n as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(dinp).arg(inp).arg(dout).arg(&count);
    // SAFETY: gelu_backward(dinp [n], inp [n], dout [n], n: i64): views of at least n floats
    // (checked above); grid-stride over n.
    launched(OP, unsafe { launch.launch(grid_1d(n)) })
}

/// out [n] = a [n] + b [n], overwritten.
pub fn residual_forward(
    dev: &Device,
    out: &mut CudaViewMut<'_, f32>,
    a: &CudaView<'_, f32>,
    b: &CudaView<'_, f32>,
    n: usize,
) -> Result<(), CudaError> {
    const OP: &str = "residual_forward";
    need(OP, "out", out.len(), n);
    need(OP, "a", a.len(), n);
    need(OP, "b", b.len(), n);
    let f = dev.function("residual", OP)?;
    let count = n as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(out).arg(a).arg(b).arg(&count);
    // SAFETY: residual_forward(out [n], a [n], b [n], n: i64): views of at least n floats
    // (checked above); the kernel guards i < n and `grid_1d` covers every i.
    launched(OP, unsafe { launch.launch(grid_1d(n)) })
}

/// The forward of an activation of activation.cu: out [n] = f(inp [n]).
fn unary(
    dev: &Device,
    kernel: &str,
    out: &mut CudaViewMut<'_, f32>,
    inp: &CudaView<'_, f32>,
    n: usize,
) -> Result<(), CudaError> {
    need(kernel, "out", out.len(), n);
    need(kernel, "inp", inp.len(), n);
    let f = dev.function("activation", kernel)?;
    let count = n as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(out).arg(inp).arg(&count);
    // SAFETY: <activation>_forward(out [n], inp [n], n: i64): views of at least n floats
    // (checked above); grid-stride over n.
    launched(kernel, unsafe { launch.launch(grid_1d(n)) })
}
