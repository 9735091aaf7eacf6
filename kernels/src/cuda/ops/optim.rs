//! optim.cu and gradnorm.cu: the update and the global gradient norm, all on the device so
//! a step needs no host round trip.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::{grid_1d, launched, need};
use crate::cuda::prep::{AdamwScalars, gradnorm_partials};
use crate::cuda::{CudaError, Device};

/// Threads of the norm kernels: fixed, because the sums' order depends on it.
const NORM_THREADS: u32 = 256;
/// Blocks of the partial-sum pass (it loops over the chunks; the result does not depend on
/// this).
const NORM_BLOCKS: usize = 1024;

/// One AdamW step of a parameter group: params, m, v [n] updated from grads [n] with the
/// group's `scalars` (bias corrections and decay computed on the host in f64, as the CPU).
pub fn adamw_update(
    dev: &Device,
    params: &mut CudaViewMut<'_, f32>,
    grads: &CudaView<'_, f32>,
    m: &mut CudaViewMut<'_, f32>,
    v: &mut CudaViewMut<'_, f32>,
    s: &AdamwScalars,
) -> Result<(), CudaError> {
    const OP: &str = "adamw_update";
    let n = params.len();
    need(OP, "grads", grads.len(), n);
    need(OP, "m", m.len(), n);
    need(OP, "v", v.len(), n);
    let f = dev.function("optim", OP)?;
    let count = n as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(params).arg(grads).arg(m).arg(v).arg(&count);
    for x in [
        &s.beta1,
        &s.beta2,
        &s.one_minus_beta1,
        &s.one_minus_beta2,
        &s.eps,
        &s.step_size,
        &s.bc2_sqrt,
        &s.decay,
    ] {
        launch.arg(x);
    }
    // SAFETY: adamw_update(params, grads, m, v [n], n: i64, beta1, beta2, one_minus_beta1,
    // one_minus_beta2, eps, step_size, bc2_sqrt, decay: f32): four views of at least n floats
    // (n is params' length, the others checked above); grid-stride over n.
    launched(OP, unsafe { launch.launch(grid_1d(n)) })
}

/// One SGD step (torch.optim.SGD, dampening 0) of a parameter group; `momentum_buf` [n] is
/// needed when `momentum > 0` and ignored otherwise.
#[allow(clippy::too_many_arguments)] // the kernel's contract: the buffers and the step's scalars
pub fn sgd_update(
    dev: &Device,
    params: &mut CudaViewMut<'_, f32>,
    grads: &CudaView<'_, f32>,
    momentum_buf: &mut CudaViewMut<'_, f32>,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: bool,
    first_step: bool,
) -> Result<(), CudaError> {
    const OP: &str = "sgd_update";
    let n = params.len();
    need(OP, "grads", grads.len(), n);
    if momentum != 0.0 {
        need(OP, "momentum_buf", momentum_buf.len(), n);
    }
    let f = dev.function("optim", OP)?;
    let count = n as i64;
    let (nesterov, first_step) = (i32::from(nesterov), i32::from(first_step));
    let mut launch = dev.stream.launch_builder(&f);
    launch
        .arg(params)
        .arg(grads)
        .arg(momentum_buf)
        .arg(&count)
        .arg(&lr)
        .arg(&momentum)
        .arg(&weight_decay)
        .arg(&nesterov)
        .arg(&first_step);
    // SAFETY: sgd_update(params [n], grads [n], momentum_buf [n] (unused when momentum == 0),
    // n: i64, lr, momentum, weight_decay: f32, nesterov, first_step: i32): views of at least n
    // floats where the kernel reads them (checked above); grid-stride over n.
    launched(OP, unsafe { launch.launch(grid_1d(n)) })
}

/// norm [1] = the L2 norm of grads [n], summed in f64 in a fixed order; `partials` is scratch
/// of at least `gradnorm_partials(n)` doubles (at least one).
pub fn global_norm(
    dev: &Device,
    norm: &mut CudaViewMut<'_, f32>,
    partials: &mut CudaViewMut<'_, f64>,
    grads: &CudaView<'_, f32>,
    n: usize,
) -> Result<(), CudaError> {
    const OP: &str = "global_norm";
    let p = gradnorm_partials(n);
    need(OP, "norm", norm.len(), 1);
    need(OP, "partials", partials.len(), p.max(1));
    need(OP, "grads", grads.len(), n);
    let (count, pcount) = (n as i64, p as i64);
    let threads = |blocks: usize| cudarc::driver::LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (NORM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let s = &dev.stream;

    let f = dev.function("gradnorm", "global_norm_partials")?;
    let mut launch = s.launch_builder(&f);
    launch.arg(&mut *partials).arg(grads).arg(&count);
    // SAFETY: global_norm_partials(partials [P] f64, grads [n] f32, n: i64) with
    // P = ⌈n / GRADNORM_CHUNK⌉ = gradnorm_partials(n) (checked above); 256 threads, a multiple
    // of 32, grid-stride over the chunks.
    launched("global_norm_partials", unsafe {
        launch.launch(threads(p.min(NORM_BLOCKS)))
    })?;

    let f = dev.function("gradnorm", "global_norm_finish")?;
    let mut launch = s.launch_builder(&f);
    let partials = partials.as_view();
    launch.arg(norm).arg(&partials).arg(&pcount);
    // SAFETY: global_norm_finish(norm [1] f32, partials [P] f64, P: i64): sizes checked above;
    // exactly one block, as the kernel requires.
    launched("global_norm_finish", unsafe { launch.launch(threads(1)) })
}

/// Scales grads [n] by max_norm / (norm + 1e-6) when that is below 1, reading the norm
/// [1] from the device (torch's clip_grad_norm_).
pub fn clip_grads(
    dev: &Device,
    grads: &mut CudaViewMut<'_, f32>,
    norm: &CudaView<'_, f32>,
    max_norm: f32,
) -> Result<(), CudaError> {
    const OP: &str = "clip_grads";
    let n = grads.len();
    need(OP, "norm", norm.len(), 1);
    let f = dev.function("gradnorm", OP)?;
    let count = n as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(grads).arg(&count).arg(norm).arg(&max_norm);
    // SAFETY: clip_grads(grads [n] f32, n: i64, norm [1] f32, max_norm: f32): n is the view's
    // length and the norm view holds one float (checked above); grid-stride, bounds-checked.
    launched(OP, unsafe { launch.launch(grid_1d(n)) })
}
