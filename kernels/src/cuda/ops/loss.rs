//! classifier.cu: the fused softmax + cross-entropy + dlogits.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::{Operand, grid_rows, int, launched, need};
use crate::cuda::{CudaError, Device};

/// losses [N] = the cross-entropy of each row of logits [N, Vp] (its first V columns) against
/// targets [N] (`IGNORE_INDEX` rows count 0); with `dlogits` [N, Vp] also the gradient of
/// `dloss_scale · Σ losses`, zero on the padding columns. Both are overwritten. Targets must
/// be `< V` or `IGNORE_INDEX` (the host checks; an out-of-range one gives NaN, not a stray read).
/// Logits and dlogits are stored as `A` (bf16 dlogits only feed the LM head's bf16 products).
#[allow(clippy::too_many_arguments)] // the kernel's contract: every buffer with its shape
pub fn crossentropy_forward_backward<A: Operand>(
    dev: &Device,
    losses: &mut CudaViewMut<'_, f32>,
    dlogits: Option<&mut CudaViewMut<'_, A>>,
    logits: &CudaView<'_, A>,
    targets: &CudaView<'_, u32>,
    n: usize,
    v: usize,
    vp: usize,
    dloss_scale: f32,
) -> Result<(), CudaError> {
    const OP: &str = "crossentropy_forward_backward";
    assert!(v <= vp, "{OP}: V = {v} exceeds the padded Vp = {vp}");
    need(OP, "losses", losses.len(), n);
    need(OP, "logits", logits.len(), n * vp);
    need(OP, "targets", targets.len(), n);
    let f = dev.function("classifier", &format!("{OP}{}", A::SUFFIX))?;
    let (ni, vi, vpi) = (int(OP, "N", n), int(OP, "V", v), int(OP, "Vp", vp));
    let null = 0u64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(losses);
    match dlogits {
        Some(d) => {
            need(OP, "dlogits", d.len(), n * vp);
            launch.arg(d)
        }
        None => launch.arg(&null),
    };
    launch
        .arg(logits)
        .arg(targets)
        .arg(&ni)
        .arg(&vi)
        .arg(&vpi)
        .arg(&dloss_scale);
    // SAFETY: crossentropy_forward_backward{,_bf16}(losses [N], dlogits [N, Vp] A or null,
    // logits [N, Vp] A, targets [N] u32, N, V, Vp: i32, dloss_scale: f32): views of at least those sizes
    // (checked above), a null dlogits is checked inside before any write; targets ≥ V are
    // checked inside; one block of whole warps per row.
    launched(OP, unsafe { launch.launch(grid_rows(n, v)) })
}
