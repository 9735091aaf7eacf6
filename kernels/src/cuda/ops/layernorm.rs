//! layernorm.cu: forward, and the backward as three launches (dinp, per-chunk parameter
//! partial sums, their fixed-order reduction).

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::{Operand, grid_1d, grid_rows, int, launched, need};
use crate::cuda::{CudaError, Device};

/// Rows summed into one partial row of the parameter gradients. Fixed: the sums' order
/// depends on it.
pub const LN_ROWS_PER_PARTIAL: usize = 64;

/// `R`, the partial rows for `n` rows: the backward's scratch is `2·R·C` floats.
pub fn ln_partial_rows(n: usize) -> usize {
    n.div_ceil(LN_ROWS_PER_PARTIAL)
}

/// out [N, C] = the rows of inp [N, C] normalised, · weight [C] + bias [C]; saves
/// mean [N] and rstd [N]. All three are overwritten. `A` is the activations' storage (inp
/// and out); the statistics, weight and bias are fp32.
#[allow(clippy::too_many_arguments)] // the kernel's contract: every buffer with its shape
pub fn layernorm_forward<A: Operand>(
    dev: &Device,
    out: &mut CudaViewMut<'_, A>,
    mean: &mut CudaViewMut<'_, f32>,
    rstd: &mut CudaViewMut<'_, f32>,
    inp: &CudaView<'_, A>,
    weight: &CudaView<'_, f32>,
    bias: &CudaView<'_, f32>,
    n: usize,
    c: usize,
) -> Result<(), CudaError> {
    const OP: &str = "layernorm_forward";
    need(OP, "out", out.len(), n * c);
    need(OP, "mean", mean.len(), n);
    need(OP, "rstd", rstd.len(), n);
    need(OP, "inp", inp.len(), n * c);
    need(OP, "weight", weight.len(), c);
    need(OP, "bias", bias.len(), c);
    let f = dev.function("layernorm", &format!("{OP}{}", A::SUFFIX))?;
    let (ni, ci) = (int(OP, "N", n), int(OP, "C", c));
    let mut launch = dev.stream.launch_builder(&f);
    launch
        .arg(out)
        .arg(mean)
        .arg(rstd)
        .arg(inp)
        .arg(weight)
        .arg(bias)
        .arg(&ni)
        .arg(&ci);
    // SAFETY: layernorm_forward{,_bf16}(out [N, C] A, mean [N], rstd [N], inp [N, C] A,
    // weight [C], bias [C], N, C: i32), the instance for A: views of at least those sizes (checked above); one block per row,
    // whole warps (`row_threads`), static shared memory only.
    launched(OP, unsafe { launch.launch(grid_rows(n, c)) })
}

/// dinp [N, C], dweight [C], dbias [C] += LayerNorm's gradients for dout [N, C], from the
/// forward's inp, mean and rstd. `partial` is scratch of at least 2·R·C floats,
/// R = [`ln_partial_rows`]`(N)`. Only `inp` is of the activations' type `A`.
#[allow(clippy::too_many_arguments)] // the kernels' contract: every buffer with its shape
pub fn layernorm_backward<A: Operand>(
    dev: &Device,
    dinp: &mut CudaViewMut<'_, f32>,
    dweight: &mut CudaViewMut<'_, f32>,
    dbias: &mut CudaViewMut<'_, f32>,
    partial: &mut CudaViewMut<'_, f32>,
    dout: &CudaView<'_, f32>,
    inp: &CudaView<'_, A>,
    weight: &CudaView<'_, f32>,
    mean: &CudaView<'_, f32>,
    rstd: &CudaView<'_, f32>,
    n: usize,
    c: usize,
) -> Result<(), CudaError> {
    const OP: &str = "layernorm_backward";
    let r = ln_partial_rows(n);
    need(OP, "dinp", dinp.len(), n * c);
    need(OP, "dweight", dweight.len(), c);
    need(OP, "dbias", dbias.len(), c);
    need(OP, "partial", partial.len(), 2 * r * c);
    need(OP, "dout", dout.len(), n * c);
    need(OP, "inp", inp.len(), n * c);
    need(OP, "weight", weight.len(), c);
    need(OP, "mean", mean.len(), n);
    need(OP, "rstd", rstd.len(), n);
    let (ni, ci, ri) = (int(OP, "N", n), int(OP, "C", c), int(OP, "R", r));
    let rows_per = LN_ROWS_PER_PARTIAL as i32;
    let s = &dev.stream;

    let dinp_k = format!("layernorm_backward_dinp{}", A::SUFFIX);
    let f = dev.function("layernorm", &dinp_k)?;
    let mut launch = s.launch_builder(&f);
    launch
        .arg(dinp)
        .arg(dout)
        .arg(inp)
        .arg(weight)
        .arg(mean)
        .arg(rstd)
        .arg(&ni)
        .arg(&ci);
    // SAFETY: layernorm_backward_dinp{,_bf16}(dinp [N, C], dout [N, C], inp [N, C] A,
    // weight [C], mean [N], rstd [N], N, C: i32), the instance for A: sizes checked above; one
    // block of whole warps per row.
    launched(&dinp_k, unsafe { launch.launch(grid_rows(n, c)) })?;

    let (mut pdw, mut pdb) = partial.split_at_mut(r * c);
    let partial_k = format!("layernorm_backward_dparams_partial{}", A::SUFFIX);
    let f = dev.function("layernorm", &partial_k)?;
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut pdw)
        .arg(&mut pdb)
        .arg(dout)
        .arg(inp)
        .arg(mean)
        .arg(rstd)
        .arg(&ni)
        .arg(&ci)
        .arg(&rows_per);
    // SAFETY: layernorm_backward_dparams_partial{,_bf16}(partial_dweight [R, C],
    // partial_dbias [R, C], dout [N, C], inp [N, C] A, mean [N], rstd [N], N, C, rows_per_block: i32) with
    // R = ⌈N / rows_per_block⌉: the two halves of the scratch hold R·C floats each (checked
    // above: 2·R·C in all, split at R·C); one block per chunk of rows.
    launched(&partial_k, unsafe { launch.launch(grid_rows(r, c)) })?;

    let f = dev.function("layernorm", "layernorm_backward_dparams_reduce")?;
    let (pdw, pdb) = (pdw.as_view(), pdb.as_view());
    let mut launch = s.launch_builder(&f);
    launch
        .arg(dweight)
        .arg(dbias)
        .arg(&pdw)
        .arg(&pdb)
        .arg(&ri)
        .arg(&ci);
    // SAFETY: layernorm_backward_dparams_reduce(dweight [C], dbias [C], partial_dweight [R, C],
    // partial_dbias [R, C], R, C: i32): the scratch just written, sizes checked above; one
    // thread per channel (grid-stride).
    launched("layernorm_backward_dparams_reduce", unsafe {
        launch.launch(grid_1d(c))
    })
}
