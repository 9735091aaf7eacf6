//! Task sizes for the rayon loops.
//!
//! Elementwise results cannot depend on the split, but a fixed chunk keeps rayon's task count
//! proportional to the work, and buffers of one chunk or less skip rayon entirely (handing work
//! to the pool costs microseconds, more than the work of a small activation).

use rayon::prelude::*;

/// Elements per task: 64 KiB of `f32`, large enough to amortise a task, small enough to
/// balance two to a few dozen threads on the buffers of a training step.
pub(crate) const CHUNK: usize = 1 << 14;

/// Minimum number of items per rayon task for a loop over independent items of `item_len`
/// elements (rows, heads, column blocks), so that a task has at least [`CHUNK`] elements of work.
/// Inputs smaller than that run on the calling thread without touching the pool. The items are
/// independent, so the split never changes results.
pub(crate) fn min_items(item_len: usize) -> usize {
    CHUNK.div_ceil(item_len.max(1))
}

/// Calls `f(out_chunk, a_chunk)` over matching chunks of `out` and `a`, in parallel when there
/// is more than one chunk.
pub(crate) fn for_chunks2(
    out: &mut [f32],
    a: &[f32],
    f: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) {
    assert_eq!(out.len(), a.len(), "elementwise kernel: lengths differ");
    if out.len() <= CHUNK {
        f(out, a);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK))
            .for_each(|(o, x)| f(o, x));
    }
}

/// Calls `f(out_chunk, a_chunk, b_chunk)` like [`for_chunks2`].
pub(crate) fn for_chunks3(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync + Send,
) {
    assert_eq!(out.len(), a.len(), "elementwise kernel: lengths differ");
    assert_eq!(out.len(), b.len(), "elementwise kernel: lengths differ");
    if out.len() <= CHUNK {
        f(out, a, b);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (x, y))| f(o, x, y));
    }
}
